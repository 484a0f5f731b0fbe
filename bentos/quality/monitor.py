"""Answer quality in production: a sampled share of answers (RAGSERVE_QUALITY_SAMPLE) is scored
for faithfulness after the user has it, into ``ragserve_answer_faithfulness{model}``.

Off the request path: the answer step only copies the answer's text and its chunks into a short
queue (an answer that finds it full is dropped and counted, never waited for). One thread scores
them at low CPU priority with its own embedder, so it never holds the query embedder's lock.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from bentos.chat.prompting import source_text
from bentos.web.metrics import SERVICE_METRICS

log = logging.getLogger("bentos.gateway")
FAITHFULNESS = Histogram(
    "ragserve_answer_faithfulness",
    "Sampled answers' faithfulness (share of their claims supported by the chunks they were given), offline scorer.",
    ["model"],
    registry=SERVICE_METRICS,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
SCORED = Counter(
    "ragserve_answer_scores_total",
    "Sampled answers by outcome: scored, no_claims (a refusal or nothing checkable), dropped (queue full), failed.",
    ["outcome"],
    registry=SERVICE_METRICS,
)
QUEUE = 8  # answers waiting to be scored; more than this under load are dropped, not queued
NICE = 10


class QualityMonitor:
    """The last answer step (what the user was sent): samples, copies, queues."""

    def __init__(self, sample: float, embed_model: str, scorer_factory: Callable | None = None):
        self.sample, self.embed_model = sample, embed_model
        self.scorer_factory = scorer_factory or self._offline_scorer
        self.todo: queue.Queue = queue.Queue(QUEUE)
        self.worker: threading.Thread | None = None

    def _offline_scorer(self):
        from bentos.quality.scorer import OfflineScorer
        from bentos.retrieval.embedder import Embedder

        return OfflineScorer(Embedder(self.embed_model))  # its own model: never the query embedder's lock

    def offer(self, turn, text: str) -> None:
        if not turn.hits or not text or random.random() >= self.sample:
            return
        try:
            self.todo.put_nowait((turn.model, turn.screened or turn.query, text, [source_text(h) for h in turn.hits]))
        except queue.Full:
            SCORED.labels("dropped").inc()
            return
        if self.worker is None:
            self.worker = threading.Thread(target=self._run, name="quality-monitor", daemon=True)
            self.worker.start()

    def _run(self) -> None:
        try:  # Linux: a thread is a task with its own priority; the request path keeps the CPU
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (AttributeError, OSError):
            pass
        scorer = self.scorer_factory()
        while True:
            model, question, text, chunks = self.todo.get()
            try:
                scored = scorer.score(question, text, chunks)
            except Exception:
                SCORED.labels("failed").inc()
                log.exception("scoring a sampled answer failed")
                continue
            if scored.faithfulness is None:
                SCORED.labels("no_claims").inc()
            else:
                FAITHFULNESS.labels(model).observe(scored.faithfulness)
                SCORED.labels("scored").inc()

    async def answer(self, turn, body: dict) -> None:
        choices = body.get("choices") or [{}]
        self.offer(turn, ((choices[0].get("message") or {}).get("content")) or "")

    def stream(self, turn) -> Callable[[dict], Awaitable[dict | None]]:
        parts: list[str] = []

        async def each(event: dict) -> dict | None:
            for c in event.get("choices") or ():
                if c.get("index", 0) == 0:
                    parts.append((c.get("delta") or {}).get("content") or "")
                    if c.get("finish_reason"):
                        self.offer(turn, "".join(parts))
            return event

        return each
