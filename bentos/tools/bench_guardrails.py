"""`ragserve bench guardrails`: what the rails add to a request, against the same gateway with
rails off, in one run on one engine.

Both gateways (the real FastAPI app under uvicorn, as BentoML mounts it) share one vLLM engine and
one index of SQuAD paragraphs; each question goes to both, in alternating order. On this CPU the
model call alone takes 0.2-2 s (prefill of four sources) and varies by far more than the rails
cost, so the figure compared is each request's time outside the model call: the client's total
minus the time the gateway waited for the engine, measured around that call.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from tqdm import tqdm

from bentos.guard.metrics import GUARD_METRICS
from bentos.model.store import resolve_model
from bentos.settings import Settings
from bentos.tools.bench import plain_vllm
from bentos.tools.evaluation import load_squad
from bentos.tools.launch import serving
from bentos.tools.loadgen import percentile
from bentos.web.relay import Relay, http_client


class TimedRelay(Relay):
    """Records how long each call to the engine took."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.last_ms = 0.0

    async def request(self, method, path, payload=None):
        t0 = time.perf_counter()
        try:
            return await super().request(method, path, payload)
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000


def gateway(settings: Settings, engine_url: str, rails: bool):
    """The gateway's app (rails on or off) on the engine, and its relay that times the engine."""
    from bentos.chat.api import create_gateway_app, wire
    from bentos.guard.rails import Guard
    from bentos.retrieval.retriever import Retriever

    app = create_gateway_app(settings)
    llm = TimedRelay(http_client(engine_url, settings.web.request_timeout_s), "vLLM")
    wire(app, settings, Retriever(settings.retrieval), llm, Guard(settings.guard) if rails else None)
    return app, llm


def stage_means_ms() -> dict[str, float]:
    out = {}
    for stage in ("input", "retrieval", "output"):
        h = GUARD_METRICS.seconds.labels(stage=stage)
        count = sum(b.get() for b in h._buckets)
        out[stage] = round(h._sum.get() / count * 1000, 3) if count else 0.0
    return out


def bench_guardrails(settings: Settings, squad: Path, n: int) -> dict:
    from bentos.retrieval.embedder import embedder_for
    from bentos.retrieval.index import ChunkingConfig, IndexStore

    evalset = load_squad(squad)
    db = tempfile.mkdtemp(prefix="ragserve-bench-guardrails-")
    run = settings.with_retrieval(db=db)
    IndexStore(db).reindex(evalset.docs, embedder_for(run.retrieval), ChunkingConfig.from_settings(run.retrieval))
    questions = [q for q, _ in evalset.queries][: n + 10]
    with ExitStack() as stack:
        engine_url, _ = stack.enter_context(plain_vllm(run.engine, resolve_model(run.engine)))
        sides = {}
        for name, rails in (("rails off", False), ("rails on", True)):
            app, llm = gateway(run, engine_url, rails)
            sides[name] = (stack.enter_context(serving(app, "/v1")), llm)
        times: dict[str, list[float]] = {name: [] for name in sides}
        totals: dict[str, list[float]] = {name: [] for name in sides}
        client = stack.enter_context(httpx.Client(timeout=120))
        for i, q in enumerate(tqdm(questions, desc="requests", unit="q")):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for name in order:
                url, llm = sides[name]
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": q}], "max_tokens": 1})
                ms = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                if i >= 10:  # the first ten warm both sides up
                    totals[name].append(ms)
                    times[name].append(ms - llm.last_ms)
    off, on = times["rails off"], times["rails on"]
    return {
        "requests_each": len(on),
        "total_off_p50_ms": round(statistics.median(totals["rails off"]), 1),
        "total_on_p50_ms": round(statistics.median(totals["rails on"]), 1),
        "outside_model_off_p50_ms": round(statistics.median(off), 2),
        "outside_model_off_p95_ms": round(percentile(off, 95), 2),
        "outside_model_on_p50_ms": round(statistics.median(on), 2),
        "outside_model_on_p95_ms": round(percentile(on, 95), 2),
        "added_p50_ms": round(statistics.median(on) - statistics.median(off), 2),
        "added_p95_ms": round(percentile(on, 95) - percentile(off, 95), 2),
        "rail_stage_mean_ms": stage_means_ms(),
    }
