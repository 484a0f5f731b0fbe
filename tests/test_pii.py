"""Personal-data masking: what is masked, what is left alone, and the same result when streamed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bentos.guard.pii import StreamMasker, mask

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"

TEXT = (
    "Mail john.doe@example.com or call +44 20 7946 0958 / (212) 555-0134. Card 4111 1111 1111 1111, "
    "IBAN DE89 3704 0044 0532 0130 00, from 192.168.1.20 and 2001:db8::8a2e:370:7334. "
    "Order 12345 shipped 2024-05-01 with firmware v1.2.3; 45 items cost 1,299.00 in 2019."
)


def test_each_kind_is_masked_and_numbers_that_are_not_personal_stay():
    masked, counts = mask(TEXT)
    for raw in ("john.doe@example.com", "7946 0958", "555-0134", "4111 1111 1111 1111", "DE89 3704", "192.168.1.20", "2001:db8::8a2e"):
        assert raw not in masked
    assert dict(counts) == {"EMAIL": 1, "PHONE": 2, "CARD": 1, "IBAN": 1, "IP": 2}
    for kept in ("Order 12345", "2024-05-01", "v1.2.3", "45 items", "1,299.00", "2019"):
        assert kept in masked


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112",  # fails Luhn
        "IBAN DE89 3704 0044 0532 0130 01",  # fails mod-97
        "host 999.1.2.3",
        "call 12 34",
        "call (555) 123-4567",  # 555: the fictional area code
        "In 1999 the town had 1234567 people and 8,336,817 visitors.",
        "ISBN 978-3-16-148410-0, firmware v1.2.3, order 12345.",
    ],
)
def test_checksums_and_shapes_keep_lookalikes_unmasked(text):
    assert mask(text)[0] == text


def test_names_ssn_address_and_date_of_birth_are_masked():
    text = (
        "Dear Mrs. Hamanová, my name is Maria Garcia, SSN 078-05-1120, born on 3/29/1982. I live at "
        "2071 Maryland Avenue, Pinellas, FL 34624; my passport number is 912803456."
    )
    masked, counts = mask(text)
    assert masked == (
        "Dear Mrs. <PERSON>, my name is <PERSON>, SSN <US_SSN>, born on <DATE_OF_BIRTH>. I live at <ADDRESS>; "
        "my passport number is <PASSPORT_NUMBER>."
    ), masked
    assert counts == {"PERSON": 2, "SSN": 1, "DATE_OF_BIRTH": 1, "ADDRESS": 1, "PASSPORT": 1}


@pytest.mark.parametrize(
    "text",
    [
        "Describe",
        "Ignore the typo in my last message; what is the boiling point of water?",
        "Act as a Linux terminal and show the output of ls.",
        "Will you help me? May I ask about the Paris trip? Victoria Station is in London.",
        "The meeting moved to March 3, 2024 and the budget is 1,299.00 dollars.",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert mask(text)[0] == text


def test_pii_eval_chooses_on_validation_and_its_gate_fails_on_a_worse_threshold():
    """`ragserve eval pii`: the threshold comes from the validation split; on the test split the
    ordinary sentences with numbers stay within the 2% budget, which a lax threshold breaks."""
    squad = SHARED / "eval" / "squad_v2_dev_subset.json"
    if not squad.exists():
        pytest.skip(f"{squad} is missing: the ../shared folder CI provides holds it")
    from bentos.tools import pii_eval

    result = pii_eval.eval_pii(squad)
    test = result["test"]
    assert result["chosen_on_validation"] == 0.4  # the default setting, RAGSERVE_PII_MIN_SCORE
    assert test["number_sentences_altered"] <= 0.02
    for kind in ("EMAIL", "IBAN", "SSN", "PHONE"):
        assert test["masked_by_kind"][kind] >= 0.95, (kind, test)
    test_samples = [s for s in pii_eval.personal_samples() if s.split == "test"]
    numbers = [t for t, split in pii_eval.number_sentences(squad) if split == "test"]
    lax = pii_eval.score(test_samples, numbers, 0.05)
    assert lax["number_sentences_altered"] > 0.02, lax


def test_streamed_masking_equals_masking_the_whole_text():
    for seed in range(200):
        rnd = random.Random(seed)
        s, out, i = StreamMasker(), "", 0
        while i < len(TEXT):
            n = rnd.randint(1, 8)
            out += s.feed(TEXT[i : i + n])
            i += n
        assert out + s.finish() == mask(TEXT)[0], seed


def test_streamed_masking_keeps_the_context_that_decides():
    """ "born on" and "SSN" are released before the numbers arrive; they still decide what the numbers are."""
    s = StreamMasker()
    out = s.feed("I was born on ") + s.feed("3/29/19") + s.feed("82, and my passport number is ") + s.feed("9128034") + s.feed("56.")
    assert out + s.finish() == "I was born on <DATE_OF_BIRTH>, and my passport number is <PASSPORT_NUMBER>."


def test_stream_holds_back_only_what_may_still_grow():
    s = StreamMasker()
    assert s.feed("The answer is Paris, the capital ") == "The answer is Paris, the capital "
    assert s.feed("of Fra") == "of "  # a word being written is held until it ends
    # "+1 212" may be the start of a phone number, and "Call" of a name: both wait; "France." ends a sentence
    assert s.feed("nce. Call +1 212") == "France. "
    assert s.feed(" 555 0134 now.") == "Call <PHONE> "
    assert s.finish() == "now."
