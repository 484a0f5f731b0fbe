"""The blue-green router, its routing table and the promotion's arithmetic, against small real
HTTP upstreams (no engine needed)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from bentos.model.engine import free_port
from bentos.tools.launch import answers, serving, wait_for
from bentos.web.timing import REPLAY_HEADER
from infra.gates import (
    EvalCase,
    GateError,
    SlotCounts,
    read_eval_set,
    router_counts,
    step_verdict,
)
from infra.promote import Policy
from infra.router import UPSTREAM_HEADER, create_router_app
from infra.traffic import DictStore, MemoryStore, Traffic


def upstream(name: str, status: int = 200):
    """A stand-in gateway that says who answered; streams three chunks on /stream."""

    async def chat(request: Request):
        body = await request.json()
        return JSONResponse({"who": name, "echo": body, "forwarded_for": request.headers.get("x-forwarded-for")}, status)

    async def stream(request: Request):
        async def chunks():
            for i in range(3):
                yield f"data: {name}-{i}\n\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/chat", chat, methods=["POST"]),
            Route("/stream", stream),
            Route("/readyz", lambda r: PlainTextResponse("ok", status)),
        ]
    )


@pytest.fixture
def pair():
    with serving(upstream("blue")) as blue, serving(upstream("green")) as green, serving(upstream("broken", 500)) as broken:
        yield {"blue": blue, "green": green, "broken": broken}


def table(pair, green="green", weights=(100, 0)) -> Traffic:
    return Traffic(upstreams={"blue": pair["blue"], "green": pair[green]}, weights={"blue": weights[0], "green": weights[1]})


def who(router_url: str, n: int) -> list[str]:
    return [httpx.post(router_url + "/v1/chat", json={"i": i}).json()["who"] for i in range(n)]


def test_traffic_table_validation():
    with pytest.raises(ValueError, match="adding up to 100"):
        Traffic(upstreams={"blue": "http://a"}, weights={"blue": 90, "green": 20})
    with pytest.raises(ValueError, match="no upstream URL"):
        Traffic(upstreams={"blue": "http://a"}, weights={"blue": 50, "green": 50})
    with pytest.raises(ValueError, match="not an http"):
        Traffic(upstreams={"blue": "ftp://a"}, weights={"blue": 100, "green": 0})
    t = Traffic(upstreams={"blue": "http://a/"}, weights={"blue": 100, "green": 0})
    assert t.upstreams["blue"] == "http://a" and t.live == "blue"
    shifted = t.with_candidate("green", 60, "http://b")
    assert shifted.weights == {"green": 60, "blue": 40} and shifted.live == "green" and shifted.revision == 1


def test_memory_store_survives_a_restart(tmp_path):
    path = tmp_path / "traffic.json"
    first = MemoryStore(Traffic(upstreams={"blue": "http://a", "green": "http://b"}, weights={"blue": 100, "green": 0}), path)
    first.set(first.get().with_candidate("green", 100))
    again = MemoryStore(Traffic(upstreams={"blue": "http://a"}, weights={"blue": 100, "green": 0}), path)
    assert again.get().weights == {"blue": 0, "green": 100}


def test_dict_store_is_what_modal_routers_and_promote_share():
    d: dict = {}  # stands in for modal.Dict: get and item assignment are all it uses
    reader, writer = DictStore(d, refresh_s=0), DictStore(d, refresh_s=60)
    with pytest.raises(LookupError, match="--live-url"):
        reader.get()
    writer.set(Traffic(upstreams={"blue": "http://a", "green": "http://b"}, weights={"blue": 100, "green": 0}))
    writer.set(writer.get().with_candidate("green", 10))
    assert reader.get().weights == {"blue": 90, "green": 10} and reader.get().revision == 1
    assert json.loads(d["traffic"])["weights"]["green"] == 10


class ModalDictLike:
    """modal.Dict's shape: ``get`` blocks (a network call), ``get.aio`` is its async form."""

    def __init__(self, data: dict):
        self.data, self.blocking_reads = data, 0
        outer = self

        class Get:
            def __call__(self, key, default=None):
                outer.blocking_reads += 1
                time.sleep(0.05)
                return outer.data.get(key, default)

            async def aio(self, key, default=None):
                await asyncio.sleep(0)
                return outer.data.get(key, default)

        self.get = Get()

    def __setitem__(self, key, value):
        self.data[key] = value


