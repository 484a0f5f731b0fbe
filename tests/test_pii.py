"""Personal-data masking: what is masked, what is left alone, and the same result when streamed."""

from __future__ import annotations

import random
import re
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


NEVER_MASKED = [
    "2025-01-07 01:35:00 UTC: worker restarted",  # the timestamp
    "[2024-11-30T23:59:59.123+00:00] job 42 done; next run 07/01/2025 08:00",
    "ts=1736213700123 level=info msg=flushed",
    "ISBN 0-306-40615-2 and ISBN 978-0-306-40615-7 (1st and 2nd editions)",
    "Cited as 9780306406157 and 0-306-40615-2 in the 1999 edition.",
    "ISBN-10: 0306406152",
    "Order 5551234567 shipped; your order number is 2125550134.",
    "Ticket INC-2025-000123 and invoice INV-2024-00123, case 212-555-0134.",
    "Upgrade from 10.0.19041.1234 to v2.14.3 before 2025.03.01.",
    "Total $1,299.00, or USD 24,500 a year, or 450 EUR.",
    "Listening on localhost:8080 and db.internal:5432, port 6379.",
    "See https://example.com/issues/5551234567 for details.",
    "We walked from Sydney Harbour to Victoria Station, then to Lake Geneva, Mount Kenya and Port Elizabeth.",
]


@pytest.mark.parametrize("text", NEVER_MASKED)
def test_timestamps_isbns_ids_versions_prices_ports_and_places_are_never_masked(text):
    assert mask(text)[0] == text


@pytest.mark.parametrize(
    "phone",
    [
        "(426)829-3075",  # an unassigned area code
        "890.274.8915",
        "555-123-4567",
        "(555) 123-4567",
        "+447700 974472",
        "+44 7700 900123",
        "+1-202-555-0199",
        "+49 30 1234567",
        "020 7946 0958",
        "07700 900 123",
        "+33 1 23 45 67 89",
        "+44 (0)20 7946 0958",
        "(212) 555-0134 x936",
        "212-555-0134 ext. 12",
        "+1 212 555 0134 extension 4",
        "020 7946 0958 #123",
    ],
)
def test_phone_numbers_are_masked_whatever_the_area_code_with_their_extension(phone):
    assert mask(f"Call me on {phone} today.")[0] == "Call me on <PHONE> today."
    assert mask(f"{phone}")[0] == "<PHONE>"


def test_bare_digits_are_a_phone_only_where_the_text_says_so():
    assert mask("call 2125550134 now")[0] == "call <PHONE> now"
    assert mask("shipment 2125550134 left the depot")[0] == "shipment 2125550134 left the depot"


def test_a_timestamp_beside_a_phone_number_stays():
    text = "2025-01-07 01:35:00 INFO sms to +44 7700 900123 x12 queued (ticket INC-2041, ISBN 978-0-306-40615-7)"
    assert mask(text)[0] == "2025-01-07 01:35:00 INFO sms to <PHONE> queued (ticket INC-2041, ISBN 978-0-306-40615-7)"


def _squad() -> Path:
    squad = SHARED / "eval" / "squad_v2_dev_subset.json"
    if not squad.exists():
        pytest.skip(f"{squad} is missing: the ../shared folder CI provides holds it")
    return squad


def test_pii_eval_chooses_on_validation_and_passes_its_gate_on_test():
    """`ragserve eval pii`: the threshold comes from the validation split; on the test split ordinary
    text stays within the 2% budget and phone numbers are masked at least 95% of the time."""
    from bentos.tools import pii_eval

    result = pii_eval.eval_pii(_squad())
    assert result["chosen_on_validation"] == 0.4  # the default setting, RAGSERVE_PII_MIN_SCORE
    assert result["gate"] == [], result["test"]
    own, evaluator = result["test"]["own"], result["test"]["evaluator"]
    assert own["ordinary"] > 100 and own["values_by_kind"]["PHONE"] > 50
    for kind in ("EMAIL", "IBAN", "SSN", "PHONE"):
        assert evaluator["masked_by_kind"][kind] >= 0.95, (kind, evaluator)


def _test_half(squad: Path):
    from bentos.tools import pii_eval

    return {name: pii_eval._half(data, "test") for name, data in pii_eval.sources(squad).items()}


def test_pii_eval_gate_fails_on_a_lax_threshold():
    from bentos.tools import pii_eval

    test = {name: pii_eval.score(*half, 0.05) for name, half in _test_half(_squad()).items()}
    assert any("ordinary sentences altered" in f for f in pii_eval.gate(test)), test


def test_pii_eval_gate_fails_on_an_over_eager_phone_recognizer(monkeypatch):
    """Any run of seven digits and separators taken for a phone: the timestamps, ISBNs and ids of the issue."""
    from presidio_analyzer import RecognizerResult

    from bentos.guard import pii
    from bentos.tools import pii_eval

    def eager(text):
        runs = re.finditer(r"\+?\(?\d[\d ().\-/]{5,}\d", text)
        return pii.analyze(text) + [RecognizerResult("PHONE_NUMBER", m.start(), m.end(), 0.9) for m in runs]

    monkeypatch.setattr(pii_eval, "_analyzed", eager)
    test = {name: pii_eval.score(*half, 0.4) for name, half in _test_half(_squad()).items()}
    assert any(f.startswith("own:") and "altered" in f for f in pii_eval.gate(test)), test


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


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        # extensions, and numbers that are never masked
        "At 2025-01-07 01:35:00 call (212) 555-0134 x936 or 212-555-0134 ext. 12, then +44 7700 900123 extension 4 now.",
        "Fax 020 7946 0958 #123; ISBN 978-0-306-40615-7, order 5551234567, v1.2.3 on localhost:8080.",
    ],
)
def test_streamed_masking_equals_masking_the_whole_text(text):
    for seed in range(150):
        rnd = random.Random(seed)
        s, out, i = StreamMasker(), "", 0
        while i < len(text):
            n = rnd.randint(1, 8)
            out += s.feed(text[i : i + n])
            i += n
        assert out + s.finish() == mask(text)[0], seed
