"""Personal data found by Presidio and replaced by typed placeholders.

Presidio's recognizers decide for the kinds it has: emails, payment cards (Luhn), IBANs (mod-97),
IP addresses, US SSNs, passports and driving licences, each scored higher when its context words
are near. Ours (``pii_recognizers``) add phone numbers by shape, names, street addresses and dates
of birth. A finding is masked when its score reaches RAGSERVE_PII_MIN_SCORE, chosen on a validation
split (`ragserve eval pii`); a number-shaped finding inside a timestamp, date, ISBN, id, version,
port, price or URL (``never_mask``) is dropped whatever its score.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass

from bentos.settings import get_settings

# Presidio entity -> (our kind, as in metrics and logs; the placeholder the text gets)
KINDS = {
    "EMAIL_ADDRESS": ("EMAIL", "<EMAIL>"),
    "CREDIT_CARD": ("CARD", "<CARD_NUMBER>"),
    "IBAN_CODE": ("IBAN", "<IBAN>"),
    "IP_ADDRESS": ("IP", "<IP_ADDRESS>"),
    "PHONE_NUMBER": ("PHONE", "<PHONE>"),
    "US_SSN": ("SSN", "<US_SSN>"),
    "US_PASSPORT": ("PASSPORT", "<PASSPORT_NUMBER>"),
    "US_DRIVER_LICENSE": ("DRIVER_LICENSE", "<DRIVER_LICENSE>"),
    "PERSON": ("PERSON", "<PERSON>"),
    "STREET_ADDRESS": ("ADDRESS", "<ADDRESS>"),
    "DATE_OF_BIRTH": ("DATE_OF_BIRTH", "<DATE_OF_BIRTH>"),
}
PLACEHOLDERS = dict(KINDS.values())


@functools.cache
def analyzer(spacy_model: str | None = None):
    """Presidio's analyzer with the recognizers above; built once per process (about 1 s)."""
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        UsLicenseRecognizer,
        UsPassportRecognizer,
    )

    from bentos.guard.pii_recognizers import PhoneShapeRecognizer, SsnRecognizer, TokenNlpEngine, name_lexicon, ragserve_recognizers

    # Presidio's email check asks tldextract, which would fetch the public suffix list over the
    # network first; the snapshot in its package is used instead.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        EmailRecognizer(),
        # Any 13 to 19 digits, not only the issuers Presidio lists: its Luhn check still decides. Not after a "+": a phone.
        CreditCardRecognizer(patterns=[Pattern("card number", r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])", 0.3)]),
        IbanRecognizer(),
        IpRecognizer(),
        PhoneShapeRecognizer(),
        SsnRecognizer(),
        UsPassportRecognizer(),
        UsLicenseRecognizer(),
        *ragserve_recognizers(),
    ):
        registry.add_recognizer(recognizer)
    if spacy_model:
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
        registry.add_recognizer(SpacyRecognizer(supported_entities=["PERSON"]))
    else:
        nlp = TokenNlpEngine()
    nlp.load()
    name_lexicon()
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    score: float = 1.0


# The kinds an ordinary number can look like; names, addresses, emails, IP addresses and dates of
# birth have their own evidence (a date of birth is a date, and is masked).
NUMBER_KINDS = {"PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "US_PASSPORT", "US_DRIVER_LICENSE", "IBAN_CODE"}


def analyze(text: str) -> list:
    """Presidio's findings in ``text``, of every score, but for numbers that are never personal data."""
    if not text.strip():
        return []
    from bentos.guard.pii_recognizers import never_mask

    results = analyzer(get_settings().guard.pii_spacy_model).analyze(text, language="en", entities=list(KINDS))
    kept = never_mask(text)
    return [r for r in results if r.entity_type not in NUMBER_KINDS or not any(r.start < e and s < r.end for s, e in kept)]


def resolve(results: list, threshold: float | None = None) -> list[Finding]:
    """The findings at or over the threshold (default RAGSERVE_PII_MIN_SCORE); where two overlap,
    the higher score (then the longer) wins."""
    limit = get_settings().guard.pii_min_score if threshold is None else threshold
    ranked = sorted((r for r in results if r.score >= limit), key=lambda r: (-r.score, -(r.end - r.start), r.start))
    taken: list[Finding] = []
    for r in ranked:
        if any(r.start < f.end and f.start < r.end for f in taken):
            continue
        taken.append(Finding(KINDS[r.entity_type][0], r.start, r.end, r.score))
    return sorted(taken, key=lambda f: f.start)


def find(text: str, threshold: float | None = None) -> list[Finding]:
    return resolve(analyze(text), threshold)


def replace(text: str, findings: list[Finding], start: int = 0) -> tuple[str, Counter]:
    """``text[start:]`` with each finding (none before ``start``) replaced by its placeholder,
    and how many of each kind."""
    out, pos = [], start
    for f in findings:
        out += [text[pos : f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
    out.append(text[pos:])
    return "".join(out), Counter(f.kind for f in findings)


def mask(text: str) -> tuple[str, Counter]:
    """``text`` with each finding replaced by its placeholder, and how many of each kind."""
    return replace(text, find(text))


# A word may be part of something to mask while text can still follow it: the word still being
# written, and a run of words before it that a finding may continue: words with digits (the groups
# of a phone, card or IBAN), capitalised words (a name's surname, an address's street and city) and
# a phone's extension ("x936", "ext. 12", "extension 4", "#123"), down to its first letters.
_EXTENSION = r"(?i:e(?:x(?:t(?:n|e(?:n(?:s(?:i(?:o(?:n)?)?)?)?)?)?)?)?\.?|x|#)"
_GROWING = re.compile(rf"{_EXTENSION}|(?:\+|\(|#|[A-Z]|[\w.%+()/:@#-]*\d)[\w.%+()/:@#'’-]*[.,;:]?")
_EXTENSION_WORD = re.compile(_EXTENSION)
# A word that ends a sentence ("France."; not "Dr." or "J."): no finding runs on past it.
_SENTENCE_END = re.compile(r"[^\W\d_]{3,}[.!?]$")
# Released text kept as the context of what follows: "born on" and "SSN:" decide what the next
# numbers are.
CONTEXT_CHARS = 48


def open_tail(text: str) -> int:
    """Where the part of ``text`` that later text could still change begins."""
    words = list(re.finditer(r"\S+", text))
    cut, i = len(text), len(words) - 1
    if words and words[-1].end() == len(text):  # still being written
        cut = words[-1].start()
        if not _GROWING.fullmatch(words[-1].group()):
            return cut
        i -= 1
    while i >= 0 and _GROWING.fullmatch(w := words[i].group()) and (_EXTENSION_WORD.fullmatch(w) or not _SENTENCE_END.search(w)):
        cut, i = words[i].start(), i - 1
    return cut


class StreamMasker:
    """Masks text that arrives in pieces without waiting for the end: everything up to the
    last point where no finding can still be growing is released at once, masked, judged with
    the text released just before it as context."""

    def __init__(self) -> None:
        self.pending = ""
        self.context = ""

    def feed(self, piece: str) -> str:
        self.pending += piece
        cut = open_tail(self.pending)
        if cut == 0:
            return ""
        return self._release(cut)

    def finish(self) -> str:
        return self._release(len(self.pending))

    def _release(self, cut: int) -> str:
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        if not ready:
            return ""
        before = len(self.context)
        text = self.context + ready
        masked, _ = replace(text, [f for f in find(text) if f.start >= before], before)  # not what began in released text
        self.context = text[-CONTEXT_CHARS:]
        return masked
