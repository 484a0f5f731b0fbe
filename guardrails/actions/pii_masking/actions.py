"""Personal data masking (bentos/guard/pii.py): Presidio with our recognizers."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="mask_pii")
async def mask_pii(text: str, stage: str, config=None, detectors=None) -> str:
    return detectors_for(config, detectors).mask(text or "", stage)
