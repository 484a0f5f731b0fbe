"""Blue-green promotion end to end on real stacks: the guarded session stack and a second one
with rails off, behind the real router, under steady concurrent load through the official
openai client. The Modal and KServe backends run the same procedure against a stand-in
``modal.Dict`` and a stand-in ``kubectl`` (the only fakes: no Modal account or cluster here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bentos.model.engine import free_port
from bentos.tools.cli import main as ragserve
from bentos.tools.launch import answers, serving, wait_for
from bentos.web.relay import body_of, dependency_client
from bentos.web.timing import TEXT_CHUNK
from conftest import another_gateway, model_service_url, record
from infra import gates
from infra.backends import local_backend
from infra.promote import Policy, Promotion
from infra.router import UPSTREAM_HEADER

pytestmark = pytest.mark.stack

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# The frozen promotion eval set's guardrail cases, with retrieval cases for the test corpus
# instead of docs/ (the stacks here index tests/corpus).
RETRIEVAL_CASES = {
    "What is the capital of France?": "geography.md",
    "How many days do Zorblax customers have to ask for a refund?": "handbook.md",
    "Where do Zorblax robots ship from?": "handbook.md",
    "When are Zorblax firmware updates released?": "faq/firmware",
    "What is the office cat called?": "office.html",
}
QUESTIONS = list(RETRIEVAL_CASES)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> str:
    cases = [line for line in (ROOT / "infra" / "eval" / "promotion.jsonl").read_text().splitlines() if '"prompt"' in line]
    cases += [json.dumps({"query": q, "source": src}) for q, src in RETRIEVAL_CASES.items()]
    path = tmp_path_factory.mktemp("eval") / "promotion.jsonl"
    path.write_text("\n".join(cases) + "\n")
    return str(path)


# Short steps for the test (the defaults, 10/50/100% of 30 s each, are for real traffic); every gate
# that compares the candidate with live keeps its default. Each step waits for twice the default
# evidence: the pace over ~10 streams per slot. Here one stream's pace swings 3x with what decodes
# beside it: over ~5 streams a candidate identical to live fell under 0.67x live's in 0.8-2.4% of
# steps, over ~10 in 0.03-0.23% (resampling two runs of 203 and 344 streams under this load). A candidate that should
# pass is a new revision of the live release (the guarded stack behind a proxy), as a real rollout
# mostly is; the gates failing clearly worse ones at the same settings: test_performance_gate_fails_a_slower_candidate,
# test_step_gate_rolls_back_a_candidate_slow_under_traffic and the shadow stage's slowed candidate.
STEP_ANSWERS = 20
# The answer-quality gate asks both slots every question: it runs where a test is about it
# (test_local_promotion..., test_a_candidate_that_breaks_grounding...) and is off in the others.
FAST = [
    "--ready-timeout-seconds", "60", "--steps", "50,100", "--step-seconds", "4", "--min-step-requests", str(STEP_ANSWERS), "--no-grounding",
]  # fmt: skip


class SteadyLoad:
    """Concurrent clients through the router for as long as the block runs: chat and streamed
    chat in turn, past the answer cache. Every request that raises, or ends without text, counts as failed."""

    def __init__(self, url: str, api_key: str, workers: int = 3):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=120)
        self.workers, self.sent, self.failed, self.errors = workers, 0, 0, []
        self.served_by: Counter = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _one(self, i: int) -> None:
        question = QUESTIONS[i % len(QUESTIONS)]
        raw = self.client.chat.completions.with_raw_response.create(
            model="x",
            messages=[{"role": "user", "content": question}],
            max_tokens=8,
            temperature=0,
            stream=bool(i % 2),
            extra_body={"cache": False},  # each a new answer, as varied real traffic is: cache replays would swamp the pace and TTFT
        )
        if i % 2:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content
        if not text:
            raise AssertionError("an answer without text")
        with self._lock:
            self.served_by[raw.headers.get(UPSTREAM_HEADER)] += 1

    def _worker(self, w: int) -> None:
        i = w
        while not self._stop.is_set():
            try:
                self._one(i)
            except Exception as e:
                with self._lock:
                    self.failed += 1
                    self.errors.append(f"{type(e).__name__}: {e}"[:200])
            with self._lock:
                self.sent += 1
            i += self.workers

    def __enter__(self) -> SteadyLoad:
        self.threads = [threading.Thread(target=self._worker, args=(w,), daemon=True) for w in range(self.workers)]
        for t in self.threads:
            t.start()
        time.sleep(2)  # traffic is flowing before the promotion starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(150)


@contextmanager
def router(blue: str, tmp_path: Path, green: str | None = None):
    """`ragserve router` as its own process, all traffic on ``blue``."""
    port = free_port()
    log = open(tmp_path / "router.log", "w")
    slots = ["--blue", blue, *(["--green", green] if green else [])]
    proc = subprocess.Popen(
        [str(BIN / "ragserve"), "router", *slots, "--port", str(port), "--state", str(tmp_path / "traffic.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url + "/livez"), 30, "the router answering")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def promote(*args: str) -> tuple[int, list[dict], str]:
    done = subprocess.run([str(BIN / "ragserve"), "promote", *args], capture_output=True, text=True, timeout=900)
    decisions = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, decisions, done.stderr


def gates_of(decisions: list[dict]) -> dict[str, dict]:
    return {d["gate"]: d for d in decisions if "gate" in d}


def report(what: str, load: SteadyLoad, decisions: list[dict]) -> None:
    rolled = [d for d in decisions if d["event"] == "rolled_back"]
    extra = (
        f", failed gate {rolled[0]['failed_gate']} ({rolled[0]['reason']}) -> live at 100% in {rolled[0]['rollback_ms']} ms"
        if rolled
        else ""
    )
    record(f"{what}: {load.sent} requests sent, {load.failed} failed, served by {dict(load.served_by)}{extra}")


def promote_revision_under_load(stack, tmp_path: Path, eval_set: str, fault, *extra: str) -> tuple[int, list[dict], str, dict, SteadyLoad]:
    """`ragserve promote local` of a new revision of the guarded release (the stack behind a proxy
    that misbehaves as ``fault`` says) over the stack itself, under steady load through the router;
    returns the exit code, the decisions, stderr, the final weights and the load."""
    with (
        serving(proxy_with_fault(stack.url, fault)) as revision,
        router(stack.url, tmp_path) as url,
        SteadyLoad(url, stack.api_key) as load,
    ):
        code, decisions, err = promote(
            "local", "--router", url, "--candidate-url", revision, "--eval", eval_set, "--api-key", stack.api_key, *FAST, *extra
        )
        weights = httpx.get(url + "/-/traffic").json()["weights"]
    return code, decisions, err, weights, load


def test_local_promotion_under_load_loses_no_request(stack, tmp_path, eval_set):
    """A new revision of the guarded release is promoted in 50/100% steps; it passes the answer-quality gate at its defaults."""
    code, decisions, err, weights, load = promote_revision_under_load(stack, tmp_path, eval_set, no_fault, "--grounding")
    report("promotion", load, decisions)
    assert code == 0, err
    gates = gates_of(decisions)
    record(f"answer-quality gate, the same release: {gates['grounding']['figures']}")
    assert all(gates[g]["passed"] for g in ("ready", "smoke", "quality", "grounding", "performance", "step 50%", "step 100%")), decisions
    assert gates["grounding"]["figures"]["live_faithfulness"] is not None
    assert gates["quality"]["figures"]["block_rate"] == 1.0 and gates["performance"]["figures"]["ttft_ratio"] > 0
    assert decisions[-1]["event"] == "promoted" and weights == {"blue": 0, "green": 100}
    assert load.failed == 0, load.errors[:5]
    assert load.sent >= 20 and load.served_by["green"] > 0 and load.served_by["blue"] > 0


def test_candidate_without_guardrails_is_rolled_back(stack, unguarded_stack, tmp_path, eval_set):
    """The rails-off stack as candidate fails the quality gate; the guarded live stack keeps 100%."""
    with router(stack.url, tmp_path) as url, SteadyLoad(url, stack.api_key) as load:
        code, decisions, err = promote(
            "local", "--router", url, "--candidate-url", unguarded_stack.url, "--eval", eval_set, "--api-key", stack.api_key, *FAST
        )
        weights = httpx.get(url + "/-/traffic").json()["weights"]
    report("rollback on the quality gate", load, decisions)
    assert code == 1 and "rolled back: quality failed" in err
    quality = gates_of(decisions)["quality"]
    assert not quality["passed"] and quality["figures"]["block_rate"] == 0.0 and "block rate" in quality["reason"]
    assert weights == {"blue": 100, "green": 0}
    assert load.failed == 0, load.errors[:5]
    assert load.served_by == Counter({"blue": load.sent})


def proxy_with_fault(target: str, fault):
    """A candidate in front of ``target`` that misbehaves as ``fault(request)`` says: a response
    to answer instead, or None to pass the request on (after whatever delay the fault took)."""
    client = httpx.AsyncClient(base_url=target, timeout=120)

    async def proxy(request: Request) -> Response:
        injected = await fault(request)
        if injected is not None:
            return injected
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = await client.send(
            client.build_request(request.method, request.url.path, headers=headers, content=await request.body()), stream=True
        )
        return StreamingResponse(
            body_of(upstream), upstream.status_code, headers={"content-type": upstream.headers.get("content-type", "")}
        )

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])


SWAPPED_NAMES = ["Lisbon", "Norway", "Kestrel", "Mumbai", "Orinoco"]


def swap_entities(text: str) -> str:
    """The same answer with its numbers and capitalised names (past a sentence's first word)
    replaced by others of the same kind: as fluent, as cited, and wrong."""
    names = iter(SWAPPED_NAMES * 20)
    text = re.sub(r"\d+", lambda m: str(int(m.group()) * 3 + 7), text)
    return re.sub(r"(?<=[a-z,;:] )[A-Z][a-z]+", lambda m: next(names), text)


def entity_swapping_engine(model_service: str) -> Starlette:
    """A stand-in engine: the real model service's answers with their entities swapped."""
    client = dependency_client(model_service, 120)  # BentoML's URL: a Unix socket here

    async def relay(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        r = await client.request(request.method, request.url.path, headers=headers, content=await request.body())
        if not request.url.path.endswith("/chat/completions") or r.status_code != 200:
            return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            lines = [
                "data: " + json.dumps(swapped_event(json.loads(line[6:]))) if line.startswith("data: {") else line
                for line in r.text.split("\n")
            ]
            return Response("\n".join(lines), media_type="text/event-stream")
        return JSONResponse(swapped_event(r.json()))

    def swapped_event(event: dict) -> dict:
        for choice in event.get("choices") or []:
            for part in (choice.get("message"), choice.get("delta")):
                if part and part.get("content"):
                    part["content"] = swap_entities(part["content"])
        return event

    return Starlette(routes=[Route("/{path:path}", relay, methods=["GET", "POST"])])


@pytest.mark.parametrize("broken", ["prompt template without the sources", "engine swapping the entities"])
def test_a_candidate_that_breaks_grounding_fails_before_any_user_reaches_it(stack, tmp_path, eval_set, broken):
    """A second gateway on the session stack's engine and index, broken in one way: its prompt
    template drops the sources, or its engine swaps the names and numbers of the right answer. It
    answers, guards and is as fast as live; the answer-quality gate at its defaults stops it
    before the first traffic step (the same release passes: test_local_promotion...)."""
    with contextlib.ExitStack() as running:
        if broken.startswith("prompt"):
            template = tmp_path / "template.txt"
            template.write_text("You are a helpful assistant. Answer the user's question in one or two sentences.\n")
            settings = {"RAGSERVE_PROMPT_TEMPLATE": str(template)}
        else:
            settings = {"RAGSERVE_MODEL_URL": running.enter_context(serving(entity_swapping_engine(model_service_url(stack))))}
        candidate = running.enter_context(another_gateway(stack, tmp_path, settings))
        url = running.enter_context(router(stack.url, tmp_path))
        code, decisions, err = promote(
            "local", "--router", url, "--candidate-url", candidate, "--eval", eval_set, "--api-key", stack.api_key, *FAST, "--grounding"
        )
        weights = httpx.get(url + "/-/traffic").json()["weights"]
    gate = gates_of(decisions)["grounding"]
    record(f"answer-quality gate, {broken}: {gate['figures']} {gate['reason']}")
    assert code == 1 and "rolled back: grounding failed" in err, err
    assert all(gates_of(decisions)[g]["passed"] for g in ("smoke", "quality")), decisions
    assert not gate["passed"] and "below live's" in gate["reason"], gate
    assert not [d for d in decisions if d["event"] == "shift" and d["percent"] > 0], decisions
    assert weights == {"blue": 100, "green": 0}
    assert gate["figures"]["worst"] and all(set(w) == {"id", "faithfulness"} for w in gate["figures"]["worst"])


async def fails_routed_chat(request: Request) -> Response | None:
    """Passes every gate, fails real traffic: chat requests the router forwarded (X-Forwarded-For) get 503."""
    if request.url.path.endswith("/chat/completions") and "x-forwarded-for" in request.headers:
        return JSONResponse({"error": {"message": "injected fault", "type": "api_error"}}, 503)
    return None


async def slow_chat(request: Request) -> None:
    if request.url.path.endswith("/chat/completions"):
        await asyncio.sleep(2.0)


def test_performance_gate_fails_a_slower_candidate(stack):
    """The same stack behind a proxy that adds 2 s before each chat: TTFT well over 1.5x live's."""
    with serving(proxy_with_fault(stack.url, slow_chat)) as slow:
        verdict = gates.performance(
            stack.url, slow, stack.api_key, QUESTIONS, max_ttft_ratio=1.5, min_tps_ratio=0.67, requests=4, max_tokens=8
        )
    record(f"performance gate on a candidate slowed by 2 s: {verdict.figures}")
    assert not verdict.passed and "TTFT" in verdict.reason and verdict.figures["ttft_ratio"] > 1.5


def test_candidate_failing_under_traffic_is_rolled_back_mid_step(stack, tmp_path, eval_set):
    code, decisions, err, weights, load = promote_revision_under_load(stack, tmp_path, eval_set, fails_routed_chat)
    report("rollback mid-step", load, decisions)
    assert code == 1, err
    gates = gates_of(decisions)
    assert all(gates[g]["passed"] for g in ("smoke", "quality", "performance"))
    step = gates["step 50%"]
    assert not step["passed"] and step["figures"]["candidate_errors"] > 0 and "error rate" in step["reason"]
    assert weights == {"blue": 100, "green": 0}
    assert load.failed == 0, load.errors[:5]  # the router retried every failed attempt on blue


async def slow_routed_chat(request: Request) -> None:
    """Passes every gate before traffic, then answers routed chats 2 s late (headers included)."""
    if request.url.path.endswith("/chat/completions") and "x-forwarded-for" in request.headers:
        await asyncio.sleep(2.0)


def test_step_gate_rolls_back_a_candidate_slow_under_traffic(stack, tmp_path, eval_set):
    """The step latency gate at its default, on the same stacks and steps as the promotion that
    passes: a candidate whose answers reach users 2 s later fails step 50% on what users feel."""
    code, decisions, err, weights, load = promote_revision_under_load(stack, tmp_path, eval_set, slow_routed_chat)
    report("rollback on the step latency gate", load, decisions)
    assert code == 1, err
    step = gates_of(decisions)["step 50%"]
    # 2 s more before headers: streams' first text and plain answers' end both come that much later
    # (the step waits for answers that have ended: headers alone are no verdict on either)
    failed_on = re.match(r"(time to first text|total time) P99 (\d+)", step["reason"] or "")
    assert not step["passed"] and failed_on and float(failed_on[2]) >= 2000, step
    assert weights == {"blue": 100, "green": 0}
    assert load.failed == 0, load.errors[:5]


def test_modal_backend_moves_weights_in_the_dict(stack, monkeypatch, eval_set):
    """`ragserve promote modal` against the Modal router app run locally, both sharing a stand-in
    Dict; the candidate is a new revision of the live release."""
    import modal

    deploy_env = Path(eval_set).parent / "deploy.env"  # the Modal apps are built from a chosen env file
    deploy_env.write_text("RAGSERVE_MODAL_ALLOW_DEMO=true\n")
    monkeypatch.setenv("RAGSERVE_MODAL_ENV_FILE", str(deploy_env))
    import modal_apps.router as modal_router

    fake_dict: dict = {}
    monkeypatch.setattr(modal_router, "traffic", fake_dict)
    monkeypatch.setattr(modal.Dict, "from_name", classmethod(lambda cls, name, **kw: fake_dict))
    app = modal_router.router.local()
    with serving(app) as url, serving(proxy_with_fault(stack.url, no_fault)) as revision:
        # First use: --live-url creates the routing table (and --rollback alone changes nothing more).
        first = CliRunner().invoke(ragserve, ["promote", "modal", "--router-url", url, "--live-url", stack.url, "--rollback"])
        assert first.exit_code == 0 and json.loads(fake_dict["traffic"])["weights"] == {"blue": 100, "green": 0}, first.output
        args = [
            "promote",
            "modal",
            "--router-url",
            url,
            "--candidate-url",
            revision,
            "--eval",
            eval_set,
            "--api-key",
            stack.api_key,
            *FAST,
        ]
        with SteadyLoad(url, stack.api_key, workers=2) as load:
            result = CliRunner().invoke(ragserve, args)
    decisions = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    report("modal promotion", load, decisions)
    assert result.exit_code == 0, result.output
    assert json.loads(fake_dict["traffic"])["weights"] == {"blue": 0, "green": 100}
    assert load.failed == 0 and load.served_by["green"] > 0


FAKE_KUBECTL = '''#!{python}
"""kubectl for one InferenceService whose status is kept in a JSON file; every call is logged. With
a router in the state, a patch also moves the router's weights, as Knative's ingress would split
requests by canaryTrafficPercent."""
import json, sys, urllib.request
state_path, log_path = {state!r}, {log!r}
args = sys.argv[1:]
open(log_path, "a").write(json.dumps(args) + "\\n")
state = json.load(open(state_path))
verb, kind, name, ns = args[0], args[1], args[2], args[args.index("-n") + 1]
if (kind, name, ns) != ("inferenceservice", state["name"], state["namespace"]):
    sys.exit(f'Error from server (NotFound): inferenceservices.serving.kserve.io "{{name}}" not found')
if verb == "patch":
    p = state["percent"] = json.loads(args[args.index("-p") + 1])["spec"]["predictor"]["canaryTrafficPercent"]
    if state["router"]:
        table = {{"upstreams": {{"blue": state["prev"], "green": state["latest"]}}, "weights": {{"blue": 100 - p, "green": p}}}}
        put = urllib.request.Request(state["router"] + "/-/traffic", json.dumps(table).encode(), method="PUT")
        urllib.request.urlopen(put, timeout=10).read()
    json.dump(state, open(state_path, "w"))
    print("inferenceservice.serving.kserve.io/" + name + " patched")
elif verb == "get":
    p = state["percent"]
    print(json.dumps({{"status": {{"components": {{"predictor": {{"traffic": [
        {{"tag": "prev", "percent": 100 - p, "url": state["prev"], "revisionName": name + "-predictor-00001"}},
        {{"tag": "latest", "percent": p, "url": state["latest"], "revisionName": name + "-predictor-00002", "latestRevision": True}},
    ]}}}}}}}}))
'''


def fake_kubectl(tmp_path: Path, prev: str, latest: str, router: str | None = None) -> tuple[Path, Path, Path]:
    state, log, exe = tmp_path / "isvc.json", tmp_path / "kubectl.log", tmp_path / "kubectl"
    state.write_text(json.dumps({"name": "ragserve", "namespace": "llm", "percent": 0, "prev": prev, "latest": latest, "router": router}))
    exe.write_text(FAKE_KUBECTL.format(python=sys.executable, state=str(state), log=str(log)))
    exe.chmod(0o755)
    return exe, state, log


def patches(log: Path) -> list[int]:
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return [json.loads(c[c.index("-p") + 1])["spec"]["predictor"]["canaryTrafficPercent"] for c in calls if c[0] == "patch"]


async def no_fault(request: Request) -> None:
    return None


PROMETHEUS = ROOT / "build" / "prometheus" / "usr" / "bin" / "prometheus"


@contextmanager
def prometheus(pods: dict[str, str], tmp_path: Path):
    """A real Prometheus running the shipped scrape job (infra/kserve/prometheus/prometheus.yml)
    every second. Debian's build has no Kubernetes discovery, so each "pod" (revision name -> a
    stack's URL) is a static target carrying the labels pod discovery would give it; the job's
    own relabel rules turn them into the series labels the promotion queries."""
    if not PROMETHEUS.is_file():
        pytest.fail(f"no Prometheus at {PROMETHEUS}: `make test` unpacks Debian's package there (make {PROMETHEUS.relative_to(ROOT)})")
    config = yaml.safe_load((ROOT / "infra" / "kserve" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    [job] = config["scrape_configs"]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [
        {
            "targets": ["127.0.0.1:9"],  # the pod's IP and its first container port; the annotation gives the port
            "labels": {
                "__meta_kubernetes_namespace": "llm",
                "__meta_kubernetes_pod_name": f"{revision}-deployment-0",
                "__meta_kubernetes_pod_label_serving_knative_dev_revision": revision,
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(httpx.URL(url).port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            },
        }
        for revision, url in pods.items()
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def scraped() -> bool:
        r = httpx.get(url + "/api/v1/query", params={"query": 'sum(up{serving_knative_dev_revision!="",namespace="llm"})'})
        return r.status_code == 200 and [float(x["value"][1]) for x in r.json()["data"]["result"]] == [len(pods)]

    try:
        wait_for(lambda: answers(url + "/-/ready"), 30, "Prometheus ready")
        wait_for(scraped, 30, "Prometheus scraping every revision through the shipped relabel rules")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_kserve_promotion_reads_each_step_from_prometheus(stack, tmp_path, eval_set):
    """The KServe backend against a stand-in kubectl whose patches move a real router's weights
    (Knative's split), two gateways of the guarded release as the two revisions' pods, and a real
    Prometheus scraping them: each step's figures per revision come from Prometheus, with every
    gate at its default. The same router is the one in front (--router-url) whose shadow slot is
    the latest revision: a shadow stage runs first. Each revision needs metrics of its own, so the
    new one is a second gateway process over the session stack's model service (conftest.another_gateway)."""
    with another_gateway(stack, tmp_path) as latest:
        revisions = {"ragserve-predictor-00001": stack.url, "ragserve-predictor-00002": latest}
        with prometheus(revisions, tmp_path) as prom, router(stack.url, tmp_path, green=latest) as url:
            exe, state, log = fake_kubectl(tmp_path, prev=stack.url, latest=latest, router=url)
            with SteadyLoad(url, stack.api_key) as load:
                code, decisions, err = promote(
                    "kserve", "-n", "llm", "--kubectl", str(exe), "--prometheus-url", prom, "--eval", eval_set,
                    "--api-key", stack.api_key, *FAST, "--router-url", url, "--shadow-seconds", "4",
                )  # fmt: skip
    report("kserve promotion from Prometheus", load, decisions)
    assert code == 0, err
    steps = gates_of(decisions)
    record(f"kserve steps read from Prometheus: {steps['step 50%']['figures']} / {steps['step 100%']['figures']}")
    record(f"kserve shadow stage through the router in front: {steps['shadow']['figures']}")
    assert steps["shadow"]["passed"] and steps["shadow"]["figures"]["pairs"] >= Policy().min_shadow_pairs
    assert "step figures from Prometheus" in decisions[0]["backend"]
    assert patches(log) == [50, 100] and json.loads(state.read_text())["percent"] == 100
    gets = [c for c in map(json.loads, log.read_text().splitlines()) if c[0] == "get"]
    # One read at the start, one to confirm each patch, one for the final table: no polling.
    assert len(gets) <= 2 + len(patches(log)), f"{len(gets)} gets of the InferenceService"
    half, full = steps["step 50%"]["figures"], steps["step 100%"]["figures"]
    assert half["candidate_answered"] >= STEP_ANSWERS and full["candidate_answered"] >= STEP_ANSWERS
    assert half["live_requests"] > 0 and half["candidate_errors"] == 0
    # Each revision's own figures: at 100% live only finishes what was in flight at the switch (and
    # the window's whole seconds reach a little before it), too little to compare with, so the
    # candidate is compared with live as the 50% step measured it.
    assert full["live_requests"] < STEP_ANSWERS <= full["candidate_answered"]
    assert full["live_baseline"] == "step 50%" and full["live_ttft_p99_ms"] == half["live_ttft_p99_ms"]
    # What users feel, per revision, from the gateways' own histograms.
    assert half["candidate_ttft_p99_ms"] > 0 and half["live_ttft_p99_ms"] > 0 and half["candidate_stream_pace"] > 0
    assert load.failed == 0, load.errors[:5]


def test_kserve_backend_rolls_back_a_candidate_without_guardrails(stack, unguarded_stack, tmp_path, eval_set):
    """The rails-off stack as the latest revision fails the quality gate before any patch moves traffic."""
    exe, state, log = fake_kubectl(tmp_path, prev=stack.url, latest=unguarded_stack.url)
    code, decisions, err = promote("kserve", "-n", "llm", "--kubectl", str(exe), "--eval", eval_set, "--api-key", stack.api_key)
    assert code == 1, err
    assert patches(log) == [0] and json.loads(state.read_text())["percent"] == 0
    assert "rolled back: quality failed" in err


class MixedChats:
    """Chat requests through the router, one client after another, as real traffic comes: mostly
    questions about the corpus, one in four a prompt the rails must refuse, half streamed, past
    the answer cache (each is a new answer). Records live's time to first text per stream."""

    def __init__(self, url: str, api_key: str, unsafe: list[str]):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=120)
        self.unsafe, self.failed, self.ttft = unsafe, 0, []
        self._stop = threading.Event()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            prompt = self.unsafe[i // 4 % len(self.unsafe)] if i % 4 == 3 else QUESTIONS[i % len(QUESTIONS)]
            try:
                t0 = time.perf_counter()
                stream = self.client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": prompt}], max_tokens=16, stream=True, extra_body={"cache": False}
                )
                first = None
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                if first is None:
                    raise AssertionError("no text")
                self.ttft.append(first)
            except Exception:
                self.failed += 1
            i += 1

    def __enter__(self) -> MixedChats:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(150)

    def ttft_ms(self, q: float) -> float:
        s = sorted(self.ttft)
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1)


def slow_decoding(target: str, delay_s: float):
    """The same stack, slower only once the text flows: every streamed chunk after the first one
    with text waits ``delay_s``; headers and the first text come as fast as the stack's."""
    client = httpx.AsyncClient(base_url=target, timeout=120)

    async def proxy(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = await client.send(
            client.build_request(request.method, request.url.path, headers=headers, content=await request.body()), stream=True
        )

        async def paced():
            texts = 0
            async for chunk in body_of(upstream):
                if texts:
                    await asyncio.sleep(delay_s)
                texts += len(TEXT_CHUNK.findall(chunk))
                yield chunk

        return StreamingResponse(paced(), upstream.status_code, headers={"content-type": upstream.headers.get("content-type", "")})

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])


def instant_answers() -> Starlette:
    """A chat endpoint that streams a fixed two-word answer at once."""

    async def chat(request: Request) -> Response:
        chunks = [{"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]} for word in ("Paris", " it is")]
        events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_shadow_stage_on_the_real_stacks(stack, unguarded_stack, tmp_path):
    """Live is the guarded stack. A copy of its chats goes to each candidate in turn: the same
    release passes; the rails-off stack fails on refusals before any user reaches it; the same
    stack slowed in decoding only fails on tokens/s. Live's own clients lose nothing."""
    unsafe = [
        json.loads(line)["prompt"] for line in (ROOT / "infra" / "eval" / "promotion.jsonl").read_text().splitlines() if '"unsafe"' in line
    ]
    policy = Policy(shadow_s=8, min_shadow_pairs=12)  # about three of them unsafe
    with router(stack.url, tmp_path) as url:
        with MixedChats(url, stack.api_key, unsafe) as alone:
            time.sleep(16)
        # The router's own cost of mirroring (copy, second stream read to the end, comparison),
        # apart from a candidate's work on the same two cores: a shadow that answers at once.
        with serving(instant_answers()) as instant:
            backend = local_backend(url)
            backend.shift("green", 0, instant)
            backend.shadow("green", 100)
            with MixedChats(url, stack.api_key, unsafe) as mirrored:
                time.sleep(16)
            backend.shadow("green", 0)
        verdicts, loads = {}, {}
        with serving(proxy_with_fault(stack.url, no_fault)) as same, serving(slow_decoding(stack.url, 0.3)) as slowed:
            for name, candidate in (("same release", same), ("rails off", unguarded_stack.url), ("slowed decoding", slowed)):
                backend = local_backend(url)
                backend.shift("green", 0, candidate)
                with MixedChats(url, stack.api_key, unsafe) as loads[name]:
                    verdicts[name] = Promotion(backend, [], policy, stack.api_key, emit=lambda entry: None).shadow_stage("green")
                assert backend.traffic().weights == {"blue": 100, "green": 0} and backend.traffic().shadow is None
    for name, verdict in verdicts.items():
        record(f"shadow stage, {name}: passed {verdict.passed} {verdict.figures} {verdict.reason}")
    record(
        f"live TTFT p50/p95 without a shadow {alone.ttft_ms(0.5)}/{alone.ttft_ms(0.95)} ms ({len(alone.ttft)} streams); "
        f"all copied to an instant shadow {mirrored.ttft_ms(0.5)}/{mirrored.ttft_ms(0.95)} ms ({len(mirrored.ttft)}); "
        "with a shadow stage on: " + ", ".join(f"{n} {x.ttft_ms(0.5)}/{x.ttft_ms(0.95)} ms ({len(x.ttft)})" for n, x in loads.items())
    )
    assert verdicts["same release"].passed, verdicts["same release"]
    # both answers of a pair scored against the candidate's chunks, figures only
    same = verdicts["same release"].figures
    assert same["scored_pairs"] > 0 and 0 <= same["candidate_faithfulness"] <= 1 and same["least_faithful_pairs"], same
    assert not verdicts["rails off"].passed and "refusal agreement" in verdicts["rails off"].reason
    assert not verdicts["slowed decoding"].passed and "tokens/s" in verdicts["slowed decoding"].reason
    assert alone.failed == mirrored.failed == 0 and all(x.failed == 0 for x in loads.values())
