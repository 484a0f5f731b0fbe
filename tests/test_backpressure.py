"""The bounded queue every service puts in front of its API: refusals are immediate, carry
Retry-After and never leak a slot (unit level, on a real HTTP server; the served stack's own
limits are exercised in test_hostile_input.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from bentos.settings import Settings
from bentos.tools.launch import serving
from bentos.web.app import openai_app
from bentos.web.middleware import ResponseTimeout


def slow_app(limit: int, queue: int, wait_s: float):
    settings = Settings(max_concurrent_requests=limit, max_queued_requests=queue, queue_timeout_s=wait_s)
    app = openai_app(settings.web, "t", "t", "tests.access")
    app.state.release = asyncio.Event()

    @app.post("/work")
    async def work(request: Request) -> dict:
        await request.app.state.release.wait()
        return {"ok": True}

    return app


async def burst(url: str, n: int) -> list[tuple[int, float, dict]]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> tuple[int, float, dict]:
            t0 = time.perf_counter()
            r = await client.post(url + "/work")
            return r.status_code, time.perf_counter() - t0, dict(r.headers) | {"body": r.json()}

        return await asyncio.gather(*(one() for _ in range(n)))


def test_beyond_slots_and_queue_requests_get_429_at_once_and_the_rest_complete():
    app = slow_app(limit=2, queue=2, wait_s=10)
    with serving(app) as url:

        async def scenario():
            task = asyncio.create_task(burst(url, 7))
            await asyncio.sleep(1.0)  # 2 working, 2 queued, 3 refused by now
            app.state.release.set()
            return await task

        results = asyncio.run(scenario())
    refused = [r for r in results if r[0] == 429]
    assert len(refused) == 3 and sum(r[0] == 200 for r in results) == 4
    for _, seconds, headers in refused:
        assert seconds < 0.9 and headers["retry-after"] == "1"  # refused before the release, not after
        assert headers["body"]["error"]["code"] == "overloaded" and "Retry-After" in headers["body"]["error"]["message"]


def test_a_request_that_waits_too_long_gets_503_and_no_slot_leaks():
    app = slow_app(limit=1, queue=4, wait_s=0.5)
    with serving(app) as url:

        async def scenario():
            held = asyncio.create_task(burst(url, 1))
            await asyncio.sleep(0.2)
            timed_out = await burst(url, 2)  # both queue behind the held slot, then give up
            # A client that goes away while queued must not take a slot with it either.
            async with httpx.AsyncClient(timeout=0.2) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(url + "/work")
            app.state.release.set()
            await held
            return timed_out, await burst(url, 3)

        timed_out, after = asyncio.run(scenario())
    assert [r[0] for r in timed_out] == [503, 503]
    assert timed_out[0][2]["retry-after"] == "5" and "RAGSERVE_QUEUE_TIMEOUT_S" in timed_out[0][2]["body"]["error"]["message"]
    assert [r[0] for r in after] == [200, 200, 200]  # the one slot is free again: nothing leaked


@pytest.mark.parametrize("field,value", [("max_concurrent_requests", 0), ("max_queued_requests", -1), ("queue_timeout_s", 0)])
def test_limits_are_validated(field, value):
    with pytest.raises(ValueError):
        Settings(**{field: value})


def test_a_response_that_does_not_start_in_time_gets_504_and_a_started_stream_runs_on():
    app = FastAPI()

    @app.post("/stuck")
    async def stuck() -> dict:
        await asyncio.sleep(30)
        return {"ok": True}

    @app.post("/stream")
    async def stream():
        async def slow():
            for i in range(3):
                yield f"{i}\n"
                await asyncio.sleep(0.25)  # 0.75 s in all, beyond the deadline: it only bounds the start

        return StreamingResponse(slow())

    @app.post("/quick")
    async def quick() -> dict:
        return {"ok": True}

    with serving(ResponseTimeout(app, timeout=0.3)) as url:
        t0 = time.perf_counter()
        r = httpx.post(url + "/stuck", timeout=10)
        waited = time.perf_counter() - t0
        assert (
            r.status_code == 504 and r.json()["error"]["code"] == "timeout" and "RAGSERVE_REQUEST_TIMEOUT_S" in r.json()["error"]["message"]
        )
        assert waited < 3  # answered at the deadline, not after the handler's 30 s
        assert httpx.post(url + "/stream", timeout=10).text == "0\n1\n2\n"
        assert httpx.post(url + "/quick", timeout=10).json() == {"ok": True}


def test_bentoml_runs_our_timeout_and_no_timer_outlives_its_request():
    """BentoML's traffic timeout kept each request's context alive for the whole timeout (its
    timer is never cancelled); the services swap in ours, which cancels it when the request ends."""
    from bentoml._internal.server.http import traffic

    from bentos.web.service import use_response_timeout

    use_response_timeout()
    assert traffic.TimeoutMiddleware is ResponseTimeout
    app = FastAPI()

    @app.post("/quick")
    async def quick() -> dict:
        return {"ok": True}

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        transport = httpx.ASGITransport(app=traffic.TimeoutMiddleware(app, timeout=300))  # as BentoML builds it
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(20):
                assert (await client.post("/quick")).status_code == 200
        return sum(1 for h in loop._scheduled if not h.cancelled() and h.when() > loop.time() + 200)

    assert asyncio.run(scenario()) == 0
