"""The checks a candidate must pass before and while it takes traffic.

Before traffic: it answers (smoke), it guards and retrieves as well as the frozen eval set asks
(quality), and it is not slower than the live version measured in the same run (performance).
While traffic shifts: its error rate, and its time to first text, total time and pace (from the
router's metrics, or each KServe revision's gateways; time to headers where only that is
measured), against the live slot's over the same window.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from pydantic import BaseModel, Field, ValidationError, model_validator

from bentos.quality.answers import bootstrap
from bentos.tools.launch import answers, wait_for
from bentos.tools.loadgen import run_load
from bentos.web.metrics import samples
from bentos.web.timing import FeltMetrics


@dataclass
class Verdict:
    gate: str
    passed: bool
    figures: dict = field(default_factory=dict)
    reason: str = ""


class GateError(Exception):
    """The eval set or a policy value cannot be used: a usage error, not a failed gate."""


# --- the frozen eval set ------------------------------------------------------------------------


class EvalCase(BaseModel):
    """One line of the eval set: a guardrail case (``prompt`` and ``label``) or a retrieval case
    (``query`` and the ``source`` that must be among the retrieved chunks)."""

    model_config = {"extra": "forbid"}
    prompt: str | None = None
    label: str | None = Field(None, pattern="^(safe|unsafe)$")
    query: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> EvalCase:
        if bool(self.prompt and self.label) == bool(self.query and self.source):
            raise ValueError('give either "prompt" and "label" (safe/unsafe), or "query" and "source"')
        return self


def read_eval_set(path: Path) -> list[EvalCase]:
    cases = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise GateError(f"cannot read the eval set {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                cases.append(EvalCase.model_validate(json.loads(line)))
            except (json.JSONDecodeError, ValidationError) as e:
                raise GateError(f"{path}:{n}: {e}") from None
    kinds = {c.label or "retrieval" for c in cases}
    if not {"safe", "unsafe", "retrieval"} <= kinds:
        raise GateError(f"{path} needs safe, unsafe and retrieval cases; it has {sorted(kinds) or 'none'}")
    return cases


# --- gates on the candidate alone ----------------------------------------------------------------


def is_ready(url: str) -> bool:
    return answers(url + "/readyz")


def wait_ready(url: str, timeout_s: float, poll_s: float = 1.0) -> float:
    """Seconds until ``url``/readyz answered 200; raises TimeoutError after ``timeout_s``."""
    return wait_for(lambda: is_ready(url), timeout_s, f"{url}/readyz answering 200", poll_s)


def client(url: str, api_key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key or "none", max_retries=0, timeout=120)


def smoke(url: str, api_key: str | None, question: str) -> Verdict:
    """A plain and a streamed answer with citations, through the official client."""
    c = client(url, api_key)
    figures: dict = {}
    try:
        t0 = time.perf_counter()
        r = c.chat.completions.create(model="ragserve", messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0)
        figures["chat_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if not r.choices or not r.choices[0].message.content or not isinstance((r.model_extra or {}).get("citations"), list):
            return Verdict("smoke", False, figures, "chat answered without content or without a citations list")
        t0 = time.perf_counter()
        chunks = list(
            c.chat.completions.create(
                model="ragserve", messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0, stream=True
            )
        )
        figures["stream_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        if not text or not [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]:
            return Verdict("smoke", False, figures, "the stream carried no text or never finished")
    except openai.APIError as e:
        return Verdict("smoke", False, figures, f"{type(e).__name__}: {e}"[:300])
    return Verdict("smoke", True, figures)


def quality(
    url: str, api_key: str | None, cases: list[EvalCase], min_block_rate: float, max_false_positive: float, min_retrieval_hit: float
) -> Verdict:
    """The eval set against the candidate: unsafe prompts refused (finish_reason content_filter),
    safe ones answered, each retrieval query finding its source in the chunks the prompt gets."""
    c = client(url, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def run(case: EvalCase) -> bool:
        if case.prompt:
            r = c.chat.completions.create(
                model="ragserve", messages=[{"role": "user", "content": case.prompt}], max_tokens=8, temperature=0
            )
            return r.choices[0].finish_reason == "content_filter"
        r = httpx.post(url + "/v1/retrieve", json={"query": case.query, "k": 4}, headers=headers, timeout=60)
        r.raise_for_status()
        return case.source in [ch["source"] for ch in r.json()["chunks"]]

    try:
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(run, cases))
    except (openai.APIError, httpx.HTTPError) as e:
        return Verdict("quality", False, {}, f"the eval set could not run: {type(e).__name__}: {e}"[:300])
    by = {"unsafe": [], "safe": [], "retrieval": []}
    for case, hit in zip(cases, outcomes):
        by[case.label or "retrieval"].append(hit)
    figures = {
        "unsafe": len(by["unsafe"]),
        "block_rate": round(sum(by["unsafe"]) / len(by["unsafe"]), 3),
        "safe": len(by["safe"]),
        "false_positive_rate": round(sum(by["safe"]) / len(by["safe"]), 3),
        "retrieval": len(by["retrieval"]),
        "retrieval_hit_rate": round(sum(by["retrieval"]) / len(by["retrieval"]), 3),
    }
    failed = [
        f"block rate {figures['block_rate']:.0%} < {min_block_rate:.0%}" if figures["block_rate"] < min_block_rate else "",
        f"false positives {figures['false_positive_rate']:.0%} > {max_false_positive:.0%}"
        if figures["false_positive_rate"] > max_false_positive
        else "",
        f"retrieval hits {figures['retrieval_hit_rate']:.0%} < {min_retrieval_hit:.0%}"
        if figures["retrieval_hit_rate"] < min_retrieval_hit
        else "",
    ]
    reason = "; ".join(f for f in failed if f)
    return Verdict("quality", not reason, figures, reason)


def grounding(live_url: str, cand_url: str, api_key: str | None, cases: list[EvalCase], policy) -> Verdict:
    """The eval set's questions asked of live and of the candidate, every answer scored offline
    against the chunks it was given (bentos/quality): the candidate's faithfulness and citation
    precision must not fall more than the policy's margins below live's on the same questions,
    and its faithfulness must reach the floor. Figures, and the worst answers' ids, no text."""
    from bentos.quality.answers import AnswerCase, ask_all, score, summary
    from bentos.quality.scorer import OfflineScorer

    p = policy
    questions = [AnswerCase.model_validate(c.model_dump(exclude_none=True)) for c in cases]
    questions = [q.model_copy(update={"id": f"eval:{i}"}) for i, q in enumerate(questions, 1) if not q.must_refuse]
    with ThreadPoolExecutor(2) as pool:  # both slots at once: each answers its own questions
        asked = list(pool.map(lambda url: ask_all(url, api_key, questions), (live_url, cand_url)))
    scorer = OfflineScorer()
    rows = {slot: [score(q, a, scorer) for q, a in zip(questions, answers)] for slot, answers in zip(("live", "candidate"), asked)}
    sums = {slot: summary(r) for slot, r in rows.items()}
    figures: dict = {"questions": len(questions)}
    for slot in ("live", "candidate"):
        for m in ("faithfulness", "citation_precision"):
            f = sums[slot][m]
            figures[f"{slot}_{m}"] = f["mean"]
            figures[f"{slot}_{m}_interval"] = [f["low"], f["high"]] if f["mean"] is not None else None
        figures[f"{slot}_errors"] = sums[slot]["errors"]
    answered = [r for r in rows["candidate"] if r["faithfulness"] is not None]
    figures["worst"] = [{"id": r["id"], "faithfulness": r["faithfulness"]} for r in sorted(answered, key=lambda r: r["faithfulness"])[:3]]

    def drop(m: str) -> float | None:
        live, cand = figures[f"live_{m}"], figures[f"candidate_{m}"]
        if live is None:
            return None  # live has nothing to compare with (no answers, or no [n] markers)
        return round(live - (cand or 0.0), 4)

    figures["faithfulness_drop"], figures["citation_precision_drop"] = drop("faithfulness"), drop("citation_precision")
    cand_f = figures["candidate_faithfulness"]
    failed = [
        f"{figures['candidate_errors']} of {len(questions)} questions got no answer" if figures["candidate_errors"] else "",
        f"faithfulness {cand_f} < {p.min_faithfulness}" if (cand_f or 0.0) < p.min_faithfulness else "",
        f"faithfulness {cand_f} is {figures['faithfulness_drop']} below live's {figures['live_faithfulness']} "
        f"(max drop {p.max_faithfulness_drop})"
        if (figures["faithfulness_drop"] or 0) > p.max_faithfulness_drop
        else "",
        f"citation precision {figures['candidate_citation_precision']} is {figures['citation_precision_drop']} below live's "
        f"{figures['live_citation_precision']} (max drop {p.max_citation_precision_drop})"
        if (figures["citation_precision_drop"] or 0) > p.max_citation_precision_drop
        else "",
    ]
    reason = "; ".join(f for f in failed if f)
    return Verdict("grounding", not reason, figures, reason)


