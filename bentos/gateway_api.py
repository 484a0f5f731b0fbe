"""The gateway's OpenAI-compatible API: retrieval-augmented chat with citations, and /v1/retrieve.

Each chat request retrieves the top chunks for the last user message from the published index,
puts them into the prompt as numbered sources and relays to the model service; the answer carries
a top-level ``citations`` list in rank order (in the first chunk when streaming).
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .completions import completion, completion_chunks
from .http_common import APIError, add_not_found_route, app_state, openai_app, parse_body, read_json
from .llm_api import prepare_chat
from .prompting import NOT_FOUND, last_user_text, with_sources
from .relay import SSE_HEADERS, Relay, UpstreamError, sse, sse_events
from .retrieval.retriever import Retriever
from .retrieval.search import Hit
from .schemas import ChatCompletionRequest, Citation, RetrievedChunk, RetrieveRequest, RetrieveResponse
from .settings import Settings


log = logging.getLogger("bentos.gateway")


def log_retrieval(request: Request, r) -> None:
    log.info("retrieved", extra={"fields": {  # no query text: it may hold personal data
        "request_id": request.scope.get("state", {}).get("request_id"), "index_version": r.version,
        "candidates": len(r.hits), "relevant": len(r.relevant), "embed_ms": round(r.embed_ms, 1), "search_ms": round(r.search_ms, 1),
    }})


def citations(hits: list[Hit]) -> list[dict]:
    return [Citation(source=h.source, chunk_id=h.chunk_id, score=h.score).model_dump() for h in hits]


def create_gateway_app(settings: Settings) -> FastAPI:
    """Mounted at /v1; ``app.state.retriever`` and ``app.state.llm`` are set when the service starts."""
    app = openai_app(settings, "ragserve gateway", "Retrieval-augmented, OpenAI-compatible chat.", "bentos.access.gateway")

    async def retrieve(request: Request, query: str, k: int):
        retriever: Retriever = app_state(request, "retriever")
        # Embedding and search are CPU work: off the event loop, so streams keep flowing.
        return await anyio.to_thread.run_sync(retriever.retrieve, query, k)

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
        r = await retrieve(request, req.query, req.k)
        log_retrieval(request, r)
        chunks = [RetrievedChunk(source=h.source, chunk_id=h.chunk_id, score=h.score, doc_id=h.doc_id, title=h.title, text=h.text, similarity=h.similarity) for h in r.hits]
        return RetrieveResponse(query=req.query, k=req.k, index_version=r.version, chunks=chunks, timing_ms={"embed": round(r.embed_ms, 2), "search": round(r.search_ms, 2)})

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_body(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        payload = prepare_chat(req, settings)
        query = last_user_text(req.messages)
        if not query.strip():
            raise APIError(400, "the conversation has no user message with text; the last user message is what is searched", "no_user_message")
        found = await retrieve(request, query, settings.retrieve_k)
        log_retrieval(request, found)
        hits = found.relevant
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
        if not req.stream:
            r = await llm.request("POST", "/v1/chat/completions", payload)
            if r.status_code != 200:
                return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
            return JSONResponse({**r.json(), "citations": cites})
        try:
            upstream = await llm.open_stream("/v1/chat/completions", payload)
        except UpstreamError as e:
            return e.response()

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                async for event in sse_events(upstream):
                    if first and isinstance(event, dict):
                        event = {**event, "citations": cites}
                        first = False
                    yield sse(event)
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    add_not_found_route(app)
    return app
