"""Deployment settings of the Modal apps, read from ``RAGSERVE_MODAL_*`` at `modal deploy` time.

Modal accepts any GPU name, cron string or timeout when the app is defined and fails only later,
in the cloud (or never: a startup timeout shorter than the engine's boot makes every cold start
fail). These settings check them first, so `modal deploy` stops with a message naming the fix.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from croniter import croniter
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bentos.settings import Settings

ROOT = Path(__file__).resolve().parent.parent  # the checkout; /root inside a Modal container

# Modal's GPU types (https://modal.com/docs/guide/gpu) and the most of each per container.
GPU_MAX_COUNT = {
    "T4": 8,
    "L4": 8,
    "A10": 4,
    "A10G": 4,
    "L40S": 8,
    "A100": 8,
    "A100-40GB": 8,
    "A100-80GB": 8,
    "RTX-PRO-6000": 8,
    "H100": 8,
    "H100!": 8,
    "H200": 8,
    "B200": 8,
    "B200+": 8,
}

# Seconds from container start to the first token, for the startup-timeout check. Modal's vLLM
# example measured "over four minutes" with torch.compile and CUDA graphs, "under one" with
# --enforce-eager; a memory snapshot is made from a full boot, so the first start costs the same.
EXPECTED_COLD_START_S = {"compiled": 240, "fast_boot": 60}

CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def check_cron(expr: str) -> str:
    """A five-field cron expression (minute hour day-of-month month day-of-week) or ValueError
    naming the field. croniter judges each field; what it allows and cron(8) refuses is refused
    here too: a sixth (seconds) field, and a range that runs backwards (croniter wraps it)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron {expr!r} has {len(fields)} fields; Modal's Cron takes 5: minute hour day-of-month "
            "month day-of-week, e.g. '0 3 * * *' (every day at 03:00 UTC)"
        )
    for i, (name, text) in enumerate(zip(CRON_FIELDS, fields)):
        if not croniter.is_valid(" ".join(text if j == i else "*" for j in range(5))):
            raise ValueError(f"cron {expr!r}: {name} {text!r} is not a valid value, range, list or step for that field")
        for lo, hi in re.findall(r"(\d+)-(\d+)", text):
            if int(lo) > int(hi):
                raise ValueError(f"cron {expr!r}: {name} range {lo}-{hi} runs backwards")
    return expr


