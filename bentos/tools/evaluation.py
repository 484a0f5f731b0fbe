"""Retrieval quality on a SQuAD-format file: is the gold paragraph ranked first, in the top 5?"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from tqdm import tqdm

from bentos.retrieval.documents import Document
from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import ChunkingConfig, IndexStore
from bentos.retrieval.retriever import Retrieval, Retriever
from bentos.settings import Settings


class EvalDataError(ValueError):
    pass


def load_squad(path: Path) -> tuple[list[Document], list[tuple[str, str]], list[str]]:
    """Paragraphs as documents, (question, gold paragraph id) pairs, and the unanswerable questions."""
    try:
        data = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f"{path}: not a SQuAD-format JSON file ({e})") from None
    docs, answerable, unanswerable = [], [], []
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", [])):
            doc_id = f"{a}-{p}"
            docs.append(Document(doc_id=doc_id, source=f"{article.get('title', a)}#{p}", text=para["context"]))
            for qa in para.get("qas", []):
                (unanswerable.append(qa["question"]) if qa.get("is_impossible") else answerable.append((qa["question"], doc_id)))
    if not docs or not answerable:
        raise EvalDataError(f"{path}: no paragraphs or no answerable questions found")
    return docs, answerable, unanswerable


def paragraph_ranks(retrieval: Retrieval, depth: int) -> list[str]:
    """Paragraph ids best first (a paragraph split into chunks ranks at its best chunk)."""
    return list(dict.fromkeys(h.doc_id for h in retrieval.hits))[:depth]


def eval_retrieval(settings: Settings, squad: Path, db: str | None = None) -> dict:
    if db is None:
        with tempfile.TemporaryDirectory(prefix="ragserve-eval-") as tmp:  # removed afterwards
            return eval_retrieval(settings, squad, tmp)
    docs, answerable, unanswerable = load_squad(squad)
    settings = settings.model_copy(update={"db": db, "index_refresh_s": 3600})
    IndexStore(db).reindex(docs, embedder_for(settings), ChunkingConfig.from_settings(settings))
    retriever = Retriever(settings)
    hits1 = hits5 = gated = 0
    rr = []
    latencies = []
    for question, gold in tqdm(answerable, desc="questions", unit="q"):
        r = retriever.retrieve(question, 20)  # 20 chunks: enough for 10 distinct paragraphs
        latencies.append(r.search_ms)
        ranked = paragraph_ranks(r, 10)
        gated += not r.relevant
        hits1 += ranked[:1] == [gold]
        hits5 += gold in ranked[:5]
        rr.append(1 / (ranked.index(gold) + 1) if gold in ranked else 0.0)
    n = len(answerable)
    return {
        "file": str(squad),
        "paragraphs": len(docs),
        "answerable_questions": n,
        "unanswerable_questions": len(unanswerable),
        "recall@1": round(hits1 / n, 4),
        "recall@5": round(hits5 / n, 4),
        "mrr@10": round(sum(rr) / n, 4),
        "answerable_judged_not_found": round(gated / n, 4),  # the relevance gate's misses
        "search_ms_p50": round(statistics.median(latencies), 2),
        "fusion": f"cosine + {settings.fts_weight} x BM25/max(BM25), {settings.search_candidates} candidates each",
    }
