"""A prompt classifier over the embeddings the gateway already computes for retrieval.

Three classes on all-MiniLM-L6-v2 sentence vectors: benign, attack (jailbreaks and prompt
injection) and harmful (requests for dangerous or abusive help). The model is a logistic
regression or a small multilayer perceptron, whichever does best on the validation split
(training.py); either way scoring is two or three small matrix products, so the input rail costs
microseconds, not an LLM call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS = ("benign", "attack", "harmful")
FORMAT = 2
# The candidates training chooses from on the validation split: name -> scikit-learn model.
# The MLPs' weight decay is strong (alpha 0.1): with 1e-3 they were sure of everything, ordinary
# questions included ("How do I create a distribution list?" harmful at p > 0.999), so no
# threshold could keep ordinary traffic within its budget.
CANDIDATES = {
    "logistic regression": lambda: _sklearn("LogisticRegression", C=4.0, class_weight="balanced", max_iter=5000),
    "MLP 256": lambda: _sklearn("MLPClassifier", hidden_layer_sizes=(256,), alpha=0.1, max_iter=400, early_stopping=True, random_state=0),
    "MLP 512-128": lambda: _sklearn(
        "MLPClassifier", hidden_layer_sizes=(512, 128), alpha=0.1, max_iter=400, early_stopping=True, random_state=0
    ),
}


def _sklearn(name: str, **kw):
    from sklearn import linear_model, neural_network

    return getattr(linear_model if name == "LogisticRegression" else neural_network, name)(**kw)


@dataclass
class PromptClassifier:
    layers: list[tuple[np.ndarray, np.ndarray]]  # (weights (in, out), bias (out,)), ReLU between
    thresholds: dict[str, float]  # probability at or above which a label blocks
    meta: dict = field(default_factory=dict)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        h = np.atleast_2d(vectors)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        h -= h.max(axis=1, keepdims=True)
        p = np.exp(h)
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
        arrays = {f"{kind}{i}": a for i, (w, b) in enumerate(self.layers) for kind, a in (("w", w), ("b", b))}
        np.savez(tmp, meta=json.dumps({"format": FORMAT, "thresholds": self.thresholds, **self.meta}), **arrays)
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
            layers = [(z[f"w{i}"], z[f"b{i}"]) for i in range(sum(1 for k in z.files if k.startswith("w")))]
        return cls(layers, meta.pop("thresholds"), meta)


def fit(vectors: np.ndarray, labels: list[str], candidate: str = "logistic regression") -> PromptClassifier:
    y = np.array([LABELS.index(label) for label in labels])
    model = CANDIDATES[candidate]().fit(vectors, y)
    if hasattr(model, "coefs_"):  # an MLP: its layers as they are
        layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in zip(model.coefs_, model.intercepts_)]
    else:
        layers = [(model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32))]
    return PromptClassifier(layers, {k: 0.5 for k in LABELS[1:]}, {"model": candidate})


def choose_thresholds(
    clf: PromptClassifier, vectors: np.ndarray, labels: list[str], budgets: dict[str, float], groups: list[str] | None = None
) -> dict[str, float]:
    """Per blocking label, the lowest threshold at which each group of benign prompts stays within
    its false-positive budget (``budgets[group]``, split between the two labels): block as much as
    the tightest budget allows. ``groups``: each prompt's group (default: all in "all")."""
    probs = clf.probabilities(vectors)
    groups = groups or ["all"] * len(labels)
    out = {}
    for i, name in enumerate(LABELS[1:], 1):
        limit = 0.5
        for group, budget in budgets.items():
            scores = np.sort([p[i] for p, label, g in zip(probs, labels, groups) if label == "benign" and g == group])[::-1]
            allowed = int(np.floor(budget / 2 * len(scores)))
            if len(scores) > allowed:
                limit = max(limit, float(scores[allowed] + 1e-6))
        out[name] = min(0.999, limit)
    return out
