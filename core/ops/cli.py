"""The operations commands: backup, restore, migrate, archive, fsck and upgrade.

    mltrail backup backup.mltrail --experiment digits
    mltrail restore backup.mltrail
    mltrail migrate --from local:///old.db --to mongodb://localhost:27017/mltrail
    mltrail archive --older-than 30d --status completed
    mltrail fsck --repair
    mltrail upgrade

Each command is a click command that the main `mltrail` group registers. They
take the store and the global options from the main group's state, the click
context object with `store()`, `quiet` and `output_format`. Run on their own,
they open the store that $MLTRAIL_STORE names, else the local default store.
Progress bars are drawn with rich on stderr when stdout is a terminal and
`--quiet` is not given. Reports go to stdout as text, or as JSON with the
global `--format json`.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, SpinnerColumn
from rich.progress import TaskID, TextColumn, TimeElapsedColumn

from mltrail.domain import RunStatus
from mltrail.errors import MltrailError
from mltrail.ops.records import Progress

DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days",
                  "w": "weeks"}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


class OpsCommandError(click.ClickException):
    """An operation that finished with problems left; printed as one `error:` line."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


# ----------------------------------------------------------------------
# shared plumbing
# ----------------------------------------------------------------------


class _Context:
    """The store and global options, from the main group's state or the environment."""

    def __init__(self, ctx: click.Context, quiet: bool) -> None:
        state = ctx.obj
        self._state = state if hasattr(state, "store") else None
        self._opened: list[Any] = []
        self.under_main_group = self._state is not None
        self.quiet = quiet or bool(getattr(state, "quiet", False))
        self.output_format = getattr(state, "output_format", "table")
        self.store_url = getattr(state, "store_url", None)

    def store(self) -> Any:
        if self._state is not None:
            return self._state.store()
        return self.open(None)

    def open(self, url: str | None) -> Any:
        """Open another store by URL (None: $MLTRAIL_STORE or the default store)."""
        from mltrail.api import connect

        store = connect(url)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()

    def emit(self, data: dict[str, Any], text: str) -> None:
        if self.quiet:
            return
        if self.output_format == "json":
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            click.echo(text)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """Yield a `progress(phase, done, total)` callback drawing rich bars, or None.

    Bars go to stderr, so stdout keeps only the report, and only when stdout
    is a terminal: piped or redirected output stays free of them.
    """
    console = Console(stderr=True)
    if not enabled or not sys.stdout.isatty() or not console.is_terminal:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with RichProgress(*columns, console=console, transient=True) as bars:
        tasks: dict[str, TaskID] = {}

        def report(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield report


def _run(ctx: click.Context, quiet: bool,
         action: Callable[[_Context, Progress | None], None]) -> None:
    context = _Context(ctx, quiet)
    try:
        with progress_bars(not context.quiet) as progress:
            action(context, progress)
    except MltrailError as error:
        if context.under_main_group:
            raise  # the main group prints it as one `error:` line
        raise OpsCommandError(" ".join(str(error).split())) from None
    finally:
        context.close()


def quiet_option(command: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print neither progress nor the report; errors are still "
                             "printed.")(command)


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as `30d`, `12h`, `90m`, `45s` or `2w`."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a duration; expected a whole number and a unit, such as "
            "30d, 12h, 90m, 45s or 2w")
    amount, unit = match.groups()
    return timedelta(**{DURATION_UNITS[unit]: int(amount)})


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


# ----------------------------------------------------------------------
# backup, restore, migrate
# ----------------------------------------------------------------------


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--filter", "filter_text", metavar="EXPR",
              help="Only runs matching this filter, with what they reference.")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME_OR_ID",
              help="Only runs of this experiment; repeat for several.")
@quiet_option
@click.pass_context
def backup_command(ctx: click.Context, path: Path, filter_text: str | None,
                   experiments: tuple[str, ...], quiet: bool) -> None:
    """Write the store, or the runs selected by --filter and --experiment, to PATH.

    PATH becomes a portable archive that `mltrail restore` reads into any
    backend. A partial backup leaves out the audit chain.
    """
    from mltrail.ops.backup import export_store

    def action(context: _Context, progress: Progress | None) -> None:
        report = export_store(context.store(), path, filter=filter_text,
                              experiments=experiments, progress=progress)
        counts = ", ".join(f"{count} {name}" for name, count in report.counts.items())
        scope = "whole store" if report.full else "partial backup"
        context.emit(report.as_dict(),
                     f"wrote {path} ({scope}, {_size(report.bytes)}): {counts}")

    _run(ctx, quiet, action)


@click.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@quiet_option
@click.pass_context
def restore_command(ctx: click.Context, path: Path, quiet: bool) -> None:
    """Restore the archive at PATH into the store; restoring twice adds nothing.

    The whole archive is checked before anything is written. Exits with 1 when
    stored records conflicted with the archive's.
    """
    from mltrail.ops.backup import import_archive

    def action(context: _Context, progress: Progress | None) -> None:
        report = import_archive(context.store(), path, progress=progress)
        context.emit(report.as_dict(), f"restored {path}:\n{report.render()}")
        if not report.ok:
            raise OpsCommandError(f"{len(report.conflicts)} records conflicted with "
                                  "stored ones and were not restored")

    _run(ctx, quiet, action)


@click.command("migrate")
@click.option("--from", "source_url", metavar="URL",
              help="Store to copy from. [default: the global --store]")
@click.option("--to", "target_url", metavar="URL", required=True,
              help="Store to copy into, of any backend.")
