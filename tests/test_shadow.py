"""Shadow traffic: the router copies live chat requests to a slot no user sees and compares the
answers; the promotion's shadow stage judges the pairs. Against small real HTTP stand-ins."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import httpx

from bentos.tools.launch import serving
from bentos.web.metrics import samples
from infra.backends import local_backend
from infra.promote import Policy, Promotion
from infra.router import UPSTREAM_HEADER, create_router_app
from infra.traffic import MemoryStore, Traffic
from test_router import paced_upstream


def test_shadow_copies_live_chats_compares_each_pair_and_keeps_no_text():
    with serving(paced_upstream(0.05, 0.01)) as live, serving(paced_upstream(0.3, 0.05)) as shadow:
        store = MemoryStore(Traffic(upstreams={"blue": live, "green": shadow}, weights={"blue": 100, "green": 0}))
        with serving(create_router_app(store)) as router:
            r = httpx.put(router + "/-/traffic", json={"shadow": {"slot": "green", "percent": 100}})
            assert r.status_code == 200 and r.json()["shadow"] == {"slot": "green", "percent": 100}
            for i in range(6):
                r = httpx.post(router + "/v1/chat/completions", json={"stream": bool(i % 2)}, timeout=10)
                assert r.status_code == 200 and r.headers[UPSTREAM_HEADER] == "blue"  # users only ever see live
            deadline = time.monotonic() + 10
            while len(httpx.get(router + "/-/shadow").json()["pairs"]) < 6 and time.monotonic() < deadline:
                time.sleep(0.1)
            pairs = httpx.get(router + "/-/shadow").json()["pairs"]
            assert len(pairs) == 6 and [p["n"] for p in pairs] == list(range(1, 7))
            streamed = [p for p in pairs if p["live_ttft_ms"] is not None]
            assert len(streamed) == 3 and all(p["shadow_ttft_ms"] > p["live_ttft_ms"] for p in streamed)
            assert all(p["shadow_rate"] < p["live_rate"] for p in streamed)
            assert all(p["answer_similarity"] == 1.0 and p["live_status"] == p["shadow_status"] == 200 for p in pairs)
            assert not any("text" in key for p in pairs for key in p)  # figures only
            assert httpx.get(router + "/-/shadow?since=4").json()["pairs"][0]["n"] == 5
            assert httpx.get(router + "/-/shadow?since=x").status_code == 400
            r = httpx.put(router + "/-/traffic", json={"weights": {"blue": 90, "green": 10}})
            assert r.status_code == 400 and "weight 0" in r.text  # a shadow serves no user
            httpx.put(router + "/-/traffic", json={"shadow": None})
            httpx.post(router + "/v1/chat/completions", json={}, timeout=10)
            time.sleep(0.5)
            assert httpx.get(router + "/-/shadow").json()["last"] == 6


def test_shadow_copies_are_dropped_not_queued_without_bound_and_never_slow_live():
    with serving(paced_upstream(0.05, 0.01)) as live, serving(paced_upstream(2.0, 0.01)) as stuck:
        store = MemoryStore(
            Traffic(upstreams={"blue": live, "green": stuck}, weights={"blue": 100, "green": 0}, shadow={"slot": "green", "percent": 100})
        )
        with serving(create_router_app(store, shadow_concurrency=1, shadow_queue=1)) as router:
            timings = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert httpx.post(router + "/v1/chat/completions", json={}, timeout=10).status_code == 200
                timings.append(time.perf_counter() - t0)
            assert max(timings) < 1.0  # the live answer takes ~0.13 s; the shadow's 2 s are not waited for
            text = httpx.get(router + "/metrics").text
            dropped = [
                s.value for s in samples(text) if s.name == "ragserve_router_shadow_requests_total" and s.labels["outcome"] == "dropped"
            ]
            assert dropped == [3.0]  # one running, one waiting, the rest dropped


@contextmanager
def steady_chats(url: str, every_s: float = 0.05):
    """Chat requests one after another, a few of them unsafe, half streamed, until the block ends."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            text = "an unsafe request" if i % 5 == 4 else f"question {i % 4}"
            httpx.post(
                url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], "stream": i % 2 == 0}, timeout=10
            )
            i += 1
            time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def shadow_stage(live: str, candidate: str):
    store = MemoryStore(Traffic(upstreams={"blue": live, "green": candidate}, weights={"blue": 100, "green": 0}))
    with serving(create_router_app(store)) as router, steady_chats(router):
        policy = Policy(shadow_s=2, min_shadow_pairs=8)
        verdict = Promotion(local_backend(router), [], policy, None, emit=lambda entry: None).shadow_stage("green")
        after = httpx.get(router + "/-/traffic").json()
    assert after["shadow"] is None and after["weights"] == {"blue": 100, "green": 0}  # off again, no user moved
    return verdict


def test_shadow_stage_passes_an_identical_candidate_and_fails_a_rails_off_or_slower_one():
    with (
        serving(paced_upstream(0.1, 0.01)) as live,
        serving(paced_upstream(0.1, 0.01)) as same,
        serving(paced_upstream(0.1, 0.01, guarded=False)) as rails_off,
        serving(paced_upstream(0.1, 0.06)) as slow_decoding,
    ):
        verdict = shadow_stage(live, same)
        assert verdict.passed, verdict
        assert verdict.figures["refusal_agreement"] == 1.0 and verdict.figures["answer_similarity_p50"] == 1.0
        verdict = shadow_stage(live, rails_off)
        assert not verdict.passed and "refusal agreement" in verdict.reason and verdict.figures["refused_by_live_only"] > 0, verdict
        verdict = shadow_stage(live, slow_decoding)
        assert not verdict.passed and "tokens/s" in verdict.reason, verdict
