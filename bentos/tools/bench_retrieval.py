"""`ragserve bench index` and `ragserve bench retrieve`: the retrieval side, against baselines
measured in the same run."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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


def bench_index(settings: Settings, squad: Path, copies: int, s3_uri: str | None = None) -> dict:
    docs = squad_corpus(squad, copies)
    chunking = ChunkingConfig.from_settings(settings.retrieval)
    embedder = embedder_for(settings.retrieval)
    texts = [search_text(c) for d in docs for c in chunk_document(d, chunking.max_words, chunking.overlap_words)]
    embedder.embed(texts[:64])  # warm-up, so neither side pays model start-up

    t0 = time.perf_counter()
    embedder.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    plain_s = time.perf_counter() - t0

    def reindex_twice(store: IndexStore) -> tuple[float, float]:
        """Seconds of a re-index from scratch, then of one with nothing changed."""
        full = store.reindex(docs, embedder, chunking, settings.retrieval.ann_min_rows)
        same = store.reindex(docs, embedder, chunking, settings.retrieval.ann_min_rows)
        if same.changed:
            raise RuntimeError(f"a re-index of unchanged documents changed the index at {store.location}")
        return full.seconds, same.seconds

    with tempfile.TemporaryDirectory(prefix="ragserve-bench-index-") as folder:
        full_s, same_s = reindex_twice(IndexStore(folder))
    with nullcontext((s3_uri, settings.retrieval.db_storage_options)) if s3_uri else loopback_s3() as (bucket, options):
        s3_full_s, s3_same_s = reindex_twice(IndexStore(f"{bucket.rstrip('/')}/bench-{uuid.uuid4().hex[:8]}", options))
    n = len(docs)
    return {
        "documents": n,
        "chunks": len(texts),
        "plain_encode_chunks_per_s": round(len(texts) / plain_s, 1),
        "ingest_chunks_per_s": round(len(texts) / full_s, 1),
        "ingest_vs_plain": round(plain_s / full_s, 3),
        "full_reindex_s": round(full_s, 3),
        "no_change_reindex_s": round(same_s, 4),
        "no_change_speedup": round(full_s / same_s, 1),
        "folder_docs_per_s": round(n / full_s, 1),
        "folder_no_change_docs_per_s": round(n / same_s, 1),
        "object_store_docs_per_s": round(n / s3_full_s, 1),
        "object_store_no_change_docs_per_s": round(n / s3_same_s, 1),
        "object_store_vs_folder": round(full_s / s3_full_s, 3),
        "object_store_vs_folder_no_change": round(same_s / s3_same_s, 3),
        "object_store": s3_uri or "moto's S3 server on loopback",
    }


@contextmanager
def loopback_s3(bucket: str = "bench") -> Iterator[tuple[str, dict[str, str]]]:
    """moto's S3 server on loopback with a fresh bucket: (the bucket's URI, LanceDB's options)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")  # moto takes any; the lease's boto3 client needs some
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}", {"endpoint": endpoint, "allow_http": "true", "region": "us-east-1"}
    finally:
        server.stop()


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
    embedder = embedder_for(settings.retrieval)
    base_vectors = embedder.embed(sentences)
    questions = [q for q, _ in evalset.queries][:queries]
    results = {}
    for rows in sizes:
        db = tempfile.mkdtemp(prefix=f"ragserve-bench-retrieve-{rows}-")
        t0 = time.perf_counter()
        synthetic_table(IndexStore(db), sentences, base_vectors, rows, settings.retrieval.ann_min_rows)
        build_s = time.perf_counter() - t0
        run = settings.with_retrieval(db=db)
        app = create_gateway_app(run)
        app.state.retriever = Retriever(run.retrieval)
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
