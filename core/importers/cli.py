"""The `mltrail import` and `mltrail export` commands.

    mltrail import mlflow ./mlruns --dry-run
    mltrail export --format mlflow ./exported-mlruns

Both run under the main `mltrail` group, which opens the store from `--store`
and passes its state as the click context object. Run on their own, they open
the store that $MLTRAIL_STORE names, else the local default store. Progress is
drawn with rich on stderr when stderr is a terminal. The summary goes to stdout
as text, or as JSON with the global `--format json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from mltrail.domain import DEFAULT_NAMESPACE
from mltrail.errors import MltrailError
from mltrail.importers import FORMATS, export_mlflow, import_path
from mltrail.importers.summary import ImportSummary, Progress, ProgressCallback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

EXPORT_FORMATS = ("mlflow",)


@contextmanager
def _progress_display(enabled: bool) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback drawing rich bars on stderr, or None when not shown."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with RichProgress(*columns, console=console, transient=True) as bars:
        tasks: dict[str, Any] = {}

        def report(progress: Progress) -> None:
            if progress.phase not in tasks:
                tasks[progress.phase] = bars.add_task(
                    progress.phase, total=progress.total
                )
            bars.update(
                tasks[progress.phase], completed=progress.done, total=progress.total
            )

        yield report


class _Context:
    """The store and global options, from the main group's state or the environment."""

    def __init__(self, ctx: click.Context, quiet: bool) -> None:
        state = ctx.obj
        self._state = state if hasattr(state, "store") else None
        self._own_store = None
        self.under_main_group = self._state is not None
        self.quiet = quiet or bool(getattr(state, "quiet", False))
        self.output_format = getattr(state, "output_format", "table")
        self.namespace = getattr(state, "namespace", None)

    def store(self) -> Any:
        if self._state is not None:
            return self._state.store()
        if self._own_store is None:
            from mltrail.api import connect

            self._own_store = connect()
        return self._own_store

    def close(self) -> None:
        if self._own_store is not None:
            self._own_store.close()

    def print_summary(self, summary: ImportSummary) -> None:
        if self.quiet:
            return
        if self.output_format == "json":
            click.echo(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
        else:
            click.echo(summary.render())


def _run(ctx: click.Context, quiet: bool, action: Any) -> None:
    context = _Context(ctx, quiet)
    try:
        with _progress_display(not context.quiet) as progress:
            summary = action(context, progress)
        context.print_summary(summary)
    except MltrailError as error:
        if context.under_main_group:
            raise  # the main group prints it as one `error:` line
        raise click.ClickException(" ".join(str(error).split())) from None
    finally:
        context.close()


@click.command("import")
@click.argument("source_format", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read the source and print what would be imported; write nothing.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print neither progress nor the summary; errors are still printed.",
)
@click.pass_context
def import_command(
    ctx: click.Context, source_format: str, path: Path, dry_run: bool, quiet: bool
) -> None:
    """Import FORMAT data under PATH: mlflow, sacred, lightning, dvc or openlineage.

    Importing again adds nothing: ids derive from the source's ids. Links that
    lead outside PATH are skipped and listed in the summary.
    """

    def action(context: _Context, progress: ProgressCallback | None) -> ImportSummary:
        return import_path(
            context.store(),
            source_format,
            path,
            dry_run=dry_run,
            progress=progress,
            namespace=context.namespace or DEFAULT_NAMESPACE,
        )

    _run(ctx, quiet, action)


@click.command("export")
@click.option(
    "--format",
    "target_format",
    type=click.Choice(EXPORT_FORMATS),
    required=True,
    help="Layout to write; mlflow writes an MLflow file store.",
)
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print neither progress nor the summary; errors are still printed.",
)
@click.pass_context
def export_command(
    ctx: click.Context, target_format: str, path: Path, quiet: bool
) -> None:
    """Write the store's experiments, runs and models under PATH, a new or empty folder.

    Open the result with MLflow, e.g. `mlflow ui --backend-store-uri PATH`;
    recent MLflow 3 releases open file stores only with MLFLOW_ALLOW_FILE_STORE=true.
    """

    def action(context: _Context, progress: ProgressCallback | None) -> ImportSummary:
        return export_mlflow(
            context.store(), path, progress=progress, namespace=context.namespace
        )

    _run(ctx, quiet, action)
