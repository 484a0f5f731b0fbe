"""A labelled set for the offline answer scorer, true by construction, from SQuAD v2 paragraphs.

For each answerable question, the paragraph is the chunk and the answer sentence is one of:

- ``extract`` (supported): the paragraph's sentence that holds the gold answer span;
- ``swap`` (unsupported): that sentence with the gold span replaced by another value of its type taken
  from elsewhere in the article (a year for a year, a number for a number, a date for a date, a
  capitalised name for a name);
- ``other_passage`` (unsupported): a sentence of another paragraph of the same article;
- ``negation`` (unsupported): the supported sentence with "not" after its first auxiliary;
- ``reordered`` (unsupported): the supported sentence with two of its names (or numbers) swapped, the
  same words in another order: the scorer's known blind spot, reported on its own and kept out of the
  overall figures and the threshold choice.

The extract sentences are verbatim, so the set measures how well the scorer rejects unsupported
sentences, not how well it accepts paraphrases. Articles are never split: the first two articles in
file order are the validation split (the threshold is chosen there), the rest the test split.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bentos.quality.scorer import STOPWORDS, content_words, sentence_spans, stem

SUPPORTED_KIND = "extract"
# "restated": the question turned into a statement of the gold answer, in the question's words
# rather than the source's, so that supported claims are not all verbatim copies (which any
# overlap measure finds); "restated_swap" is the same with the answer swapped, the hardest pair.
SUPPORTED_KINDS = (SUPPORTED_KIND, "restated")
UNSUPPORTED_KINDS = ("swap", "other_passage", "negation", "restated_swap")
BLIND_SPOT_KINDS = ("reordered",)
KINDS = (*SUPPORTED_KINDS, *UNSUPPORTED_KINDS, *BLIND_SPOT_KINDS)
VALIDATION_ARTICLES = 2
SEED = 13
PER_KIND = 150  # items per kind per split: the whole evaluation in about a minute on 2 cores

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
_YEAR = re.compile(r"^(?:1[0-9]{3}|20[0-9]{2})$")
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*(?![\w])")
_DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{MONTHS})(?:,? \d{{4}})?|(?:{MONTHS}) \d{{1,2}}(?:,? \d{{4}})?|(?:{MONTHS}),? \d{{4}})\b")
_CAP = r"[A-Z][A-Za-z'\-]*[A-Za-z]"
_NAME = re.compile(rf"\b{_CAP}(?:\s+(?:(?:of|de|la|von|van|du|da|the|del)\s+)*{_CAP})*")
_MONTH_OR_DAY = {m.lower() for m in MONTHS.split("|")} | DAYS
_AUXILIARY = re.compile(r"\b(is|are|was|were|can|will|has|have|had|did|does|do|could|would|should|must)\b")
_PARTICIPLE = re.compile(r"^(?:been|\w+ed|\w+en|\w+wn|\w+ne|\w+ght|\w+t)$")
_OPENERS = set(
    "although during after before while since despite following today later many most several because unlike like "
    "although though whereas unless until upon within without among between along across".split()
)
_NOT_AFTER_DO = {"a", "an", "the", "his", "her", "their", "its", "this", "that", "so", "not", "never", "it", "them"}


@dataclass
class Item:
    question: str
    answer: str  # the answer sentence to score
    chunk: str  # the paragraph it is scored against
    supported: bool
    kind: str
    title: str
    split: str  # "validation" or "test"

    @property
    def label(self) -> str:
        return "supported" if self.supported else "unsupported"


def _names(text: str) -> list[tuple[int, int, str]]:
    """Capitalised names in ``text`` as (start, end, text), less leading function words and sentence openers
    ("The Normans" -> "Normans", "During World War II" -> "World War II"); no month or weekday names."""
    out = []
    for m in _NAME.finditer(text):
        words = list(re.finditer(r"\S+", m.group()))
        at_start = not text[: m.start()].strip() or text[: m.start()].rstrip()[-1] in ".!?\n"
        k = 0
        while k < len(words) and (words[k].group().lower() in STOPWORDS or (k == 0 and at_start and words[k].group().lower() in _OPENERS)):
            k += 1
        kept = [w.group().lower() for w in words[k:]]
        if not kept or any(w in _MONTH_OR_DAY for w in kept) or (k == 0 and at_start and len(kept) == 1):
            continue  # a lone capitalised first word may be any word
        start = m.start() + words[k].start()
        out.append((start, m.end(), text[start : m.end()]))
    return out


def _numbers(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _NUMBER.finditer(text)]


def _kind_of(value: str) -> str | None:
    value = value.strip()
    if _YEAR.match(value):
        return "year"
    if _DATE.fullmatch(value):
        return "date"
    if re.fullmatch(r"\d+(?:[.,]\d+)*", value):
        return "number"
    names = _names(value)
    if names and names[0][0] == 0 and names[0][2] == value:
        return "name"
    if re.fullmatch(rf"(?:the\s+)?{_NAME.pattern}", value):
        return "name"
    return None


def _values(article_text: str, kind: str) -> list[str]:
    if kind == "year":
        return [v for _, _, v in _numbers(article_text) if _YEAR.match(v)]
    if kind == "number":
        return [v for _, _, v in _numbers(article_text) if not _YEAR.match(v)]
    if kind == "date":
        return [m.group() for m in _DATE.finditer(article_text)]
    return [v for _, _, v in _names(article_text)]


def _words(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[A-Za-z]+|\d+", text.lower()) if w not in STOPWORDS}


def _replacement(gold: str, sentence: str, article_text: str, rng: random.Random) -> str | None:
    """Another value of the gold span's type from the article, absent from the sentence; for a span with one
    number in it ("10th century", "about 50"), the span with that number replaced."""
    kind = _kind_of(gold)
    if kind is None:
        numbers = _numbers(gold)
        if len(numbers) != 1:
            return None
        start, end, number = numbers[0]
        inner = _replacement(number, sentence, article_text, rng)
        return gold[:start] + inner + gold[end:] if inner else None
    gold_words = _words(gold)
    candidates = sorted(
        {
            v
            for v in _values(article_text, kind)
            if v.lower() != gold.lower() and v.lower() not in sentence.lower() and not (_words(v) & gold_words)
        }
    )
    if kind == "name":  # as many words as the gold name, when the article has such names
        same_length = [v for v in candidates if len(v.split()) == len(gold.split())]
        candidates = same_length or candidates
    return rng.choice(candidates) if candidates else None


def negate(sentence: str) -> str | None:
    """ "not" after the first auxiliary that takes it: "was founded" -> "was not founded"; None when no rule applies."""
    for m in _AUXILIARY.finditer(sentence):
        following = sentence[m.end() :].split()
        nxt = following[0].strip(",;:.").lower() if following else ""
        if not nxt or nxt in ("not", "never", "n't"):
            continue
        aux = m.group(1)
        if aux in ("has", "have", "had") and not _PARTICIPLE.match(nxt):
            continue  # "had three sons": no grammatical "not" without "did"
        if aux in ("do", "does", "did") and (nxt in _NOT_AFTER_DO or not nxt.isalpha()):
            continue  # a main verb: "did his duty"
        return sentence[: m.end()] + " not" + sentence[m.end() :]
    return None


def reorder(sentence: str, rng: random.Random) -> str | None:
    """Two names (or two numbers) of the sentence trade places: the same words, another meaning."""
    groups: dict[str, list[tuple[int, int, str]]] = {}
    for start, end, value in _numbers(sentence):
        groups.setdefault("year" if _YEAR.match(value) else "number", []).append((start, end, value))
    for found in _names(sentence):
        groups.setdefault("name", []).append(found)
    pairs = []
    for found in groups.values():
        for i, a in enumerate(found):
            for b in found[i + 1 :]:
                if a[2].lower() != b[2].lower() and not (_words(a[2]) & _words(b[2])) and a[1] <= b[0]:
                    pairs.append((a, b))
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    swapped = sentence[: a[0]] + b[2] + sentence[a[1] : b[0]] + a[2] + sentence[b[1] :]
    return swapped if swapped != sentence else None


def restate(question: str, answer: str) -> str:
    """``What is the capital of France?`` and ``Paris``: ``The answer to what is the capital of France is Paris.``"""
    q = question.strip().rstrip("?").strip()
    return f"The answer to {q[:1].lower() + q[1:]} is {answer}."


def _claim_like(sentence: str) -> bool:
    return len(content_words(sentence)) >= 3


def build(path: str | Path, seed: int = SEED) -> list[Item]:
    """Every item the SQuAD-format file at ``path`` yields: one extract per answer sentence (however many questions it
    answers), with its swap, other_passage, negation and reordered sentences where the rules apply."""
    data = json.loads(Path(path).read_text())["data"]
    items: list[Item] = []
    for a_index, article in enumerate(data):
        title = article.get("title", f"article-{a_index}")
        split = "validation" if a_index < VALIDATION_ARTICLES else "test"
        paragraphs = [p["context"] for p in article["paragraphs"]]
        article_text = "\n".join(paragraphs)
        sentences = [[(s, e, ctx[s:e]) for s, e in sentence_spans(ctx)] for ctx in paragraphs]
        seen: set[tuple[int, int]] = set()
        for p_index, paragraph in enumerate(article["paragraphs"]):
            ctx = paragraph["context"]
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    continue
                gold = qa["answers"][0]
                g_start, g_text = gold["answer_start"], gold["text"]
                g_end = g_start + len(g_text)
                if ctx[g_start:g_end] != g_text:
                    continue
                found = [(i, s, e, t) for i, (s, e, t) in enumerate(sentences[p_index]) if s <= g_start and g_end <= e]
                if not found:
                    continue  # the span crosses a sentence boundary
                s_index, s_start, _, sentence = found[0]
                if (p_index, s_index) in seen or not _claim_like(sentence):
                    continue
                seen.add((p_index, s_index))
                rng = random.Random(f"{seed}:{title}:{p_index}:{s_index}")
                question = qa["question"]

                def add(answer: str | None, kind: str, supported: bool = False) -> None:
                    if answer and _claim_like(answer):
                        items.append(Item(question, answer, ctx, supported, kind, title, split))  # noqa: B023

                add(sentence, "extract", True)
                new = _replacement(g_text, sentence, article_text, rng)
                rel = g_start - s_start
                add(sentence[:rel] + new + sentence[rel + len(g_text) :] if new else None, "swap")
                if new:  # both or neither: the pair differs only in the answer
                    add(restate(question, g_text), "restated", True)
                    add(restate(question, new), "restated_swap")
                others = [t for j, ss in enumerate(sentences) if j != p_index for _, _, t in ss if _claim_like(t) and t not in ctx]
                add(rng.choice(others) if others else None, "other_passage")
                add(negate(sentence), "negation")
                add(reorder(sentence, rng), "reordered")
    return items


def sample(items: list[Item], per_kind: int = PER_KIND, seed: int = SEED) -> list[Item]:
    """At most ``per_kind`` items of each (split, kind), drawn with a fixed seed, in their original order."""
    rng = random.Random(seed)
    by_group: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        by_group.setdefault((item.split, item.kind), []).append(i)
    keep: set[int] = set()
    for key in sorted(by_group):
        indices = by_group[key]
        keep.update(indices if len(indices) <= per_kind else rng.sample(indices, per_kind))
    return [item for i, item in enumerate(items) if i in keep]


def roc_auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney U); None if either side is empty."""
    if not len(pos) or not len(neg):
        return None
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(pos) * len(neg)))


