"""The answer cache's bookkeeping, without a server: keys, bounds, expiry, publications, the
question check beside the cosine, and the evaluation's gate."""

from __future__ import annotations

import numpy as np
import pytest

from bentos.chat import cache as c
from bentos.chat.question_match import Question
from bentos.tools import cache_eval
from bentos.web.schemas import ChatCompletionRequest

ANY = Question.of("Where is it?")


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def entry(key: str, vector: np.ndarray, text: str = "an answer", question: Question = ANY) -> c.Entry:
    return c.Entry(key, vector, question, text, "stop", [{"source": "a.md", "chunk_id": "a.md#0", "score": 1.0}])


def req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=kw.pop("messages", [{"role": "user", "content": "Where is it?"}]), **kw)


def test_the_exact_key_holds_everything_but_the_last_question_and_the_sampling_temperature():
    key = c.exact_key(req(temperature=0), "t", "m", 3)
    assert c.exact_key(req(temperature=0, messages=[{"role": "user", "content": "Other words?"}]), "t", "m", 3) == key
    assert c.exact_key(req(temperature=0, stream=True), "t", "m", 3) == key
    assert c.exact_key(req(temperature=0, max_tokens=20), "t", "m", 3) == c.exact_key(req(temperature=0, max_tokens=30), "t", "m", 3)
    different = [
        c.exact_key(req(temperature=0), "other tenant", "m", 3),
        c.exact_key(req(temperature=0), "t", "other model", 3),
        c.exact_key(req(temperature=0), "t", "m", 4),
        c.exact_key(req(temperature=0, max_tokens=200), "t", "m", 3),
        c.exact_key(req(temperature=0, stop=["."]), "t", "m", 3),
        c.exact_key(req(temperature=0, response_format={"type": "json_object"}), "t", "m", 3),
        c.exact_key(
            req(temperature=0, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where?"}]), "t", "m", 3
        ),
    ]
    assert key not in different and len(set(different)) == len(different)
    assert c.cacheable(req(temperature=0)) and not c.cacheable(req()) and not c.cacheable(req(temperature=0.5))
    assert c.cacheable(req(temperature=0.5, cache=True)) and not c.cacheable(req(temperature=0, cache=False))
    assert c.tenant_of("Bearer a") != c.tenant_of("Bearer b") and c.tenant_of(None) == c.tenant_of("")


def test_lookup_takes_the_closest_above_the_threshold_in_the_same_key_only():
    cache = c.AnswerCache(min_similarity=0.9, max_entries=10, max_bytes=10**6, ttl_s=60)
    cache.store(entry("k", unit(1, 0, 0), "x-axis"))
    cache.store(entry("k", unit(1, 0.2, 0), "near x"))
    found, sim = cache.lookup("k", unit(1, 0.19, 0), ANY)
    assert found.content == "near x" and sim > 0.99
    assert cache.lookup("k", unit(0, 1, 0), ANY) is None  # too far
    assert cache.lookup("other", unit(1, 0, 0), ANY) is None  # another tenant, model, index, context


def test_bounds_evict_the_least_recently_used_and_expiry_and_publications_drop_entries(monkeypatch):
    cache = c.AnswerCache(min_similarity=0.9, max_entries=2, max_bytes=10**6, ttl_s=60)
    for i, v in enumerate((unit(1, 0, 0), unit(0, 1, 0))):
        cache.store(entry(f"k{i}", v))
    cache.lookup("k0", unit(1, 0, 0), ANY)  # k0 used: k1 is now the least recent
    cache.store(entry("k2", unit(0, 0, 1)))
    assert cache.lookup("k1", unit(0, 1, 0), ANY) is None and cache.lookup("k0", unit(1, 0, 0), ANY) is not None
    small = c.AnswerCache(min_similarity=0.9, max_entries=100, max_bytes=entry("k", unit(1, 0, 0), "x" * 500).size + 100, ttl_s=60)
    small.store(entry("a", unit(1, 0, 0), "x" * 500))
    small.store(entry("b", unit(1, 0, 0), "y" * 500))  # over the byte cap: the older goes
    assert small.lookup("a", unit(1, 0, 0), ANY) is None and small.lookup("b", unit(1, 0, 0), ANY) is not None
    assert small.bytes == entry("b", unit(1, 0, 0), "y" * 500).size
    now = [1000.0]
    monkeypatch.setattr(c.time, "monotonic", lambda: now[0])
    timed = c.AnswerCache(min_similarity=0.9, max_entries=10, max_bytes=10**6, ttl_s=60)
    timed.store(entry("k", unit(1, 0, 0)))
    now[0] += 61
    assert timed.lookup("k", unit(1, 0, 0), ANY) is None and not timed.entries
    timed.follow(5)
    timed.store(entry("k", unit(1, 0, 0)))
    timed.follow(6)  # a new publication
    assert not timed.entries and timed.bytes == 0


# One near miss of each kind: questions one word apart whose answers differ.
NEAR_MISSES = {
    "number": ("Is shipping free on orders above $50?", "Is shipping free on orders above $75?"),
    "date": ("Is the clinic open on 24 December?", "Is the clinic open on 26 December?"),
    "ordinal": ("What was the revenue in the first quarter?", "What was the revenue in the second quarter?"),
    "day": ("Is the museum open on Monday?", "Is the museum open on Tuesday?"),
    "month": ("Can I bring my dog in May?", "Can I bring my dog in June?"),
    "entity": ("How long is the flight to Oslo?", "How long is the flight to Vienna?"),
    "comparative": ("Is the blue kettle cheaper than the red one?", "Is the blue kettle dearer than the red one?"),
    "superlative": ("What is the maximum withdrawal per day?", "What is the minimum withdrawal per day?"),
    "antonym": ("How do I enable the firewall?", "How do I disable the firewall?"),
    "negation": ("Which items can be returned?", "Which items can't be returned?"),
    "word order": ("How do I convert a list to a tuple?", "How do I convert a tuple to a list?"),
    "direction": ("Can I fly from Lima?", "Can I fly to Lima?"),
    "code": ("What does HTTP error 502 mean?", "What does HTTP error 504 mean?"),
    "plan": ("How much is the annual plan?", "How much is the monthly plan?"),
    "tense": ("Who is the chief executive?", "Who was the chief executive?"),
    "modal": ("Can I bring a guest?", "Must I bring a guest?"),
}
PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("Could you please tell me when the museum opens on Sunday?", "When does the museum open on Sunday?"),
    ("What's the fee for withdrawing cash abroad?", "What is the fee for withdrawing cash abroad?"),
    ("Why doesn't the printer work?", "Why does the printer not work?"),
    ("If I'm abroad, how do I reset my password?", "How do I reset my password if I'm abroad?"),
    ("Is it possible to change my delivery address?", "Am I allowed to change my delivery address?"),
    ("What time does the last train leave?", "When does the last train leave?"),
    ("Do I need a visa for Peru?", "Do I have to have a visa for Peru?"),
    ("Which river flows through Lisbon?", "What river flows through Lisbon?"),
]


