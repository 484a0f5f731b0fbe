"""The document index: one LanceDB table whose *published* version is what readers see.

Writers (``ragserve index``, the scheduled Modal job) work on the table's latest version and then
move the ``published`` tag to it in one step; readers only ever check out the tagged version. So a
reader sees the old corpus or the new one, never a mix, and a re-index that fails or is killed
half-way leaves ``published`` where it was (the next run first restores the table to it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from lancedb.index import FTS

from bentos.retrieval.documents import Chunk, Document, chunk_document
from bentos.retrieval.embedder import Embedder
from bentos.retrieval.lease import single_writer
from bentos.retrieval.storage import IndexStoreError, Location

__all__ = ["IndexReader", "IndexStore", "IndexStoreError"]

log = logging.getLogger(__name__)

TABLE = "chunks"
PUBLISHED = "published"
PUBLICATION_PREFIX = "pub-"
WRITE_BATCH = 2000
EMBED_SLICE = 512


@dataclass(frozen=True)
class ChunkingConfig:
    max_words: int = 200
    overlap_words: int = 30

    @classmethod
    def from_settings(cls, settings) -> ChunkingConfig:
        return cls(settings.chunk_max_words, settings.chunk_overlap_words)

    def salt(self, embedder_name: str) -> str:
        return f"chunks:{self.max_words}/{self.overlap_words};embedder:{embedder_name}"


@dataclass(frozen=True)
class AnnIndex:
    """When the vector column gets an ANN index, and its IVF partitions. IVF_SQ, searched with
    50 probes and re-ranked on the full vectors (4x): at 1M chunks it built in 43 s and found 0.993
    of the true top 10 at p95 6.2 ms, where IVF_HNSW_SQ took 352 s and found 0.968 at its best
    (ef 300, refine 4; docs/evaluation.md, "Retrieval at scale")."""

    min_rows: int = 50_000
    rows_per_partition: int = 1000

    @classmethod
    def from_settings(cls, s) -> AnnIndex:
        return cls(s.ann_min_rows, s.ann_rows_per_partition)

    def partitions(self, rows: int) -> int:
        return max(1, rows // self.rows_per_partition)


@dataclass
class ReindexSummary:
    docs_added: int = 0
    docs_updated: int = 0
    docs_removed: int = 0
    docs_unchanged: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    version: int | None = None
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.docs_added or self.docs_updated or self.docs_removed)


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("source", pa.string()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("search_text", pa.string()),  # title + text: what full-text search matches
            pa.field("doc_hash", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def search_text(chunk: Chunk) -> str:
    return f"{chunk.title}\n\n{chunk.text}" if chunk.title else chunk.text


def tag_version(table, tag: str) -> int | None:
    try:
        return table.tags.get_version(tag)
    except Exception:  # LanceDB raises when the tag does not exist
        return None


def publications_of(table) -> list[tuple[int, int]]:
    """(sequence number, table version) of every publication still on record, oldest first."""
    tags = table.tags.list().items()
    return sorted((int(name[len(PUBLICATION_PREFIX) :]), tag["version"]) for name, tag in tags if name.startswith(PUBLICATION_PREFIX))


def sql_in(column: str, values: list[str]) -> str:
    quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


class IndexStore:
    """Writer and publication manager over one LanceDB location: a local folder (or a Modal
    Volume), or an object store URI (``storage.py``), with one writer at a time (``lease.py``)."""

    def __init__(self, db: str | Path | Location, storage_options: dict[str, str] | None = None, lease_ttl_s: float = 60.0):
        self.location = Location.of(db, storage_options)
        self.db = self.location.connect()
        self.lease_ttl_s = lease_ttl_s
        self.lease = None  # the writer's S3 lease while it holds one

    @classmethod
    def for_settings(cls, settings) -> IndexStore:
        return cls(settings.db, settings.db_storage_options, settings.db_lease_ttl_s)

    # --- reading publication state -------------------------------------------------------
    def table(self):
        return self.db.open_table(TABLE) if TABLE in self.db.list_tables().tables else None

    def published_version(self) -> int | None:
        t = self.table()
        return None if t is None else tag_version(t, PUBLISHED)

    def publications(self) -> list[tuple[int, int]]:
        t = self.table()
        return [] if t is None else publications_of(t)

    # --- writing ---------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """One writer at a time (LanceDB's own commit conflicts are the users' most common
        re-index failure); a second writer gets a clear error, not a conflict."""
        with single_writer(self.location, self.lease_ttl_s) as lease:
            self.lease = lease
            try:
                yield
            finally:
                self.lease = None

    def _start_from_published(self):
        """The table as last published: leftovers of a failed or killed run are discarded."""
        t = self.table()
        if t is None:
            return None
        published = tag_version(t, PUBLISHED)
        if published is None:  # never published: nothing anyone reads, start over
            self.db.drop_table(TABLE)
            return None
        if t.version != published:
            log.info("discarding unpublished versions %d..%d (a failed or rolled-back run)", published + 1, t.version)
            t.checkout(published)
            t.restore()
        return t

    def reindex(
        self,
        docs: list[Document],
        embedder: Embedder,
        chunking: ChunkingConfig = ChunkingConfig(),
        ann: AnnIndex | None = None,
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> ReindexSummary:
        """Bring the index to exactly ``docs``, embedding only what changed, then publish."""
        step = on_step or (lambda *_: None)
        if not docs:
            raise IndexStoreError("no documents to index: the source is empty; the published index is unchanged")
        t0 = time.perf_counter()
        summary = ReindexSummary()
        salt = chunking.salt(embedder.name)
        with self.writer_lock():
            table = self._start_from_published()
            existing = self._doc_hashes(table)
            wanted = {d.doc_id: (d, d.content_hash(salt)) for d in docs}
            stale = [doc_id for doc_id, h in existing.items() if wanted.get(doc_id, (None, None))[1] != h]
            fresh = [d for doc_id, (d, h) in wanted.items() if existing.get(doc_id) != h]
            summary.docs_removed = sum(1 for d in existing if d not in wanted)
            summary.docs_updated = len(stale) - summary.docs_removed
            summary.docs_added = len(fresh) - summary.docs_updated
            summary.docs_unchanged = len(wanted) - len(fresh)
            if table is not None and not stale and not fresh:
                summary.version = tag_version(table, PUBLISHED)
                summary.chunks_total = table.count_rows()
                summary.seconds = time.perf_counter() - t0
                return summary

            chunks = [c for d in fresh for c in chunk_document(d, chunking.max_words, chunking.overlap_words)]
            hashes = {doc_id: h for doc_id, (_, h) in wanted.items()}
            t_embed = time.perf_counter()
            vectors = self._embed(embedder, [search_text(c) for c in chunks], step)
            summary.embed_seconds = time.perf_counter() - t_embed

            if table is None:
                table = self.db.create_table(TABLE, schema=schema(embedder.dim))
            if stale:
                before = table.count_rows()
                for start in range(0, len(stale), 500):
                    table.delete(sql_in("doc_id", stale[start : start + 500]))
                summary.chunks_removed = before - table.count_rows()
            step("delete", 1, 1)
            for start in range(0, len(chunks), WRITE_BATCH):
                end = start + WRITE_BATCH
                table.add(self._rows(chunks[start:end], vectors[start:end], hashes, embedder.dim))
                step("write", min(end, len(chunks)), len(chunks))
            summary.chunks_added = len(chunks)
            self._update_indexes(table, ann or AnnIndex())
            step("index", 1, 1)
            summary.version = self._publish(table)
            summary.chunks_total = table.count_rows()
        summary.seconds = time.perf_counter() - t0
        return summary

    @staticmethod
    def _embed(embedder: Embedder, texts: list[str], step: Callable[[str, int, int], None]) -> np.ndarray:
        """Embedded in length order, as one sentence-transformers call would (less padding), but
        in slices so the progress bar moves; vectors come back in the original order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
        size = getattr(embedder, "slice_size", EMBED_SLICE)  # a fanned-out embedder wants larger slices
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            vectors[idx] = embedder.embed([texts[i] for i in idx])
            step("embed", min(start + size, len(texts)), len(texts))
        return vectors

    @staticmethod
    def _rows(chunks: list[Chunk], vectors: np.ndarray, hashes: dict[str, str], dim: int) -> pa.Table:
        columns = {
            "chunk_id": [c.chunk_id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "source": [c.source for c in chunks],
            "title": [c.title for c in chunks],
            "text": [c.text for c in chunks],
            "search_text": [search_text(c) for c in chunks],
            "doc_hash": [hashes[c.doc_id] for c in chunks],
            "metadata": [json.dumps(c.metadata, sort_keys=True) for c in chunks],
        }
        arrays = [pa.array(v, pa.string()) for v in columns.values()]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim))
        return pa.Table.from_arrays(arrays, schema=schema(dim))

    @staticmethod
    def _doc_hashes(table) -> dict[str, str]:
        if table is None:
            return {}
        data = table.to_arrow().select(["doc_id", "doc_hash"]).to_pylist() if table.count_rows() else []
        return {r["doc_id"]: r["doc_hash"] for r in data}

    @staticmethod
    def _update_indexes(table, ann: AnnIndex) -> None:
        """Full-text search covers new rows only after the index is rebuilt or optimized."""
        names = {idx.columns[0]: idx for idx in table.list_indices()}
        if "search_text" not in names:
            table.create_index("search_text", config=FTS(), replace=True)
        if "vector" not in names and table.count_rows() >= ann.min_rows:
            # Flat search is exact and fast below ~50k rows; above, an ANN index keeps p95 low.
            table.create_index(
                metric="cosine", vector_column_name="vector", index_type="IVF_SQ", num_partitions=ann.partitions(table.count_rows())
            )
        table.optimize()  # compacts, and folds rows added since into the existing indexes

    def _publish(self, table) -> int:
        if self.lease is not None:
            self.lease.check()  # a writer that lost its lease publishes nothing
        version = table.version
        pubs = publications_of(table)
        seq = (pubs[-1][0] + 1) if pubs else 1
        table.tags.create(f"{PUBLICATION_PREFIX}{seq:06d}", version)
        if tag_version(table, PUBLISHED) is None:
            table.tags.create(PUBLISHED, version)
        else:
            table.tags.update(PUBLISHED, version)  # the one step readers see
        log.info("published version %d (publication %d)", version, seq)
        return version

    def rollback(self) -> int:
        """Publish the previous publication again; the rolled-back one is forgotten."""
        with self.writer_lock():
            table = self.table()
            current = None if table is None else tag_version(table, PUBLISHED)
            pubs = [] if table is None else publications_of(table)
            earlier = [(seq, v) for seq, v in pubs if v != current]
            if current is None or not earlier:
                raise IndexStoreError("nothing to roll back to: there is no earlier published version")
            seq, version = earlier[-1]
            table.tags.update(PUBLISHED, version)
            for s, _ in pubs:
                if s > seq:
                    table.tags.delete(f"{PUBLICATION_PREFIX}{s:06d}")
            return version