def test_router_reads_a_modal_dict_without_blocking_its_event_loop(pair):
    d = ModalDictLike({})
    DictStore(d).set(Traffic(upstreams={"blue": pair["blue"], "green": pair["green"]}, weights={"blue": 0, "green": 100}))
    d.blocking_reads = 0
    with serving(create_router_app(DictStore(d, refresh_s=0), admin=False)) as router:  # re-read on every request
        assert set(who(router, 5)) == {"green"}
        assert httpx.get(router + "/-/traffic").json()["weights"] == {"blue": 0, "green": 100}
    assert d.blocking_reads == 0


@pytest.mark.parametrize("timeout_env", [None, "45"])
def test_the_router_command_relays_with_its_option_defaults(pair, tmp_path, timeout_env):
    """`ragserve router` as users start it: the defaults come from settings (typed, not strings)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGSERVE_ROUTER_")}
    if timeout_env:
        env["RAGSERVE_ROUTER_TIMEOUT_S"] = timeout_env
    cmd = [str(Path(sys.executable).parent / "ragserve"), "router", "--blue", pair["blue"], "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--state", str(tmp_path / "t.json")], env=env, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(url + "/livez"), 30, "the router answering")
        assert who(url, 3) == ["blue"] * 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_router_follows_weights_atomically(pair):
    store = MemoryStore(table(pair))
    with serving(create_router_app(store)) as router:
        assert set(who(router, 10)) == {"blue"}
        r = httpx.put(router + "/-/traffic", json={"weights": {"blue": 0, "green": 100}})
        assert r.status_code == 200 and r.json()["revision"] == 1
        assert set(who(router, 10)) == {"green"}
        httpx.put(router + "/-/traffic", json={"weights": {"blue": 50, "green": 50}})
        assert set(who(router, 40)) == {"blue", "green"}
        r = httpx.post(router + "/v1/chat", json={"x": 1})
        assert r.json()["echo"] == {"x": 1} and r.json()["forwarded_for"] == "127.0.0.1"
        assert r.headers[UPSTREAM_HEADER] == r.json()["who"]


def test_router_streams_chunk_by_chunk(pair):
    with serving(create_router_app(MemoryStore(table(pair)))) as router:
        with httpx.stream("GET", router + "/stream") as r:
            chunks = [c for c in r.iter_text() if c.strip()]
    assert "".join(chunks).count("data: blue-") == 3 and len(chunks) >= 2


def test_failing_candidate_is_retried_on_live_and_counted(pair):
    store = MemoryStore(table(pair, green="broken", weights=(50, 50)))
    with serving(create_router_app(store)) as router:
        assert set(who(router, 20)) == {"blue"}  # every request answered, by blue
        counts = router_counts(httpx.get(router + "/metrics").text)
    assert counts["green"].errors > 0 and counts["green"].ok == 0
    assert counts["blue"].ok == 20


def test_failing_live_slot_answers_502_naming_it(pair):
    store = MemoryStore(Traffic(upstreams={"blue": "http://127.0.0.1:9", "green": pair["green"]}, weights={"blue": 100, "green": 0}))
    with serving(create_router_app(store)) as router:
        r = httpx.post(router + "/v1/chat", json={})
        assert r.status_code == 502 and "blue stack" in r.json()["error"]["message"]
        assert httpx.get(router + "/readyz").status_code == 503


def test_admin_api_validates_and_is_guarded(pair):
    with serving(create_router_app(MemoryStore(table(pair)), admin_key="s3cret")) as router:
        assert httpx.put(router + "/-/traffic", json={"weights": {"blue": 0, "green": 100}}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        bad = httpx.put(router + "/-/traffic", json={"weights": {"blue": 70, "green": 70}}, headers=auth)
        assert bad.status_code == 400 and "adding up to 100" in bad.json()["error"]["message"]
        assert httpx.put(router + "/-/traffic", content=b"{nope", headers=auth).status_code == 400
        assert httpx.get(router + "/-/traffic").json()["weights"] == {"blue": 100, "green": 0}
    with serving(create_router_app(MemoryStore(table(pair)), admin=False)) as router:
        r = httpx.put(router + "/-/traffic", json={"weights": {"blue": 0, "green": 100}})
        assert r.status_code == 405 and "ragserve promote modal" in r.json()["error"]["message"]


def test_the_felt_series_are_one_definition_under_each_process_name():
    """The router's and the gateway's series of what clients feel: same kinds and buckets, the
    names dashboards and the gates read, and the router's per slot."""
    from bentos.web.metrics import SERVICE_METRICS
    from infra.router import RouterMetrics

    def families(registry) -> dict:
        return {f.name: (f.type, sorted({(s.name.rsplit("_", 1)[-1], s.labels.get("le")) for s in f.samples})) for f in registry.collect()}

    router_registry = RouterMetrics().registry
    router, gateway = families(router_registry), families(SERVICE_METRICS)
    kinds = {
        "ttft_seconds": "histogram",
        "stream_rate": "histogram",
        "total_seconds": "histogram",
        "stream_chunks": "counter",
        "stream_seconds": "counter",
    }
    for suffix, kind in kinds.items():
        assert router[f"ragserve_router_{suffix}"] == gateway[f"ragserve_chat_{suffix}"], suffix
        assert router[f"ragserve_router_{suffix}"][0] == kind
    ttft = [s for f in router_registry.collect() if f.name == "ragserve_router_ttft_seconds" for s in f.samples]
    assert {s.labels["upstream"] for s in ttft} == {"blue", "green"}


