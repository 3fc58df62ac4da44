"""Tests of the discovery commands, registered as the main CLI will register them."""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from dataclasses import dataclass

import pytest
from click.testing import CliRunner, Result

import mltrail
from mltrail import cli
from mltrail.api import connect
from mltrail.config import Config
from mltrail.discovery import cli as discovery_cli
from mltrail.discovery import record_configuration
from mltrail.discovery.configs import forget_configuration

TOP_LEVEL = {
    "catalog": "catalog_command", "facets": "facets_command",
    "compare-params": "compare_params_command", "stats": "stats_command",
}


@pytest.fixture(autouse=True)
def registered(monkeypatch, tmp_path):
    """Register the commands as LAZY_COMMANDS and the runs group will."""
    for name, attribute in TOP_LEVEL.items():
        monkeypatch.setitem(cli.LAZY_COMMANDS, name,
                            f"mltrail.discovery.cli:{attribute}")
    monkeypatch.setitem(cli.runs.commands, "timeline", discovery_cli.timeline_command)
    monkeypatch.setitem(cli.runs.commands, "same-config",
                        discovery_cli.same_config_command)
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("MLTRAIL_CONFIG", str(tmp_path / "config.toml"))


@dataclass
class Recorded:
    url: str
    first: str
    twin: str
    other: str


