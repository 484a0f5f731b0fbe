"""What Presidio is given to work with here: a tokenizer instead of a spaCy model, and recognizers
for what Presidio leaves to a model's named entities (names, street addresses) or to nothing
(dates of birth).

No English spaCy model with verifiable provenance ships on the package registry (README, "Personal
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

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from presidio_analyzer.predefined_recognizers import PhoneRecognizer, UsSsnRecognizer


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
        return self.nlp.vocab[word].is_stop

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


# A run of digits and separators long enough to be a phone number, with its "+" or "(".
_PHONE_CANDIDATE = re.compile(r"\+?\(?\d[\d ().\-/]{5,}\d")
_DATE_SHAPE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


class WindowedPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer (``phonenumbers``), run only on the stretches of text that hold
    enough digits: its matcher scans the whole text once per region, about 5 ms per region for a
    paragraph, which a long prompt with no phone number in it should not pay."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:
        out = []
        for m in _PHONE_CANDIDATE.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if digits < 7 or (m.group().isdigit() and digits < 10) or _DATE_SHAPE.fullmatch(m.group()):  # a count, a date
                continue
            start = max(0, m.start() - 1)
            for r in super().analyze(text[start : m.end() + 1], entities, None):
                r.start, r.end = r.start + start, r.end + start
                out.append(r)
        return out


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
# Capitalised words that end a run of names: a place, a firm or a thing named after a person.
_NOT_NAME = {
    "street", "st", "avenue", "ave", "road", "rd", "lane", "drive", "boulevard", "way", "court", "place", "square", "park", "river",
    "lake", "mountain", "mount", "island", "bay", "city", "county", "state", "university", "college", "school", "hospital", "station",
    "airport", "bridge", "hall", "church", "bank", "company", "inc", "ltd", "llc", "corp", "group", "foundation", "institute", "museum",
    "center", "centre", "hotel", "prize", "award", "act", "day", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december",
}  # fmt: skip


def _capitalised(word: str) -> bool:
    return word[:1].isupper() and (len(word) <= 2 or not word.isupper())


def _ends_sentence(word: str) -> bool:
    return word.endswith(".") and not _INITIAL.fullmatch(word) and word.rstrip(".").lower() not in TITLES


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
            titled = i > 0 and words[i - 1][2].rstrip(".").lower() in TITLES
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
    r"Square|Sq|Trail|Close|Crescent|Row|Alley|Loop|Path|Pike|Plaza|Gardens|Grove|Mews|Hill)\b\.?"
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
