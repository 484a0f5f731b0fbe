"""Relaying OpenAI-style HTTP to the next hop (vLLM for the model service, the model service for
the gateway), turning its absence into a clear 503 and passing streams through as they come."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
from fastapi.responses import Response, StreamingResponse
from httpx_sse import EventSource

from bentos.web.errors import APIError
from bentos.web.timing import TEXT_CHUNK

HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
# The next hop's own response headers: this service sets its own (one X-Request-ID, one Date).
NOT_RELAYED = HOP_HEADERS | {"date", "server", "x-request-id"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def http_client(base_url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """A pooled client to the next hop (``base_url`` "" for absolute URLs): no cap on connections,
    the hop applies its own limits."""
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=5),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


def on_this_host(url: str) -> bool:
    """A `bentoml.depends` service reached over a Unix socket or a loopback port."""
    parsed = urlparse(url)
    return parsed.scheme == "file" or (parsed.scheme == "tcp" and parsed.hostname in ("127.0.0.1", "localhost", "::1"))


def dependency_client(url: str, timeout_s: float) -> httpx.AsyncClient:
    """HTTP to a `bentoml.depends` service, whatever BentoML chose: a local Unix socket
    (``file://``), a loopback port (``tcp://``) or a remote URL."""
    parsed = urlparse(url)
    transport = None
    if parsed.scheme == "file":
        transport = httpx.AsyncHTTPTransport(uds=unquote(parsed.path))
        url = "http://ragserve-llm"
    elif parsed.scheme == "tcp":
        url = f"http://{parsed.netloc}"
    return http_client(url, timeout_s, transport)


UNREACHABLE = "upstream_unreachable"  # the error code of a hop that could not be reached


def unreachable(e: Exception, what: str) -> APIError:
    if isinstance(e, httpx.TimeoutException):
        return APIError(504, f"{what} did not answer in time (RAGSERVE_REQUEST_TIMEOUT_S)", "upstream_timeout")
    return APIError(503, f"{what} is unreachable ({type(e).__name__}); retry shortly", UNREACHABLE, {"Retry-After": "5"})


class Relay:
    def __init__(
        self, http: httpx.AsyncClient, what: str, ready_check: Callable[[], None] | None = None, headers: dict[str, str] | None = None
    ):
        self.http, self.what = http, what
        self.ready_check = ready_check or (lambda: None)
        self.headers = headers or {}

    async def request(self, method: str, path: str, payload: Any | None = None) -> httpx.Response:
        self.ready_check()
        try:
            return await self.http.request(method, path, json=payload, headers=self.headers)
        except httpx.HTTPError as e:
            raise unreachable(e, self.what) from None

    async def forward(self, method: str, path: str, payload: Any | None = None) -> Response:
        r = await self.request(method, path, payload)
        headers = {k: v for k, v in r.headers.items() if k.lower() not in NOT_RELAYED}
        return Response(r.content, status_code=r.status_code, headers=headers)

    async def open_stream(self, path: str, payload: Any) -> httpx.Response:
        """The upstream streaming response; a non-200 answer is read and raised as-is."""
        self.ready_check()
        try:
            upstream = await self.http.send(self.http.build_request("POST", path, json=payload, headers=self.headers), stream=True)
        except httpx.HTTPError as e:
            raise unreachable(e, self.what) from None
        if upstream.status_code != 200:
            await upstream.aread()
            await upstream.aclose()
            raise UpstreamError.of(upstream)
        return upstream

    async def stream(self, path: str, payload: Any, on_text: Callable[[], None] | None = None) -> Response:
        """Server-sent events relayed chunk by chunk (``on_text`` called at the first with text).
        Closing the upstream response when our client goes away makes the next hop (and finally
        vLLM) abort the generation."""
        try:
            upstream = await self.open_stream(path, payload)
        except UpstreamError as e:
            return e.response()

        return StreamingResponse(body_of(upstream, on_text), media_type="text/event-stream", headers=SSE_HEADERS)


class UpstreamError(Exception):
    """The next hop answered with an error: passed on with its own status and body."""

    def __init__(self, status: int, body: bytes, content_type: str | None, retry_after: str | None = None):
        super().__init__(status)
        self.status, self.body, self.content_type, self.retry_after = status, body, content_type, retry_after

    @classmethod
    def of(cls, r: httpx.Response) -> UpstreamError:
        return cls(r.status_code, r.content, r.headers.get("content-type"), r.headers.get("retry-after"))

    def response(self) -> Response:
        """The next hop's error as it was, Retry-After included (a client should back off as told)."""
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return Response(self.body, status_code=self.status, media_type=self.content_type or "application/json", headers=headers)


async def body_of(upstream: httpx.Response, on_text: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
    """An upstream body passed on chunk by chunk as it arrives, still encoded. Closing it when our
    client goes away makes the next hop (and finally vLLM) abort the generation."""
    try:
        async for chunk in upstream.aiter_raw():
            if on_text is not None and TEXT_CHUNK.search(chunk):
                on_text()
                on_text = None
            yield chunk
    finally:
        await upstream.aclose()


async def sse_events(upstream: httpx.Response) -> AsyncIterator[dict | str]:
    """The ``data`` of each server-sent event: a parsed JSON object, or the string ``[DONE]``."""
    async for event in EventSource(upstream).aiter_sse():
        yield event.data if event.data == "[DONE]" else json.loads(event.data)


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
