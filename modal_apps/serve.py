"""The guarded RAG stack on a Modal GPU, scaling to zero: `modal deploy modal_apps/serve.py`.

Each container runs the same Bento as `make serve` (`bentoml serve .`: gateway + model service
with vLLM) and Modal routes HTTPS to its port 3000, the gateway's OpenAI-compatible API.

Cold start path: weights from the `models` Volume (filled once by `download`, so no container
touches the hub), compile caches from the `cache` Volume, optional fast boot (--enforce-eager),
optional GPU memory snapshot (the engine sleeps before the snapshot and wakes after restore).
Settings: the deployment's env file (modal_apps/deploy.env; docs/modal.md), checked by modal_apps/config.py.
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
    MODELS_DIR,
    VolumeFollower,
    commit,
    download_env,
    gpu_image,
    index_mounts,
    index_secrets,
    model_folder,
    reload,
    serving_env,
    volume,
)

log = logging.getLogger("ragserve.modal")

SERVE_PORT = 3000


cfg, settings, deploy_env = load_settings(gpu_endpoint=True)
if modal.is_local() and settings.guard.guardrails and not settings.guard.classifier_path.exists():
    raise SystemExit(f"{settings.guard.classifier_path} is missing: train it first (`make setup`, or `ragserve guardrails train`)")
if cfg.memory_snapshot and settings.guard.guard_in_process:
    # The snapshot path puts one engine to sleep at a known port; a second engine is not handled yet.
    raise SystemExit("RAGSERVE_MODAL_MEMORY_SNAPSHOT does not support a guard engine yet: unset one of it and RAGSERVE_GUARD_MODEL")

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
    volumes={MODELS_DIR: models_volume, CACHE_DIR: cache_volume, **index_mounts(cfg, index_volume)},
    secrets=[modal.Secret.from_name(cfg.api_key_secret, required_keys=["RAGSERVE_API_KEY"]), *index_secrets(cfg)],
    env=serving_env(cfg, deploy_env),
    min_containers=cfg.min_containers,
    max_containers=cfg.max_containers,
    scaledown_window=cfg.scaledown_window,
    timeout=cfg.timeout,
    startup_timeout=cfg.startup_timeout,
    region=cfg.region,
    enable_memory_snapshot=cfg.memory_snapshot,
    experimental_options={"enable_gpu_snapshot": True} if cfg.memory_snapshot else None,
)


def volume_folder(model: str, setting: str) -> Path | None:
    """A Hugging Face id's folder in the weights Volume (None for the embedded model or a folder),
    or an error saying how to fill it."""
    if model == EMBEDDED_MODEL or Path(model).is_dir():
        return None
    folder = model_folder(model)
    if not (folder / "config.json").exists():
        raise RuntimeError(
            f"{model} is not in the '{cfg.models_volume}' Volume ({folder}); fill it once with "
            f"`modal run modal_apps/serve.py::download` (same {setting})"
        )
    return folder


def model_env(s: Settings) -> dict[str, str]:
    """Serve Hugging Face ids (the model's, and the guard model's when set: its engine runs in the
    same container, on the same GPU) from their folders in the weights Volume."""
    env = {}
    if folder := volume_folder(s.engine.model, "RAGSERVE_MODEL"):
        env |= {"RAGSERVE_MODEL": str(folder), "RAGSERVE_SERVED_MODEL_NAME": s.engine.served_model_name or s.engine.model}
    if s.guard.guard_in_process and (folder := volume_folder(s.guard.guard_model, "RAGSERVE_GUARD_MODEL")):
        env["RAGSERVE_GUARD_MODEL"] = str(folder)
    return env


@app.function(
    image=image,
    volumes={MODELS_DIR: models_volume},
    secrets=[modal.Secret.from_name(cfg.hf_secret)] if cfg.hf_secret else [],
    env=download_env(deploy_env),
    timeout=3600,
)
def download() -> str:
    """Fill the weights Volume with RAGSERVE_MODEL, and RAGSERVE_GUARD_MODEL when set (once per
    model), so cold starts never touch the hub. Returns the model's folder."""
    from bentos.model.store import prepare_embedded

    s = Settings()
    folders = []
    for model in [s.engine.model] + ([s.guard.guard_model] if s.guard.guard_in_process else []):
        if model == EMBEDDED_MODEL:
            target = prepare_embedded(s.engine)
        elif Path(model).is_dir():
            target = Path(model)
        else:
            from huggingface_hub import snapshot_download

            target = model_folder(model)
            # safetensors only: vLLM loads them, and .bin/.pth copies would double the Volume.
            snapshot_download(model, local_dir=target, ignore_patterns=["*.bin", "*.pth", "*.pt", "original/*"])
        print(f"{model} is in {target}")
        folders.append(str(target))
    commit(models_volume)
    return folders[0]


@app.cls(**SERVE_OPTIONS)
@modal.concurrent(max_inputs=settings.engine.max_num_seqs, target_inputs=cfg.target_inputs)
class Server:
    """One container: the whole stack, up before Modal sends it a request."""

    @modal.enter(snap=cfg.memory_snapshot)
    def boot(self) -> None:
        s = Settings()
        env = {**os.environ, **model_env(s)}
        log_path = Path(tempfile.gettempdir()) / f"ragserve-{s.web.port}.log"
        self.stack = launch.start_bento(s.web.port, env, log_path, cfg.startup_timeout, host=s.web.host, echo=True)
        self.api_key = s.web.api_key_value
        print(f"stack ready on port {s.web.port} after {self.stack.ready_s:.1f} s")
        if cfg.memory_snapshot:
            self._warm_up(s)  # compile and capture graphs now, so the snapshot holds them
        commit(cache_volume)  # compile artifacts for the containers that start after this one
        if cfg.memory_snapshot:
            self._engine("/sleep?level=1")  # weights to CPU memory, KV cache freed: what gets snapshotted

    @modal.enter(snap=False)
    def resume(self) -> None:
        if cfg.memory_snapshot:
            self._engine("/wake_up")
            if not cfg.index_uri:
                reload(index_volume)  # the snapshot may hold an old view of the index
            launch.wait_ready(self.stack, cfg.startup_timeout, probe="/readyz")
        if not cfg.index_uri:  # an index in a bucket is read directly: nothing to reload
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
            json={"model": s.engine.model_name, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        )
        r.raise_for_status()

    @staticmethod
    def _engine(path: str) -> None:
        r = httpx.post(f"http://127.0.0.1:{ENGINE_PORT}{path}", timeout=300)
        r.raise_for_status()
