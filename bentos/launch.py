"""Start and stop a served stack as a child process group: used by benchmarks and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Launched:
    proc: subprocess.Popen
    url: str
    log_path: Path
    ready_s: float = 0.0

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_ready(launched: Launched, probe: str, timeout_s: float) -> Launched:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if launched.proc.poll() is not None:
            raise RuntimeError(f"server exited with {launched.proc.returncode}:\n{launched.log_tail()}")
        if "Application startup failed" in launched.log_path.read_text(errors="replace"):
            stop(launched)  # BentoML would respawn the failing worker forever
            raise RuntimeError(f"a service failed to start:\n{launched.log_tail(80)}")
        try:
            if httpx.get(launched.url + probe, timeout=5).status_code == 200:
                launched.ready_s = time.monotonic() - started
                return launched
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(launched)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{launched.log_tail()}")


def start_bento(port: int, env: dict[str, str], log_path: Path, timeout_s: float = 900, host: str | None = None, echo: bool = False) -> Launched:
    """`bentoml serve .` from the repository root; returns once /readyz answers 200. With
    ``echo`` the server's output also goes to our stdout (where Modal collects container logs)."""
    cmd = [str(BIN / "bentoml"), "serve", ".", "--port", str(port), *(["--host", host] if host else [])]
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    if echo:
        threading.Thread(target=_tee, args=(proc.stdout, log), daemon=True).start()
    return wait_ready(Launched(proc, f"http://127.0.0.1:{port}", log_path), "/readyz", timeout_s)


def _tee(pipe, log) -> None:
    for line in iter(pipe.readline, b""):
        log.write(line)
        log.flush()
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def stop(launched: Launched, grace_s: float = 60) -> None:
    if launched.proc.poll() is not None:
        return
    os.killpg(launched.proc.pid, signal.SIGTERM)
    try:
        launched.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(launched.proc.pid, signal.SIGKILL)
        launched.proc.wait()
