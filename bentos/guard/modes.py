"""Enforced or report-only, per rail.

A rail in report-only mode runs as usual, but where it would refuse a request (or drop a chunk)
it logs and counts that instead (``ragserve_guardrail_would_block_total{rail,category}``) and
lets it through, so an operator can measure a rail on real traffic before enforcing it.
"""

from __future__ import annotations

import logging

from bentos.guard.metrics import GUARD_METRICS

log = logging.getLogger("bentos.guard")

# The rails a config or RAGSERVE_GUARD_REPORT_ONLY can name: the rules on wording, the prompt
# classifier, the guard model, the LLM self-checks, and the retrieval rail's chunk screening.
RAILS = ("rules", "classifier", "guard_model", "self_check", "chunks")


def parse_rails(value, where: str) -> list[str]:
    """Rail names from a comma-separated string or a list; an unknown name is refused with the list."""
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value or []) if str(n).strip()]
    unknown = sorted(set(names) - set(RAILS))
    if unknown:
        raise ValueError(f"{where}: unknown rail(s) {', '.join(unknown)}; the rails are {', '.join(RAILS)}")
    return names


class Modes:
    """Which rails only report; ``enforce`` turns a rail's verdict into what the flow acts on."""

    def __init__(self, report_only: list[str] | tuple[str, ...] = ()) -> None:
        self.report_only = frozenset(report_only)

    def enforce(self, rail: str, verdict: str | None, text: str = "") -> str | None:
        """``verdict`` (what the rail would block as, e.g. ``harmful_request`` or ``guard_model:S1``)
        when the rail is enforced; None, logged and counted, when it only reports."""
        if verdict is None or rail not in self.report_only:
            return verdict
        GUARD_METRICS.would_block.labels(rail=rail, category=verdict.partition(":")[2] or verdict).inc()  # guard_model:S1 -> S1
        log.info("guardrail would block (report-only)", extra={"fields": {"rail": rail, "verdict": verdict, "text": text[:200]}})
        return None
