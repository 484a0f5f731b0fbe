"""Served stacks per test session, booting in the background from its first second: the guarded
one `make serve` runs, a rails-off one started by the Modal serving class, and (for the
guard-model tests) one with a guard engine beside the model.

vLLM takes 30-150 s to start on a CPU, so every test that needs an engine shares these, and the
tests that need none run first, while they boot. Nothing probes /readyz on a test's behalf: a
stack counts as up when it logs its ready line, as a user sees it. The compile cache lives in the
user cache, so later sessions start warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
import pytest

from bentos.settings import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)
# Every process this run starts inherits this mark, even ones that outlive their parents (an
# orphaned engine core): the session's last teardown looks for it.
RUN_MARK = "RAGSERVE_TEST_RUN"
os.environ[RUN_MARK] = uuid.uuid4().hex
START_TIMEOUT_S = float(os.environ.get("RAGSERVE_TEST_START_TIMEOUT_S", "900"))


FIGURES: list[str] = []


def record(line: str) -> None:
    """A figure measured by a test, listed again at the end of the run (pytest hides the prints
    of passing tests)."""
    FIGURES.append(line)
    print("\n" + line)


def started_by_this_run() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(RUN_MARK) == os.environ[RUN_MARK]:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone, a zombie, or not ours to read
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running():
    """Set up first, torn down last: once every stack has been stopped, no process this run
    started may still be running (a leaked engine keeps gigabytes, on a GPU the whole card)."""
    yield
    _, alive = psutil.wait_procs(started_by_this_run(), timeout=30)
    if alive:
        left = []
        for p in alive:
            try:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if left:
            pytest.fail("still running after the tests (now killed):\n" + "\n".join(left))


def pytest_collection_modifyitems(items) -> None:
    """Tests that need no stack first, while the stacks boot; then a new user's first request
    (tests/test_first_contact.py), on a stack that has just said it is ready and that nothing
    else has touched; then the other stack tests in their files' order."""

    def needs_stack(item) -> bool:
        return any(uses(item, f) for f in STACKS)

    items.sort(key=lambda item: (needs_stack(item), item.get_closest_marker("first_contact") is None))


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("measured in this run")
        for line in FIGURES:
            terminalreporter.write_line(line)


def log_lines(path: Path, needle: str, timeout_s: float = 5.0) -> list[dict]:
    """The JSON log lines of a served stack that contain ``needle`` (waiting for them to be written)."""
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
    db: Path
    log_path: Path
    server: psutil.Process  # `bentoml serve`
    ready_s: float

    def openai(self, **kw):
        import openai

        kw.setdefault("api_key", self.api_key)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", timeout=120, **kw)


CORPUS = Path(__file__).parent / "corpus"
SECOND_TENANT_PREFIX = "tenant-b-"  # the session stack's second key: RAGSERVE_API_KEY="<key>,tenant-b-<key>"
ROOT = Path(__file__).resolve().parents[1]


def build_index(db: Path, source: Path = CORPUS):
    """Index ``source`` into ``db`` with the real embedder, as `ragserve index` does."""
    from bentos.retrieval.documents import read_documents
    from bentos.retrieval.embedder import get_embedder
    from bentos.retrieval.index import IndexStore

    docs, _ = read_documents(source)
    return IndexStore(db).reindex(docs, get_embedder())


def stack_env(tmp_path: Path, api_key: str, extra: dict[str, str]) -> tuple[dict[str, str], Path, int]:
    """A fresh index of tests/corpus, a free port and the stack's environment."""
    from bentos.model.engine import free_port

    db = tmp_path / "lancedb"
    build_index(db)
    port = free_port()
    env = {**os.environ, "RAGSERVE_PORT": str(port), "RAGSERVE_API_KEY": api_key, "RAGSERVE_DB": str(db), **extra}
    # BentoML keeps every server's metric files in BENTOML_HOME/prometheus_multiproc_dir and empties
    # it when a server starts: two stacks under one home would each report the other's figures.
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    env.pop("PORT", None)
    return env, db, port


