"""The LLM self-check: the served model judges (the gateway's connection to it)."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="self_check")
async def self_check(stage: str, text: str, config=None, detectors=None) -> str | None:
    return await detectors_for(config, detectors).self_check(stage, text or "")
