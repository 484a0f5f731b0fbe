"""Start and stop a served stack as a child process group: used by benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from .logs import READY_MESSAGE

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Launched:
    proc: subprocess.Popen
    url: str
    log_path: Path
    ready_s: float = 0.0
    log_offset: int = 0  # where this start's lines begin in a log file that may be reused

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_ready(launched: Launched, timeout_s: float, probe: str | None = None) -> Launched:
    """Until the stack logs that it can answer, the line a user waits for after `make serve`
    (nothing is probed on its behalf); with ``probe``, until that path answers 200."""
    def up(log_text: str) -> bool:
        if probe is None:
            return READY_MESSAGE in log_text
        try:
            return httpx.get(launched.url + probe, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if launched.proc.poll() is not None:
            raise RuntimeError(f"server exited with {launched.proc.returncode}:\n{launched.log_tail()}")
        with open(launched.log_path, "rb") as f:
            f.seek(launched.log_offset)
            text = f.read().decode(errors="replace")
        if "Application startup failed" in text:
            stop(launched)  # BentoML would respawn the failing worker forever
            raise RuntimeError(f"a service failed to start:\n{launched.log_tail(80)}")
        if up(text):
            launched.ready_s = time.monotonic() - started
            return launched
        time.sleep(0.5)
    stop(launched)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{launched.log_tail()}")


def start_bento(port: int, env: dict[str, str], log_path: Path, timeout_s: float = 900, host: str | None = None, echo: bool = False) -> Launched:
    """`bentoml serve .` from the repository root; returns once the stack logs that it is
    ready. With ``echo`` the server's output also goes to our stdout (where Modal collects
    container logs)."""
    cmd = [str(BIN / "bentoml"), "serve", ".", "--port", str(port), *(["--host", host] if host else [])]
    log = open(log_path, "ab")
    offset = log.tell()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    if echo:
        threading.Thread(target=_tee, args=(proc.stdout, log), daemon=True).start()
    return wait_ready(Launched(proc, f"http://127.0.0.1:{port}", log_path, log_offset=offset), timeout_s)


def _tee(pipe, log) -> None:
    for line in iter(pipe.readline, b""):
        log.write(line)
        log.flush()
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def stop(launched: Launched, grace_s: float = 60) -> None:
    """SIGTERM `bentoml serve`: it drains, then stops its workers, which stop their engines.
    Whatever of that family still runs after ``grace_s`` is killed, and waited for: BentoML's
    workers run in process groups of their own, so killing the server's group alone would
    orphan them."""
    try:
        family = psutil.Process(launched.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if launched.proc.poll() is None:
        os.killpg(launched.proc.pid, signal.SIGTERM)
        try:
            launched.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(launched.proc.pid, signal.SIGKILL)
            launched.proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=30)
