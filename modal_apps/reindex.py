"""The scheduled re-index job: `modal deploy modal_apps/reindex.py`; now: `modal run modal_apps/reindex.py`.

It is the only writer of the index Volume. It reads the docs Volume (fill it with
`modal volume put ragserve-docs ./docs /`), runs the same ingestion as `ragserve index` (only
changed documents are embedded), publishes the new version in one step, then commits the
Volume; serving containers reload it and follow the published version. A run that fails
commits nothing new to readers: the published version keeps serving.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import modal

from bentos.retrieval.index import IndexStore
from bentos.retrieval.ingest import describe, progress_bars, reindex_source
from bentos.settings import Settings

from .config import load_settings
from .resources import (
    DOCS_DIR,
    INDEX_DIR,
    commit,
    cpu_image,
    gpu_image,
    index_env,
    reload,
    volume,
)

cfg, _ = load_settings()
app = modal.App(f"{cfg.app_name}-reindex")
index_volume = volume(cfg.index_volume)
docs_volume = volume(cfg.docs_volume)

REINDEX_OPTIONS = dict(
    image=gpu_image(cfg) if cfg.reindex_gpu else cpu_image(),
    gpu=cfg.reindex_gpu,
    schedule=modal.Cron(cfg.reindex_schedule),
    volumes={INDEX_DIR: index_volume, DOCS_DIR: docs_volume},
    env=index_env(),
    timeout=cfg.reindex_timeout,
    max_containers=1,  # the single writer: a manual run queues behind a scheduled one
    retries=0,  # a failed run leaves the published index serving; the next tick tries again
)


@app.function(**REINDEX_OPTIONS)
def reindex(source: str = "", rollback: bool = False) -> dict:
    """Re-index SOURCE (default RAGSERVE_MODAL_REINDEX_SOURCE) into RAGSERVE_DB and publish it;
    with ``rollback``, publish the previous publication again instead."""
    settings = Settings()
    if rollback:
        version = IndexStore(settings.db).rollback()
        commit(index_volume)
        print(f"published version {version} again in {settings.db}")
        return {"version": version, "db": settings.db, "rolled_back": True}
    reload(docs_volume)  # the documents as last uploaded
    with progress_bars() as on_step:
        summary, skipped = reindex_source(settings, Path(source or cfg.reindex_source), skip_unreadable=True, on_step=on_step)
    if summary.changed:
        commit(index_volume)  # the published tag moves for readers in this one commit
    print(describe(summary, settings.db))
    for problem in skipped:
        print(f"skipped: {problem}")
    return {**dataclasses.asdict(summary), "skipped": skipped, "db": settings.db}


@app.local_entrypoint()
def main(source: str = "", rollback: bool = False) -> None:
    """Run the deployed job now (queued behind a scheduled run), or this app's copy if not deployed."""
    try:
        fn = modal.Function.from_name(app.name, "reindex")
        fn.hydrate()
    except modal.exception.NotFoundError:
        fn = reindex
    print(fn.remote(source, rollback))
