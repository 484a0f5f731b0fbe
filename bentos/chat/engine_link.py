"""Streams from the engine itself where the model service runs on the same host.

Through the model service, every token crosses two relays (vLLM -> model service -> gateway); a
stream opened on vLLM's own port crosses one. Measured with the gateway alone on 2 cores (one run
each way), the relay's share of the time to first text fell from 8.5 to 6.2 ms at one stream, 41
to 20 ms at 8 and 163 to 93 ms at 32, where the model service's event loop competes with the
engine for the cores.

The model service says where its engine listens and whether it is warm (``GET /v1/engine``); the
gateway asks before its first stream, again in the background every ``check_s``, and before the
next stream whenever a direct one cannot connect. Until the engine is warm, when it is down, or
when the model service is elsewhere, streams go through the model service as before, which
answers 503 with Retry-After while the engine starts. The gateway has already checked the request
as the model service would (the same schema and limits), and writes the prompt audit
(RAGSERVE_LOG_PROMPTS) itself for the streams it opens directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from bentos.web.errors import APIError
from bentos.web.relay import UNREACHABLE, Relay, http_client

log = logging.getLogger("bentos.gateway")


class EngineLink:
    def __init__(self, service: Relay, timeout_s: float, check_s: float = 5.0):
        self.service, self.timeout_s, self.check_s = service, timeout_s, check_s
        self.direct: Relay | None = None
        self.checked = float("-inf")
        self.checking: asyncio.Future | None = None

    async def open_stream(self, path: str, payload: Any) -> tuple[httpx.Response, bool]:
        """The upstream stream, and whether it comes from the engine directly."""
        if self.checked == float("-inf"):
            await self.check()  # nothing known (first stream, or the last direct one failed): ask first
        elif time.monotonic() - self.checked > self.check_s and (self.checking is None or self.checking.done()):
            self.checking = asyncio.ensure_future(self.check())  # known: ask again without making this stream wait
        if self.direct is not None:
            try:
                return await self.direct.open_stream(path, payload), True
            except APIError as e:
                if e.code != UNREACHABLE:
                    raise
                log.warning("the engine refused a direct stream; going through the model service", extra={"fields": {"error": e.message}})
                self.checked = float("-inf")  # ask the model service again next time
        return await self.service.open_stream(path, payload), False

    async def check(self) -> None:
        """Where the engine listens, from the model service; direct only while it is warm."""
        self.checked = time.monotonic()
        try:
            r = await self.service.request("GET", "/v1/engine")
            info = r.json() if r.status_code == 200 else {}
        except (APIError, ValueError):
            info = {}
        url = info.get("url") if info.get("warm") else None
        if url is None:
            self.direct = None
        elif self.direct is None or str(self.direct.http.base_url).rstrip("/") != url:
            if self.direct is not None:
                await self.direct.http.aclose()
            self.direct = Relay(http_client(url, self.timeout_s), "the model engine")

    async def aclose(self) -> None:
        if self.checking is not None:
            self.checking.cancel()
        if self.direct is not None:
            await self.direct.http.aclose()