def test_histogram_quantile_and_step_verdict():
    c = SlotCounts(ok=100, errors=0, buckets={0.1: 50, 0.5: 90, 1.0: 100, float("inf"): 100})
    assert c.quantile(0.5) == pytest.approx(0.1)
    assert c.quantile(0.99) == pytest.approx(0.95)
    live = SlotCounts(ok=100, buckets={0.1: 99, 0.5: 100, float("inf"): 100})
    bad = step_verdict(10, SlotCounts(ok=95, errors=5, buckets=c.buckets), live, 0.01, 2.0, 1)
    assert not bad.passed and "error rate 5.0%" in bad.reason
    slow = step_verdict(10, c, live, 0.01, 2.0, 1)
    assert not slow.passed and "time to response headers P99" in slow.reason
    assert step_verdict(10, c, live, 0.01, 10.0, 1).passed
    assert "only 0 requests" in step_verdict(10, SlotCounts(), live, 0.01, 2.0, 1).reason
    # Where the felt figures are measured, answers still streaming are no evidence yet: their
    # headers came, their first text or end has not, and headers alone would misjudge them.
    inf = float("inf")
    streaming = SlotCounts(ok=3, buckets={2.5: 3, inf: 3}, ttft={1.0: 0, inf: 0}, total={1.0: 0, inf: 0})
    ended = SlotCounts(ok=3, buckets={2.5: 3, inf: 3}, ttft={1.0: 0, 3.0: 2, inf: 2}, total={1.0: 0, 3.0: 1, inf: 1})
    assert (streaming.attempts, streaming.answered, ended.answered) == (3, 0, 3)
    assert "only 0 requests reached the candidate and were answered" in step_verdict(10, streaming, live, 0.01, 2.0, 1).reason


def test_step_pace_is_over_all_streams_so_one_burst_does_not_decide():
    """Ten streams of 7 chunks per slot. Live's one burst (its text at once, after a hold) would
    lift a mean of paces to 3x; over chunks and seconds it lifts live's pace by a tenth."""
    inf = float("inf")

    def streams(*seconds: float) -> SlotCounts:
        return SlotCounts(ok=len(seconds), ttft={1.0: len(seconds), inf: len(seconds)}, chunks=7 * len(seconds), stream_s=sum(seconds))

    live = streams(*[0.5] * 9, 0.02)  # 14 chunks/s, and one burst at 350
    assert statistics.mean([14] * 9 + [350]) > 3 * 14 and live.pace < 1.15 * 14
    assert step_verdict(50, streams(*[7 / 12] * 10), live, 0.01, 2.0, 10).passed  # 12 chunks/s
    slower = step_verdict(50, streams(*[7 / 6] * 10), live, 0.01, 2.0, 10)  # 6 chunks/s
    assert not slower.passed and "streams run at 6.0 chunks/s" in slower.reason, slower


