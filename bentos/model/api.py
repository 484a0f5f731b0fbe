"""The model service's OpenAI-compatible API: checks each request, then relays it to vLLM.

Checks happen here, before the engine, so a bad request gets an actionable 4xx in OpenAI's error
shape; everything the engine itself answers (including its own 4xx) is passed through unchanged.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bentos.model.engine import Engine
from bentos.settings import EngineSettings, WebSettings
from bentos.web.app import add_not_found_route, app_state, openai_app
from bentos.web.bodies import parse_body, read_json
from bentos.web.errors import APIError
from bentos.web.relay import Relay, http_client
from bentos.web.schemas import ChatCompletionRequest, engine_payload
from bentos.web.timing import CHAT_STEPS

log = logging.getLogger("bentos.llm")


def engine_relay(engine: Engine, timeout_s: float) -> Relay:
    """A relay to the engine that answers a clear 503 while it starts or after it died."""

    def ready_check() -> None:
        if engine.proc is not None and not engine.running:
            raise APIError(
                503, "the model engine is not running; it is being restarted, retry shortly", "engine_down", {"Retry-After": "10"}
            )
        if not engine.warm:
            raise APIError(
                503,
                "the model engine is still starting; retry after the delay in Retry-After "
                "(the stack logs 'ragserve is ready' once it answers)",
                "engine_starting",
                {"Retry-After": "5"},
            )

    return Relay(http_client(engine.base_url, timeout_s), "the model engine", ready_check)


def create_app(settings: EngineSettings, web: WebSettings) -> FastAPI:
    """The FastAPI app mounted at /v1; ``app.state.engine`` is set once the service starts."""
    app = openai_app(web, "ragserve model service", "OpenAI-compatible chat on vLLM.", "bentos.access.llm")

    def engine(request: Request) -> Relay:
        return app_state(request, "engine")

    @app.get("/models")
    async def list_models(request: Request) -> Response:
        return await engine(request).forward("GET", "/v1/models")

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_body(ChatCompletionRequest, await read_json(request, web.max_body_bytes))
        payload = engine_payload(req, settings.model_name, settings.max_model_len)
        if settings.log_prompts:
            audit_prompt(request.scope.get("state", {}).get("request_id"), payload["messages"])
        client = engine(request)
        if req.stream:
            sent = time.perf_counter()
            return await client.stream(
                "/v1/chat/completions", payload, lambda: CHAT_STEPS.labels("engine_first_text").observe(time.perf_counter() - sent)
            )
        return await client.forward("POST", "/v1/chat/completions", payload)

    @app.get("/engine", include_in_schema=False)
    async def engine_address(request: Request) -> dict:
        """Where a caller on this host reaches the engine itself, and whether it serves yet: the
        gateway streams from it directly (bentos/chat/engine_link.py)."""
        process: Engine = app_state(request, "engine_process")
        return {"url": process.base_url, "warm": process.warm and process.running}

    add_not_found_route(app)
    return app


def audit_prompt(request_id: str | None, messages: list) -> None:
    """RAGSERVE_LOG_PROMPTS: exactly what reaches the model, logged by whichever service sends it."""
    log.info("prompt", extra={"fields": {"request_id": request_id, "messages": messages}})