def project_pins(*extras: str) -> list[str]:
    """The exact pins of pyproject.toml (plus extras): images install these, so they cannot drift."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + [p for e in extras for p in project["optional-dependencies"][e]]


class ModalSettings(BaseSettings):
    """Every knob of the Modal deployment. Each field is read from ``RAGSERVE_MODAL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_MODAL_", extra="ignore")

    app_name: str = Field("ragserve", pattern=r"^[a-z0-9][a-z0-9-]{0,47}$", description="Modal app name; green deployments use their own.")
    gpu: str = Field("L40S", description="Modal GPU type, optionally with a count: 'L4', 'H100:2'. The count sets tensor parallelism.")
    scaledown_window: int = Field(300, description="Seconds an idle container stays up before scaling to zero (Modal allows 2-3600).")
    min_containers: int = Field(0, ge=0, description="Warm containers kept at all times; 0 scales to zero (no cost while idle).")
    max_containers: int = Field(2, ge=1, description="Most GPU containers at once: the cost ceiling under load.")
    target_inputs: int | None = Field(
        None, ge=1, description="Concurrent requests per container at which Modal adds one; default the engine batch size."
    )
    startup_timeout: int = Field(1200, ge=1, description="Seconds a cold start may take before Modal gives up on the container.")
    timeout: int = Field(600, ge=10, le=86400, description="Longest request, in seconds.")
    region: str | None = Field(None, description="Modal region, e.g. 'us-east'; unset lets Modal choose.")
    fast_boot: bool = Field(False, description="--enforce-eager: cold start under a minute, about half the batched throughput.")
    memory_snapshot: bool = Field(False, description="GPU memory snapshots with vLLM sleep mode (Modal alpha): restores in seconds.")
    cuda_base_image: str = Field(
        "nvidia/cuda:12.8.1-devel-ubuntu22.04", description="Base image of GPU containers (FlashInfer compiles kernels with nvcc)."
    )
    api_key_secret: str = Field("ragserve-api-key", description="modal.Secret holding RAGSERVE_API_KEY.")
    hf_secret: str | None = Field(None, description="modal.Secret holding HF_TOKEN, for gated models (download only).")
    models_volume: str = "ragserve-models"
    cache_volume: str = "ragserve-compile-cache"
    index_volume: str = "ragserve-index"
    docs_volume: str = "ragserve-docs"
    index_reload_s: float = Field(30, gt=0, description="How often serving containers reload the index Volume to follow new publications.")
    reindex_schedule: str = Field("0 */6 * * *", description="Cron (UTC) of the re-index job.")
    reindex_source: str = Field("/docs", description="Folder the re-index job reads (the docs Volume is mounted at /docs).")
    reindex_gpu: str | None = Field(None, description="GPU for the re-index job, for large corpora; unset runs it on CPU.")
    reindex_timeout: int = Field(3600, ge=60, le=86400, description="Longest re-index run, in seconds.")
    reindex_shards: int = Field(
        1, ge=1, le=64, description="Containers the re-index fans the embedding of changed chunks out over (1: the writer embeds alone)."
    )
    reindex_shard_size: int = Field(2048, ge=64, description="Chunks per embedding shard when the re-index fans out.")
    index_uri: str | None = Field(
        None,
        description="Keep the index in an object store (s3://bucket/prefix) instead of the index Volume: every container reads "
        "the bucket directly and follows publications without a Volume reload.",
    )
    index_secret: str | None = Field(None, description="modal.Secret with the object store's credentials (AWS_ACCESS_KEY_ID, ...).")

    @field_validator("index_uri")
    @classmethod
    def _object_store(cls, v: str | None) -> str | None:
        from bentos.retrieval.storage import Location

        if v is not None and not Location.of(v).remote:
            raise ValueError(f"index_uri {v!r} is a folder: leave it unset for the index Volume, or give s3://bucket/prefix")
        return v

    @field_validator("gpu", "reindex_gpu")
    @classmethod
    def _known_gpu(cls, v: str | None) -> str | None:
        if v is None:
            return v
        kind, _, count = v.strip().partition(":")
        kind = kind.upper()
        if kind not in GPU_MAX_COUNT:
            raise ValueError(f"unknown Modal GPU {v!r}; use one of {', '.join(GPU_MAX_COUNT)}, optionally with ':N'")
        if count and not (count.isdigit() and 1 <= int(count) <= GPU_MAX_COUNT[kind]):
            raise ValueError(f"GPU count in {v!r} must be 1-{GPU_MAX_COUNT[kind]} for {kind}")
        return f"{kind}:{count}" if count else kind

    @field_validator("scaledown_window")
    @classmethod
    def _scaledown_range(cls, v: int) -> int:
        if not 2 <= v <= 3600:
            raise ValueError(f"scaledown_window {v} s is out of Modal's range 2-3600 s; 300 keeps a container for 5 idle minutes")
        return v

    @field_validator("reindex_schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

    @model_validator(mode="after")
    def _consistent(self) -> ModalSettings:
        if self.max_containers < self.min_containers:
            raise ValueError(f"max_containers {self.max_containers} is below min_containers {self.min_containers}")
        if self.memory_snapshot and self.fast_boot:
            raise ValueError("memory_snapshot restores a compiled engine: turn fast_boot off, it only slows decoding there")
        expected = self.expected_cold_start_s
        if self.startup_timeout < expected:
            raise ValueError(
                f"startup_timeout {self.startup_timeout} s is shorter than the expected cold start ({expected} s with "
                f"{'fast boot' if self.fast_boot else 'compilation'}): every cold start would fail; "
                f"set RAGSERVE_MODAL_STARTUP_TIMEOUT ≥ {expected} or RAGSERVE_MODAL_FAST_BOOT=true"
            )
        return self

    @property
    def expected_cold_start_s(self) -> int:
        return EXPECTED_COLD_START_S["fast_boot" if self.fast_boot else "compiled"]

    @property
    def gpu_count(self) -> int:
        return int(self.gpu.partition(":")[2] or 1)


def load_settings() -> tuple[ModalSettings, Settings]:
    """Both settings objects, or SystemExit naming the bad value: a deploy stops here, not in the cloud."""
    try:
        return ModalSettings(), Settings()
    except ValidationError as e:
        raise SystemExit(f"bad RAGSERVE_* setting for the Modal app:\n{e}") from None
