"""Rules and the prompt classifier (bentos/guard/rules.py, bentos/guard/classifier.py)."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="screen_prompt")
async def screen_prompt(text: str, vector=None, config=None, detectors=None) -> str | None:
    """``vector``: the query embedding the gateway computed for retrieval; NeMo's runtime has none."""
    return detectors_for(config, detectors).screen_prompt(text or "", vector)
