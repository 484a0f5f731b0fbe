"""Indirect prompt injection in retrieved chunks."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="screen_chunks")
async def screen_chunks(chunks=None, config=None, detectors=None) -> list[int] | None:
    return detectors_for(config, detectors).screen_chunks(chunks)
