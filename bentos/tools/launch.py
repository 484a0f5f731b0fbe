"""Start and stop a served stack as a child process group: used by benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bentos.model.engine import free_port
from bentos.settings import PROJECT_DIR
from bentos.web.logs import READY_MESSAGE

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


def answers(url: str, status: int | None = 200) -> bool:
    """Whether GET ``url`` answers now: with ``status``, or with anything when it is None."""
    try:
        r = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return False
    return status is None or r.status_code == status


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> float:
    """Seconds until ``check()`` held; TimeoutError naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - started


@contextmanager
def serving(app, mount: str | None = None) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, on a thread of its own; with ``mount``, under
    that path as BentoML mounts the services' apps. Yields its URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    port = free_port()
    root = Starlette(routes=[Mount(mount, app)]) if mount else app
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "the test server's start", poll_s=0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_ready(launched: Launched, timeout_s: float, probe: str | None = None) -> Launched:
    """Until the stack logs that it can answer, the line a user waits for after `make serve`
    (nothing is probed on its behalf); with ``probe``, until that path answers 200."""

    def up() -> bool:
        if launched.proc.poll() is not None:
            raise RuntimeError(f"server exited with {launched.proc.returncode}:\n{launched.log_tail()}")
        with open(launched.log_path, "rb") as f:
            f.seek(launched.log_offset)
            text = f.read().decode(errors="replace")
        if "Application startup failed" in text:
            stop(launched)  # BentoML would respawn the failing worker forever
            raise RuntimeError(f"a service failed to start:\n{launched.log_tail(80)}")
        return READY_MESSAGE in text if probe is None else answers(launched.url + probe)

    try:
        launched.ready_s = wait_for(up, timeout_s, "the stack's ready line" if probe is None else f"{probe} answering 200")
    except TimeoutError as e:
        stop(launched)
        raise RuntimeError(f"{e}:\n{launched.log_tail()}") from None
    return launched


def start_bento(
    port: int, env: dict[str, str], log_path: Path, timeout_s: float = 900, host: str | None = None, echo: bool = False
) -> Launched:
    """`bentoml serve .` from the repository root; returns once the stack logs that it is
    ready. With ``echo`` the server's output also goes to our stdout (where Modal collects
    container logs)."""
    cmd = [str(BIN / "bentoml"), "serve", ".", "--port", str(port), *(["--host", host] if host else [])]
    log = open(log_path, "ab")
    offset = log.tell()
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE if echo else log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
