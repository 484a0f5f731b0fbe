"""The index against real LanceDB and the real embedder: incremental, atomic, reversible."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bentos.retrieval.documents import (
    Document,
    SourceError,
    chunk_document,
    read_documents,
    split_words,
)
from bentos.retrieval.embedder import get_embedder
from bentos.retrieval.index import IndexReader, IndexStore, IndexStoreError
from bentos.retrieval.search import hybrid_search

CORPUS = Path(__file__).parent / "corpus"


class CountingEmbedder:
    """The real embedder, counting what it is asked to embed."""

    def __init__(self):
        self.inner = get_embedder()
        self.name, self.dim = self.inner.name, self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += texts
        return self.inner.embed(texts)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return Path(shutil.copytree(CORPUS, tmp_path / "docs"))


def search_ids(db: Path, query: str, k: int = 3) -> list[str]:
    reader = IndexReader(db, refresh_s=0)
    table = reader.current()
    return [h.doc_id for h in hybrid_search(table, get_embedder().embed([query])[0], query, k)]


def test_reads_every_format(corpus):
    docs, skipped = read_documents(corpus)
    by_id = {d.doc_id: d for d in docs}
    assert set(by_id) == {"geography.md", "handbook.md", "office.html", "faq-1", "faq-2"} and not skipped
    assert "Mochi" in by_id["office.html"].text and "ignored" not in by_id["office.html"].text
    assert by_id["faq-1"].source == "faq/support-hours" and by_id["faq-1"].metadata["title"] == "Support hours"


def test_chunks_follow_headings_and_overlap():
    chunks = chunk_document(Document("d", "d", "# A\n\nfirst.\n\n## B\n\nsecond.", "Doc"))
    assert [c.title for c in chunks] == ["Doc > A", "Doc > A > B"]
    long = " ".join(f"w{i}." for i in range(500))
    pieces = split_words(long, 200, 30)
    assert all(len(p.split()) <= 200 for p in pieces) and len(pieces) == 3
    assert pieces[1].split()[:30] == pieces[0].split()[-30:]  # overlap carries the cut context


def test_incremental_reindex_embeds_only_changes(corpus, tmp_path):
    store, emb = IndexStore(tmp_path / "db"), CountingEmbedder()
    first = store.reindex(read_documents(corpus)[0], emb)
    assert first.docs_added == 5 and first.chunks_total == len(emb.texts) > 0

    emb.texts.clear()
    again = store.reindex(read_documents(corpus)[0], emb)
    assert again.docs_unchanged == 5 and not again.changed and emb.texts == []
    assert again.version == first.version  # nothing changed: nothing published

    (corpus / "handbook.md").write_text("# Zorblax\n\nRefunds are possible within 60 days.\n")
    emb.texts.clear()
    third = store.reindex(read_documents(corpus)[0], emb)
    assert (third.docs_updated, third.docs_unchanged) == (1, 4)
    assert len(emb.texts) == 1 and "60 days" in emb.texts[0]
    assert third.version > first.version


def test_deleted_documents_disappear(corpus, tmp_path):
    db = tmp_path / "db"
    store = IndexStore(db)
    store.reindex(read_documents(corpus)[0], get_embedder())
    assert "office.html" in search_ids(db, "office cat Mochi")
    (corpus / "office.html").unlink()
    summary = store.reindex(read_documents(corpus)[0], get_embedder())
    assert summary.docs_removed == 1 and summary.chunks_removed >= 1
    assert "office.html" not in search_ids(db, "office cat Mochi", k=10)


def test_rollback_restores_previous_publication(corpus, tmp_path):
    db = tmp_path / "db"
    store = IndexStore(db)
    v1 = store.reindex(read_documents(corpus)[0], get_embedder()).version
    (corpus / "office.html").unlink()
    v2 = store.reindex(read_documents(corpus)[0], get_embedder()).version
    assert store.rollback() == v1 and store.published_version() == v1
    assert "office.html" in search_ids(db, "office cat Mochi")
    with pytest.raises(IndexStoreError, match="nothing to roll back"):
        store.rollback()
    # the next re-index starts from what is published, so it removes the cat page again
    v3 = store.reindex(read_documents(corpus)[0], get_embedder())
    assert v3.docs_removed == 1 and v3.version > v2


def test_reader_started_before_reindex_follows_new_publication(corpus, tmp_path):
    db = tmp_path / "db"
    store = IndexStore(db)
    store.reindex(read_documents(corpus)[0], get_embedder())
    reader = IndexReader(db, refresh_s=0)
    before = reader.current().count_rows()
    (corpus / "new.md").write_text("# Parking\n\nVisitors park in garage Q7 behind the Zorblax warehouse.\n")
    store.reindex(read_documents(corpus)[0], get_embedder())
    assert reader.current().count_rows() == before + 1
    hits = hybrid_search(reader.current(), get_embedder().embed(["where do visitors park"])[0], "where do visitors park", 1)
    assert hits[0].doc_id == "new.md"


def test_first_snapshot_reads_storage_whatever_the_clock_says(corpus, tmp_path):
    """As on a machine booted more recently than one refresh period: monotonic time counts from
    boot, so a reader must not take 'never checked' for 'checked at time zero'."""
    db = tmp_path / "db"
    published = IndexStore(db).reindex(read_documents(corpus)[0], get_embedder()).version
    reader = IndexReader(db, refresh_s=time.monotonic() + 3600)
    table, version = reader.snapshot()
    assert version == published and table.count_rows() > 0


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from bentos.retrieval.documents import read_documents
    from bentos.retrieval.embedder import get_embedder
    from bentos.retrieval.index import IndexStore

    def die(step, done, total):
        if step == sys.argv[3]:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as with the OOM killer or a power cut

    IndexStore(sys.argv[1]).reindex(read_documents(Path(sys.argv[2]))[0], get_embedder(), on_step=die)
""")


