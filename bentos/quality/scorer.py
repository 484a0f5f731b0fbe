"""Whether each sentence of a RAG answer stands on the chunks it was given: offline, no LLM, no network.

An answer becomes its claims (``claims_of``): its sentences, less a trailing "Sources:" line, bare
citation lists, greetings, refusals and hedges, and sentences of fewer than three content words.
Each claim is held against every sentence of every chunk, and every window of two consecutive
sentences: support = (cosine of the two embeddings + the share of the claim's content words, stemmed,
that the chunk sentence has) / 2, halved when a number, date or capitalised name of the claim is
missing from the chunk sentence, and halved again when the two disagree in polarity (one negated, the
other not, or one says "open" where the other says "closed"). A claim is supported when its best
support reaches ``THRESHOLD``, chosen on the validation split of the labelled set in
``bentos.quality.labelled``.

What it cannot see: words in another order ("A defeated B" against "B defeated A"), and a paraphrase
that shares few words with its chunk scores on the cosine alone (the labelled set has no paraphrased
supported claims, so how often such a claim falls below the threshold is not measured).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# Chosen on the validation split (articles Normans and Computational_complexity_theory of the SQuAD
# v2 subset) by maximising balanced accuracy of the supported kinds (extract, restated) against the
# unsupported ones (swap, other_passage, negation, restated_swap): 0.6302, balanced accuracy 0.957.
# Produced by `ragserve eval scorer` (bentos/quality/labelled.py).
THRESHOLD = 0.63
PENALTY = 0.5  # a missing number/date/name; and again a polarity that disagrees

# An answer that declines to answer: first person ("I could not find ..."), or about the documents
# ("the context does not mention ..."), or a plain "cannot answer".
DECLINES = (
    r"\b(?:i|we)(?:'m|'re| am| are| was| were)?\s+(?:do not|don't|did not|didn't|cannot|can't|can not|could not|couldn't"
    r"|unable to|not able to|have no|had no)\s+(?:\w+\s+){0,3}?(?:know|find|locate|determine|answer|tell|say|confirm|see"
    r"|information|access|details|data|enough|sufficient)\b",
    r"\b(?:the |these |those |provided |given |available |retrieved |supplied )+(?:documents?|context|sources?|passages?|excerpts?"
    r"|chunks?|texts?|materials?)\b[^.!?]{0,40}?\b(?:does not|do not|doesn't|don't|did not|didn't|cannot|can't)\s+(?:\w+\s+){0,2}?"
    r"(?:say|mention|contain|provide|state|specify|include|cover|address|answer|tell|indicate|discuss|give)\b",
    r"\b(?:cannot|can't|can not|unable to|not able to) (?:answer|determine|say|tell)\b",
    r"\bthere (?:is|was) no (?:relevant |specific |further )?(?:information|mention|details?|data)\b",
    r"\bnot (?:mentioned|covered|specified|stated|addressed|included|found) in the (?:provided |given |retrieved )?"
    r"(?:documents?|context|sources?|passages?|excerpts?|text)\b",
    r"\bi(?:'m| am) (?:not (?:sure|certain)|unsure|uncertain)\b",
    r"\b(?:it is|it's) (?:not clear|unclear) (?:from|whether|if)\b",
)
_DECLINE = re.compile("|".join(f"(?:{p})" for p in DECLINES), re.IGNORECASE)
_GREETING = re.compile(
    r"^\W*(?:hi|hello|hey|greetings|sure|certainly|of course|absolutely|great question|good question|thanks|thank you"
    r"|you're welcome|(?:i )?hope (?:this|that|it) helps|let me know\b|feel free\b|happy to help|glad to help)\b",
    re.IGNORECASE,
)

MARKER = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_SOURCES = re.compile(r"(?P<pre>^|[.!?)\]]\s+|\n)[ \t>*_#-]*(?:sources?|references?|citations?)[*_]*\s*:", re.IGNORECASE | re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•>]+|\d+[.)])\s+")
_FILE_LIKE = re.compile(r"\S+\.[A-Za-z0-9]{1,5}\b|https?://\S+")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)]*(?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])*")
ABBREVIATIONS = set("mr mrs ms dr prof st sr jr vs etc no inc ltd co corp fig approx dept".split())

STOPWORDS = frozenset(
    """a an the and or but if then than so as of at by for with about into onto from to in on out up down over under again
    further once here there when where why how all any both each few other some such only own same too very s t can will
    just should now i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom whose this that these those am is are was
    were be been being have has had having do does did doing would could shall may might must also indeed however therefore
    thus yes ok okay well really actually basically generally typically usually according based provided given document
    documents context source sources chunk chunks passage text say says said state states stated mention mentions mentioned
    note notes noted answer""".split()
)
NEGATORS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere"})
ANTONYMS = (
    ("open", "closed"), ("open", "close"), ("allowed", "forbidden"), ("allowed", "prohibited"), ("permitted", "forbidden"),
    ("before", "after"), ("increase", "decrease"), ("more", "less"), ("more", "fewer"), ("include", "exclude"),
    ("accepted", "rejected"), ("above", "below"), ("higher", "lower"), ("earlier", "later"), ("win", "lose"),
    ("minimum", "maximum"), ("true", "false"), ("free", "paid"),
)  # fmt: skip
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|\d+(?:[.,:]\d+)*")
_CONTRACTIONS = ((re.compile(r"\bcan't\b|\bcannot\b", re.I), "can not"), (re.compile(r"\bwon't\b", re.I), "will not"),
                 (re.compile(r"n't\b", re.I), " not"))  # fmt: skip
_LEADING_YES_NO = re.compile(r"^\s*(?:yes|no)\b[\s,;:!.-]*", re.IGNORECASE)


def _suffix_stripper(word: str) -> str:
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def _make_stemmer() -> Callable[[str], str]:
    """Snowball (Porter2) English: the `snowballstemmer` the project pins, else NLTK's, else a suffix stripper."""
    try:
        import snowballstemmer

        return snowballstemmer.stemmer("english").stemWord
    except ImportError:
        pass
    try:
        from nltk.stem.snowball import SnowballStemmer

        return SnowballStemmer("english").stem
    except ImportError:
        return _suffix_stripper


