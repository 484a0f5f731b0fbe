"""`ragserve bench serve`: the gateway (rails and retrieval on) against plain vLLM on the same
model folder, in one run.

Fair by construction: the bench indexes a corpus, and plain vLLM receives exactly the
conversations the gateway hands the model (the question plus the retrieved sources as the system
message), with the same output lengths (ignore_eos). What remains is the cost of our stack: HTTP
hops, rails, retrieval and relaying.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tqdm import tqdm

from bentos.chat.prompting import with_sources
from bentos.model.engine import Engine, free_port
from bentos.model.store import resolve_model
from bentos.settings import PROJECT_DIR, EngineSettings, Settings
from bentos.tools import launch
from bentos.tools.loadgen import Report, run_load
from bentos.web.metrics import samples

QUESTIONS = [
    "How do I roll back the index?",
    "What does /readyz tell me?",
    "How do I require an API key?",
    "How does search combine vector and full-text scores?",
    "Which metric shows the queue length?",
    "How long does a cold start take on a CPU?",
    "How do I re-index my documents?",
    "Which port does the gateway listen on?",
]


@contextmanager
def plain_vllm(settings: EngineSettings, model: str) -> Iterator[tuple[str, float]]:
    """vLLM's own server with the exact flags the Bento gives it, and nothing in front."""
    engine = Engine(settings.model_copy(update={"engine_port": free_port()}), model)
    engine.start()
    try:
        if not engine.warm_up(settings.engine_start_timeout_s):
            raise RuntimeError(f"vLLM did not become ready (exit code {engine.exit_code})")
        yield engine.base_url, time.monotonic() - engine.started_at
    finally:
        engine.stop()


@contextmanager
def bento(
    settings: EngineSettings, log_dir: Path, db: Path, env: dict[str, str] | None = None, log: str = "bento.log"
) -> Iterator[tuple[str, float]]:
    """`bentoml serve` on a free port over ``db``, with rails on and ``env`` on top."""
    port = free_port()
    env = {**os.environ, "RAGSERVE_PORT": str(port), "RAGSERVE_DB": str(db), "RAGSERVE_GUARDRAILS": "true", **(env or {})}
    launched = launch.start_bento(port, env, log_dir / log, settings.engine_start_timeout_s)
    try:
        yield launched.url, launched.ready_s
    finally:
        launch.stop(launched)


def augmented_conversations(settings: Settings, db: Path) -> list[list[dict]]:
    """What the gateway sends the model for each question: its sources first, then the question."""
    from bentos.retrieval.retriever import Retriever

    retriever = Retriever(settings.retrieval.model_copy(update={"db": str(db)}))
    conversations = []
    for q in QUESTIONS:
        found = retriever.retrieve(q, settings.retrieval.retrieve_k)
        if not found.relevant:
            raise RuntimeError(f"the bench corpus has nothing relevant to {q!r}: the gateway would answer without the model")
        conversations.append(with_sources([{"role": "user", "content": q}], found.relevant))
    return conversations


def index_corpus(settings: Settings, corpus: Path, db: Path) -> None:
    from bentos.retrieval.ingest import reindex_source

    reindex_source(settings.retrieval.model_copy(update={"db": str(db)}), corpus, False, None)


