"""Putting retrieved chunks into the conversation as numbered sources."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bentos.retrieval.search import Hit

log = logging.getLogger("bentos.gateway")

INSTRUCTIONS = (
    "Answer the user's question using only the numbered sources below. Cite the sources you use "
    "like [1]. If the sources do not contain the answer, say that you do not know."
)
NOT_FOUND = "I could not find anything about this in the indexed documents, so I cannot answer it from them."
MAX_SOURCE_WORDS = 220  # keeps k sources well inside a small model's context
# The system prompt: ``{sources}`` is where the numbered chunks go (RAGSERVE_PROMPT_TEMPLATE replaces it).
DEFAULT_TEMPLATE = INSTRUCTIONS + "\n\n{sources}"


def last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            if isinstance(m.content, str):
                return m.content
            if isinstance(m.content, list):
                return " ".join(p.get("text", "") for p in m.content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def source_text(hit: Hit) -> str:
    """A chunk as the model is given it."""
    words = hit.text.split()
    return " ".join(words[:MAX_SOURCE_WORDS]) + (" ..." if len(words) > MAX_SOURCE_WORDS else "")


def sources_block(hits: list[Hit]) -> str:
    return "\n\n".join(f"[{i}] ({h.source}) {source_text(h)}" for i, h in enumerate(hits, 1))


def read_template(path: Path | None) -> str:
    """RAGSERVE_PROMPT_TEMPLATE's text, or the default. A template without ``{sources}`` gives the
    model no chunks at all: allowed (the answer-quality gate is what catches it), but logged."""
    if path is None:
        return DEFAULT_TEMPLATE
    template = path.read_text()
    if "{sources}" not in template:
        log.warning("prompt template has no {sources}: the model gets no retrieved chunks", extra={"fields": {"template": str(path)}})
    return template


def with_sources(messages: list[dict], hits: list[Hit], template: str = DEFAULT_TEMPLATE) -> list[dict]:
    """Our instructions and sources go first as a system message; the client's own messages,
    system ones included, follow unchanged. (``replace``, not ``format``: a template may hold braces.)"""
    return [{"role": "system", "content": template.replace("{sources}", sources_block(hits))}, *messages]