_STEM = _make_stemmer()


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _STEM(word.lower())


_ANTONYM_STEMS = tuple((stem(a), stem(b)) for a, b in ANTONYMS)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``; a ``[n]`` marker after the full stop stays with its sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        rest = text[end:]
        if rest and not rest[0].isspace():
            continue  # 3.5, file.md, e.g.x
        following = rest.lstrip()
        if following and not (following[0].isupper() or following[0].isdigit() or following[0] in "\"'“‘([*"):
            continue
        if m.group().startswith(".") and _abbreviation_before(text, m.start()):
            continue
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def _abbreviation_before(text: str, dot: int) -> bool:
    m = re.search(r"(?:^|[\s(])([A-Za-z][A-Za-z.]*)$", text[:dot])
    if not m:
        return False
    word = m.group(1)
    return word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper()) or bool(re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word))


def split_sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def strip_markers(text: str) -> str:
    text = MARKER.sub("", text)
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


def markers_of(text: str) -> list[int]:
    return [int(n) for group in MARKER.findall(text) for n in re.split(r"\s*[,;]\s*", group)]


def _tokens(text: str) -> list[str]:
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text.replace("’", "'"))
    return [NUMBER_WORDS.get(t.lower(), t) for t in _TOKEN.findall(text)]


def _number(token: str) -> str | None:
    return token.replace(",", "") if token[0].isdigit() else None


def content_words(text: str) -> list[str]:
    return [t.lower() for t in _tokens(strip_markers(text)) if t.lower() not in STOPWORDS and t.lower() not in NEGATORS]


@dataclass(frozen=True)
class _Analysis:
    content: frozenset[str]  # stems of the content words
    stems: frozenset[str]  # stems of every word (numbers as written, less thousands separators)
    numbers: frozenset[str]
    names: frozenset[str]  # stems of capitalised words past the first, not function words
    negated: bool  # an odd number of negations