@pytest.mark.parametrize("kind", NEAR_MISSES)
def test_a_near_miss_of_each_kind_is_another_question(kind):
    a, b = NEAR_MISSES[kind]
    assert not Question.of(a).matches(Question.of(b)) and not Question.of(b).matches(Question.of(a))


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_a_paraphrase_is_the_same_question(a, b):
    assert Question.of(a).matches(Question.of(b))


def test_a_masked_name_is_told_apart_by_the_unmasked_words():
    ada, alan = (
        Question.of("When was <PERSON> born?", "When was Ada Lovelace born?"),
        Question.of("When was <PERSON> born?", "When was Alan Turing born?"),
    )
    assert not ada.matches(alan)
    assert ada.matches(Question.of("Please, when was <PERSON> born?", "Please, when was Ada Lovelace born?"))
    assert ada.private and "ada" not in repr(ada).lower()  # nothing masked kept in the clear


def test_lookup_needs_the_same_question_and_takes_the_closest_that_asks_it():
    cache = c.AnswerCache(min_similarity=0.9, max_entries=10, max_bytes=10**6, ttl_s=60)
    first, second = Question.of(NEAR_MISSES["ordinal"][0]), Question.of(NEAR_MISSES["ordinal"][1])
    cache.store(entry("k", unit(1, 0.1, 0), "Q1 answer", first))
    cache.store(entry("k", unit(1, 0, 0), "Q2 answer", second))
    assert cache.lookup("k", unit(1, 0, 0), first)[0].content == "Q1 answer"  # the closer entry asks another question
    assert cache.lookup("k", unit(1, 0, 0), Question.of("What was the revenue in the third quarter?")) is None
    assert cache.lookup("k", unit(1, 0, 0), Question.of("Please, what was the revenue in the 2nd quarter?"))[0].content == "Q2 answer"


class FakeEmbedder:
    """Every question one vector: the cosine says every pair is the same question."""

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.tile(unit(1, 0, 0), (len(texts), 1))


def labelled(split: str) -> list[dict]:
    wrong = [{"a": a, "b": b, "kind": k, "split": split} for k, (a, b) in NEAR_MISSES.items()]
    return wrong + [{"a": a, "b": b, "kind": "paraphrase", "split": split} for a, b in PARAPHRASES]


def test_the_gate_passes_the_check_and_fails_the_cosine_alone():
    pairs = labelled("validation") + labelled("test")
    vectors = FakeEmbedder().embed([p["a"] for p in pairs])
    checked = cache_eval.hits(pairs, vectors, vectors, cache_eval.GRID)
    alone = cache_eval.hits(pairs, vectors, vectors, cache_eval.GRID, question=lambda _: Question(()))
    assert cache_eval.rates(pairs, checked, 0)["test"]["false_hit_rate"] == 0.0
    assert cache_eval.rates(pairs, checked, 0)["test"]["paraphrase_hit_rate"] == 1.0
    assert cache_eval.rates(pairs, alone, 0)["test"]["false_hit_rate"] == 1.0  # far over any budget
    assert cache_eval.choose(pairs, checked, 0.005) == len(cache_eval.GRID) - 1  # every threshold serves all: the highest
    worse = np.ones_like(alone)
    worse[:, -1] = False  # only the top threshold keeps out the near misses
    assert cache_eval.choose(pairs, worse, 0.005) == len(cache_eval.GRID) - 1
