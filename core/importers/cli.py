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
@click.argument("arguments", metavar="[FORMAT] PATH", nargs=-1, required=True)
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
    ctx: click.Context, arguments: tuple[str, ...], dry_run: bool, quiet: bool
) -> None:
    """Import PATH: an mltrail archive, or FORMAT data (mlflow, sacred, lightning,
    dvc or openlineage).

    With one argument, PATH is an archive written by `mltrail export` and is
    restored as it is, ids and audit chain included. Importing again adds
    nothing: ids derive from the source's ids. Links that lead outside PATH
    are skipped and listed in the summary.
    """
    source_format, path = _format_and_path(arguments)
    if source_format == "archive":
        if dry_run:
            raise click.UsageError("--dry-run is not available for archives; "
                                   "`mltrail import` of an archive checks every "
                                   "checksum before it writes anything")
        from mltrail.ops.cli import restore_command

        ctx.invoke(restore_command, path=path, quiet=quiet)
        return

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


def _format_and_path(arguments: tuple[str, ...]) -> tuple[str, Path]:
    if len(arguments) == 1:
        source_format, text = "archive", arguments[0]
    elif len(arguments) == 2:
        source_format, text = arguments
    else:
        raise click.UsageError(f"expected [FORMAT] PATH, got {len(arguments)} arguments")
    known = ("archive", *FORMATS)
    if source_format not in known:
        raise click.UsageError(f"unknown import format {source_format!r}; expected one "
                               f"of {', '.join(known)}")
    path = Path(text)
    if not path.exists():
        raise click.UsageError(f"path {text!r} does not exist")
    return source_format, path


@click.command("export")
@click.option(
    "--format",
    "target_format",
    type=click.Choice(("archive", *EXPORT_FORMATS)),
    default="archive",
    show_default=True,
    help="archive writes a portable mltrail archive file; mlflow writes an MLflow "
    "file store folder.",
)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--filter", "filter_text", metavar="EXPR",
              help="Archive only the runs matching this filter, with what they need.")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME_OR_ID",
              help="Archive only these experiments; repeat for several.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print neither progress nor the summary; errors are still printed.",
)
@click.pass_context
def export_command(
    ctx: click.Context, target_format: str, path: Path, filter_text: str | None,
    experiments: tuple[str, ...], quiet: bool
) -> None:
    """Write the store to PATH as an mltrail archive, or as an MLflow file store.

    An archive has a manifest with SHA-256 checksums and restores into any
    backend with `mltrail import PATH`. For MLflow, open the result with e.g.
    `mlflow ui --backend-store-uri PATH`; recent MLflow 3 releases open file
    stores only with MLFLOW_ALLOW_FILE_STORE=true.
    """
    if target_format == "archive":
        from mltrail.ops.cli import backup_command

        ctx.invoke(backup_command, path=path, filter_text=filter_text,
                   experiments=experiments, quiet=quiet)
        return
    if filter_text or experiments:
        raise click.UsageError("--filter and --experiment apply to --format archive only")

    def action(context: _Context, progress: ProgressCallback | None) -> ImportSummary:
        return export_mlflow(
            context.store(), path, progress=progress, namespace=context.namespace
        )

    _run(ctx, quiet, action)