@quiet_option
@click.pass_context
def migrate_command(ctx: click.Context, source_url: str | None, target_url: str,
                    quiet: bool) -> None:
    """Copy everything from one store to another, with no file in between.

    Ids, timestamps, revisions, metric points, lineage, archives and the audit
    chain are kept; the audit chain is copied only into an empty target chain.
    Running it again adds nothing.
    """
    from mltrail.ops.backup import migrate

    def action(context: _Context, progress: Progress | None) -> None:
        source = context.open(source_url) if source_url else context.store()
        target = context.open(target_url)
        report = migrate(source, target, progress=progress)
        context.emit(report.as_dict(), f"migrated {source.url} to {target.url}:\n"
                                       f"{report.render()}")
        if not report.ok:
            raise OpsCommandError(f"{len(report.conflicts)} records conflicted with "
                                  "stored ones and were not copied")

    _run(ctx, quiet, action)


# ----------------------------------------------------------------------
# archive
# ----------------------------------------------------------------------


@click.command("archive")
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Runs that ended longer ago than this, e.g. 30d, 12h, 2w.")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]),
              help="Runs in this status.")
@click.option("--model-version", "model_version", metavar="NAME:N",
              help="The run that produced this model version (NAME:N or NAME:ALIAS).")
@click.option("--to", "destination", metavar="PATH",
              help="Directory for the archive files. [default: inside the store]")
@click.option("--compression", type=click.Choice(["lzma", "zlib"]), default="lzma",
              show_default=True, help="Compressor of the archived segments.")
@quiet_option
@click.pass_context
def archive_command(ctx: click.Context, older_than: str | None, status: str | None,
                    model_version: str | None, destination: str | None,
                    compression: str, quiet: bool) -> None:
    """Move the metric histories of old runs into compressed archive segments.

    Runs must match every option given. Reads merge the archived points back,
    so histories, latest values and searches return the same results as before.
    """
    from mltrail.ops.archive import archive_metrics

    if older_than is None and status is None and model_version is None:
        raise click.UsageError("give at least one of --older-than, --status or "
                               "--model-version")
    age = None if older_than is None else parse_duration(older_than)

    def action(context: _Context, progress: Progress | None) -> None:
        target = None if destination is None else f"dir:{Path(destination).resolve()}"
        report = archive_metrics(context.store(), older_than=age, status=status,
                                 model_version=model_version, destination=target,
                                 compression=compression, progress=progress)
        context.emit(report.as_dict(), _archive_text(report))

    _run(ctx, quiet, action)


def _archive_text(report: Any) -> str:
    summary = (f"archived {report.points} metric points of {report.runs_archived} of "
               f"{report.runs_selected} selected runs into {report.destination}")
    lines = [summary]
    if report.bytes_after:
        lines.append(f"  {_size(report.bytes_before)} as JSON -> "
                     f"{_size(report.bytes_after)} archived ({report.ratio:.1f}x, "
                     f"{_size(report.bytes_saved)} saved)")
    lines.extend(f"  skipped {run_id}: {reason}" for run_id, reason in report.skipped)
    return "\n".join(lines)


# ----------------------------------------------------------------------
# fsck and upgrade
# ----------------------------------------------------------------------


@click.command("fsck")
@click.option("--repair", is_flag=True,
              help="Fix what is safe to fix (lineage, orphaned metrics and archives).")
@quiet_option
@click.pass_context
def fsck_command(ctx: click.Context, repair: bool, quiet: bool) -> None:
    """Check references, lineage, metrics, archives and the audit chain.

    Exits with 1 while problems remain; with --repair, after fixing what it can.
    """
    from mltrail.ops.consistency import fsck

    def action(context: _Context, progress: Progress | None) -> None:
        report = fsck(context.store(), repair=repair, progress=progress)
        context.emit(report.as_dict(), _fsck_text(report))
        if not report.ok:
            hint = "" if repair else \
                "; `mltrail fsck --repair` fixes the repairable ones"
            raise OpsCommandError(f"{len(report.remaining)} problems remain{hint}")

    _run(ctx, quiet, action)


def _fsck_text(report: Any) -> str:
    checked = ", ".join(f"{count} {name}" for name, count in report.checked.items())
    lines = [f"checked {checked}"]
    for problem in report.problems:
        state = "repaired" if problem.repaired else \
            "repairable" if problem.repairable else "needs attention"
        lines.append(f"  {problem.check} ({state}): {problem.message}")
    lines.extend(f"  warning: {warning}" for warning in report.warnings)
    if not report.problems:
        lines.append("  no problems found")
    return "\n".join(lines)


@click.command("upgrade")
@quiet_option
@click.pass_context
def upgrade_command(ctx: click.Context, quiet: bool) -> None:
    """Rewrite records stored with an older schema version; safe to run again."""
    from mltrail.ops.schema import upgrade

    def action(context: _Context, progress: Progress | None) -> None:
        report = upgrade(context.store(), progress=progress)
        parts = ", ".join(f"{report.upgraded[kind]} of {count} {kind}"
                          for kind, count in report.checked.items())
        context.emit(report.as_dict(), f"upgraded to schema version "
                                       f"{report.schema_version}: {parts}")

    _run(ctx, quiet, action)


COMMANDS: dict[str, click.Command] = {
    "backup": backup_command,
    "restore": restore_command,
    "migrate": migrate_command,
    "archive": archive_command,
    "fsck": fsck_command,
    "upgrade": upgrade_command,
}
