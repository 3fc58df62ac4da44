"""The `mltrail` command line: list, search, compare and trace recorded training.

Every command works on the store named by `--store` (else $MLTRAIL_STORE, else
the local store in the user's data directory). Commands that print data take
`--format`, either after the command or globally before it:

- `table` (default): aligned text for people. Floats are rounded to 6
  significant digits and times are shown in UTC, to the second.
- `json`: one JSON array (listings) or object (show commands) on stdout. Times
  are ISO 8601 UTC strings such as `2024-05-01T12:00:00.000000Z`. JSON has no
  NaN or infinity, so non-finite floats are written as the strings "NaN",
  "Infinity" and "-Infinity". Finite floats keep every digit.
- `csv`: a header and one row per item, with nested fields flattened into
  dotted columns such as `params.optimizer.lr`. Lists are written as JSON
  text, empty dicts add no column, and a show command writes a single row.

stdout carries only data and confirmations. Hints such as the next page token go
to stderr. An expected error (not found, invalid input, conflict, unreachable
store) prints one line `error: <message>` on stderr and exits with 1, and a usage
error does the same with exit code 2.

Commands that live in their own modules are registered in `LAZY_COMMANDS` and
imported only when they are used.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import logging
import math
import sys
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Iterable, Mapping, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mltrail import __version__, codec, limits
from mltrail.api import connect
from mltrail.audit import describe as describe_audit_event
from mltrail.clock import isoformat
from mltrail.domain import (
    DEFAULT_NAMESPACE, Dataset, EdgeType, Experiment, LineageEdge, MetricPoint, Model,
    ModelVersion, Run, RunStatus,
)
from mltrail.errors import MltrailError, NotFoundError, QuerySyntaxError
from mltrail.lineage import LineageGraph
from mltrail.query.ast import And, Expr, In
from mltrail.query.parser import parse_optional
from mltrail.registry import STORE_ENV
from mltrail.store import Store

FORMATS = ("table", "json", "csv")

# Commands defined in their own modules: command name -> "module:attribute" of a
# click command. They are imported only when invoked or listed by --help, so a
# heavy or optional dependency never slows down or breaks the other commands.
# Add `conformance`, `export`, `import`, `archive` and `fsck` here as their
# modules are written.
LAZY_COMMANDS: dict[str, str] = {
    "conformance": "mltrail.conformance.cli:conformance_command",
    "archive": "mltrail.ops.cli:archive_command",
    "backup": "mltrail.ops.cli:backup_command",
    "catalog": "mltrail.discovery.cli:catalog_command",
    "compare-params": "mltrail.discovery.cli:compare_params_command",
    "facets": "mltrail.discovery.cli:facets_command",
    "stats": "mltrail.discovery.cli:stats_command",
    "export": "mltrail.importers.cli:export_command",
    "fsck": "mltrail.ops.cli:fsck_command",
    "import": "mltrail.importers.cli:import_command",
    "migrate": "mltrail.ops.cli:migrate_command",
    "restore": "mltrail.ops.cli:restore_command",
    "upgrade": "mltrail.ops.cli:upgrade_command",
}

# Width of table output when stdout is not a terminal (a pipe or a file), so
# that piped tables are not cut to 80 columns. Terminals use their own width.
PIPE_WIDTH = 200

# Latest metrics shown in the METRICS cell of `runs list`. The rest are counted.
METRICS_IN_CELL = 4


# ----------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------


class CliError(click.ClickException):
    """An expected failure, printed as one `error: ...` line with exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


class CliUsageError(click.UsageError):
    """A usage mistake, printed as one `error: ...` line with exit code 2."""

    def show(self, file: Any = None) -> None:
        hint = ""
        if self.ctx is not None:
            hint = f" (see '{self.ctx.command_path} --help')"
        click.echo(f"error: {self.format_message()}{hint}", file=file, err=True)


def error_message(error: MltrailError) -> str:
    """Return an mltrail error's message on one line."""
    if isinstance(error, QuerySyntaxError):
        first_line = str(error).splitlines()[0]
        return f"invalid filter {error.text!r}: {first_line}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _one_line_usage_error(error: click.UsageError) -> CliUsageError:
    converted = CliUsageError(error.format_message(), ctx=error.ctx)
    converted.exit_code = error.exit_code
    return converted


class MltrailGroup(click.Group):
    """The root group: turns expected errors into one-line messages and loads
    the commands of `LAZY_COMMANDS` on demand."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise _one_line_usage_error(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, CliUsageError):
            raise
        except click.UsageError as error:
            raise _one_line_usage_error(error) from None
        except MltrailError as error:
            raise CliError(error_message(error)) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in LAZY_COMMANDS:
            return command
        return load_lazy_command(name, LAZY_COMMANDS[name])


class LazyGroup(click.Group):
    """A command group some of whose commands live in other modules.

    `lazy_commands` maps a command name to "module:attribute"; the module is
    imported only when that command is used.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in self.lazy_commands:
            return command
        return load_lazy_command(name, self.lazy_commands[name])


def load_lazy_command(name: str, target: str) -> click.Command:
    """Import the click command registered as `name` at "module:attribute"."""
    module_name, _, attribute = target.partition(":")
    try:
        command = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise CliError(f"command {name!r} could not be loaded from {target!r}: "
                       f"{error}; reinstall mltrail with the extras that command "
                       "needs") from None
    if not isinstance(command, click.Command):
        raise CliError(f"command {name!r} at {target!r} is a {type(command).__name__}, "
                       "not a click command")
    return command


# ----------------------------------------------------------------------
# state shared by all commands
# ----------------------------------------------------------------------


