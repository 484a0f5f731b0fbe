"""Query-time retrieval: embed the query, search the published index, judge relevance."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from bentos.retrieval.batching import Batcher
from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import IndexReader
from bentos.retrieval.search import (
    Hit,
    SearchConfig,
    candidates,
    fulltext,
    fuse,
    hybrid_search,
    in_pool,
    vector_searches,
)
from bentos.settings import RetrievalSettings


@dataclass
class Retrieval:
    hits: list[Hit]
    version: int | None
    embed_ms: float
    search_ms: float
    relevant: list[Hit] = field(default_factory=list)
    # Within a server's search: until it started (event loop, index refresh), then until each side
    # had its candidates (waits for a batch or a search thread included), ms.
    parts_ms: dict[str, float] = field(default_factory=dict)


class Retriever:
    def __init__(self, settings: RetrievalSettings):
        self.settings = settings
        self.embedder = embedder_for(settings)
        # Concurrent requests share a forward pass and a vector query. On this CPU 8 queries embed
        # in 25.8 ms together against 4.1 ms each on ONNX Runtime (torch: 36.8 against 11.3), and
        # 32 vector searches take 6.5 ms as one LanceDB query against 104-120 ms one by one.
        self.queries = Batcher(self.embedder.embed, window_s=settings.embed_window_ms / 1000)
        self.vector_searches = Batcher(lambda items: vector_searches(items, self.cfg))
        self.reader = IndexReader(settings.db, refresh_s=settings.index_refresh_s, storage_options=settings.db_storage_options)
        self.cfg = SearchConfig.from_settings(settings)

    def is_relevant(self, hit: Hit) -> bool:
        """A chunk counts when it shares words with the query or is close in meaning; below both,
        the answer says nothing was found instead of letting the model invent one."""
        return hit.keyword_match or hit.similarity >= self.settings.min_similarity

    def embed(self, query: str) -> np.ndarray:
        return self.embedder.embed([query])[0]

    async def embed_query(self, query: str) -> tuple[np.ndarray, float]:
        """The query's vector, batched with other requests' queries, and how long it took (ms)."""
        t0 = time.perf_counter()
        vector = await self.queries.submit(query)
        return vector, (time.perf_counter() - t0) * 1000

    async def search(self, query: str, k: int, vector: np.ndarray, embed_ms: float = 0.0, asked: float | None = None) -> Retrieval:
        """What ``retrieve`` finds, for a server: the vector search batched with other requests',
        the full-text search beside it, both off the event loop. ``asked``: when the caller
        started it (time.perf_counter), to tell the wait for the event loop apart."""
        started = time.perf_counter()
        # Storage is read once per refresh_s, off the loop; otherwise the snapshot is in memory
        # and need not queue behind other requests' searches on the pool.
        table, version = await in_pool(self.reader.snapshot) if self.reader.due() else self.reader.snapshot()
        if table is None:
            return Retrieval([], None, 0.0, 0.0)
        t0 = time.perf_counter()
        n = candidates(k, self.cfg)

        async def timed(work):
            result = await work
            return result, (time.perf_counter() - t0) * 1000

        (vec, vec_ms), (fts, fts_ms) = await asyncio.gather(
            timed(self.vector_searches.submit((table, vector, n))), timed(in_pool(fulltext, table, query, n))
        )
        hits = fuse(vec, fts, k, self.cfg)
        found = self._found(hits, version, embed_ms, (time.perf_counter() - t0) * 1000)
        found.parts_ms = {"search_start": (t0 - (asked or started)) * 1000, "vector_search": vec_ms, "fulltext_search": fts_ms}
        return found

    def retrieve(self, query: str, k: int) -> Retrieval:
        """Embed and search one query, for callers without an event loop (the CLI, evaluation)."""
        table, version = self.reader.snapshot()
        if table is None:
            return Retrieval([], None, 0.0, 0.0)
        t0 = time.perf_counter()
        vector = self.embed(query)
        t1 = time.perf_counter()
        hits = hybrid_search(table, vector, query, k, self.cfg)
        return self._found(hits, version, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)

    def _found(self, hits: list[Hit], version: int, embed_ms: float, search_ms: float) -> Retrieval:
        return Retrieval(hits, version, embed_ms, search_ms, [h for h in hits if self.is_relevant(h)])