def performance(
    live_url: str,
    candidate_url: str,
    api_key: str | None,
    prompts: list[str],
    max_ttft_ratio: float,
    min_tps_ratio: float,
    requests: int = 8,
    concurrency: int = 2,
    max_tokens: int = 16,
) -> Verdict:
    """Streaming TTFT and tokens/s of the candidate against the live slot, measured in this run
    with the same prompts and fixed output lengths (live, candidate, live, candidate: drift in
    the machine's load hits both), past the answer cache: what is compared is each release's
    own path to the model, not which one has the questions cached."""

    def no_cache(i: int) -> dict:
        return {"cache": False}

    figures: dict = {}
    reports: dict[str, list] = {"live": [], "candidate": []}
    for _ in range(2):
        for name, url in (("live", live_url), ("candidate", candidate_url)):
            reports[name].append(
                asyncio.run(run_load(url + "/v1", api_key or "", "ragserve", concurrency, requests, max_tokens, prompts, 120, no_cache))
            )
    for name, rs in reports.items():
        failed = sum(r.failed for r in rs)
        if failed:
            return Verdict(
                "performance", False, {f"{name}_failed": failed}, f"{failed} {name} requests failed: {rs[-1].errors or rs[0].errors}"
            )
        figures[f"{name}_ttft_p50_ms"] = round(sum(r.ttft_p50_ms for r in rs) / len(rs), 1)
        figures[f"{name}_tokens_per_s"] = round(sum(r.tokens_per_s for r in rs) / len(rs), 1)
    figures["ttft_ratio"] = round(figures["candidate_ttft_p50_ms"] / max(figures["live_ttft_p50_ms"], 1e-3), 3)
    figures["tps_ratio"] = round(figures["candidate_tokens_per_s"] / max(figures["live_tokens_per_s"], 1e-3), 3)
    failed = [
        f"TTFT {figures['ttft_ratio']}x live > {max_ttft_ratio}x" if figures["ttft_ratio"] > max_ttft_ratio else "",
        f"tokens/s {figures['tps_ratio']}x live < {min_tps_ratio}x" if figures["tps_ratio"] < min_tps_ratio else "",
    ]
    reason = "; ".join(f for f in failed if f)
    return Verdict("performance", not reason, figures, reason)


