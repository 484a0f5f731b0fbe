"""The OpenAI-compatible chat API over real HTTP with the official openai client: the gateway in
front of the model service and the real engine, as `make serve` runs them."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.stack


def test_chat_answer(stack):
    # no sampling options: the embedded model's own defaults must give a right answer
    r = stack.openai().chat.completions.create(
        model="anything",  # one model per service: the name maps to it
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
    )
    text = r.choices[0].message.content
    assert "paris" in text.lower(), text
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_answer_joins_into_text_with_usage(stack):
    chunks = list(
        stack.openai().chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 2, "expected several content chunks"
    assert "paris" in "".join(pieces).lower()
    usage = chunks[-1].usage  # usage arrives in the last chunk, as OpenAI sends it
    assert usage is not None and usage.prompt_tokens > 5
    assert len([p for p in pieces if p]) <= usage.completion_tokens <= 24


def test_models(stack):
    models = stack.openai().models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]


def test_health_and_metrics(stack):
    assert httpx.get(f"{stack.url}/livez").status_code == 200
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    text = httpx.get(f"{stack.url}/metrics").text
    for family in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "ragserve_engine_restarts_total",
        "ragserve_gateway_prepare_seconds",
    ):
        assert family in text, family
    # Prometheus refuses a whole scrape that declares a family twice.
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert not {f for f in declared if declared.count(f) > 1}, "families declared twice on /metrics"


# --- security ---------------------------------------------------------------------------


def test_key_required(stack):
    with pytest.raises(openai.AuthenticationError) as e:
        stack.openai(api_key="wrong").models.list()
    assert "RAGSERVE_API_KEY" in e.value.body["message"]
    for path in ("/v1/models", "/v1/chat/completions", "/v1/nope"):
        r = httpx.post(f"{stack.url}{path}", json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # health and metrics stay open for probes and scrapers
    assert httpx.get(f"{stack.url}/readyz").status_code == 200


# --- bad input: always a 4xx in OpenAI's error shape -----------------------------------


def post_raw(stack, body: bytes | str, headers: dict | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{stack.url}/v1/chat/completions", content=body, headers=h, timeout=60)


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "code" in err
    return err


@pytest.mark.parametrize(
    "body, needle",
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"model": "x"}', "messages"),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "wizard", "content": "hi"}]}', "role"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "hi"}], "n": 100000}', "n"),
    ],
)
def test_bad_request_is_400(stack, body, needle):
    err = assert_openai_error(post_raw(stack, body), 400)
    assert needle in err["message"], err


def test_prompt_longer_than_context_is_400(stack):
    words = "Tell me about the capital of France. " * 600  # relevant, and far beyond the 2048-token context
    r = post_raw(stack, json.dumps({"messages": [{"role": "user", "content": words}], "max_tokens": 8}))
    err = assert_openai_error(r, 400)
    assert "context" in err["message"].lower() or "length" in err["message"].lower()
    with pytest.raises(openai.BadRequestError):
        stack.openai().chat.completions.create(model="x", messages=[{"role": "user", "content": words}], max_tokens=8)


def test_oversized_body_is_413(stack):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    err = assert_openai_error(post_raw(stack, big), 413)
    assert "RAGSERVE_MAX_BODY_BYTES" in err["message"]


def test_unknown_route_is_openai_404(stack):
    r = httpx.get(f"{stack.url}/v1/nope", headers={"Authorization": f"Bearer {stack.api_key}"})
    assert_openai_error(r, 404)


def test_server_still_serves_after_bad_input(stack):
    post_raw(stack, b"\xff\xfe not utf-8")
    r = stack.openai().chat.completions.create(model="x", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert r.choices[0].message.content
