"""A bounded streaming load against any OpenAI-compatible endpoint, with the figures that matter
for LLM serving: total tokens/s, time to first token and inter-token latency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import openai

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences what a GPU does.",
    "Write a haiku about the sea.",
    "List three uses of Python.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What is retrieval-augmented generation?",
    "Give me a tip for writing clear emails.",
]


@dataclass
class Result:
    ok: bool
    ttft_s: float = 0.0
    latency_s: float = 0.0
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)
    error: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


@dataclass
class Report:
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    errors: list[str]
    latency_p50_ms: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


async def one_request(
    client: openai.AsyncOpenAI, model: str, prompt: str | list[dict], max_tokens: int, extra_body: dict | None = None
) -> Result:
    """``prompt`` is a user message, or a whole conversation."""
    t0 = time.perf_counter()
    first = last = 0.0
    gaps: list[float] = []
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, **(extra_body or {})},  # fixed output length: comparable runs
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if not first:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    except Exception as e:  # every failure is counted and reported, none stops the run
        return Result(ok=False, latency_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:200])
    return Result(ok=True, ttft_s=(first or time.perf_counter()) - t0, latency_s=time.perf_counter() - t0, tokens=tokens, gaps_s=gaps)


async def run_load(
    base_url: str,
    api_key: str,
    model: str,
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    prompts: list | None = None,
    timeout_s: float = 300,
    extra_body: Callable[[int], dict] | None = None,
) -> Report:
    """``extra_body(i)``: more request fields for the i-th request."""
    prompts = prompts or DEFAULT_PROMPTS
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    queue = list(range(n_requests))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            more = extra_body(i) if extra_body else None
            results.append(await one_request(client, model, prompts[i % len(prompts)], max_tokens, more))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n_requests))))
    wall = time.perf_counter() - t0
    await client.close()
    good = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in good)
    gaps = [g for r in good for g in r.gaps_s]
    ttfts = [r.ttft_s for r in good]
    return Report(
        concurrency=concurrency,
        requests=n_requests,
        failed=len(results) - len(good),
        wall_s=round(wall, 3),
        tokens=tokens,
        tokens_per_s=round(tokens / wall, 2) if wall else 0.0,
        ttft_p50_ms=round(percentile(ttfts, 50) * 1000, 1),
        ttft_p95_ms=round(percentile(ttfts, 95) * 1000, 1),
        itl_p50_ms=round(percentile(gaps, 50) * 1000, 1),
        itl_p95_ms=round(percentile(gaps, 95) * 1000, 1),
        errors=sorted({r.error for r in results if not r.ok})[:5],
        latency_p50_ms=round(percentile([r.latency_s for r in good], 50) * 1000, 1),
    )
