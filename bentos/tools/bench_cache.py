"""`ragserve bench cache`: answers from the cache against answers from the model, in one run.

The gateway starts twice on the same index, cache off then on. With it on, each concurrency level
sends a round of misses (every request a new key: a seed of its own, which a temperature-0 answer
does not depend on) and then the same requests again, which are hits. With it off, the same
round of misses is the baseline for the gateway's time before the model, so the cost of a lookup
that misses shows as the difference.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from bentos.settings import Settings
from bentos.tools.bench import PREPARE_STEP, QUESTIONS, bento, index_corpus, step_means, step_totals
from bentos.tools.loadgen import run_load


def seeded_round(url: str, key: str, settings: Settings, concurrency: int, max_tokens: int, seeds: list[int]):
    """One request per seed, the questions in turn: a seed of its own makes a request's key new."""
    return asyncio.run(
        run_load(
            url, key, settings.engine.model_name, concurrency, len(seeds), max_tokens, QUESTIONS, extra_body=lambda i: {"seed": seeds[i]}
        )
    )


def run_cache_bench(settings: Settings, levels: list[int], n_requests: int, max_tokens: int, corpus: Path, json_out: str | None) -> dict:
    key = settings.web.api_key_value or ""
    log_dir = Path(tempfile.mkdtemp(prefix="ragserve-bench-cache-"))
    db = log_dir / "lancedb"
    index_corpus(settings, corpus, db)
    results: dict = {"max_tokens": max_tokens, "requests": n_requests, "corpus": str(corpus), "levels": {}}
    rounds = {c: list(range(i * 10**4, i * 10**4 + max(n_requests, 2 * c))) for i, c in enumerate(levels)}  # the same keys on both sides
    for cache in ("off", "on"):
        print(f"starting the gateway, cache {cache} ...", flush=True)
        env = {"RAGSERVE_CACHE": "true" if cache == "on" else "false"}
        with bento(settings.engine, log_dir, db, env, f"bento-cache-{cache}.log") as (base, _):
            url = base + "/v1"
            asyncio.run(
                run_load(url, key, settings.engine.model_name, 1, 2, 8, QUESTIONS, extra_body=lambda i: {"cache": False})
            )  # warm-up
            for c in tqdm(levels, desc=f"cache {cache}", unit="level"):
                level = results["levels"].setdefault(str(c), {})
                before = step_totals(base, key)
                miss = seeded_round(url, key, settings, c, max_tokens, rounds[c]).as_dict()
                miss["prepare_ms_mean"] = step_means(before, step_totals(base, key)).get(PREPARE_STEP)
                level[f"cache {cache}, miss"] = miss
                if cache == "on":
                    level["cache on, hit"] = seeded_round(url, key, settings, c, max_tokens, rounds[c]).as_dict()
    for level in results["levels"].values():
        miss, hit, off = level["cache on, miss"], level["cache on, hit"], level["cache off, miss"]
        added = None if None in (miss["prepare_ms_mean"], off["prepare_ms_mean"]) else miss["prepare_ms_mean"] - off["prepare_ms_mean"]
        level["ratios"] = {
            "miss_over_hit_ttft_p50": round(miss["ttft_p50_ms"] / hit["ttft_p50_ms"], 1) if hit["ttft_p50_ms"] else None,
            "miss_over_hit_latency_p50": round(miss["latency_p50_ms"] / hit["latency_p50_ms"], 1) if hit["latency_p50_ms"] else None,
            "prepare_ms_added_by_lookup": None if added is None else round(added, 2),
        }
    print_cache_table(results)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))
    return results


def print_cache_table(results: dict) -> None:
    print(f"\n{results['max_tokens']} output tokens per request, corpus {results['corpus']}")
    print(f"{'streams':>7}  {'requests':<16}{'TTFT p50':>10}{'TTFT p95':>10}{'total p50':>11}{'before model':>14}{'failed':>8}")
    for c, level in results["levels"].items():
        for name in ("cache off, miss", "cache on, miss", "cache on, hit"):
            r = level[name]
            before = f"{r['prepare_ms_mean']:.2f}ms" if r.get("prepare_ms_mean") is not None else "-"
            times = f"{r['ttft_p50_ms']:>8.1f}ms{r['ttft_p95_ms']:>8.1f}ms{r['latency_p50_ms']:>9.1f}ms"
            print(f"{c:>7}  {name:<16}{times}{before:>14}{r['failed']:>8}")
        q = level["ratios"]
        print(
            f"{c:>7}  hit TTFT {q['miss_over_hit_ttft_p50']}x lower, total {q['miss_over_hit_latency_p50']}x lower; "
            f"a missing lookup adds {q['prepare_ms_added_by_lookup']} ms before the model"
        )
