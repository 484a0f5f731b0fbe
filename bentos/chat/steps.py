"""The gateway's chat path as a sequence of named steps.

A chat request becomes a ``Turn``. The steps before the model run in order; each reads and
updates the turn, and either lets it go on (returns None) or answers it itself (a refusal,
"nothing found"), which ends it. Then ``ModelCall`` relays the turn to the model service and runs
the answer steps (the output rails) on what comes back, streamed or not:

    EmbedQuery -> InputRails -> Retrieve -> RetrievalRails -> Ground -> ModelCall -> OutputRails

With RAGSERVE_CACHE, ``CacheLookup`` follows the input rails and ``CacheStore`` is the last answer
step (bentos/chat/cache.py). A new step is a class with the same call shape, put into the list in
``ChatPath.build``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Histogram

from bentos.chat.cache import AnswerCache, CacheLookup, CacheStore
from bentos.chat.completions import answer
from bentos.chat.engine_link import EngineLink
from bentos.chat.prompting import NOT_FOUND, read_template, source_text, with_sources
from bentos.guard.rails import Decision, Guard, StreamGuard, masked_conversation
from bentos.model.api import audit_prompt
from bentos.quality.monitor import QualityMonitor
from bentos.retrieval.retriever import Retrieval, Retriever
from bentos.retrieval.search import Hit
from bentos.settings import Settings
from bentos.web.metrics import SERVICE_METRICS
from bentos.web.relay import SSE_HEADERS, Relay, UpstreamError, sse, sse_events
from bentos.web.schemas import ChatCompletionRequest, Citation
from bentos.web.timing import CHAT_STEPS

log = logging.getLogger("bentos.gateway")
CHAT_PATH = "/v1/chat/completions"
# What the gateway adds before the model sees a request; `ragserve bench serve` reports it too.
PREPARE = Histogram(
    "ragserve_gateway_prepare_seconds",
    "Chat requests relayed to the model: time from arrival to relay (guardrails, embedding, search).",
    registry=SERVICE_METRICS,
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
)


@dataclass
class Turn:
    """One chat request on its way through the steps."""

    req: ChatCompletionRequest
    payload: dict  # what the model service will be sent
    query: str  # the last user message's text: what is screened and searched
    model: str  # the name answers carry
    request_id: str | None = None
    arrived: float = field(default_factory=time.perf_counter)
    vector: np.ndarray | None = None
    search: asyncio.Future[Retrieval] | None = None
    index_version: int | None = None  # None: nothing is published yet
    hits: list[Hit] = field(default_factory=list)  # the relevant chunks that go into the prompt
    screened: str = ""  # the user's message as the input rails passed it (masked)
    stream_done: bool = False  # the answer steps ended the stream early (a block mid-stream)
    tenant: str = ""  # a hash of the credential presented (bentos/chat/cache.py)
    cache_key: str | None = None  # set when the answer may be cached
    extra: dict = field(default_factory=dict)  # more top-level fields for the model's answer

    @property
    def sources(self) -> list[str]:
        return [h.source for h in self.hits]

    @property
    def citations(self) -> list[dict]:
        text = self.req.citation_text
        return [
            Citation(source=h.source, chunk_id=h.chunk_id, score=h.score, text=source_text(h) if text else None).model_dump(
                exclude_none=True
            )
            for h in self.hits
        ]

    def answer(self, content: str, finish_reason: str = "stop", **extra) -> Response:
        """The gateway's own answer, in the shape the model's would have had (streamed or not)."""
        return answer(self.model, self.req.stream, content, finish_reason, **{**self.extra, **extra})


class Step(Protocol):
    """A step before the model; ``name`` labels its time in ``ragserve_chat_step_seconds``."""

    name: str

    async def __call__(self, turn: Turn) -> Response | None: ...


class AnswerStep(Protocol):
    """A step on the model's answer: ``answer`` on a whole one (it may change the body, or return
    a response that replaces it), ``stream`` gives the filter each streamed event goes through
    (None: the event is dropped; ``turn.stream_done``: the stream ends after it)."""

    async def answer(self, turn: Turn, body: dict) -> Response | None: ...

    def stream(self, turn: Turn) -> Callable[[dict], Awaitable[dict | None]]: ...


def log_retrieval(request_id: str | None, found: Retrieval) -> None:
    log.info(
        "retrieved",
        extra={
            "fields": {  # no query text: it may hold personal data
                "request_id": request_id,
                "index_version": found.version,
                "candidates": len(found.hits),
                "relevant": len(found.relevant),
                "embed_ms": round(found.embed_ms, 1),
                "search_ms": round(found.search_ms, 1),
            }
        },
    )


def refusal(guard: Guard, turn: Turn, decision: Decision) -> Response:
    """A blocked request still gets a normal completion: a short refusal, finish_reason
    content_filter, and which rail blocked it (with the guard model's categories)."""
    return turn.answer(guard.refusal, "content_filter", citations=[], guardrails=decision.refusal_details)


class EmbedQuery:
    """The query's embedding (batched with other requests'), then its search started at once: it
    runs beside the input rails, which screen the same vector; a refused request discards it.
    (Measured on 2 cores: embedding beside the rails and the full-text search slowed all three.)"""

    name = "embed"

    def __init__(self, retriever: Retriever, k: int):
        self.retriever, self.k = retriever, k

    async def __call__(self, turn: Turn) -> None:
        turn.vector, embed_ms = await self.retriever.embed_query(turn.query)
        asked = time.perf_counter()
        turn.search = asyncio.ensure_future(self.retriever.search(turn.query, self.k, turn.vector, embed_ms, asked))
        turn.search.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even when discarded


class InputRails:
    """Masking, then attack and harm screening of the user's message; earlier turns are masked too."""

    name = "input_rails"

    def __init__(self, guard: Guard):
        self.guard = guard

    async def __call__(self, turn: Turn) -> Response | None:
        checked = await self.guard.check_input(turn.query, turn.vector)
        if checked.blocked_by:
            return refusal(self.guard, turn, checked)
        turn.screened = checked.text
        turn.payload["messages"] = masked_conversation(self.guard, turn.payload["messages"], checked.text)
        return None


class Retrieve:
    """The search's outcome: the relevant chunks of the published index (none if nothing is)."""

    name = "retrieve"  # the wait for the search after the rails: what they did not hide

    async def __call__(self, turn: Turn) -> None:
        found = await turn.search
        log_retrieval(turn.request_id, found)
        if found.version is not None:  # the search itself, which ran beside the input rails
            CHAT_STEPS.labels("search").observe(found.search_ms / 1000)
            for part, ms in found.parts_ms.items():
                CHAT_STEPS.labels(part).observe(ms / 1000)
        turn.index_version, turn.hits = found.version, found.relevant


class RetrievalRails:
    """Chunks that carry instructions for the model (indirect prompt injection) are dropped."""

    name = "retrieval_rails"

    def __init__(self, guard: Guard):
        self.guard = guard

    async def __call__(self, turn: Turn) -> Response | None:
        if not turn.hits:
            return None
        screened = await self.guard.check_retrieval([h.text for h in turn.hits], [h.vector for h in turn.hits])
        if screened.blocked_by:
            return refusal(self.guard, turn, screened)
        turn.hits = [turn.hits[i] for i in screened.kept]
        return None


class Ground:
    """The prompt: the chunks go first as numbered sources. With an index published, nothing
    relevant means saying so rather than letting the model invent an answer; with none published
    yet (a fresh `make serve`) the chat goes to the model as it is."""

    name = "prompt"

    def __init__(self, template: str):
        self.template = template

    async def __call__(self, turn: Turn) -> Response | None:
        if turn.index_version is None:
            return None
        if not turn.hits:
            return turn.answer(NOT_FOUND, citations=[])
        turn.payload["messages"] = with_sources(turn.payload["messages"], turn.hits, self.template)
        return None


class OutputRails:
    """Masking (as the text streams), moderation by the guard model where there is one, and
    citations, per choice; the answer the client's fixed format asks for is only masked."""

    def __init__(self, guard: Guard, stream_every_tokens: int):
        self.guard, self.every_tokens = guard, stream_every_tokens

    async def answer(self, turn: Turn, body: dict) -> Response | None:
        for choice in body.get("choices", []):
            message = choice.get("message") or {}
            content = message.get("content")
            checked = await self.guard.check_output(content or "", turn.sources, turn.screened, turn.req.format_fixed)
            if checked.blocked_by:
                return refusal(self.guard, turn, checked)
            if content is not None or checked.text:  # a tool call's null content stays null
                choice["message"] = {**message, "content": checked.text}
        return None

    def stream(self, turn: Turn) -> Callable[[dict], Awaitable[dict | None]]:
        rails = StreamGuard(self.guard, turn.sources, turn.screened, turn.req.format_fixed, self.every_tokens)

        async def each(event: dict) -> dict | None:
            if not event.get("choices"):
                return event
            choices = [c for c in [await rails.choice(c) for c in event["choices"]] if c is not None]
            turn.stream_done = rails.finished
            return {**event, "choices": choices} if choices else None

        return each


class ModelCall:
    """The model service's answer, with ``citations`` beside it (in the first chunk when
    streaming), after the answer steps. Streams come from the engine directly where ``link``
    allows (bentos/chat/engine_link.py)."""

    def __init__(self, llm: Relay, answer_steps: list[AnswerStep], link: EngineLink | None = None, log_prompts: bool = False):
        self.llm, self.answer_steps, self.link, self.log_prompts = llm, answer_steps, link, log_prompts

    async def open_stream(self, turn: Turn) -> httpx.Response:
        if self.link is None:
            return await self.llm.open_stream(CHAT_PATH, turn.payload)
        upstream, direct = await self.link.open_stream(CHAT_PATH, turn.payload)
        if direct and self.log_prompts:  # the model service logs the streams it relays itself
            audit_prompt(turn.request_id, turn.payload["messages"])
        return upstream

    async def __call__(self, turn: Turn) -> Response:
        sent = time.perf_counter()
        if not turn.req.stream:
            r = await self.llm.request("POST", CHAT_PATH, turn.payload)
            CHAT_STEPS.labels("model_answer").observe(time.perf_counter() - sent)
            if r.status_code != 200:
                return UpstreamError.of(r).response()
            body = r.json()
            for step in self.answer_steps:
                if (replaced := await step.answer(turn, body)) is not None:
                    return replaced
            return JSONResponse({**body, "citations": turn.citations, **turn.extra})
        try:
            upstream = await self.open_stream(turn)
        except UpstreamError as e:
            return e.response()
        headers = time.perf_counter()
        CHAT_STEPS.labels("model_headers").observe(headers - sent)
        filters = [step.stream(turn) for step in self.answer_steps]

        async def events() -> AsyncIterator[bytes]:
            first, text_in, text_out = True, None, False
            try:
                async for event in sse_events(upstream):
                    if isinstance(event, dict):
                        if text_in is None and has_text(event):
                            text_in = time.perf_counter()
                            CHAT_STEPS.labels("model_first_text").observe(text_in - headers)
                        if first:
                            event, first = {**event, "citations": turn.citations, **turn.extra}, False
                        for each in filters:
                            if event is not None:
                                event = await each(event)
                        if not text_out and text_in is not None and event is not None and has_text(event):
                            text_out = True  # what the answer steps held back of the first text
                            CHAT_STEPS.labels("hold_back").observe(time.perf_counter() - text_in)
                    if event is not None:
                        yield sse(event)
                    if turn.stream_done:  # closing the upstream stream stops the model's generation
                        yield sse("[DONE]")
                        break
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def has_text(event: dict) -> bool:
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or ())


