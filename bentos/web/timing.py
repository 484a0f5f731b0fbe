"""When an answer is felt: a stream's first text and its pace after that, or a whole answer's end.

The router times each slot with it; the gateway times its own chat answers (``FeltLatency``), which
is what a KServe revision's pods report to Prometheus when no router stands in front of them. Both
define their series with ``FeltMetrics``; this module imports nothing heavier than Starlette.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentos.web.metrics import SERVICE_METRICS

# What users feel, compared as ratios of P99s: fine enough that one bucket's width is no verdict.
FELT_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)
RATE_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)

# Set by the answer cache on an answer it replays (bentos/chat/cache.py): timed like any answer, but
# written out without waiting, so it has no pace of generation to compare.
REPLAY_HEADER = "x-ragserve-cache"

# A streamed chunk that carries text: `"content": "x...` (the role chunk's empty content does not count).
TEXT_CHUNK = re.compile(rb'"content":\s*"(?!")')


class Timing:
    """Fed an answer's body chunk by chunk, from ``started`` (when the request was sent)."""

    def __init__(self, started: float):
        self.started, self.stream, self.replayed = started, False, False
        self.first: float | None = None
        self.pieces = 0  # chunks with text after the first
        self.ended: float | None = None
        self.finished = False

    def read_headers(self, headers: Mapping[str, str]) -> None:
        """What the response's headers (lower-case names) say of the answer: streamed or not, and
        whether the answer cache replayed it."""
        self.stream = headers.get("content-type", "").startswith("text/event-stream")
        self.replayed = REPLAY_HEADER in headers

    def feed(self, chunk: bytes) -> None:
        if self.stream and (found := len(TEXT_CHUNK.findall(chunk))):
            if self.first is None:
                self.first, found = time.perf_counter(), found - 1
            self.pieces += found

    def done(self) -> None:
        self.ended, self.finished = time.perf_counter(), True

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.started

    @property
    def paced(self) -> tuple[int, float] | None:
        """The chunks with text after the first and the seconds they took; none for a replayed answer."""
        if self.replayed or self.first is None or not self.pieces or self.ended is None or self.ended <= self.first:
            return None
        return self.pieces, self.ended - self.first

    @property
    def rate(self) -> float | None:
        """Chunks with text per second after the first (about tokens/s)."""
        return None if (paced := self.paced) is None else paced[0] / paced[1]

    @property
    def total_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


class FeltMetrics:
    """The series of what clients feel, defined once for both processes that time answers: the
    gateway (``ragserve_chat_*``, one series) and the router (``ragserve_router_*``, one per slot).
    A stream's first text and pace (a histogram of each stream's, and the counters of chunks and
    seconds whose ratio is the pace over many streams), or a plain answer's end."""

    @staticmethod
    def names(prefix: str) -> dict[str, str]:
        """Each series' family name (counters' samples add ``_total``), for readers of /metrics."""
        return {
            "ttft": f"{prefix}_ttft_seconds",
            "rate": f"{prefix}_stream_rate",
            "chunks": f"{prefix}_stream_chunks",
            "seconds": f"{prefix}_stream_seconds",
            "total": f"{prefix}_total_seconds",
        }

    def __init__(self, prefix: str, answers: str, registry: CollectorRegistry, labels: Sequence[str] = (), each: str = ""):
        """``answers`` names what is timed in the help texts, ``each`` ends them (", per slot")."""
        name, kw = self.names(prefix), {"labelnames": labels, "registry": registry}
        streamed = f"Streamed {answers}:"
        self.ttft = Histogram(
            name["ttft"], f"{streamed} time from the request to the first chunk with text{each}.", buckets=FELT_BUCKETS, **kw
        )
        self.rate = Histogram(
            name["rate"], f"{streamed} chunks with text per second after the first (about tokens/s){each}.", buckets=RATE_BUCKETS, **kw
        )
        self.chunks = Counter(
            name["chunks"],
            f"{streamed} chunks with text after the first, summed over streams (not replays from the answer cache){each}.",
            **kw,
        )
        self.seconds = Counter(
            name["seconds"], f"{streamed} seconds from the first chunk with text to the end, summed over the same streams{each}.", **kw
        )
        ended = f"{answers.capitalize()} not streamed: time from the request to the end of the body{each}."
        self.total = Histogram(name["total"], ended, buckets=FELT_BUCKETS, **kw)

    def series(self, *labels: str) -> tuple:
        """The five series (of these label values, when the metrics have labels)."""
        every = (self.ttft, self.rate, self.chunks, self.seconds, self.total)
        return tuple(m.labels(*labels) for m in every) if labels else every

    def record(self, timing: Timing, *labels: str) -> None:
        """One finished answer's timing."""
        ttft, rate, chunks, seconds, total = self.series(*labels)
        if not timing.stream:
            total.observe(timing.total_s)
            return
        if timing.ttft_s is not None:
            ttft.observe(timing.ttft_s)
        if (paced := timing.paced) is not None:
            rate.observe(paced[0] / paced[1])
            chunks.inc(paced[0])
            seconds.inc(paced[1])


CHAT_FELT = FeltMetrics("ragserve_chat", "chat answers", SERVICE_METRICS)

# Where a chat request's time goes before its first text leaves (or its answer, not streamed), one
# label per step: the gateway's steps (bentos/chat/steps.py) and the relay hops after them, and the
# model service's own wait for vLLM. Both services' processes write it; /metrics sums them.
CHAT_STEPS = Histogram(
    "ragserve_chat_step_seconds",
    "Chat requests: time in each step up to the first text sent (streamed) or the answer (not streamed).",
    ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
    registry=SERVICE_METRICS,
)


class FeltLatency:
    """ASGI middleware: each answered chat request (status below 400) timed as the client feels it,
    into ``CHAT_FELT``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        timing, status = Timing(time.perf_counter()), 500
        scope.setdefault("state", {})["arrived"] = timing.started  # where the route's step timing starts

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                timing.read_headers({k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers") or []})
            elif message["type"] == "http.response.body":
                timing.feed(message.get("body", b""))
                if not message.get("more_body"):
                    timing.done()
            await send(message)

        await self.app(scope, receive, send_timed)
        if status < 400 and timing.finished:
            CHAT_FELT.record(timing)
