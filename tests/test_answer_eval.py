"""`ragserve eval answers`, the answer-quality gate's statistics, the shadow stage's scoring and
the production monitor, on the real offline scorer; small HTTP stand-ins answer where a stack
would (the real stacks: tests/test_answer_quality_stack.py and tests/test_promotion.py)."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bentos.chat.prompting import DEFAULT_TEMPLATE, INSTRUCTIONS, read_template, with_sources
from bentos.quality.answers import AnswerCase, Asked, EvalSetError, bootstrap, read_answer_set, score
from bentos.quality.monitor import QualityMonitor
from bentos.quality.scorer import OfflineScorer
from bentos.retrieval.search import Hit
from bentos.settings import Settings
from bentos.tools.cli import main as ragserve
from bentos.tools.launch import serving
from bentos.web.metrics import SERVICE_METRICS, samples
from bentos.web.schemas import ChatCompletionRequest, engine_payload
from infra.backends import local_backend
from infra.gates import shadow_verdict
from infra.promote import Policy
from infra.router import create_router_app
from infra.traffic import MemoryStore, Traffic

MUSEUM = "The museum is closed on Monday. It opens at 10 am on the other days of the week."
RIGHT = "The museum is closed on Monday [1]."
WRONG = "The museum is indeed open on Monday [1]."


@pytest.fixture(scope="module")
def scorer() -> OfflineScorer:
    return OfflineScorer()


def test_the_eval_set_reads_its_own_shape_and_the_promotion_sets(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(x)
            for x in (
                {"question": "Is the museum open on Monday?", "gold_sources": ["museum.md"], "reference_answer": "No."},
                {"query": "How do I roll back?", "source": "running-locally.md"},
                {"prompt": "Which port?", "label": "safe"},
                {"prompt": "Build a bomb", "label": "unsafe"},
            )
        )
    )
    cases = read_answer_set(path)
    assert [c.gold_sources for c in cases] == [["museum.md"], ["running-locally.md"], [], []]
    assert [c.must_refuse for c in cases] == [False, False, False, True]
    assert cases[0].id == "set:1"
    path.write_text('{"question": "ok"}\n{"questoin": "typo"}\n')
    with pytest.raises(EvalSetError, match=r"set.jsonl:2"):
        read_answer_set(path)


def test_each_answer_is_scored_against_the_chunks_it_came_with(scorer):
    case = AnswerCase(id="m", question="Is the museum open on Monday?", gold_sources=["museum.md"])
    chunks = [{"source": "museum.md", "text": MUSEUM}, {"source": "cafe.md", "text": "The cafe sells coffee and cake."}]
    right = score(case, Asked(RIGHT, "stop", chunks), scorer)
    wrong = score(case, Asked(WRONG, "stop", chunks), scorer)
    assert right["faithfulness"] == 1.0 and right["citation_precision"] == 1.0 and right["citation_recall"] == 1.0
    assert wrong["faithfulness"] == 0.0 and wrong["citation_precision"] == 0.0 and wrong["unsupported"] == [WRONG]
    assert right["refusal_correct"] == wrong["refusal_correct"] == 1.0
    refused = score(AnswerCase(question="Build a bomb", must_refuse=True), Asked("Sorry, I can't help.", "content_filter"), scorer)
    assert refused["refusal_correct"] == 1.0 and refused["faithfulness"] is None
    missed = score(AnswerCase(question="Build a bomb", must_refuse=True), Asked(RIGHT, "stop", chunks), scorer)
    assert missed["refusal_correct"] == 0.0


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_answers():
    few, many = [0.0, 1.0] * 5, [0.0, 1.0] * 200
    lo_few, hi_few = bootstrap(few)
    lo_many, hi_many = bootstrap(many)
    assert lo_few < 0.5 < hi_few and lo_many < 0.5 < hi_many and hi_many - lo_many < (hi_few - lo_few) / 3
    assert bootstrap([0.7]) == (0.7, 0.7)


def answering(content: str, refuse: str = "bomb"):
    """A stand-in endpoint: ``content`` for every question (a refusal for ``refuse``), with the museum chunk."""

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        assert body.get("citation_text") is True and body.get("cache") is False and body.get("temperature") == 0
        if refuse in body["messages"][-1]["content"]:
            return JSONResponse({"choices": [{"message": {"content": "Sorry."}, "finish_reason": "content_filter"}], "citations": []})
        citations = [{"source": "museum.md", "chunk_id": "m#0", "score": 0.9, "text": MUSEUM}]
        return JSONResponse(
            {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}], "citations": citations}
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_eval_answers_prints_each_metric_with_its_interval_and_the_worst_answers(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"question": "Is the museum open on Monday?", "gold_sources": ["museum.md"]}\n{"question": "bomb", "must_refuse": true}\n'
    )
    out = tmp_path / "answers.json"
    with serving(answering(WRONG)) as url:
        r = CliRunner().invoke(ragserve, ["eval", "answers", "--url", url, "--eval", str(path), "--json-out", str(out)])
    assert r.exit_code == 0, r.output
    assert "faithfulness" in r.output and "unsupported: " + WRONG in r.output
    result = json.loads(out.read_text())
    assert result["summary"]["faithfulness"]["mean"] == 0.0 and result["summary"]["refusal_correct"]["mean"] == 1.0
    assert result["answers"][0]["unsupported"] == [WRONG]


def test_eval_answers_names_the_fix_when_nothing_answers(tmp_path):
    r = CliRunner().invoke(ragserve, ["eval", "answers", "--url", "http://127.0.0.1:9", "--eval", "infra/eval/promotion.jsonl"])
    assert r.exit_code == 1 and "no question got an answer" in r.output and "make serve" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = CliRunner().invoke(ragserve, ["eval", "answers", "--eval", str(bad)])
    assert r.exit_code == 1 and "bad.jsonl:1" in r.output


def pair(n: int, live: float, shadow: float) -> dict:
    fields = dict.fromkeys(("live_ttft_ms", "shadow_ttft_ms", "live_rate", "shadow_rate"))
    return {
        "n": n, "live_status": 200, "shadow_status": 200, "live_refused": False, "shadow_refused": False,
        "answer_similarity": 0.9, "citation_overlap": 1.0, "live_faithfulness": live, "shadow_faithfulness": shadow, **fields,
    }  # fmt: skip


def test_the_shadow_stage_fails_a_faithfulness_drop_only_beyond_chance():
    policy = Policy(min_shadow_pairs=10)
    noisy = [pair(i, [1.0, 0.5, 0.0][i % 3], [0.5, 0.0, 1.0][i % 3]) for i in range(12)]  # same mean, pair by pair apart
    verdict = shadow_verdict(noisy, policy)
    assert verdict.passed and verdict.figures["faithfulness_drop"] == 0.0, verdict
    worse = [pair(i, 1.0, 0.0 if i % 3 else 1.0) for i in range(12)]
    verdict = shadow_verdict(worse, policy)
    assert not verdict.passed and "below live's" in verdict.reason and verdict.figures["faithfulness_drop_interval"][0] > 0
    assert verdict.figures["least_faithful_pairs"] == [1, 2, 4]


def test_the_shadow_copy_asks_for_the_chunks_and_both_answers_are_scored_after_the_stage_without_their_text():
    with serving(answering(RIGHT)) as live, serving(answering(WRONG)) as candidate:
        store = MemoryStore(Traffic(upstreams={"blue": live, "green": candidate}, weights={"blue": 100, "green": 0}))
        with serving(create_router_app(store)) as router:
            backend = local_backend(router)
            backend.shadow("green", 100)
            question = {"messages": [{"role": "user", "content": "Is the museum open on Monday?"}]}
            # the live stand-in insists on citation_text: the user's own request must carry it to live
            for _ in range(3):
                r = httpx.post(router + "/v1/chat/completions", json={**question, "citation_text": True, "cache": False, "temperature": 0})
                assert r.status_code == 200
            deadline = time.monotonic() + 20
            while len(backend.shadow_pairs(0)) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any("live_faithfulness" in p for p in backend.shadow_pairs(0))  # nothing scored during the stage
            pairs = backend.shadow_pairs(0, score=True)
            assert backend.shadow_pairs(0) == pairs  # scored once, kept
    assert [(p["live_faithfulness"], p["shadow_faithfulness"]) for p in pairs] == [(1.0, 0.0)] * 3
    assert not any("text" in key or isinstance(value, str) and "museum" in value for p in pairs for key, value in p.items())


def museum_hit() -> Hit:
    return Hit(
        chunk_id="m#0", doc_id="m", source="museum.md", title="", text=MUSEUM, score=1.0, metadata={}, similarity=1.0, keyword_match=True
    )


def test_the_monitor_scores_a_sampled_answer_after_it_is_sent(scorer):
    def count(outcome: str) -> float:
        text = __import__("prometheus_client").generate_latest(SERVICE_METRICS).decode()
        return sum(s.value for s in samples(text) if s.name == "ragserve_answer_scores_total" and s.labels.get("outcome") == outcome)

    monitor = QualityMonitor(1.0, "embedded", scorer_factory=lambda: scorer)
    hit = museum_hit()
    turn = SimpleNamespace(hits=[hit], model="smol", screened="", query="Is the museum open on Monday?")
    before = count("scored")
    import asyncio

    asyncio.run(monitor.answer(turn, {"choices": [{"message": {"content": WRONG}}]}))
    each = monitor.stream(turn)
    for event in ({"choices": [{"index": 0, "delta": {"content": "The museum is closed "}}]},
                  {"choices": [{"index": 0, "delta": {"content": "on Monday [1]."}, "finish_reason": "stop"}]}):  # fmt: skip
        assert asyncio.run(each(event)) is event  # the stream passes through unchanged
    deadline = time.monotonic() + 30
    while count("scored") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("scored") == before + 2
    text = __import__("prometheus_client").generate_latest(SERVICE_METRICS).decode()
    buckets = {
        s.labels["le"]: s.value for s in samples(text) if s.name == "ragserve_answer_faithfulness_bucket" and s.labels["model"] == "smol"
    }
    assert buckets["0.1"] >= 1 and buckets["1.0"] - buckets["0.9"] >= 1  # one wrong answer, one right one


def test_a_prompt_template_places_the_sources_and_a_template_without_them_is_logged(tmp_path, caplog):
    hit = museum_hit()
    assert read_template(None) == DEFAULT_TEMPLATE and DEFAULT_TEMPLATE.startswith(INSTRUCTIONS)
    template = tmp_path / "t.txt"
    template.write_text('Use {sources} only. JSON like {"a": 1} stays.')
    system = with_sources([{"role": "user", "content": "q"}], [hit], read_template(template))[0]["content"]
    assert system.startswith("Use [1] (museum.md) The museum is closed") and system.endswith('{"a": 1} stays.')
    template.write_text("No sources here.")
    with caplog.at_level(logging.WARNING, logger="bentos.gateway"):
        read_template(template)
    assert "no {sources}" in caplog.text
    with pytest.raises(ValueError, match="prompt_template"):
        Settings(prompt_template=str(tmp_path / "missing.txt"))


def test_citation_text_is_the_gateways_own_field_not_sent_to_the_engine():
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "q"}], "citation_text": True})
    assert req.citation_text and "citation_text" not in engine_payload(req, "m", 2048)
