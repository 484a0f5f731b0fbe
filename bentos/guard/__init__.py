"""Guardrails: the detectors the NeMo Guardrails actions in ``guardrails/`` call, and the
gateway's side of running them (``rails.Guard``)."""
