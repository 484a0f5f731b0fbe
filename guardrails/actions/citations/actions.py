"""Citations for answers built from sources."""

from nemoguardrails.actions import action

from bentos.guard.rails import detectors_for


@action(name="ensure_citations")
async def ensure_citations(text: str, sources=None, config=None, detectors=None) -> str:
    """``sources``: the gateway's; NeMo's own runtime has none ("$sources", the unset variable's name)."""
    return detectors_for(config, detectors).ensure_citations(text or "", sources if isinstance(sources, list) else [])