@pytest.fixture(params=["memory", "local"])
def recorded(request, tmp_path):
    url = f"memory://discovery-cli-{uuid.uuid4().hex}" if request.param == "memory" \
        else f"local://{tmp_path}/cli.db"
    store = connect(url, actor="cli-test", config=Config())
    experiment = store.create_experiment("digits", description="Digit recognition",
                                         tags={"team": "vision"})
    params = {"optimizer": "adam", "lr": 0.001}
    first = store.create_run(experiment.id, name="first", params=params,
                             tags={"team": "vision"})
    twin = store.create_run(experiment.id, name="twin", params=dict(params),
                            tags={"team": "nlp"})
    other = store.create_run(experiment.id, name="other",
                             params={"optimizer": "adam", "lr": 1, "seed": 3})
    for run in (first, twin):
        record_configuration(store, run)
    store.set_run_status(first.id, "running")
    store.log_metric(first.id, "loss", math.nan, step=0)
    store.log_metric(first.id, "loss", 0.25, step=1)
    store.create_model("classifier", description="digit CNN")
    store.register_model_version("classifier", run_id=first.id)
    store.register_dataset("mnist", "3")
    store.close()
    return Recorded(url, first.id, twin.id, other.id)


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["--store", url, *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + result.stderr
    return result


def test_catalog_table_and_json(recorded):
    table = ok(invoke(recorded.url, "catalog"))
    assert "classifier" in table.stdout
    assert "1 versions" in table.stdout
    assert "3 runs" in table.stdout

    listed = json.loads(ok(invoke(recorded.url, "catalog", "team=vision",
                                  "--format", "json")).stdout)
    assert [(e["kind"], e["name"], e["run_count"]) for e in listed] == [
        ("experiment", "digits", 3)]


def test_catalog_kind_and_csv(recorded):
    rows = list(csv.DictReader(io.StringIO(ok(invoke(
        recorded.url, "--format", "csv", "catalog", "--kind", "dataset")).stdout)))

    assert [(row["kind"], row["name"], row["latest_version"]) for row in rows] == [
        ("dataset", "mnist", "3")]


def test_catalog_bad_kind_is_usage_error(recorded):
    result = invoke(recorded.url, "catalog", "--kind", "pipeline")

    assert result.exit_code == 2
    assert "pipeline" in result.stderr


def test_facets_command(recorded):
    table = ok(invoke(recorded.url, "facets", "tags.team", "params.lr"))
    assert '"vision"' in table.stdout
    assert "(missing)" in table.stdout

    facets = json.loads(ok(invoke(recorded.url, "facets", "params.lr",
                                  "--filter", "params.optimizer = 'adam'",
                                  "--format", "json")).stdout)
    assert [(v["rendered"], v["count"]) for v in facets[0]["values"]] == [
        ("0.001", 2), ("1", 1)]


def test_facets_invalid_filter(recorded):
    result = invoke(recorded.url, "facets", "--filter", "params.lr <")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid filter")


@pytest.mark.parametrize("output_format", ["table", "text", "json", "csv"])
def test_timeline_formats(recorded, output_format):
    result = ok(invoke(recorded.url, "runs", "timeline", recorded.first,
                       "--format", output_format))

    if output_format == "json":
        record = json.loads(result.stdout)
        kinds = [entry["kind"] for entry in record["entries"]]
        assert kinds[:2] == ["created", "params"]
        assert "model_version" in kinds
        assert record["metrics"][0]["nan_count"] == 1
    elif output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert rows[0]["kind"] == "created"
        assert json.loads(rows[0]["details"])["status"] == "pending"
    else:
        assert "status pending -> running" in result.stdout
        assert "produced model classifier version 1" in result.stdout


def test_timeline_unknown_run(recorded):
    result = invoke(recorded.url, "runs", "timeline", "nosuchrun")

    assert result.exit_code == 1
    assert "'nosuchrun'" in result.stderr


def test_same_config(recorded):
    result = ok(invoke(recorded.url, "runs", "same-config", recorded.first))
    assert recorded.twin in result.stdout
    assert recorded.other not in result.stdout
    assert "<- this run" in result.stdout

    # The Store indexes every run's configuration when it is written.
    record = json.loads(ok(invoke(recorded.url, "runs", "same-config", recorded.other,
                                  "--format", "json")).stdout)
    assert [run["id"] for run in record["runs"]] == [recorded.other]

    store = mltrail.connect(recorded.url)
    forget_configuration(store, recorded.other)
    store.close()
    record = json.loads(ok(invoke(recorded.url, "runs", "same-config", recorded.other,
                                  "--format", "json")).stdout)
    assert record["runs"] == []
    assert "not in the configuration index" in \
        invoke(recorded.url, "runs", "same-config", recorded.other).stderr

    rebuilt = json.loads(ok(invoke(recorded.url, "runs", "same-config", recorded.other,
                                   "--rebuild", "--format", "json")).stdout)
    assert [run["id"] for run in rebuilt["runs"]] == [recorded.other]
    assert rebuilt["params"] == {"optimizer": "adam", "lr": 1, "seed": 3}


def test_compare_params(recorded):
    table = ok(invoke(recorded.url, "compare-params", recorded.first, recorded.other))
    assert "differing" in table.stdout
    assert "only_in_b" in table.stdout
    assert "optimizer" not in table.stdout
    assert "0.001" in table.stdout

    record = json.loads(ok(invoke(recorded.url, "compare-params", recorded.first,
                                  recorded.twin, "--format", "json")).stdout)
    assert record["identical"] is True
    assert record["differing"] == {}

    rows = list(csv.DictReader(io.StringIO(ok(invoke(
        recorded.url, "--format", "csv", "compare-params", "--all", recorded.first,
        recorded.other)).stdout)))
    assert {row["param"]: (row["change"], row["a"], row["b"]) for row in rows} == {
        "lr": ("differing", "0.001", "1"), "optimizer": ("equal", '"adam"', '"adam"'),
        "seed": ("only_in_b", "null", "3")}


def test_print_param_comparison_needs_two_runs(recorded):
    state = cli.CliState(store_url=recorded.url, output_format="table", quiet=False,
                         namespace=None)
    with pytest.raises(cli.click.UsageError):
        discovery_cli.print_param_comparison(state, [recorded.first], None)


def test_stats_with_workload(recorded):
    result = ok(invoke(recorded.url, "stats", "--workload", "--runs", "2",
                       "--points", "5", "--format", "json"))

    snapshot = json.loads(result.stdout)
    templates = {row["template"] for row in snapshot["templates"]}
    assert {"search_runs", "metric_history", "upstream"} <= templates
    writes = {row["write"]: row for row in snapshot["writes"]}
    assert writes["create_run"]["repository_writes_per_call"] > 0
    assert snapshot["counters"]["items_written"] > 0
    assert snapshot["storage"]["total_bytes"] > 0
    assert "purged" in result.stderr


def test_stats_table_without_workload(recorded):
    result = ok(invoke(recorded.url, "stats"))

    assert "Store telemetry" in result.stdout
    assert "pass --workload" in result.stdout


def test_stats_csv_sections(recorded):
    rows = list(csv.DictReader(io.StringIO(ok(invoke(
        recorded.url, "stats", "--workload", "--runs", "1", "--points", "2",
        "--format", "csv")).stdout)))

    assert {row["section"] for row in rows} >= {"templates", "writes", "operations"}
