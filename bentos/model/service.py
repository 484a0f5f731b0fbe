"""What both engine services (the model's and the guard model's) do: start a supervised vLLM
engine, answer ready only once it has generated, append its metrics, stop it at shutdown."""

from __future__ import annotations

import asyncio
import time

import bentoml
import httpx
from fastapi import FastAPI

from bentos.model.api import engine_relay
from bentos.model.engine import Engine, Supervisor
from bentos.model.store import resolve_model
from bentos.settings import Settings
from bentos.web.heap import keep_rss_level
from bentos.web.metrics import only_engine_metrics, samples
from bentos.web.service import check_worker_socket


class EngineService:
    def start_engine(self, settings: Settings, app: FastAPI) -> None:
        check_worker_socket(settings.web)
        keep_rss_level(settings.web.heap_trim_s)
        self.engine = Engine(settings.engine, resolve_model(settings.engine))
        Supervisor(self.engine).start()
        self.client = engine_relay(self.engine, settings.web.request_timeout_s)
        app.state.engine, app.state.engine_process = self.client, self.engine

    async def __is_ready__(self) -> bool:
        return await self.engine.is_ready(self.client.http)

    async def __metrics__(self, content: str) -> str:
        try:
            r = await self.client.http.get("/metrics", timeout=5)
            return content + only_engine_metrics(r.text)
        except httpx.HTTPError:
            return content  # engine down or starting: /readyz says so; metrics still answer

    async def drain(self, timeout_s: float) -> None:
        """Streams the gateway opened on the engine directly (bentos/chat/engine_link.py) are not
        this service's requests, so its server does not wait for them: wait here until the engine
        runs none, for up to ``timeout_s``, before stopping it."""
        deadline = time.monotonic() + timeout_s
        while self.engine.running and time.monotonic() < deadline:
            try:
                text = (await self.client.http.get("/metrics", timeout=5)).text
            except httpx.HTTPError:
                return
            if not sum(s.value for s in samples(text) if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")):
                return
            await asyncio.sleep(0.2)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        await self.drain(self.engine.settings.drain_timeout_s)
        self.engine.stop()
        await self.client.http.aclose()
