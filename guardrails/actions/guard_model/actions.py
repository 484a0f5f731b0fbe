"""The guard model's verdict (bentos/guard/guard_model.py)."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="guard_model_check")
async def guard_model_check(stage: str, user: str, answer: str | None = None, config=None, detectors=None) -> str | None:
    return await detectors_for(config, detectors).guard_model_check(stage, user or "", answer)
