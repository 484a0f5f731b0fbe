"""Instructions aimed at the model, recognised by their wording.

Used on user input (next to the classifier) and on retrieved chunks, where a document that tells
"the assistant" what to do is an indirect prompt injection, whatever else it says.
"""

from __future__ import annotations

import re

_ANY = r"(?:all|any|every|the|your|my|these|those|previous|prior|above|earlier|preceding|initial|original|system|\s)*"
INJECTION = re.compile(
    "|".join(
        [
            rf"\b(?:ignore|disregard|forget|override|bypass|skip)\b{_ANY}\b(?:instructions?|prompts?|rules|guidelines|directions|context|messages?|guardrails|restrictions)\b",
            r"\b(?:reveal|print|show|repeat|output|leak|tell me)\b[^.\n]{0,40}\b(?:system|hidden|initial|secret)\s+(?:prompt|instructions|message)",
            r"\byou are (?:now |no longer )[^.\n]{0,40}\b(?:ai|assistant|model|chatbot|gpt|dan|persona|character|jailbroken|unrestricted|unfiltered)\b",
            r"\b(?:do anything now|developer mode|jailbreak(?:ed)?|dan mode|anti-?dan|evil-?bot|unfiltered (?:ai|mode|response)|no (?:ethical|moral) (?:guidelines|restrictions|constraints))\b",
            r"\b(?:new|updated|real|actual) instructions?\s*:",
            r"(?:<\|im_start\|>|<\|system\|>|\[/?INST\]|<<SYS>>|###\s*(?:system|instruction)\b)",
            r"\b(?:when|if) (?:an? |the )?(?:ai|assistant|model|llm|chatbot)\b[^.\n]{0,60}\b(?:reads?|sees?|summari[sz]es?|processes)\b",
            r"\b(?:assistant|ai|model),? (?:you )?(?:must|should|will) (?:now )?(?:ignore|say|respond|reply|answer|tell|include|append)\b",
        ]
    ),
    re.IGNORECASE,
)


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return m.group(0) if m else None


def injection_match(text: str) -> str | None:
    """The first phrase that reads as an instruction to the model, or None."""
    return _first(INJECTION, text)


# Requests for help with serious harm, by their wording: making weapons or hard drugs, violence
# against a person, breaking into someone else's accounts or writing malware. A complement to the
# classifier, which sees topics: it catches "how do I make a pipe bomb?" and leaves "what is a
# pipe bomb?" and "how do I kill a Python process?" alone.
_MAKE = r"\b(?:make|making|build|building|assemble|construct|synthesi[sz]e|produce|manufacture|cook|brew|create|prepare|3d[- ]print|get|buy|obtain)\b"
_DANGEROUS = (
    r"\b(?:(?:pipe |nail |car |dirty |fertili[sz]er )?bombs?|explosives?|ieds?|detonators?|napalm|thermite|molotov(?: cocktails?)?|nerve agents?|sarin|vx gas|ricin|"
    r"anthrax|mustard gas|chlorine gas|bio-?weapons?|chemical weapons?|ghost guns?|untraceable (?:guns?|firearms?)|silencers?|"
    r"meth(?:amphetamine)?|crack cocaine|fentanyl|heroin)\b"
)
_PERSON = (
    r"(?:my |our |his |her |their |a |an |the |some |this |that )?(?:neighbou?rs?|wife|husband|partner|girlfriend|boyfriend|ex|boss|co-?workers?|"
    r"colleagues?|teachers?|child(?:ren)?|kids?|baby|babies|mother|father|mom|dad|brother|sister|family|person|people|someone|somebody|human|man|woman|"
    r"president|cops?|police officers?|classmates?|roommates?|stranger)\b"
)
_HURT = r"\b(?:kill|murder|poison|stab|strangle|shoot|kidnap|torture|assault|beat up|hurt|harm|maim|drown|suffocate|attack|rape|abuse)\b"
HARMFUL = re.compile(
    "|".join(
        [
            rf"{_MAKE}[^.?!\n]{{0,60}}{_DANGEROUS}",
            rf"{_HURT}\s+{_PERSON}",
            r"\b(?:without (?:getting caught|being caught|anyone (?:knowing|noticing|finding out)|leaving (?:a trace|evidence|fingerprints))|"
            r"(?:hide|dispose of|get rid of) (?:a |the )?(?:dead )?body|get away with (?:murder|killing|it))\b",
            r"\b(?:hack|break|get) into\b[^.?!\n]{0,40}\b(?:account|email|phone|computer|laptop|network|wi-?fi|server|database|webcam)\b",
            r"\b(?:write|create|build|make|code|develop)\b[^.?!\n]{0,30}\b(?:ransomware|keyloggers?|malware|computer virus|trojans?|botnets?|rootkits?)\b",
            r"\b(?:kill|hurt|harm|cut) myself\b|\b(?:commit suicide|end my (?:own )?life)\b",
        ]
    ),
    re.IGNORECASE,
)


def harmful_match(text: str) -> str | None:
    """The first phrase that asks for help with serious harm, or None."""
    return _first(HARMFUL, text)


def verdict(text: str) -> str | None:
    """The rail the rules block ``text`` as (``prompt_injection``, ``harmful_request``), or None."""
    if injection_match(text):
        return "prompt_injection"
    if harmful_match(text):
        return "harmful_request"
    return None
