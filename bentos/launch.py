"""Start and stop a served stack as a child process group: used by benchmarks and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def start_bento(port: int, env: dict[str, str], log_path: Path, timeout_s: float = 900) -> Launched:
    """`bentoml serve .` from the repository root; returns once /readyz answers 200."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", ".", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return wait_ready(Launched(proc, f"http://127.0.0.1:{port}", log_path), "/readyz", timeout_s)


def stop(launched: Launched, grace_s: float = 60) -> None:
    if launched.proc.poll() is not None:
        return
    os.killpg(launched.proc.pid, signal.SIGTERM)
    try:
        launched.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(launched.proc.pid, signal.SIGKILL)
        launched.proc.wait()
