"""The FastAPI app each service mounts at /v1, and what its routes share."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from bentos.settings import WebSettings
from bentos.web.errors import APIError, install_error_handlers
from bentos.web.logs import AccessLog
from bentos.web.middleware import Backpressure, BearerAuth


def openai_app(settings: WebSettings, title: str, description: str, access_logger: str) -> FastAPI:
    """A FastAPI app for a /v1 mount: OpenAI-shaped errors, bearer auth, a bounded queue, and the
    access log outermost (so 401s and 429s are logged too)."""
    app = FastAPI(title=title, description=description)
    install_error_handlers(app)
    app.add_middleware(Backpressure, limit=settings.concurrency_limit, queue=settings.max_queued_requests, wait_s=settings.queue_timeout_s)
    app.add_middleware(BearerAuth, api_keys=settings.api_keys)
    app.add_middleware(AccessLog, logger_name=access_logger)
    return app


def add_not_found_route(app: FastAPI) -> None:
    """Register last. BentoML's outer router answers unknown paths under the mount with plain
    text; this keeps them in OpenAI's shape and lists what the app does answer."""
    answers = ", ".join(
        f"{'/'.join(sorted(r.methods))} /v1{r.path}"
        for r in app.routes
        if getattr(r, "include_in_schema", False) and getattr(r, "methods", None)
    )

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, path: str) -> None:
        raise APIError(404, f"no route {request.method} /v1/{path}; this service answers {answers}", "not_found")


def app_state(request: Request, name: str) -> Any:
    """What the service put on ``app.state`` when it started; a clear 503 until then."""
    value = getattr(request.app.state, name, None)
    if value is None:
        raise APIError(503, "the service is still starting; retry when /readyz answers 200", "starting", {"Retry-After": "5"})
    return value