@dataclass
class CliState:
    """Global options and the store, opened on first use and closed on exit."""

    store_url: str | None
    output_format: str
    quiet: bool
    namespace: str | None
    _store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            self._store = connect(self.store_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def lookup_namespace(self) -> str:
        """The namespace in which names of experiments, models and datasets resolve."""
        return self.namespace or DEFAULT_NAMESPACE

    def format_for(self, command_format: str | None) -> str:
        return command_format or self.output_format

    def confirm(self, message: str) -> None:
        """Print a confirmation on stdout unless --quiet."""
        if not self.quiet:
            click.echo(message)

    def note(self, message: str) -> None:
        """Print a hint on stderr unless --quiet, so stdout keeps only data."""
        if not self.quiet:
            click.echo(message, err=True)


def format_option(command: Callable) -> Callable:
    return click.option(
        "--format", "output_format", type=click.Choice(FORMATS), default=None,
        help="Output format of this command: table, json or csv. "
             "[default: the global --format]",
    )(command)


def experiment_option(command: Callable) -> Callable:
    return click.option(
        "--experiment", "experiments", multiple=True, metavar="NAME_OR_ID",
        help="Only runs of this experiment (name or id); repeat for several.",
    )(command)


def filter_option(command: Callable) -> Callable:
    return click.option(
        "--filter", "filter_text", metavar="EXPR",
        help="Filter expression, e.g. \"params.optimizer.lr < 0.01 and "
             "tags.team = 'vision'\".",
    )(command)


def parse_tag(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise click.BadParameter(f"tag {text!r} is invalid; expected KEY=VALUE, "
                                 "e.g. --tag team=vision", param_hint="'--tag'")
    return key, value


# ----------------------------------------------------------------------
# value conversion for json, csv and tables
# ----------------------------------------------------------------------


def non_finite_name(value: float) -> str | None:
    """Return "NaN", "Infinity" or "-Infinity" for a non-finite float, else None."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return None


def to_json_value(value: Any) -> Any:
    """Convert a value into what `json.dumps(..., allow_nan=False)` accepts.

    Datetimes become ISO 8601 UTC strings, enums their value, dataclasses dicts
    of their fields, and non-finite floats the strings named by `non_finite_name`.
    """
    if isinstance(value, float):
        name = non_finite_name(value)
        return value if name is None else name
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value(dataclass_record(value))
    return str(value)


def dataclass_record(value: Any) -> dict[str, Any]:
    """Return a dataclass's fields as a dict, without copying nested values."""
    return {item.name: getattr(value, item.name) for item in dataclasses.fields(value)}


def dump_json(data: Any) -> str:
    return json.dumps(to_json_value(data), indent=2, ensure_ascii=False,
                      allow_nan=False)


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return non_finite_name(value) or repr(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(to_json_value(value), ensure_ascii=False, allow_nan=False)
    return str(value)


def flatten_row(row: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested dicts into dotted columns (dots inside keys become %2E).

    An empty dict adds no column, so `tags` with no tags does not sit beside
    `tags.team` from another row.
    """
    return {codec.join_path(path): csv_cell(value)
            for path, value in codec.flatten(dict(row)) if value != {}}


def write_csv(rows: Sequence[Mapping[str, Any]]) -> None:
    flat_rows = [flatten_row(row) for row in rows]
    columns: dict[str, None] = {}
    for row in flat_rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_rows)
    click.echo(buffer.getvalue(), nl=False)


def display(value: Any) -> str:
    """Return the text of a table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return non_finite_name(value) or f"{value:.6g}"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={display_scalar(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(display_scalar(item) for item in value)
    return str(value)


def display_scalar(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(to_json_value(value), ensure_ascii=False)
    return display(value)


def format_duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s"


def format_interval(low: float | None, high: float | None, level: float | None) -> str:
    if low is None or high is None:
        return ""
    label = f" ({level:.0%})" if level is not None else ""
    return f"[{display(low)}, {display(high)}]{label}"


# ----------------------------------------------------------------------
# output
# ----------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to get the cell text from a row."""

    header: str
    key: str | None = None
    text: Callable[[Mapping[str, Any]], str] | None = None
    no_wrap: bool = False

    def cell(self, row: Mapping[str, Any]) -> str:
        if self.text is not None:
            return self.text(row)
        return display(row.get(self.key or self.header.lower()))


def make_console() -> Console:
    stdout = sys.stdout
    is_terminal = hasattr(stdout, "isatty") and stdout.isatty()
    return Console(file=stdout, width=None if is_terminal else PIPE_WIDTH, markup=False,
                   highlight=False, emoji=False, soft_wrap=False)


def make_table(columns: Sequence[Column], title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title=title,
                  title_justify="left", title_style="bold", header_style="bold")
    for column in columns:
        table.add_column(column.header, overflow="fold", no_wrap=column.no_wrap)
    return table


def emit_rows(rows: Sequence[Mapping[str, Any]], output_format: str,
              columns: Sequence[Column], title: str | None = None) -> None:
    """Print a listing as a table, a JSON array or CSV rows."""
    if output_format == "json":
        click.echo(dump_json(list(rows)))
        return
    if output_format == "csv":
        write_csv(rows)
        return
    table = make_table(columns, title)
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
    make_console().print(table)


def emit_object(record: Mapping[str, Any], output_format: str,
                render: Callable[[Console], None]) -> None:
    """Print one object as JSON, as a single CSV row, or through `render`."""
    if output_format == "json":
        click.echo(dump_json(record))
    elif output_format == "csv":
        write_csv([record])
    else:
        render(make_console())


def emit_change(state: CliState, output_format: str | None, record: Mapping[str, Any],
                message: str) -> None:
    """Print the changed entity as json or csv, else a confirmation unless --quiet."""
    chosen = state.format_for(output_format)
    if chosen == "table":
        state.confirm(message)
    else:
        emit_object(record, chosen, lambda console: None)


def print_pairs(console: Console, title: str, pairs: Iterable[tuple[str, Any]]) -> None:
    """Print a bold title line and a two-column table of field names and values."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in pairs:
        table.add_row(key, display(value))
    console.print(Text(title, style="bold"))
    console.print(table)


def print_section(console: Console, title: str,
                  pairs: Sequence[tuple[str, Any]]) -> None:
    """Print a titled section after a blank line, or nothing when it has no pairs."""
    if not pairs:
        return
    console.print()
    print_pairs(console, title, pairs)


def flat_pairs(value: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(codec.join_path(path), item) for path, item in codec.flatten(dict(value))]


# ----------------------------------------------------------------------
# records: what json and csv print for each entity
# ----------------------------------------------------------------------


def entity_record(entity: Any) -> dict[str, Any]:
    record = dataclass_record(entity)
    record.pop("revision", None)
    return record


def point_record(point: MetricPoint) -> dict[str, Any]:
    record = {"key": point.key, "value": point.value, "step": point.step,
              "timestamp": point.timestamp}
    for name in MetricPoint.optional_fields:
        record[name] = getattr(point, name)
    return record


def run_record(run: Run, latest: Mapping[str, MetricPoint]) -> dict[str, Any]:
    """Return the run fields that listings print, with each metric's latest value."""
    return {
        "id": run.id,
        "name": run.name,
        "experiment_id": run.experiment_id,
        "status": run.status,
        "params": run.params,
        "tags": run.tags,
        "created_at": run.created_at,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "parent_run_id": run.parent_run_id,
        "deleted_at": run.deleted_at,
        "metrics": {key: latest[key].value for key in sorted(latest)},
    }


def model_record(store: Store, model: Model) -> dict[str, Any]:
    versions = store.list_model_versions(model.id, include_deleted=True)
    record = entity_record(model)
    live = [v.version for v in versions if v.deleted_at is None]
    record["version_count"] = len(live)
    record["latest_version"] = max(live, default=None)
    return record


def version_record(version: ModelVersion, model: Model) -> dict[str, Any]:
    record = entity_record(version)
    record["model_name"] = model.name
    record["aliases"] = sorted(alias for alias, number in model.aliases.items()
                               if number == version.version)
    return record


def short_hash(value: str | None, length: int = 19) -> str:
    return "" if value is None else value[:length]


# ----------------------------------------------------------------------
# the root command
# ----------------------------------------------------------------------


@click.group(name="mltrail", cls=MltrailGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_url", envvar=STORE_ENV, metavar="URL",
              help="Store URL, e.g. memory://demo or local:///path/store.db. "
                   f"[default: ${STORE_ENV}, else the local store in the user data "
                   "directory]")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="table",
              show_default=True,
              help="Output format of every command that prints data.")
@click.option("--namespace", metavar="NAME",
              help="Namespace in which names of experiments, models and datasets are "
                   "looked up and created, and to which listings are limited. "
                   f"[default: {DEFAULT_NAMESPACE!r} for names, every namespace for "
                   "listings]")
@click.option("--quiet", "-q", is_flag=True,
              help="Print no confirmations, hints or progress; requested data and "
                   "errors are still printed.")
@click.version_option(__version__, prog_name="mltrail")
@click.pass_context
def main(ctx: click.Context, store_url: str | None, output_format: str,
         namespace: str | None, quiet: bool) -> None:
    """Record and query ML model metadata, evaluation histories and lineage.

    With --format json, times are ISO 8601 UTC strings and non-finite floats are
    the strings "NaN", "Infinity" and "-Infinity", so the output is valid JSON.
    With --format csv, nested fields become dotted columns such as
    params.optimizer.lr. Errors print one line `error: ...` on stderr.
    """
    state = CliState(store_url=store_url, output_format=output_format, quiet=quiet,
                     namespace=namespace)
    ctx.obj = state
    ctx.call_on_close(state.close)


# ----------------------------------------------------------------------
# experiments
# ----------------------------------------------------------------------


EXPERIMENT_COLUMNS = (
    Column("ID", "id", no_wrap=True), Column("NAME", "name"),
    Column("NAMESPACE", "namespace"), Column("DESCRIPTION", "description"),
    Column("TAGS", "tags"), Column("CREATED", "created_at"),
    Column("DELETED", "deleted_at"),
)


@main.group()
def experiments() -> None:
    """List, show, create, delete and restore experiments."""


@experiments.command("list")
@filter_option
@click.option("--include-deleted", is_flag=True, help="Also list deleted experiments.")
@format_option
@click.pass_obj
def experiments_list(state: CliState, filter_text: str | None, include_deleted: bool,
                     output_format: str | None) -> None:
    """List experiments by name."""
    store = state.store()
    found = store.list_experiments(namespace=state.namespace, filter=filter_text,
                                   include_deleted=include_deleted)
    rows = [entity_record(experiment) for experiment in found]
    emit_rows(rows, state.format_for(output_format), EXPERIMENT_COLUMNS)


@experiments.command("show")
@click.argument("name_or_id")
@format_option
@click.pass_obj
def experiments_show(state: CliState, name_or_id: str,
                     output_format: str | None) -> None:
    """Show an experiment and how many of its runs are in each status."""
    store = state.store()
    experiment = store.get_experiment(name_or_id, namespace=state.lookup_namespace)
    counts: dict[str, int] = {}
    for run in store.iter_runs(experiment_ids=[experiment.id]):
        counts[run.status.value] = counts.get(run.status.value, 0) + 1
    record = entity_record(experiment)
    record["run_counts"] = dict(sorted(counts.items()))

    def render(console: Console) -> None:
        print_pairs(console, "Experiment", _experiment_pairs(experiment))
        print_section(console, "Runs by status", sorted(counts.items()))

    emit_object(record, state.format_for(output_format), render)


def _experiment_pairs(experiment: Experiment) -> list[tuple[str, Any]]:
    return [("id", experiment.id), ("name", experiment.name),
            ("namespace", experiment.namespace),
            ("description", experiment.description),
            ("tags", experiment.tags), ("created", experiment.created_at),
            ("updated", experiment.updated_at), ("deleted", experiment.deleted_at)]


@experiments.command("create")
@click.argument("name")
@click.option("--description", help="Free-text description of the experiment.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="Tag to set on the experiment; repeat for several.")
@format_option
@click.pass_obj
def experiments_create(state: CliState, name: str, description: str | None,
                       tags: tuple[str, ...], output_format: str | None) -> None:
    """Create an experiment whose name is unique in the namespace."""
    parsed = dict(parse_tag(tag) for tag in tags)
    experiment = state.store().create_experiment(
        name, namespace=state.lookup_namespace, description=description, tags=parsed)
    emit_change(state, output_format, entity_record(experiment),
                f"created experiment {experiment.name!r} ({experiment.id})")


@experiments.command("delete")
@click.argument("name_or_id")
@format_option
@click.pass_obj
def experiments_delete(state: CliState, name_or_id: str,
                       output_format: str | None) -> None:
    """Soft-delete an experiment, which `experiments restore` brings back."""
    store = state.store()
    target = store.get_experiment(name_or_id, namespace=state.lookup_namespace)
    experiment = store.delete_experiment(target.id)
    emit_change(state, output_format, entity_record(experiment),
                f"deleted experiment {experiment.name!r} ({experiment.id})")


@experiments.command("restore")
@click.argument("name_or_id")
@format_option
@click.pass_obj
def experiments_restore(state: CliState, name_or_id: str,
                        output_format: str | None) -> None:
    """Restore a soft-deleted experiment."""
    store = state.store()
    target = store.get_experiment(name_or_id, namespace=state.lookup_namespace)
    experiment = store.restore_experiment(target.id)
    emit_change(state, output_format, entity_record(experiment),
                f"restored experiment {experiment.name!r} ({experiment.id})")


# ----------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------


def _metrics_cell(row: Mapping[str, Any]) -> str:
    metrics = row["metrics"]
    parts = [f"{key}={display(value)}" for key, value in
             list(metrics.items())[:METRICS_IN_CELL]]
    hidden = len(metrics) - len(parts)
    if hidden > 0:
        parts.append(f"(+{hidden} more)")
    return ", ".join(parts)


def run_columns(experiment_names: Mapping[str, str]) -> tuple[Column, ...]:
    return (
        Column("ID", "id", no_wrap=True),
        Column("NAME", "name"),
        Column("STATUS", "status"),
        Column("EXPERIMENT",
               text=lambda row: experiment_names.get(row["experiment_id"],
                                                     row["experiment_id"])),
        Column("STARTED", "start_time"),
        Column("DURATION",
               text=lambda row: format_duration(row["start_time"], row["end_time"])),
        Column("METRICS", text=_metrics_cell),
    )


def run_query_options(command: Callable) -> Callable:
    """Options shared by `runs list` and `runs search`."""
    options = [
        experiment_option,
        click.option("--status", "statuses", multiple=True,
                     type=click.Choice([s.value for s in RunStatus]),
                     help="Only runs in this status; repeat for several."),
        click.option("--order-by", default="created_at desc", show_default=True,
                     metavar="FIELD [asc|desc]",
                     help="Sort order, e.g. \"metrics.val_acc desc\"; separate several "
                          "fields with commas."),
        click.option("--limit", type=click.IntRange(1, limits.MAX_PAGE_SIZE),
                     default=100, show_default=True,
                     help="Maximum number of runs on one page."),
        click.option("--page-token", metavar="TOKEN",
                     help="Continue after the page that printed this token; pass the "
                          "same filter and order again."),
        click.option("--include-deleted", is_flag=True, help="Also list deleted runs."),
        format_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_experiment_ids(state: CliState,
                           experiments_given: Sequence[str]) -> list[str]:
    store = state.store()
    return [store.get_experiment(name, namespace=state.lookup_namespace).id
            for name in experiments_given]


def experiment_names_of(store: Store, experiment_ids: Iterable[str]) -> dict[str, str]:
    names = {}
    for experiment_id in set(experiment_ids):
        try:
            names[experiment_id] = store.get_experiment(experiment_id).name
        except NotFoundError:
            continue
    return names


def list_runs(state: CliState, filter_text: str | None,
              experiments_given: Sequence[str], statuses: Sequence[str], order_by: str,
              limit: int, page_token: str | None, include_deleted: bool,
              output_format: str | None) -> None:
    store = state.store()
    expr: Expr | None = parse_optional(filter_text)
    if statuses:
        by_status = In(("status",), tuple(statuses))
        expr = by_status if expr is None else And((expr, by_status))
    experiment_ids = resolve_experiment_ids(state, experiments_given) or None
    # NOTE: one latest-metrics lookup per run, because the Store has no batched
    # form of `latest_metrics`, so a page of `--limit` runs costs that many reads.
    page = store.search_runs(expr, experiment_ids=experiment_ids,
                             namespace=state.namespace, order_by=order_by,
                             page_size=limit, page_token=page_token,
                             include_deleted=include_deleted)
    rows = [run_record(run, store.latest_metrics(run.id)) for run in page.items]
    names = experiment_names_of(store, (row["experiment_id"] for row in rows))
    emit_rows(rows, state.format_for(output_format), run_columns(names))
    if page.next_page_token is not None:
        state.note(f"more runs match; next page: --page-token {page.next_page_token}")


@main.group(cls=LazyGroup, lazy_commands={
    "same-config": "mltrail.discovery.cli:same_config_command",
    "timeline": "mltrail.discovery.cli:timeline_command",
})
def runs() -> None:
    """List, search, show, delete and restore runs, and trace their history."""


@runs.command("list")
@filter_option
@run_query_options
@click.pass_obj
def runs_list(state: CliState, filter_text: str | None, experiments: tuple[str, ...],
              statuses: tuple[str, ...], order_by: str, limit: int,
              page_token: str | None, include_deleted: bool,
              output_format: str | None) -> None:
    """List runs, newest first, one page at a time."""
    list_runs(state, filter_text, experiments, statuses, order_by, limit, page_token,
              include_deleted, output_format)


@runs.command("search")
@click.argument("filter_text", metavar="FILTER")
@run_query_options
@click.pass_obj
def runs_search(state: CliState, filter_text: str, experiments: tuple[str, ...],
                statuses: tuple[str, ...], order_by: str, limit: int,
                page_token: str | None, include_deleted: bool,
                output_format: str | None) -> None:
    """Search runs with a filter expression.

    Fields are params.*, tags.*, metrics.* (latest values), status, name,
    experiment_id, parent_run_id, created_at, start_time and end_time.
    Example: mltrail runs search "metrics.val_acc >= 0.9 and params.model.alpha < 0.01"
    """
    list_runs(state, filter_text, experiments, statuses, order_by, limit, page_token,
              include_deleted, output_format)


@runs.command("show")
@click.argument("run_id")
@format_option
@click.pass_obj
def runs_show(state: CliState, run_id: str, output_format: str | None) -> None:
    """Show one run in full.

    The output lists params, tags, status, times, latest metrics, environment,
    code version, datasets and parent run.
    """
    store = state.store()
    run = store.get_run(run_id)
    latest = store.latest_metrics(run.id)
    experiment = _optional(lambda: store.get_experiment(run.experiment_id))
    parent = _optional(lambda: store.get_run(run.parent_run_id)) \
        if run.parent_run_id else None
    datasets = [_optional(lambda d=dataset_id: store.get_dataset(d))
                for dataset_id in run.dataset_ids]
    record = entity_record(run)
    record["experiment_name"] = experiment.name if experiment else None
    record["latest_metrics"] = {key: point_record(latest[key])
                                for key in sorted(latest)}
    record["datasets"] = [_dataset_summary(dataset_id, dataset) for dataset_id, dataset
                          in zip(run.dataset_ids, datasets)]

    def render(console: Console) -> None:
        print_pairs(console, "Run", _run_pairs(run, experiment, parent))
        print_section(console, "Params", flat_pairs(run.params))
        _print_latest_metrics(console, latest)
        print_section(console, "Datasets", [
            (summary["id"], _dataset_label(summary)) for summary in record["datasets"]])
        print_section(console, "Environment", _environment_pairs(run.environment))
        print_section(console, "Code version", flat_pairs(run.code_version))
        print_section(console, "Seeds", flat_pairs(run.seeds))
        print_section(console, "Resources", flat_pairs(run.resources))
        print_section(console, "Artifacts", sorted(run.artifact_uris.items()))
        if run.error:
            print_section(console, "Error", [("type", run.error.get("type")),
                                             ("message", run.error.get("message"))])

    emit_object(record, state.format_for(output_format), render)


def _optional(lookup: Callable[[], Any]) -> Any:
    """Return the looked-up entity, or None when it was purged since it was linked."""
    try:
        return lookup()
    except NotFoundError:
        return None


def _run_pairs(run: Run, experiment: Experiment | None,
               parent: Run | None) -> list[tuple[str, Any]]:
    experiment_text = f"{experiment.name} ({run.experiment_id})" if experiment \
        else run.experiment_id
    parent_text = None
    if run.parent_run_id:
        parent_text = f"{parent.name} ({run.parent_run_id})" if parent \
            else f"{run.parent_run_id} (not found)"
    return [
        ("id", run.id), ("name", run.name), ("experiment", experiment_text),
        ("namespace", run.namespace), ("status", run.status), ("parent", parent_text),
        ("trainer", run.trainer), ("tags", run.tags), ("created", run.created_at),
        ("started", run.start_time), ("ended", run.end_time),
        ("duration", format_duration(run.start_time, run.end_time)),
        ("deleted", run.deleted_at),
    ]


def _print_latest_metrics(console: Console, latest: Mapping[str, MetricPoint]) -> None:
    if not latest:
        return
    table = make_table(POINT_COLUMNS_WITH_KEY, "Latest metrics")
    for key in sorted(latest):
        row = point_record(latest[key])
        table.add_row(*(column.cell(row) for column in POINT_COLUMNS_WITH_KEY))
    console.print()
    console.print(table)


def _dataset_summary(dataset_id: str, dataset: Dataset | None) -> dict[str, Any]:
    if dataset is None:
        return {"id": dataset_id, "name": None, "version": None, "content_hash": None}
    return {"id": dataset.id, "name": dataset.name, "version": dataset.version,
            "content_hash": dataset.content_hash}


def _dataset_label(summary: Mapping[str, Any]) -> str:
    if summary["name"] is None:
        return "(not found)"
    content_hash = short_hash(summary["content_hash"])
    return f"{summary['name']}@{summary['version']}  {content_hash}"


def _environment_pairs(environment: Mapping[str, Any]) -> list[tuple[str, Any]]:
    pairs = [(key, environment[key]) for key in ("python", "implementation", "platform")
             if key in environment]
    pairs.extend(flat_pairs({"hardware": environment.get("hardware") or {}}))
    packages = environment.get("packages")
    if packages:
        pairs.append(("packages",
                      f"{len(packages)} installed (--format json lists them)"))
    return [(key, value) for key, value in pairs if value not in (None, {}, "")]


@runs.command("delete")
@click.argument("run_id")
@format_option
@click.pass_obj
def runs_delete(state: CliState, run_id: str, output_format: str | None) -> None:
    """Soft-delete a run, which `runs restore` brings back."""
    run = state.store().delete_run(run_id)
    emit_change(state, output_format, entity_record(run),
                f"deleted run {run.name!r} ({run.id})")


@runs.command("restore")
@click.argument("run_id")
@format_option
@click.pass_obj
def runs_restore(state: CliState, run_id: str, output_format: str | None) -> None:
    """Restore a soft-deleted run."""
    run = state.store().restore_run(run_id)
    emit_change(state, output_format, entity_record(run),
                f"restored run {run.name!r} ({run.id})")


# ----------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------


def _interval_cell(row: Mapping[str, Any]) -> str:
    return format_interval(row["ci_low"], row["ci_high"], row["ci_level"])


POINT_COLUMNS = (
    Column("STEP", "step"), Column("VALUE", "value"), Column("TIMESTAMP", "timestamp"),
    Column("CONFIDENCE INTERVAL", text=_interval_cell), Column("SPLIT", "split"),
    Column("UNIT", "unit"),
)
POINT_COLUMNS_WITH_KEY = (Column("KEY", "key"), *POINT_COLUMNS)


@main.group()
def metrics() -> None:
    """Read metric histories and latest values of a run."""


@metrics.command("history")
@click.argument("run_id")
@click.argument("key")
@click.option("--min-step", type=click.IntRange(min=0),
              help="Smallest step to include.")
@click.option("--max-step", type=click.IntRange(min=0),
              help="Largest step to include.")
@click.option("--start", metavar="TIME",
              help="Earliest timestamp to include, ISO 8601 (UTC when no offset is "
                   "given).")
@click.option("--end", metavar="TIME",
              help="Latest timestamp to include, ISO 8601 (UTC when no offset is "
                   "given).")
@click.option("--max-points", type=click.IntRange(min=1),
              help="Downsample to at most this many points: the step range is cut into "
                   "equal buckets and the last point of each is kept.")
@format_option
@click.pass_obj
def metrics_history(state: CliState, run_id: str, key: str, min_step: int | None,
                    max_step: int | None, start: str | None, end: str | None,
                    max_points: int | None, output_format: str | None) -> None:
    """Print the history of metric KEY of a run, in step order."""
    store = state.store()
    store.get_run(run_id)
    points = list(store.metric_history(run_id, key, min_step=min_step,
                                       max_step=max_step, start=start, end=end,
                                       max_points=max_points))
    if not points:
        known = store.metric_keys(run_id)
        if key not in known:
            raise NotFoundError(f"run {run_id!r} has no metric {key!r}; its metrics: "
                                f"{', '.join(known) or 'none'}", key)
    rows = [point_record(point) for point in points]
    emit_rows(rows, state.format_for(output_format), POINT_COLUMNS)


@metrics.command("latest")
@click.argument("run_id")
@format_option
@click.pass_obj
def metrics_latest(state: CliState, run_id: str, output_format: str | None) -> None:
    """Print the latest point of every metric of a run."""
    store = state.store()
    store.get_run(run_id)
    latest = store.latest_metrics(run_id)
    rows = [point_record(latest[key]) for key in sorted(latest)]
    emit_rows(rows, state.format_for(output_format), POINT_COLUMNS_WITH_KEY)


# ----------------------------------------------------------------------
# compare, best, aggregate
# ----------------------------------------------------------------------


@main.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID RUN_ID...")
@click.option("--params", "params_only", is_flag=True,
              help="Diff the params of exactly two runs key by key, floats bit for bit.")
@format_option
@click.pass_obj
def compare(state: CliState, run_ids: tuple[str, ...], params_only: bool,
            output_format: str | None) -> None:
    """Show params and latest metrics of several runs side by side."""
    if params_only:
        from mltrail.discovery.cli import print_param_comparison

        return print_param_comparison(state, run_ids, output_format)
    if len(run_ids) < 2:
        raise click.UsageError(f"compare needs at least 2 run ids, got {len(run_ids)}")
    comparison = state.store().compare_runs(list(run_ids))
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json(comparison))
        return
    rows = []
    for section in ("params", "metrics"):
        for key, values in comparison[section].items():
            row = {"field": f"{section}.{key}"}
            for run, value in zip(comparison["runs"], values):
                row[run["id"]] = value
            rows.append(row)
    if chosen == "csv":
        write_csv(rows)
        return
    columns = [Column("FIELD", "field")]
    for run in comparison["runs"]:
        columns.append(Column(
            f"{run['name']}\n{run['id']}",
            text=lambda row, run_id=run["id"]: display(row.get(run_id))))
    emit_rows(rows, "table", columns)


def check_filter(filter_text: str | None) -> None:
    """Parse a filter early, so a syntax error points into the user's own text."""
    parse_optional(filter_text)


@main.command()
@click.argument("metric")
@click.option("-k", "count", type=click.IntRange(1, limits.MAX_PAGE_SIZE), default=5,
              show_default=True, help="Number of runs to print.")
@click.option("--min", "minimize", is_flag=True,
              help="Rank the lowest value first (for losses); default: highest first.")
@filter_option
@experiment_option
@format_option
@click.pass_obj
def best(state: CliState, metric: str, count: int, minimize: bool,
         filter_text: str | None, experiments: tuple[str, ...],
         output_format: str | None) -> None:
    """Print the k runs with the best latest value of METRIC.

    Runs without METRIC are left out and NaN values rank last.
    """
    check_filter(filter_text)
    store = state.store()
    experiment_ids = resolve_experiment_ids(state, experiments) or None
    ranked = store.best_runs(metric, count, mode="min" if minimize else "max",
                             filter=filter_text, experiment_ids=experiment_ids)
    rows = [{"rank": rank, "id": run.id, "name": run.name, "status": run.status,
             "experiment_id": run.experiment_id, "metric": metric, "value": value}
            for rank, (run, value) in enumerate(ranked, start=1)]
    columns = (Column("RANK", "rank"), Column("ID", "id", no_wrap=True),
               Column("NAME", "name"), Column("STATUS", "status"),
               Column(metric.upper(), "value"))
    emit_rows(rows, state.format_for(output_format), columns)


@main.command()
@click.argument("metric")
@click.option("--group-by", metavar="FIELD",
              help="Field to group runs by, e.g. params.optimizer.name or tags.team; "
                   "runs without it form the group None.")
@filter_option
@experiment_option
@format_option
@click.pass_obj
def aggregate(state: CliState, metric: str, group_by: str | None,
              filter_text: str | None, experiments: tuple[str, ...],
              output_format: str | None) -> None:
    """Summarise the latest value of METRIC across runs, per group.

    Each group reports count, NaN count, mean, median, sample standard deviation,
    min, max and a 95% confidence interval of the mean (Student's t).
    """
    check_filter(filter_text)
    store = state.store()
    experiment_ids = resolve_experiment_ids(state, experiments) or None
    rows = store.aggregate(metric, group_by=group_by, filter=filter_text,
                           experiment_ids=experiment_ids)
    columns = (
        Column("GROUP", text=lambda row: display_scalar(row["group"])),
        Column("COUNT", "count"), Column("NaN", "nan_count"), Column("MEAN", "mean"),
        Column("MEDIAN", "median"), Column("STDDEV", "stddev"), Column("MIN", "min"),
        Column("MAX", "max"),
        Column("95% CI OF MEAN", text=lambda row: format_interval(
            row["ci95_low"], row["ci95_high"], None)),
    )
    emit_rows(rows, state.format_for(output_format), columns)


# ----------------------------------------------------------------------
# lineage
# ----------------------------------------------------------------------


# How an edge reads from the node nearer the traversal root to the farther one.
RELATIONS: dict[tuple[str, EdgeType], str] = {
    ("upstream", EdgeType.PRODUCED): "produced by",
    ("upstream", EdgeType.CONSUMED): "consumed",
    ("upstream", EdgeType.DERIVED_FROM): "derived from",
    ("upstream", EdgeType.CHILD_OF): "child of",
    ("downstream", EdgeType.PRODUCED): "produced",
    ("downstream", EdgeType.CONSUMED): "consumed by",
    ("downstream", EdgeType.DERIVED_FROM): "source of",
    ("downstream", EdgeType.CHILD_OF): "parent of",
}


def relation_of(edge: LineageEdge, direction: str) -> str:
    return RELATIONS[(direction, EdgeType(edge.type))]


def describe_node(graph: LineageGraph, node_id: str) -> str:
    node = graph.details.get(node_id)
    if node is None:
        return f"unknown node {node_id}"
    kind = getattr(node.kind, "value", node.kind)
    label = f" {node.label}" if node.label else ""
    return f"{kind}{label} ({node_id})"


def lineage_lines(graph: LineageGraph) -> list[str]:
    """Render a traversal as an indented tree, one line per edge.

    Each node is expanded once, at a place where its tree depth equals its
    distance from the root. Other edges to it print a reference line instead
    of repeating its subtree.
    """
    branches: dict[str, list[tuple[LineageEdge, str]]] = {}
    for edge in graph.edges:
        if graph.direction == "upstream":
            near, far = edge.downstream, edge.upstream
        else:
            near, far = edge.upstream, edge.downstream
        branches.setdefault(near, []).append((edge, far))
    lines = [describe_node(graph, graph.root)]
    expanded = {graph.root}

    def walk(node_id: str, prefix: str, depth: int) -> None:
        items = branches.get(node_id, [])
        for index, (edge, far) in enumerate(items):
            last = index == len(items) - 1
            distance = graph.nodes.get(far)
            expand = far not in expanded and distance == depth + 1
            suffix = f"  [distance {distance}]" if expand \
                else f"  (listed at distance {distance})"
            lines.append(f"{prefix}{'└── ' if last else '├── '}"
                         f"{relation_of(edge, graph.direction)} "
                         f"{describe_node(graph, far)}{suffix}")
            if expand:
                expanded.add(far)
                walk(far, prefix + ("    " if last else "│   "), depth + 1)

    walk(graph.root, "", 0)
    return lines


def lineage_record(graph: LineageGraph, depth: int) -> dict[str, Any]:
    nodes = []
    by_distance = sorted(graph.nodes.items(), key=lambda item: (item[1], item[0]))
    for node_id, distance in by_distance:
        node = graph.details.get(node_id)
        nodes.append({"id": node_id, "kind": node.kind if node else None,
                      "label": node.label if node else None, "distance": distance})
    edges = [{**edge.to_record(), "relation": relation_of(edge, graph.direction)}
             for edge in graph.edges]
    return {"root": graph.root, "direction": graph.direction, "depth": depth,
            "nodes": nodes, "edges": edges}


def resolve_node_id(state: CliState, text: str) -> str:
    """Return the lineage node id for TEXT: an id, MODEL@VERSION or DATASET@VERSION.

    `@` cannot occur in ids, so TEXT with `@` names a model version (number or
    alias such as `production`) or, failing that, a dataset version.
    """
    if "@" not in text:
        return text
    store = state.store()
    name, _, version = text.rpartition("@")
    try:
        return store.get_model_version(name, version,
                                       namespace=state.lookup_namespace).id
    except NotFoundError:
        pass
    try:
        return store.get_dataset(name, version, namespace=state.lookup_namespace).id
    except NotFoundError:
        raise NotFoundError(
            f"{text!r} names no model version and no dataset version in namespace "
            f"{state.lookup_namespace!r}; pass a node id, MODEL@VERSION, MODEL@ALIAS "
            "or DATASET@VERSION", text) from None


def show_lineage(state: CliState, node: str, direction: str, depth: int,
                 output_format: str | None) -> None:
    store = state.store()
    node_id = resolve_node_id(state, node)
    graph = store.upstream(node_id, depth) if direction == "upstream" \
        else store.downstream(node_id, depth)
    record = lineage_record(graph, depth)
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json(record))
    elif chosen == "csv":
        write_csv(record["nodes"])
    else:
        for line in lineage_lines(graph):
            click.echo(line)


def lineage_options(command: Callable) -> Callable:
    command = format_option(command)
    command = click.option(
        "--depth", type=click.IntRange(1, limits.MAX_LINEAGE_DEPTH), default=10,
        show_default=True, help="Maximum number of hops (edges) to follow.")(command)
    return click.argument("node", metavar="NODE_ID")(command)


@main.group()
def lineage() -> None:
    """Trace where datasets, runs and model versions come from and go to.

    NODE_ID is a node id (dataset, run, model version or pipeline), or
    MODEL@VERSION, MODEL@ALIAS or DATASET@VERSION.
    """


@lineage.command("upstream")
@lineage_options
@click.pass_obj
def lineage_upstream(state: CliState, node: str, depth: int,
                     output_format: str | None) -> None:
    """Print what NODE_ID came from: runs, datasets and pipelines."""
    show_lineage(state, node, "upstream", depth, output_format)


@lineage.command("downstream")
@lineage_options
@click.pass_obj
def lineage_downstream(state: CliState, node: str, depth: int,
                       output_format: str | None) -> None:
    """Print what came from NODE_ID: derived datasets, runs and model versions."""
    show_lineage(state, node, "downstream", depth, output_format)


# ----------------------------------------------------------------------
# models
# ----------------------------------------------------------------------


VERSION_COLUMNS = (
    Column("VERSION", "version"), Column("ID", "id", no_wrap=True),
    Column("ALIASES", "aliases"), Column("RUN", "run_id"),
    Column("GIT COMMIT", text=lambda row: short_hash(row["git_commit"], 12)),
    Column("REPRODUCIBILITY", text=lambda row: short_hash(row["reproducibility_hash"])),
    Column("CREATED", "created_at"), Column("DELETED", "deleted_at"),
)


@main.group()
def models() -> None:
    """List models and manage their versions and aliases."""


@models.command("list")
@filter_option
@click.option("--include-deleted", is_flag=True, help="Also list deleted models.")
@format_option
@click.pass_obj
def models_list(state: CliState, filter_text: str | None, include_deleted: bool,
                output_format: str | None) -> None:
    """List registered models by name."""
    store = state.store()
    found = store.list_models(namespace=state.namespace, filter=filter_text,
                              include_deleted=include_deleted)
    rows = [model_record(store, model) for model in found]
    columns = (
        Column("ID", "id", no_wrap=True), Column("NAME", "name"),
        Column("NAMESPACE", "namespace"), Column("VERSIONS", "version_count"),
        Column("LATEST", "latest_version"), Column("ALIASES", "aliases"),
        Column("CREATED", "created_at"), Column("DELETED", "deleted_at"),
    )
    emit_rows(rows, state.format_for(output_format), columns)


@models.command("show")
@click.argument("name")
@format_option
@click.pass_obj
def models_show(state: CliState, name: str, output_format: str | None) -> None:
    """Show a model, its aliases and its versions."""
    store = state.store()
    model = store.get_model(name, namespace=state.lookup_namespace)
    versions = store.list_model_versions(model.id, include_deleted=True)
    record = model_record(store, model)
    record["versions"] = [version_record(version, model) for version in versions]

    def render(console: Console) -> None:
        pairs = [("id", model.id), ("name", model.name), ("namespace", model.namespace),
                 ("description", model.description), ("tags", model.tags),
                 ("aliases", model.aliases), ("created", model.created_at),
                 ("deleted", model.deleted_at)]
        print_pairs(console, "Model", pairs)
        history = [(alias, " -> ".join(str(v) for v in earlier))
                   for alias, earlier in sorted(model.alias_history.items()) if earlier]
        print_section(console, "Earlier alias targets (oldest first)", history)
        table = make_table(VERSION_COLUMNS, "Versions")
        for row in record["versions"]:
            table.add_row(*(column.cell(row) for column in VERSION_COLUMNS))
        console.print()
        console.print(table)

    emit_object(record, state.format_for(output_format), render)


@models.command("versions")
@click.argument("name")
@click.option("--include-deleted", is_flag=True, help="Also list deleted versions.")
@format_option
@click.pass_obj
def models_versions(state: CliState, name: str, include_deleted: bool,
                    output_format: str | None) -> None:
    """List the versions of a model, oldest first."""
    store = state.store()
    model = store.get_model(name, namespace=state.lookup_namespace)
    versions = store.list_model_versions(model.id, include_deleted=include_deleted)
    rows = [version_record(version, model) for version in versions]
    emit_rows(rows, state.format_for(output_format), VERSION_COLUMNS)


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=click.IntRange(min=1))
@format_option
@click.pass_obj
def models_alias(state: CliState, name: str, alias: str, version: int,
                 output_format: str | None) -> None:
    """Point ALIAS (e.g. production) of model NAME at VERSION."""
    store = state.store()
    before = store.get_model(name, namespace=state.lookup_namespace)
    model = store.set_alias(before.id, alias, version)
    previous = before.aliases.get(alias)
    was = f" (was {previous})" if previous is not None else ""
    emit_change(state, output_format, entity_record(model),
                f"model {model.name!r}: alias {alias!r} -> version {version}{was}")


@models.command("rollback")
@click.argument("name")
@click.argument("alias")
@format_option
@click.pass_obj
def models_rollback(state: CliState, name: str, alias: str,
                    output_format: str | None) -> None:
    """Point ALIAS back at the version it named before its last change."""
    store = state.store()
    before = store.get_model(name, namespace=state.lookup_namespace)
    model = store.rollback_alias(before.id, alias)
    emit_change(state, output_format, entity_record(model),
                f"model {model.name!r}: alias {alias!r} rolled back to version "
                f"{model.aliases[alias]} (was {before.aliases.get(alias)})")


@models.command("delete-version")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@format_option
@click.pass_obj
def models_delete_version(state: CliState, name: str, version: int,
                          output_format: str | None) -> None:
    """Soft-delete VERSION of model NAME. Its number is never reused."""
    store = state.store()
    model = store.get_model(name, namespace=state.lookup_namespace)
    deleted = store.delete_model_version(model.id, version)
    emit_change(state, output_format, version_record(deleted, model),
                f"deleted version {deleted.version} of model {model.name!r}")


@models.command("restore-version")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@format_option
@click.pass_obj
def models_restore_version(state: CliState, name: str, version: int,
                           output_format: str | None) -> None:
    """Restore a soft-deleted VERSION of model NAME."""
    store = state.store()
    model = store.get_model(name, namespace=state.lookup_namespace)
    restored = store.restore_model_version(model.id, version)
    emit_change(state, output_format, version_record(restored, model),
                f"restored version {restored.version} of model {model.name!r}")


# ----------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------


@main.group()
def datasets() -> None:
    """List and show registered datasets."""


@datasets.command("list")
@filter_option
@format_option
@click.pass_obj
def datasets_list(state: CliState, filter_text: str | None,
                  output_format: str | None) -> None:
    """List dataset versions by name, then by registration time."""
    store = state.store()
    found = store.list_datasets(namespace=state.namespace, filter=filter_text)
    rows = [entity_record(dataset) for dataset in found]
    columns = (
        Column("ID", "id", no_wrap=True), Column("NAME", "name"),
        Column("VERSION", "version"),
        Column("CONTENT HASH", text=lambda row: short_hash(row["content_hash"])),
        Column("SOURCE", "source_uri"),
        Column("PIPELINE", text=lambda row: display(row["provenance"].get("pipeline"))),
        Column("INGESTED", "ingested_at"),
    )
    emit_rows(rows, state.format_for(output_format), columns)


@datasets.command("show")
@click.argument("name_or_id")
@click.option("--version", "version", help="Dataset version; default: the newest.")
@format_option
@click.pass_obj
def datasets_show(state: CliState, name_or_id: str, version: str | None,
                  output_format: str | None) -> None:
    """Show a dataset with its content hash, schema and provenance."""
    store = state.store()
    dataset = store.get_dataset(name_or_id, version, namespace=state.lookup_namespace)
    record = entity_record(dataset)

    def render(console: Console) -> None:
        pairs = [("id", dataset.id), ("name", dataset.name),
                 ("version", dataset.version), ("namespace", dataset.namespace),
                 ("description", dataset.description),
                 ("content hash", dataset.content_hash), ("source", dataset.source_uri),
                 ("ingested", dataset.ingested_at), ("tags", dataset.tags),
                 ("created", dataset.created_at)]
        print_pairs(console, "Dataset", pairs)
        provenance = dict(dataset.provenance)
        steps = provenance.pop("preprocessing", None) or []
        print_section(console, "Provenance", flat_pairs(provenance))
        print_section(console, "Preprocessing steps",
                      [(str(index), step) for index, step in enumerate(steps, start=1)])
        print_section(console, "Schema", flat_pairs(dataset.schema))

    emit_object(record, state.format_for(output_format), render)


# ----------------------------------------------------------------------
# audit
# ----------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read and verify the tamper-evident audit trail."""


@audit.command("log")
@click.argument("entity_id", required=False)
@click.option("--last", "last_count", type=click.IntRange(min=1),
              help="Print only the most recent N events.")
@format_option
@click.pass_obj
def audit_log(state: CliState, entity_id: str | None, last_count: int | None,
              output_format: str | None) -> None:
    """Print audit events in chain order, of one entity when ENTITY_ID is given."""
    events = state.store().audit_log(entity_id)
    if last_count is not None:
        events = deque(events, maxlen=last_count)
    chosen = state.format_for(output_format)
    rows = [describe_audit_event(event) for event in events]
    if chosen == "csv":
        # Details contain whole entity records, so one JSON column keeps the CSV narrow.
        for row in rows:
            row["details"] = json.dumps(to_json_value(row["details"]),
                                        ensure_ascii=False, sort_keys=True)
    columns = (
        Column("SEQ", "seq"), Column("AT", "at"), Column("ACTOR", "actor"),
        Column("ACTION", "action"), Column("ENTITY TYPE", "entity_type"),
        Column("ENTITY ID", "entity_id", no_wrap=True),
    )
    emit_rows(rows, chosen, columns)


@audit.command("verify")
@format_option
@click.pass_obj
def audit_verify(state: CliState, output_format: str | None) -> None:
    """Check the audit hash chain, and exit with 1 at the first broken event."""
    result = state.store().verify_audit()
    chosen = state.format_for(output_format)
    if chosen != "table":
        emit_object(dataclass_record(result), chosen, lambda console: None)
    if not result.ok:
        raise CliError(f"audit chain broken at seq {result.broken_at}: {result.reason} "
                       f"({result.checked} events before it are intact)")
    if chosen == "table":
        state.confirm(f"audit chain intact: {result.checked} events checked")


# ----------------------------------------------------------------------
# emulators
# ----------------------------------------------------------------------


@main.group()
def emulators() -> None:
    """Start, stop and list store servers on loopback for tests."""


def log_launcher_progress(quiet: bool) -> None:
    """Show the launchers' progress messages (downloads, start-up) on stderr."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)


@emulators.command("up")
@click.argument("name")
@click.pass_obj
def emulators_up(cli_state: CliState, name: str) -> None:
    """Start the server of store NAME and print its store URL as the last line."""
    from mltrail.conformance import emulators as launchers

    log_launcher_progress(cli_state.quiet)
    try:
        state = launchers.up(name)
    except launchers.EmulatorError as error:
        raise CliError(str(error)) from None
    click.echo(state.url)


@emulators.command("down")
@click.argument("name")
@click.pass_obj
def emulators_down(cli_state: CliState, name: str) -> None:
    """Stop the server of store NAME."""
    from mltrail.conformance import emulators as launchers

    log_launcher_progress(cli_state.quiet)
    try:
        stopped = launchers.down(name)
    except launchers.EmulatorError as error:
        raise CliError(str(error)) from None
    if stopped:
        cli_state.confirm(f"stopped {name}")
    else:
        cli_state.note(f"{name}: not running")


@emulators.command("status")
@format_option
@click.pass_obj
def emulators_status(cli_state: CliState, output_format: str | None) -> None:
    """List running store servers."""
    from mltrail.conformance import emulators as launchers

    try:
        states = launchers.status()
    except launchers.EmulatorError as error:
        raise CliError(str(error)) from None
    rows = []
    for state in states:
        row = dataclass_record(state)
        row["started_at"] = datetime.fromtimestamp(state.started_at, timezone.utc)
        rows.append(row)
    columns = (Column("NAME", "name"), Column("PID", "pid"), Column("PORT", "port"),
               Column("URL", "url"), Column("STARTED", "started_at"),
               Column("LOG", "log_path"))
    emit_rows(rows, cli_state.format_for(output_format), columns)


# ----------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------


@main.command("demo")
@click.option("--quick", is_flag=True,
              help="Run a reduced sweep: fewer configurations and epochs.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the data split, model initialisation and bootstrap "
                   "resampling.")
@click.pass_obj
def demo_command(state: CliState, quick: bool, seed: int) -> None:
    """Record two training sweeps on scikit-learn's bundled datasets.

    The demo registers datasets, runs two hyperparameter sweeps with per-epoch
    metric histories, registers the best model of each as a version with alias
    `production`, and prints a comparison, an aggregate and a lineage trace.
    It needs the `demo` extra (scikit-learn and numpy) and downloads nothing.
    """
    try:
        from mltrail import demo
    except ImportError as error:
        raise CliError(f"the demo needs scikit-learn and numpy ({error}); install them "
                       "with: pip install 'mltrail[demo]'") from None

    def discard(*args: Any, **kwargs: Any) -> None:
        return None

    demo.main(state.store_url, quick=quick, seed=seed,
              out=discard if state.quiet else click.echo)


if __name__ == "__main__":
    main()