@lru_cache(maxsize=16384)
def _analyse(text: str) -> _Analysis:
    text = _LEADING_YES_NO.sub("", strip_markers(text))
    tokens = _tokens(text)
    stems, content, numbers, names = set(), set(), set(), set()
    negations = 0
    for i, tok in enumerate(tokens):
        low = tok.lower()
        num = _number(tok)
        s = num if num is not None else stem(low)
        stems.add(s)
        if num is not None:
            numbers.add(num)
        if low in NEGATORS:
            negations += 1
            continue
        if low not in STOPWORDS:
            content.add(s)
            if i > 0 and num is None and tok[0].isupper() and low != "i":
                names.add(s)
    return _Analysis(frozenset(content), frozenset(stems), frozenset(numbers), frozenset(names), negations % 2 == 1)


def _coverage(claim: _Analysis, unit_content: frozenset[str]) -> float:
    return len(claim.content & unit_content) / len(claim.content) if claim.content else 0.0


def _disagree(claim: _Analysis, other: _Analysis) -> bool:
    flips = int(claim.negated != other.negated)
    for a, b in _ANTONYM_STEMS:
        if (a in claim.stems and b in other.stems and a not in other.stems and b not in claim.stems) or (
            b in claim.stems and a in other.stems and b not in other.stems and a not in claim.stems
        ):
            flips += 1
            break
    return flips % 2 == 1


@dataclass(frozen=True)
class _Unit:
    text: str
    sentences: tuple[str, ...]  # embedded one by one; a window's vector is the normalised mean of its two
    parts: tuple[_Analysis, ...]  # one sentence, or two consecutive ones
    content: frozenset[str]
    stems: frozenset[str]


def _units(chunk: str) -> list[_Unit]:
    sentences = [s for s in split_sentences(chunk) if s.strip()] or ([chunk] if chunk.strip() else [])
    analyses = [_analyse(s) for s in sentences]
    units = [_Unit(s, (s,), (a,), a.content, a.stems) for s, a in zip(sentences, analyses)]
    for i in range(len(sentences) - 1):
        a, b = analyses[i], analyses[i + 1]
        units.append(
            _Unit(sentences[i] + " " + sentences[i + 1], (sentences[i], sentences[i + 1]), (a, b), a.content | b.content, a.stems | b.stems)
        )
    return units


def _unit_support(claim: _Analysis, unit: _Unit, cosine: float) -> float:
    support = (max(cosine, 0.0) + _coverage(claim, unit.content)) / 2
    if claim.numbers - unit.stems or claim.names - unit.stems:
        support *= PENALTY
    # polarity: against the sentence of the unit that carries most of the claim's words
    carrier = max(unit.parts, key=lambda part: _coverage(claim, part.content))
    if _disagree(claim, carrier):
        support *= PENALTY
    return min(support, 1.0)


@dataclass
class SentenceScore:
    text: str
    support: float  # 0..1, best over the chunks
    supported: bool  # support >= threshold
    chunk: int | None  # 0-based index of the best-supporting chunk
    cites: list[int]  # the [n] markers in this sentence, 1-based as written
    cites_supported: list[bool]  # per marker: does chunk n-1 alone support this sentence


@dataclass
class AnswerScore:
    refused: bool  # the answer declines (see DECLINES) and makes no claim
    sentences: list[SentenceScore]  # the answer's claims
    faithfulness: float | None  # supported claims / claims; None without claims
    citation_precision: float | None  # supported markers / markers; None without markers
    relevance: float  # cosine(question, answer), 0 when empty
    source_markers: list[int] = field(default_factory=list)  # the markers of a "Sources:" line or bare citation list

    @property
    def unsupported(self) -> list[str]:
        return [s.text for s in self.sentences if not s.supported]


@dataclass
class _Parsed:
    body: str  # the answer less its sources line
    claims: list[str]
    source_markers: list[int]
    declined: bool


def _parse(answer: str) -> _Parsed:
    text = answer.replace("\r", "").replace("’", "'")
    source_markers: list[int] = []
    m = _SOURCES.search(text)
    if m:
        source_markers += markers_of(text[m.end() :])
        text = text[: m.start()] + m.group("pre").rstrip()
    claims: list[str] = []
    declined = False
    for line in text.split("\n"):
        line = _BULLET.sub("", line.replace("**", "").replace("__", "")).strip().lstrip("#").strip()
        for sentence in split_sentences(line):
            bare = _FILE_LIKE.sub(" ", strip_markers(sentence))
            if MARKER.search(sentence) and (not re.search(r"[A-Za-z]", bare) or MARKER.match(sentence) and len(content_words(bare)) < 3):
                source_markers += markers_of(sentence)  # a bare citation list: "[1] museum.md, [2] hours.md"
                continue
            if _DECLINE.search(sentence):
                declined = True
                continue
            if _GREETING.search(sentence) or len(content_words(sentence)) < 3:
                continue
            claims.append(sentence)
    return _Parsed(text.strip(), claims, source_markers, declined)


