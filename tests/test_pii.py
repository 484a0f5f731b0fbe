"""Personal-data masking: what is masked, what is left alone, and the same result when streamed."""

from __future__ import annotations

import random

import pytest

from bentos.guard.pii import StreamMasker, iban_ok, luhn_ok, mask

TEXT = (
    "Mail john.doe@example.com or call +44 20 7946 0958 / (555) 123-4567. Card 4111 1111 1111 1111, "
    "IBAN DE89 3704 0044 0532 0130 00, from 192.168.1.20 and 2001:db8::8a2e:370:7334. "
    "Order 12345 shipped 2024-05-01 with firmware v1.2.3; 45 items cost 1,299.00 in 2019."
)


def test_each_kind_is_masked_and_numbers_that_are_not_personal_stay():
    masked, counts = mask(TEXT)
    for raw in ("john.doe@example.com", "7946 0958", "123-4567", "4111 1111 1111 1111", "DE89 3704", "192.168.1.20", "2001:db8::8a2e"):
        assert raw not in masked
    assert dict(counts) == {"EMAIL": 1, "PHONE": 2, "CARD": 1, "IBAN": 1, "IP": 2}
    for kept in ("Order 12345", "2024-05-01", "v1.2.3", "45 items", "1,299.00", "2019"):
        assert kept in masked


@pytest.mark.parametrize("text", ["Card 4111 1111 1111 1112", "IBAN DE89 3704 0044 0532 0130 01", "host 999.1.2.3", "call 12 34"])
def test_checksums_and_shapes_keep_lookalikes_unmasked(text):
    assert mask(text)[0] == text


def test_checksums():
    assert luhn_ok("4111111111111111") and luhn_ok("5500005555555559") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_streamed_masking_equals_masking_the_whole_text():
    for seed in range(200):
        rnd = random.Random(seed)
        s, out, i = StreamMasker(), "", 0
        while i < len(TEXT):
            n = rnd.randint(1, 8)
            out += s.feed(TEXT[i : i + n])
            i += n
        assert out + s.finish() == mask(TEXT)[0], seed


def test_stream_holds_back_only_what_may_still_grow():
    s = StreamMasker()
    assert s.feed("The answer is Paris, the capital ") == "The answer is Paris, the capital "
    assert s.feed("of Fra") == "of "  # a word being written is held until it ends
    assert s.feed("nce. Call +1 555") == "France. Call "  # "+1 555" may be the start of a phone number
    assert s.feed(" 123 4567 now.") == "<PHONE> "
    assert s.finish() == "now."
