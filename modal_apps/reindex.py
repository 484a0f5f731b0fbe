"""The scheduled re-index job: `modal deploy modal_apps/reindex.py`; now: `modal run modal_apps/reindex.py`.

It is the only writer of the index Volume. It reads the docs Volume (fill it with
`modal volume put ragserve-docs ./docs /`), runs the same ingestion as `ragserve index` (only
changed documents are embedded), publishes the new version in one step, then commits the
Volume; serving containers reload it and follow the published version. A run that fails
commits nothing new to readers: the published version keeps serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import modal
import numpy as np

from bentos.retrieval.embedder import embedder_for
from bentos.retrieval.index import IndexStore
from bentos.retrieval.ingest import describe, progress_bars, reindex_source
from bentos.settings import Settings

from .config import load_settings
from .resources import (
    DOCS_DIR,
    commit,
    cpu_image,
    gpu_image,
    in_container,
    index_env,
    index_mounts,
    index_secrets,
    reload,
    volume,
)

cfg, _, deploy_env = load_settings()
app = modal.App(f"{cfg.app_name}-reindex")
index_volume = volume(cfg.index_volume)
docs_volume = volume(cfg.docs_volume)

EMBED_IMAGE = gpu_image(cfg) if cfg.reindex_gpu else cpu_image()
REINDEX_OPTIONS = dict(
    image=EMBED_IMAGE,
    gpu=cfg.reindex_gpu,
    schedule=modal.Cron(cfg.reindex_schedule),
    volumes={**index_mounts(cfg, index_volume), DOCS_DIR: docs_volume},
    secrets=index_secrets(cfg),
    env=index_env(cfg, deploy_env),
    timeout=cfg.reindex_timeout,
    max_containers=1,  # the single writer: a manual run queues behind a scheduled one
    retries=0,  # a failed run leaves the published index serving; the next tick tries again
)
# The fan-out's workers only embed: no Volume, no writes; the writer above commits what they return.
EMBED_OPTIONS = dict(
    image=EMBED_IMAGE,
    gpu=cfg.reindex_gpu,
    env=index_env(cfg, deploy_env),
    timeout=cfg.reindex_timeout,
    max_containers=cfg.reindex_shards,
    retries=1,  # a lost shard is embedded again; nothing was written yet
)


@app.function(**EMBED_OPTIONS)
def embed_shard(texts: list[str]) -> bytes:
    """One shard of the chunks to embed, as float32 bytes (row-major, the embedder's dimension)."""
    return embedder_for(Settings().retrieval).embed(texts).astype(np.float32).tobytes()


class ShardedEmbedder:
    """The writer's embedder, with each batch split into shards that ``map`` embeds elsewhere
    (``embed_shard.map`` over containers); vectors come back in order. Batches are made large
    enough to keep every shard container busy."""

    def __init__(self, local, shard_size: int, shards: int, map_fn: Callable[[list[list[str]]], Iterable[bytes]]):
        self.name, self.dim = local.name, local.dim
        self.shard_size, self.map_fn = shard_size, map_fn
        self.slice_size = shard_size * shards  # IndexStore embeds in slices of this many chunks
        self.shards_sent = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        shards = [texts[i : i + self.shard_size] for i in range(0, len(texts), self.shard_size)]
        self.shards_sent += len(shards)
        vectors = [np.frombuffer(b, dtype=np.float32).reshape(-1, self.dim) for b in self.map_fn(shards)]
        return np.concatenate(vectors) if vectors else np.empty((0, self.dim), np.float32)


def shard_map(shards: list[list[str]]) -> Iterable[bytes]:
    """Over containers when deployed; in this process in `.local()` runs (tests, `modal run` without a deployment)."""
    return embed_shard.map(shards) if in_container() else map(embed_shard.local, shards)


@app.function(**REINDEX_OPTIONS)
def reindex(source: str = "", rollback: bool = False) -> dict:
    """Re-index SOURCE (default RAGSERVE_MODAL_REINDEX_SOURCE) into RAGSERVE_DB and publish it;
    with ``rollback``, publish the previous publication again instead."""
    settings = Settings().retrieval
    if rollback:
        version = IndexStore.for_settings(settings).rollback()
        commit(index_volume)
        print(f"published version {version} again in {settings.db}")
        return {"version": version, "db": settings.db, "rolled_back": True}
    reload(docs_volume)  # the documents as last uploaded
    embedder = embedder_for(settings)
    if cfg.reindex_shards > 1:
        embedder = ShardedEmbedder(embedder, cfg.reindex_shard_size, cfg.reindex_shards, shard_map)
    with progress_bars() as on_step:
        summary, skipped = reindex_source(
            settings, Path(source or cfg.reindex_source), skip_unreadable=True, on_step=on_step, embedder=embedder
        )
    if summary.changed:
        commit(index_volume)  # the published tag moves for readers in this one commit
    print(describe(summary, settings.db))
    for problem in skipped:
        print(f"skipped: {problem}")
    shards = getattr(embedder, "shards_sent", 0)
    return {**dataclasses.asdict(summary), "skipped": skipped, "db": settings.db, "shards": shards}


@app.local_entrypoint()
def main(source: str = "", rollback: bool = False) -> None:
    """Run the deployed job now (queued behind a scheduled run), or this app's copy if not deployed."""
    try:
        fn = modal.Function.from_name(app.name, "reindex")
        fn.hydrate()
    except modal.exception.NotFoundError:
        fn = reindex
    print(fn.remote(source, rollback))
