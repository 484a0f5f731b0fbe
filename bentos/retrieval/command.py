"""`ragserve index`: the re-index command, here so that the release image (which leaves the rest
of the CLI out) runs it too, as `python -m bentos.retrieval` (KServe's re-index CronJob)."""

from __future__ import annotations

from pathlib import Path

import click

from bentos.settings import Settings


def load_settings(**overrides) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise click.UsageError(f"bad RAGSERVE_* setting:\n{e}") from None


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--db", help="The index: a folder or an object store URI such as s3://bucket/prefix (default RAGSERVE_DB, ./data/lancedb).")
@click.option("--rollback", is_flag=True, help="Publish the previous published version again instead of indexing.")
@click.option("--skip-unreadable", is_flag=True, help="Index what can be read and list the rest, instead of stopping.")
def index(path: Path | None, db: str | None, rollback: bool, skip_unreadable: bool) -> None:
    """Index PATH (a folder of Markdown, text, HTML, PDF and JSONL files, or one file) and publish it.

    Only documents whose content changed are embedded again; removed documents disappear. The new
    version is published in one step: running servers switch to it within RAGSERVE_INDEX_REFRESH_S,
    and a run that fails or is killed leaves the published version serving.
    """
    from bentos.retrieval.documents import SourceError
    from bentos.retrieval.index import IndexStore, IndexStoreError
    from bentos.retrieval.ingest import describe, progress_bars, reindex_source

    settings = load_settings(db=db).retrieval
    if rollback == (path is not None):
        raise click.UsageError("give either PATH to index or --rollback")
    try:
        if rollback:
            click.echo(f"published version {IndexStore.for_settings(settings).rollback()} again in {settings.db}")
            return
        with progress_bars() as on_step:
            summary, skipped = reindex_source(settings, path, skip_unreadable, on_step)
    except (SourceError, IndexStoreError) as e:
        raise click.ClickException(str(e)) from None
    for problem in skipped:
        click.echo(f"skipped: {problem}", err=True)
    click.echo(describe(summary, settings.db))