class IndexReader:
    """Searches the published version and follows new publications without a restart."""

    def __init__(self, db: str | Path | Location, refresh_s: float = 1.0, storage_options: dict[str, str] | None = None):
        self.location = Location.of(db, storage_options)
        self.refresh_s = refresh_s
        self._db = None
        self._snapshot: tuple[object | None, int | None] = (None, None)
        # Never checked: the first snapshot reads storage whatever the clock says (monotonic time
        # counts from boot, so 0.0 would look recent on a machine up for less than refresh_s).
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def snapshot(self) -> tuple[object | None, int | None]:
        """(table checked out at the published version, that version), taken together so a
        search is never labelled with a version it did not read; (None, None) before any."""
        now = time.monotonic()
        if self.due(now):
            with self._lock:
                if now - self._checked >= self.refresh_s:
                    self._follow()
                    self._checked = now
        return self._snapshot

    def due(self, now: float | None = None) -> bool:
        """Whether the next snapshot checks storage for a new publication (once per refresh_s)."""
        return (time.monotonic() if now is None else now) - self._checked >= self.refresh_s

    def current(self):
        return self.snapshot()[0]

    def _follow(self) -> None:
        try:
            self._db = self._db or self.location.connect(create=False)
            if TABLE not in self._db.list_tables().tables:
                self._snapshot = (None, None)
                return
            table = self._db.open_table(TABLE)
            version = tag_version(table, PUBLISHED)
        except Exception as e:  # a missing folder means nothing published yet
            log.debug("no published index at %s: %s", self.location, e)
            self._snapshot = (None, None)
            return
        if version is None:
            self._snapshot = (None, None)
        elif version != self._snapshot[1]:
            table.checkout(version)
            self._snapshot = (table, version)  # swapped in one assignment: no mixed reads
            log.info("following published index version %d", version)
