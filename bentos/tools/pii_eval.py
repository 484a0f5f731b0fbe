"""`ragserve eval pii`: how much personal data the masking catches, and how much ordinary text it
alters, on data it was not written against.

Two sources. Our own labelled set (guardrails/eval/pii_set.jsonl): support messages, signatures,
CRM notes and log lines with phone numbers in many national and international formats (with and
without extensions), names, street addresses and emails, each span labelled; and ordinary text
that must stay intact: log lines with timestamps, tickets, orders and invoices, release notes with
versions, ports and URLs, citations with ISBNs, place names, schedules, prices. Any change to an
ordinary row counts as altered. And the templates that ship with Microsoft's presidio-evaluator
(installed, never imported: only its raw data is read), filled with the people of its
FakeNameGenerator table and Faker's cards, IBANs, IP addresses and passport numbers, beside the
SQuAD sentences with digits in ../shared/eval, of which only a changed number counts (SQuAD names
real people).

Every source is split in two by a hash (of the template, for the filled ones): the score threshold
is chosen on the validation half (the most masked while the ordinary text altered stays within
the budget), the figures are reported on the test half, which the choice never saw, and the gate
checks them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from bentos.guard import pii
from bentos.guard.training import TrainingDataError, packaged

THRESHOLDS = (0.05, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85)
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# A few templates of ours for the kinds the evaluator's templates lack (passports, driving
# licences) or hold once or twice (SSNs, dates of birth); split like the others.
OWN_TEMPLATES = [
    "My passport number is {{passport}}, can you check the visa rules for me?",
    "Passport no. {{passport}} expires next month.",
    "Please update my driver license number to {{us_driver_license}}.",
    "Driving licence {{us_driver_license}} was issued in {{city}}.",
    "My SSN is {{ssn}} and my date of birth is {{date_of_birth}}.",
    "Social security number: {{ssn}}",
    "I was born on {{date_of_birth}} in {{city}}.",
    "DOB {{date_of_birth}}, phone {{phone_number}}",
]
# Template fields that are personal data, and the kind each one is.
KIND_OF = {
    "person": "PERSON",
    "name": "PERSON",
    "name_female": "PERSON",
    "name_male": "PERSON",
    "first_name": "PERSON",
    "first_name_male": "PERSON",
    "first_name_female": "PERSON",
    "first_name_nonbinary": "PERSON",
    "last_name": "PERSON",
    "last_name_male": "PERSON",
    "last_name_female": "PERSON",
    "address": "ADDRESS",
    "street_address": "ADDRESS",
    "credit_card_number": "CARD",
    "phone_number": "PHONE",
    "email": "EMAIL",
    "iban": "IBAN",
    "ip_address": "IP",
    "ssn": "SSN",
    "date_of_birth": "DATE_OF_BIRTH",
    "us_driver_license": "DRIVER_LICENSE",
    "passport": "PASSPORT",
}


class PiiEvalError(RuntimeError):
    pass


def evaluator_data() -> Path:
    try:
        return packaged("presidio-evaluator==0.3.2", "presidio_evaluator/data_generator/raw_data")
    except TrainingDataError as e:
        raise PiiEvalError(str(e)) from None


def _split(key: str) -> str:
    return "validation" if int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


@dataclass
class Sample:
    text: str
    spans: list[tuple[str, int, int]]  # (kind, start, end) of each piece of personal data
    split: str


def _people(root: Path) -> list[dict]:
    with (root / "FakeNameGenerator.com_3000.csv").open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def _value(field: str, person: dict, fake) -> str | None:
    first, last = person["GivenName"], person["Surname"]
    code, number = person["TelephoneCountryCode"], person["TelephoneNumber"]
    phone = number if code == "1" else f"+{code} {number}"
    address = person["StreetAddress"] + (f", {person['City']}, {person['State']} {person['ZipCode']}" if person["Country"] == "US" else "")
    m, d, y = person["Birthday"].split("/")
    values = {
        "person": f"{first} {last}",
        "name": f"{first} {last}",
        "name_female": f"{first} {last}",
        "name_male": f"{first} {last}",
        "first_name": first,
        "first_name_male": first,
        "first_name_female": first,
        "first_name_nonbinary": first,
        "last_name": last,
        "last_name_male": last,
        "last_name_female": last,
        "address": address,
        "street_address": person["StreetAddress"],
        "phone_number": phone,
        "email": person["EmailAddress"],
        "date_of_birth": fake.random_element([person["Birthday"], f"{y}-{int(m):02d}-{int(d):02d}", f"{fake.month_name()} {d}, {y}"]),
        "ssn": person["NationalID"] if person["Country"] == "US" and person["NationalID"] else fake.ssn(),
        "credit_card_number": fake.credit_card_number(),
        "iban": fake.iban(),
        "ip_address": fake.random_element([fake.ipv4(), fake.ipv6()]),
        "passport": fake.passport_number(),
        "us_driver_license": fake.bothify(fake.random_element(["?#######", "#########", "?###-####-####"])).upper(),
        "city": person["City"],
        "country": person["CountryFull"],
        "building_number": str(fake.building_number()),
        "street_name": fake.street_name(),
    }
    return values.get(field)


def _fill(template: str, person: dict, fake) -> Sample | None:
    text, spans, pos = "", [], 0
    # A building number before a street name is a street address: the person's own.
    template = template.replace("\\n", "\n").replace("{{building_number}} {{street_name}}", "{{street_address}}")
    for m in PLACEHOLDER.finditer(template):
        field = m.group(1)
        value = _value(field, person, fake)
        if value is None:  # a field that is not personal data: a generic stand-in
            value = {"year": str(fake.year()), "age": str(fake.random_int(18, 90))}.get(field) or fake.word().capitalize()
        text += template[pos : m.start()]
        if KIND_OF.get(field):
            spans.append((KIND_OF[field], len(text), len(text) + len(value)))
        text += value
        pos = m.end()
    text += template[pos:]
    return Sample(text, spans, "") if spans else None


def personal_samples(seed: int = 7) -> list[Sample]:
    from faker import Faker

    root = evaluator_data()
    templates = [t.strip() for t in (root / "templates.txt").read_text(encoding="utf-8").splitlines() if t.strip()] + OWN_TEMPLATES
    people = _people(root)
    fake = Faker("en_US")
    Faker.seed(seed)
    rnd = random.Random(seed)
    out = []
    for template in templates:
        if not any(KIND_OF.get(f) for f in PLACEHOLDER.findall(template)):
            continue
        split = _split(template)
        for _ in range(3):
            person = rnd.choice([p for p in people if _split(p["Number"]) == split] or people)
            sample = _fill(template, person, fake)
            if sample:
                sample.split = split
                out.append(sample)
    return out


def number_sentences(squad: Path) -> list[tuple[str, str]]:
    """(sentence, split) for the SQuAD sentences that hold a digit: years, amounts, counts, ids."""
    try:
        data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError) as e:
        raise PiiEvalError(f"{squad}: not a SQuAD file ({e})") from None
    sentences = dict.fromkeys(
        s.strip() for a in data for p in a["paragraphs"] for s in re.split(r"(?<=[.!?])\s+", p["context"]) if re.search(r"\d", s)
    )
    return [(s, _split(s)) for s in sentences]


OWN_SET = Path(__file__).resolve().parents[2] / "guardrails" / "eval" / "pii_set.jsonl"


@dataclass
class Ordinary:
    text: str
    split: str
    whole: bool  # any change counts as altered; else only a changed number (the sentence may name real people)


def own_set(path: Path = OWN_SET) -> tuple[list[Sample], list[Ordinary]]:
    """Our labelled rows: those with spans hold personal data, the others must stay as they are."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise PiiEvalError(f"{path}: {e}") from None
    samples = [Sample(r["text"], [tuple(s) for s in r["spans"]], _split(r["group"])) for r in rows if r["spans"]]
    return samples, [Ordinary(r["text"], _split(r["group"]), True) for r in rows if not r["spans"]]