@pytest.mark.parametrize("step", ["delete", "write", "index"])
def test_reindex_killed_midway_leaves_published_version(corpus, tmp_path, step):
    db = tmp_path / "db"
    store = IndexStore(db)
    published = store.reindex(read_documents(corpus)[0], get_embedder()).version
    rows = IndexReader(db, refresh_s=0).current().count_rows()
    (corpus / "office.html").unlink()
    (corpus / "new.md").write_text("# Parking\n\nVisitors park in garage Q7.\n")
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(db), str(corpus), step], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert store.published_version() == published
    reader = IndexReader(db, refresh_s=0)
    assert reader.current().count_rows() == rows and "office.html" in search_ids(db, "office cat Mochi")
    assert "new.md" not in search_ids(db, "garage Q7 parking", k=10)
    # the next run discards the half-written versions and publishes cleanly
    summary = store.reindex(read_documents(corpus)[0], get_embedder())
    assert (summary.docs_added, summary.docs_removed) == (1, 1)
    assert "new.md" in search_ids(db, "garage Q7 parking")


def test_second_writer_gets_a_clear_error(corpus, tmp_path):
    store = IndexStore(tmp_path / "db")
    with store.writer_lock():
        with pytest.raises(IndexStoreError, match="another re-index holds"):
            IndexStore(tmp_path / "db").reindex(read_documents(corpus)[0], get_embedder())


