"""Retrieval-augmented chat through the served gateway: citations, /v1/retrieve, live re-index."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from bentos.chat.prompting import NOT_FOUND
from conftest import CORPUS, build_index, log_lines

pytestmark = pytest.mark.stack


def post(stack, path: str, body) -> httpx.Response:
    h = {"Authorization": f"Bearer {stack.api_key}"}
    kw = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(f"{stack.url}{path}", headers=h, timeout=60, **kw)


def ask(stack, question: str, **kw):
    return stack.openai().chat.completions.create(model="x", messages=[{"role": "user", "content": question}], max_tokens=40, **kw)


def test_answer_cites_the_right_source(stack):
    r = ask(stack, "What is the capital of France?")
    cites = r.model_extra["citations"]
    assert cites[0]["source"] == "geography.md" and cites[0]["chunk_id"].startswith("geography.md#")
    assert [c["score"] for c in cites] == sorted((c["score"] for c in cites), reverse=True)
    assert "paris" in r.choices[0].message.content.lower()

    r = ask(stack, "How many days do Zorblax customers have to ask for a refund?")
    assert r.model_extra["citations"][0]["source"] == "handbook.md"
    r = ask(stack, "When are firmware updates released?")
    assert r.model_extra["citations"][0]["source"] == "faq/firmware"  # a JSONL record's own source


CAPITAL = {
    "type": "object",
    "properties": {"capital": {"type": "string", "maxLength": 24}},
    "required": ["capital"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_json_schema_answer_stays_json_with_citations_beside_it(stack, stream):
    """The client fixed the format: the output rails must not append a source list to it."""
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL, "strict": True}}
    r = stack.openai().chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=60,
        response_format=fmt,
        stream=stream,
    )
    if stream:
        chunks = list(r)
        content, cites = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].model_extra["citations"]
    else:
        content, cites = r.choices[0].message.content, r.model_extra["citations"]
    answer = json.loads(content)
    assert set(answer) == {"capital"} and isinstance(answer["capital"], str)
    assert cites and cites[0]["source"] == "geography.md"


def test_each_step_to_the_first_text_is_exported(stack):
    """What `ragserve bench serve` reads to split the added TTFT: one observation per step of a
    streamed chat, and none from the model service: the stream came from the engine directly."""
    from bentos.tools.bench import PREPARE_STEP, step_totals

    before = step_totals(stack.url, stack.api_key)
    pieces = [
        c.choices[0].delta.content
        for c in ask(stack, "What is the capital city of France?", stream=True, extra_body={"cache": False})
        if c.choices and c.choices[0].delta.content
    ]
    after = step_totals(stack.url, stack.api_key)
    assert pieces
    steps = ["request", "embed", "input_rails", "cache_lookup", "search", "retrieve", "retrieval_rails", "prompt", PREPARE_STEP]
    for step in [*steps, "model_headers", "model_first_text", "hold_back"]:
        (s0, n0), (s1, n1) = before.get(step, (0.0, 0.0)), after[step]
        assert n1 == n0 + 1 and 0 <= s1 - s0 < 60, (step, s1 - s0, n1 - n0)
    assert after.get("engine_first_text") == before.get("engine_first_text")  # no relay through the model service


def test_streamed_answer_carries_citations_first(stack):
    chunks = list(ask(stack, "What is the office cat called?", stream=True))
    assert chunks[0].model_extra["citations"][0]["source"] == "office.html"
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_nothing_relevant_says_so(stack):
    for stream in (False, True):
        if stream:
            chunks = list(ask(stack, "How do I bake sourdough bread at home?", stream=True))
            text, cites = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].model_extra["citations"]
        else:
            r = ask(stack, "How do I bake sourdough bread at home?")
            text, cites = r.choices[0].message.content, r.model_extra["citations"]
        assert text == NOT_FOUND and cites == []


def test_retrieve_ranks_chunks(stack):
    r = post(stack, "/v1/retrieve", {"query": "Where do Zorblax robots ship from?", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chunks"][0]["source"] == "handbook.md" and "Tilburg" in body["chunks"][0]["text"]
    assert len(body["chunks"]) == 3 and isinstance(body["index_version"], int)
    assert set(body["timing_ms"]) == {"embed", "search"}


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"query": "", "k": 3}, "query"),
        ({"query": "   ", "k": 3}, "empty"),
        ({"query": "cat", "k": 0}, "k"),
        ({"query": "cat", "k": -2}, "k"),
        ({"query": "cat", "k": 10**6}, "RAGSERVE_MAX_K"),
        ({"k": 3}, "query"),
        ({"query": "cat", "k": 3, "filter": "x"}, "filter"),
        ('{"query": ', "JSON"),
        ({"query": ["a"], "k": 3}, "query"),
    ],
)
def test_retrieve_bad_input_is_400(stack, body, needle):
    r = post(stack, "/v1/retrieve", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_new_publication_is_served_without_restart(stack, tmp_path):
    docs = shutil.copytree(CORPUS, tmp_path / "docs")
    (docs / "parking.md").write_text("# Parking\n\nVisitors park in garage Q7 behind the Zorblax warehouse.\n")
    try:
        build_index(stack.db, docs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            top = post(stack, "/v1/retrieve", {"query": "Where do visitors park?", "k": 1}).json()["chunks"][0]
            if top["source"] == "parking.md":
                break
            time.sleep(0.3)
        assert top["source"] == "parking.md"
        assert ask(stack, "Where do visitors park?").model_extra["citations"][0]["source"] == "parking.md"
    finally:
        build_index(stack.db, CORPUS)  # leave the shared stack's corpus as it was


def test_structured_logs_carry_request_id_and_no_query_text(stack):
    rid = "test-" + str(time.time_ns())
    secret = "Zorblax refund window for customer 4711"
    r = httpx.post(
        f"{stack.url}/v1/retrieve",
        json={"query": secret, "k": 2},
        headers={"Authorization": f"Bearer {stack.api_key}", "X-Request-ID": rid},
    )
    assert r.headers["x-request-id"] == rid
    assert len(httpx.get(f"{stack.url}/v1/models").headers["x-request-id"]) == 32  # one is made up if absent
    lines = log_lines(stack.log_path, rid)
    access = [line for line in lines if line["msg"] == "request"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/retrieve" and access[0]["ms"] > 0
    assert secret not in stack.log_path.read_text()