def _altered(o: Ordinary, findings: list[pii.Finding]) -> bool:
    return bool(findings) if o.whole else any(re.search(r"\d", o.text[f.start : f.end]) for f in findings)


# Presidio runs once per text; each threshold only filters its findings.
_analyzed = functools.lru_cache(maxsize=None)(pii.analyze)


def _find(text: str, threshold: float) -> list[pii.Finding]:
    return pii.resolve(_analyzed(text), threshold)


def _share(flags: list) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def score(samples: list[Sample], ordinary: list[Ordinary], threshold: float) -> dict:
    """Share of personal data masked (a span counts when findings cover most of it), by kind; share
    of sentences with personal data where something else was masked too; share of ordinary
    sentences altered."""
    caught: dict[str, list[int]] = {}
    beside = []
    for s in samples:
        findings = _find(s.text, threshold)
        for kind, start, end in s.spans:
            covered = sum(max(0, min(end, f.end) - max(start, f.start)) for f in findings)
            caught.setdefault(kind, []).append(int(covered >= 0.8 * (end - start)))
        beside.append(any(all(f.end <= start or end <= f.start for _, start, end in s.spans) for f in findings))
    total = [x for v in caught.values() for x in v]
    return {
        "threshold": threshold,
        "values": len(total),
        "sentences": len(samples),
        "masked": _share(total),
        "masked_by_kind": {k: _share(v) for k, v in sorted(caught.items())},
        "values_by_kind": {k: len(v) for k, v in sorted(caught.items())},
        "masked_beside": _share(beside),
        "ordinary": len(ordinary),
        "ordinary_altered": _share([_altered(o, _find(o.text, threshold)) for o in ordinary]),
    }


