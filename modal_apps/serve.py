"""The guarded RAG stack on a Modal GPU, scaling to zero: `modal deploy modal_apps/serve.py`.

Each container runs the same Bento as `make serve` (`bentoml serve .`: gateway + model service
with vLLM) and Modal routes HTTPS to its port 3000, the gateway's OpenAI-compatible API.

Cold start path: weights from the `models` Volume (filled once by `download`, so no container
touches the hub), compile caches from the `cache` Volume, optional fast boot (--enforce-eager),
optional GPU memory snapshot (the engine sleeps before the snapshot and wakes after restore).
Settings: RAGSERVE_MODAL_* (modal_apps/config.py) and the stack's own RAGSERVE_* at deploy time.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import httpx
import modal

from bentos.settings import EMBEDDED_MODEL, Settings
from bentos.tools import launch

from .config import load_settings
from .resources import (
    CACHE_DIR,
    ENGINE_PORT,
    INDEX_DIR,
    MODELS_DIR,
    VolumeFollower,
    commit,
    download_env,
    gpu_image,
    model_folder,
    reload,
    serving_env,
    volume,
)

log = logging.getLogger("ragserve.modal")

SERVE_PORT = 3000


cfg, settings = load_settings()
if modal.is_local() and settings.guardrails and not settings.classifier_path.exists():
    raise SystemExit(f"{settings.classifier_path} is missing: train it first (`make setup`, or `ragserve guardrails train`)")

app = modal.App(cfg.app_name)
image = gpu_image(cfg)
models_volume = volume(cfg.models_volume)
cache_volume = volume(cfg.cache_volume)
index_volume = volume(cfg.index_volume)

# What Modal is given for the serving class; kept as data so tests can check it (Modal's
# `info()` does not report scaling settings).
SERVE_OPTIONS = dict(
    image=image,
    gpu=cfg.gpu,
    volumes={MODELS_DIR: models_volume, CACHE_DIR: cache_volume, INDEX_DIR: index_volume},
    secrets=[modal.Secret.from_name(cfg.api_key_secret, required_keys=["RAGSERVE_API_KEY"])],
    env=serving_env(cfg),
    min_containers=cfg.min_containers,
    max_containers=cfg.max_containers,
    scaledown_window=cfg.scaledown_window,
    timeout=cfg.timeout,
    startup_timeout=cfg.startup_timeout,
    region=cfg.region,
    enable_memory_snapshot=cfg.memory_snapshot,
    experimental_options={"enable_gpu_snapshot": True} if cfg.memory_snapshot else None,
)


def model_env(s: Settings) -> dict[str, str]:
    """Serve a Hugging Face id from its folder in the weights Volume, or say how to fill it."""
    if s.model == EMBEDDED_MODEL or Path(s.model).is_dir():
        return {}
    folder = model_folder(s.model)
    if not (folder / "config.json").exists():
        raise RuntimeError(
            f"{s.model} is not in the '{cfg.models_volume}' Volume ({folder}); fill it once with "
            "`modal run modal_apps/serve.py::download` (same RAGSERVE_MODEL)"
        )
    return {"RAGSERVE_MODEL": str(folder), "RAGSERVE_SERVED_MODEL_NAME": s.served_model_name or s.model}


@app.function(
    image=image,
    volumes={MODELS_DIR: models_volume},
    secrets=[modal.Secret.from_name(cfg.hf_secret)] if cfg.hf_secret else [],
    env=download_env(),
    timeout=3600,
)
def download() -> str:
    """Fill the weights Volume with RAGSERVE_MODEL (once per model), so cold starts never touch the hub."""
    from bentos.model.store import prepare_embedded

    s = Settings()
    if s.model == EMBEDDED_MODEL:
        target = prepare_embedded(s)
    else:
        from huggingface_hub import snapshot_download

        target = model_folder(s.model)
        # safetensors only: vLLM loads them, and .bin/.pth copies would double the Volume.
        snapshot_download(s.model, local_dir=target, ignore_patterns=["*.bin", "*.pth", "*.pt", "original/*"])
    commit(models_volume)
    print(f"{s.model} is in {target}")
    return str(target)


@app.cls(**SERVE_OPTIONS)
@modal.concurrent(max_inputs=settings.max_num_seqs, target_inputs=cfg.target_inputs)
class Server:
    """One container: the whole stack, up before Modal sends it a request."""

    @modal.enter(snap=cfg.memory_snapshot)
    def boot(self) -> None:
        s = Settings()
        env = {**os.environ, **model_env(s)}
        log_path = Path(tempfile.gettempdir()) / f"ragserve-{s.port}.log"
        self.stack = launch.start_bento(s.port, env, log_path, cfg.startup_timeout, host=s.host, echo=True)
        self.api_key = s.api_key_value
        print(f"stack ready on port {s.port} after {self.stack.ready_s:.1f} s")
        if cfg.memory_snapshot:
            self._warm_up(s)  # compile and capture graphs now, so the snapshot holds them
        commit(cache_volume)  # compile artifacts for the containers that start after this one
        if cfg.memory_snapshot:
            self._engine("/sleep?level=1")  # weights to CPU memory, KV cache freed: what gets snapshotted

    @modal.enter(snap=False)
    def resume(self) -> None:
        if cfg.memory_snapshot:
            self._engine("/wake_up")
            reload(index_volume)  # the snapshot may hold an old view of the index
            launch.wait_ready(self.stack, cfg.startup_timeout, probe="/readyz")
        self.follower = VolumeFollower(index_volume, cfg.index_reload_s).start()

    @modal.web_server(port=SERVE_PORT, startup_timeout=cfg.startup_timeout)
    def api(self) -> None:
        """The gateway's OpenAI-compatible API (already listening: `boot` waited for /readyz)."""

    @modal.exit()
    def shutdown(self) -> None:
        if getattr(self, "follower", None):
            self.follower.stop()
        launch.stop(self.stack)  # SIGTERM: BentoML finishes in-flight requests first

    def _warm_up(self, s: Settings) -> None:
        r = httpx.post(
            f"{self.stack.url}/v1/chat/completions",
            timeout=300,
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {},
            json={"model": s.model_name, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        )
        r.raise_for_status()

    @staticmethod
    def _engine(path: str) -> None:
        r = httpx.post(f"http://127.0.0.1:{ENGINE_PORT}{path}", timeout=300)
        r.raise_for_status()
