"""Putting retrieved chunks into the conversation as numbered sources."""

from __future__ import annotations

from typing import Any

from bentos.retrieval.search import Hit

INSTRUCTIONS = (
    "Answer the user's question using only the numbered sources below. Cite the sources you use "
    "like [1]. If the sources do not contain the answer, say that you do not know."
)
NOT_FOUND = "I could not find anything about this in the indexed documents, so I cannot answer it from them."
MAX_SOURCE_WORDS = 220  # keeps k sources well inside a small model's context


def last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            if isinstance(m.content, str):
                return m.content
            if isinstance(m.content, list):
                return " ".join(p.get("text", "") for p in m.content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def sources_block(hits: list[Hit]) -> str:
    lines = []
    for i, h in enumerate(hits, 1):
        words = h.text.split()
        text = " ".join(words[:MAX_SOURCE_WORDS]) + (" ..." if len(words) > MAX_SOURCE_WORDS else "")
        lines.append(f"[{i}] ({h.source}) {text}")
    return "\n\n".join(lines)


def with_sources(messages: list[dict], hits: list[Hit]) -> list[dict]:
    """Our instructions and sources go first as a system message; the client's own messages,
    system ones included, follow unchanged."""
    return [{"role": "system", "content": f"{INSTRUCTIONS}\n\n{sources_block(hits)}"}, *messages]