def run_serve_bench(
    settings: Settings,
    n_requests: int,
    levels: list[int],
    max_tokens: int,
    json_out: str | None,
    cold: bool = False,
    png_out: str | None = None,
    corpus: Path = PROJECT_DIR / "docs",
) -> dict:
    model = resolve_model(settings.engine)
    key = settings.web.api_key_value or ""
    log_dir = Path(tempfile.mkdtemp(prefix="ragserve-bench-"))
    db = log_dir / "lancedb"
    index_corpus(settings, corpus, db)
    conversations = augmented_conversations(settings, db)
    results: dict = {"model": model, "max_tokens": max_tokens, "requests": n_requests, "corpus": str(corpus), "targets": {}}
    for name in ("vllm", "gateway"):
        run_settings = settings.engine
        if cold:
            # Empty vLLM and TorchInductor caches (inductor's sits in the engine's TMPDIR under
            # the cache dir): what a first start on a new machine pays. The model folder is reused.
            fresh = Path(tempfile.mkdtemp(prefix=f"ragserve-cold-{name}-"))
            run_settings = settings.engine.model_copy(update={"cache_dir": fresh, "model": model})
            os.environ.update({"VLLM_CACHE_ROOT": str(fresh / "vllm"), "RAGSERVE_CACHE_DIR": str(fresh), "RAGSERVE_MODEL": model})
        print(f"starting {name} ...", flush=True)
        start = plain_vllm(run_settings, model) if name == "vllm" else bento(run_settings, log_dir, db)
        # The gateway gets the bare questions and builds the same conversations itself.
        prompts = conversations if name == "vllm" else QUESTIONS
        with start as (url, ready_s):
            entry = {"ready_s": round(ready_s, 1), "levels": {}}
            asyncio.run(run_load(url + "/v1", key, settings.engine.model_name, 1, 2, 8, prompts, timeout_s=120))  # warm-up
            for c in tqdm(levels, desc=name, unit="level"):
                before = step_totals(url, key)
                report: Report = asyncio.run(
                    run_load(url + "/v1", key, settings.engine.model_name, c, max(n_requests, 2 * c), max_tokens, prompts)
                )
                entry["levels"][str(c)] = {**report.as_dict(), "steps_ms_mean": step_means(before, step_totals(url, key))}
            if name == "gateway":  # what the quality monitor (RAGSERVE_QUALITY_SAMPLE) scored meanwhile, by outcome
                entry["answer_scores"] = answer_scores(url, key)
            results["targets"][name] = entry
    results["ratios"] = ratios(results, levels)
    print_table(results, levels)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))
    if png_out:
        chart(results, levels, Path(png_out))
    return results


# Histograms whose mean per request the bench reports: the gateway's steps (one per label), its
# whole time before the model, and vLLM's own time to first token (what the engine alone takes).
PREPARE_STEP, ENGINE_STEP = "before the model (all steps)", "vLLM's own TTFT"
STEP_FAMILIES = {
    "ragserve_chat_step_seconds": "step",
    "ragserve_gateway_prepare_seconds": PREPARE_STEP,
    "vllm:time_to_first_token_seconds": ENGINE_STEP,
}


def step_totals(url: str, key: str) -> dict[str, tuple[float, float]]:
    """(sum, count) per step from a server's /metrics (the gateway's includes its engine's)."""
    return totals_in(httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else None, timeout=10).text)


def answer_scores(url: str, key: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else None, timeout=10).text
    return {s.labels["outcome"]: s.value for s in samples(text) if s.name == "ragserve_answer_scores_total"}


def totals_in(text: str) -> dict[str, tuple[float, float]]:
    totals: dict[str, list[float]] = {}
    for sample in samples(text):
        for family, label in STEP_FAMILIES.items():
            if sample.name in (f"{family}_sum", f"{family}_count"):
                step = sample.labels.get(label, label)
                totals.setdefault(step, [0.0, 0.0])[sample.name.endswith("_count")] += sample.value
    return {step: (s, n) for step, (s, n) in totals.items()}


