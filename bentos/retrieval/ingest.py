"""One re-index run over a source folder: what `ragserve index` and the scheduled Modal job both do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bentos.retrieval.documents import read_documents
from bentos.retrieval.embedder import Embedder, embedder_for
from bentos.retrieval.index import AnnIndex, ChunkingConfig, IndexStore, ReindexSummary
from bentos.settings import RetrievalSettings

Step = Callable[[str, int, int], None]


@contextmanager
def progress_bars() -> Iterator[Step]:
    """A tqdm bar per re-index step (embed, write...), closed when the run ends."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def on_step(step: str, done: int, total: int) -> None:
        bar = bars.get(step) or bars.setdefault(
            step, tqdm(total=total, desc=step, unit="chunk" if step in ("embed", "write") else "step", leave=False)
        )
        bar.n = done
        bar.refresh()

    try:
        yield on_step
    finally:
        for bar in bars.values():
            bar.close()


def reindex_source(
    settings: RetrievalSettings, source: Path, skip_unreadable: bool = False, on_step: Step | None = None, embedder: Embedder | None = None
) -> tuple[ReindexSummary, list[str]]:
    """Bring the index in ``settings.db`` to exactly the documents under ``source`` and publish it.
    Raises SourceError or IndexStoreError with a message naming the fix; the published version
    keeps serving whenever this raises."""
    docs, skipped = read_documents(source, skip_unreadable)
    store = IndexStore.for_settings(settings)
    embedder = embedder or embedder_for(settings)
    summary = store.reindex(docs, embedder, ChunkingConfig.from_settings(settings), AnnIndex.from_settings(settings), on_step)
    return summary, skipped


def describe(summary: ReindexSummary, db: str) -> str:
    return (
        f"documents: {summary.docs_added} added, {summary.docs_updated} updated, {summary.docs_removed} removed, "
        f"{summary.docs_unchanged} unchanged\n"
        f"chunks: {summary.chunks_added} added, {summary.chunks_removed} removed, {summary.chunks_total} in the index\n"
        f"published version {summary.version} in {db} ({summary.seconds:.1f} s, embedding {summary.embed_seconds:.1f} s)"
    )
