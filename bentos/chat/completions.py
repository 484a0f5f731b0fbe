"""Chat completions the gateway answers itself (nothing found, and later guardrail refusals),
in exactly the shapes the model would have used, streamed or not."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from bentos.web.relay import SSE_HEADERS, sse

ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion(model: str, content: str, finish_reason: str = "stop", usage: dict | None = None, **extra: Any) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage or ZERO_USAGE,
        **extra,
    }


def completion_chunks(
    model: str, content: str | list[str], finish_reason: str = "stop", usage: dict | None = None, **extra: Any
) -> Iterator[bytes]:
    """``content`` as one chunk, or as the pieces given."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], **extra})
    for piece in [content] if isinstance(content, str) else content:
        yield sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})
    yield sse({**base, "choices": [], "usage": usage or ZERO_USAGE})
    yield sse("[DONE]")


def answer(model: str, stream: bool, content: str, finish_reason: str = "stop", **extra: Any) -> Response:
    """One of the above as the response to a request, streamed when it asked for a stream."""
    if stream:
        return StreamingResponse(
            completion_chunks(model, content, finish_reason, **extra), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return JSONResponse(completion(model, content, finish_reason, **extra))
