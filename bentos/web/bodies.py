"""Request bodies: JSON read within a size limit, then validated into a pydantic model."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from bentos.web.errors import APIError, describe_validation_error

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing oversized bodies before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limit} (RAGSERVE_MAX_BODY_BYTES)", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes (RAGSERVE_MAX_BODY_BYTES)", "body_too_large")
    try:
        data = json.loads(body)
        # JSON may escape lone UTF-16 surrogates ("\ud800"), which no tokenizer can encode.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e}); send a JSON object", "invalid_json") from None
    except UnicodeEncodeError:
        raise APIError(
            400, "request body holds a lone UTF-16 surrogate escape (such as \\ud800); send valid Unicode text", "invalid_unicode"
        ) from None
    except RecursionError:
        raise APIError(400, "request body JSON is nested too deeply", "invalid_json") from None


def parse_body(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise APIError(400, f"invalid request: {describe_validation_error(e)}", "invalid_request") from None
