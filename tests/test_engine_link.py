"""The gateway's direct streams (bentos/chat/engine_link.py) against two local HTTP servers that
stand in for the model service and its engine: direct only while the engine is warm, back through
the model service when the engine cannot be reached, and asked again after that."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from bentos.chat.engine_link import EngineLink
from bentos.web.relay import Relay, http_client


def streaming_app(name: str, state: dict | None = None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        async def events():
            yield f'data: {{"from": "{name}"}}\n\n'.encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    if state is not None:

        @app.get("/v1/engine")
        async def engine() -> dict:
            return {"url": state["url"], "warm": state["warm"]}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve():
    """Starts an app on a free loopback port: (its URL, a function that stops it)."""
    servers = []

    def start(app: FastAPI) -> tuple[str, callable]:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        servers.append((server, thread))

        def stop() -> None:
            server.should_exit = True
            thread.join(10)

        return f"http://127.0.0.1:{port}", stop

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def test_streams_go_direct_only_while_the_engine_is_warm_and_reachable(serve, caplog):
    engine_url, stop_engine = serve(streaming_app("engine"))
    state = {"url": engine_url, "warm": False}
    service_url, _ = serve(streaming_app("service", state))
    service = Relay(http_client(service_url, 10), "the model service")

    async def scenario() -> list[tuple[str, bool]]:
        link = EngineLink(service, 10, check_s=60)
        seen = []

        async def one() -> None:
            upstream, direct = await link.open_stream("/v1/chat/completions", {})
            body = (await upstream.aread()).decode()
            await upstream.aclose()
            seen.append((body.split('"from": "')[1].split('"')[0], direct))

        await one()  # the engine is still warming: through the model service (which answers 503 then)
        state["warm"] = True
        link.checked = float("-inf")  # forget what it knew, as after a failed stream: it asks before the next one
        await one()
        await one()  # known warm: direct without asking again
        stop_engine()
        state["url"], _ = serve(streaming_app("engine"))  # it comes back on another port
        await one()  # refused: this stream goes through the model service ...
        await one()  # ... and the next asks where the engine is now, and goes direct
        await link.aclose()
        return seen

    with caplog.at_level(logging.WARNING, logger="bentos.gateway"):
        seen = asyncio.run(scenario())
    assert seen == [("service", False), ("engine", True), ("engine", True), ("service", False), ("engine", True)]
    assert any("going through the model service" in r.getMessage() for r in caplog.records)