def paced_upstream(first_s: float, gap_s: float, n: int = 8, guarded: bool = True, replayed: bool = False):
    """A stand-in gateway whose answers start after ``first_s`` and then come a piece every
    ``gap_s``: streamed (headers at once, as a real stream's) or whole. ``guarded``: a message
    that says "unsafe" is refused as the gateway refuses (finish_reason content_filter).
    ``replayed``: marked as the answer cache marks its replays."""

    async def chat(request: Request):
        body = await request.json()
        if guarded and "unsafe" in json.dumps(body.get("messages", [])):
            refusal = {"message": {"content": "Sorry, I can't help with that."}, "finish_reason": "content_filter"}
            return JSONResponse({"choices": [refusal], "guardrails": {"blocked_by": "harmful_request"}, "citations": []})
        if not body.get("stream"):
            await asyncio.sleep(first_s + n * gap_s)
            return JSONResponse({"choices": [{"message": {"content": "x" * n}, "finish_reason": "length"}]})

        async def events():
            yield b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n'
            await asyncio.sleep(first_s)
            for i in range(n):
                yield f'data: {{"choices": [{{"delta": {{"content": "t{i}"}}}}]}}\n\n'.encode()
                await asyncio.sleep(gap_s)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={REPLAY_HEADER: "hit"} if replayed else None)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def step_through_router(live: str, candidate: str, stream: bool, n: int = 8):
    """``n`` requests to each slot through the router; the step verdict on what it measured."""
    store = MemoryStore(Traffic(upstreams={"blue": live, "green": candidate}, weights={"blue": 100, "green": 0}))
    with serving(create_router_app(store)) as router:
        for weights in ({"blue": 100, "green": 0}, {"blue": 0, "green": 100}):
            httpx.put(router + "/-/traffic", json={"weights": weights})
            with ThreadPoolExecutor(n) as pool:  # at once: the stand-ins sleep, they do not compute
                codes = list(pool.map(lambda _: httpx.post(router + "/v1/chat/completions", json={"stream": stream}, timeout=10), range(n)))
            assert [r.status_code for r in codes] == [200] * n
        counts = router_counts(httpx.get(router + "/metrics").text)
    return counts, step_verdict(100, counts["green"], counts["blue"], 0.01, 2.0, 1, 0.67)


def test_step_gates_judge_streams_by_first_text_and_pace_not_by_headers():
    with (
        serving(paced_upstream(0.3, 0.02)) as live,
        serving(paced_upstream(0.3, 0.02)) as same,
        serving(paced_upstream(0.3, 0.1)) as slow_decoding,
        serving(paced_upstream(1.2, 0.02)) as slow_start,
    ):
        counts, verdict = step_through_router(live, same, stream=True)
        assert verdict.passed, verdict
        assert 0.25 < counts["green"].quantile(0.5, "ttft") < 0.6  # the first text, not the headers
        counts, verdict = step_through_router(live, slow_decoding, stream=True)
        assert not verdict.passed and "chunks/s" in verdict.reason, verdict
        # what the step gate saw before: a stream's headers, which come before any text is decoded
        # (medians: on two loaded cores one of eight connections can take 0.3 s to open)
        assert counts["green"].quantile(0.5) < counts["green"].quantile(0.5, "ttft")
        _, verdict = step_through_router(live, slow_start, stream=True)
        assert not verdict.passed and "time to first text" in verdict.reason, verdict
        _, verdict = step_through_router(live, slow_decoding, stream=False)
        assert not verdict.passed and "total time" in verdict.reason, verdict
        _, verdict = step_through_router(live, same, stream=False)
        assert verdict.passed, verdict


def test_a_live_slot_answering_from_its_cache_sets_no_pace_for_the_candidate():
    """Replays come out without waiting: taken as paces they would fail any candidate whose cache
    is still cold. Marked as replays, they are timed but have no pace."""
    with (
        serving(paced_upstream(0.3, 0.0)) as unmarked,
        serving(paced_upstream(0.3, 0.0, replayed=True)) as replaying,
        serving(paced_upstream(0.3, 0.02)) as generating,
    ):
        counts, verdict = step_through_router(unmarked, generating, stream=True)
        assert not verdict.passed and "chunks/s" in verdict.reason, verdict  # what the mark prevents
        counts, verdict = step_through_router(replaying, generating, stream=True)
        assert verdict.passed and "live_stream_pace" not in verdict.figures, verdict
        assert counts["blue"].ttft[float("inf")] == 8 and counts["blue"].pace is None


