"""One served stack per test session: `bentoml serve` on a free port with the embedded model.

vLLM takes 30-150 s to start on a CPU, so every test that needs the engine shares this server.
The compile cache lives in the user cache (~/.cache/vllm), so later sessions start warm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "NEMO_GUARDRAILS_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "True",
}
os.environ.update(OFFLINE_ENV)
START_TIMEOUT_S = float(os.environ.get("RAGSERVE_TEST_START_TIMEOUT_S", "900"))


FIGURES: list[str] = []


def record(line: str) -> None:
    """A figure measured by a test, listed again at the end of the run (pytest hides the prints
    of passing tests)."""
    FIGURES.append(line)
    print("\n" + line)


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("measured in this run")
        for line in FIGURES:
            terminalreporter.write_line(line)


def log_lines(path: Path, needle: str, timeout_s: float = 5.0) -> list[dict]:
    """The JSON log lines of a served stack that contain ``needle`` (waiting for them to be written)."""
    import json
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{") and needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@dataclass
class ServedStack:
    url: str
    api_key: str
    launched: object
    db: Path

    def openai(self, **kw):
        import openai

        kw.setdefault("api_key", self.api_key)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", timeout=120, **kw)


CORPUS = Path(__file__).parent / "corpus"


def build_index(db: Path, source: Path = CORPUS):
    """Index ``source`` into ``db`` with the real embedder, as `ragserve index` does."""
    from bentos.retrieval.documents import read_documents
    from bentos.retrieval.embedder import get_embedder
    from bentos.retrieval.index import IndexStore

    docs, _ = read_documents(source)
    return IndexStore(db).reindex(docs, get_embedder())


def start_stack(tmp_path, env_extra: dict[str, str] | None = None, api_key: str | None = None) -> ServedStack:
    from bentos import launch
    from bentos.engine import free_port

    db = tmp_path / "lancedb"
    build_index(db)
    port = free_port()
    api_key = api_key or "test-key-" + os.urandom(6).hex()
    env = {**os.environ, "RAGSERVE_PORT": str(port), "RAGSERVE_API_KEY": api_key, "RAGSERVE_DB": str(db), **(env_extra or {})}
    env.pop("PORT", None)
    launched = launch.start_bento(port, env, tmp_path / f"stack-{port}.log", START_TIMEOUT_S)
    record(f"stack ready on {launched.url} after {launched.ready_s:.1f} s (log: {launched.log_path})")
    return ServedStack(launched.url, api_key, launched, db)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> ServedStack:
    from bentos import launch

    # The prompt audit log shows what the model received (tests/test_guardrails.py reads it);
    # small capacity limits make a burst overflow them (tests/test_hostile_input.py).
    s = start_stack(tmp_path_factory.mktemp("stack"), {"RAGSERVE_LOG_PROMPTS": "true", "RAGSERVE_MAX_CONCURRENT_REQUESTS": "16", "RAGSERVE_MAX_QUEUED_REQUESTS": "16"})
    yield s
    launch.stop(s.launched)


@pytest.fixture(scope="session")
def unguarded_stack(stack, tmp_path_factory) -> ServedStack:
    """A second stack, rails off, same key: the other half of a blue-green pair for the promotion
    tests (a candidate that must fail the guardrail gate, or a live release to promote over)."""
    from bentos import launch

    env = {"RAGSERVE_GUARDRAILS": "false"}
    if (os.cpu_count() or 1) > 1:
        # vLLM's CPU build pins every engine's threads to core 0 (it keeps the other free): this
        # one gets core 1, so the two engines do not share one core under load.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    s = start_stack(tmp_path_factory.mktemp("unguarded"), env, api_key=stack.api_key)
    yield s
    launch.stop(s.launched)
