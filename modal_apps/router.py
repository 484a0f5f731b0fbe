"""The stable endpoint in front of blue and green Modal deployments: `modal deploy modal_apps/router.py`.

Deploy each release of the stack under its own app name (RAGSERVE_MODAL_APP_NAME=ragserve-green
modal deploy modal_apps/serve.py), then `ragserve promote modal` gates it and moves the weights,
which live in a `modal.Dict` every router container reads (cached for a second). The router is
CPU only and scales to zero like the stacks; clients keep one URL across releases.
"""

from __future__ import annotations

import modal

from .config import load_settings, project_pins

ROUTER_PACKAGES = ("fastapi", "httpx", "pydantic", "prometheus-client")

cfg, _, _ = load_settings()
app = modal.App(f"{cfg.app_name}-router")
traffic = modal.Dict.from_name(f"{cfg.app_name}-traffic", create_if_missing=True)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(*[p for p in project_pins() if p.split("==")[0] in ROUTER_PACKAGES])
    .add_local_python_source("bentos", "infra")
)

ROUTER_OPTIONS = dict(
    image=image,
    min_containers=0,
    max_containers=cfg.max_containers,
    scaledown_window=cfg.scaledown_window,
    timeout=cfg.timeout,
    region=cfg.region,
)


@app.function(**ROUTER_OPTIONS)
@modal.concurrent(max_inputs=1000)  # a proxy waits on the stacks: many requests per container
@modal.asgi_app()
def router():
    from infra.router import create_router_app
    from infra.traffic import DictStore

    return create_router_app(DictStore(traffic), timeout_s=cfg.timeout, admin=False)
