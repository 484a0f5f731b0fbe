"""The model service: the real vLLM engine behind an OpenAI-compatible API, as a BentoML service.

The gateway (bentos/gateway.py) depends on it; `bentoml serve bentos.llm_service:LLM` serves it
alone. BentoML provides /livez, /readyz and /metrics; the hooks (bentos/model/service.py) tie them
to the engine: ready only once the engine has generated a token (the supervisor warms it up after
every start), vLLM's Prometheus metrics appended to BentoML's.
"""

from __future__ import annotations

import bentoml

from bentos.model.api import create_app
from bentos.model.service import EngineService
from bentos.web.service import service_options, service_settings

settings = service_settings()
openai_app = create_app(settings.engine, settings.web)


@bentoml.service(name="ragserve-llm", **service_options(settings.web))
@bentoml.asgi_app(openai_app, path="/v1")
class LLM(EngineService):
    def __init__(self) -> None:
        self.start_engine(settings, openai_app)
