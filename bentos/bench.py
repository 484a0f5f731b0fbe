"""`ragserve bench serve`: the Bento against plain vLLM on the same model folder, in one run."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from tqdm import tqdm

from . import launch
from .engine import Engine, free_port
from .loadgen import Report, run_load
from .model_store import resolve_model
from .settings import Settings


@contextmanager
def plain_vllm(settings: Settings, model: str) -> Iterator[tuple[str, float]]:
    """vLLM's own server with the exact flags the Bento gives it, and nothing in front."""
    engine = Engine(settings.model_copy(update={"engine_port": free_port()}), model)
    engine.start()
    t0 = time.monotonic()

    async def wait_ready() -> None:
        async with httpx.AsyncClient() as client:
            while not await engine.is_ready(client):
                if not engine.running:
                    raise RuntimeError(f"vLLM exited with {engine.exit_code}")
                if time.monotonic() - t0 > settings.engine_start_timeout_s:
                    raise RuntimeError("vLLM did not become ready in time")
                await asyncio.sleep(0.5)

    try:
        asyncio.run(wait_ready())
        yield engine.base_url, time.monotonic() - t0
    finally:
        engine.stop()


@contextmanager
def bento(settings: Settings, log_dir: Path) -> Iterator[tuple[str, float]]:
    port = free_port()
    env = {**os.environ, "RAGSERVE_PORT": str(port)}
    launched = launch.start_bento(port, env, log_dir / "bento.log", settings.engine_start_timeout_s)
    try:
        yield launched.url, launched.ready_s
    finally:
        launch.stop(launched)


def run_serve_bench(settings: Settings, n_requests: int, levels: list[int], max_tokens: int, json_out: str | None, cold: bool = False) -> dict:
    model = resolve_model(settings)
    key = settings.api_key_value or ""
    log_dir = Path(tempfile.mkdtemp(prefix="ragserve-bench-"))
    results: dict = {"model": model, "max_tokens": max_tokens, "requests": n_requests, "targets": {}}
    for name in ("vllm", "bento"):
        run_settings = settings
        if cold:
            # Empty vLLM and TorchInductor caches (inductor's sits in the engine's TMPDIR under
            # the cache dir): what a first start on a new machine pays. The model folder is reused.
            fresh = Path(tempfile.mkdtemp(prefix=f"ragserve-cold-{name}-"))
            run_settings = settings.model_copy(update={"cache_dir": fresh, "model": model})
            os.environ.update({"VLLM_CACHE_ROOT": str(fresh / "vllm"), "RAGSERVE_CACHE_DIR": str(fresh), "RAGSERVE_MODEL": model})
        print(f"starting {name} ...", flush=True)
        start = plain_vllm(run_settings, model) if name == "vllm" else bento(run_settings, log_dir)
        with start as (url, ready_s):
            entry = {"ready_s": round(ready_s, 1), "levels": {}}
            asyncio.run(run_load(url + "/v1", key, settings.model_name, 1, 2, 8, timeout_s=120))  # warm-up
            for c in tqdm(levels, desc=name, unit="level"):
                report: Report = asyncio.run(run_load(url + "/v1", key, settings.model_name, c, max(n_requests, c), max_tokens))
                entry["levels"][str(c)] = report.as_dict()
            results["targets"][name] = entry
    print_table(results, levels)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict, levels: list[int]) -> None:
    raw, ours = results["targets"]["vllm"], results["targets"]["bento"]
    print(f"\nmodel {results['model']}, {results['max_tokens']} output tokens per request")
    print(f"time to ready: vllm {raw['ready_s']} s, bento {ours['ready_s']} s")
    print(f"{'conc':>4} {'vllm tok/s':>11} {'bento tok/s':>12} {'ratio':>6} {'vllm TTFT p50':>14} {'bento TTFT p50':>15} {'failed':>7}")
    for c in levels:
        a, b = raw["levels"][str(c)], ours["levels"][str(c)]
        ratio = b["tokens_per_s"] / a["tokens_per_s"] if a["tokens_per_s"] else float("nan")
        print(f"{c:>4} {a['tokens_per_s']:>11.1f} {b['tokens_per_s']:>12.1f} {ratio:>5.2f}x {a['ttft_p50_ms']:>12.0f}ms {b['ttft_p50_ms']:>13.0f}ms {a['failed'] + b['failed']:>7}")
