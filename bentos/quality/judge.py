"""Judge mode: an answer's faithfulness scored by Ragas with an LLM judge.

The metric is Ragas' own ``Faithfulness`` (ragas 0.3.1, the ``judge`` extra): its prompts ask the
judge to break the answer into statements, then to give each statement a verdict (1 when the
chunks support it, else 0); the score is the share of statements with verdict 1. Nothing of the
metric is ours: we only point it at an OpenAI-compatible endpoint (``--judge-url``,
``--judge-model``; a vLLM server, the router, any provider) through ``langchain-openai``.

Repeats and failures. One answer is scored ``repeats`` times (concurrently); the result is the mean
of the runs that produced a number. A run is a *failure* when it raises or returns NaN:

- the judge's output is not valid JSON for the prompt's schema even after Ragas' own repair
  requests (``RagasOutputParserException``, or LangChain's ``OutputParserException``);
- the judge stopped early (``LLMDidNotFinishException``: finish_reason is not "stop"), the request
  timed out or the endpoint answered with an error;
- the judge extracted no statement at all: Ragas returns NaN then.

A failure is counted in ``failures``, its cause kept (type and message, shortened) in ``errors`` and
left out of the mean; when every run fails, ``faithfulness`` is None, never NaN, and nothing is
raised. So ``{"faithfulness": 0.75, "runs": [1.0, 0.5], "failures": 1, "errors": [...]}`` reads:
three runs, one lost to the judge, the other two averaged.

Ragas sends its prompts at temperature 1e-8 (``temperature=None`` keeps that); repeats then mostly
guard against a judge's occasional malformed output. A ``temperature`` makes the repeats samples of
the judge instead.

Ragas is imported lazily, here only, with its telemetry off (``RAGAS_DO_NOT_TRACK=true``); the rest
of the project never imports it. It imports tiktoken but the faithfulness metric never loads an
encoding, so nothing is downloaded (a test checks it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import os
import threading
from typing import Any

ERROR_CHARS = 200


def _short(e: BaseException) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    if "OutputParser" in type(e).__name__:
        text = "invalid JSON from the judge (" + text + ")"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def _api_base(url: str) -> str:
    """The OpenAI base URL: the project's URLs are given without ``/v1`` (as ``ragserve eval`` does)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class RagasJudge:
    """Faithfulness of an answer to its chunks, by Ragas with an OpenAI-compatible judge.

    ``model`` None asks the endpoint's ``/v1/models`` and takes the first. ``timeout_s`` bounds each
    request to the judge (Ragas sends two per run, more when it asks the judge to repair its JSON).
    """

    name = "ragas"

    def __init__(
        self,
        url: str,
        model: str | None,
        api_key: str | None = None,
        repeats: int = 3,
        timeout_s: float = 120,
        temperature: float | None = None,
    ):
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, not {repeats}")
        self.url = _api_base(url)
        self.model = model
        self.api_key = api_key or "none"
        self.repeats = repeats
        self.timeout_s = timeout_s
        self.temperature = temperature
        self._metric = None
        self._lock = threading.Lock()

    def _resolve_model(self) -> str:
        if not self.model:
            import openai

            client = openai.OpenAI(base_url=self.url, api_key=self.api_key, timeout=self.timeout_s, max_retries=1)
            models = client.models.list().data
            if not models:
                raise RuntimeError(f"{self.url}/models lists no model; give the judge's model name")
            self.model = models[0].id
        return self.model

    def metric(self):
        """Ragas' Faithfulness metric bound to the judge (built once, on first use)."""
        with self._lock:
            if self._metric is None:
                self._metric = self._build_metric()
            return self._metric

    def _build_metric(self):
        os.environ["RAGAS_DO_NOT_TRACK"] = "true"  # before ragas is imported: no usage events
        from langchain_openai import ChatOpenAI
        from ragas.llms import LangchainLLMWrapper
        from ragas.metrics import Faithfulness
        from ragas.run_config import RunConfig

        temperature = self.temperature

        class Wrapper(LangchainLLMWrapper):
            def get_temperature(self, n: int) -> float:
                return super().get_temperature(n) if temperature is None else temperature

        chat = ChatOpenAI(
            base_url=self.url,
            model=self._resolve_model(),
            api_key=self.api_key,
            temperature=temperature or 0.0,
            timeout=self.timeout_s,
            max_retries=1,
        )
        # Ragas sets the client's request timeout from the run config; it retries rate limits only.
        llm = Wrapper(chat, run_config=RunConfig(timeout=self.timeout_s, max_retries=3, max_wait=10))
        return Faithfulness(llm=llm)

    async def afaithfulness(self, question: str, answer: str, chunks: list[str]) -> dict:
        from ragas.dataset_schema import SingleTurnSample

        try:
            metric = self.metric()
        except Exception as e:  # no model listed, endpoint down while asking /v1/models
            return {"faithfulness": None, "runs": [], "failures": self.repeats, "errors": [_short(e)] * self.repeats}
        sample = SingleTurnSample(user_input=question, response=answer, retrieved_contexts=list(chunks))
        results = await asyncio.gather(*(metric.single_turn_ascore(sample) for _ in range(self.repeats)), return_exceptions=True)
        runs: list[float] = []
        errors: list[str] = []
        for r in results:
            if isinstance(r, BaseException):
                if not isinstance(r, Exception):  # KeyboardInterrupt, cancellation
                    raise r
                errors.append(_short(r))
            elif r is None or math.isnan(float(r)):
                errors.append("NaN: Ragas got no statement out of the answer from the judge")
            else:
                runs.append(float(r))
        return {
            "faithfulness": sum(runs) / len(runs) if runs else None,
            "runs": runs,
            "failures": len(errors),
            "errors": errors,
        }

    def faithfulness(self, question: str, answer: str, chunks: list[str]) -> dict:
        """``{"faithfulness": mean of the valid runs or None, "runs": [...], "failures": n, "errors": [...]}``"""
        coro = self.afaithfulness(question, answer, chunks)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # called from a running event loop: run ours in a thread of its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()


class JudgedScorer:
    """Another scorer's metrics with faithfulness replaced by the judge's (``ragserve eval answers
    --judge-url``). The judge's runs and failures per answer are kept in ``judged``, in order."""

    def __init__(self, base: Any, judge: RagasJudge):
        self.base = base
        self.judge = judge
        self.name = f"{judge.name} judge ({judge.model or 'first model'} at {judge.url}) + {getattr(base, 'name', 'base')}"
        self.judged: list[dict] = []

    def score(self, question: str, answer: str, chunks: list[str]):
        s = self.base.score(question, answer, chunks)
        if getattr(s, "refused", False):
            return s
        j = self.judge.faithfulness(question, answer, chunks)
        self.judged.append(j)
        return _with(s, faithfulness=j["faithfulness"])


def _with(obj: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **changes)
    if hasattr(obj, "model_copy"):  # pydantic
        return obj.model_copy(update=changes)
    if isinstance(obj, dict):
        return {**obj, **changes}
    raise TypeError(f"cannot set faithfulness on a {type(obj).__name__}")
