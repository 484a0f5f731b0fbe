"""Query-time retrieval: embed the query, search the published index, judge relevance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..settings import Settings
from .embedder import QueryBatcher, embedder_for
from .index import IndexReader
from .search import Hit, SearchConfig, hybrid_search


@dataclass
class Retrieval:
    hits: list[Hit]
    version: int | None
    embed_ms: float
    search_ms: float
    relevant: list[Hit] = field(default_factory=list)


class Retriever:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedder = embedder_for(settings)
        self.queries = QueryBatcher(self.embedder)
        self.reader = IndexReader(settings.db, refresh_s=settings.index_refresh_s)
        self.cfg = SearchConfig(candidates=settings.search_candidates, fts_weight=settings.fts_weight)

    def is_relevant(self, hit: Hit) -> bool:
        """A chunk counts when it shares words with the query or is close in meaning; below both,
        the answer says nothing was found instead of letting the model invent one."""
        return hit.keyword_match or hit.similarity >= self.settings.min_similarity

    def embed(self, query: str) -> np.ndarray:
        return self.embedder.embed([query])[0]

    async def embed_query(self, query: str) -> tuple[np.ndarray, float]:
        """The query's vector, batched with other requests' queries, and how long it took (ms)."""
        t0 = time.perf_counter()
        vector = await self.queries.embed(query)
        return vector, (time.perf_counter() - t0) * 1000

    def retrieve(self, query: str, k: int, vector: np.ndarray | None = None, embed_ms: float = 0.0) -> Retrieval:
        """``vector``: the query's embedding when the caller has it already (from ``embed_query``),
        and ``embed_ms`` what computing it took, for the logs."""
        table, version = self.reader.snapshot()
        if table is None:
            return Retrieval([], None, 0.0, 0.0)
        t0 = time.perf_counter()
        if vector is None:
            vector = self.embed(query)
        t1 = time.perf_counter()
        hits = hybrid_search(table, vector, query, k, self.cfg)
        t2 = time.perf_counter()
        return Retrieval(hits, version, embed_ms + (t1 - t0) * 1000, (t2 - t1) * 1000, [h for h in hits if self.is_relevant(h)])
