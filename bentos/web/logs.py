"""Structured logs: one JSON object per line, so log shippers index fields, not prose."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The gateway logs this once when the stack can answer; launchers (tests, benches, Modal) wait for it.
READY_MESSAGE = "ragserve is ready"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_service_logging(level: str = "INFO", name: str = "bentos") -> None:
    """Our loggers (``bentos.*``, or ``name``) as JSON lines on stderr; BentoML's own logging is left as it is."""
    logger = logging.getLogger(name)
    if any(isinstance(h.formatter, JSONFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


class AccessLog:
    """ASGI middleware: one line per request with status and duration (to the end of the body, so
    streams count whole), and an ``X-Request-ID`` echoed back (the client's, or a new one)."""

    def __init__(self, app: ASGIApp, logger_name: str):
        self.app = app
        self.log = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"")[:64].decode("latin-1")
        request_id = given if given and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            self.log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                },
            )