def test_policy_and_eval_set_refuse_bad_input(tmp_path):
    with pytest.raises(ValueError, match="end at 100"):
        Policy(steps=[10, 50])
    with pytest.raises(ValueError, match="end at 100"):
        Policy(steps=[50, 10, 100])
    path = tmp_path / "eval.jsonl"
    path.write_text('{"prompt": "hi", "label": "maybe"}\n')
    with pytest.raises(GateError, match="eval.jsonl:1"):
        read_eval_set(path)
    path.write_text('{"prompt": "hi", "label": "safe"}\n')
    with pytest.raises(GateError, match="needs safe, unsafe and retrieval"):
        read_eval_set(path)
    with pytest.raises(ValueError):
        EvalCase(prompt="x", label="safe", query="q", source="s")


def test_kserve_dry_run_prints_the_commands_and_runs_none(tmp_path):
    from click.testing import CliRunner

    from bentos.tools.cli import main

    result = CliRunner().invoke(
        main, ["promote", "kserve", "--name", "chat", "-n", "llm", "--kubectl", str(tmp_path / "absent"), "--dry-run", "--steps", "25,100"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'absent'} get inferenceservice chat -o json -n llm")
    assert """patch inferenceservice chat --type merge -p '{"spec":{"predictor":{"canaryTrafficPercent":25}}}' -n llm""" in lines[1]
    assert 'canaryTrafficPercent":100' in lines[2] and 'canaryTrafficPercent":0' in lines[3] and "back to the previous revision" in lines[3]


def test_promote_cli_refuses_bad_policy_with_a_usage_error():
    from click.testing import CliRunner

    from bentos.tools.cli import main

    result = CliRunner().invoke(main, ["promote", "local", "--router", "http://127.0.0.1:9", "--steps", "10,50"])
    assert result.exit_code == 2 and "end at 100" in result.output
    result = CliRunner().invoke(main, ["promote", "local", "--router", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "ragserve router" in result.output  # unreachable router: says how to start it


def test_prometheus_reader_names_the_fix_when_it_cannot_read():
    """An unreachable server, and one that refuses the query: both errors name what to check."""
    from infra.prometheus import Prometheus, PrometheusError

    with pytest.raises(PrometheusError, match="check --prometheus-url"):
        Prometheus("http://127.0.0.1:9", "llm").counts_since("ragserve-predictor-00001", time.time() - 5)

    async def bad_query(request: Request):
        return JSONResponse({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}, 400)

    with serving(Starlette(routes=[Route("/api/v1/query", bad_query)])) as url:
        with pytest.raises(PrometheusError, match="parse error at char 3"):
            Prometheus(url, "llm").counts_since("ragserve-predictor-00001", time.time() - 5)


def test_kserve_shadow_without_a_router_in_front_says_how_to_add_one():
    from infra.backends import BackendError, KServeBackend

    with pytest.raises(BackendError, match="infra/kserve/router"):
        KServeBackend("ragserve", "llm", run=lambda cmd: "{}").shadow("green", 100)


def test_a_step_where_live_serves_too_little_is_compared_with_lives_earlier_window():
    """At 100% live finishes only what was in flight: the candidate's time to first text is judged
    against live's from the step before, and fails when clearly worse (no pass for lack of a baseline)."""
    from infra.promote import Promotion

    def counts(n: float, ttft_s: float) -> SlotCounts:
        return SlotCounts(ok=n, ttft={ttft_s: n, float("inf"): n})

    windows = iter([{"blue": counts(12, 0.5), "green": counts(12, 0.5)}, {"blue": counts(1, 0.5), "green": counts(12, 2.0)}])

    class Steps:  # each step's window as a backend would measure it
        def window(self):
            served = next(windows)
            return lambda: served

    async def ready(request: Request):
        return PlainTextResponse("ok")

    with serving(Starlette(routes=[Route("/readyz", ready)])) as url:
        promotion = Promotion(Steps(), [], Policy(step_s=0.1), None, emit=lambda entry: None)
        half = promotion.watch(url, "green", "blue", 50)
        full = promotion.watch(url, "green", "blue", 100)
    assert half.passed and "live_baseline" not in half.figures
    assert not full.passed and full.figures["live_baseline"] == "step 50%" and full.figures["live_requests"] == 1
    assert "time to first text P99" in full.reason
