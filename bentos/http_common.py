"""What every HTTP front of the stack shares: OpenAI-shaped errors, bearer auth, body limits.

Clients built on the ``openai`` package read ``{"error": {"message", "type", "code"}}`` and show
the message to the user, so every refusal here carries a message that names the fix.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .logs import AccessLog
from .schemas import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

# The services' own metrics. Under `bentoml serve` prometheus_client runs in multiprocess mode:
# every process's metrics reach /metrics through BentoML's collector, summed over processes, so
# appending this registry's text there too would declare each family twice.
SERVICE_METRICS = CollectorRegistry(auto_describe=True)
REFUSED = Counter("ragserve_requests_refused", "Requests refused for capacity, by reason.", ["reason"], registry=SERVICE_METRICS)

M = TypeVar("M", bound=BaseModel)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_response(status: int, message: str, code: str | int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=_TYPES.get(status, "api_error"), code=code))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def describe_validation_error(err: ValidationError | RequestValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing oversized bodies before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limit} (RAGSERVE_MAX_BODY_BYTES)", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes (RAGSERVE_MAX_BODY_BYTES)", "body_too_large")
    try:
        data = json.loads(body)
        # JSON may escape lone UTF-16 surrogates ("\ud800"), which no tokenizer can encode.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e}); send a JSON object", "invalid_json") from None
    except UnicodeEncodeError:
        raise APIError(400, "request body holds a lone UTF-16 surrogate escape (such as \\ud800); send valid Unicode text", "invalid_unicode") from None
    except RecursionError:
        raise APIError(400, "request body JSON is nested too deeply", "invalid_json") from None


def parse_body(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise APIError(400, f"invalid request: {describe_validation_error(e)}", "invalid_request") from None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {describe_validation_error(exc)}", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "internal_error")


def openai_app(settings, title: str, description: str, access_logger: str) -> FastAPI:
    """A FastAPI app for a /v1 mount: OpenAI-shaped errors, bearer auth, a bounded queue, and the
    access log outermost (so 401s and 429s are logged too)."""
    app = FastAPI(title=title, description=description)
    install_error_handlers(app)
    app.add_middleware(Backpressure, limit=settings.concurrency_limit, queue=settings.max_queued_requests, wait_s=settings.queue_timeout_s)
    app.add_middleware(BearerAuth, api_key=settings.api_key_value)
    app.add_middleware(AccessLog, logger_name=access_logger)
    return app


class ResponseTimeout:
    """ASGI middleware: a request whose response has not started within ``timeout`` seconds is
    cancelled and answered 504; once the response starts (a stream's first bytes) it runs on.

    The services run it as BentoML's traffic timeout (service_common.use_response_timeout). BentoML's
    own never cancels its timer, so each finished request's context (tracing span, request state)
    stayed alive for the whole timeout: the gateway's memory grew with the request rate for 5 minutes."""

    def __init__(self, app: ASGIApp, timeout: float):
        self.app, self.timeout_s = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message: dict) -> None:
            nonlocal started
            if not started:
                started = True
                if not deadline.expired():
                    deadline.reschedule(None)  # the response is under way: no deadline any more
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started or not deadline.expired():
                raise  # not ours to answer: the response began, or the app timed out on its own
            message = f"no response within {self.timeout_s:g} s (RAGSERVE_REQUEST_TIMEOUT_S); ask for fewer tokens or raise the limit"
            await error_response(504, message, "timeout")(scope, receive, send)


class Backpressure:
    """ASGI middleware: at most ``limit`` requests in progress and ``queue`` waiting for a slot.
    Beyond that a request is refused at once with 429 and Retry-After, and one that waited
    ``wait_s`` gets 503: clients back off instead of piling up until they time out. A slot is
    held until the response ends (a stream holds it while it streams)."""

    def __init__(self, app: ASGIApp, limit: int, queue: int, wait_s: float):
        self.app, self.limit, self.queue, self.wait_s = app, limit, queue, wait_s
        self.slots = asyncio.Semaphore(limit)
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = await self.acquire()
        if refusal is not None:
            return await refusal(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()

    async def acquire(self) -> JSONResponse | None:
        """A slot (None), or the refusal to send."""
        if not self.slots.locked():
            await self.slots.acquire()
            return None
        if self.waiting >= self.queue:
            REFUSED.labels("queue_full").inc()
            message = f"the server is at capacity ({self.limit} in progress, {self.queue} waiting); retry after the delay in Retry-After"
            return error_response(429, message, "overloaded", {"Retry-After": "1"})
        self.waiting += 1
        waiter = asyncio.ensure_future(self.slots.acquire())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
            return None
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            # Timed out, or the client went away: never keep a slot that was granted meanwhile.
            waiter.cancel()
            try:
                await waiter
                self.slots.release()
            except asyncio.CancelledError:
                pass
            if isinstance(e, asyncio.CancelledError):
                raise
            REFUSED.labels("queue_timeout").inc()
            message = f"no capacity freed within {self.wait_s:g} s (RAGSERVE_QUEUE_TIMEOUT_S); retry after the delay in Retry-After"
            return error_response(503, message, "queue_timeout", {"Retry-After": "5"})
        finally:
            self.waiting -= 1


def add_not_found_route(app: FastAPI) -> None:
    """Register last. BentoML's outer router answers unknown paths under the mount with plain
    text; this keeps them in OpenAI's shape and lists what the app does answer."""
    answers = ", ".join(f"{'/'.join(sorted(r.methods))} /v1{r.path}" for r in app.routes if getattr(r, "include_in_schema", False) and getattr(r, "methods", None))

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, path: str) -> None:
        raise APIError(404, f"no route {request.method} /v1/{path}; this service answers {answers}", "not_found")


def app_state(request: Request, name: str) -> Any:
    """What the service put on ``app.state`` when it started; a clear 503 until then."""
    value = getattr(request.app.state, name, None)
    if value is None:
        raise APIError(503, "the service is still starting; retry when /readyz answers 200", "starting", {"Retry-After": "5"})
    return value


class BearerAuth:
    """ASGI middleware: with a key configured, every request needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):  # constant time: no timing oracle on the key
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send 'Authorization: Bearer <RAGSERVE_API_KEY>'"
        response = error_response(401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
