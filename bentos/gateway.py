"""The gateway: the entry service `bentoml serve` (and `make serve`) runs on 127.0.0.1:3000.

It runs the guardrails, retrieves from the published LanceDB index and relays to the model service, composed with
``bentoml.depends`` (its own process, reached over BentoML's local socket or a URL). With
RAGSERVE_GUARD_MODEL set it depends on the guard service too (bentos/guard_service.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import bentoml
import httpx
import psutil

from bentos.chat.api import create_gateway_app, wire
from bentos.chat.engine_link import EngineLink
from bentos.guard.guard_model import GuardModel, guard_at, guard_model_over
from bentos.guard.rails import Guard
from bentos.llm_service import LLM
from bentos.retrieval.retriever import Retriever
from bentos.web.heap import keep_rss_level
from bentos.web.logs import READY_MESSAGE
from bentos.web.metrics import only_engine_metrics
from bentos.web.relay import Relay, dependency_client, on_this_host
from bentos.web.service import (
    check_worker_socket,
    listening_address,
    service_options,
    service_settings,
)

log = logging.getLogger("bentos.gateway")


settings = service_settings()
gateway_app = create_gateway_app(settings)
if settings.guard.guard_in_process:  # a third service only when a guard model is set
    from bentos.guard_service import GuardLLM


@bentoml.service(name="ragserve-gateway", **service_options(settings.web))
@bentoml.asgi_app(gateway_app, path="/v1")
class Gateway:
    llm = bentoml.depends(LLM, url=settings.web.model_url)  # no URL: `bentoml serve` starts it beside this one
    if settings.guard.guard_in_process:
        guard = bentoml.depends(GuardLLM)

    def __init__(self) -> None:
        check_worker_socket(settings.web)
        keep_rss_level(settings.web.heap_trim_s)
        self.retriever = Retriever(settings.retrieval)
        _ = self.llm  # resolves the dependency: its url is set from here on
        self.llm_http = dependency_client(type(self).llm.url, settings.web.request_timeout_s)
        key = settings.web.api_key_value
        self.relay = Relay(self.llm_http, "the model service", headers={"Authorization": f"Bearer {key}"} if key else None)
        self.guard_model = self.connect_guard_model()
        # Loaded here, not per request: a missing classifier or a bad config stops start-up.
        guard = Guard(settings.guard, self.ask_model, self.guard_model) if settings.guard.guardrails else None
        local = settings.web.direct_streams and on_this_host(type(self).llm.url)
        self.link = EngineLink(self.relay, settings.web.request_timeout_s) if local else None
        wire(gateway_app, settings, self.retriever, self.relay, guard, self.link)

    def connect_guard_model(self) -> GuardModel | None:
        """The guard model: the guard service beside this one (it serves the name "guard"), or
        the one at RAGSERVE_GUARD_URL; None when neither is set."""
        key = settings.web.api_key_value
        if settings.guard.guard_in_process:
            _ = self.guard  # resolves the dependency, as for the model service
            return guard_model_over(dependency_client(type(self).guard.url, settings.guard.guard_timeout_s), "guard", settings.guard, key)
        if settings.guard.guard_url:
            return guard_model_over(guard_at(settings.guard.guard_url, settings.guard), settings.guard.guard_model, settings.guard, key)
        return None

    async def ask_model(self, prompt: str) -> str:
        """One short answer from the served model, for the optional self-check rails."""
        r = await self.relay.request(
            "POST",
            "/v1/chat/completions",
            {"model": settings.engine.model_name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3, "temperature": 0},
        )
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"] or ""

    @bentoml.on_startup
    async def announce_readiness(self) -> None:
        self._announcer = asyncio.get_running_loop().create_task(self._announce_when_ready())

    async def _announce_when_ready(self) -> None:
        """One log line the moment the stack can answer: its URL and how long it took since
        `bentoml serve` started, for whoever started it. Probed through this service's own
        listening socket, so the line means a client's first request works."""
        host, port = listening_address() or (settings.web.host, settings.web.port)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        probe = f"http://127.0.0.1:{port}/readyz" if host in ("0.0.0.0", "::") else f"{url}/readyz"
        started = psutil.Process(os.getppid()).create_time()  # the `bentoml serve` process
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                try:
                    if (await client.get(probe)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        seconds = round(time.time() - started, 1)
        log.info(f"{READY_MESSAGE}: {url}/v1 answers ({seconds} s after start)", extra={"fields": {"url": f"{url}/v1", "seconds": seconds}})

    def engine_services(self) -> list[httpx.AsyncClient]:
        return [self.llm_http] + ([self.guard_model.http] if settings.guard.guard_in_process else [])

    async def __is_ready__(self) -> bool:
        """Ready when the model service is (its /readyz says the engine has generated a token),
        and the guard service too where there is one."""
        try:
            return all([(await http.get("/readyz", timeout=5)).status_code == 200 for http in self.engine_services()])
        except httpx.HTTPError:
            return False

    async def __metrics__(self, content: str) -> str:
        """The engines' metrics too (their model_name tells them apart), so one scrape of the
        entry service sees the whole stack."""
        texts = []
        for http in self.engine_services():
            try:
                texts.append((await http.get("/metrics", timeout=5)).text)
            except httpx.HTTPError:
                pass  # an engine down or starting: /readyz says so
        return content + only_engine_metrics(*texts)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        self._announcer.cancel()  # still waiting if the stack never became ready
        await self.llm_http.aclose()
        if self.link is not None:
            await self.link.aclose()
        if self.guard_model is not None:
            await self.guard_model.http.aclose()