def claims_of(answer: str) -> list[str]:
    """The sentences of ``answer`` that claim something, each with its ``[n]`` markers."""
    return _parse(answer).claims


def _unit_vector(unit: _Unit, vectors: dict[str, np.ndarray]) -> np.ndarray:
    if len(unit.sentences) == 1:
        return vectors[unit.sentences[0]]
    mean = sum(vectors[t] for t in unit.sentences)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


class OfflineScorer:
    name = "offline"

    def __init__(self, embedder=None, threshold: float = THRESHOLD, cache_size: int = 20000):
        if embedder is None:
            from bentos.retrieval.embedder import get_embedder

            embedder = get_embedder()
        self.embedder = embedder
        self.threshold = threshold
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # sentence embeddings, across calls (chunks recur)
        self._cache_size = cache_size

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, row in zip(missing, self.embedder.embed(missing)):  # one batch per call
                self._cache[text] = row
        out = {}
        for t in texts:
            self._cache.move_to_end(t)
            out[t] = self._cache[t]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def _support_matrix(self, claims: list[str], chunks: list[str], extra: list[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """support[i, j] of claim i (markers stripped) by chunk j, and the embeddings of everything embedded."""
        texts = [strip_markers(c) for c in claims]
        units = [_units(chunk) for chunk in chunks]
        vectors = self._embed(
            [*texts, *(t for us in units for u in us if len(u.sentences) == 1 for t in u.sentences), *[e for e in extra if e]]
        )
        support = np.zeros((len(claims), len(chunks)), dtype=np.float64)
        for i, text in enumerate(texts):
            claim = _analyse(text)
            for j, chunk_units in enumerate(units):
                if chunk_units:
                    cosines = np.stack([_unit_vector(u, vectors) for u in chunk_units]) @ vectors[text]
                    support[i, j] = max(_unit_support(claim, u, float(c)) for u, c in zip(chunk_units, cosines))
        return support, vectors

    def sentence_support(self, sentence: str, chunks: list[str]) -> tuple[float, int | None, list[float]]:
        """The best support of ``sentence`` over ``chunks``, the chunk that gives it, and the support of each chunk."""
        support, _ = self._support_matrix([sentence], chunks)
        per_chunk = [float(x) for x in support[0]]
        if not per_chunk:
            return 0.0, None, []
        best = int(np.argmax(support[0]))
        return per_chunk[best], best, per_chunk

    def score(self, question: str, answer: str, chunks: list[str]) -> AnswerScore:
        parsed = _parse(answer)
        body = strip_markers(parsed.body)
        support, vectors = self._support_matrix(parsed.claims, chunks, extra=[question, body])
        sentences = []
        for i, claim in enumerate(parsed.claims):
            row = support[i]
            best = int(np.argmax(row)) if len(chunks) else None
            value = float(row[best]) if best is not None else 0.0
            cites = markers_of(claim)
            sentences.append(
                SentenceScore(
                    text=claim,
                    support=value,
                    supported=value >= self.threshold,
                    chunk=best,
                    cites=cites,
                    cites_supported=[1 <= n <= len(chunks) and bool(row[n - 1] >= self.threshold) for n in cites],
                )
            )
        marks = [ok for s in sentences for ok in s.cites_supported]
        for n in parsed.source_markers:  # a source is right when its chunk supports at least one claim
            marks.append(bool(sentences) and 1 <= n <= len(chunks) and bool((support[:, n - 1] >= self.threshold).any()))
        relevance = float(vectors[question] @ vectors[body]) if question.strip() and body else 0.0
        return AnswerScore(
            refused=parsed.declined and not sentences,
            sentences=sentences,
            faithfulness=sum(s.supported for s in sentences) / len(sentences) if sentences else None,
            citation_precision=sum(marks) / len(marks) if marks else None,
            relevance=relevance,
            source_markers=parsed.source_markers,
        )