def balanced_accuracy(scores: list[float], labels: list[bool], threshold: float) -> float | None:
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return None
    predicted = scores >= threshold
    return float(((predicted & labels).sum() / labels.sum() + (~predicted & ~labels).sum() / (~labels).sum()) / 2)


def choose_threshold(scores: list[float], labels: list[bool]) -> tuple[float, float]:
    """The threshold (support >= threshold is "supported") of highest balanced accuracy, and that accuracy. Candidates
    are the midpoints between consecutive distinct scores; among equally good ones, the middle of the best run."""
    values = np.unique(np.asarray(scores, dtype=float))
    if not len(values):
        raise ValueError("no scores")
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracies = np.array([balanced_accuracy(scores, labels, t) or 0.0 for t in candidates])
    best = accuracies.max()
    tied = np.flatnonzero(np.isclose(accuracies, best))
    run = tied[: np.argmax(np.diff(np.append(tied, tied[-1] + 2)) > 1) + 1]  # the first run of consecutive best candidates
    middle = float((candidates[run[0]] + candidates[run[-1]]) / 2)
    if balanced_accuracy(scores, labels, middle) is not None and np.isclose(balanced_accuracy(scores, labels, middle), best):
        return round(middle, 4), float(best)
    return float(candidates[run[0]]), float(best)


