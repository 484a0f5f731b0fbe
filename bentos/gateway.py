"""The gateway: the entry service `bentoml serve` (and `make serve`) runs on 127.0.0.1:3000.

It retrieves from the published LanceDB index and relays to the model service, composed with
``bentoml.depends`` (its own process, reached over BentoML's local socket or a URL).
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import bentoml
import httpx

from .gateway_api import create_gateway_app
from .llm_service import LLM
from .relay import Relay
from .retrieval.retriever import Retriever
from .service_common import check_worker_socket, http_config, only_engine_metrics, requested_host
from .settings import get_settings

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
    return httpx.AsyncClient(
        base_url=url, transport=transport, timeout=httpx.Timeout(timeout_s, connect=5),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


settings = get_settings()
# At import, so `bentoml serve` stops at once (a worker failing later is respawned forever).
settings.check_bind(requested_host(settings))
gateway_app = create_gateway_app(settings)


@bentoml.service(
    name="ragserve-gateway",
    http=http_config(settings),
    traffic={"timeout": int(settings.request_timeout_s)},
    workers=1,
)
@bentoml.asgi_app(gateway_app, path="/v1")
class Gateway:
    llm = bentoml.depends(LLM)

    def __init__(self) -> None:
        check_worker_socket(settings)
        self.retriever = Retriever(settings)
        self.llm  # resolves the dependency: its url is set from here on
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self.llm_http = dependency_client(type(self).llm.url, settings.request_timeout_s)
        gateway_app.state.llm = Relay(self.llm_http, "the model service", headers={"Authorization": f"Bearer {key}"} if key else None)
        gateway_app.state.retriever = self.retriever

    async def __metrics__(self, content: str) -> str:
        """The engine's metrics too, so one scrape of the entry service sees the whole stack."""
        try:
            r = await self.llm_http.get("/metrics", timeout=5)
            return content + only_engine_metrics(r.text)
        except httpx.HTTPError:
            return content

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        await self.llm_http.aclose()
