"""The model service's OpenAI-compatible API: checks each request, then relays it to vLLM.

Checks happen here, before the engine, so a bad request gets an actionable 4xx in OpenAI's error
shape; everything the engine itself answers (including its own 4xx) is passed through unchanged.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from .engine import Engine
from .http_common import APIError, BearerAuth, install_error_handlers, parse_body, read_json
from .schemas import ChatCompletionRequest
from .settings import Settings

_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class EngineClient:
    """HTTP client for the engine, with the checks that turn its absence into a clear 503."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.http = httpx.AsyncClient(
            base_url=engine.base_url,
            timeout=httpx.Timeout(settings.request_timeout_s, connect=5),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    def require_ready(self) -> None:
        if not self.engine.running:
            raise APIError(503, "the model engine is not running; it is being restarted, retry shortly", "engine_down", {"Retry-After": "10"})
        if not self.engine.generated_once:
            raise APIError(503, "the model engine is still starting; retry when /readyz answers 200", "engine_starting", {"Retry-After": "5"})

    async def forward(self, method: str, path: str, payload: Any | None = None) -> Response:
        self.require_ready()
        try:
            r = await self.http.request(method, path, json=payload)
        except httpx.TimeoutException:
            raise APIError(504, "the model engine did not answer in time (RAGSERVE_REQUEST_TIMEOUT_S)", "engine_timeout") from None
        except httpx.HTTPError as e:
            raise APIError(503, f"the model engine is unreachable ({type(e).__name__}); retry shortly", "engine_unreachable", {"Retry-After": "5"}) from None
        headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(r.content, status_code=r.status_code, headers=headers)

    async def stream(self, path: str, payload: Any) -> Response:
        """Relay server-sent events as they come. Closing the upstream response when our client
        goes away makes vLLM abort the generation instead of finishing it for nobody."""
        self.require_ready()
        request = self.http.build_request("POST", path, json=payload)
        try:
            upstream = await self.http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise APIError(503, f"the model engine is unreachable ({type(e).__name__}); retry shortly", "engine_unreachable", {"Retry-After": "5"}) from None
        if upstream.status_code != 200:
            body = await upstream.aread()
            await upstream.aclose()
            return Response(body, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def aclose(self) -> None:
        await self.http.aclose()


def prepare_chat(req: ChatCompletionRequest, settings: Settings) -> dict[str, Any]:
    """Check limits the engine knows only after tokenising, and fill defaults clients expect."""
    limit = req.output_limit
    if limit is not None and limit >= settings.max_model_len:
        raise APIError(400, f"max_tokens={limit} is not below the model's context length {settings.max_model_len}; lower max_tokens", "max_tokens_too_large")
    payload = req.model_dump(exclude_none=True, exclude_unset=True)
    payload["model"] = settings.model_name  # one model per service: any name the client sends maps to it
    if req.stream:
        # Usage counts in the last chunk, as OpenAI sends them when asked; on unless the client says no.
        payload["stream_options"] = {"include_usage": True, **(req.stream_options or {})}
    return payload


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app mounted at /v1; ``app.state.engine`` is set once the service starts."""
    app = FastAPI(title="ragserve model service", description="OpenAI-compatible chat on vLLM.")
    install_error_handlers(app)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(BearerAuth, api_key=key)

    def engine(request: Request) -> EngineClient:
        client = getattr(request.app.state, "engine", None)
        if client is None:
            raise APIError(503, "the service is still starting; retry when /readyz answers 200", "starting", {"Retry-After": "5"})
        return client

    @app.get("/models")
    async def list_models(request: Request) -> Response:
        return await engine(request).forward("GET", "/v1/models")

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_body(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        payload = prepare_chat(req, settings)
        client = engine(request)
        if req.stream:
            return await client.stream("/v1/chat/completions", payload)
        return await client.forward("POST", "/v1/chat/completions", payload)

    # BentoML's outer router answers unknown paths with plain text; keep them in OpenAI's shape.
    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, path: str) -> Response:
        raise APIError(404, f"no route {request.method} /v1/{path}; this service answers GET /v1/models and POST /v1/chat/completions", "not_found")

    return app