def score_items(scorer, items: list[Item]) -> list[float]:
    return [scorer.sentence_support(item.answer, [item.chunk])[0] for item in items]


def _figures(scores: list[float], labels: list[bool], threshold: float) -> dict:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    auc = roc_auc(pos, neg)
    ba = balanced_accuracy(scores, labels, threshold)
    return {
        "roc_auc": None if auc is None else round(auc, 4),
        "balanced_accuracy": None if ba is None else round(ba, 4),
        "n": len(neg),
        "n_supported": len(pos),
        "recall_supported": round(float(np.mean(np.asarray(pos) >= threshold)), 4) if pos else None,
        "rejected_unsupported": round(float(np.mean(np.asarray(neg) < threshold)), 4) if neg else None,
    }


def report(items: list[Item], scores: list[float], threshold: float) -> dict:
    """Per kind (the supported kinds against that kind) and overall (against every unsupported kind; and with
    reordered too): ROC AUC, balanced accuracy at ``threshold``, n (unsupported items; n_supported beside it)."""
    supported = [s for s, it in zip(scores, items) if it.kind in SUPPORTED_KINDS]

    def against(kinds: tuple[str, ...]) -> dict:
        neg = [s for s, it in zip(scores, items) if it.kind in kinds]
        return _figures(supported + neg, [True] * len(supported) + [False] * len(neg), threshold)

    return {
        "overall": against(UNSUPPORTED_KINDS),
        "overall_with_reordered": against(UNSUPPORTED_KINDS + BLIND_SPOT_KINDS),
        "by_kind": {kind: against((kind,)) for kind in UNSUPPORTED_KINDS + BLIND_SPOT_KINDS},
    }


