"""The gateway's OpenAI-compatible API: retrieval-augmented chat with citations, and /v1/retrieve.

Each chat request retrieves the top chunks for the last user message from the published index,
puts them into the prompt as numbered sources and relays to the model service; the answer carries
a top-level ``citations`` list in rank order (in the first chunk when streaming). The steps it
takes, guardrails included, are in ``bentos/chat/steps.py``.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bentos.chat.cache import tenant_of
from bentos.chat.engine_link import EngineLink
from bentos.chat.prompting import last_user_text
from bentos.chat.steps import ChatPath, Turn, log_retrieval
from bentos.guard.rails import Guard
from bentos.retrieval.retriever import Retriever
from bentos.settings import Settings
from bentos.web.app import add_not_found_route, app_state, openai_app
from bentos.web.bodies import parse_body, read_json
from bentos.web.errors import APIError
from bentos.web.relay import Relay
from bentos.web.schemas import (
    ChatCompletionRequest,
    RetrievedChunk,
    RetrieveRequest,
    RetrieveResponse,
    engine_payload,
)
from bentos.web.timing import FeltLatency


def create_gateway_app(settings: Settings) -> FastAPI:
    """Mounted at /v1; ``wire`` gives it what it serves with when the service starts."""
    app = openai_app(settings.web, "ragserve gateway", "Guarded, retrieval-augmented, OpenAI-compatible chat.", "bentos.access.gateway")
    app.add_middleware(FeltLatency)  # outermost: the client's wait, queue and auth included

    @app.get("/models")
    async def list_models(request: Request) -> Response:
        llm: Relay = app_state(request, "llm")
        return await llm.forward("GET", "/v1/models")

    @app.post("/retrieve", response_model=RetrieveResponse)
    async def retrieve_route(request: Request) -> RetrieveResponse:
        req = parse_body(RetrieveRequest, await read_json(request, settings.web.max_body_bytes))
        if not req.query.strip():
            raise APIError(400, "query is empty; send the text to search for", "empty_query")
        if req.k > settings.retrieval.max_k:
            raise APIError(
                400, f"k={req.k} is above the limit {settings.retrieval.max_k} (RAGSERVE_MAX_K); ask for fewer chunks", "k_too_large"
            )
        retriever: Retriever = app_state(request, "retriever")
        r = await retriever.search(req.query, req.k, *await retriever.embed_query(req.query))
        log_retrieval(request_id(request), r)
        chunks = [
            RetrievedChunk(
                source=h.source, chunk_id=h.chunk_id, score=h.score, doc_id=h.doc_id, title=h.title, text=h.text, similarity=h.similarity
            )
            for h in r.hits
        ]
        return RetrieveResponse(
            query=req.query,
            k=req.k,
            index_version=r.version,
            chunks=chunks,
            timing_ms={"embed": round(r.embed_ms, 2), "search": round(r.search_ms, 2)},
        )

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = request.scope.get("state", {}).get("arrived") or time.perf_counter()
        req = parse_body(ChatCompletionRequest, await read_json(request, settings.web.max_body_bytes))
        payload = engine_payload(req, settings.engine.model_name, settings.engine.max_model_len)
        query = last_user_text(req.messages)
        if not query.strip():
            raise APIError(
                400, "the conversation has no user message with text; the last user message is what is searched", "no_user_message"
            )
        chat: ChatPath = app_state(request, "chat")
        # with keys, each key is a tenant; without (loopback only), every caller is the same one
        tenant = tenant_of(request.headers.get("authorization") if settings.web.api_keys else None)
        turn = Turn(req, payload, query, settings.engine.model_name, request_id(request), arrived, tenant=tenant)
        return await chat(turn)

    add_not_found_route(app)
    return app


def wire(app: FastAPI, settings: Settings, retriever: Retriever, llm: Relay, guard: Guard | None, link: EngineLink | None = None) -> None:
    """What the routes serve with, set when the service starts (until then they answer 503)."""
    app.state.retriever, app.state.llm = retriever, llm
    app.state.chat = ChatPath.build(settings, retriever, llm, guard, link)


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")
