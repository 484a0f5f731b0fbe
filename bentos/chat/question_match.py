"""Whether two questions ask the same thing, word for word: the answer cache's check beside the
cosine, which cannot tell "the first quarter" from "the second" (0.93) or "list to tuple" from
"tuple to list" (0.997).

Each question becomes its content words, stemmed, in order: function words, politeness and
question framing ("could you tell me", "how do I" / "how can I") go; everything that tells
questions apart stays, numbers, ordinals, days, months, names, comparatives, negations, question
words, direction words ("from", "before", "off", "without"). Two questions match when they have
the same content words, a word only standing for another inside one small synonym group below, in
the same order within each clause (clauses, split at punctuation and at "if", "when", ..., may come
in any order), the same tense of their auxiliaries (past or not) and the same negations.

Masked personal data: the gateway matches on the masked message ("<PERSON>"), which would make
two people one; the digest of the unmasked question's words must then match too, so nothing of
what was masked is kept in the clear.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

_STEMMER = snowballstemmer.stemmer("english")

ASKING = (
    r"(?:(?:could|can|would|will) you (?:tell|show|explain to|let) me(?: know)?|(?:could|can|would|will) you (?:explain|describe)"
    r"|tell me|let me know|explain|describe|i(?:'d| would) like to know|i want to know|i need to know|i was wondering|i wonder"
    r"|do you know|any idea)"
)
# Phrases that only frame or soften a question, or say one thing in two ways; replaced first.
PHRASES = [
    (r"\b(?:hi|hello|hey|thanks|thank you|excuse me|sorry|quick question)\b", " "),
    (r"\b(?:please|kindly)\b", " "),
    # asking to be told: framing before a question word or "if", else it asks what something is
    (rf"\b{ASKING}(?:\s+(?:if|whether)\b|(?=\s+(?:what|which|who|whom|whose|when|where|why|how)\b))", " "),
    (rf"\b{ASKING}(?:\s+about)?\b", " what "),
    (
        r"\bhow (?:(?:can|could|should|would|may|might|do|does) (?:i|we|you|one)|(?:i|we|one) (?:can|could|should|would|may|might))\b",
        " how ",
    ),
    (r"\bwhere (?:(?:can|could|do|does) (?:i|we|you|one)|(?:i|we|one) (?:can|could))\b", " where "),
    (r"\b(?:at )?what time\b", " when "),
    (r"\bhow much time\b", " how long "),
    (r"\bmoney back\b", " refund "),
    (r"\b(?:log|sign)[ -]?(?:in|on)(?:to)?\b", " signin "),
    (r"\b(?:log|sign)[ -]?(?:out|off)\b", " signout "),
    (r"\bsign[ -]?up\b", " register "),
    (r"\b(?:is it|it is|it's) possible to\b", " can "),
    (r"\b(?:have|has|had) (?:got )?to\b", " must "),
]
NEGATED = [(r"\bcan't\b|\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"n't\b", " not")]
CLITICS = [(r"'(?:s|re|m|ve|ll|d)\b", "")]  # after the phrases: "I'd like to know"
TOKEN = re.compile(r"<[a-z_]+>|\d+(?:st|nd|rd|th)\b|\d+(?:[.,:/]\d+)*|[a-z0-9]+(?:-[a-z0-9]+)*|[$€£%]")

# Dropped: articles, pronouns of the asker and the answerer, auxiliaries, prepositions whose
# meaning the other words carry. Kept (not listed): question words, quantifiers, negations,
# direction words (from, before, after, off, out, up, without, ...) and every other word.
FUNCTION_WORDS = set(
    """a an the i me my mine myself we us our ours you your yours yourself it its itself this that these those there here
    is are am be been being do does doing done have has having will would shall of for in on at by with about as than
    just also too very really actually currently exactly anyway so then""".split()
)
PAST = {"was", "were", "did", "had"}  # the tense a question asks in; a main verb's own tense goes with its stem
NEGATIONS = {"not", "never"}  # counted, not placed: "why doesn't it work" is "why does it not work"
TO_INFINITIVE = {"how", "want", "like", "need", "must", "able", "allowed", "permitted", "possible", "going", "way", "supposed",
                 "ought", "try", "trying", "plan", "planning", "steps", "step", "wish", "used", "required", "can", "should"}  # fmt: skip
CLAUSE_START = {"if", "when", "unless", "because", "while", "whereas", "although", "though", "since"}
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
ORDINAL_WORDS = {w: f"{i}th" for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth".split(), 1)}
MONTH_ABBREVIATIONS = dict(
    jan="january", feb="february", apr="april", jun="june", jul="july", aug="august", sep="september", sept="september",
    oct="october", nov="november", dec="december",
)  # fmt: skip
UNITS = {"percent": "%", "dollar": "$", "dollars": "$", "usd": "$", "euro": "€", "euros": "€", "eur": "€", "gbp": "£"}
MAY_AS_MONTH = {"in", "of", "since", "until", "till", "by", "before", "after", "during", "from", "to", "early", "late", "mid"}

# Words that say the same in a question: small and explicit, never a number, date, name,
# comparative, negation or direction. The first word of a group stands for the others.
SYNONYMS = [
    "what which",
    "to into",
    "can could might allowed permitted able allow permit possible",  # permission or possibility
    "must need require required",  # obligation
    "should ought",
    "buy purchase",
    "start begin commence",
    "get obtain receive got gotten",
    "fix repair",
    "choose select pick",
    "delete remove erase",
    "change modify alter",
    "find locate",
    "help assist",
    "cost price",
    "big large",
    "fast quick",
    "show display",
    "phone telephone",
    "doctor physician",
    "medicine medication",
    "register enrol enroll",
]


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _STEMMER.stemWord(word)


_CANONICAL = {stem(w): stem(group.split()[0]) for group in SYNONYMS for w in group.split()}


@dataclass(frozen=True)
class Question:
    """What a question is compared by: content words per clause (sorted), its tense and negations,
    and the digest of the unmasked words when something was masked."""

    clauses: tuple[tuple[str, ...], ...]
    flags: tuple[str, ...] = ()  # "past" and each negation
    private: str | None = None

    @classmethod
    def of(cls, text: str, unmasked: str | None = None) -> Question:
        clauses, flags = parse(text)
        private = None
        if unmasked is not None and unmasked != text:
            private = hashlib.sha256(repr(parse(unmasked)).encode()).hexdigest()
        return cls(clauses, flags, private)

    def matches(self, other: Question) -> bool:
        return self == other


def normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    for pattern, repl in NEGATED + PHRASES + CLITICS:
        text = re.sub(r"\s+", " ", re.sub(pattern, repl, text))
    return text


def canonical(word: str, before: str | None) -> str | None:
    """The word as compared, or None for a word that does not tell questions apart."""
    if word.startswith("<") or word in "$€£%":
        return word  # a masked span, or a unit
    if re.fullmatch(r"\d+(?:st|nd|rd|th)", word):
        return re.sub(r"(?:st|nd|rd)$", "th", word)
    if word[0].isdigit():
        return word.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+", word) else word
    if word == "may" and before not in MAY_AS_MONTH:
        return "can"  # the modal, not the month
    if word == "to" and before in TO_INFINITIVE:
        return None
    if word in FUNCTION_WORDS or word in PAST:
        return None
    if word in NUMBER_WORDS or word in ORDINAL_WORDS or word in UNITS:
        return NUMBER_WORDS.get(word) or ORDINAL_WORDS.get(word) or UNITS[word]
    word = MONTH_ABBREVIATIONS.get(word, word)
    word = word.replace("-", "") if not any(c.isdigit() for c in word) else word  # e-mail, wi-fi
    s = stem(word)
    return _CANONICAL.get(s, s)


def parse(text: str) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """Content words per clause, in order (the clauses sorted), and the question's tense and negations."""
    clauses: list[list[str]] = [[]]
    flags = []
    before: str | None = None
    for piece in re.split(r"([,;:()]|\s-\s)", normalise(text)):
        if re.fullmatch(r"[,;:()]|\s-\s", piece):
            clauses.append([])
            continue
        for raw in TOKEN.findall(piece):
            if raw in PAST and "past" not in flags:
                flags.append("past")
            if raw in CLAUSE_START and clauses[-1]:
                clauses.append([])
            word = canonical(raw, before)
            before = raw
            if word in NEGATIONS:
                flags.append(word)
            elif word is not None:
                clauses[-1].append(word)
    return tuple(sorted(tuple(c) for c in clauses if c)), tuple(sorted(flags))
