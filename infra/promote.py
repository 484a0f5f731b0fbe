"""One promotion procedure for every backend: gate the candidate, shift traffic in steps while
watching it, then promote, or roll back at the first failed check leaving the live slot serving.

Every decision is one JSON line (event, gate, passed, figures, reason) so a CI job or an
operator can read why a release went out or did not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, field_validator

from . import gates
from .backends import Backend, BackendError
from .gates import EvalCase, Verdict
from .traffic import Slot

MAX_HOLD_FACTOR = 10  # a step without enough requests fails after this many step_s


class Policy(BaseModel):
    """What a candidate must show. Defaults follow Flagger's (success rate ≥ 99%, P99 bounded) plus
    the LLM-specific gates: TTFT, tokens/s, guardrail and retrieval quality on a frozen set."""

    model_config = {"extra": "forbid"}
    steps: list[int] = Field([10, 50, 100], description="Percents of traffic the candidate gets, in order; the last is 100.")
    step_s: float = Field(30.0, gt=0, description="How long each step is watched.")
    min_step_requests: int = Field(
        10,
        ge=0,
        description="Answers of the candidate that must have ended (or failed) before a step can pass; a step waits for them "
        "up to 10x --step-seconds.",
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Candidate's share of failed attempts (no answer or 5xx) per step.")
    max_latency_ratio: float = Field(
        2.0, gt=0, description="Candidate's P99 time to first text (streams) and total time (plain answers) / live's, per step."
    )
    max_ttft_ratio: float = Field(1.5, gt=0, description="Candidate's TTFT p50 / live's, before traffic.")
    min_tps_ratio: float = Field(0.67, gt=0, description="Candidate's tokens/s / live's, before traffic and per step (streams' pace).")
    min_block_rate: float = Field(0.9, ge=0, le=1, description="Share of the eval set's unsafe prompts refused.")
    max_false_positive: float = Field(0.1, ge=0, le=1, description="Share of the eval set's safe prompts refused.")
    min_retrieval_hit: float = Field(0.9, ge=0, le=1, description="Share of retrieval queries finding their source.")
    grounding: bool = Field(
        True, description="Score live's and the candidate's answers to the eval set's questions for faithfulness before traffic."
    )
    min_faithfulness: float = Field(0.0, ge=0, le=1, description="Candidate's mean faithfulness on the eval set's questions, at least.")
    # A candidate identical to live dropped 0.0 in every run measured (temperature 0: the same
    # answers); the two broken ones of the tests dropped 0.2 and 0.4. On the demo corpus live's own
    # faithfulness is 0.125 (SmolLM2-135M), so a wider margin could not fail anything there.
    max_faithfulness_drop: float = Field(
        0.1, ge=0, le=1, description="Candidate's mean faithfulness may be at most this far below live's on the same questions."
    )
    max_citation_precision_drop: float = Field(
        0.1, ge=0, le=1, description="Candidate's citation precision may be at most this far below live's on the same questions."
    )
    ready_timeout_s: float = Field(900.0, gt=0, description="How long to wait for the candidate's /readyz.")
    shadow_s: float = Field(
        0.0,
        ge=0,
        description="Shadow stage before the first step (0: none): this long, a copy of live chat requests goes to the candidate "
        "(router backends), its answers compared with live's and discarded.",
    )
    shadow_percent: int = Field(100, ge=1, le=100, description="Share of live chat requests copied to the candidate in the shadow stage.")
    min_shadow_pairs: int = Field(
        10, ge=1, description="Compared pairs the shadow stage needs; it waits for them up to 10x --shadow-seconds."
    )
    min_refusal_agreement: float = Field(
        0.95, ge=0, le=1, description="Shadow pairs in which both refuse or both answer, as a share of all pairs."
    )
    min_answer_similarity: float = Field(
        0.5, ge=0, le=1, description="Median similarity (0-1, by characters) of the candidate's answers to live's, where both answer."
    )
    min_citation_overlap: float = Field(
        0.5, ge=0, le=1, description="Median overlap (shared / all) of the sources both cite, where both answer."
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 100 or any(not 0 < p <= 100 for p in v) or any(a >= b for a, b in zip(v, v[1:])):
            raise ValueError(f"steps must rise within 1..100 and end at 100, e.g. 10,50,100; got {v}")
        return v


@dataclass
class Outcome:
    promoted: bool
    live: Slot
    candidate: Slot
    decisions: list[dict] = field(default_factory=list)
    failed: Verdict | None = None
    rollback_s: float | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.promoted else 1


def print_json(entry: dict) -> None:
    print(json.dumps(entry, default=str), flush=True)


class Promotion:
    def __init__(
        self, backend: Backend, cases: list[EvalCase], policy: Policy, api_key: str | None, emit: Callable[[dict], None] = print_json
    ):
        self.backend, self.cases, self.policy, self.api_key, self.emit = backend, cases, policy, api_key, emit
        self.live_baseline: tuple[int, gates.SlotCounts] | None = None  # (step, live's counts in it)

    def decide(self, outcome: Outcome, event: str, verdict: Verdict | None = None, **figures) -> None:
        entry = {"ts": round(time.time(), 3), "event": event}
        if verdict is not None:
            entry.update(gate=verdict.gate, passed=verdict.passed, figures=verdict.figures, reason=verdict.reason)
        entry.update(figures)
        outcome.decisions.append(entry)
        self.emit(entry)

    def run(self, candidate: Slot | None = None, candidate_url: str | None = None) -> Outcome:
        t = self.backend.traffic()
        live = t.live
        candidate = candidate or t.other(live)
        if candidate == live:
            raise BackendError(f"{candidate} is the live slot ({t.weights}); promote the other one")
        if candidate_url:
            t = self.backend.shift(candidate, 0, candidate_url)
        if candidate not in t.upstreams:
            raise BackendError(f"no URL for the candidate slot {candidate}: pass --candidate-url")
        outcome = Outcome(False, live, candidate)
        live_url, cand_url = t.upstreams[live], t.upstreams[candidate]
        self.decide(
            outcome,
            "start",
            backend=self.backend.describe(),
            live=live,
            live_url=live_url,
            candidate=candidate,
            candidate_url=cand_url,
            weights=t.weights,
        )
        if t.weights[candidate]:  # a leftover split from an interrupted run: start from the live slot
            self.backend.shift(candidate, 0)

        try:
            return self.gate_and_shift(outcome, live_url, cand_url)
        except Exception as e:  # anything unexpected mid-way: the live slot gets everything back
            return self.roll_back(outcome, Verdict("error", False, {}, f"{type(e).__name__}: {e}"[:300]))

    def gate_and_shift(self, outcome: Outcome, live_url: str, cand_url: str) -> Outcome:
        candidate, live = outcome.candidate, outcome.live
        try:
            ready_s = gates.wait_ready(cand_url, self.policy.ready_timeout_s)
            self.decide(outcome, "gate", Verdict("ready", True, {"ready_s": round(ready_s, 1)}))
        except TimeoutError as e:
            return self.roll_back(outcome, Verdict("ready", False, {}, str(e)))

        p = self.policy
        queries = [c.query for c in self.cases if c.query]
        checks = [
            lambda: gates.smoke(cand_url, self.api_key, queries[0]),
            lambda: gates.quality(cand_url, self.api_key, self.cases, p.min_block_rate, p.max_false_positive, p.min_retrieval_hit),
            *([lambda: gates.grounding(live_url, cand_url, self.api_key, self.cases, p)] if p.grounding else []),
            lambda: gates.performance(live_url, cand_url, self.api_key, queries, p.max_ttft_ratio, p.min_tps_ratio),
        ]
        for check in checks:
            verdict = check()
            self.decide(outcome, "gate", verdict)
            if not verdict.passed:
                return self.roll_back(outcome, verdict)

        if p.shadow_s:
            verdict = self.shadow_stage(candidate)
            self.decide(outcome, "shadow", verdict)
            if not verdict.passed:
                return self.roll_back(outcome, verdict)

        for percent in p.steps:
            applied = self.backend.shift(candidate, percent)
            self.decide(outcome, "shift", percent=percent, weights=applied.weights)
            verdict = self.watch(cand_url, candidate, live, percent)
            self.decide(outcome, "step", verdict)
            if not verdict.passed:
                return self.roll_back(outcome, verdict)
        outcome.promoted = True
        self.decide(outcome, "promoted", live=candidate, weights=self.backend.traffic().weights)
        return outcome

    def shadow_stage(self, candidate: Slot) -> Verdict:
        """Copies of live chat requests to the candidate for ``shadow_s`` and until enough pairs
        are compared; no user is routed there. The shadow is off again afterwards, whatever the verdict."""
        p = self.policy
        last = self.backend.shadow_pairs(0)[-1:]
        seen = last[0]["n"] if last else 0
        revision = self.backend.shadow(candidate, p.shadow_percent).revision
        started = time.monotonic()
        try:
            while True:
                time.sleep(1.0)
                pairs = [x for x in self.backend.shadow_pairs(seen) if x.get("revision") == revision]
                held = time.monotonic() - started
                if (held >= p.shadow_s and len(pairs) >= p.min_shadow_pairs) or held >= MAX_HOLD_FACTOR * p.shadow_s:
                    break
        finally:
            self.backend.shadow(candidate, 0)
        # Faithfulness is scored now, not while the pace above was being measured.
        pairs = [x for x in self.backend.shadow_pairs(seen, score=True) if x.get("revision") == revision]
        verdict = gates.shadow_verdict(pairs, p)
        verdict.figures["held_s"] = round(held, 1)
        return verdict

    def watch(self, cand_url: str, candidate: Slot, live: Slot, percent: int) -> Verdict:
        """Hold a step for ``step_s`` and until ``min_step_requests`` of the candidate's answers have
        ended (no evidence, no promotion; an answer still streaming has no figures yet), checking
        every second: a candidate that stops being ready or whose errors already exceed the budget
        ends the step at once. Where live serves too little in the window to compare with (the 100%
        step), its larger window from an earlier step is the baseline."""
        p = self.policy
        enough = max(p.min_step_requests, 1)
        since = self.backend.window()
        started = time.monotonic()
        seen = gates.SlotCounts()
        try:
            while True:
                time.sleep(1.0)
                served = since()
                delta = {slot: served.get(slot, gates.SlotCounts()) for slot in (candidate, live)}
                seen = baseline = delta[live]
                earlier = self.live_baseline
                if baseline.answered < enough and earlier and earlier[1].answered > baseline.answered:
                    baseline = earlier[1]
                verdict = gates.step_verdict(
                    percent, delta[candidate], baseline, p.max_error_rate, p.max_latency_ratio, p.min_step_requests, p.min_tps_ratio
                )
                verdict.figures["live_requests"] = int(seen.attempts)
                if baseline is not seen:
                    verdict.figures["live_baseline"] = f"step {earlier[0]}%"
                held = time.monotonic() - started
                verdict.figures["held_s"] = round(held, 1)
                if not gates.is_ready(cand_url):
                    return Verdict(verdict.gate, False, verdict.figures, "the candidate's /readyz stopped answering 200")
                if verdict.figures["error_rate"] > p.max_error_rate and delta[candidate].attempts >= enough:
                    return verdict
                if (held >= p.step_s and delta[candidate].answered >= p.min_step_requests) or held >= MAX_HOLD_FACTOR * p.step_s:
                    return verdict
        finally:  # this step's live window becomes the baseline if it is the better sample
            if seen.answered >= enough or not self.live_baseline or seen.answered > self.live_baseline[1].answered:
                self.live_baseline = (percent, seen)

    def roll_back(self, outcome: Outcome, verdict: Verdict) -> Outcome:
        """All traffic back on the live slot in one step; the time is from the failed check to the
        backend confirming the live slot has 100%."""
        started = time.perf_counter()
        try:
            self.backend.shift(outcome.candidate, 0)
            confirmed = self.backend.traffic()
        except Exception as e:
            raise BackendError(
                f"{verdict.gate} failed ({verdict.reason}) and the rollback failed too ({e}): traffic may still be "
                f"split; retry with `ragserve promote ... --rollback`"
            ) from None
        outcome.rollback_s = time.perf_counter() - started
        outcome.failed = verdict
        self.decide(
            outcome,
            "rolled_back",
            failed_gate=verdict.gate,
            reason=verdict.reason,
            rollback_ms=round(outcome.rollback_s * 1000, 1),
            weights=confirmed.weights,
        )
        return outcome
