"""`ragserve bench index` and `ragserve bench retrieve`: the retrieval side, against baselines
measured in the same run."""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from bentos.retrieval.documents import Document, chunk_document
from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import AnnIndex, ChunkingConfig, IndexStore, schema, search_text
from bentos.retrieval.search import SearchConfig, nearest
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

    ann = AnnIndex.from_settings(settings.retrieval)

    def reindex_twice(store: IndexStore) -> tuple[float, float]:
        """Seconds of a re-index from scratch, then of one with nothing changed."""
        full = store.reindex(docs, embedder, chunking, ann)
        same = store.reindex(docs, embedder, chunking, ann)
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


def synthetic_table(store: IndexStore, sentences: list[str], base_vectors: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` chunks made from real embedded sentences (embedding 1M real chunks would take
    hours here): each vector a random mix of two real ones plus a little noise, so the set keeps
    the shape of real embeddings (isotropic noise alone would make it uniformly hard for any ANN
    index); each text two of the sentences. Returns the vectors, for the exact search."""
    rng = np.random.default_rng(seed)
    dim = base_vectors.shape[1]
    table = store.db.create_table("chunks", schema=schema(dim), mode="overwrite")
    out = np.empty((rows, dim), dtype=np.float32)
    texts = np.array(sentences, dtype=object)
    for start in tqdm(range(0, rows, 50_000), desc=f"write {rows} rows", unit="batch", leave=False):
        n = min(50_000, rows - start)
        a, b = rng.integers(0, len(sentences), n), rng.integers(0, len(sentences), n)
        w = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
        vecs = w * base_vectors[a] + (1 - w) * base_vectors[b] + rng.normal(0, 0.01, (n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        out[start : start + n] = vecs
        ids = [f"c{i}" for i in range(start, start + n)]
        text = [f"{x} {y}" for x, y in zip(texts[a], texts[b])]
        columns = {
            "chunk_id": ids,
            "doc_id": ids,
            "source": [f"s{i % 997}" for i in range(start, start + n)],
            "title": [""] * n,
            "text": text,
            "search_text": text,
            "doc_hash": [""] * n,
            "metadata": ["{}"] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim),
        }
        table.add(pa.table(columns, schema=schema(dim)))
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """The true nearest ``k`` rows of each query by cosine (the vectors are unit length)."""
    tops = []
    for q in queries:
        scores = vectors @ q
        tops.append(set(np.argpartition(-scores, k)[:k].tolist()))
    return tops


def ann_grid(settings: Settings, nprobes: list[int] | None, refine: list[int] | None) -> list[SearchConfig]:
    """The query settings to measure: the configured ones, or each combination asked for."""
    cfg = SearchConfig.from_settings(settings.retrieval)
    return [replace(cfg, nprobes=p, refine_factor=r) for p in nprobes or [cfg.nprobes] for r in refine or [cfg.refine_factor]]


def vector_search_figures(table, queries: np.ndarray, truth: list[set[int]], cfg: SearchConfig, k: int = 10) -> dict:
    """Latency of the vector search alone and its recall@k against the exact search."""
    for q in queries[:20]:  # warm-up: index pages, caches
        nearest(table, q, k, cfg)
    times, recalls = [], []
    for q, true in zip(queries, truth):
        t = time.perf_counter()
        found = nearest(table, q, k, cfg).column("chunk_id").to_pylist()
        times.append((time.perf_counter() - t) * 1000)
        recalls.append(len(true & {int(c[1:]) for c in found}) / k)
    return {
        "nprobes": cfg.nprobes,
        "refine_factor": cfg.refine_factor,
        "vector_p50_ms": round(statistics.median(times), 2),
        "vector_p95_ms": round(percentile(times, 95), 2),
        f"recall@{k}": round(float(np.mean(recalls)), 4),
    }


def folder_mb(path: str) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1)


def bench_retrieve(
    settings: Settings, squad: Path, sizes: list[int], queries: int, nprobes: list[int] | None = None, refine: list[int] | None = None
) -> dict:
    """Per size: the index's build time, disk and memory; the vector search's latency and
    recall@10 against exact search for each ANN setting asked for; and /v1/retrieve over real
    HTTP (the gateway's FastAPI app under uvicorn on loopback) with the configured setting."""
    import psutil

    from bentos.chat.api import create_gateway_app
    from bentos.retrieval.retriever import Retriever

    evalset = load_squad(squad)
    sentences = sorted({s.strip() for d in evalset.docs for s in d.text.split(". ") if len(s.split()) > 5})
    embedder = embedder_for(settings.retrieval)
    base_vectors = embedder.embed(sentences)
    questions = [q for q, _ in evalset.queries][:queries]
    qvectors = embedder.embed(questions)
    process = psutil.Process()
    results = {}
    for rows in sizes:
        db = tempfile.mkdtemp(prefix=f"ragserve-bench-retrieve-{rows}-")
        t0 = time.perf_counter()
        store = IndexStore(db)
        vectors = synthetic_table(store, sentences, base_vectors, rows)
        write_s = time.perf_counter() - t0
        truth = exact_top(vectors, qvectors, 10)
        del vectors
        table = store.db.open_table("chunks")
        t0 = time.perf_counter()
        store._update_indexes(table, AnnIndex.from_settings(settings.retrieval))
        index_s = time.perf_counter() - t0
        store._publish(table)
        rss0 = process.memory_info().rss
        table = store.db.open_table("chunks")
        grid = [vector_search_figures(table, qvectors, truth, cfg) for cfg in ann_grid(settings, nprobes, refine)]
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
            "ann_index": rows >= settings.retrieval.ann_min_rows,
            "write_s": round(write_s, 1),
            "index_build_s": round(index_s, 1),
            "disk_mb": folder_mb(db),
            "search_memory_mb": round((process.memory_info().rss - rss0) / 2**20, 1),
            "vector_search": grid,
            "search_p50_ms": round(statistics.median(searches), 2),
            "search_p95_ms": round(percentile(searches, 95), 2),
            "embed_p50_ms": round(statistics.median(embeds), 2),
            "http_total_p50_ms": round(statistics.median(totals), 2),
            "http_total_p95_ms": round(percentile(totals, 95), 2),
        }
        shutil.rmtree(db, ignore_errors=True)
    return results


async def _streams(batcher, questions: list[str], n: int, rounds: int, rest_ms: float) -> list[float]:
    """``n`` streams of ``rounds`` queries each through ``batcher``: how long each query waited (ms)."""
    import asyncio
    import random

    waits: list[float] = []

    async def stream(i: int) -> None:
        rng = random.Random(i)
        for r in range(rounds):
            t = time.perf_counter()
            await batcher.submit(questions[(i * rounds + r) % len(questions)])
            waits.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep((rest_ms + rng.uniform(0, 10)) / 1000)

    await asyncio.gather(*(stream(i) for i in range(n)))
    return waits


def bench_embed(settings: Settings, squad: Path, streams: list[int], windows_ms: list[float], rounds: int, rest_ms: float) -> dict:
    """Query embedding under concurrent streams, per backend and batching window: each stream
    embeds a question, then spends ``rest_ms`` (plus up to 10 ms of jitter) on its answer before
    the next, as the gateway's streams do (vLLM decodes them in step, so they end together)."""
    import asyncio

    from bentos.retrieval.batching import Batcher
    from bentos.retrieval.embedder import Embedder

    evalset = load_squad(squad)
    questions = [q for q, _ in evalset.queries]
    paragraphs = [d.text for d in evalset.docs][:256]
    out: dict = {}
    for backend in ("torch", "onnx"):
        embedder = Embedder(settings.retrieval.embed_model, settings.retrieval.embed_threads, backend=backend)
        embedder.embed(questions[:64])  # warm-up
        alone = []
        for q in questions[:100]:
            t = time.perf_counter()
            embedder.embed([q])
            alone.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        embedder.embed(questions[:8])
        together = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        embedder.embed(paragraphs)  # what a re-index does: long texts in batches of 64
        ingest = len(paragraphs) / (time.perf_counter() - t)
        out[backend] = {
            "one_query_ms": round(statistics.median(alone), 2),
            "eight_in_one_batch_ms": round(together, 2),
            "ingest_paragraphs_per_s": round(ingest, 1),
        }
        for window in windows_ms:
            for n in streams:
                batcher = Batcher(embedder.embed, window_s=window / 1000)
                waits = asyncio.run(_streams(batcher, questions, n, rounds, rest_ms))
                out[backend][f"window {window:g} ms, {n} streams"] = {
                    "embed_mean_ms": round(statistics.fmean(waits), 2),
                    "embed_p95_ms": round(percentile(waits, 95), 2),
                    "queries_per_call": round(len(waits) / batcher.calls, 2),
                }
    return out
