"""Command-line commands of the discovery package.

Top-level commands, registered in `mltrail.cli.LAZY_COMMANDS`: `catalog`,
`facets`, `compare-params` and `stats`. Commands of the `runs` group:
`timeline_command` (`runs timeline`) and `same_config_command`
(`runs same-config`). `print_param_comparison` serves `mltrail compare --params`.
Output follows the rest of the CLI: --format table, json or csv, and `text`
for the timeline's audit report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from mltrail import codec
from mltrail.cli import (
    FORMATS, CliState, Column, dump_json, emit_rows, experiment_option, filter_option,
    format_option, make_console, make_table, print_pairs, resolve_experiment_ids,
    to_json_value, write_csv,
)
from mltrail.discovery.catalog import KINDS, catalog
from mltrail.discovery.configs import (
    ParamComparison, compare_params, configuration_of, rebuild_configuration_index,
    runs_with_same_configuration,
)
from mltrail.discovery.facets import DEFAULT_FIELDS, DEFAULT_LIMIT, Facet, facets
from mltrail.discovery.telemetry import instrument
from mltrail.discovery.timeline import Timeline, render_text, timeline
from mltrail.discovery.workload import WORKLOAD_NAMESPACE, run_workload

TIMELINE_FORMATS = (*FORMATS, "text")


# ----------------------------------------------------------------------
# catalog
# ----------------------------------------------------------------------


def _catalog_detail(row: Mapping[str, Any]) -> str:
    if row["kind"] == "experiment":
        return f"{row['run_count']} runs"
    text = f"{row['version_count']} versions"
    if row["aliases"]:
        text += "; " + ", ".join(f"{a}=v{n}" for a, n in row["aliases"].items())
    return text


CATALOG_COLUMNS = (
    Column("KIND", "kind"), Column("NAME", "name"), Column("NAMESPACE", "namespace"),
    Column("LATEST", "latest_version"), Column("DETAIL", text=_catalog_detail),
    Column("DESCRIPTION", "description"), Column("TAGS", "tags"),
    Column("ID", "id", no_wrap=True),
)


@click.command("catalog")
@click.argument("terms", nargs=-1, metavar="[QUERY]...")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
              help="Only entries of this kind; repeat for several. [default: all]")
@click.option("--include-deleted", is_flag=True,
              help="Also list deleted models and experiments.")
@format_option
@click.pass_obj
def catalog_command(state: CliState, terms: tuple[str, ...], kinds: tuple[str, ...],
                    include_deleted: bool, output_format: str | None) -> None:
    """Find models, datasets and experiments in every namespace you may read.

    Every QUERY term must match: KEY=VALUE or tag:KEY=VALUE (a tag's value),
    tag:KEY (has the tag), name:TEXT, description:TEXT, or TEXT (in the name
    or the description, ignoring case). Models show their latest version and
    aliases, datasets their newest version, experiments their run count.
    The global --namespace limits the search to one namespace.
    """
    entries = catalog(state.store(), query=list(terms), kinds=kinds or KINDS,
                      namespace=state.namespace, include_deleted=include_deleted)
    rows = [entry.record() for entry in entries]
    emit_rows(rows, state.format_for(output_format), CATALOG_COLUMNS)


# ----------------------------------------------------------------------
# facets
# ----------------------------------------------------------------------


FACET_COLUMNS = (
    Column("FIELD", "field"), Column("VALUE", "value_text"),
    Column("RUNS", text=lambda row: _count_text(row)),
)


def _count_text(row: Mapping[str, Any]) -> str:
    if row.get("error"):
        return f"{row['count']} (at least {row['count'] - row['error']})"
    return str(row["count"])


def facet_rows(counted: Mapping[str, Facet]) -> list[dict[str, Any]]:
    """Flatten facets into rows: one per listed value, then missing and other."""
    rows = []
    for facet in counted.values():
        for value in facet.values:
            rows.append({"field": facet.field, "value_text": value.rendered,
                         "count": value.count, "error": value.error})
        for label, count in (("(missing)", facet.missing), ("(other)", facet.other)):
            if count:
                rows.append({"field": facet.field, "value_text": label, "count": count,
                             "error": 0})
    return rows


@click.command("facets")
@click.argument("fields", nargs=-1, metavar="[FIELD]...")
@filter_option
@experiment_option
@click.option("--limit", type=click.IntRange(1, 1000), default=DEFAULT_LIMIT,
              show_default=True,
              help="Values listed per field; runs with other values are counted "
                   "as (other).")
@click.option("--include-deleted", is_flag=True, help="Also count deleted runs.")
@format_option
@click.pass_obj
def facets_command(state: CliState, fields: tuple[str, ...], filter_text: str | None,
                   experiments: tuple[str, ...], limit: int, include_deleted: bool,
                   output_format: str | None) -> None:
    """Count the runs per value of each FIELD, among the runs a filter matches.

    FIELD is a run field such as tags.team, params.optimizer, status or
    metrics.val_acc (latest values); the default is tags.team and
    params.optimizer. Values are shown as canonical JSON, so 1, 1.0 and "1"
    are counted apart.
    """
    store = state.store()
    experiment_ids = resolve_experiment_ids(state, experiments) or None
    counted = facets(store, filter_text, fields or DEFAULT_FIELDS,
                     experiment_ids=experiment_ids, namespace=state.namespace,
                     include_deleted=include_deleted, limit=limit)
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json([facet.record() for facet in counted.values()]))
        return
    emit_rows(facet_rows(counted), chosen, FACET_COLUMNS)
    if any(facet.approximate for facet in counted.values()) and chosen == "table":
        state.note("some fields have too many distinct values to count exactly; their "
                   "counts are upper bounds")


# ----------------------------------------------------------------------
# timeline
# ----------------------------------------------------------------------


TIMELINE_COLUMNS = (
    Column("AT", text=lambda row: _time_cell(row["at"]), no_wrap=True),
    Column("KIND", "kind"), Column("SUMMARY", "summary"), Column("BY", "actor"),
    Column("SOURCE", text=lambda row: _source_cell(row)),
)

METRIC_COLUMNS = (
    Column("METRIC", "key"), Column("POINTS", "count"), Column("FIRST", "first_at"),
    Column("LAST", "last_at"), Column("STEPS", text=lambda r: f"{r['first_step']}-"
                                                              f"{r['last_step']}"),
    Column("MIN", "min"), Column("MAX", "max"), Column("LATEST", "last"),
    Column("NAN", "nan_count"),
)


def _time_cell(value: Any) -> str:
    return "time unknown" if value is None else to_json_value(value)


def _source_cell(row: Mapping[str, Any]) -> str:
    if row["audit_seq"] is not None:
        return f"audit #{row['audit_seq']}"
    return row["source"]


@click.command("timeline")
@click.argument("run_id")
@click.option("--format", "output_format", type=click.Choice(TIMELINE_FORMATS),
              default=None,
              help="table, json, csv, or text for a plain report to keep with an "
                   "audit. [default: the global --format]")
@click.pass_obj
def timeline_command(state: CliState, run_id: str, output_format: str | None) -> None:
    """Show everything that happened to a run, oldest first.

    Lists creation, status changes, params logged, tags, datasets consumed,
    each metric's history in brief (archived points included), artifacts,
    child runs, model versions produced and audit events, with who did what
    and the audit event's number. Times are UTC.
    """
    result = timeline(state.store(), run_id)
    chosen = state.format_for(output_format)
    if chosen == "text":
        click.echo(render_text(result), nl=False)
    elif chosen == "json":
        click.echo(dump_json(result.record()))
    elif chosen == "csv":
        write_csv(_timeline_csv_rows(result))
    else:
        _print_timeline(result)


def _timeline_csv_rows(result: Timeline) -> list[dict[str, Any]]:
    rows = []
    for entry in result.entries:
        row = entry.record()
        # Details hold whole params and records; one JSON column keeps CSV narrow.
        row["details"] = json.dumps(to_json_value(row["details"]), ensure_ascii=False,
                                    sort_keys=True)
        rows.append(row)
    return rows


def _print_timeline(result: Timeline) -> None:
    console = make_console()
    run = result.run
    print_pairs(console, f"Timeline of run {run.name} ({run.id})", [
        ("experiment", f"{result.experiment_name or '?'} ({run.experiment_id})"),
        ("namespace", run.namespace), ("status", run.status.value),
    ])
    console.print()
    table = make_table(TIMELINE_COLUMNS)
    for entry in result.entries:
        row = entry.record()
        table.add_row(*(column.cell(row) for column in TIMELINE_COLUMNS))
    console.print(table)
    if result.metrics:
        console.print()
        metrics = make_table(METRIC_COLUMNS, title="Metrics")
        for summary in result.metrics:
            row = summary.record()
            metrics.add_row(*(column.cell(row) for column in METRIC_COLUMNS))
        console.print(metrics)


# ----------------------------------------------------------------------
# shared configurations
# ----------------------------------------------------------------------


SAME_CONFIG_COLUMNS = (
    Column("ID", "id", no_wrap=True), Column("NAME", "name"),
    Column("EXPERIMENT", "experiment_id", no_wrap=True),
    Column("NAMESPACE", "namespace"),
    Column("STATUS", "status"), Column("CREATED", "created_at"),
    Column("", text=lambda row: "<- this run" if row["this_run"] else ""),
)


@click.command("same-config")
@click.argument("run_id")
@click.option("--include-deleted", is_flag=True, help="Also list deleted runs.")
@click.option("--rebuild", is_flag=True,
              help="First record the configuration of every run, for runs written "
                   "before configurations were recorded or copied by a restore. Needs "
                   "the writer role.")
@format_option
@click.pass_obj
def same_config_command(state: CliState, run_id: str, include_deleted: bool,
                        rebuild: bool, output_format: str | None) -> None:
    """List the runs whose params equal RUN_ID's exactly, RUN_ID included.

    Params are equal when every key, type and value matches; floats must be
    equal bit for bit. The configuration hash is the SHA-256 of the params'
    canonical JSON.
    """
    store = state.store()
    if rebuild:
        count = rebuild_configuration_index(store)
        state.note(f"recorded the configurations of {count} runs")
    configuration = configuration_of(store, run_id)
    if configuration is None:
        state.note(f"run {run_id!r} has no params, so it has no configuration")
        emit_rows([], state.format_for(output_format), SAME_CONFIG_COLUMNS)
        return
    runs = list(runs_with_same_configuration(store, run_id,
                                             include_deleted=include_deleted))
    rows = [{"id": r.id, "name": r.name, "experiment_id": r.experiment_id,
             "namespace": r.namespace, "status": r.status.value,
             "created_at": r.created_at, "this_run": r.id == run_id} for r in runs]
    if not any(row["this_run"] for row in rows):
        state.note(f"run {run_id!r} is not in the configuration index yet; run "
                   "`mltrail runs same-config --rebuild` to record older runs")
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json({"hash": configuration.hash,
                              "params": configuration.params, "runs": rows}))
        return
    if chosen == "table":
        state.note(f"configuration {configuration.hash}: "
                   f"{sum(1 for _ in codec.flatten(configuration.params))} params, "
                   f"{len(rows)} runs")
    emit_rows(rows, chosen, SAME_CONFIG_COLUMNS)


COMPARE_COLUMNS = (
    Column("PARAM", "param"), Column("CHANGE", "change"),
    Column("A", text=lambda row: _exact(row["a"], row["change"] != "only_in_b")),
    Column("B", text=lambda row: _exact(row["b"], row["change"] != "only_in_a")),
)


def _exact(value: Any, present: bool) -> str:
    """Show a param value as canonical JSON, so 1 and 1.0 and "1" look different."""
    return codec.dumps(value) if present else ""


def comparison_record(comparison: ParamComparison) -> dict[str, Any]:
    return {
        "run_a": comparison.run_a, "run_b": comparison.run_b,
        "hash_a": comparison.hash_a, "hash_b": comparison.hash_b,
        "identical": comparison.identical,
        "only_in_a": comparison.only_in_a, "only_in_b": comparison.only_in_b,
        "differing": {path: {"a": a, "b": b}
                      for path, (a, b) in comparison.differing.items()},
        "equal": comparison.equal,
    }


def print_param_comparison(state: CliState, run_ids: Sequence[str],
                           output_format: str | None, show_equal: bool = False) -> None:
    """Print the param diff of two runs; `mltrail compare --params` calls this."""
    if len(run_ids) != 2:
        raise click.UsageError(f"comparing params needs exactly 2 run ids, got "
                               f"{len(run_ids)}")
    comparison = compare_params(state.store(), run_ids[0], run_ids[1])
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json(comparison_record(comparison)))
        return
    rows = [row for row in comparison.rows()
            if show_equal or row["change"] != "equal"]
    if chosen == "csv":
        write_csv([{**row, "a": codec.dumps(row["a"]), "b": codec.dumps(row["b"])}
                   for row in rows])
        return
    identical = " (identical configurations)" if comparison.identical else ""
    state.note(f"A = {comparison.run_a}, B = {comparison.run_b}: "
               f"{len(comparison.differing)} differing, "
               f"{len(comparison.only_in_a)} only in A, "
               f"{len(comparison.only_in_b)} only in B, "
               f"{len(comparison.equal)} equal{identical}")
    emit_rows(rows, "table", COMPARE_COLUMNS)


@click.command("compare-params")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--all", "show_equal", is_flag=True,
              help="Also list params that are equal.")
@format_option
@click.pass_obj
def compare_params_command(state: CliState, run_a: str, run_b: str, show_equal: bool,
                           output_format: str | None) -> None:
    """Diff the params of two runs key by key; floats are compared bit for bit.

    Each param path is only in A, only in B, differing or equal (listed with
    --all). Values are shown as canonical JSON, so 1, 1.0 and "1" differ.
    """
    print_param_comparison(state, [run_a, run_b], output_format, show_equal)


# ----------------------------------------------------------------------
# stats
# ----------------------------------------------------------------------


TEMPLATE_COLUMNS = (
    Column("QUERY TEMPLATE", "template"), Column("COUNT", "count"),
    Column("ERRORS", "errors"), Column("P50 MS", "p50_ms"), Column("P95 MS", "p95_ms"),
    Column("MAX MS", "max_ms"),
)
WRITE_COLUMNS = (
    Column("LOGICAL WRITE", "write"), Column("CALLS", "calls"),
    Column("REPOSITORY WRITES/CALL", "repository_writes_per_call"),
    Column("ITEMS/WRITE", "items_per_write"), Column("BYTES/WRITE", "bytes_per_write"),
)
OPERATION_COLUMNS = (
    Column("OPERATION", "operation"), Column("CALLS", "calls"),
    Column("ERRORS", "errors"), Column("ITEMS READ", "items"),
    Column("TOTAL MS", "total_ms"), Column("MEAN MS", "mean_ms"),
)
STORAGE_COLUMNS = (
    Column("COLLECTION", "collection"), Column("BYTES", "bytes"),
    Column("INDEX BYTES", "index_bytes"),
)


@click.command("stats")
@click.option("--workload", is_flag=True,
              help="First run a small workload on the store: an experiment in "
                   f"namespace {WORKLOAD_NAMESPACE!r} that is purged afterwards "
                   "(its audit events stay).")
@click.option("--runs", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Runs the workload records.")
@click.option("--points", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Points per metric per run that the workload logs.")
@click.option("--keep", is_flag=True, help="Keep the workload's experiment.")
@format_option
@click.pass_obj
def stats_command(state: CliState, workload: bool, runs: int, points: int, keep: bool,
                  output_format: str | None) -> None:
    """Print store telemetry: operations, query latency, write amplification, bytes.

    Figures cover this process only, so without --workload they show little
    besides bytes stored. Write amplification (items and bytes written per
    logical write) and bytes stored are "unknown" on backends that do not
    report them.
    """
    store = state.store()
    telemetry = instrument(store)
    if workload:
        result = run_workload(store, runs=runs, points=points, keep=keep)
        outcome = "purged" if result.purged else "kept"
        state.note(f"workload: {result.runs} runs, {result.points} points; experiment "
                   f"{result.experiment_id} {outcome}")
    snapshot = telemetry.snapshot()
    chosen = state.format_for(output_format)
    if chosen == "json":
        click.echo(dump_json(snapshot))
    elif chosen == "csv":
        write_csv(stats_rows(snapshot))
    else:
        _print_stats(snapshot)


def storage_rows(storage: Any) -> list[dict[str, Any]]:
    collections = storage.get("collections") if isinstance(storage, dict) else None
    if not isinstance(collections, dict):
        return []
    return [{"collection": name, "bytes": figures.get("bytes"),
             "index_bytes": figures.get("index_bytes")}
            for name, figures in collections.items()]


def stats_rows(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten a telemetry snapshot into CSV rows with a `section` column."""
    rows: list[dict[str, Any]] = []
    for section in ("templates", "writes", "operations"):
        rows += [{"section": section, **row} for row in snapshot[section]]
    rows += [{"section": "storage", **row} for row in storage_rows(snapshot["storage"])]
    return rows


def _print_stats(snapshot: Mapping[str, Any]) -> None:
    console = make_console()
    storage = snapshot["storage"]
    totals = storage if isinstance(storage, dict) else {}
    print_pairs(console, "Store telemetry", [
        ("backend", snapshot["backend"]), ("store", snapshot["url"]),
        ("since", snapshot["since"]),
        ("backend counters", snapshot["counters"]),
        ("bytes stored", totals.get("total_bytes", "unknown")),
    ])
    sections = (("templates", TEMPLATE_COLUMNS, "Query templates"),
                ("writes", WRITE_COLUMNS, "Write amplification"),
                ("operations", OPERATION_COLUMNS, "Repository operations"))
    for key, columns, title in sections:
        if snapshot[key]:
            console.print()
            _print_table(console, columns, snapshot[key], title)
    collections = storage_rows(storage)
    if collections:
        console.print()
        _print_table(console, STORAGE_COLUMNS, collections, "Bytes per collection")
    if not snapshot["templates"] and not snapshot["writes"]:
        console.print()
        console.print("No store operations in this process yet; pass --workload to "
                      "measure a small workload.")


def _print_table(console: Any, columns: Sequence[Column],
                 rows: Sequence[Mapping[str, Any]], title: str) -> None:
    table = make_table(columns, title=title)
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
    console.print(table)
