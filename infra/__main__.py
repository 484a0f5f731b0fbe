"""`python -m infra`: the router (`ragserve router`) in an image without the ragserve CLI, such as
the release image on KServe (infra/kserve/router). Options or RAGSERVE_ROUTER_* settings."""

from .cli import router

router(prog_name="python -m infra")
