"""Shadow traffic: a copy of live chat requests sent to a slot no user sees, whose answers are
read to the end on tasks of their own, compared with the live answers and discarded.

The live response is never delayed or changed: it is relayed as without a shadow, and only a copy
of its bytes (capped) is kept until the pair is compared. Copies wait for a bounded number of
slots; when those and the bounded queue are full, a copy is dropped and counted. A pair keeps
figures only (statuses, finish reasons, refusals and the rail, time to first text and pace, the
overlap of cited sources, answer similarity, and each answer's faithfulness); the texts only when
the operator opts in.

Faithfulness: the copy asks the candidate for its chunks' text (``citation_text``, which the live
request cannot carry without changing what the user gets), and both answers are scored offline
against those chunks (bentos/quality) on a worker thread. Both slots serve the same documents in a
release, so the candidate's chunks stand for live's. Scoring waits until the pairs are read with
``score=true`` (the promoter does so once the shadow is off): run during the stage, on the router's
cores, it slowed the very answers whose pace the stage measures.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry, Counter

from bentos.web.timing import Timing

MAX_CAPTURED = 1 << 20  # bytes of one answer kept for the comparison
MAX_COMPARED_CHARS = 4000  # answer similarity reads this much of each text


def keep(copy: bytearray, chunk: bytes) -> None:
    """An answer's bytes for the comparison, up to MAX_CAPTURED."""
    if len(copy) < MAX_CAPTURED:
        copy += chunk


@dataclass
class Answer:
    """What one slot answered, read from its body."""

    status: int
    text: str = ""
    finish_reason: str | None = None
    blocked_by: str | None = None
    sources: set[str] = field(default_factory=set)
    ttft_s: float | None = None
    rate: float | None = None
    chunks: list[str] = field(default_factory=list)  # the chunks' text, when the answer carries it

    @property
    def refused(self) -> bool:
        return self.finish_reason == "content_filter"


def read_answer(status: int, body: bytes, timing: Timing) -> Answer:
    """An OpenAI-shaped chat answer, plain JSON or server-sent events, with the gateway's extras
    (``citations``, ``guardrails``). A replay from the answer cache is compared, but not timed: its
    speed says nothing of the release that would have generated it."""
    answer = Answer(status, ttft_s=None if timing.replayed else timing.ttft_s, rate=timing.rate)
    if timing.stream:
        events = []
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                try:
                    events.append(json.loads(line[5:]))
                except json.JSONDecodeError:
                    pass
    else:
        try:
            events = [json.loads(body)] if body else []
        except json.JSONDecodeError:
            events = []
    pieces = []
    for event in events:
        if not isinstance(event, dict):
            continue
        citations = [c for c in event.get("citations") or [] if isinstance(c, dict)]
        answer.sources |= {c.get("source") for c in citations}
        answer.chunks += [c["text"] for c in citations if isinstance(c.get("text"), str)]
        answer.blocked_by = answer.blocked_by or (event.get("guardrails") or {}).get("blocked_by")
        for choice in event.get("choices") or []:
            part = choice.get("delta") or choice.get("message") or {}
            pieces.append(part.get("content") or "")
            answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
    answer.text = "".join(pieces)
    return answer


