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
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bentos.web.logs import AccessLog
from bentos.web.relay import HOP_HEADERS, body_of, http_client
from bentos.web.timing import FeltMetrics, Timing

from .shadow import Mirror, asking_for_chunk_text, captured
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
        # What clients feel, per slot: the gateway's own series (bentos/web/timing.py) under this prefix.
        self.felt = FeltMetrics("ragserve_router", "answers", self.registry, ["upstream"], ", per slot")
        self.responses = Counter("ragserve_router_responses", "Responses to clients, by status code.", ["code"], registry=self.registry)
        self.weight = Gauge("ragserve_router_weight_percent", "Percent of requests each slot gets.", ["upstream"], registry=self.registry)
        for slot in SLOTS:  # every series exists from the start, so deltas never miss a first sample
            for outcome in ("ok", "error"):
                self.attempts.labels(slot, outcome)
            self.latency.labels(slot)
            self.felt.series(slot)

    async def observed(self, body: AsyncIterator[bytes], slot: str, timing: Timing) -> AsyncIterator[bytes]:
        """``body`` passed on as it is, timed where the user feels it: a stream's first text and
        its pace after that, or the end of a body that is not streamed."""
        async for chunk in body:
            timing.feed(chunk)
            yield chunk
        timing.done()
        self.felt.record(timing, slot)


