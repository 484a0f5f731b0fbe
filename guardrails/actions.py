"""NeMo Guardrails actions for the flows in rails.co, loaded by NeMo from this folder.

Each is a thin call into ``bentos.guard``: ``detectors`` is registered by the gateway
(`LLMRails.register_action_param`) and holds the trained classifier and the settings.
"""

from nemoguardrails.actions import action


@action(name="mask_pii")
async def mask_pii(text: str, stage: str, detectors) -> str:
    return detectors.mask(text, stage)


@action(name="screen_prompt")
async def screen_prompt(text: str, vector, detectors) -> str | None:
    return detectors.screen_prompt(text, vector)


@action(name="screen_chunks")
async def screen_chunks(chunks, detectors) -> list[int]:
    return detectors.screen_chunks(chunks)


@action(name="ensure_citations")
async def ensure_citations(text: str, sources: list, detectors) -> str:
    return detectors.ensure_citations(text, sources)


@action(name="self_check")
async def self_check(stage: str, text: str, detectors) -> str | None:
    return await detectors.self_check(stage, text)


@action(name="guard_model_check")
async def guard_model_check(stage: str, user: str, detectors, answer: str | None = None) -> str | None:
    return await detectors.guard_model_check(stage, user, answer)
