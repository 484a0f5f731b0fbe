"""Hybrid retrieval: vector and full-text candidates fused by score.

Fusion is cosine similarity plus ``fts_weight`` x BM25 normalised by the query's best BM25. On the
SQuAD paragraph eval it beat reciprocal-rank fusion (R@1 0.89 against 0.84, R@5 0.99 against 0.98,
and on both held-out halves): ranks throw away how far ahead the best match is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

COLUMNS = ["chunk_id", "doc_id", "source", "title", "text", "metadata"]


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    source: str
    title: str
    text: str
    score: float
    metadata: dict
    similarity: float  # cosine similarity to the query; 0 when only full-text search found it
    keyword_match: bool


@dataclass
class SearchConfig:
    candidates: int = 50  # taken from each side before fusing
    fts_weight: float = 1.0


def fts_terms(query: str) -> str:
    """User text as plain terms: quotes, operators and punctuation would be read as query syntax
    (a quoted question becomes a phrase query that matches almost nothing)."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in query).split())


def hybrid_search(table, vector: np.ndarray, query: str, k: int, cfg: SearchConfig = SearchConfig()) -> list[Hit]:
    n = max(k, cfg.candidates)
    vec_rows = table.search(vector, vector_column_name="vector").distance_type("cosine").select([*COLUMNS, "_distance"]).limit(n).to_list()
    terms = fts_terms(query)
    fts_rows = table.search(terms, query_type="fts", fts_columns="search_text").select([*COLUMNS, "_score"]).limit(n).to_list() if terms else []
    rows = {r["chunk_id"]: r for r in (*fts_rows, *vec_rows)}
    similarity = {r["chunk_id"]: 1.0 - float(r["_distance"]) for r in vec_rows}
    top_bm25 = max((float(r["_score"]) for r in fts_rows), default=0.0)
    keyword = {r["chunk_id"]: float(r["_score"]) / top_bm25 for r in fts_rows} if top_bm25 > 0 else {}
    fused = {cid: similarity.get(cid, 0.0) + cfg.fts_weight * keyword.get(cid, 0.0) for cid in rows}
    best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
    return [
        Hit(
            chunk_id=cid, doc_id=rows[cid]["doc_id"], source=rows[cid]["source"], title=rows[cid]["title"],
            text=rows[cid]["text"], score=round(fused[cid], 4), metadata=json.loads(rows[cid]["metadata"] or "{}"),
            similarity=round(similarity.get(cid, 0.0), 4), keyword_match=cid in keyword,
        )
        for cid in best
    ]
