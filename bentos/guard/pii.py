"""Personal data found by pattern and checksum, replaced by a typed placeholder.

Emails, phone numbers, payment cards (Luhn), IBANs (ISO 13616 mod-97) and IP addresses. The
checksums keep order numbers, dates and versions out: only numbers that could be real are masked.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDERS = {"EMAIL": "<EMAIL>", "CARD": "<CARD_NUMBER>", "IBAN": "<IBAN>", "IP": "<IP_ADDRESS>", "PHONE": "<PHONE>"}

EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# International (+CC ...) or grouped national numbers; 8-15 digits once separators are removed.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w-])|(?<![\w+])\+\d{8,15}(?!\w)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 8 <= len(digits) <= 15:
        return False
    # Grouped digits alone are too often amounts or ids; a phone has a + or a conventional shape.
    return text.startswith("+") or "(" in text or bool(re.fullmatch(r"\d{3}[ .-]\d{3}[ .-]\d{4}", text))


# Checked in this order; a later kind never overlaps a span an earlier kind took.
DETECTORS = (
    ("EMAIL", EMAIL, None),
    ("IBAN", IBAN, iban_ok),
    ("CARD", CARD, lambda s: 13 <= len(re.sub(r"\D", "", s)) <= 19 and luhn_ok(re.sub(r"\D", "", s))),
    ("IP", IPV4, ip_ok),
    ("IP", IPV6, lambda s: s.count(":") >= 2 and ip_ok(s)),
    ("PHONE", PHONE, phone_ok),
)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def find(text: str) -> list[Finding]:
    taken: list[Finding] = []
    for kind, pattern, valid in DETECTORS:
        for m in pattern.finditer(text):
            if valid is not None and not valid(m.group()):
                continue
            if any(m.start() < f.end and f.start < m.end() for f in taken):
                continue
            taken.append(Finding(kind, m.start(), m.end()))
    return sorted(taken, key=lambda f: f.start)


def mask(text: str) -> tuple[str, Counter]:
    """``text`` with each finding replaced by its placeholder, and how many of each kind."""
    findings = find(text)
    if not findings:
        return text, Counter()
    out, pos = [], 0
    for f in findings:
        out += [text[pos : f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
    out.append(text[pos:])
    return "".join(out), Counter(f.kind for f in findings)


# A word may be part of something to mask while text can still follow it: the word still being
# written, and a run of words with digits before it (the groups of a phone, card or IBAN).
_DIGITISH = re.compile(r"(?:\+|\(|[A-Z]{2}\d|[\w.%+()/:@-]*\d)[\w.%+()/:@-]*[.,;:]?")


def open_tail(text: str) -> int:
    """Where the part of ``text`` that later text could still change begins."""
    words = list(re.finditer(r"\S+", text))
    cut, i = len(text), len(words) - 1
    if words and words[-1].end() == len(text):  # still being written
        cut = words[-1].start()
        if not _DIGITISH.fullmatch(words[-1].group()):
            return cut
        i -= 1
    while i >= 0 and _DIGITISH.fullmatch(words[i].group()):
        cut, i = words[i].start(), i - 1
    return cut


class StreamMasker:
    """Masks text that arrives in pieces without waiting for the end: everything up to the
    last point where no finding can still be growing is released at once, masked."""

    def __init__(self) -> None:
        self.pending = ""
        self.found: Counter = Counter()

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
        masked, counts = mask(ready)
        self.found.update(counts)
        return masked
