"""A prompt classifier over the embeddings the gateway already computes for retrieval.

Logistic regression on all-MiniLM-L6-v2 sentence vectors, three classes: benign, attack
(jailbreaks and prompt injection) and harmful (requests for dangerous or abusive help).
Scoring is one 3x384 matrix product, so the input rail costs microseconds, not an LLM call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS = ("benign", "attack", "harmful")
FORMAT = 1


@dataclass
class PromptClassifier:
    coef: np.ndarray  # (len(LABELS), dim)
    intercept: np.ndarray  # (len(LABELS),)
    thresholds: dict[str, float]  # probability at or above which a label blocks
    meta: dict = field(default_factory=dict)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = np.atleast_2d(vectors) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def verdict(self, vector: np.ndarray, thresholds: dict[str, float] | None = None) -> tuple[str | None, dict[str, float]]:
        """The blocking label with the highest probability over its threshold (or None), and all probabilities."""
        probs = dict(zip(LABELS, self.probabilities(vector)[0].tolist()))
        limits = {**self.thresholds, **(thresholds or {})}
        over = [(probs[k], k) for k in LABELS[1:] if probs[k] >= limits[k]]
        return (max(over)[1] if over else None), probs

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, coef=self.coef, intercept=self.intercept, meta=json.dumps({"format": FORMAT, "thresholds": self.thresholds, **self.meta})
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PromptClassifier:
        if not path.exists():
            raise FileNotFoundError(
                f"no prompt classifier at {path}: run `ragserve guardrails train` (make setup does), "
                "or point RAGSERVE_GUARD_CLASSIFIER at one"
            )
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(
                    f"{path} has format {meta.get('format')}, this version reads {FORMAT}: run `ragserve guardrails train` again"
                )
            return cls(z["coef"], z["intercept"], meta.pop("thresholds"), meta)


def fit(vectors: np.ndarray, labels: list[str], c: float = 4.0) -> PromptClassifier:
    from sklearn.linear_model import LogisticRegression

    y = np.array([LABELS.index(label) for label in labels])
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit(vectors, y)
    return PromptClassifier(model.coef_.astype(np.float32), model.intercept_.astype(np.float32), {k: 0.5 for k in LABELS[1:]})


def choose_thresholds(clf: PromptClassifier, vectors: np.ndarray, labels: list[str], max_fp: float) -> dict[str, float]:
    """Per blocking label, the lowest threshold whose share of benign prompts flagged stays under
    ``max_fp`` (split between the two labels): block as much as the false-positive budget allows."""
    probs = clf.probabilities(vectors)
    benign = np.array([label == "benign" for label in labels])
    out = {}
    for i, name in enumerate(LABELS[1:], 1):
        scores = np.sort(probs[benign, i])[::-1]
        allowed = int(np.floor(max_fp / 2 * len(scores)))
        out[name] = float(min(0.99, max(0.5, scores[allowed] + 1e-6))) if len(scores) > allowed else 0.5
    return out
