"""When the engine dies, and when the stack is told to stop: on the second (rails-off) stack, so
the session stack keeps serving the other tests. The shutdown test ends that stack: keep it last."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import psutil
import pytest

from bentos.model.engine import group_members
from conftest import START_TIMEOUT_S, record

pytestmark = pytest.mark.stack


def engine_process(stack) -> psutil.Process:
    """vLLM's API server among the stack's descendants (it runs in its own session)."""
    for p in stack.server.children(recursive=True):
        if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline()):
            return p
    raise AssertionError("no vLLM process under the stack")


def chat(stack, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=timeout,
        json={"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 4},
    )


def test_engine_death_fails_fast_with_503_and_the_engine_is_restarted(unguarded_stack):
    """SIGKILL to vLLM's API server (a crash, the OOM killer): requests fail fast with 503; the
    supervisor ends what is left of the old engine (its engine core and workers would otherwise
    live on, holding their memory), starts a new one and warms it, so a client that simply
    retries as Retry-After says is answered again, with nothing probing /readyz."""
    s = unguarded_stack
    assert chat(s).status_code == 200
    victim = engine_process(s)
    family = victim.children(recursive=True)  # its engine core and workers
    assert family, "vLLM's API server has no engine core under it"
    victim.kill()  # no chance to clean up
    victim.wait(30)
    died = time.monotonic()
    t0 = time.perf_counter()
    r = chat(s, timeout=10)
    failed_in = time.perf_counter() - t0
    assert r.status_code == 503 and r.headers.get("retry-after"), r.text
    assert r.json()["error"]["code"] in ("engine_down", "engine_starting") and "retry" in r.json()["error"]["message"]
    assert failed_in < 2.0
    while r.status_code != 200:
        assert r.status_code == 503 and time.monotonic() - died < START_TIMEOUT_S, f"the engine did not come back: {r.status_code} {r.text}"
        time.sleep(float(r.headers["retry-after"]))
        r = chat(s)
    back_s = time.monotonic() - died
    assert engine_process(s).pid != victim.pid
    _, alive = psutil.wait_procs(family, timeout=0)
    assert not alive and not group_members(victim.pid), f"the old engine lives on: {[p.pid for p in alive]}"
    assert httpx.get(s.url + "/readyz", timeout=10).status_code == 200
    assert re.search(r"^ragserve_engine_restarts_total 1\.0$", httpx.get(s.url + "/metrics").text, re.M), (
        "the restart is not counted on /metrics"
    )
    record(
        f"engine killed: requests failed fast with 503 in {failed_in * 1000:.0f} ms; old engine core and workers ended; "
        f"answered again {back_s:.1f} s after the kill (a client retrying as Retry-After says)"
    )


def test_sigterm_finishes_streams_in_flight_before_exiting(unguarded_stack):
    """SIGTERM to `bentoml serve` (what Kubernetes or Modal sends) while a stream runs: the stream
    ends whole, then the stack exits."""
    s = unguarded_stack
    got: dict = {}

    def stream() -> None:
        # A question the index answers, so the model generates (an off-index one is answered locally).
        body = {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 120,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        text, finish, usage = [], None, None
        with httpx.stream(
            "POST", s.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {s.api_key}"}, timeout=180
        ) as r:
            got["status"] = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                got.setdefault("first", time.monotonic())
                for c in event.get("choices", []):
                    text.append(c["delta"].get("content") or "")
                    finish = c.get("finish_reason") or finish
                usage = event.get("usage") or usage
        got.update(text="".join(text), finish=finish, usage=usage)

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 60
    while "first" not in got:
        assert time.monotonic() < deadline, "the stream never started"
        time.sleep(0.05)
    s.server.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    reader.join(180)
    s.server.wait(120)
    exited = time.monotonic() - signalled
    assert got["status"] == 200 and got["finish"] == "length" and got["usage"]["completion_tokens"] == 120, got
    record(f"SIGTERM mid-stream: the stream finished all 120 tokens; the stack exited {exited:.1f} s after the signal")