def gate(test: dict[str, dict], max_altered: float = 0.02, min_phone: float = 0.95) -> list[str]:
    """What fails on the test split, per source: ordinary text altered over the budget, or phone
    numbers (the costliest miss in a privacy filter, and the kind most written) masked too rarely."""
    failures = []
    for source, r in test.items():
        if r["ordinary_altered"] is not None and r["ordinary_altered"] > max_altered:
            failures.append(f"{source}: {r['ordinary_altered']:.1%} of ordinary sentences altered (at most {max_altered:.0%})")
        if r["masked_by_kind"].get("PHONE", 1.0) < min_phone:
            failures.append(f"{source}: {r['masked_by_kind']['PHONE']:.1%} of phone numbers masked (at least {min_phone:.0%})")
    return failures


def sources(squad: Path) -> dict[str, tuple[list[Sample], list[Ordinary]]]:
    return {
        "own": own_set(),
        "evaluator": (personal_samples(), [Ordinary(t, split, False) for t, split in number_sentences(squad)]),
    }


def _half(data: tuple[list[Sample], list[Ordinary]], split: str) -> tuple[list[Sample], list[Ordinary]]:
    return [s for s in data[0] if s.split == split], [o for o in data[1] if o.split == split]


def eval_pii(squad: Path, max_altered: float = 0.02) -> dict:
    data = sources(squad)
    val_samples = [s for d in data.values() for s in _half(d, "validation")[0]]
    val_ordinary = [o for d in data.values() for o in _half(d, "validation")[1]]
    tried = [score(val_samples, val_ordinary, t) for t in THRESHOLDS]
    within = [r for r in tried if r["ordinary_altered"] <= max_altered]
    # The most masked within the budget; on a tie, the higher threshold (fewer doubtful findings).
    chosen = max(within, key=lambda r: (r["masked"], -r["ordinary_altered"], r["threshold"])) if within else tried[-1]
    test = {name: score(*_half(d, "test"), chosen["threshold"]) for name, d in data.items()}
    return {
        "chosen_on_validation": chosen["threshold"],
        "max_altered": max_altered,
        "validation": tried,
        "test": test,
        "gate": gate(test, max_altered),
    }
