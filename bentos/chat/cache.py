"""A semantic answer cache: a question that means the same as one already answered gets that
answer again, in milliseconds, without retrieval or the model.

A hit needs everything that could change the answer to match exactly, and the last user message to
be close in meaning (cosine of the vectors retrieval computes anyway, at least
RAGSERVE_CACHE_MIN_SIMILARITY, chosen by `ragserve eval cache`):
- the tenant (a hash of the API key presented, RAGSERVE_API_KEY taking several; with no key set,
  loopback only, every caller is one tenant), so one tenant's answer never reaches another;
- the model and the published index version: a new publication makes every entry unreachable
  (and they are dropped);
- the conversation before the last user message, system messages included, and every request
  field that shapes the output (format, tools, stop, n, sampling other than temperature, ...),
  with max_tokens by power-of-two bucket;
- a deterministic request: temperature 0, or the client opts in with ``"cache": true``
  (``"cache": false`` never reads nor writes);
- the same question, word for word: the masked last user messages must have the same content
  words in the same order (bentos/chat/question_match.py), since the cosine alone takes "the
  first quarter" for "the second".

What is stored is what the user saw: the answer after the output rails (masked), its citations
and usage. Refusals, cut streams and tool calls are not stored. In memory, per replica, bounded
by entries and bytes, least recently used first out, each entry living RAGSERVE_CACHE_TTL_S.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Histogram

from bentos.chat.completions import completion, completion_chunks
from bentos.chat.question_match import Question
from bentos.web.metrics import SERVICE_METRICS
from bentos.web.relay import SSE_HEADERS
from bentos.web.timing import REPLAY_HEADER

log = logging.getLogger("bentos.gateway")

HITS = Counter("ragserve_cache_hits", "Chat requests answered from the answer cache.", registry=SERVICE_METRICS)
MISSES = Counter("ragserve_cache_misses", "Cacheable chat requests the answer cache could not answer.", registry=SERVICE_METRICS)
EVICTIONS = Counter(
    "ragserve_cache_evictions", "Answer cache entries dropped, by why.", ["reason"], registry=SERVICE_METRICS
)  # reason: lru (entries or bytes cap), ttl, index (a new publication)
HIT_SECONDS = Histogram(
    "ragserve_cache_hit_seconds",
    "Time from a request's arrival to its cached answer being sent.",
    registry=SERVICE_METRICS,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)

# Request fields that do not shape what a deterministic answer says.
UNSHAPING = {"messages", "stream", "stream_options", "temperature", "cache", "user", "max_tokens", "max_completion_tokens", "model"}


def tenant_of(authorization: str | None) -> str:
    """A hash of the presented credential (None: the one tenant of a server without keys)."""
    return hashlib.sha256((authorization or "").encode()).hexdigest()[:16]


def cacheable(req) -> bool:
    """Deterministic (temperature 0, or opted in) and not opted out."""
    opt = (req.model_extra or {}).get("cache")
    if opt is False:
        return False
    return opt is True or req.temperature == 0


def exact_key(req, tenant: str, model: str, index_version: int | None) -> str:
    """Everything but the last user message's wording that a hit must match."""
    body = req.model_dump(exclude_none=True)
    messages = body["messages"]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    context = [m for i, m in enumerate(messages) if i != last]  # earlier turns, system messages, anything after
    limit = req.output_limit
    shaping = {k: v for k, v in body.items() if k not in UNSHAPING}
    parts = [tenant, model, index_version, context, shaping, limit.bit_length() if limit else None]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Entry:
    key: str
    vector: np.ndarray
    question: Question  # what a hit must ask, word for word
    content: str
    finish_reason: str
    citations: list[dict]
    usage: dict | None = None
    created: float = 0.0  # set when stored

    @cached_property  # read on every store and eviction: measured once
    def size(self) -> int:
        return len(self.content.encode()) + self.vector.nbytes + len(json.dumps(self.citations)) + 200


class AnswerCache:
    def __init__(self, min_similarity: float, max_entries: int, max_bytes: int, ttl_s: float):
        self.min_similarity, self.max_entries, self.max_bytes, self.ttl_s = min_similarity, max_entries, max_bytes, ttl_s
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.by_key: dict[str, list[int]] = {}
        self._stacked: dict[str, np.ndarray] = {}  # by_key's vectors, in its order
        self.bytes = 0
        self.index_version: int | None = None
        self._next = 0

    def lookup(self, key: str, vector: np.ndarray, question: Question) -> tuple[Entry, float] | None:
        """The closest entry at or above the threshold that asks the same question."""
        now = time.monotonic()
        for i in [i for i in self.by_key.get(key, ()) if now - self.entries[i].created > self.ttl_s]:
            self._drop(i, "ttl")
        ids = self.by_key.get(key)
        if not ids:
            return None
        sims = self._matrix(key) @ vector  # one product for every entry under the key
        above = np.flatnonzero(sims >= self.min_similarity)
        for j in above[np.argsort(-sims[above])]:  # closest first
            entry = self.entries[ids[j]]
            if entry.question.matches(question):
                self.entries.move_to_end(ids[j])
                return entry, float(sims[j])
        return None

    def _matrix(self, key: str) -> np.ndarray:
        """The key's vectors stacked, rebuilt after a store or a drop under the key."""
        if key not in self._stacked:
            self._stacked[key] = np.stack([self.entries[i].vector for i in self.by_key[key]])
        return self._stacked[key]

    def store(self, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        i, self._next = self._next, self._next + 1
        entry.created = time.monotonic()
        self.entries[i] = entry
        self.by_key.setdefault(entry.key, []).append(i)
        self._stacked.pop(entry.key, None)
        self.bytes += entry.size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)), "lru")

    def follow(self, index_version: int | None) -> None:
        """A new publication: every entry was built from the old documents."""
        if index_version != self.index_version:
            for i in list(self.entries):
                self._drop(i, "index")
            self.index_version = index_version

    def _drop(self, i: int, reason: str) -> None:
        entry = self.entries.pop(i)
        self.bytes -= entry.size
        ids = self.by_key[entry.key]
        ids.remove(i)
        self._stacked.pop(entry.key, None)
        if not ids:
            del self.by_key[entry.key]
        EVICTIONS.labels(reason).inc()


