"""Judge mode through real Ragas: a loopback OpenAI-compatible server stands in for the judge model.

It answers Ragas' own prompts as a careful judge would: the statement-extraction prompt with the
answer's sentences, the verification prompt with verdict 1 for a statement whose words all appear
in the context, else 0. Its replies are deterministic, so the scores are known in advance.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ["RAGAS_DO_NOT_TRACK"] = "true"
pytest.importorskip("ragas", reason="ragas is the `judge` extra (in the lock files): make setup installs it")
import tiktoken.registry  # noqa: E402  (ragas' dependency; must not load an encoding, which downloads)

from bentos.quality.judge import RagasJudge  # noqa: E402

MODEL = "judge-stand-in"
CONTEXT = [
    "The Eiffel Tower is in Paris. It was completed in 1889.",
    "The tower is 330 metres tall and made of wrought iron.",
]
QUESTION = "Tell me about the Eiffel Tower."
SUPPORTED = "The Eiffel Tower is in Paris. The tower was completed in 1889."
HALF_SUPPORTED = "The Eiffel Tower is in Paris. The tower was painted gold in 1920."


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _task_input(prompt: str) -> dict:
    """The input Ragas put after its examples: the JSON after the last ``input: ``."""
    tail = prompt[prompt.rindex("\ninput: ") + len("\ninput: ") :]
    return json.loads(tail[: tail.rindex("\nOutput:")])


def judge_reply(prompt: str) -> str:
    if prompt.startswith("Given a question and an answer"):  # StatementGeneratorPrompt
        answer = _task_input(prompt)["answer"]
        return json.dumps({"statements": [s.strip() for s in re.split(r"(?<=[.!?])\s+", answer) if s.strip()]})
    if prompt.startswith("Your task is to judge the faithfulness"):  # NLIStatementPrompt
        data = _task_input(prompt)
        context = _words(data["context"])
        verdicts = []
        for s in data["statements"]:
            supported = _words(s) <= context
            reason = "all its words are in the context" if supported else "not in the context"
            verdicts.append({"statement": s, "reason": reason, "verdict": int(supported)})
        return json.dumps({"statements": verdicts})
    raise AssertionError(f"a prompt the stand-in does not know: {prompt[:80]!r}")


class StandIn(BaseHTTPRequestHandler):
    mode = "judge"  # or "garbage": never valid JSON; or "flaky": the first statement extraction is garbage
    prompts: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}]})
        else:
            self.send_error(404)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert request["model"] == MODEL
        prompt = request["messages"][-1]["content"]
        with self.lock:
            self.prompts.append(prompt)
            first_extraction = sum(p.startswith("Given a question") for p in self.prompts) == 1
        if self.mode == "garbage" or prompt.startswith("The output string did not satisfy"):
            content = "Sure! Here is my verdict: the answer looks fine to me."
        elif self.mode == "flaky" and prompt.startswith("Given a question") and first_extraction:
            content = "{statements: oops"
        else:
            content = judge_reply(prompt)
        self._send(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def stand_in(server, monkeypatch):
    monkeypatch.setattr(StandIn, "mode", "judge")
    monkeypatch.setattr(StandIn, "prompts", [])
    return server


def test_supported_answer_scores_one(stand_in):
    encodings = set(tiktoken.registry.ENCODINGS)
    result = RagasJudge(stand_in, MODEL, repeats=2, timeout_s=10).faithfulness(QUESTION, SUPPORTED, CONTEXT)
    assert result == {"faithfulness": 1.0, "runs": [1.0, 1.0], "failures": 0, "errors": []}
    # the prompts were Ragas' own, and nothing loaded a tiktoken encoding (a download when not cached)
    assert sum(p.startswith("Given a question and an answer") for p in StandIn.prompts) == 2
    assert sum(p.startswith("Your task is to judge the faithfulness") for p in StandIn.prompts) == 2
    assert set(tiktoken.registry.ENCODINGS) == encodings


def test_unsupported_statement_lowers_the_score(stand_in):
    # the URL may end in /v1 or not; no model: the first of /v1/models
    judge = RagasJudge(stand_in + "/v1/", None, repeats=3, timeout_s=10)
    result = judge.faithfulness(QUESTION, HALF_SUPPORTED, CONTEXT)
    assert judge.model == MODEL
    assert result["faithfulness"] == pytest.approx(0.5)
    assert result["runs"] == [0.5, 0.5, 0.5] and result["failures"] == 0
    # and the same judge scores again (a second event loop)
    assert judge.faithfulness(QUESTION, SUPPORTED, CONTEXT)["faithfulness"] == 1.0


def test_invalid_json_is_a_counted_failure(stand_in, monkeypatch):
    monkeypatch.setattr(StandIn, "mode", "garbage")
    result = RagasJudge(stand_in, MODEL, repeats=3, timeout_s=10).faithfulness(QUESTION, SUPPORTED, CONTEXT)
    assert result["faithfulness"] is None
    assert result["runs"] == [] and result["failures"] == 3 and len(result["errors"]) == 3
    assert all(e.startswith("invalid JSON from the judge") and len(e) <= 200 for e in result["errors"]), result["errors"]
    # Ragas asked the judge to repair its output before giving up
    assert any(p.startswith("The output string did not satisfy") for p in StandIn.prompts)


def test_failed_runs_are_left_out_of_the_mean(stand_in, monkeypatch):
    monkeypatch.setattr(StandIn, "mode", "flaky")
    result = RagasJudge(stand_in, MODEL, repeats=3, timeout_s=10).faithfulness(QUESTION, HALF_SUPPORTED, CONTEXT)
    assert result["failures"] == 1 and len(result["errors"]) == 1
    assert result["runs"] == [0.5, 0.5] and result["faithfulness"] == pytest.approx(0.5)


def test_no_statement_is_a_failure_not_nan(stand_in):
    result = RagasJudge(stand_in, MODEL, repeats=2, timeout_s=10).faithfulness(QUESTION, "", CONTEXT)
    assert result == {"faithfulness": None, "runs": [], "failures": 2, "errors": [result["errors"][0]] * 2}
    assert result["errors"][0].startswith("NaN")


def test_judge_down_is_a_failure_not_an_exception():
    result = RagasJudge("http://127.0.0.1:9", MODEL, repeats=2, timeout_s=2).faithfulness(QUESTION, SUPPORTED, CONTEXT)
    assert result["faithfulness"] is None and result["failures"] == 2
    assert all("Connection" in e for e in result["errors"]), result["errors"]
