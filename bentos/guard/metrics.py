"""Guardrail counters and timings. BentoML runs prometheus_client in multiprocess mode, so every
metric a service process creates is on /metrics already, whatever registry holds it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class GuardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.blocked = Counter(
            "ragserve_guardrail_blocked",
            "Requests refused, by the rail that refused them (and the guard model's hazard categories, comma-joined).",
            ["rail", "category"],
            registry=r,
        )
        self.would_block = Counter(
            "ragserve_guardrail_would_block",
            "What rails in report-only mode would have refused (or dropped, for chunks) and let through, by rail and verdict.",
            ["rail", "category"],
            registry=r,
        )
        self.masked = Counter(
            "ragserve_guardrail_pii_masked", "Personal data items masked, by stage and kind.", ["stage", "kind"], registry=r
        )
        self.chunks_dropped = Counter("ragserve_guardrail_chunks_dropped", "Retrieved chunks dropped as injected instructions.", registry=r)
        self.citations_added = Counter(
            "ragserve_guardrail_citations_added", "Answers from sources that cited none, given a source list.", registry=r
        )
        self.errors = Counter("ragserve_guardrail_errors", "Rail failures (failed closed), by stage.", ["stage"], registry=r)
        self.guard_model_verdicts = Counter(
            "ragserve_guard_model_verdicts", "Guard-model verdicts, by stage (input, output, stream).", ["stage", "verdict"], registry=r
        )
        self.guard_model_seconds = Histogram(
            "ragserve_guard_model_seconds",
            "Time for one guard-model verdict, by stage.",
            ["stage"],
            registry=r,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
        )
        self.seconds = Histogram(
            "ragserve_guardrail_seconds",
            "Time in the rails, by stage.",
            ["stage"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
        )


GUARD_METRICS = GuardMetrics()
