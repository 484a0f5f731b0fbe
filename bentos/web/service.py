"""What both BentoML service modules do at import and start: settings, the open-bind refusal, options."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from bentos.settings import Settings, WebSettings, get_settings
from bentos.web.logs import setup_service_logging
from bentos.web.middleware import ResponseTimeout


def service_settings() -> Settings:
    """The settings a service module starts with: the bind address checked at import, so
    `bentoml serve` stops at once (BentoML respawns a worker that fails later forever), and
    our JSON logging set up."""
    settings = get_settings()
    settings.web.check_bind(requested_host(settings.web))
    use_response_timeout()
    setup_service_logging(settings.web.log_level)
    return settings


def service_options(settings: WebSettings) -> dict:
    """`@bentoml.service` options both services share. One worker per replica: the engine (and
    the gateway's embedder) batch concurrent requests themselves."""
    http: dict = {"port": settings.port}
    try:
        http["host"] = str(ipaddress.ip_address(settings.host))
    except ValueError:
        pass  # a name such as "localhost": leave BentoML's --host to decide
    return {"http": http, "traffic": {"timeout": int(settings.request_timeout_s)}, "workers": 1}


def use_response_timeout() -> None:
    """BentoML enforces ``traffic.timeout`` with the middleware class it looks up in its traffic
    module when it builds a service's app; ours keeps the limit and frees each request at its end."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = ResponseTimeout


def requested_host(settings: WebSettings) -> str:
    """The address `bentoml serve` was asked to bind: --host, then BENTOML_HOST, then our setting."""
    argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        for i, arg in enumerate(argv):
            if arg == "--host" and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--host="):
                return arg.split("=", 1)[1]
    return os.environ.get("BENTOML_HOST") or settings.host


def listening_address() -> tuple[str, int] | None:
    """(host, port) of the socket BentoML handed this worker (``--fd N``), whatever flag chose
    it; None outside a BentoML worker or on a Unix socket."""
    if "--fd" not in sys.argv:
        return None
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    with socket.socket(fileno=socket.dup(fd)) as s:
        name = s.getsockname()
    return tuple(name[:2]) if isinstance(name, tuple) else None


def check_worker_socket(settings: WebSettings) -> None:
    """Run in each worker: the import-time check cannot see every way an address is chosen."""
    address = listening_address()
    if address is not None:
        settings.check_bind(address[0])