def start_stack(tmp_path: Path, api_key: str, extra: dict[str, str]) -> tuple[ServedStack, Callable[[], None]]:
    """`bentoml serve .` as `make serve` runs it; returns once it logs that it is ready."""
    from bentos.tools import launch

    env, db, port = stack_env(tmp_path, api_key, extra)
    launched = launch.start_bento(port, env, tmp_path / f"stack-{port}.log", START_TIMEOUT_S)
    stack = ServedStack(launched.url, api_key, db, launched.log_path, psutil.Process(launched.proc.pid), launched.ready_s)
    return stack, lambda: launch.stop(launched)


def stack_settings(key: str) -> dict[str, str]:
    """The session stack's settings. The prompt audit log shows what the model received
    (tests/test_guardrails_gateway.py reads it); small capacity limits make a burst overflow them
    (tests/test_hostile_input.py). The answer cache is on, with a second key as a second tenant
    (tests/test_answer_cache.py). No quality monitor: scoring every answer on these two cores would
    slow the stacks the promotion gates compare (its own test starts a gateway with it)."""
    return {
        "RAGSERVE_LOG_PROMPTS": "true",
        "RAGSERVE_MAX_CONCURRENT_REQUESTS": "16",
        "RAGSERVE_MAX_QUEUED_REQUESTS": "16",
        "RAGSERVE_CACHE": "true",
        "RAGSERVE_API_KEY": f"{key},{SECOND_TENANT_PREFIX}{key}",
    }


def model_service_url(stack: ServedStack) -> str:
    """Where the stack's gateway reaches its model service: BentoML hands each worker that map."""
    for proc in stack.server.children(recursive=True):
        if "ragserve-gateway" in proc.cmdline():
            return json.loads(proc.environ()["BENTOML_RUNNER_MAP"])["ragserve-llm"]
    raise RuntimeError(f"no gateway worker under `bentoml serve` (pid {stack.server.pid})")


@contextmanager
def another_gateway(stack: ServedStack, tmp_path: Path, settings: dict[str, str] | None = None) -> Iterator[str]:
    """`bentoml serve .` of the session stack's release with RAGSERVE_MODEL_URL set to that stack's
    model service: a second gateway, with its own process, rails, cache and metrics, answering
    from the same engine (a second engine would not fit beside the others on two cores), with
    ``settings`` changed. Yields its URL once it logs that it is ready."""
    from bentos.tools import launch

    # The stack's index, as a second replica reads it
    extra = {
        **stack_settings(stack.api_key),
        "RAGSERVE_MODEL_URL": model_service_url(stack),
        "RAGSERVE_DB": str(stack.db),
        **(settings or {}),
    }
    env, _, port = stack_env(tmp_path, stack.api_key, extra)
    launched = launch.start_bento(port, env, tmp_path / f"gateway-{port}.log", START_TIMEOUT_S)
    try:
        workers = [" ".join(p.cmdline()) for p in psutil.Process(launched.proc.pid).children(recursive=True)]
        assert not [w for w in workers if "ragserve-llm" in w], f"RAGSERVE_MODEL_URL is set, yet a model service started: {workers}"
        yield launched.url
    finally:
        launch.stop(launched)


def start_modal_container(tmp_path: Path, api_key: str, extra: dict[str, str]) -> tuple[ServedStack, Callable[[], None]]:
    """The Modal serving class run locally as a container runs it (tests/modal_container.py), in
    a process of its own so that its RAGSERVE_* environment stays its own."""
    env, db, port = stack_env(tmp_path, api_key, {**extra, "TMPDIR": str(tmp_path)})  # its log lands beside the rest
    # Its settings as a deployment chooses them (docs/modal.md): an env file, the demo model on purpose.
    chosen = {k: v for k, v in env.items() if k.startswith("RAGSERVE_")} | {"RAGSERVE_MODAL_ALLOW_DEMO": "true"}
    (tmp_path / "deploy.env").write_text("".join(f"{k}='{v}'\n" for k, v in chosen.items()))
    env["RAGSERVE_MODAL_ENV_FILE"] = str(tmp_path / "deploy.env")
    out = tmp_path / "container.out"
    with open(out, "wb") as sink:
        helper = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("modal_container.py"))],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        helper.stdin.close()  # the container's exit: it stops its stack
        helper.wait(120)

    deadline = time.monotonic() + START_TIMEOUT_S
    while not (ready := [line for line in out.read_text(errors="replace").splitlines() if line.startswith("READY ")]):
        if helper.poll() is not None or time.monotonic() > deadline:
            stop() if helper.poll() is None else None
            raise RuntimeError(f"the Modal container did not start:\n{out.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)
    info = json.loads(ready[0][6:])
    return ServedStack(info["url"], api_key, db, Path(info["log"]), psutil.Process(info["pid"]), info["ready_s"]), stop


class Boot:
    """A stack booting on a thread of its own from the start of the session, while the tests
    that do not need it run (they go first, see pytest_collection_modifyitems)."""

    def __init__(self, name: str, start: Callable[[], tuple[ServedStack, Callable[[], None]]]):
        self.name, self.stack, self.stop, self.error = name, None, None, None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(start,), name=f"boot-{name}", daemon=True)
        self.thread.start()

    def _run(self, start) -> None:
        try:
            self.stack, self.stop = start()
            FIGURES.append(
                f"{self.name} ready on {self.stack.url} after {self.stack.ready_s:.1f} s "
                f"({time.monotonic() - self.started:.1f} s after the session started; log: {self.stack.log_path})"
            )
        except BaseException as e:  # handed to the tests that wait for it
            self.error = e

    def get(self) -> ServedStack:
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"the {self.name} did not start") from self.error
        return self.stack

    def close(self) -> None:
        self.thread.join()
        if self.stop is not None:
            self.stop()


def uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


STACKS = ("stack", "unguarded_stack", "guard_stack")


@pytest.fixture(scope="session", autouse=True)
def boots(request, tmp_path_factory, nothing_left_running) -> dict[str, Boot]:
    """Both stacks start at once when the session does, if any selected test needs them. One
    key for both: they are the two halves of a blue-green pair in the promotion tests."""
    items = request.session.items
    key = "test-key-" + os.urandom(6).hex()
    started: dict[str, Boot] = {}
    if any(uses(i, f) for i in items for f in STACKS):
        from bentos.retrieval.embedder import get_embedder

        get_embedder()  # loaded once, before the boots index their corpus with it
    if any(uses(i, "stack") for i in items):
        started["stack"] = Boot("stack", partial(start_stack, tmp_path_factory.mktemp("stack"), key, stack_settings(key)))
    if any(uses(i, "unguarded_stack") for i in items):
        # Fast boot (no compilation: it does not race the other stack for the compile cache) and
        # rails off; vLLM's CPU build pins every engine to core 0, so this one gets core 1.
        extra = {"RAGSERVE_GUARDRAILS": "false", "RAGSERVE_ENFORCE_EAGER": "true"}
        if (os.cpu_count() or 1) > 1:
            extra["VLLM_CPU_OMP_THREADS_BIND"] = "1"
        started["unguarded_stack"] = Boot(
            "Modal container (fast boot, rails off)", partial(start_modal_container, tmp_path_factory.mktemp("unguarded"), key, extra)
        )
    if any(uses(i, "guard_stack") for i in items):
        from bentos.model.store import prepare_embedded
        from bentos.settings import EngineSettings

        # The embedded SmolLM2 folder stands in for a guard model: a second engine really starts,
        # the chat template really renders, the verdict (held to Llama Guard's shape) is parsed.
        extra = {"RAGSERVE_GUARD_MODEL": str(prepare_embedded(EngineSettings())), "RAGSERVE_ENFORCE_EAGER": "true"}
        if (os.cpu_count() or 1) > 1:
            extra["VLLM_CPU_OMP_THREADS_BIND"] = "1"
        started["guard_stack"] = Boot("stack with a guard model", partial(start_stack, tmp_path_factory.mktemp("guarded"), key, extra))
    yield started
    for boot in started.values():
        boot.close()


@pytest.fixture(scope="session")
def stack(boots) -> ServedStack:
    """The stack `make serve` runs, guarded, with tests/corpus indexed."""
    return boots["stack"].get()


@pytest.fixture(scope="session")
def unguarded_stack(boots) -> ServedStack:
    """A second stack, rails off, same key, started by the Modal serving class as a container
    starts it (fast boot): the other half of a blue-green pair for the promotion tests (a
    candidate that must fail the guardrail gate, or a live release to promote over), and the
    one the engine-death and shutdown tests may break."""
    return boots["unguarded_stack"].get()


@pytest.fixture(scope="session")
def guard_stack(boots) -> ServedStack:
    """`make serve` with RAGSERVE_GUARD_MODEL set (to the SmolLM2 folder): three services."""
    return boots["guard_stack"].get()
