"""`ragserve bench index` and `ragserve bench retrieve`: the retrieval side, against baselines
measured in the same run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from bentos.retrieval.documents import Document, chunk_document
from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import ChunkingConfig, IndexStore, schema, search_text
from bentos.settings import Settings
from bentos.tools.evaluation import load_squad
from bentos.tools.launch import serving
from bentos.tools.loadgen import percentile


def squad_corpus(squad: Path, copies: int) -> list[Document]:
    """Real paragraphs, each copy made distinct so nothing is deduplicated or cached."""
    docs = load_squad(squad).docs
    return [Document(doc_id=f"{d.doc_id}-{c}", source=d.source, text=f"{d.text} (copy {c})") for c in range(copies) for d in docs]


def bench_index(settings: Settings, squad: Path, copies: int) -> dict:
    docs = squad_corpus(squad, copies)
    chunking = ChunkingConfig.from_settings(settings)
    embedder = embedder_for(settings)
    texts = [search_text(c) for d in docs for c in chunk_document(d, chunking.max_words, chunking.overlap_words)]
    embedder.embed(texts[:64])  # warm-up, so neither side pays model start-up

    t0 = time.perf_counter()
    embedder.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    plain_s = time.perf_counter() - t0

    store = IndexStore(tempfile.mkdtemp(prefix="ragserve-bench-index-"))
    full = store.reindex(docs, embedder, chunking, settings.ann_min_rows)
    same = store.reindex(docs, embedder, chunking, settings.ann_min_rows)
    return {
        "documents": len(docs),
        "chunks": len(texts),
        "plain_encode_chunks_per_s": round(len(texts) / plain_s, 1),
        "ingest_chunks_per_s": round(len(texts) / full.seconds, 1),
        "ingest_vs_plain": round(plain_s / full.seconds, 3),
        "full_reindex_s": round(full.seconds, 3),
        "no_change_reindex_s": round(same.seconds, 4),
        "no_change_speedup": round(full.seconds / same.seconds, 1),
    }


def synthetic_table(
    store: IndexStore, base_texts: list[str], base_vectors: np.ndarray, rows: int, ann_min_rows: int, seed: int = 0
) -> None:
    """``rows`` chunks made from real embedded texts plus small noise (embedding 100k real chunks
    would take an hour here); text and vectors stay realistic enough for search latency."""
    rng = np.random.default_rng(seed)
    dim = base_vectors.shape[1]
    table = store.db.create_table("chunks", schema=schema(dim), mode="overwrite")
    for start in tqdm(range(0, rows, 10_000), desc=f"build {rows} rows", unit="batch", leave=False):
        n = min(10_000, rows - start)
        idx = rng.integers(0, len(base_texts), n)
        vecs = base_vectors[idx] + rng.normal(0, 0.04, (n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        batch = [
            {
                "chunk_id": f"c{start + i}",
                "doc_id": f"d{start + i}",
                "source": f"s{(start + i) % 997}",
                "title": "",
                "text": base_texts[j],
                "search_text": f"{base_texts[j]} r{start + i}",
                "doc_hash": "",
                "metadata": "{}",
                "vector": vecs[i].tolist(),
            }
            for i, j in enumerate(idx)
        ]
        table.add(pa.Table.from_pylist(batch, schema=schema(dim)))
    store._update_indexes(table, ann_min_rows)
    store._publish(table)


def bench_retrieve(settings: Settings, squad: Path, sizes: list[int], queries: int) -> dict:
    """/v1/retrieve over real HTTP (the gateway's FastAPI app under uvicorn on loopback)."""
    from bentos.chat.api import create_gateway_app
    from bentos.retrieval.retriever import Retriever

    evalset = load_squad(squad)
    sentences = [s.strip() for d in evalset.docs for s in d.text.split(". ") if len(s.split()) > 5]
    embedder = embedder_for(settings)
    base_vectors = embedder.embed(sentences)
    questions = [q for q, _ in evalset.queries][:queries]
    results = {}
    for rows in sizes:
        db = tempfile.mkdtemp(prefix=f"ragserve-bench-retrieve-{rows}-")
        t0 = time.perf_counter()
        synthetic_table(IndexStore(db), sentences, base_vectors, rows, settings.ann_min_rows)
        build_s = time.perf_counter() - t0
        run = settings.model_copy(update={"db": db})
        app = create_gateway_app(run)
        app.state.retriever = Retriever(run)
        totals, searches, embeds = [], [], []
        with serving(app, "/v1") as url, httpx.Client(base_url=url) as client:
            for q in questions[:20]:  # warm-up: caches, index pages
                client.post("/v1/retrieve", json={"query": q, "k": 10})
            for q in tqdm(questions, desc=f"{rows} rows", unit="q", leave=False):
                t = time.perf_counter()
                r = client.post("/v1/retrieve", json={"query": q, "k": 10})
                totals.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                searches.append(r.json()["timing_ms"]["search"])
                embeds.append(r.json()["timing_ms"]["embed"])
        results[rows] = {
            "build_s": round(build_s, 1),
            "search_p50_ms": round(statistics.median(searches), 2),
            "search_p95_ms": round(percentile(searches, 95), 2),
            "http_minus_embed_p50_ms": round(statistics.median(np.subtract(totals, embeds)), 2),
            "http_minus_embed_p95_ms": round(percentile(list(np.subtract(totals, embeds)), 95), 2),
            "embed_p50_ms": round(statistics.median(embeds), 2),
            "embed_p95_ms": round(percentile(embeds, 95), 2),
            "http_total_p50_ms": round(statistics.median(totals), 2),
            "http_total_p95_ms": round(percentile(totals, 95), 2),
        }
    return results
