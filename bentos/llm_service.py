"""The model service: the real vLLM engine behind an OpenAI-compatible API, as a BentoML service.

The gateway (bentos/gateway.py) depends on it; `bentoml serve bentos.llm_service:LLM` serves it
alone. BentoML provides /livez, /readyz and /metrics; the hooks below tie them to the engine:
ready only once the engine has generated a token (the supervisor warms it up after every start),
vLLM's Prometheus metrics appended to BentoML's.
"""

from __future__ import annotations

import bentoml
import httpx

from bentos.model.api import create_app, engine_relay
from bentos.model.engine import Engine, Supervisor
from bentos.model.store import resolve_model
from bentos.web.heap import keep_rss_level
from bentos.web.metrics import only_engine_metrics
from bentos.web.service import check_worker_socket, service_options, service_settings

settings = service_settings()
openai_app = create_app(settings)


@bentoml.service(name="ragserve-llm", **service_options(settings))
@bentoml.asgi_app(openai_app, path="/v1")
class LLM:
    def __init__(self) -> None:
        check_worker_socket(settings)
        keep_rss_level(settings.heap_trim_s)
        self.engine = Engine(settings, resolve_model(settings))
        Supervisor(self.engine).start()
        self.client = engine_relay(self.engine, settings)
        openai_app.state.engine = self.client

    async def __is_ready__(self) -> bool:
        return await self.engine.is_ready(self.client.http)

    async def __metrics__(self, content: str) -> str:
        try:
            r = await self.client.http.get("/metrics", timeout=5)
            return content + only_engine_metrics(r.text)
        except httpx.HTTPError:
            return content  # engine down or starting: /readyz says so; metrics still answer

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        self.engine.stop()
        await self.client.http.aclose()