def test_unreadable_sources_fail_before_touching_the_index(corpus, tmp_path):
    db = tmp_path / "db"
    store = IndexStore(db)
    published = store.reindex(read_documents(corpus)[0], get_embedder()).version
    (corpus / "broken.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    (corpus / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(SourceError) as e:
        read_documents(corpus)
    assert "broken.txt" in str(e.value) and "bad.jsonl:1" in str(e.value) and "--skip-unreadable" in str(e.value)
    docs, skipped = read_documents(corpus, skip_unreadable=True)
    assert len(skipped) == 2 and len(docs) == 5
    assert store.published_version() == published
    with pytest.raises(SourceError, match="no such file"):
        read_documents(tmp_path / "missing")
    with pytest.raises(IndexStoreError, match="empty"):
        store.reindex([], get_embedder())


def test_concurrent_queries_share_forward_passes():
    """Queries that arrive while the model is busy go together into the next pass; each gets
    its own vector, equal to embedding it alone."""
    import asyncio

    import numpy as np

    from bentos.retrieval.batching import Batcher

    class Batches(CountingEmbedder):
        def __init__(self):
            super().__init__()
            self.sizes: list[int] = []

        def embed(self, texts):
            self.sizes.append(len(texts))
            return super().embed(texts)

    queries = [f"where do visitors park on day {i}" for i in range(12)]
    alone = get_embedder().embed(queries)
    counting = Batches()

    async def run():
        batcher = Batcher(counting.embed)
        lone = await batcher.submit(queries[0])  # nobody else waiting: a pass of one, at once
        together = await asyncio.gather(*(batcher.submit(q) for q in queries))
        return lone, together

    lone, together = asyncio.run(run())
    assert counting.sizes[0] == 1 and np.allclose(lone, alone[0], atol=1e-5)
    assert len(counting.sizes) < 1 + len(queries), f"no batching: passes of {counting.sizes}"
    assert sum(counting.sizes) == 1 + len(queries)
    assert np.allclose(np.stack(together), alone, atol=1e-5)


def test_a_burst_waits_for_its_crowd_and_a_lone_stream_never_waits():
    """With a batching window, one stream's queries go at once; streams that end together (as
    vLLM's do) share one pass from their second burst on, released when all are in, not at the
    window's end. Every query still gets its own vector."""
    import asyncio
    import time

    import numpy as np

    from bentos.retrieval.batching import Batcher

    queries = [f"which gate opens at {i} o'clock" for i in range(15)]
    alone = get_embedder().embed(queries)
    sizes: list[int] = []

    def embed(texts):
        sizes.append(len(texts))
        return get_embedder().embed(texts)

    async def run():
        batcher = Batcher(embed, window_s=0.5)
        t = time.perf_counter()
        lone = [await batcher.submit(q) for q in queries[:3]]
        lone_s = time.perf_counter() - t

        async def arriving(i: int, q: str):
            await asyncio.sleep(0.001 * i)
            return await batcher.submit(q)

        first = await asyncio.gather(*(arriving(i, q) for i, q in enumerate(queries[3:9])))
        n_first = len(sizes)
        t = time.perf_counter()
        second = await asyncio.gather(*(arriving(i, q) for i, q in enumerate(queries[9:15])))
        return lone + first + second, lone_s, time.perf_counter() - t, n_first

    vectors, lone_s, burst_s, n_first = asyncio.run(run())
    assert sizes[:3] == [1, 1, 1] and lone_s < 0.25, f"a lone stream waited: {lone_s:.3f} s for 3 queries"
    assert sizes[n_first:] == [6], f"the second burst did not share one pass: {sizes}"
    assert burst_s < 0.4, f"the burst waited for the window's end ({burst_s:.3f} s)"
    assert np.allclose(np.stack(vectors), alone, atol=1e-5)


def test_a_failed_embedding_reaches_every_waiting_request():
    import asyncio

    from bentos.retrieval.batching import Batcher

    def broken(texts):
        raise RuntimeError("model gone")

    async def run():
        batcher = Batcher(broken)
        return await asyncio.gather(*(batcher.submit("q") for _ in range(3)), return_exceptions=True)

    assert [str(e) for e in asyncio.run(run())] == ["model gone"] * 3


def test_batched_vector_searches_equal_searching_one_by_one(tmp_path):
    """One LanceDB query for many vectors: each request gets exactly its own nearest chunks,
    also when the table holds more rows than a query's limit."""
    import asyncio

    from bentos.retrieval.retriever import Retriever
    from bentos.retrieval.search import SearchConfig, nearest, vector_searches
    from bentos.settings import RetrievalSettings

    docs = [
        Document(f"d{i}", f"d{i}", f"Note {i}: the {w} shelf holds item number {i * 7}.", f"Note {i}")
        for i, w in enumerate(["red", "blue", "green", "oak", "steel", "glass"] * 5)
    ]
    IndexStore(tmp_path / "db").reindex(docs, get_embedder())
    table = IndexReader(tmp_path / "db", refresh_s=0).current()
    queries = ["red shelf", "item number 35", "glass", "oak shelf holds", "steel note"]
    vectors = get_embedder().embed(queries)
    together = vector_searches([(table, v, 4) for v in vectors] + [(table, vectors[0], 2)], SearchConfig())
    for v, found in zip([*vectors, vectors[0]], together):
        alone = nearest(table, v, found.num_rows, SearchConfig())
        assert found.num_rows in (4, 2) and found.column("chunk_id").to_pylist() == alone.column("chunk_id").to_pylist()

    retriever = Retriever(RetrievalSettings(db=str(tmp_path / "db")))

    async def run():
        return await asyncio.gather(*(retriever.search(q, 3, v) for q, v in zip(queries, vectors)))

    for q, got in zip(queries, asyncio.run(run())):
        assert [h.chunk_id for h in got.hits] == [h.chunk_id for h in retriever.retrieve(q, 3).hits]


def test_past_ann_min_rows_the_vectors_get_an_ivf_sq_index_that_finds_the_exact_top(tmp_path):
    """The ANN index as configured (IVF_SQ, partitions by rows, probes and re-ranking by
    setting) is built once the table is big enough, and finds what exact search finds."""
    import numpy as np

    from bentos.retrieval.index import AnnIndex
    from bentos.retrieval.search import SearchConfig, nearest

    words = ["red", "blue", "green", "oak", "steel", "glass", "paper", "stone", "wool", "clay"]
    docs = [
        Document(f"d{i}", f"d{i}", f"Note {i}: the {words[i % 10]} shelf in room {i // 10} holds {words[i // 40]} item {i * 7}.", "")
        for i in range(400)
    ]
    IndexStore(tmp_path / "db").reindex(docs, get_embedder(), ann=AnnIndex(min_rows=300, rows_per_partition=100))
    table = IndexReader(tmp_path / "db", refresh_s=0).current()
    [vector_index] = [i for i in table.list_indices() if i.columns == ["vector"]]
    assert vector_index.index_type == "IvfSq", vector_index
    queries = get_embedder().embed(["red shelf in room 3", "glass item 70", "stone holds wool", "paper shelf room 9"])
    rows = table.to_arrow()
    ids, vectors = rows.column("chunk_id").to_pylist(), np.stack(rows.column("vector").to_numpy(zero_copy_only=False))
    for q in queries:
        exact = {ids[i] for i in np.argsort(-(vectors @ q))[:10]}
        found = set(nearest(table, q, 10, SearchConfig()).column("chunk_id").to_pylist())
        assert len(found & exact) >= 9, (found, exact)
