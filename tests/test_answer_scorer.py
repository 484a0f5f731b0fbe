"""The offline answer scorer (bentos/quality/scorer.py) with the real embedder, and the labelled set that measures it
(bentos/quality/labelled.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bentos.quality import labelled
from bentos.quality.scorer import OfflineScorer, claims_of

MUSEUM = "The museum is closed on Monday. It opens at 10 am on the other days."
SQUAD = Path(__file__).parents[1].parent / "shared" / "eval" / "squad_v2_dev_subset.json"


@pytest.fixture(scope="module")
def scorer() -> OfflineScorer:
    return OfflineScorer()


def test_the_museum_answer_that_contradicts_its_chunk_is_unsupported(scorer):
    s = scorer.score("Is the museum open on Monday?", "The museum is indeed open on Monday. Sources: [1] museum.md", [MUSEUM])
    assert s.faithfulness == 0.0
    assert s.citation_precision == 0.0
    assert s.unsupported == ["The museum is indeed open on Monday."]


def test_the_museum_answer_that_its_chunk_says_is_supported(scorer):
    s = scorer.score("Is the museum open on Monday?", "The museum is closed on Monday [1].", [MUSEUM])
    assert s.faithfulness == 1.0
    assert s.citation_precision == 1.0
    assert s.sentences[0].cites == [1] and s.sentences[0].chunk == 0
    assert not s.refused and s.relevance > 0.5


NORMANS = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France. "
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their leader Rollo, "
    "agreed to swear fealty to King Charles III of West Francia. The treaty was signed in 911."
)


def test_an_entity_swap_and_a_number_swap_are_unsupported_while_the_extract_is_supported(scorer):
    extract = "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West Francia."  # noqa: E501
    name_swap = extract.replace("Rollo", "Bohemond")
    year_swap = "The treaty was signed in 1066."
    ok, _, _ = scorer.sentence_support(extract, [NORMANS])
    assert ok >= scorer.threshold
    assert scorer.sentence_support(name_swap, [NORMANS])[0] < scorer.threshold
    assert scorer.sentence_support(year_swap, [NORMANS])[0] < scorer.threshold
    assert scorer.sentence_support("The treaty was signed in 911.", [NORMANS])[0] >= scorer.threshold


def test_a_marker_pointing_at_the_wrong_chunk_lowers_citation_precision(scorer):
    chunks = ["Tickets cost 12 euros for adults and 6 euros for children.", MUSEUM]
    right = scorer.score("When is the museum closed?", "The museum is closed on Monday [2]. Adult tickets cost 12 euros [1].", chunks)
    wrong = scorer.score("When is the museum closed?", "The museum is closed on Monday [1]. Adult tickets cost 12 euros [1].", chunks)
    assert right.citation_precision == 1.0
    assert wrong.citation_precision == 0.5
    assert wrong.faithfulness == 1.0  # the claims stand; only the marker is wrong
    assert wrong.sentences[0].cites_supported == [False] and wrong.sentences[0].chunk == 1


def test_a_refusal_is_refused_without_faithfulness(scorer):
    s = scorer.score("Is the museum open on Monday?", "I could not find that in the provided documents.", [MUSEUM])
    assert s.refused
    assert s.faithfulness is None and s.sentences == [] and s.citation_precision is None
    assert scorer.score("Is the museum open on Monday?", "I do not know.", [MUSEUM]).refused


def test_claims_drop_the_sources_line_greetings_and_short_sentences():
    answer = "Hello! The museum is closed on Monday [1]. It opens at 10 am on other days [1].\n\nSources: [1] museum.md, [2] x.md"
    assert claims_of(answer) == ["The museum is closed on Monday [1].", "It opens at 10 am on other days [1]."]
    assert claims_of("Sure. Yes. The museum is closed on Mondays.\n[1] museum.md") == ["The museum is closed on Mondays."]


def test_roc_auc_on_hand_made_lists():
    assert labelled.roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert labelled.roc_auc([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert labelled.roc_auc([0.1, 0.2], [0.8, 0.9]) == 0.0
    assert labelled.roc_auc([0.9, 0.3], [0.5, 0.1]) == 0.75


def test_choose_threshold_separates_a_hand_made_set():
    scores = [0.9, 0.85, 0.7, 0.4, 0.3, 0.2]
    labels = [True, True, True, False, False, False]
    threshold, ba = labelled.choose_threshold(scores, labels)
    assert ba == 1.0 and 0.4 < threshold <= 0.7
    assert labelled.balanced_accuracy([0.9, 0.1, 0.6, 0.4], [True, False, False, True], 0.5) == 0.5


def _tiny_squad(tmp_path: Path) -> Path:
    def article(title: str, paragraphs: list[tuple[str, str, str]]) -> dict:
        out = []
        for i, (context, question, answer) in enumerate(paragraphs):
            qas = [{"id": f"{title}{i}", "question": question, "answers": [{"text": answer, "answer_start": context.index(answer)}]}]
            qas.append({"id": f"{title}{i}x", "question": "What is unanswerable here?", "answers": [], "is_impossible": True})
            out.append({"context": context, "qas": qas})
        return {"title": title, "paragraphs": out}

    data = [
        article(
            "Alpha",
            [
                (
                    "The bridge over the Tamber river was built in 1887 by engineer Clara Voss. It carried trains until 1950.",
                    "When was the bridge built?",
                    "1887",
                ),
                (
                    "The old mill near the bridge was owned by Henrik Dahl for many decades. It ground wheat for 300 farms.",
                    "Who owned the mill?",
                    "Henrik Dahl",
                ),
            ],
        ),  # fmt: skip
        article(
            "Beta",
            [("The lighthouse was designed by Marta Lind in 1902. It was painted red by Oskar Berg.", "Who designed it?", "Marta Lind")],
        ),
        article(
            "Gamma",
            [
                (
                    "The castle has 12 towers and was finished in 1420. It is guarded by Peter Holm and Anna Berg.",
                    "Who guards the castle?",
                    "Peter Holm",
                ),
                ("The castle garden grows 40 kinds of roses tended by Lena Ek.", "Who tends the roses?", "Lena Ek"),
            ],
        ),  # fmt: skip
    ]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def test_the_labelled_builder_makes_each_kind_with_its_label_and_splits_by_article(tmp_path):
    items = labelled.build(_tiny_squad(tmp_path))
    kinds = {it.kind for it in items}
    assert kinds == set(labelled.KINDS), kinds
    assert all(it.supported == (it.kind in labelled.SUPPORTED_KINDS) for it in items)
    extract = next(it for it in items if it.kind == "extract" and "1887" in it.answer)
    assert extract.answer == "The bridge over the Tamber river was built in 1887 by engineer Clara Voss."
    swap = next(it for it in items if it.kind == "swap" and it.chunk == extract.chunk and "bridge" in it.answer)
    assert swap.answer == extract.answer.replace("1887", "1950")  # the article's other year
    negation = next(it for it in items if it.kind == "negation" and it.chunk == extract.chunk)
    assert negation.answer == "The bridge over the Tamber river was not built in 1887 by engineer Clara Voss."
    other = next(it for it in items if it.kind == "other_passage" and it.chunk == extract.chunk)
    assert other.answer not in extract.chunk and other.title == "Alpha"
    reordered = next(it for it in items if it.kind == "reordered" and it.title == "Gamma")
    assert reordered.answer == "It is guarded by Anna Berg and Peter Holm."
    splits = {it.title: it.split for it in items}
    assert splits == {"Alpha": "validation", "Beta": "validation", "Gamma": "test"}
    assert len(labelled.sample(items, per_kind=1)) <= len(labelled.KINDS) * 2


@pytest.mark.skipif(not SQUAD.exists(), reason=f"the SQuAD v2 subset is not at {SQUAD} (../shared/eval absent)")
def test_the_scorer_separates_swaps_other_passages_and_negations_on_the_real_subset(scorer):
    items = [it for it in labelled.sample(labelled.build(SQUAD), per_kind=40) if it.split == "test"]
    started = time.perf_counter()
    result = labelled.evaluate(scorer, items, scorer.threshold)
    print(f"\n{len(items)} test items scored in {time.perf_counter() - started:.1f} s: {json.dumps(result['by_kind'])}")
    for kind in ("swap", "other_passage", "negation"):
        assert result["by_kind"][kind]["balanced_accuracy"] >= 0.75, (kind, result["by_kind"][kind])
