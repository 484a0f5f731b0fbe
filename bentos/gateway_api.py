"""The gateway's OpenAI-compatible API: retrieval-augmented chat with citations, and /v1/retrieve.

Each chat request retrieves the top chunks for the last user message from the published index,
puts them into the prompt as numbered sources and relays to the model service; the answer carries
a top-level ``citations`` list in rank order (in the first chunk when streaming).

With guardrails on (the default) the NeMo Guardrails flows in guardrails/ run at three points:
on the user's message before retrieval (masking, then attack and harm screening), on the relevant
chunks before they enter the prompt, and on the answer (masking as it streams, citations).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Histogram

from .completions import completion, completion_chunks
from .guard.rails import Guard, StreamGuard, masked_conversation
from .http_common import SERVICE_METRICS, APIError, add_not_found_route, app_state, openai_app, parse_body, read_json
from .llm_api import prepare_chat
from .prompting import NOT_FOUND, last_user_text, with_sources
from .relay import SSE_HEADERS, Relay, UpstreamError, sse, sse_events
from .retrieval.retriever import Retriever
from .retrieval.search import Hit
from .schemas import ChatCompletionRequest, Citation, RetrievedChunk, RetrieveRequest, RetrieveResponse
from .settings import Settings


log = logging.getLogger("bentos.gateway")
# What the gateway adds before the model sees a request; `ragserve bench serve` reports it too.
PREPARE = Histogram("ragserve_gateway_prepare_seconds", "Chat requests relayed to the model: time from arrival to relay (guardrails, embedding, search).",
                    registry=SERVICE_METRICS, buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5))


def log_retrieval(request: Request, r) -> None:
    log.info("retrieved", extra={"fields": {  # no query text: it may hold personal data
        "request_id": request.scope.get("state", {}).get("request_id"), "index_version": r.version,
        "candidates": len(r.hits), "relevant": len(r.relevant), "embed_ms": round(r.embed_ms, 1), "search_ms": round(r.search_ms, 1),
    }})


def citations(hits: list[Hit]) -> list[dict]:
    return [Citation(source=h.source, chunk_id=h.chunk_id, score=h.score).model_dump() for h in hits]


def create_gateway_app(settings: Settings) -> FastAPI:
    """Mounted at /v1; ``app.state.retriever``, ``app.state.llm`` and ``app.state.guard`` (None
    with RAGSERVE_GUARDRAILS=false) are set when the service starts."""
    app = openai_app(settings, "ragserve gateway", "Guarded, retrieval-augmented, OpenAI-compatible chat.", "bentos.access.gateway")
    app.state.guard = None

    @app.get("/models")
    async def list_models(request: Request) -> Response:
        return await app_state(request, "llm").forward("GET", "/v1/models")

    @app.post("/retrieve", response_model=RetrieveResponse)
    async def retrieve_route(request: Request) -> RetrieveResponse:
        req = parse_body(RetrieveRequest, await read_json(request, settings.max_body_bytes))
        if not req.query.strip():
            raise APIError(400, "query is empty; send the text to search for", "empty_query")
        if req.k > settings.max_k:
            raise APIError(400, f"k={req.k} is above the limit {settings.max_k} (RAGSERVE_MAX_K); ask for fewer chunks", "k_too_large")
        retriever: Retriever = app_state(request, "retriever")
        r = await retriever.search(req.query, req.k, *await retriever.embed_query(req.query))
        log_retrieval(request, r)
        chunks = [RetrievedChunk(source=h.source, chunk_id=h.chunk_id, score=h.score, doc_id=h.doc_id, title=h.title, text=h.text, similarity=h.similarity) for h in r.hits]
        return RetrieveResponse(query=req.query, k=req.k, index_version=r.version, chunks=chunks, timing_ms={"embed": round(r.embed_ms, 2), "search": round(r.search_ms, 2)})

    def refusal(guard: Guard, req: ChatCompletionRequest, rail: str) -> Response:
        """A blocked request still gets a normal completion: a short refusal, finish_reason
        content_filter, and which rail blocked it."""
        extra = {"citations": [], "guardrails": {"blocked_by": rail}}
        if req.stream:
            return StreamingResponse(completion_chunks(settings.model_name, guard.refusal, "content_filter", **extra), media_type="text/event-stream", headers=SSE_HEADERS)
        return JSONResponse(completion(settings.model_name, guard.refusal, "content_filter", **extra))

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = time.perf_counter()
        req = parse_body(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        payload = prepare_chat(req, settings)
        query = last_user_text(req.messages)
        if not query.strip():
            raise APIError(400, "the conversation has no user message with text; the last user message is what is searched", "no_user_message")
        retriever: Retriever = app_state(request, "retriever")
        guard: Guard | None = request.app.state.guard
        # The query's embedding feeds both the input rail's classifier and the search, which run
        # side by side: the search never leaves the gateway, and a blocked request discards it.
        vector, embed_ms = await retriever.embed_query(query)
        if guard is not None:
            checked, found = await asyncio.gather(guard.check_input(query, vector), retriever.search(query, settings.retrieve_k, vector, embed_ms))
            if checked.blocked_by:
                return refusal(guard, req, checked.blocked_by)
            payload["messages"] = masked_conversation(guard, payload["messages"], checked.text)
        else:
            found = await retriever.search(query, settings.retrieve_k, vector, embed_ms)
        log_retrieval(request, found)
        hits = found.relevant
        if guard is not None and hits:
            screened = await guard.check_retrieval([h.text for h in hits], [h.vector for h in hits])
            if screened.blocked_by:
                return refusal(guard, req, screened.blocked_by)
            hits = [hits[i] for i in screened.kept]
        if found.version is not None:
            # With an index, answer only from it: nothing relevant means saying so, not inventing.
            if not hits:
                if req.stream:
                    return StreamingResponse(completion_chunks(settings.model_name, NOT_FOUND, citations=[]), media_type="text/event-stream", headers=SSE_HEADERS)
                return JSONResponse(completion(settings.model_name, NOT_FOUND, citations=[]))
            payload["messages"] = with_sources(payload["messages"], hits)
        # else: nothing published yet (a fresh `make serve`): plain chat, with empty citations.
        llm: Relay = app_state(request, "llm")
        cites = citations(hits)
        sources = [h.source for h in hits]
        PREPARE.observe(time.perf_counter() - arrived)
        if not req.stream:
            r = await llm.request("POST", "/v1/chat/completions", payload)
            if r.status_code != 200:
                return UpstreamError.of(r).response()
            body = r.json()
            if guard is not None:
                for choice in body.get("choices", []):
                    message = choice.get("message") or {}
                    content = message.get("content")
                    checked = await guard.check_output(content or "", sources, req.format_fixed)
                    if checked.blocked_by:
                        return refusal(guard, req, checked.blocked_by)
                    if content is not None or checked.text:  # a tool call's null content stays null
                        choice["message"] = {**message, "content": checked.text}
            return JSONResponse({**body, "citations": cites})
        try:
            upstream = await llm.open_stream("/v1/chat/completions", payload)
        except UpstreamError as e:
            return e.response()
        output_rails = StreamGuard(guard, sources, req.format_fixed) if guard is not None else None

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                async for event in sse_events(upstream):
                    if isinstance(event, dict):
                        if first:
                            event = {**event, "citations": cites}
                            first = False
                        if output_rails is not None and event.get("choices"):
                            event = {**event, "choices": [await output_rails.choice(c) for c in event["choices"]]}
                    yield sse(event)
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    add_not_found_route(app)
    return app
