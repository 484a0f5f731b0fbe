"""A weighted blue-green router: the stable entry point in front of two gateway stacks.

Each request goes to blue or green by the weights of the routing table (see ``traffic.py``); a
change of weights is one reference swap, so it is atomic and instant, and requests already in
flight finish where they started. A candidate that refuses a connection or answers 5xx before any
byte reaches the client is retried once on the live slot, so a bad candidate costs users nothing
while the failure still shows in the metrics the promotion watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator

import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bentos.web.logs import AccessLog
from bentos.web.relay import HOP_HEADERS, body_of, http_client
from bentos.web.timing import FELT_BUCKETS, RATE_BUCKETS, Timing

from .shadow import Mirror, captured
from .traffic import SLOTS, Slot, Traffic

log = logging.getLogger("infra.router")

# Bodies pass through raw, still encoded: content-encoding travels with them.
NOT_FORWARDED = (HOP_HEADERS - {"content-encoding"}) | {"host", "upgrade"}
UPSTREAM_HEADER = "x-ragserve-upstream"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI-shaped, like the gateways behind the router."""
    return JSONResponse({"error": {"message": message, "type": "router_error", "code": code}}, status, headers=headers)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "ragserve_router_attempts",
            "Requests sent to each slot, by outcome (error: no answer or 5xx).",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragserve_router_response_seconds",
            "Time to the response headers of each slot's successful attempts.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "ragserve_router_ttft_seconds",
            "Streamed answers: time to the first chunk with text, per slot (the headers come long before it).",
            ["upstream"],
            buckets=FELT_BUCKETS,
            registry=self.registry,
        )
        self.stream_rate = Histogram(
            "ragserve_router_stream_rate",
            "Streamed answers: chunks with text per second after the first (about tokens/s), per slot.",
            ["upstream"],
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.stream_chunks = Counter(
            "ragserve_router_stream_chunks",
            "Streamed answers: chunks with text after the first, summed over streams (not cache replays), per slot.",
            ["upstream"],
            registry=self.registry,
        )
        self.stream_seconds = Counter(
            "ragserve_router_stream_seconds",
            "Streamed answers: seconds from the first chunk with text to the end, summed over the same streams, per slot.",
            ["upstream"],
            registry=self.registry,
        )
        self.total = Histogram(
            "ragserve_router_total_seconds",
            "Answers not streamed: time to the end of the body, per slot.",
            ["upstream"],
            buckets=FELT_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter("ragserve_router_responses", "Responses to clients, by status code.", ["code"], registry=self.registry)
        self.weight = Gauge("ragserve_router_weight_percent", "Percent of requests each slot gets.", ["upstream"], registry=self.registry)
        for slot in SLOTS:  # every series exists from the start, so deltas never miss a first sample
            for outcome in ("ok", "error"):
                self.attempts.labels(slot, outcome)
            self.latency.labels(slot)
            self.ttft.labels(slot)
            self.stream_rate.labels(slot)
            self.stream_chunks.labels(slot)
            self.stream_seconds.labels(slot)
            self.total.labels(slot)

    async def observed(self, body: AsyncIterator[bytes], slot: str, timing: Timing) -> AsyncIterator[bytes]:
        """``body`` passed on as it is, timed where the user feels it: a stream's first text and
        its pace after that, or the end of a body that is not streamed."""
        async for chunk in body:
            timing.feed(chunk)
            yield chunk
        timing.done()
        series = (self.ttft, self.stream_rate, self.total, self.stream_chunks, self.stream_seconds)
        timing.record(*(metric.labels(slot) for metric in series))


def create_router_app(
    store,
    admin_key: str | None = None,
    timeout_s: float = 300,
    max_body_bytes: int = 8 << 20,
    admin: bool = True,
    shadow_concurrency: int = 4,
    shadow_queue: int = 16,
    shadow_keep_text: bool = False,
) -> Starlette:
    """``store`` holds the routing table (``MemoryStore`` locally, ``DictStore`` on Modal). With
    ``admin`` off (Modal) the table is read-only here: `ragserve promote modal` writes the Dict.
    With a shadow slot in the table, that share of live chat requests is copied to it
    (``shadow.py``), at most ``shadow_concurrency`` at once and ``shadow_queue`` waiting."""
    metrics = RouterMetrics()
    client = http_client("", timeout_s)
    expected_admin = f"Bearer {admin_key}".encode() if admin_key else None
    mirror = Mirror(client, metrics.registry, shadow_concurrency, shadow_queue, shadow_keep_text)

    def copy_for_shadow(t: Traffic, slot: Slot, request: Request, body: bytes) -> asyncio.Future | None:
        """A copy of a live chat request for the shadow slot, for that share of them."""
        shadow = t.shadow
        if not shadow or not shadow.percent or slot != t.live or request.method != "POST":
            return None
        if not request.url.path.endswith("/chat/completions") or random.uniform(0, 100) >= shadow.percent:
            return None
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in NOT_FORWARDED | {"accept-encoding"}]
        target = t.upstreams[shadow.slot] + request.url.path
        return mirror.offer(client.build_request("POST", target, headers=headers, content=body), t.revision)

    async def table() -> Traffic:
        return await store.read()

    async def attempt(slot: Slot, url: str, request: Request, body: bytes) -> httpx.Response | None:
        """The upstream's response (headers read, body not yet), or None when it failed."""
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in NOT_FORWARDED]
        client_host = request.client.host if request.client else "unknown"
        headers.append((b"x-forwarded-for", client_host.encode()))
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        started = time.perf_counter()
        try:
            upstream = await client.send(client.build_request(request.method, target, headers=headers, content=body), stream=True)
        except httpx.HTTPError as e:
            metrics.attempts.labels(slot, "error").inc()
            log.warning("upstream failed", extra={"fields": {"upstream": slot, "error": type(e).__name__}})
            return None
        if upstream.status_code >= 500:
            metrics.attempts.labels(slot, "error").inc()
            log.warning("upstream failed", extra={"fields": {"upstream": slot, "status": upstream.status_code}})
            return upstream
        metrics.attempts.labels(slot, "ok").inc()
        metrics.latency.labels(slot).observe(time.perf_counter() - started)
        return upstream

    async def proxy(request: Request) -> Response:
        body = await request.body()
        if len(body) > max_body_bytes:
            return error(
                413,
                f"request body is {len(body)} bytes; the router's limit is {max_body_bytes} (RAGSERVE_ROUTER_MAX_BODY_BYTES)",
                "body_too_large",
            )
        try:
            t = await table()
        except LookupError as e:
            return error(503, str(e), "no_routing_table", {"Retry-After": "5"})
        slot: Slot = random.choices(SLOTS, weights=[t.weights[s] for s in SLOTS])[0]
        mirrored = copy_for_shadow(t, slot, request, body)  # sent beside the live request, on a task of its own
        started = time.perf_counter()
        upstream = await attempt(slot, t.upstreams[slot], request, body)
        if (upstream is None or upstream.status_code >= 500) and slot != t.live:
            # Nothing has reached the client yet: the live slot answers instead.
            if upstream is not None:
                await upstream.aclose()
            slot, started = t.live, time.perf_counter()
            upstream = await attempt(slot, t.upstreams[slot], request, body)
        if upstream is None:
            if mirrored is not None:
                mirrored.cancel()
            metrics.responses.labels("502").inc()
            return error(
                502,
                f"the {slot} stack at {t.upstreams[slot]} did not answer; check that it is running",
                "upstream_unreachable",
                {"Retry-After": "5"},
            )
        metrics.responses.labels(str(upstream.status_code)).inc()
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in NOT_FORWARDED}
        headers[UPSTREAM_HEADER] = slot

        content = body_of(upstream)
        if upstream.status_code < 400:
            timing = Timing(started)
            timing.read_headers(upstream.headers)
            content = metrics.observed(content, slot, timing)
            if mirrored is not None:
                content = captured(content, timing, upstream.status_code, mirrored)
        elif mirrored is not None:
            mirrored.cancel()
        return StreamingResponse(content, status_code=upstream.status_code, headers=headers)

    def is_admin(request: Request) -> bool:
        if expected_admin is None:
            return True  # the router only binds loopback without an admin key
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected_admin)

    async def get_traffic(request: Request) -> Response:
        try:
            return JSONResponse((await table()).model_dump())
        except LookupError as e:
            return error(404, str(e), "no_routing_table")

    async def put_traffic(request: Request) -> Response:
        if not admin:
            return error(405, "the routing table lives in a modal.Dict: change it with `ragserve promote modal`", "read_only_traffic")
        if not is_admin(request):
            return error(401, "changing the routing table needs 'Authorization: Bearer <RAGSERVE_ROUTER_ADMIN_KEY>'", "invalid_admin_key")
        try:
            change = await request.json()
            if not isinstance(change, dict):
                raise ValueError("send a JSON object")
            current = (await table()).model_dump()
            new = Traffic.model_validate({**current, **change, "upstreams": {**current["upstreams"], **change.get("upstreams", {})}})
        except LookupError:
            try:
                new = Traffic.model_validate(change)
            except ValueError as e:
                return error(400, f"invalid routing table: {e}", "invalid_traffic")
        except ValueError as e:  # JSON and validation errors alike
            return error(400, f'invalid routing table: {e}; send {{"weights": {{"blue": 90, "green": 10}}}}', "invalid_traffic")
        saved = store.set(new)
        log.info("traffic changed", extra={"fields": {"weights": saved.weights, "revision": saved.revision}})
        return JSONResponse(saved.model_dump())

    async def get_shadow(request: Request) -> Response:
        """The compared pairs numbered above ``?since=N`` (figures; texts only with --shadow-keep-text)."""
        if not is_admin(request):
            return error(401, "reading shadow pairs needs 'Authorization: Bearer <RAGSERVE_ROUTER_ADMIN_KEY>'", "invalid_admin_key")
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return error(400, "since must be a whole number: the last pair number you have read", "invalid_since")
        try:
            shadow = (await table()).shadow
        except LookupError:
            shadow = None
        return JSONResponse({"shadow": shadow.model_dump() if shadow else None, "last": mirror.count, "pairs": mirror.since(since)})

    async def metrics_route(request: Request) -> Response:
        try:
            for slot, w in (await table()).weights.items():
                metrics.weight.labels(slot).set(w)
        except LookupError:
            pass
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def livez(request: Request) -> Response:
        return Response("ok")

    async def readyz(request: Request) -> Response:
        """Ready when the live slot is: the router alone serves nothing."""
        try:
            t = await table()
            r = await client.get(t.upstreams[t.live] + "/readyz", timeout=5)
            ok = r.status_code == 200
        except (LookupError, httpx.HTTPError):
            ok = False
        return Response("ok" if ok else "live upstream not ready", status_code=200 if ok else 503)

    routes = [
        Route("/-/traffic", get_traffic, methods=["GET"]),
        Route("/-/traffic", put_traffic, methods=["PUT"]),
        Route("/-/shadow", get_shadow, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for task in list(mirror.tasks):  # copies still running: nobody waits for them
            task.cancel()
        await asyncio.gather(*mirror.tasks, return_exceptions=True)
        await client.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(AccessLog, logger_name="infra.router.access")
    return app
