"""What Presidio is given to work with here: a tokenizer instead of a spaCy model, and recognizers
for what Presidio leaves to a model's named entities (names, street addresses), to the number plan
(phone numbers, by shape here) or to nothing (dates of birth); and the numbers never to mask.

No English spaCy model with verifiable provenance ships on the package registry (docs/guardrails.md, "Personal
data"), so names come from a lexicon: the given names and surnames that Faker ships for its
Latin-script locales, found where the text says a name is coming (a title, "my name is") or as a
known given name followed by a capitalised surname. Production deployments that install a spaCy
model name it in RAGSERVE_PII_SPACY_MODEL and Presidio's own NER recognizer joins these.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import unicodedata

from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from presidio_analyzer.predefined_recognizers import UsSsnRecognizer


class TokenNlpEngine(NlpEngine):
    """Tokens and lower-cased words for Presidio's context words ("ssn", "passport"), from spaCy's
    rule-based English tokenizer: no model to load, microseconds per message."""

    def __init__(self) -> None:
        self.nlp = None

    def load(self) -> None:
        import spacy

        self.nlp = spacy.blank("en")

    def is_loaded(self) -> bool:
        return self.nlp is not None

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        doc = self.nlp(text)
        return NlpArtifacts(
            entities=[], tokens=doc, tokens_indices=[t.idx for t in doc], lemmas=[t.lower_ for t in doc], nlp_engine=self, language=language
        )

    def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        # Presidio skips stop words when it looks for context words; spaCy counts "call" as one.
        return self.nlp.vocab[word].is_stop and word.lower() not in PHONE_CONTEXT

    def is_punct(self, word: str, language: str) -> bool:
        return self.nlp.vocab[word].is_punct

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return ["en"]


class SsnRecognizer(UsSsnRecognizer):
    """Presidio's, except that the published sample numbers (078-05-1120, 123-45-6789) are masked
    too: a guard that leaves an SSN-shaped number alone because it may be fake has nothing to gain."""

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = re.sub(r"\D", "", pattern_text)
        if digits in ("123456789", "987654320", "078051120"):
            return len({c for c in pattern_text if c in ".- "}) > 1
        return super().invalidate_result(pattern_text)


# Phone numbers by shape, whatever the number plan says of the area code: an international number
# ("+" and a country code), a North American 3-3-4, a national number with a trunk 0 ("020 7946
# 0958", "030 1234567"), or bare digits (10-11, or 3-4 after a hyphen), which only context words
# ("call", "phone") make a phone. An extension ("x936", "ext. 12", "#123") belongs to the number.
PHONE_SHAPE = re.compile(
    r"(?<![\w+.\-/:#$€£])(?:"
    r"(?P<intl>\+\d{1,3}(?:[ .\-]?\(0\))?[ .\-]?\(?\d{1,5}\)?(?:[ .\-]?\d{1,6}){1,6})"
    r"|(?P<nanp>(?:1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4})"
    r"|(?P<trunk>(?:\(0\d{1,4}\)|0\d{1,4})(?:[ .\-]?\d{2,6}){1,4})"
    r"|(?P<bare>\d{10,11}|\d{3}-\d{4})"
    r")(?P<ext>\s*,?\s*(?i:x|ext\.?|extn\.?|extension|\#)\s*\d{1,6})?(?![\w/]|-\d|[.,:]\d)"
)
PHONE_CONTEXT = ["phone", "telephone", "tel", "call", "cell", "mobile", "mob", "fax", "dial", "ring", "text", "sms", "whatsapp", "reach",
                 "contact", "hotline", "helpline", "number"]  # fmt: skip


def _country_code(digits: str) -> bool:
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    return any(int(digits[:n]) in COUNTRY_CODE_TO_REGION_CODE for n in (1, 2, 3))


class PhoneShapeRecognizer(EntityRecognizer):
    """Phone numbers by their written shape. ``phonenumbers`` (Presidio's phone recognizer) takes
    only numbers valid in the number plan, so it passes "(426)829-3075" (an unassigned area code)
    and "+447700 974472" (a reserved range); the numbers people write are masked whatever they
    dial. Its country codes still check the "+" numbers, and Presidio's context words lift the
    bare-digit shapes. Shapes that are something else (timestamps, ISBNs, ids) are left to
    ``never_mask``."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="ragserve phone shape", context=PHONE_CONTEXT)

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:
        out = []
        for m in PHONE_SHAPE.finditer(text):
            score = self._score(m)
            if score:  # Presidio's context words raise it, and note why in its explanation
                explanation = AnalysisExplanation(recognizer=self.name, original_score=score)
                out.append(RecognizerResult("PHONE_NUMBER", m.start(), m.end(), score, analysis_explanation=explanation))
        return out

    @staticmethod
    def _score(m: re.Match) -> float:
        number = next(g for g in (m["intl"], m["nanp"], m["trunk"], m["bare"]) if g)
        digits = re.sub(r"\D", "", number)
        if m["intl"]:
            return 0.6 if 8 <= len(digits) <= 16 and _country_code(digits) else 0.0
        if m["trunk"]:
            if not 10 <= len(digits) <= 12:
                return 0.0
            return 0.6 if m["ext"] or not number.isdigit() else 0.2
        return 0.6 if m["nanp"] or m["ext"] else 0.2


def _isbn_valid(digits: str) -> bool:
    if len(digits) == 13:
        return digits[:3] in ("978", "979") and sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    values = [10 if d in "Xx" else int(d) for d in digits]
    return len(values) == 10 and sum((10 - i) * v for i, v in enumerate(values)) % 11 == 0


# Numbers that are never personal data, though a phone, card or SSN shape may fit them.
_ISBN = r"\d(?:[- ]?\d){11}[- ]?[\dXx]|\d(?:[- ]?\d){8}[- ]?[\dXx]"
ISBN_NAMED = re.compile(rf"(?i:\bISBN(?:-1[03])?:?)\s*(?P<n>{_ISBN})(?![\w-])")
ISBN_SHAPE = re.compile(rf"(?<![\w+\-.])(?P<n>{_ISBN})(?![\w-])")
_ID_CUE = (
    r"order|ticket|invoice|inv|case|ref|reference|tracking|booking|confirmation|reservation|transaction|txn|receipt|po|issue|bug|pr|"
    r"incident|claim|shipment|parcel|sku|part|serial|model|item|issn|doi|job|build|run|batch|lot|commit|patch|room|gate|flight|"
    r"platform|page|pages|pp|chapter|section|vol|volume|release|version|firmware|kernel|port"
)
NEVER_MASK = [
    # dates and times, ISO or written day-month-year, with a time and a zone
    re.compile(
        r"(?<![\w.\-/])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})"
        r"(?:[T ]\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?)?(?:Z|\s?[+-]\d{2}:?\d{2})?(?![\w\-/]|[.]\d)"
    ),
    re.compile(r"(?<![\w:])\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?"),
    re.compile(r"(?i:\b(?:ts|time|timestamp|epoch|created(?:_at)?|updated(?:_at)?)[\"']?\s*[=:]\s*[\"']?)\d{9,13}\b"),
    # ids, versions and ports named as such ("order 5551234567", "build 2025.01.07"), or written as a code ("INC-2025-000123")
    re.compile(rf"(?i:\b(?:{_ID_CUE})s?\.?)\s*(?i:no\.?|number|num|nr|#|id|code)?\s*(?i:is|was|[:#=])?\s*[A-Z0-9][\w\-/.]*"),
    re.compile(r"\b[A-Z]{2,}[-_]\d[\w\-]*"),
    re.compile(r"\bv\d+(?:\.\d+)+[\w.+\-]*|(?<![\d.])\d{1,2}\.\d{1,3}\.\d+(?![.\d])"),
    re.compile(r"(?<=[\w\]]):\d{2,5}\b"),
    # prices
    re.compile(
        r"[$€£¥₹]\s?\d[\d,.]*|\b(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|INR)\s?\d[\d,.]*|\d[\d,.]*\s?(?:USD|EUR|GBP|CHF|dollars|euros|pounds)\b"
    ),
    re.compile(r"\bhttps?://\S+|\bwww\.\S+"),
]


def never_mask(text: str) -> list[tuple[int, int]]:
    """The spans of ``text`` that hold no personal data whatever shape they have: timestamps and
    dates (a date of birth is found by its own cue), ISBNs (named, or by checksum), ids, versions,
    ports, prices and URLs."""
    spans = [m.span() for pattern in NEVER_MASK for m in pattern.finditer(text)]
    spans += [m.span("n") for m in ISBN_NAMED.finditer(text)]
    for m in ISBN_SHAPE.finditer(text):
        digits = re.sub(r"[- ]", "", m["n"])
        # a bare 10-digit ISBN is a bare 10-digit phone as often: only its hyphens or a 13-digit prefix tell
        if _isbn_valid(digits) and (len(digits) == 13 or m["n"].count("-") == 3):
            spans.append(m.span("n"))
    return spans


def _latin(name: str) -> bool:
    return all(unicodedata.name(c, "").startswith("LATIN") or c in "-' " for c in name)


@functools.cache
def name_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames) from Faker's person providers, Latin-script ones only."""
    import faker.providers.person as person

    given: set[str] = set()
    surnames: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attr, into in (("first_names", given), ("first_names_male", given), ("first_names_female", given), ("last_names", surnames)):
            names = provider.__dict__.get(attr, ())
            if isinstance(names, dict | tuple | list | set | frozenset):
                into.update(n for n in names if isinstance(n, str) and n[:1].isupper() and _latin(n))
    return frozenset(given), frozenset(surnames)


