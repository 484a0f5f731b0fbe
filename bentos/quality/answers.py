"""`ragserve eval answers`: ask an endpoint each question of an eval set, score every answer.

Per answer: faithfulness (the share of its claims the chunks it was given support), citation
precision (its ``[n]`` markers that point to a chunk supporting their sentence), citation recall of
the set's gold sources, relevance to the question, and whether it refused when it should and only
then. Per metric: the mean with a 95% bootstrap interval. The chunks come back with the answer
(``"citation_text": true``), so any endpoint of this project can be scored: a local stack, the
router or a deployed URL.

The eval set is JSONL: ``question`` and optionally ``gold_sources``, ``reference_answer``,
``must_refuse``, ``id``. The promotion eval set's lines are read too: ``query`` + ``source`` is a
question with that gold source, a ``safe`` prompt a question, an ``unsafe`` one must be refused.
"""

from __future__ import annotations

import json
import random
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import openai
from pydantic import BaseModel, Field, ValidationError, model_validator

METRICS = ("faithfulness", "citation_precision", "citation_recall", "relevance", "refusal_correct")
MAX_TOKENS = 128


class EvalSetError(Exception):
    """The eval set cannot be used; the message names the line and the fix."""


class AnswerCase(BaseModel):
    model_config = {"extra": "forbid"}
    id: str = ""
    question: str = Field(min_length=1)
    gold_sources: list[str] = []
    reference_answer: str | None = None
    must_refuse: bool = False

    @model_validator(mode="before")
    @classmethod
    def _promotion_shape(cls, v):
        """The promotion eval set's lines (``query``/``source``, ``prompt``/``label``)."""
        if isinstance(v, dict) and "question" not in v:
            if "query" in v:
                v = {"question": v["query"], "gold_sources": [v["source"]] if v.get("source") else []}
            elif "prompt" in v:
                v = {"question": v["prompt"], "must_refuse": v.get("label") == "unsafe"}
        return v


def read_answer_set(path: Path) -> list[AnswerCase]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise EvalSetError(f"cannot read the eval set {path}: {e}") from None
    cases = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = AnswerCase.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as e:
            raise EvalSetError(
                f'{path}:{n}: {e}\nEach line is JSON with "question" (and optionally "gold_sources", '
                f'"reference_answer", "must_refuse", "id").'
            ) from None
        cases.append(case if case.id else case.model_copy(update={"id": f"{path.stem}:{n}"}))
    if not cases:
        raise EvalSetError(f"{path} holds no questions")
    return cases


@dataclass
class Asked:
    content: str = ""
    finish_reason: str | None = None
    citations: list[dict] = field(default_factory=list)
    error: str | None = None


def ask(client: openai.OpenAI, question: str, max_tokens: int = MAX_TOKENS) -> Asked:
    """One plain chat, deterministic and past the answer cache, with the chunks' text."""
    try:
        r = client.chat.completions.create(
            model="ragserve",
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"citation_text": True, "cache": False},
        )
    except openai.APIError as e:
        return Asked(error=f"{type(e).__name__}: {e}"[:300])
    choice = r.choices[0]
    return Asked(choice.message.content or "", choice.finish_reason, (r.model_extra or {}).get("citations") or [])


def client_for(url: str, api_key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", max_retries=1, timeout=180)


def ask_all(url: str, api_key: str | None, cases: list[AnswerCase], concurrency: int = 4, max_tokens: int = MAX_TOKENS) -> list[Asked]:
    client = client_for(url, api_key)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda c: ask(client, c.question, max_tokens), cases))


