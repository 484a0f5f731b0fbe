"""ASGI middleware both services run: bearer auth, a bounded queue, and the response timeout."""

from __future__ import annotations

import asyncio
import hmac

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bentos.web.errors import error_response
from bentos.web.metrics import REFUSED


class BearerAuth:
    """ASGI middleware: with keys configured, every request needs ``Authorization: Bearer <key>``
    with one of them."""

    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self.expected = [f"Bearer {key}".encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.expected or scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        # constant time per key, every key compared: no timing oracle on the keys
        if sum(hmac.compare_digest(given, key) for key in self.expected):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send 'Authorization: Bearer <RAGSERVE_API_KEY>'"
        response = error_response(401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class ResponseTimeout:
    """ASGI middleware: a request whose response has not started within ``timeout`` seconds is
    cancelled and answered 504; once the response starts (a stream's first bytes) it runs on.

    The services run it as BentoML's traffic timeout (service_common.use_response_timeout). BentoML's
    own never cancels its timer, so each finished request's context (tracing span, request state)
    stayed alive for the whole timeout: the gateway's memory grew with the request rate for 5 minutes."""

    def __init__(self, app: ASGIApp, timeout: float):
        self.app, self.timeout_s = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message: dict) -> None:
            nonlocal started
            if not started:
                started = True
                if not deadline.expired():
                    deadline.reschedule(None)  # the response is under way: no deadline any more
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started or not deadline.expired():
                raise  # not ours to answer: the response began, or the app timed out on its own
            message = f"no response within {self.timeout_s:g} s (RAGSERVE_REQUEST_TIMEOUT_S); ask for fewer tokens or raise the limit"
            await error_response(504, message, "timeout")(scope, receive, send)


class Backpressure:
    """ASGI middleware: at most ``limit`` requests in progress and ``queue`` waiting for a slot.
    Beyond that a request is refused at once with 429 and Retry-After, and one that waited
    ``wait_s`` gets 503: clients back off instead of piling up until they time out. A slot is
    held until the response ends (a stream holds it while it streams)."""

    def __init__(self, app: ASGIApp, limit: int, queue: int, wait_s: float):
        self.app, self.limit, self.queue, self.wait_s = app, limit, queue, wait_s
        self.slots = asyncio.Semaphore(limit)
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = await self.acquire()
        if refusal is not None:
            return await refusal(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()

    async def acquire(self) -> JSONResponse | None:
        """A slot (None), or the refusal to send."""
        if not self.slots.locked():
            await self.slots.acquire()
            return None
        if self.waiting >= self.queue:
            REFUSED.labels("queue_full").inc()
            message = f"the server is at capacity ({self.limit} in progress, {self.queue} waiting); retry after the delay in Retry-After"
            return error_response(429, message, "overloaded", {"Retry-After": "1"})
        self.waiting += 1
        waiter = asyncio.ensure_future(self.slots.acquire())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
            return None
        except (TimeoutError, asyncio.CancelledError) as e:
            # Timed out, or the client went away: never keep a slot that was granted meanwhile.
            waiter.cancel()
            try:
                await waiter
                self.slots.release()
            except asyncio.CancelledError:
                pass
            if isinstance(e, asyncio.CancelledError):
                raise
            REFUSED.labels("queue_timeout").inc()
            message = f"no capacity freed within {self.wait_s:g} s (RAGSERVE_QUEUE_TIMEOUT_S); retry after the delay in Retry-After"
            return error_response(503, message, "queue_timeout", {"Retry-After": "5"})
        finally:
            self.waiting -= 1