_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-Z]\.")
TITLES = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "professor", "sir", "madam", "dame", "lord", "lady"}
# Words after which a capitalised word is a person's name.
_NAME_CUE = re.compile(
    r"(?:\bmy name is|\bname(?: is|:)|\bi am|\bi'm|\bnamed|\bcalled|\bdear|\bhi|\bhello|\bregards,|\bsincerely,|\bthanks,|\bcontact|"
    r"\bsigned|\buser:|\bmy (?:kid|son|daughter|child|wife|husband|partner|friend|boss|colleague|brother|sister|mother|father|mom|dad|"
    r"manager|neighbou?r|doctor|lawyer|tenant|landlord|client|customer|patient))\s*$",
    re.IGNORECASE,
)
# Capitalised words that end a run of names: a place, a firm or a thing named after a person; a
# run they follow is that place's name ("Sydney Harbour", "Victoria Station"), not a person's.
_PLACES = {
    "street", "st", "avenue", "ave", "road", "rd", "lane", "drive", "boulevard", "way", "court", "place", "square", "park", "river",
    "lake", "mountain", "mount", "island", "islands", "bay", "city", "county", "state", "university", "college", "school", "hospital",
    "station", "airport", "bridge", "hall", "church", "bank", "company", "inc", "ltd", "llc", "corp", "group", "foundation", "institute",
    "museum", "center", "centre", "hotel", "prize", "award", "act", "harbour", "harbor", "beach", "valley", "falls", "heights", "pier",
    "quay", "wharf", "canyon", "creek", "forest", "sea", "ocean", "gulf", "strait", "peninsula", "coast", "glacier", "springs", "hills",
    "ridge", "palace", "castle", "cathedral", "abbey", "stadium", "arena", "theatre", "theater", "gallery", "library", "market", "mall",
    "plaza", "gardens", "zoo", "terminal", "port", "tower", "reef", "dam", "canal", "opera", "memorial", "cove", "district", "province",
    "region", "national", "international", "peak", "volcano", "desert", "fjord", "lagoon", "estuary", "marina", "harbourside",
}  # fmt: skip
_CALENDAR = {
    "day", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april",
    "may", "june", "july", "august", "september", "october", "november", "december",
}  # fmt: skip
_NOT_NAME = _PLACES | _CALENDAR
# Words that begin a place's name: the name after them is a lake's, a mountain's or a town's.
_PLACE_START = {
    "lake", "mount", "mt", "port", "fort", "ft", "cape", "saint", "st", "san", "santa", "loch", "glen", "point", "isle", "lac", "lago",
    "sainte", "new", "upper", "lower", "great", "little", "north", "south", "east", "west", "river", "bay", "gulf", "sea",
}  # fmt: skip