def score(case: AnswerCase, asked: Asked, scorer) -> dict:
    """One answer's metrics (None where a metric does not apply) and its unsupported sentences."""
    row = {"id": case.id, "must_refuse": case.must_refuse, "error": asked.error}
    if asked.error:
        return {**row, **dict.fromkeys(METRICS), "refused": None, "unsupported": []}
    chunks = [c.get("text") or "" for c in asked.citations]
    s = scorer.score(case.question, asked.content, chunks)
    refused = asked.finish_reason == "content_filter" or s.refused
    cited = {asked.citations[n - 1]["source"] for sent in s.sentences for n in sent.cites if 0 < n <= len(asked.citations)}
    # recall of the gold sources among those the answer cites; an answer without markers is
    # credited with the sources it came with (the `citations` list the user sees)
    shown = cited or {c["source"] for c in asked.citations}
    recall = sum(g in shown for g in case.gold_sources) / len(case.gold_sources) if case.gold_sources and not refused else None
    return {
        **row,
        "refused": refused,
        "refusal_correct": float(refused == case.must_refuse),
        "faithfulness": None if refused else s.faithfulness,
        "citation_precision": None if refused else s.citation_precision,
        "citation_recall": recall,
        "relevance": None if refused else round(s.relevance, 4),
        "claims": len(s.sentences),
        "unsupported": s.unsupported,
    }


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile interval of the mean."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def summary(rows: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        values = [r[m] for r in rows if r.get(m) is not None]
        low, high = bootstrap(values)
        out[m] = {
            "mean": round(statistics.fmean(values), 4) if values else None,
            "low": round(low, 4),
            "high": round(high, 4),
            "n": len(values),
        }
    out["errors"] = sum(1 for r in rows if r["error"])
    return out


def worst(rows: list[dict], n: int) -> list[dict]:
    """The answers with the lowest faithfulness, then wrong refusals: what a person reads first."""
    answered = [r for r in rows if r.get("faithfulness") is not None]
    ranked = sorted(answered, key=lambda r: r["faithfulness"])
    wrong = [r for r in rows if r.get("refusal_correct") == 0.0]
    return [*ranked[:n], *wrong[:n]][: 2 * n]


def evaluate(url: str, api_key: str | None, cases: list[AnswerCase], scorer, concurrency: int = 4) -> dict:
    asked = ask_all(url, api_key, cases, concurrency)
    rows = [score(c, a, scorer) for c, a in zip(cases, asked)]
    result = {"scorer": scorer.name, "questions": len(cases), "summary": summary(rows), "answers": rows}
    judged = getattr(scorer, "judged", None)
    if judged is not None:  # judge mode: its failed runs are counted, left out of the mean, and shown
        result["judge"] = {
            "answers": len(judged),
            "failed_runs": sum(j["failures"] for j in judged),
            "answers_without_a_score": sum(j["faithfulness"] is None for j in judged),
            "errors": [e for j in judged for e in j["errors"]][:5],
        }
    return result


def print_report(result: dict, n_worst: int) -> None:
    click.echo(f"{result['questions']} questions, scorer: {result['scorer']}, errors: {result['summary']['errors']}")
    if judge := result.get("judge"):
        click.echo(
            f"judge: {judge['failed_runs']} failed runs (left out of the means), {judge['answers_without_a_score']} of "
            f"{judge['answers']} answers without a score" + (f"; e.g. {judge['errors'][0]}" if judge["errors"] else "")
        )
    click.echo(f"{'metric':<20}{'mean':>8}{'95% interval':>20}{'n':>6}")
    for m in METRICS:
        f = result["summary"][m]
        mean = "-" if f["mean"] is None else f"{f['mean']:.3f}"
        interval = "-" if f["mean"] is None else f"[{f['low']:.3f}, {f['high']:.3f}]"
        click.echo(f"{m:<20}{mean:>8}{interval:>20}{f['n']:>6}")
    for r in worst(result["answers"], n_worst):
        why = (
            f"faithfulness {r['faithfulness']:.2f}"
            if r.get("faithfulness") is not None
            else f"refused={r['refused']}, must_refuse={r['must_refuse']}"
        )
        click.echo(f"\n{r['id']}: {why}")
        for sentence in r["unsupported"][:3]:
            click.echo(f"  unsupported: {sentence}")
