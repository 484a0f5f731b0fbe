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
from pathlib import Path

import httpx
from tqdm import tqdm

from .bench import plain_vllm
from .bench_retrieval import serve_in_thread
from .engine import free_port
from .evaluation import load_squad
from .guard.metrics import GUARD_METRICS
from .loadgen import percentile
from .model_store import resolve_model
from .relay import Relay, http_client
from .settings import Settings


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
    from .gateway_api import create_gateway_app
    from .guard.rails import Guard
    from .retrieval.retriever import Retriever

    app = create_gateway_app(settings)
    app.state.retriever = Retriever(settings)
    app.state.llm = TimedRelay(http_client(engine_url, settings.request_timeout_s), "vLLM")
    app.state.guard = Guard(settings) if rails else None
    port = free_port()
    server, thread = serve_in_thread(app, port)
    return f"http://127.0.0.1:{port}", server, thread, app.state.llm


def stage_means_ms() -> dict[str, float]:
    out = {}
    for stage in ("input", "retrieval", "output"):
        h = GUARD_METRICS.seconds.labels(stage=stage)
        count = sum(b.get() for b in h._buckets)
        out[stage] = round(h._sum.get() / count * 1000, 3) if count else 0.0
    return out


def bench_guardrails(settings: Settings, squad: Path, n: int) -> dict:
    from .retrieval.embedder import embedder_for
    from .retrieval.index import ChunkingConfig, IndexStore

    docs, answerable, _ = load_squad(squad)
    db = tempfile.mkdtemp(prefix="ragserve-bench-guardrails-")
    run = settings.model_copy(update={"db": db})
    IndexStore(db).reindex(docs, embedder_for(run), ChunkingConfig.from_settings(run))
    questions = [q for q, _ in answerable][: n + 10]
    with plain_vllm(run, resolve_model(run)) as (engine_url, _):
        sides = {"rails off": gateway(run, engine_url, False), "rails on": gateway(run, engine_url, True)}
        times: dict[str, list[float]] = {name: [] for name in sides}
        totals: dict[str, list[float]] = {name: [] for name in sides}
        with httpx.Client(timeout=120) as client:
            for i, q in enumerate(tqdm(questions, desc="requests", unit="q")):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))
                for name in order:
                    t0 = time.perf_counter()
                    r = client.post(f"{sides[name][0]}/v1/chat/completions", json={"messages": [{"role": "user", "content": q}], "max_tokens": 1})
                    ms = (time.perf_counter() - t0) * 1000
                    r.raise_for_status()
                    if i >= 10:  # the first ten warm both sides up
                        totals[name].append(ms)
                        times[name].append(ms - sides[name][3].last_ms)
        for _, server, thread, _ in sides.values():
            server.should_exit = True
            thread.join(10)
    off, on = times["rails off"], times["rails on"]
    return {
        "requests_each": len(on),
        "total_off_p50_ms": round(statistics.median(totals["rails off"]), 1), "total_on_p50_ms": round(statistics.median(totals["rails on"]), 1),
        "outside_model_off_p50_ms": round(statistics.median(off), 2), "outside_model_off_p95_ms": round(percentile(off, 95), 2),
        "outside_model_on_p50_ms": round(statistics.median(on), 2), "outside_model_on_p95_ms": round(percentile(on, 95), 2),
        "added_p50_ms": round(statistics.median(on) - statistics.median(off), 2),
        "added_p95_ms": round(percentile(on, 95) - percentile(off, 95), 2),
        "rail_stage_mean_ms": stage_means_ms(),
    }
