"""The answer cache's bookkeeping, without a server: keys, bounds, expiry, publications."""

from __future__ import annotations

import numpy as np

from bentos.chat import cache as c
from bentos.web.schemas import ChatCompletionRequest


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def entry(key: str, vector: np.ndarray, text: str = "an answer") -> c.Entry:
    return c.Entry(key, vector, text, "stop", [{"source": "a.md", "chunk_id": "a.md#0", "score": 1.0}])


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
    found, sim = cache.lookup("k", unit(1, 0.19, 0))
    assert found.content == "near x" and sim > 0.99
    assert cache.lookup("k", unit(0, 1, 0)) is None  # too far
    assert cache.lookup("other", unit(1, 0, 0)) is None  # another tenant, model, index, context


def test_bounds_evict_the_least_recently_used_and_expiry_and_publications_drop_entries(monkeypatch):
    cache = c.AnswerCache(min_similarity=0.9, max_entries=2, max_bytes=10**6, ttl_s=60)
    for i, v in enumerate((unit(1, 0, 0), unit(0, 1, 0))):
        cache.store(entry(f"k{i}", v))
    cache.lookup("k0", unit(1, 0, 0))  # k0 used: k1 is now the least recent
    cache.store(entry("k2", unit(0, 0, 1)))
    assert cache.lookup("k1", unit(0, 1, 0)) is None and cache.lookup("k0", unit(1, 0, 0)) is not None
    small = c.AnswerCache(min_similarity=0.9, max_entries=100, max_bytes=entry("k", unit(1, 0, 0), "x" * 500).size + 100, ttl_s=60)
    small.store(entry("a", unit(1, 0, 0), "x" * 500))
    small.store(entry("b", unit(1, 0, 0), "y" * 500))  # over the byte cap: the older goes
    assert small.lookup("a", unit(1, 0, 0)) is None and small.lookup("b", unit(1, 0, 0)) is not None
    assert small.bytes == entry("b", unit(1, 0, 0), "y" * 500).size
    now = [1000.0]
    monkeypatch.setattr(c.time, "monotonic", lambda: now[0])
    timed = c.AnswerCache(min_similarity=0.9, max_entries=10, max_bytes=10**6, ttl_s=60)
    timed.store(entry("k", unit(1, 0, 0)))
    now[0] += 61
    assert timed.lookup("k", unit(1, 0, 0)) is None and not timed.entries
    timed.follow(5)
    timed.store(entry("k", unit(1, 0, 0)))
    timed.follow(6)  # a new publication
    assert not timed.entries and timed.bytes == 0