class Router:
    """The router's state, with one method per route.

    ``store`` holds the routing table (``MemoryStore`` locally, ``DictStore`` on Modal). With
    ``admin`` off (Modal) the table is read-only here: `ragserve promote modal` writes the Dict.
    With a shadow slot in the table, that share of live chat requests is copied to it
    (``shadow.py``), at most ``shadow_concurrency`` at once and ``shadow_queue`` waiting."""

    def __init__(
        self,
        store,
        admin_key: str | None = None,
        timeout_s: float = 300,
        max_body_bytes: int = 8 << 20,
        admin: bool = True,
        shadow_concurrency: int = 4,
        shadow_queue: int = 16,
        shadow_keep_text: bool = False,
    ) -> None:
        self.store, self.max_body_bytes, self.admin = store, max_body_bytes, admin
        self.metrics = RouterMetrics()
        self.client = http_client("", timeout_s)
        self.expected_admin = f"Bearer {admin_key}".encode() if admin_key else None
        self.mirror = Mirror(self.client, self.metrics.registry, shadow_concurrency, shadow_queue, shadow_keep_text)

    def app(self) -> Starlette:
        routes = [
            Route("/-/traffic", self.get_traffic, methods=["GET"]),
            Route("/-/traffic", self.put_traffic, methods=["PUT"]),
            Route("/-/shadow", self.get_shadow, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/livez", self.livez, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/{path:path}", self.proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
        ]
        app = Starlette(routes=routes, lifespan=self.lifespan)
        app.add_middleware(AccessLog, logger_name="infra.router.access")
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self, _app) -> AsyncIterator[None]:
        yield
        for task in list(self.mirror.tasks):  # copies still running: nobody waits for them
            task.cancel()
        await asyncio.gather(*self.mirror.tasks, return_exceptions=True)
        await self.client.aclose()

    # --- the proxy ------------------------------------------------------------------------------

    async def table(self) -> Traffic:
        return await self.store.read()

    def copy_for_shadow(self, t: Traffic, slot: Slot, request: Request, body: bytes) -> asyncio.Future | None:
        """A copy of a live chat request for the shadow slot, for that share of them."""
        shadow = t.shadow
        if not shadow or not shadow.percent or slot != t.live or request.method != "POST":
            return None
        if not request.url.path.endswith("/chat/completions") or random.uniform(0, 100) >= shadow.percent:
            return None
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in NOT_FORWARDED | {"accept-encoding"}]
        target = t.upstreams[shadow.slot] + request.url.path
        if not request.headers.get("content-encoding"):
            body = asking_for_chunk_text(body)
        return self.mirror.offer(self.client.build_request("POST", target, headers=headers, content=body), t.revision)

    async def attempt(self, slot: Slot, url: str, request: Request, body: bytes) -> httpx.Response | None:
        """The upstream's response (headers read, body not yet), or None when it failed."""
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in NOT_FORWARDED]
        client_host = request.client.host if request.client else "unknown"
        headers.append((b"x-forwarded-for", client_host.encode()))
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        started, attempts = time.perf_counter(), self.metrics.attempts
        try:
            upstream = await self.client.send(self.client.build_request(request.method, target, headers=headers, content=body), stream=True)
        except httpx.HTTPError as e:
            attempts.labels(slot, "error").inc()
            log.warning("upstream failed", extra={"fields": {"upstream": slot, "error": type(e).__name__}})
            return None
        if upstream.status_code >= 500:
            attempts.labels(slot, "error").inc()
            log.warning("upstream failed", extra={"fields": {"upstream": slot, "status": upstream.status_code}})
            return upstream
        attempts.labels(slot, "ok").inc()
        self.metrics.latency.labels(slot).observe(time.perf_counter() - started)
        return upstream

    async def proxy(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > self.max_body_bytes:
            return error(
                413,
                f"request body is {len(body)} bytes; the router's limit is {self.max_body_bytes} (RAGSERVE_ROUTER_MAX_BODY_BYTES)",
                "body_too_large",
            )
        try:
            t = await self.table()
        except LookupError as e:
            return error(503, str(e), "no_routing_table", {"Retry-After": "5"})
        slot: Slot = random.choices(SLOTS, weights=[t.weights[s] for s in SLOTS])[0]
        mirrored = self.copy_for_shadow(t, slot, request, body)  # sent beside the live request, on a task of its own
        started = time.perf_counter()
        upstream = await self.attempt(slot, t.upstreams[slot], request, body)
        if (upstream is None or upstream.status_code >= 500) and slot != t.live:
            # Nothing has reached the client yet: the live slot answers instead.
            if upstream is not None:
                await upstream.aclose()
            slot, started = t.live, time.perf_counter()
            upstream = await self.attempt(slot, t.upstreams[slot], request, body)
        if upstream is None:
            if mirrored is not None:
                mirrored.cancel()
            self.metrics.responses.labels("502").inc()
            return error(
                502,
                f"the {slot} stack at {t.upstreams[slot]} did not answer; check that it is running",
                "upstream_unreachable",
                {"Retry-After": "5"},
            )
        self.metrics.responses.labels(str(upstream.status_code)).inc()
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in NOT_FORWARDED}
        headers[UPSTREAM_HEADER] = slot

        content = body_of(upstream)
        if upstream.status_code < 400:
            timing = Timing(started)
            timing.read_headers(upstream.headers)
            content = self.metrics.observed(content, slot, timing)
            if mirrored is not None:
                content = captured(content, timing, upstream.status_code, mirrored)
        elif mirrored is not None:
            mirrored.cancel()
        return StreamingResponse(content, status_code=upstream.status_code, headers=headers)

    # --- the admin API and probes ---------------------------------------------------------------

    def is_admin(self, request: Request) -> bool:
        if self.expected_admin is None:
            return True  # the router only binds loopback without an admin key
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), self.expected_admin)

    async def get_traffic(self, request: Request) -> Response:
        try:
            return JSONResponse((await self.table()).model_dump())
        except LookupError as e:
            return error(404, str(e), "no_routing_table")

    async def put_traffic(self, request: Request) -> Response:
        if not self.admin:
            return error(405, "the routing table lives in a modal.Dict: change it with `ragserve promote modal`", "read_only_traffic")
        if not self.is_admin(request):
            return error(401, "changing the routing table needs 'Authorization: Bearer <RAGSERVE_ROUTER_ADMIN_KEY>'", "invalid_admin_key")
        try:
            change = await request.json()
            if not isinstance(change, dict):
                raise ValueError("send a JSON object")
            current = (await self.table()).model_dump()
            new = Traffic.model_validate({**current, **change, "upstreams": {**current["upstreams"], **change.get("upstreams", {})}})
        except LookupError:
            try:
                new = Traffic.model_validate(change)
            except ValueError as e:
                return error(400, f"invalid routing table: {e}", "invalid_traffic")
        except ValueError as e:  # JSON and validation errors alike
            return error(400, f'invalid routing table: {e}; send {{"weights": {{"blue": 90, "green": 10}}}}', "invalid_traffic")
        saved = self.store.set(new)
        log.info("traffic changed", extra={"fields": {"weights": saved.weights, "revision": saved.revision}})
        return JSONResponse(saved.model_dump())

    async def get_shadow(self, request: Request) -> Response:
        """The compared pairs numbered above ``?since=N`` (figures; texts only with --shadow-keep-text);
        ``&score=true`` scores their faithfulness first (after the stage, so it never slows it)."""
        if not self.is_admin(request):
            return error(401, "reading shadow pairs needs 'Authorization: Bearer <RAGSERVE_ROUTER_ADMIN_KEY>'", "invalid_admin_key")
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return error(400, "since must be a whole number: the last pair number you have read", "invalid_since")
        if request.query_params.get("score", "false").lower() in ("1", "true", "yes"):
            await self.mirror.score(since)
        try:
            shadow = (await self.table()).shadow
        except LookupError:
            shadow = None
        return JSONResponse(
            {"shadow": shadow.model_dump() if shadow else None, "last": self.mirror.count, "pairs": self.mirror.since(since)}
        )

    async def metrics_route(self, request: Request) -> Response:
        try:
            for slot, w in (await self.table()).weights.items():
                self.metrics.weight.labels(slot).set(w)
        except LookupError:
            pass
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def livez(self, request: Request) -> Response:
        return Response("ok")

    async def readyz(self, request: Request) -> Response:
        """Ready when the live slot is: the router alone serves nothing."""
        try:
            t = await self.table()
            r = await self.client.get(t.upstreams[t.live] + "/readyz", timeout=5)
            ok = r.status_code == 200
        except (LookupError, httpx.HTTPError):
            ok = False
        return Response("ok" if ok else "live upstream not ready", status_code=200 if ok else 503)


def create_router_app(store, *args, **kwargs) -> Starlette:
    """The router's ASGI app; the arguments are ``Router``'s."""
    return Router(store, *args, **kwargs).app()