def step_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms per request in each step between two ``step_totals``."""
    means = {}
    for step, (s1, n1) in after.items():
        s0, n0 = before.get(step, (0.0, 0.0))
        if n1 > n0:
            means[step] = round((s1 - s0) / (n1 - n0) * 1000, 2)
    return means


def ratios(results: dict, levels: list[int]) -> dict:
    raw, ours = results["targets"]["vllm"]["levels"], results["targets"]["gateway"]["levels"]
    out = {}
    for c in map(str, levels):
        a, b = raw[c], ours[c]
        out[c] = {
            "throughput_ratio": round(b["tokens_per_s"] / a["tokens_per_s"], 3) if a["tokens_per_s"] else None,
            "added_ttft_p50_ms": round(b["ttft_p50_ms"] - a["ttft_p50_ms"], 1),
        }
    return out


def print_table(results: dict, levels: list[int]) -> None:
    raw, ours = results["targets"]["vllm"], results["targets"]["gateway"]
    print(f"\nmodel {results['model']}, {results['max_tokens']} output tokens per request, corpus {results['corpus']}")
    print(f"time to ready: vllm {raw['ready_s']} s, gateway {ours['ready_s']} s")
    print(f"{'conc':>4} {'target':>8} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} {'failed':>7}")
    for c in map(str, levels):
        for name, t in (("vllm", raw), ("gateway", ours)):
            r = t["levels"][c]
            print(
                f"{c:>4} {name:>8} {r['tokens_per_s']:>8.1f} {r['ttft_p50_ms']:>7.0f}ms {r['ttft_p95_ms']:>7.0f}ms "
                f"{r['itl_p50_ms']:>6.1f}ms {r['itl_p95_ms']:>6.1f}ms {r['failed']:>7}"
            )
        q = results["ratios"][c]
        print(f"{c:>4} {'ratio':>8} {q['throughput_ratio']}x throughput, TTFT p50 {q['added_ttft_p50_ms']:+.1f} ms")
    if scores := ours.get("answer_scores"):
        print("quality monitor (RAGSERVE_QUALITY_SAMPLE): " + ", ".join(f"{n:.0f} {outcome}" for outcome, n in sorted(scores.items())))
    print_steps(results, levels)


# The chat path up to the first text, in order. Indented rows run within the rows around them:
# the search beside the input rails; the model service's wait for vLLM's first text inside the
# relay, and vLLM's own TTFT inside that.
STEP_ROWS = [
    ("request", "queue, auth, body"),
    ("embed", "embedding"),
    ("input_rails", "input rails"),
    ("search_start", "  search: until it started"),
    ("search", "  search, beside the rails"),
    ("vector_search", "    vector candidates in"),
    ("fulltext_search", "    full-text candidates in"),
    ("cache_lookup", "answer cache lookup"),
    ("retrieve", "wait for the search"),
    ("retrieval_rails", "retrieval rails"),
    ("prompt", "prompt"),
    (PREPARE_STEP, "= before the model"),
    ("model_headers", "relay: model's headers"),
    ("model_first_text", "relay: then first text"),
    ("engine_first_text", "  model service: vLLM's first text"),
    (ENGINE_STEP, "    vLLM's own TTFT"),
    ("hold_back", "held back by masking"),
]


def print_steps(results: dict, levels: list[int]) -> None:
    """Mean ms per request in each step of the gateway's path to the first text, per level, and
    plain vLLM's own TTFT beside it."""
    print("\nwhere the gateway's time to first text goes (mean ms per request)")
    print(f"{'step':<36}" + "".join(f"{c:>9}" for c in levels))
    rows = [*STEP_ROWS, (ENGINE_STEP, "plain vLLM: its own TTFT")]
    for i, (step, label) in enumerate(rows):
        target = "vllm" if i == len(rows) - 1 else "gateway"
        means = [results["targets"][target]["levels"][str(c)]["steps_ms_mean"].get(step) for c in levels]
        if any(m is not None for m in means):
            print(f"{label:<36}" + "".join(f"{m:>9.1f}" if m is not None else f"{'-':>9}" for m in means))


def chart(results: dict, levels: list[int], path: Path) -> None:
    """Tokens/s and TTFT p50 per concurrency, vLLM beside the gateway."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tps, ttft) = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = range(len(levels))
    for offset, name in ((-0.2, "vllm"), (0.2, "gateway")):
        rows = [results["targets"][name]["levels"][str(c)] for c in levels]
        tps.bar([x + offset for x in xs], [r["tokens_per_s"] for r in rows], 0.4, label=name)
        ttft.bar([x + offset for x in xs], [r["ttft_p50_ms"] for r in rows], 0.4, label=name)
    for ax, title in ((tps, "tokens/s"), (ttft, "TTFT p50 (ms)")):
        ax.set_xticks(list(xs), [str(c) for c in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
    tps.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
