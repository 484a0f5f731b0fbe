"""Pydantic schemas of the OpenAI-compatible API this project serves.

Unknown fields are kept (``extra="allow"``) and forwarded to vLLM, so sampling options this file
does not name still work; the fields named here are the ones we check before the engine sees them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bentos.web.errors import APIError

# vLLM's own request fields that constrain the output to a JSON schema, a regex, a choice or a grammar.
VLLM_CONSTRAINTS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # ragserve's own: each citation carries the chunk's text as the model was given it (for
    # `ragserve eval answers` and the release gates, which score the answer against it). Not sent on.
    citation_text: bool = False

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def format_fixed(self) -> bool:
        """The client fixed the answer's shape (JSON, a schema, a grammar, tool calls): the output
        rails may mask it but never add to it, or it would no longer parse."""
        kind = (self.response_format or {}).get("type")
        constrained = any(k in (self.model_extra or {}) for k in VLLM_CONSTRAINTS)
        return kind in ("json_object", "json_schema") or constrained or (bool(self.tools) and self.tool_choice != "none")


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(4, ge=1)


class Citation(BaseModel):
    source: str
    chunk_id: str
    score: float
    text: str | None = None  # only when the request asks with "citation_text": true


class RetrievedChunk(Citation):
    doc_id: str
    title: str
    text: str
    similarity: float


class RetrieveResponse(BaseModel):
    query: str
    k: int
    index_version: int | None
    chunks: list[RetrievedChunk]
    timing_ms: dict[str, float]


def engine_payload(req: ChatCompletionRequest, model_name: str, max_model_len: int) -> dict[str, Any]:
    """What the next hop gets for a chat request: limits the engine knows only after tokenising
    checked now, and the defaults clients expect filled in."""
    limit = req.output_limit
    if limit is not None and limit >= max_model_len:
        raise APIError(
            400, f"max_tokens={limit} is not below the model's context length {max_model_len}; lower max_tokens", "max_tokens_too_large"
        )
    payload = req.model_dump(exclude_none=True, exclude_unset=True, exclude={"citation_text"})
    payload["model"] = model_name  # one model per service: any name the client sends maps to it
    if req.stream:
        # Usage counts in the last chunk, as OpenAI sends them when asked; on unless the client says no.
        payload["stream_options"] = {"include_usage": True, **(req.stream_options or {})}
    return payload
