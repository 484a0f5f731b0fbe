"""One served stack per test session: `bentoml serve` on a free port with the embedded model.

vLLM takes 30-150 s to start on a CPU, so every test that needs the engine shares this server.
The compile cache lives in the user cache (~/.cache/vllm), so later sessions start warm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = float(os.environ.get("RAGSERVE_TEST_START_TIMEOUT_S", "600"))

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "NEMO_GUARDRAILS_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "True",
}
os.environ.update(OFFLINE_ENV)


def free_port() -> int:
    from bentos.engine import free_port as _free_port

    return _free_port()


class ServedStack:
    def __init__(self, port: int, api_key: str, proc: subprocess.Popen, log_path: Path):
        self.port, self.api_key, self.proc, self.log_path = port, api_key, proc, log_path
        self.url = f"http://127.0.0.1:{port}"

    def openai(self, **kw):
        import openai

        kw.setdefault("api_key", self.api_key)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", timeout=120, **kw)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_stack(tmp: Path, env_extra: dict[str, str] | None = None) -> ServedStack:
    port = free_port()
    api_key = "test-key-" + os.urandom(6).hex()
    env = {**os.environ, "RAGSERVE_PORT": str(port), "RAGSERVE_API_KEY": api_key, **(env_extra or {})}
    env.pop("PORT", None)
    log_path = tmp / f"stack-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", ".", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack = ServedStack(port, api_key, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{stack.log_tail()}")
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200:
                return stack
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_stack(stack)
    raise RuntimeError(f"stack not ready after {START_TIMEOUT_S:.0f} s:\n{stack.log_tail()}")


def stop_stack(stack: ServedStack) -> None:
    if stack.proc.poll() is None:
        os.killpg(stack.proc.pid, signal.SIGTERM)
        try:
            stack.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> ServedStack:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)
