"""The model service: the real vLLM engine behind an OpenAI-compatible API, as a BentoML service.

`bentoml serve` (or `make serve`) runs it on 127.0.0.1:3000. BentoML provides /livez, /readyz and
/metrics; the hooks below tie them to the engine: ready only once the engine has generated a
token, and vLLM's own Prometheus metrics appended to BentoML's.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

import bentoml
import httpx

from .engine import Engine
from .llm_api import EngineClient, create_app
from .model_store import resolve_model
from .settings import get_settings

log = logging.getLogger("ragserve.llm")
settings = get_settings()
openai_app = create_app(settings)


def _http_config() -> dict:
    config: dict = {"port": settings.port}
    try:
        config["host"] = str(ipaddress.ip_address(settings.host))
    except ValueError:
        pass  # a name such as "localhost": leave BentoML's --host to decide
    return config


def requested_host() -> str:
    """The address `bentoml serve` was asked to bind: --host, then BENTOML_HOST, then our setting."""
    argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        for i, arg in enumerate(argv):
            if arg == "--host" and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--host="):
                return arg.split("=", 1)[1]
    return os.environ.get("BENTOML_HOST") or settings.host


# Checked at import so `bentoml serve` stops at once (a worker failing later is respawned forever);
# the worker checks the socket it was actually given too (see LLM.__init__).
settings.check_bind(requested_host())


def listening_host() -> str | None:
    """The address of the socket BentoML handed this worker (``--fd N``), whatever flag chose it."""
    if "--fd" not in sys.argv:
        return None
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    with socket.socket(fileno=socket.dup(fd)) as s:
        name = s.getsockname()
    return name[0] if isinstance(name, tuple) else None  # None: a Unix socket


def only_engine_metrics(text: str) -> str:
    """vLLM's metric families (``vllm:*``); its process/GC ones would clash with BentoML's."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith("vllm:"):
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


@bentoml.service(
    name="ragserve-llm",
    http=_http_config(),
    traffic={"timeout": int(settings.request_timeout_s)},
    workers=1,  # one engine per replica; the engine batches concurrent requests itself
)
@bentoml.asgi_app(openai_app, path="/v1")
class LLM:
    def __init__(self) -> None:
        host = listening_host()
        if host is not None:
            settings.check_bind(host)
        self.engine = Engine(settings, resolve_model(settings))
        self.engine.start()
        self.client = EngineClient(self.engine, settings)
        self.probe = httpx.AsyncClient()
        openai_app.state.engine = self.client

    async def __is_ready__(self) -> bool:
        return await self.engine.is_ready(self.probe)

    async def __metrics__(self, content: str) -> str:
        try:
            r = await self.probe.get(f"{self.engine.base_url}/metrics", timeout=5)
            return content + only_engine_metrics(r.text)
        except httpx.HTTPError:
            return content  # engine down or starting: /readyz says so; metrics still answer

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        self.engine.stop()
        await self.client.aclose()
        await self.probe.aclose()
