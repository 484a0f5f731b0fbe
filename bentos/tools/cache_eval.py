"""How often the answer cache would serve a wrong answer, and how often a right one, through the
gateway's own hit decision: for each pair, the first question's entry goes into a real
AnswerCache and the second is looked up with AnswerCache.lookup, on the vectors the gateway
computes for retrieval.

False hits: near-miss pairs (infra/eval/cache_pairs.jsonl: questions that differ in one number,
date, ordinal, day, month, name, comparative, antonym, negation, direction, code, plan or in the
order of their words; derived from SQuAD questions or written) and pairs of different questions
about one SQuAD paragraph with different answers. True hits: the paraphrase pairs of the same
file. Every pair has a split fixed by a hash of its group (the SQuAD question or paragraph, or the
written question): the threshold is chosen on the validation split (false hits within the budget,
then the most paraphrases served), the figures are those of the test split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bentos.chat.cache import AnswerCache, Entry
from bentos.chat.question_match import Question
from bentos.tools.evaluation import EvalDataError

GRID = np.round(np.arange(0.80, 0.995, 0.01), 3)  # below 0.80 the check alone would tell questions apart
SPLITS = ("validation", "test")
SAME_PARAGRAPH = "squad-same-paragraph"


def squad_pairs(path: Path) -> list[dict]:
    """Same-paragraph question pairs with different answers, split by paragraph."""
    try:
        data = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f"{path}: not a SQuAD-format JSON file ({e})") from None
    out = []
    for article in data:
        for para in article.get("paragraphs", []):
            split = "validation" if int(hashlib.sha1(para["context"].encode()).hexdigest()[:8], 16) % 2 else "test"
            qs = [(q["question"], (q.get("answers") or [{}])[0].get("text", "").lower()) for q in para.get("qas", [])]
            for (q1, a1), (q2, a2) in itertools.combinations([q for q in qs if q[1]], 2):
                if a1 not in a2 and a2 not in a1:
                    out.append({"a": q1, "b": q2, "kind": SAME_PARAGRAPH, "split": split})
    if {p["split"] for p in out} != set(SPLITS):
        raise EvalDataError(f"{path}: too few paragraphs with two or more answerable questions")
    return out


def labelled_pairs(path: Path) -> list[dict]:
    """Rows {"a", "b", "kind", "split"}: kind "paraphrase" for a true hit, any other for a false one;
    a file of bare {"a", "b"} rows is all paraphrases, in the test split."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = [{"kind": "paraphrase", "split": "test", **r} for r in rows]
        bad = [p for p in pairs if not (isinstance(p["a"], str) and isinstance(p["b"], str) and p["split"] in SPLITS)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f'{path}: needs one {{"a": ..., "b": ..., "kind": ..., "split": ...}} per line ({e})') from None
    if not pairs or bad:
        raise EvalDataError(f"{path}: no pairs" if not pairs else f"{path}: bad rows, e.g. {bad[0]}")
    return pairs


def hits(
    pairs: list[dict], a: np.ndarray, b: np.ndarray, thresholds: np.ndarray, question: Callable[[str], Question] = Question.of
) -> np.ndarray:
    """Whether each pair's second question (vectors ``b``) is served the first's answer (vectors ``a``),
    at each threshold: shape (pairs, thresholds). ``question`` makes what Entry and lookup compare."""
    out = np.zeros((len(pairs), len(thresholds)), dtype=bool)
    for i, p in enumerate(pairs):
        qa, qb = question(p["a"]), question(p["b"])
        for j, t in enumerate(thresholds):
            cache = AnswerCache(float(t), max_entries=1, max_bytes=2**20, ttl_s=60)
            cache.store(Entry("pair", a[i], qa, "answer", "stop", []))
            out[i, j] = cache.lookup("pair", b[i], qb) is not None
    return out


