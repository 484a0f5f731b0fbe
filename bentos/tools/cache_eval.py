"""How often the answer cache would serve a wrong answer, and how often a right one.

False hits: pairs of different questions about the same SQuAD paragraph (pairs whose answers
overlap left out): close in meaning, with different answers, so a hit between them serves a
wrong answer. True hits: paraphrase pairs written for this (infra/eval/paraphrases.jsonl). Both
scored with the cosine of the vectors the gateway computes for retrieval, which is what the cache
compares. The SQuAD pairs are split by paragraph: the threshold is chosen on the validation half
(the lowest whose false-hit rate stays within the budget), the figures reported on the test half.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np

from bentos.tools.evaluation import EvalDataError

GRID = np.round(np.arange(0.80, 0.995, 0.005), 3)


def squad_pairs(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Same-paragraph question pairs with different answers, by split (validation, test)."""
    try:
        data = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f"{path}: not a SQuAD-format JSON file ({e})") from None
    out: dict[str, list[tuple[str, str]]] = {"validation": [], "test": []}
    for article in data:
        for para in article.get("paragraphs", []):
            split = "validation" if int(hashlib.sha1(para["context"].encode()).hexdigest()[:8], 16) % 2 else "test"
            qs = [(q["question"], (q.get("answers") or [{}])[0].get("text", "").lower()) for q in para.get("qas", [])]
            for (q1, a1), (q2, a2) in itertools.combinations([q for q in qs if q[1]], 2):
                if a1 not in a2 and a2 not in a1:
                    out[split].append((q1, q2))
    if not out["validation"] or not out["test"]:
        raise EvalDataError(f"{path}: too few paragraphs with two or more answerable questions")
    return out


def paraphrase_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = [(r["a"], r["b"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f'{path}: needs one {{"a": ..., "b": ...}} per line ({e})') from None
    if not pairs:
        raise EvalDataError(f"{path}: no pairs")
    return pairs


def similarities(embedder, pairs: list[tuple[str, str]]) -> np.ndarray:
    a = embedder.embed([p for p, _ in pairs])
    b = embedder.embed([q for _, q in pairs])
    return (a * b).sum(axis=1)  # unit vectors: the cosine


def eval_cache(embedder, squad: Path, paraphrases: Path, configured: float, max_false_hits: float = 0.005) -> dict:
    wrong = {split: similarities(embedder, pairs) for split, pairs in squad_pairs(squad).items()}
    right = similarities(embedder, paraphrase_pairs(paraphrases))
    allowed = [t for t in GRID if (wrong["validation"] >= t).mean() <= max_false_hits]
    chosen = float(min(allowed)) if allowed else float(GRID[-1])

    def at(t: float) -> dict:
        return {
            "threshold": t,
            "false_hit_rate_test": round(float((wrong["test"] >= t).mean()), 4),
            "false_hit_rate_validation": round(float((wrong["validation"] >= t).mean()), 4),
            "true_hit_rate_paraphrases": round(float((right >= t).mean()), 4),
        }

    return {
        "squad_pairs": {k: len(v) for k, v in wrong.items()},
        "paraphrase_pairs": len(right),
        "false_hit_budget_validation": max_false_hits,
        "chosen": at(chosen),
        "configured": at(configured),
        "curve": [at(float(t)) for t in GRID[::4]],
    }