def question_of(turn) -> Question:
    """The last user message as the input rails passed it (masked), or as sent without rails."""
    return Question.of(turn.screened or turn.query, turn.query)


def replay(turn, entry: Entry, similarity: float) -> Response:
    """The cached answer in the shape the model's would have had, streamed when asked."""
    extra = {"citations": entry.citations, "cache": {"hit": True, "similarity": round(similarity, 4)}}
    usage = entry.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if turn.req.stream:
        # word by word, as a stream of the model's would come, only without waiting
        pieces = [w + " " for w in entry.content.split(" ")]
        pieces[-1] = pieces[-1][:-1]
        chunks = completion_chunks(turn.model, pieces, entry.finish_reason, usage=usage, **extra)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={**SSE_HEADERS, REPLAY_HEADER: "hit"})
    return JSONResponse(completion(turn.model, entry.content, entry.finish_reason, usage=usage, **extra), headers={REPLAY_HEADER: "hit"})


class CacheLookup:
    """After the input rails (a blocked or masked request is handled as without the cache), before
    the search's results are used and before the model."""

    name = "cache_lookup"

    def __init__(self, cache: AnswerCache, reader):
        self.cache, self.reader = cache, reader

    async def version(self, turn) -> int | None:
        """The published version answers are built from now: the reader's, held in memory and
        checked within RAGSERVE_INDEX_REFRESH_S, without waiting for this request's search (about
        5 ms of a hit's time); the search's own when it is done or the reader is due to check."""
        if turn.search.done() or self.reader.due():
            return (await turn.search).version
        return self.reader.snapshot()[1]

    async def __call__(self, turn) -> Response | None:
        if not cacheable(turn.req) or turn.req.n != 1:
            turn.extra["cache"] = {"hit": False}
            return None
        version = await self.version(turn)
        self.cache.follow(version)
        turn.cache_key = exact_key(turn.req, turn.tenant, turn.model, version)
        hit = self.cache.lookup(turn.cache_key, turn.vector, question_of(turn))
        if hit is None:
            MISSES.inc()
            turn.extra["cache"] = {"hit": False}
            return None
        HITS.inc()
        response = replay(turn, *hit)
        HIT_SECONDS.observe(time.perf_counter() - turn.arrived)
        log.info("answer cache hit", extra={"fields": {"request_id": turn.request_id, "similarity": round(hit[1], 4)}})
        return response


class CacheStore:
    """The last answer step: what the user was sent, stored under the turn's key."""

    def __init__(self, cache: AnswerCache):
        self.cache = cache

    def _entry(self, turn, content: str, finish_reason: str, usage: dict | None) -> Entry:
        # keyed by the version the answer was built from (the search's), should it differ from the lookup's
        key = exact_key(turn.req, turn.tenant, turn.model, turn.index_version)
        return Entry(key, turn.vector, question_of(turn), content, finish_reason, turn.citations, usage)

    async def answer(self, turn, body: dict) -> Response | None:
        choices = body.get("choices") or []
        if turn.cache_key and len(choices) == 1:
            message, finish = choices[0].get("message") or {}, choices[0].get("finish_reason")
            if isinstance(message.get("content"), str) and not message.get("tool_calls") and finish in ("stop", "length"):
                self.cache.store(self._entry(turn, message["content"], finish, body.get("usage")))
        return None

    def stream(self, turn) -> Callable[[dict], Awaitable[dict | None]]:
        pieces: list[str] = []
        state: dict = {"entry": None, "valid": bool(turn.cache_key)}

        async def each(event: dict) -> dict | None:
            if not state["valid"]:
                return event
            if event.get("usage") and state["entry"] is not None:
                state["entry"].usage = event["usage"]  # the usage chunk follows the last choice
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or choice.get("index", 0) != 0:
                    state["valid"] = False
                    return event
                pieces.append(delta.get("content") or "")
                if choice.get("finish_reason") in ("stop", "length") and not turn.stream_done:
                    state["entry"] = self._entry(turn, "".join(pieces), choice["finish_reason"], None)
                    self.cache.store(state["entry"])
                elif choice.get("finish_reason"):
                    state["valid"] = False
            return event

        return each
