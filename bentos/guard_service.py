"""The guard service: a second vLLM engine serving the guard model (RAGSERVE_GUARD_MODEL), as its
own BentoML service that the gateway depends on only when the setting is there.

Its own process and engine, beside the answering model's: on a GPU the two share the card by
RAGSERVE_GPU_MEMORY_UTILIZATION and RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION; the guard's weights come
from the same place the model's do (a Hugging Face id through the hub cache or a mounted folder).
"""

from __future__ import annotations

import bentoml

from bentos.model.api import create_app
from bentos.model.service import EngineService
from bentos.web.service import service_options, service_settings

settings = service_settings().guard_engine_settings()
guard_app = create_app(settings.engine, settings.web)


@bentoml.service(name="ragserve-guard", **service_options(settings.web))
@bentoml.asgi_app(guard_app, path="/v1")
class GuardLLM(EngineService):
    def __init__(self) -> None:
        self.start_engine(settings, guard_app)
