"""docs/configuration.md, generated from the settings' groups and field descriptions
(`ragserve docs settings`; tests/test_settings.py fails when the file is stale)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from bentos.settings import GROUPS, PROJECT_DIR, variable_names

REFERENCE = PROJECT_DIR / "docs" / "configuration.md"
COMMAND = "ragserve docs settings"

HEADER = f"""# Configuration

<!-- Generated from bentos/settings.py by `{COMMAND}` (or `make docs`): edit the field descriptions there, not this file. -->

Every setting is an environment variable, read by `bentos/settings.py` and nowhere else. They
are grouped by the part of the stack that uses them; each part is handed its own group. On
Modal, a deployment's settings are the lines of its env file (see [Deploying on Modal](modal.md)).

"""


def type_name(t: Any) -> str:
    origin, args = get_origin(t), get_args(t)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in present) + (", optional" if len(present) < len(args) else "")
    if origin is dict:
        return "JSON object"
    if t is SecretStr:
        return "secret"
    return {"str": "text", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}.get(t.__name__, t.__name__)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "`{}`" if field.default_factory is dict else "see description"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        value = value.relative_to(PROJECT_DIR) if value.is_relative_to(PROJECT_DIR) else value
    return f"`{value}`" if str(value) else "empty"


def cell(text: str) -> str:
    """Table-safe: no pipes or newlines, and <placeholders> outside code spans escaped, as Markdown would eat them."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def reference() -> str:
    parts = [HEADER]
    for group, cls in GROUPS.items():
        parts.append(f"## {group}\n\n{cls.__doc__.strip()} In code: `settings.{group}` (`{cls.__name__}`).\n\n")
        parts.append("| Variable | Type | Default | Description |\n|---|---|---|---|\n")
        for name, field in cls.model_fields.items():
            var, *aliases = variable_names(group, name)
            shown = f"`{var}`" + "".join(f" (or `{a}`)" for a in aliases)
            columns = [shown, type_name(field.annotation), default_text(field), field.description or ""]
            parts.append("| " + " | ".join(cell(c) for c in columns) + " |\n")
        parts.append("\n")
    return "".join(parts).rstrip("\n") + "\n"


def undescribed() -> list[str]:
    return [f"{cls.__name__}.{name}" for cls in GROUPS.values() for name, field in cls.model_fields.items() if not field.description]


def write(path: Path = REFERENCE) -> Path:
    if missing := undescribed():
        raise ValueError(f"settings without a description (add one in bentos/settings.py): {', '.join(missing)}")
    path.write_text(reference())
    return path