def asking_for_chunk_text(body: bytes) -> bytes:
    """The copy's body with ``"citation_text": true``; unchanged when it is not a JSON object."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    return json.dumps({**request, "citation_text": True}).encode() if isinstance(request, dict) else body


def grounding(scorer, question: str, live: Answer, shadow: Answer) -> dict:
    """Both answers' faithfulness against the candidate's chunks (None where one did not answer)."""

    def faithfulness(answer: Answer) -> float | None:
        if answer.status != 200 or answer.refused or not answer.text:
            return None
        return scorer.score(question, answer.text, shadow.chunks).faithfulness

    return {"live_faithfulness": faithfulness(live), "shadow_faithfulness": faithfulness(shadow)}


def last_question(body: bytes) -> str:
    try:
        messages = json.loads(body).get("messages") or []
        return next(m.get("content") for m in reversed(messages) if m.get("role") == "user" and isinstance(m.get("content"), str))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, StopIteration):
        return ""


def pair_figures(live: Answer, shadow: Answer, keep_text: bool = False) -> dict:
    """What the comparison of one pair keeps: figures, not text (unless ``keep_text``)."""
    union = live.sources | shadow.sources
    figures = {
        "at": round(time.time(), 3),
        "live_status": live.status,
        "shadow_status": shadow.status,
        "live_finish_reason": live.finish_reason,
        "shadow_finish_reason": shadow.finish_reason,
        "live_refused": live.refused,
        "shadow_refused": shadow.refused,
        "live_blocked_by": live.blocked_by,
        "shadow_blocked_by": shadow.blocked_by,
        "live_ttft_ms": None if live.ttft_s is None else round(live.ttft_s * 1000, 1),
        "shadow_ttft_ms": None if shadow.ttft_s is None else round(shadow.ttft_s * 1000, 1),
        "live_rate": None if live.rate is None else round(live.rate, 1),
        "shadow_rate": None if shadow.rate is None else round(shadow.rate, 1),
        "citation_overlap": round(len(live.sources & shadow.sources) / len(union), 3) if union else 1.0,
        "answer_similarity": round(
            difflib.SequenceMatcher(None, live.text[:MAX_COMPARED_CHARS], shadow.text[:MAX_COMPARED_CHARS], autojunk=False).ratio(), 3
        ),
    }
    if keep_text:
        figures.update(live_text=live.text, shadow_text=shadow.text)
    return figures


class Mirror:
    """Copies of live requests to the shadow slot, at most ``concurrency`` at once and ``queue``
    waiting; the comparisons of the last ``keep`` pairs, numbered from 1."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        registry: CollectorRegistry,
        concurrency: int = 4,
        queue: int = 16,
        keep_text: bool = False,
        keep: int = 1000,
    ):
        self.client, self.concurrency, self.queue, self.keep_text = client, concurrency, queue, keep_text
        self.slots = asyncio.Semaphore(concurrency)
        self.pending = 0
        self.pairs: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self.tasks: set[asyncio.Task] = set()
        self.scorer = None  # loaded at the first pair with chunks to score against
        self.unscored: dict[int, tuple[str, Answer, Answer]] = {}  # pair number -> what to score
        self.outcomes = Counter(
            "ragserve_router_shadow_requests",
            "Copies of live requests to the shadow slot, by outcome (compared, dropped: queue full, failed: no live answer to compare).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("compared", "dropped", "failed"):
            self.outcomes.labels(outcome)

    def offer(self, request: httpx.Request, revision: int) -> asyncio.Future | None:
        """Mirror ``request`` unless the queue is full; the caller sets the returned future to the
        live answer once it has been relayed. ``revision``: the routing table's, so a stage counts
        only the pairs of its own shadow (copies still in flight from an earlier one finish later)."""
        if self.pending >= self.concurrency + self.queue:
            self.outcomes.labels("dropped").inc()
            return None
        self.pending += 1
        live: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(request, live, revision))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return live

    async def _run(self, request: httpx.Request, live: asyncio.Future, revision: int) -> None:
        try:
            async with self.slots:
                shadow = await self._ask(request)
            try:
                answer = await asyncio.wait_for(live, timeout=600)
            except (TimeoutError, asyncio.CancelledError):
                self.outcomes.labels("failed").inc()
                return
            self.count += 1
            self.pairs.append({"n": self.count, "revision": revision, **pair_figures(answer, shadow, self.keep_text)})
            if shadow.chunks:
                self.unscored[self.count] = (last_question(request.content), answer, shadow)
                self.unscored.pop(self.count - self.pairs.maxlen, None)  # its pair is gone
            self.outcomes.labels("compared").inc()
        finally:
            self.pending -= 1

    async def _ask(self, request: httpx.Request) -> Answer:
        timing, captured = Timing(time.perf_counter()), bytearray()
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            return Answer(status=0)
        timing.read_headers(upstream.headers)
        try:
            async for chunk in upstream.aiter_bytes():  # decoded: the comparison reads it
                timing.feed(chunk)
                keep(captured, chunk)
        except httpx.HTTPError:
            pass
        finally:
            await upstream.aclose()
        timing.done()
        return read_answer(upstream.status_code, bytes(captured), timing)

    async def score(self, since: int) -> None:
        """Score the pairs numbered above ``since`` that are not scored yet, off the event loop."""
        todo = {n: self.unscored.pop(n) for n in sorted(self.unscored) if n > since}
        if todo:
            scores = await asyncio.to_thread(self._grounding, todo)
            for pair in self.pairs:
                pair.update(scores.get(pair["n"], {}))

    def _grounding(self, todo: dict[int, tuple[str, Answer, Answer]]) -> dict[int, dict]:
        if self.scorer is None:
            from bentos.quality.scorer import OfflineScorer

            self.scorer = OfflineScorer()
        return {n: grounding(self.scorer, *texts) for n, texts in todo.items()}

    def since(self, n: int) -> list[dict]:
        return [p for p in self.pairs if p["n"] > n]


async def captured(body: AsyncIterator[bytes], timing: Timing, status: int, live: asyncio.Future) -> AsyncIterator[bytes]:
    """``body`` relayed unchanged; a copy (capped) becomes the live answer of a pair at its end."""
    copy = bytearray()
    try:
        async for chunk in body:
            keep(copy, chunk)
            yield chunk
    finally:
        if not live.done():
            if timing.finished:
                live.set_result(read_answer(status, bytes(copy), timing))
            else:
                live.cancel()  # the client went away: no whole answer to compare
