"""Hybrid retrieval: vector and full-text candidates fused by score.

Fusion is cosine similarity plus ``fts_weight`` x BM25 normalised by the query's best BM25. On the
SQuAD paragraph eval it beat reciprocal-rank fusion (R@1 0.89 against 0.84, R@5 0.99 against 0.98,
and on both held-out halves): ranks throw away how far ahead the best match is.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

COLUMNS = ["chunk_id", "doc_id", "source", "title", "text", "metadata", "vector"]  # vector: for the retrieval rail


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
    vector: np.ndarray | None = None


@dataclass
class SearchConfig:
    candidates: int = 50  # taken from each side before fusing
    fts_weight: float = 1.0


def fts_terms(query: str) -> str:
    """User text as plain terms: quotes, operators and punctuation would be read as query syntax
    (a quoted question becomes a phrase query that matches almost nothing)."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in query).split())


# Vector and full-text searches run side by side: LanceDB releases the GIL, so the latency is the
# slower of the two rather than their sum (measured at 100k chunks: p95 20 ms -> about 11 ms).
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="search")


def _vector(table, vector: np.ndarray, n: int) -> pa.Table:
    return table.search(vector, vector_column_name="vector").distance_type("cosine").select([*COLUMNS, "_distance"]).limit(n).to_arrow()


def _fulltext(table, terms: str, n: int) -> pa.Table | None:
    if not terms:
        return None
    return table.search(terms, query_type="fts", fts_columns="search_text").select([*COLUMNS, "_score"]).limit(n).to_arrow()


def hybrid_search(table, vector: np.ndarray, query: str, k: int, cfg: SearchConfig = SearchConfig()) -> list[Hit]:
    n = max(k, cfg.candidates)
    vec_job = _POOL.submit(_vector, table, vector, n)
    fts_job = _POOL.submit(_fulltext, table, fts_terms(query), n)
    vec, fts = vec_job.result(), fts_job.result()
    # where each chunk was found: (table, row); full-text first so vector rows win a tie
    where: dict[str, tuple[pa.Table, int]] = {}
    similarity: dict[str, float] = {}
    keyword: dict[str, float] = {}
    if fts is not None and fts.num_rows:
        scores = fts.column("_score").to_pylist()
        top = max(scores)
        for row, (cid, score) in enumerate(zip(fts.column("chunk_id").to_pylist(), scores)):
            where[cid] = (fts, row)
            if top > 0:
                keyword[cid] = score / top
    for row, (cid, dist) in enumerate(zip(vec.column("chunk_id").to_pylist(), vec.column("_distance").to_pylist())):
        where[cid] = (vec, row)
        similarity[cid] = 1.0 - dist
    fused = {cid: similarity.get(cid, 0.0) + cfg.fts_weight * keyword.get(cid, 0.0) for cid in where}
    hits = []
    for cid in sorted(fused, key=fused.__getitem__, reverse=True)[:k]:
        source, row = where[cid]
        r = {c: source.column(c)[row].as_py() for c in COLUMNS if c != "vector"}
        hits.append(Hit(
            chunk_id=cid, doc_id=r["doc_id"], source=r["source"], title=r["title"], text=r["text"],
            score=round(fused[cid], 4), metadata=json.loads(r["metadata"] or "{}"),
            similarity=round(similarity.get(cid, 0.0), 4), keyword_match=cid in keyword,
            vector=source.column("vector")[row].values.to_numpy(zero_copy_only=False),
        ))
    return hits