def _capitalised(word: str) -> bool:
    return word[:1].isupper() and (len(word) <= 2 or not word.isupper())


def _ends_sentence(word: str) -> bool:
    return word.endswith(".") and not _INITIAL.fullmatch(word) and word.rstrip(".").lower() not in TITLES


def _in_place_name(text: str, words: list, i: int, j: int) -> bool:
    """Whether the run ``words[i:j]`` is part of a place's name: "Lake Geneva", "Sydney Harbour"."""
    before = i > 0 and text[words[i - 1][1] : words[i][0]] == " " and words[i - 1][2].rstrip(".").lower() in _PLACE_START
    after = j < len(words) and text[words[j - 1][1] : words[j][0]] == " " and words[j][2].rstrip(".").lower() in _PLACES
    return before or after


class PersonRecognizer(EntityRecognizer):
    """Names: capitalised words after a title or a cue ("my name is"), or a known given name
    followed by capitalised words (its surname, middle names or initials)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="ragserve person lexicon")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:
        given, surnames = name_lexicon()
        words = [(m.start(), m.end(), m.group()) for m in re.finditer(rf"{_INITIAL.pattern}|{_WORD.pattern}\.?", text)]
        out, i = [], 0
        while i < len(words):
            start, _, word = words[i]
            bare = word.rstrip(".")
            titled = i > 0 and words[i - 1][2].rstrip(".").lower() in TITLES and text[words[i - 1][1] : start] == " "
            cued = bool(_NAME_CUE.search(text[max(0, start - 24) : start]))
            known = bare in given and not _ends_sentence(word)
            if not (titled or cued or known) or not _capitalised(bare) or bare.lower() in TITLES | _NOT_NAME:
                i += 1
                continue
            j = i + 1  # the run of name words: capitalised, a space apart, not a place or a firm
            while (
                j < len(words)
                and text[words[j - 1][1] : words[j][0]] == " "
                and not _ends_sentence(words[j - 1][2])
                and _capitalised(words[j][2])
                and words[j][2].rstrip(".").lower() not in _NOT_NAME
            ):
                j += 1
            last = words[j - 1][2].rstrip(".")
            if not titled and _in_place_name(text, words, i, j):
                i = j
                continue
            sentence_start = i == 0 or _ends_sentence(words[i - 1][2]) or "\n" in text[words[i - 1][1] : start]
            # A given name alone is too often a word ("Will", "May", "Grace"): it needs a surname (a
            # known one where a capital letter says nothing: the start of a sentence), or to be
            # the one addressed ("Daniela, can you ...").
            addressed = j - i == 1 and sentence_start and text[words[i][1] : words[i][1] + 1] == ","
            if not (titled or cued or addressed) and (j - i < 2 or (sentence_start and last not in surnames)):
                i += 1
                continue
            end = words[j - 1][1] - (1 if _ends_sentence(words[j - 1][2]) else 0)
            out.append(RecognizerResult("PERSON", start, end, 0.85 if (titled or cued) else 0.6))
            i = j
        return out


class RegexRecognizer(EntityRecognizer):
    """One case-sensitive pattern (Presidio's PatternRecognizer matches ignoring case, and here a
    capital letter is the evidence); ``group`` is the part that is masked."""

    def __init__(self, entity: str, pattern: re.Pattern, score: float, group: str | int = 0) -> None:
        super().__init__(supported_entities=[entity], name=f"ragserve {entity.lower()}")
        self.pattern, self.score, self.group = pattern, score, group

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:
        entity = self.supported_entities[0]
        return [RecognizerResult(entity, m.start(self.group), m.end(self.group), self.score) for m in self.pattern.finditer(text)]


_CAP = r"[A-Z][\w'’.-]*"
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|Circle|Parkway|Pkwy|Highway|Hwy|"
    r"Square|Sq|Trail|Close|Crescent|Row|Alley|Loop|Path|Pike|Plaza|Gardens|Grove|Mews|Hill|Hills|Trace|Summit|Crossing|View|Views|Point|"
    r"Ridge|Run|Walk|Parade|Esplanade|Expressway|Freeway|Turnpike|Rise|Vale|Heights|Park|Green)\b\.?"
)
_UNIT = r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|#)\.?\s*[\w-]+)?"
_CITY_STATE_ZIP = rf"(?:,?\s+{_CAP}(?:\s+{_CAP}){{0,3}},?\s+[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?)?"
_CONTINENTAL = r"(?:Rue|Via|Viale|Calle|Avenida|Rua|Carrer|Piazza|Plaza|Chemin|Allée|Ulica|Ul\.)"
_COMPOUND = r"[\w-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|vej|gade|gatan|vägen|veien|gata|laan|straat|plein|utca|ulica|katu|tie)"
STREET_ADDRESS = re.compile(
    "|".join(
        [
            rf"\b\d{{1,6}}[A-Za-z]?(?:-\d{{1,6}})?\s+(?:(?:N|S|E|W|North|South|East|West)\.?\s+)?(?:{_CAP}\s+){{1,4}}{_SUFFIX}{_UNIT}{_CITY_STATE_ZIP}",
            rf"\b{_CONTINENTAL}\s+(?:[\w'’.-]+\s+){{0,4}}?\d{{1,5}}[a-z]?\b",
            rf"\b[A-ZÆØÅÄÖÜ]{_COMPOUND}\s+\d{{1,5}}[a-z]?\b",
            r"\bP\.?\s?O\.?\s+Box\s+\d+\b",
            # French numbering before the street's type, written in lower case ("68, boulevard Simone Rodrigues")
            rf"\b\d{{1,4}}(?:\s?(?:bis|ter))?,?\s+(?:rue|boulevard|bd|avenue|allée|chemin|impasse|place|quai|cours)\s+(?:(?:de|du|des|la|d')\s*)*{_CAP}(?:[\s-]+{_CAP}){{0,3}}",
            # any number and capitalised street with a US city, state and ZIP code after it
            rf"\b\d{{1,6}}\s+(?:{_CAP}\s+){{0,3}}{_CAP}{_UNIT},\s+{_CAP}(?:\s+{_CAP}){{0,3}},\s+[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?",
        ]
    )
)
# Any street name with its number where the text says an address comes ("Unter den Linden 13").
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
_NAMES = rf"(?!{_MONTH}\s){_CAP}(?:\s+(?:{_CAP}|de|den|der|del|la|le|da|do|di|van|von|na)){{0,5}}"
CUED_ADDRESS = re.compile(
    r"(?i:\baddress\b|\bliv(?:e|es|ed|ing) (?:at|on)\b|\bmoved to\b|\blocated at\b|\bship(?:ped)? to\b|\bsend (?:it )?to\b)"
    rf"[^.!\n\d]{{0,60}}?[\s:](?P<address>\d{{1,6}}[A-Za-z]?\s+{_NAMES}|{_NAMES}\s+\d{{1,5}}[a-z]?)(?=[\s,.?!]|$)"
)
_DATE = (
    rf"\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}|"
    rf"(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?)?{_MONTH}(?:\s+\d{{1,2}}(?:st|nd|rd|th)?)?,?\s+\d{{4}}"
)
DATE_OF_BIRTH = re.compile(
    rf"(?i:\bborn\b|\bbirth(?:day|date)?\b|\bd\.?o\.?b\b\.?)[^\n\d]{{0,24}}?(?P<date>{_DATE})",
)


def ragserve_recognizers() -> list[EntityRecognizer]:
    return [
        PersonRecognizer(),
        RegexRecognizer("STREET_ADDRESS", STREET_ADDRESS, 0.7),
        RegexRecognizer("STREET_ADDRESS", CUED_ADDRESS, 0.6, "address"),
        RegexRecognizer("DATE_OF_BIRTH", DATE_OF_BIRTH, 0.85, "date"),
    ]