def rates(pairs: list[dict], hit: np.ndarray, column: int) -> dict:
    """False-hit rates by kind and overall, and the paraphrase hit rate, per split."""
    out: dict = {}
    for split in SPLITS:
        rows = [i for i, p in enumerate(pairs) if p["split"] == split]
        wrong = [i for i in rows if pairs[i]["kind"] != "paraphrase"]
        right = [i for i in rows if pairs[i]["kind"] == "paraphrase"]
        kinds = sorted({pairs[i]["kind"] for i in wrong})
        out[split] = {
            "false_hit_rate": round(float(hit[wrong, column].mean()), 4) if wrong else None,
            "false_hits": int(hit[wrong, column].sum()),
            "paraphrase_hit_rate": round(float(hit[right, column].mean()), 4) if right else None,
            "by_kind": {k: round(float(hit[[i for i in wrong if pairs[i]["kind"] == k], column].mean()), 4) for k in kinds},
        }
    return out


def choose(pairs: list[dict], hit: np.ndarray, max_false_hits: float) -> int:
    """On the validation split, of the thresholds whose false-hit rate (and every higher one's) is within
    the budget, the one that serves the most paraphrases; of equals, the highest, the margin for pairs unseen."""
    wrong = [i for i, p in enumerate(pairs) if p["split"] == "validation" and p["kind"] != "paraphrase"]
    right = [i for i, p in enumerate(pairs) if p["split"] == "validation" and p["kind"] == "paraphrase"]
    within = np.flip(np.cumprod(np.flip(hit[wrong].mean(axis=0) <= max_false_hits)))
    if not within.any():
        return len(within) - 1
    served = np.where(within, hit[right].mean(axis=0) if right else 0.0, -1.0)
    return int(np.flatnonzero(served == served.max())[-1])


def lookup_cost(embedder, texts: list[str], sizes: tuple[int, ...] = (1, 100, 1000), lookups: int = 300) -> dict:
    """p50/p95 ms of building a question and AnswerCache.lookup under one key of ``size`` entries,
    each lookup followed by a store (as a miss is), so the key's vectors are stacked anew each time."""
    vectors = embedder.embed(texts)
    out = {}
    for size in sizes:
        cache = AnswerCache(0.0, max_entries=size, max_bytes=2**30, ttl_s=3600)
        for i in range(size):
            cache.store(Entry("k", vectors[i % len(texts)], Question.of(texts[i % len(texts)]), "answer", "stop", []))
        times = []
        for n in range(lookups):
            text, vector = texts[(n * 7) % len(texts)], vectors[(n * 7) % len(texts)]
            t = time.perf_counter()
            cache.lookup("k", vector, Question.of(text))
            times.append((time.perf_counter() - t) * 1000)
            cache.store(Entry("k", vector, Question.of(text + " again"), "answer", "stop", []))
        q = statistics.quantiles(times, n=20)
        out[size] = {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(q[18], 3)}
    return out


def eval_cache(
    embedder, squad: Path, paraphrases: Path, configured: float, max_false_hits: float = 0.005, pairs_file: Path | None = None
) -> dict:
    pairs = [*(labelled_pairs(pairs_file) if pairs_file else []), *labelled_pairs(paraphrases), *squad_pairs(squad)]
    unique: dict[tuple[str, str], dict] = {}
    for p in pairs:
        unique.setdefault((p["a"], p["b"]), p)  # a pair in two files counts once, as the first labels it
    pairs = list(unique.values())
    thresholds = np.unique(np.append(GRID, round(configured, 3)))
    a, b = embedder.embed([p["a"] for p in pairs]), embedder.embed([p["b"] for p in pairs])
    hit = hits(pairs, a, b, thresholds)
    unchecked = hits(pairs, a, b, thresholds, question=lambda _: Question(()))  # the cosine alone
    chosen = choose(pairs, hit, max_false_hits)
    at_configured = int(np.flatnonzero(thresholds == round(configured, 3))[0])

    def at(column: int, of: np.ndarray = hit) -> dict:
        return {"threshold": float(thresholds[column]), **rates(pairs, of, column)}

    return {
        "pairs": {
            s: {k: sum(p["split"] == s and p["kind"] == k for p in pairs) for k in sorted({p["kind"] for p in pairs})} for s in SPLITS
        },
        "false_hit_budget_validation": max_false_hits,
        "chosen": at(chosen),
        "configured": at(at_configured),
        "cosine_only_at_chosen": at(chosen, unchecked),
        "curve": [at(j) for j in range(0, len(thresholds), 3)],
        "lookup_cost": lookup_cost(embedder, sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})),
    }