def evaluate(scorer, items: list[Item], threshold: float) -> dict:
    """ROC AUC and balanced accuracy of ``scorer`` on ``items``, overall and per unsupported kind."""
    return report(items, score_items(scorer, items), threshold)


def main(path: str | Path, json_out: str | Path | None = None, per_kind: int = PER_KIND, scorer=None) -> dict:
    """Choose the threshold on the validation split, report on the test split."""
    from bentos.quality.scorer import OfflineScorer

    started = time.perf_counter()
    scorer = scorer or OfflineScorer()
    items = sample(build(path), per_kind)
    validation = [it for it in items if it.split == "validation"]
    test = [it for it in items if it.split == "test"]
    v_scores = score_items(scorer, validation)
    tuning = [(s, it.supported) for s, it in zip(v_scores, validation) if it.kind in (*SUPPORTED_KINDS, *UNSUPPORTED_KINDS)]
    threshold, v_ba = choose_threshold([s for s, _ in tuning], [y for _, y in tuning])
    t_scores = score_items(scorer, test)
    result = {
        "threshold": threshold,
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "scorer_threshold": getattr(scorer, "threshold", None),
        "validation": {"balanced_accuracy_at_choice": round(v_ba, 4), **report(validation, v_scores, threshold)},
        "test": report(test, t_scores, threshold),
        "test_at_scorer_threshold": report(test, t_scores, scorer.threshold) if hasattr(scorer, "threshold") else None,
        "articles": {"validation": sorted({it.title for it in validation}), "test": sorted({it.title for it in test})},
        "per_kind_cap": per_kind,
        "seconds": None,
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(_table(result))
    print(f"scored {len(items)} items ({len(validation)} validation, {len(test)} test) in {result['seconds']} s")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _table(result: dict) -> str:
    lines = [
        f"threshold {result['threshold']} (validation articles {', '.join(result['articles']['validation'])}: "
        f"balanced accuracy {result['validation']['balanced_accuracy_at_choice']})",
        f"test articles {', '.join(result['articles']['test'])}: "
        f"supported (extract, restated) n={result['test']['overall']['n_supported']}",
        f"{'test, supported against':<28}{'ROC AUC':>9}{'bal. acc.':>11}{'n':>6}",
    ]
    rows = {"all (no reordered)": result["test"]["overall"], **result["test"]["by_kind"]}
    rows["all + reordered"] = result["test"]["overall_with_reordered"]
    for name, f in rows.items():
        auc, ba = f["roc_auc"], f["balanced_accuracy"]
        lines.append(f"{name:<28}{'-' if auc is None else f'{auc:.3f}':>9}{'-' if ba is None else f'{ba:.3f}':>11}{f['n']:>6}")
    return "\n".join(lines)
