"""Retrieval quality: is the gold source ranked first, in the top 5?

Two input formats: a SQuAD-format file (each paragraph a source), or a folder of documents with a
JSONL of queries, ``{"query": ..., "gold": [source names]}`` (gold by source, so chunking choices
are scored fairly; an optional ``"part"`` lets a set keep figures apart from decisions). Every run
also scores three LanceDB baselines on whole documents with the same embedder (vector search
alone, LanceDB's hybrid search with its RRFReranker, full-text search alone), so a regression
against those anchors shows in the same table.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bentos.retrieval.documents import Document, SourceError, read_documents
from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import ChunkingConfig, IndexStore
from bentos.retrieval.retriever import Retriever
from bentos.retrieval.search import fts_terms
from bentos.settings import RetrievalSettings
from bentos.tools.devsets import part_of

DEPTH = 10  # MRR@10; also how many distinct sources each ranking keeps


class EvalDataError(ValueError):
    pass


@dataclass
class EvalSet:
    name: str
    docs: list[Document]
    queries: list[tuple[str, frozenset[str]]]  # (query, gold sources)
    unanswerable: int = 0


def load_squad(path: Path, part: str | None = None) -> EvalSet:
    """Paragraphs as documents (source "title#n"), answerable questions as queries; with ``part``
    (dev or report), only the questions a hash of their text puts there."""
    try:
        data = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalDataError(f"{path}: not a SQuAD-format JSON file ({e})") from None
    docs, queries, unanswerable = [], [], 0
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", [])):
            source = f"{article.get('title', a)}#{p}"
            docs.append(Document(doc_id=source, source=source, text=para["context"]))
            for qa in para.get("qas", []):
                if qa.get("is_impossible"):
                    unanswerable += 1
                elif part is None or part_of(qa["question"]) == part:
                    queries.append((qa["question"], frozenset([source])))
    if not docs or not queries:
        raise EvalDataError(f"{path}: no paragraphs or no answerable questions found")
    return EvalSet(str(path) + (f" ({part})" if part else ""), docs, queries, unanswerable)


def load_generic(docs_root: Path, queries_path: Path, part: str | None = None) -> EvalSet:
    """Documents read as `ragserve index` reads them; queries from JSONL, only those of ``part`` when given."""
    try:
        docs, _ = read_documents(docs_root)
    except SourceError as e:
        raise EvalDataError(str(e)) from None
    sources = {d.source for d in docs}
    if not sources:
        raise EvalDataError(f"{docs_root}: no documents to search")
    try:
        lines = queries_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalDataError(f"{queries_path}: cannot be read ({e})") from None
    queries = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{queries_path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{where}: not JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
            raise EvalDataError(f'{where}: needs a non-empty "query" string')
        gold = rec.get("gold")
        if isinstance(gold, str):
            gold = [gold]
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
            raise EvalDataError(f'{where}: needs "gold", a list of source names (file paths relative to {docs_root})')
        missing = sorted(set(gold) - sources)
        if missing:
            raise EvalDataError(f"{where}: gold source(s) not among the documents in {docs_root}: {', '.join(missing)}")
        if part is None or rec.get("part") == part:
            queries.append((rec["query"], frozenset(gold)))
    if not queries:
        raise EvalDataError(f"{queries_path}: no queries" + (f' with "part": "{part}"' if part else ""))
    return EvalSet(f"{queries_path}" + (f" ({part})" if part else ""), docs, queries)


def figures(ranked: list[list[str]], queries: list[tuple[str, frozenset[str]]]) -> dict[str, float]:
    """R@1, R@5 and MRR@10 of the best-ranked gold source, from each query's sources best first."""
    r1 = r5 = rr = 0.0
    for sources, (_, gold) in zip(ranked, queries):
        rank = next((i for i, s in enumerate(sources[:DEPTH]) if s in gold), None)
        if rank is not None:
            r1 += rank == 0
            r5 += rank < 5
            rr += 1 / (rank + 1)
    n = len(queries)
    return {"recall@1": round(r1 / n, 4), "recall@5": round(r5 / n, 4), "mrr@10": round(rr / n, 4)}


def distinct(sources: list[str]) -> list[str]:
    return list(dict.fromkeys(sources))[:DEPTH]


def baselines(evalset: EvalSet, embedder, folder: str) -> dict[str, dict[str, float]]:
    """LanceDB on whole documents, one row each, as a user would start: vector search, hybrid
    search with RRFReranker, and full-text search, each the top 10 documents."""
    import lancedb
    from lancedb.index import FTS
    from lancedb.rerankers import RRFReranker

    texts = [d.text for d in evalset.docs]
    vectors = embedder.embed(texts)
    table = lancedb.connect(folder).create_table(
        "baseline", data=[{"source": d.source, "text": t, "vector": v} for d, t, v in zip(evalset.docs, texts, vectors)]
    )
    table.create_index("text", config=FTS())
    qvectors = embedder.embed([q for q, _ in evalset.queries])
    runs: dict[str, Callable] = {
        "lancedb vector": lambda q, v: table.search(v).distance_type("cosine").limit(DEPTH),
        "lancedb hybrid rrf": lambda q, v: (
            table.search(query_type="hybrid").vector(v).text(fts_terms(q)).distance_type("cosine").rerank(RRFReranker()).limit(DEPTH)
        ),
        "lancedb full-text": lambda q, v: table.search(fts_terms(q), query_type="fts").limit(DEPTH),
    }
    out = {}
    for name, search in runs.items():
        ranked = [
            distinct(search(q, v).to_arrow().column("source").to_pylist()) if fts_terms(q) else []
            for (q, _), v in zip(evalset.queries, qvectors)
        ]
        out[name] = figures(ranked, evalset.queries)
    return out


def eval_retrieval(settings: RetrievalSettings, evalset: EvalSet, db: str | None = None, with_baselines: bool = True) -> dict:
    if db is None:
        with tempfile.TemporaryDirectory(prefix="ragserve-eval-") as tmp:  # removed afterwards
            return eval_retrieval(settings, evalset, tmp, with_baselines)
    settings = settings.model_copy(update={"db": str(Path(db) / "project"), "index_refresh_s": 3600})
    embedder = embedder_for(settings)
    IndexStore(settings.db).reindex(evalset.docs, embedder, ChunkingConfig.from_settings(settings))
    retriever = Retriever(settings)
    ranked, latencies, gated = [], [], 0
    for question, _ in tqdm(evalset.queries, desc="queries", unit="q"):
        r = retriever.retrieve(question, 2 * DEPTH)  # 20 chunks: enough for 10 distinct sources
        latencies.append(r.search_ms)
        gated += not r.relevant
        ranked.append(distinct([h.source for h in r.hits]))
    n = len(evalset.queries)
    result = {
        "file": evalset.name,
        "documents": len(evalset.docs),
        "answerable_questions": n,
        "unanswerable_questions": evalset.unanswerable,
        **figures(ranked, evalset.queries),
        "answerable_judged_not_found": round(gated / n, 4),  # the relevance gate's misses
        "search_ms_p50": round(statistics.median(latencies), 2),
        "fusion": f"cosine rescaled + {settings.fts_weight} x BM25/max(BM25), {settings.search_candidates} candidates each",
        "chunking": f"{settings.chunk_max_words} words, {settings.chunk_overlap_words} overlap",
    }
    if with_baselines:
        result["baselines"] = baselines(evalset, embedder, str(Path(db) / "baselines"))
    return result