# --- watching a traffic step from metrics ---------------------------------------------------------


def felt_series(prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """SlotCounts field -> the felt-latency histogram, and -> the counter's sample, under ``prefix``."""
    name = FeltMetrics.names(prefix)
    return {"ttft": name["ttft"], "total": name["total"]}, {"chunks": name["chunks"] + "_total", "stream_s": name["seconds"] + "_total"}


ROUTER_FELT, PACE_COUNTERS = felt_series("ragserve_router")  # the router's, per slot (infra/router.py)
HISTOGRAMS = {"buckets": "ragserve_router_response_seconds", **ROUTER_FELT}


@dataclass
class SlotCounts:
    """Cumulative counters of one slot: attempts that succeeded, that failed, and histograms
    (upper bound -> cumulative count) of the successful ones: time to the response headers
    (``buckets``), and where the router measures them, a stream's time to first text (``ttft``), a
    plain answer's total time (``total``), and the streams' chunks with text after the first and
    the seconds they took (``chunks``, ``stream_s``)."""

    ok: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    ttft: dict[float, float] = field(default_factory=dict)
    total: dict[float, float] = field(default_factory=dict)
    chunks: float = 0.0
    stream_s: float = 0.0

    def minus(self, before: SlotCounts) -> SlotCounts:
        def less(name: str) -> dict[float, float]:
            mine, theirs = getattr(self, name), getattr(before, name)
            return {le: n - theirs.get(le, 0.0) for le, n in mine.items()}

        return SlotCounts(
            self.ok - before.ok,
            self.errors - before.errors,
            **{name: less(name) for name in HISTOGRAMS},
            chunks=self.chunks - before.chunks,
            stream_s=self.stream_s - before.stream_s,
        )

    @property
    def attempts(self) -> float:
        return self.ok + self.errors

    @property
    def answered(self) -> float:
        """The attempts a step can judge: the failed ones, and where what users feel is measured,
        the answers that have ended (the histograms take them at the end); elsewhere every attempt.
        An answer still on its way counts in ``attempts`` only."""
        if not (self.ttft or self.total):
            return self.attempts
        return self.errors + max(self.ttft.values(), default=0.0) + max(self.total.values(), default=0.0)

    @property
    def pace(self) -> float | None:
        """Chunks with text per second over all the streams: their chunks over their seconds. On a
        shared engine one stream's pace swings with how many others decode beside it (here 6 to 19
        chunks/s in one run), so a median of a few lands on either swing; and one stream whose text
        came in a burst sets a mean of a few paces, but adds almost no seconds to this."""
        return self.chunks / self.stream_s if self.stream_s > 0 else None

    def quantile(self, q: float, histogram: str = "buckets") -> float | None:
        """Like Prometheus' histogram_quantile: linear within the bucket that holds the rank."""
        buckets = getattr(self, histogram)
        bounds = sorted(buckets)
        if not bounds or buckets[bounds[-1]] <= 0:
            return None
        rank, prev_le, prev_n = q * buckets[bounds[-1]], 0.0, 0.0
        for le in bounds:
            n = buckets[le]
            if n >= rank:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
            prev_le, prev_n = le, n
        return prev_le


def router_counts(metrics_text: str) -> dict[str, SlotCounts]:
    """Per-slot counts from the router's Prometheus text (``ragserve_router_*``)."""
    counts: dict[str, SlotCounts] = {}
    for s in samples(metrics_text):
        slot = s.labels.get("upstream")
        if slot is None:
            continue
        c = counts.setdefault(slot, SlotCounts())
        if s.name == "ragserve_router_attempts_total":
            if s.labels["outcome"] == "ok":
                c.ok += s.value
            else:
                c.errors += s.value
        else:
            for name, metric in PACE_COUNTERS.items():
                if s.name == metric:
                    setattr(c, name, s.value)
            for name, metric in HISTOGRAMS.items():
                if s.name == metric + "_bucket":
                    getattr(c, name)[float(s.labels["le"])] = s.value
    return counts


GATEWAY_HISTOGRAMS, GATEWAY_PACE_COUNTERS = felt_series("ragserve_chat")  # the gateway's own (bentos/web/timing.py)


def gateway_counts(metrics_text: str) -> SlotCounts:
    """One gateway's counts of chat requests from its /metrics: BentoML's request counter and
    duration (which also carry the model service's, told apart by ``service_name``) and the
    gateway's felt-latency histograms."""
    c = SlotCounts()
    for s in samples(metrics_text):
        labels = s.labels
        for name, metric in GATEWAY_HISTOGRAMS.items():
            if s.name == metric + "_bucket":
                getattr(c, name)[float(labels["le"])] = s.value
        for name, metric in GATEWAY_PACE_COUNTERS.items():
            if s.name == metric:
                setattr(c, name, s.value)
        if labels.get("service_name") != "ragserve-gateway" or not labels.get("endpoint", "").startswith("/v1/chat"):
            continue
        failed = labels.get("http_response_code", "").startswith("5")
        if s.name == "bentoml_service_request_total":
            if failed:
                c.errors += s.value
            else:
                c.ok += s.value
        elif s.name == "bentoml_service_request_duration_seconds_bucket" and not failed:
            le = float(labels["le"])
            c.buckets[le] = c.buckets.get(le, 0.0) + s.value
    return c


def step_verdict(
    percent: int,
    candidate: SlotCounts,
    live: SlotCounts,
    max_error_rate: float,
    max_latency_ratio: float,
    min_requests: int,
    min_rate_ratio: float = 0.67,
) -> Verdict:
    """The candidate's error rate, and its latency against the live slot's in the same window:
    where what users feel is measured (the router per slot, a KServe revision's gateways), the P99
    time to first text of streams, the P99 total time of plain answers and the pace of streams
    (chunks with text per second over all of them; replays from the answer cache have none), over
    the answers that have ended; elsewhere the P99 time to response headers."""
    error_rate = candidate.errors / candidate.attempts if candidate.attempts else 0.0
    figures: dict = {
        "percent": percent,
        "candidate_requests": int(candidate.attempts),
        "candidate_answered": int(candidate.answered),  # what --min-step-requests counts
        "candidate_errors": int(candidate.errors),
        "error_rate": round(error_rate, 4),
        "live_requests": int(live.attempts),
    }
    pairs = {}  # figure -> (candidate's, live's), where both slots have it
    for name, histogram in (("ttft_p99", "ttft"), ("total_p99", "total")):
        c, lv = candidate.quantile(0.99, histogram), live.quantile(0.99, histogram)
        if c is not None and lv is not None:
            pairs[name] = (c, lv)
    if candidate.pace is not None and live.pace is not None:
        pairs["stream_pace"] = (candidate.pace, live.pace)
    if not {"ttft_p99", "total_p99"} & set(pairs):
        c, lv = candidate.quantile(0.99), live.quantile(0.99)
        if c is not None and lv is not None:
            pairs["p99"] = (c, lv)
    for name, (c, lv) in pairs.items():
        unit, scale = ("", 1) if name == "stream_pace" else ("_ms", 1000)
        figures[f"candidate_{name}{unit}"], figures[f"live_{name}{unit}"] = round(c * scale, 1), round(lv * scale, 1)
    gate = f"step {percent}%"
    if candidate.answered < min_requests:
        return Verdict(
            gate,
            False,
            figures,
            f"only {int(candidate.answered)} requests reached the candidate and were answered (need {min_requests}): "
            "send traffic or lower --min-step-requests",
        )
    if error_rate > max_error_rate:
        return Verdict(gate, False, figures, f"error rate {error_rate:.1%} > {max_error_rate:.1%}")
    for name, (c, lv) in pairs.items():
        if name == "stream_pace":
            if c < min_rate_ratio * lv:
                return Verdict(gate, False, figures, f"streams run at {c:.1f} chunks/s < {min_rate_ratio}x live's {lv:.1f}")
        elif c > max_latency_ratio * lv:
            what = {"ttft_p99": "time to first text P99", "total_p99": "total time P99", "p99": "time to response headers P99"}[name]
            return Verdict(gate, False, figures, f"{what} {c * 1000:.1f} ms > {max_latency_ratio}x live's {lv * 1000:.1f} ms")
    return Verdict(gate, True, figures)


# --- the shadow stage ----------------------------------------------------------------------------


def shadow_verdict(pairs: list[dict], policy) -> Verdict:
    """The candidate's answers to copies of live requests against live's own (``shadow.py``):
    its error rate, whether it refuses what live refuses and only that, how alike the answers and
    their sources are where both answer, and its time to first text and pace against live's."""
    p = policy
    n = len(pairs)
    figures: dict = {"pairs": n}
    if n < p.min_shadow_pairs:
        return Verdict(
            "shadow", False, figures, f"only {n} pairs compared (need {p.min_shadow_pairs}): send traffic or lower --min-shadow-pairs"
        )
    errors = sum(1 for x in pairs if x["shadow_status"] != 200 and x["live_status"] == 200)
    agree = sum(1 for x in pairs if x["live_refused"] == x["shadow_refused"]) / n
    both = [x for x in pairs if x["live_status"] == x["shadow_status"] == 200 and not x["live_refused"] and not x["shadow_refused"]]
    streamed = [x for x in pairs if x["live_ttft_ms"] and x["shadow_ttft_ms"]]
    paced = [x for x in pairs if x["live_rate"] and x["shadow_rate"]]

    def ratio(rows: list[dict], figure: str) -> float | None:
        """Median of the candidate's figure over live's, over the pairs that have it."""
        if not rows:
            return None
        return round(statistics.median(x[f"shadow_{figure}"] for x in rows) / statistics.median(x[f"live_{figure}"] for x in rows), 3)

    figures.update(
        error_rate=round(errors / n, 4),
        refusal_agreement=round(agree, 4),
        refused_by_live_only=sum(1 for x in pairs if x["live_refused"] and not x["shadow_refused"]),
        refused_by_candidate_only=sum(1 for x in pairs if x["shadow_refused"] and not x["live_refused"]),
        answered_by_both=len(both),
        answer_similarity_p50=round(statistics.median(x["answer_similarity"] for x in both), 3) if both else None,
        citation_overlap_p50=round(statistics.median(x["citation_overlap"] for x in both), 3) if both else None,
        ttft_ratio=round(
            statistics.median(x["shadow_ttft_ms"] for x in streamed) / statistics.median(x["live_ttft_ms"] for x in streamed), 3
        )
        if streamed
        else None,
        tps_ratio=round(statistics.median(x["shadow_rate"] for x in paced) / statistics.median(x["live_rate"] for x in paced), 3)
        if paced
        else None,
    )
    scored = [x for x in pairs if x.get("live_faithfulness") is not None and x.get("shadow_faithfulness") is not None]
    figures.update(
        scored_pairs=len(scored),
        live_faithfulness=round(statistics.fmean(x["live_faithfulness"] for x in scored), 4) if scored else None,
        candidate_faithfulness=round(statistics.fmean(x["shadow_faithfulness"] for x in scored), 4) if scored else None,
        least_faithful_pairs=[x["n"] for x in sorted(scored, key=lambda x: x["shadow_faithfulness"])[:3]],
    )
    # Live traffic is sampled, so one pair's answers differ by chance: the drop fails the stage
    # only past the margin and when its 95% interval (paired bootstrap) lies above zero.
    drops = [x["live_faithfulness"] - x["shadow_faithfulness"] for x in scored]
    figures["faithfulness_drop"] = round(statistics.fmean(drops), 4) if scored else None
    figures["faithfulness_drop_interval"] = [round(v, 4) for v in bootstrap(drops)] if len(drops) > 1 else None
    worse = bool(figures["faithfulness_drop_interval"]) and figures["faithfulness_drop_interval"][0] > 0
    failed = [
        f"error rate {figures['error_rate']:.1%} > {p.max_error_rate:.1%}" if figures["error_rate"] > p.max_error_rate else "",
        f"refusal agreement {agree:.1%} < {p.min_refusal_agreement:.0%} ({figures['refused_by_live_only']} refused by live only, "
        f"{figures['refused_by_candidate_only']} by the candidate only)"
        if agree < p.min_refusal_agreement
        else "",
        f"answer similarity p50 {figures['answer_similarity_p50']} < {p.min_answer_similarity}"
        if both and figures["answer_similarity_p50"] < p.min_answer_similarity
        else "",
        f"citation overlap p50 {figures['citation_overlap_p50']} < {p.min_citation_overlap}"
        if both and figures["citation_overlap_p50"] < p.min_citation_overlap
        else "",
        f"TTFT {figures['ttft_ratio']}x live > {p.max_ttft_ratio}x" if streamed and figures["ttft_ratio"] > p.max_ttft_ratio else "",
        f"tokens/s {figures['tps_ratio']}x live < {p.min_tps_ratio}x" if paced and figures["tps_ratio"] < p.min_tps_ratio else "",
        f"faithfulness {figures['candidate_faithfulness']} is {figures['faithfulness_drop']} below live's "
        f"{figures['faithfulness_drop_interval']} (max drop {p.max_faithfulness_drop})"
        if worse and figures["faithfulness_drop"] > p.max_faithfulness_drop
        else "",
        f"faithfulness {figures['candidate_faithfulness']} < {p.min_faithfulness}"
        if scored and figures["candidate_faithfulness"] < p.min_faithfulness
        else "",
    ]
    reason = "; ".join(f for f in failed if f)
    return Verdict("shadow", not reason, figures, reason)