class ChatPath:
    """The steps before the model, then the model call."""

    def __init__(self, steps: list[Step], model_call: ModelCall):
        self.steps, self.model_call = steps, model_call

    @classmethod
    def build(cls, settings: Settings, retriever: Retriever, llm: Relay, guard: Guard | None, link: EngineLink | None = None) -> ChatPath:
        rails = guard is not None
        cache = (
            AnswerCache(
                settings.cache.cache_min_similarity,
                settings.cache.cache_max_entries,
                settings.cache.cache_max_bytes,
                settings.cache.cache_ttl_s,
            )
            if settings.cache.cache
            else None
        )
        steps: list[Step] = [
            EmbedQuery(retriever, settings.retrieval.retrieve_k),
            *([InputRails(guard)] if rails else []),
            *([CacheLookup(cache, retriever.reader)] if cache else []),
            Retrieve(),
            *([RetrievalRails(guard)] if rails else []),
            Ground(read_template(settings.retrieval.prompt_template)),
        ]
        answer_steps: list[AnswerStep] = [
            *([OutputRails(guard, settings.guard.guard_stream_every_tokens)] if rails else []),
            *([CacheStore(cache)] if cache else []),
            # last: what the user was sent, scored after it is sent
            *([QualityMonitor(settings.web.quality_sample, settings.retrieval.embed_model)] if settings.web.quality_sample else []),
        ]
        return cls(steps, ModelCall(llm, answer_steps, link, settings.engine.log_prompts))

    async def __call__(self, turn: Turn) -> Response:
        t = time.perf_counter()
        CHAT_STEPS.labels("request").observe(t - turn.arrived)  # queue, auth, reading the body
        for step in self.steps:
            answered = await step(turn)
            t, before = time.perf_counter(), t
            CHAT_STEPS.labels(step.name).observe(t - before)
            if answered is not None:
                return answered
        PREPARE.observe(t - turn.arrived)
        return await self.model_call(turn)
