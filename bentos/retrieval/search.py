"""Hybrid retrieval: vector and full-text candidates fused by score.

Fusion: the cosine similarity rescaled over the vector candidates (best 1, worst 0) plus
``fts_weight`` x BM25 divided by the query's best BM25, so both sides span the same range
whatever the corpus. Scores, not ranks: ranks throw away how far ahead the best match is
(reciprocal-rank fusion lost on both development sets). Chosen by the mean R@1 and R@5 over two
development sets, SQuAD paragraphs and FAQs Debian ships (`ragserve eval faq-set`), on their dev
parts: 0.843 against 0.822 for raw cosine + 1.0 x BM25 over 50 candidates, which fitted SQuAD
alone (docs/evaluation.md, "Retrieval").
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(frozen=True)
class SearchConfig:
    candidates: int = 100  # taken from each side before fusing
    fts_weight: float = 0.75
    # With an ANN index only: IVF partitions searched, and how many times the limit is re-ranked
    # on the full vectors (SQ's 8-bit distances misorder close neighbours).
    nprobes: int = 50
    refine_factor: int | None = 4

    @classmethod
    def from_settings(cls, s) -> SearchConfig:
        return cls(s.search_candidates, s.fts_weight, s.ann_nprobes, s.ann_refine_factor)


def fts_terms(query: str) -> str:
    """User text as plain terms: quotes, operators and punctuation would be read as query syntax
    (a quoted question becomes a phrase query that matches almost nothing)."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in query).split())


# Vector and full-text searches run side by side: LanceDB releases the GIL, so the latency is the
# slower of the two rather than their sum (measured at 100k chunks: p95 20 ms -> about 11 ms).
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="search")


async def in_pool(fn, *args):
    """``fn`` on the search threads: at most 4 LanceDB calls at once however many requests wait
    (32 at once only contend for the cores and the GIL)."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


def candidates(k: int, cfg: SearchConfig) -> int:
    return max(k, cfg.candidates)


def nearest(table, vector: np.ndarray | list[np.ndarray], n: int, cfg: SearchConfig) -> pa.Table:
    """The nearest ``n``; for a list of vectors, the nearest ``n`` to each, told apart by ``query_index``."""
    query = table.search(vector, vector_column_name="vector").distance_type("cosine").nprobes(cfg.nprobes)
    if cfg.refine_factor:
        query = query.refine_factor(cfg.refine_factor)
    return query.select([*COLUMNS, "_distance"]).limit(n).to_arrow()


def fulltext(table, query: str, n: int) -> pa.Table | None:
    terms = fts_terms(query)
    if not terms:
        return None
    return table.search(terms, query_type="fts", fts_columns="search_text").select([*COLUMNS, "_score"]).limit(n).to_arrow()


def vector_searches(items: list[tuple[object, np.ndarray, int]], cfg: SearchConfig) -> list[pa.Table]:
    """The nearest ``n`` chunks to each (table, vector, n), with one LanceDB query per table and
    ``n``: a query's fixed cost dominates on a small index."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (table, _, n) in enumerate(items):
        groups[(id(table), n)].append(i)
    results: list[pa.Table] = [None] * len(items)  # type: ignore[list-item]
    for (_, n), members in groups.items():
        table = items[members[0]][0]
        if len(members) == 1:
            results[members[0]] = nearest(table, items[members[0]][1], n, cfg)
            continue
        found = nearest(table, [items[i][1] for i in members], n, cfg)
        which = found.column("query_index")
        for j, i in enumerate(members):
            results[i] = found.filter(pc.equal(which, j)).drop_columns(["query_index"])
    return results


def hybrid_search(table, vector: np.ndarray, query: str, k: int, cfg: SearchConfig = SearchConfig()) -> list[Hit]:
    """One query's search, for callers without an event loop (the CLI, evaluation)."""
    n = candidates(k, cfg)
    vec_job = _POOL.submit(nearest, table, vector, n, cfg)
    fts_job = _POOL.submit(fulltext, table, query, n)
    return fuse(vec_job.result(), fts_job.result(), k, cfg)


def fuse(vec: pa.Table, fts: pa.Table | None, k: int, cfg: SearchConfig) -> list[Hit]:
    """The top ``k`` of both candidate lists by rescaled cosine similarity plus weighted, normalised BM25."""
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
    low, high = min(similarity.values(), default=0.0), max(similarity.values(), default=0.0)
    span = high - low or 1.0  # one candidate, or all equally close: no spread to rescale
    fused = {cid: (similarity[cid] - low) / span if cid in similarity else 0.0 for cid in where}
    fused = {cid: v + cfg.fts_weight * keyword.get(cid, 0.0) for cid, v in fused.items()}
    hits = []
    for cid in sorted(fused, key=fused.__getitem__, reverse=True)[:k]:
        source, row = where[cid]
        r = {c: source.column(c)[row].as_py() for c in COLUMNS if c != "vector"}
        hits.append(
            Hit(
                chunk_id=cid,
                doc_id=r["doc_id"],
                source=r["source"],
                title=r["title"],
                text=r["text"],
                score=round(fused[cid], 4),
                metadata=json.loads(r["metadata"] or "{}"),
                similarity=round(similarity.get(cid, 0.0), 4),
                keyword_match=cid in keyword,
                vector=source.column("vector")[row].values.to_numpy(zero_copy_only=False),
            )
        )
    return hits
