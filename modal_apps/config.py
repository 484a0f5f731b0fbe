"""Deployment settings of the Modal apps, chosen explicitly and checked at `modal deploy` time.

A deployment's settings are its env file (RAGSERVE_MODAL_ENV_FILE, default modal_apps/deploy.env,
made from modal_apps/deploy.env.example; docs/modal.md): the containers get that file's RAGSERVE_*
settings, never what happens to be exported in the deploying shell. The Modal knobs themselves are
the `modal` group of bentos/settings.py (RAGSERVE_MODAL_*): Modal accepts any GPU name, cron string
or timeout when the app is defined and fails only later, in the cloud; those settings check them
first, so `modal deploy` stops with a message naming the fix.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import modal
from pydantic import ValidationError

from bentos.settings import DeployChoiceError, ModalSettings, Settings, deployment_settings, shell_settings

ROOT = Path(__file__).resolve().parent.parent  # the checkout; /root inside a Modal container

__all__ = ["ROOT", "ModalSettings", "load_settings", "project_pins"]


def project_pins(*extras: str) -> list[str]:
    """The exact pins of pyproject.toml (plus extras): images install these, so they cannot drift."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + [p for e in extras for p in project["optional-dependencies"][e]]


def load_settings(gpu_endpoint: bool = False) -> tuple[ModalSettings, Settings, dict[str, str]]:
    """The Modal settings, the stack's settings and the RAGSERVE_* variables the containers get,
    or SystemExit naming the fix: a deploy stops here, not in the cloud. Where it deploys (on this
    machine) they come from the env file; inside a container, from the environment the file gave it."""
    try:
        if modal.is_local():
            settings, env = deployment_settings(gpu_endpoint)
        else:
            settings, env = Settings(), shell_settings()
    except DeployChoiceError as e:
        raise SystemExit(f"not deploying: {e}") from None
    except ValidationError as e:
        raise SystemExit(f"bad RAGSERVE_* setting for the Modal app:\n{e}") from None
    return settings.modal, settings, env
