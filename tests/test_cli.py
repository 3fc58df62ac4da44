"""Tests of the `mltrail` command line against in-memory stores."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import types
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import click
import pytest
from click.testing import CliRunner, Result

import mltrail
from mltrail import cli
from mltrail.api import register_dataset, start_run
from mltrail.cli import main, to_json_value


def reject_constant(name: str) -> None:
    raise AssertionError(f"output contains the non-standard JSON constant {name}")


def parse_json(text: str):
    """Parse strict JSON: NaN and Infinity tokens fail the test."""
    return json.loads(text, parse_constant=reject_constant)


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@dataclass
class Recorded:
    """Ids of what the `recorded` fixture wrote into the store."""

    url: str
    experiment_id: str
    parent_id: str
    fast_id: str
    slow_id: str
    raw_id: str
    clean_id: str
    version_id: str


@pytest.fixture
def store_url() -> str:
    return f"memory://cli-{uuid.uuid4().hex}"


@pytest.fixture
def recorded(store_url: str) -> Recorded:
    """A sweep with two children, two datasets and a model version with an alias.

    Child `fast` has the higher val_acc and a NaN val_loss; `slow` has an
    infinite val_loss.
    """
    store = mltrail.connect(store_url)
    raw = register_dataset(store, "raw", "1", data=b"raw bytes",
                           source_uri="file:///data/raw.csv")
    clean = register_dataset(store, "clean", "1", data=b"clean bytes",
                             preprocessing=[{"step": "dedupe"}], pipeline="cleaner",
                             derived_from=[raw])
    options = {"capture_env": False, "capture_code": False}
    parent = start_run(store, "vision", name="sweep", datasets=[clean],
                       tags={"team": "vision"}, **options)
    with parent:
        fast = parent.child("fast", params={"optimizer": {"lr": 0.1, "name": "sgd"}},
                            datasets=[clean], **options)
        with fast:
            for step in range(1, 13):
                fast.log_metric("val_acc", 0.5 + step * 0.03, step=step, ci_low=0.4,
                                ci_high=0.99, ci_level=0.95, split="validation")
            fast.log_metric("val_loss", math.nan, step=12)
        slow = parent.child("slow", params={"optimizer": {"lr": 0.01, "name": "adam"}},
                            datasets=[clean], **options)
        with slow:
            for step in range(1, 13):
                slow.log_metric("val_acc", 0.4 + step * 0.02, step=step)
            slow.log_metric("val_loss", math.inf, step=12)
        version = fast.register_model("classifier")
    store.set_alias("classifier", "production", version.version)
    return Recorded(store_url, parent.run.experiment_id, parent.id, fast.id, slow.id,
                    raw.id, clean.id, version.id)


def invoke(url: str, *args: str, **options) -> Result:
    return CliRunner().invoke(main, ["--store", url, *args], **options)


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------
# root command, formats and errors
# ----------------------------------------------------------------------


def test_help_lists_every_command_group():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("experiments", "runs", "metrics", "compare", "best", "aggregate",
                 "lineage", "models", "datasets", "audit", "emulators", "demo"):
        assert name in result.stdout


def test_unknown_scheme_lists_known_schemes():
    result = invoke("nosuchstore://x", "runs", "list")
    assert_one_line_error(result, 1, "unknown store scheme 'nosuchstore'", "memory://")


def test_unknown_option_is_one_line_usage_error(store_url):
    result = invoke(store_url, "runs", "list", "--bogus")
    assert_one_line_error(result, 2, "--bogus", "mltrail runs list --help")


def test_invalid_choice_is_usage_error(store_url):
    result = invoke(store_url, "runs", "list", "--status", "sleeping")
    assert_one_line_error(result, 2, "sleeping")


def test_store_url_from_environment(recorded):
    result = CliRunner().invoke(main, ["--format", "json", "runs", "list"],
                                env={"MLTRAIL_STORE": recorded.url})
    assert result.exit_code == 0, result.output
    names = {run["name"] for run in parse_json(result.stdout)}
    assert names == {"sweep", "fast", "slow"}


def test_command_format_overrides_global(recorded):
    global_json = invoke(recorded.url, "--format", "json", "experiments", "list")
    assert parse_json(global_json.stdout)[0]["name"] == "vision"
    overridden = invoke(recorded.url, "--format", "json", "experiments", "list",
                        "--format", "csv")
    rows = parse_csv(overridden.stdout)
    assert rows[0]["name"] == "vision"


def test_to_json_value_makes_strict_json():
    value = {"nan": math.nan, "inf": math.inf, "neg": -math.inf, "zero": -0.0,
             "at": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
             "nested": [math.nan, (1, 2.5)]}
    converted = to_json_value(value)
    assert converted["nan"] == "NaN"
    assert converted["inf"] == "Infinity"
    assert converted["neg"] == "-Infinity"
    assert math.copysign(1.0, converted["zero"]) == -1.0
    assert converted["at"] == "2024-05-01T12:00:00.000000Z"
    assert converted["nested"] == ["NaN", [1, 2.5]]
    json.dumps(converted, allow_nan=False)


def test_cli_import_leaves_conformance_unloaded():
    code = "import sys, mltrail.cli; print('mltrail.conformance' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True,
                               text=True, check=True)
    assert completed.stdout.strip() == "False"


# ----------------------------------------------------------------------
# experiments
# ----------------------------------------------------------------------


def test_experiments_create_show_delete_restore(store_url):
    created = invoke(store_url, "experiments", "create", "nlp", "--description", "text",
                     "--tag", "team=nlp", "--tag", "tier=gold", "--format", "json")
    assert created.exit_code == 0, created.output
    record = parse_json(created.stdout)
    assert record["tags"] == {"team": "nlp", "tier": "gold"}
    assert record["description"] == "text"

    show_result = invoke(store_url, "experiments", "show", "nlp")
    assert show_result.exit_code == 0
    assert record["id"] in show_result.stdout

    deleted = invoke(store_url, "experiments", "delete", "nlp")
    assert deleted.exit_code == 0
    assert "deleted experiment 'nlp'" in deleted.stdout
    listed = invoke(store_url, "experiments", "list", "--format", "json")
    assert parse_json(listed.stdout) == []
    with_deleted = invoke(store_url, "experiments", "list", "--include-deleted",
                          "--format", "json")
    assert parse_json(with_deleted.stdout)[0]["deleted_at"] is not None

    restored = invoke(store_url, "experiments", "restore", record["id"],
                      "--format", "json")
    assert parse_json(restored.stdout)["deleted_at"] is None


def test_experiments_create_duplicate_fails(store_url):
    assert invoke(store_url, "experiments", "create", "dup").exit_code == 0
    result = invoke(store_url, "experiments", "create", "dup")
    assert_one_line_error(result, 1, "dup", "already exists")


def test_experiments_create_rejects_bad_tag(store_url):
    result = invoke(store_url, "experiments", "create", "x", "--tag", "novalue")
    assert_one_line_error(result, 2, "novalue", "KEY=VALUE")


def test_experiments_show_counts_runs(recorded):
    result = invoke(recorded.url, "experiments", "show", "vision", "--format", "json")
    assert parse_json(result.stdout)["run_counts"] == {"completed": 3}


def test_experiments_show_unknown_name(store_url):
    result = invoke(store_url, "experiments", "show", "missing")
    assert_one_line_error(result, 1, "experiment 'missing' not found")


# ----------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------


def test_runs_list_json_fields(recorded):
    result = invoke(recorded.url, "runs", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    runs = {run["name"]: run for run in parse_json(result.stdout)}
    assert set(runs) == {"sweep", "fast", "slow"}
    fast = runs["fast"]
    for key in ("id", "name", "experiment_id", "status", "params", "tags", "created_at",
                "start_time", "end_time", "parent_run_id", "metrics"):
        assert key in fast
    assert fast["id"] == recorded.fast_id
    assert fast["status"] == "completed"
    assert fast["params"] == {"optimizer": {"lr": 0.1, "name": "sgd"}}
    assert fast["parent_run_id"] == recorded.parent_id
    assert fast["experiment_id"] == recorded.experiment_id
    assert fast["created_at"].endswith("Z")
    assert fast["metrics"]["val_acc"] == pytest.approx(0.86)
    assert fast["metrics"]["val_loss"] == "NaN"
    assert runs["slow"]["metrics"]["val_loss"] == "Infinity"
    assert runs["sweep"]["tags"] == {"team": "vision"}


def test_runs_list_csv_flattens_params(recorded):
    result = invoke(recorded.url, "runs", "list", "--format", "csv",
                    "--filter", "params.optimizer.lr exists")
    rows = {row["name"]: row for row in parse_csv(result.stdout)}
    assert set(rows) == {"fast", "slow"}
    assert rows["fast"]["params.optimizer.lr"] == "0.1"
    assert rows["slow"]["params.optimizer.name"] == "adam"
    assert rows["fast"]["metrics.val_loss"] == "NaN"
    assert rows["slow"]["metrics.val_loss"] == "Infinity"


def test_runs_list_table_shows_names(recorded):
    result = invoke(recorded.url, "runs", "list")
    assert result.exit_code == 0
    assert "NAME" in result.stdout
    for name in ("sweep", "fast", "slow"):
        assert name in result.stdout
    assert "val_acc=0.86" in result.stdout


def test_runs_list_filters_and_order(recorded):
    by_filter = invoke(recorded.url, "runs", "list", "--format", "json",
                       "--filter", "params.optimizer.lr < 0.05")
    assert [run["name"] for run in parse_json(by_filter.stdout)] == ["slow"]

    ordered = invoke(recorded.url, "runs", "list", "--format", "json",
                     "--experiment", "vision", "--order-by", "metrics.val_acc desc",
                     "--filter", "metrics.val_acc exists")
    assert [run["name"] for run in parse_json(ordered.stdout)] == ["fast", "slow"]

    by_status = invoke(recorded.url, "runs", "list", "--format", "json",
                       "--status", "running")
    assert parse_json(by_status.stdout) == []


def test_runs_list_unknown_experiment(recorded):
    result = invoke(recorded.url, "runs", "list", "--experiment", "nope")
    assert_one_line_error(result, 1, "experiment 'nope' not found")


def test_runs_list_pages_with_token(recorded):
    first = invoke(recorded.url, "runs", "list", "--format", "json", "--limit", "2",
                   "--order-by", "name")
    assert [run["name"] for run in parse_json(first.stdout)] == ["fast", "slow"]
    hint = first.stderr.strip()
    assert "--page-token" in hint
    token = hint.split("--page-token ")[1]
    second = invoke(recorded.url, "runs", "list", "--format", "json", "--limit", "2",
                    "--order-by", "name", "--page-token", token)
    assert [run["name"] for run in parse_json(second.stdout)] == ["sweep"]
    assert second.stderr == ""


def test_page_token_of_other_query(recorded):
    first = invoke(recorded.url, "runs", "list", "--limit", "1", "--order-by", "name")
    token = first.stderr.strip().split("--page-token ")[1]
    result = invoke(recorded.url, "runs", "list", "--limit", "1", "--page-token", token)
    assert_one_line_error(result, 1, "belongs to another query")


def test_quiet_hides_page_hint_and_confirmations(recorded):
    listed = invoke(recorded.url, "--quiet", "runs", "list", "--limit", "1")
    assert listed.exit_code == 0
    assert listed.stderr == ""
    deleted = invoke(recorded.url, "--quiet", "runs", "delete", recorded.slow_id)
    assert deleted.exit_code == 0
    assert deleted.stdout == ""


def test_runs_search_filter(recorded):
    result = invoke(recorded.url, "runs", "search", "metrics.val_acc > 0.8",
                    "--format", "json")
    assert [run["name"] for run in parse_json(result.stdout)] == ["fast"]


def test_runs_search_bad_filter_reports_position(recorded):
    result = invoke(recorded.url, "runs", "search", "params.optimizer.lr <")
    assert_one_line_error(result, 1, "invalid filter 'params.optimizer.lr <'",
                          "at position 21")


def test_runs_list_bad_order_clause(recorded):
    result = invoke(recorded.url, "runs", "list", "--order-by", "metrics.acc sideways")
    assert_one_line_error(result, 1, "order clause 'metrics.acc sideways' is invalid")


def test_runs_show_json(recorded):
    result = invoke(recorded.url, "runs", "show", recorded.fast_id, "--format", "json")
    assert result.exit_code == 0, result.output
    record = parse_json(result.stdout)
    assert record["parent_run_id"] == recorded.parent_id
    assert record["experiment_name"] == "vision"
    assert record["latest_metrics"]["val_acc"]["step"] == 12
    assert record["latest_metrics"]["val_acc"]["ci_level"] == 0.95
    assert record["latest_metrics"]["val_loss"]["value"] == "NaN"
    assert [d["name"] for d in record["datasets"]] == ["clean"]


def test_runs_show_table_sections(recorded):
    result = invoke(recorded.url, "runs", "show", recorded.fast_id)
    assert result.exit_code == 0, result.output
    for text in ("Run", "Params", "Latest metrics", "Datasets", "optimizer.lr",
                 "sweep (" + recorded.parent_id + ")", "clean@1", "[0.4, 0.99] (95%)"):
        assert text in result.stdout


def test_runs_show_unknown_id(recorded):
    result = invoke(recorded.url, "runs", "show", "NOPE")
    assert_one_line_error(result, 1, "run 'NOPE' not found")


def test_runs_delete_and_restore(recorded):
    deleted = invoke(recorded.url, "runs", "delete", recorded.slow_id)
    assert "deleted run 'slow'" in deleted.stdout
    names = [r["name"] for r in parse_json(
        invoke(recorded.url, "runs", "list", "--format", "json").stdout)]
    assert "slow" not in names
    restored = invoke(recorded.url, "runs", "restore", recorded.slow_id,
                      "--format", "json")
    assert parse_json(restored.stdout)["deleted_at"] is None


# ----------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------


def test_metrics_history_json_and_ranges(recorded):
    full = invoke(recorded.url, "metrics", "history", recorded.fast_id, "val_acc",
                  "--format", "json")
    points = parse_json(full.stdout)
    assert [p["step"] for p in points] == list(range(1, 13))
    assert points[0]["ci_low"] == 0.4
    assert points[0]["split"] == "validation"

    ranged = invoke(recorded.url, "metrics", "history", recorded.fast_id, "val_acc",
                    "--min-step", "3", "--max-step", "5", "--format", "json")
    assert [p["step"] for p in parse_json(ranged.stdout)] == [3, 4, 5]

    sampled = invoke(recorded.url, "metrics", "history", recorded.fast_id, "val_acc",
                     "--max-points", "3", "--format", "json")
    assert len(parse_json(sampled.stdout)) == 3


def test_metrics_history_time_window(recorded):
    result = invoke(recorded.url, "metrics", "history", recorded.fast_id, "val_acc",
                    "--end", "2000-01-01T00:00:00Z", "--format", "json")
    assert result.exit_code == 0, result.output
    assert parse_json(result.stdout) == []


def test_metrics_history_invalid_start(recorded):
    result = invoke(recorded.url, "metrics", "history", recorded.fast_id, "val_acc",
                    "--start", "yesterday")
    assert_one_line_error(result, 1, "'yesterday'", "ISO 8601")


def test_metrics_history_unknown_key_lists_known(recorded):
    result = invoke(recorded.url, "metrics", "history", recorded.fast_id, "accuracy")
    assert_one_line_error(result, 1, "no metric 'accuracy'", "val_acc, val_loss")


def test_metrics_latest_csv(recorded):
    result = invoke(recorded.url, "metrics", "latest", recorded.slow_id,
                    "--format", "csv")
    rows = {row["key"]: row for row in parse_csv(result.stdout)}
    assert rows["val_loss"]["value"] == "Infinity"
    assert rows["val_acc"]["step"] == "12"


# ----------------------------------------------------------------------
# compare, best, aggregate
# ----------------------------------------------------------------------


def test_compare_json_and_table(recorded):
    result = invoke(recorded.url, "compare", recorded.fast_id, recorded.slow_id,
                    "--format", "json")
    comparison = parse_json(result.stdout)
    assert comparison["params"]["optimizer.lr"] == [0.1, 0.01]
    assert comparison["metrics"]["val_loss"] == ["NaN", "Infinity"]

    table = invoke(recorded.url, "compare", recorded.fast_id, recorded.slow_id)
    assert "params.optimizer.name" in table.stdout
    assert "adam" in table.stdout

    rows = parse_csv(invoke(recorded.url, "compare", recorded.fast_id, recorded.slow_id,
                            "--format", "csv").stdout)
    lr = next(row for row in rows if row["field"] == "params.optimizer.lr")
    assert lr[recorded.slow_id] == "0.01"


def test_compare_needs_two_runs(recorded):
    result = invoke(recorded.url, "compare", recorded.fast_id)
    assert_one_line_error(result, 2, "at least 2 run ids")


def test_best_ranks_and_min(recorded):
    result = invoke(recorded.url, "best", "val_acc", "--format", "json")
    best = parse_json(result.stdout)
    assert [row["name"] for row in best] == ["fast", "slow"]
    assert best[0]["rank"] == 1

    top = parse_json(invoke(recorded.url, "best", "val_acc", "-k", "1", "--min",
                            "--format", "json").stdout)
    assert [row["name"] for row in top] == ["slow"]

    filtered = parse_json(invoke(recorded.url, "best", "val_acc", "--format", "json",
                                 "--filter", "params.optimizer.name = 'adam'").stdout)
    assert [row["name"] for row in filtered] == ["slow"]


def test_best_bad_filter_points_into_user_text(recorded):
    result = invoke(recorded.url, "best", "val_acc", "--filter", "params.lr = = 1")
    assert_one_line_error(result, 1, "invalid filter 'params.lr = = 1'", "position 12")


def test_aggregate_groups_by_param(recorded):
    result = invoke(recorded.url, "aggregate", "val_acc", "--group-by",
                    "params.optimizer.name", "--format", "json")
    groups = {row["group"]: row for row in parse_json(result.stdout)}
    assert set(groups) == {"adam", "sgd"}
    assert groups["sgd"]["count"] == 1
    assert groups["sgd"]["mean"] == pytest.approx(0.86)

    nan_counted = parse_json(invoke(recorded.url, "aggregate", "val_loss",
                                    "--format", "json").stdout)
    assert nan_counted[0]["nan_count"] == 1
    assert nan_counted[0]["count"] == 1
    assert nan_counted[0]["mean"] == "Infinity"


# ----------------------------------------------------------------------
# lineage
# ----------------------------------------------------------------------


def test_lineage_upstream_reaches_raw_dataset(recorded):
    result = invoke(recorded.url, "lineage", "upstream", recorded.version_id,
                    "--format", "json")
    graph = parse_json(result.stdout)
    distances = {node["id"]: node["distance"] for node in graph["nodes"]}
    assert distances[recorded.fast_id] == 1
    assert distances[recorded.clean_id] == 2
    assert distances[recorded.raw_id] == 3
    kinds = {node["kind"] for node in graph["nodes"]}
    assert kinds == {"model_version", "run", "dataset", "pipeline"}
    types_seen = {edge["type"] for edge in graph["edges"]}
    assert types_seen == {"produced", "consumed", "derived_from", "child_of"}


def test_lineage_tree_text(recorded):
    result = invoke(recorded.url, "lineage", "upstream", "classifier@production")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"model_version classifier v1 ({recorded.version_id})"
    assert f"produced by run fast ({recorded.fast_id})  [distance 1]" in lines[1]
    assert any(f"derived from dataset raw@1 ({recorded.raw_id})  [distance 3]" in line
               for line in lines)
    assert any("produced by pipeline cleaner" in line for line in lines)


def test_lineage_tree_depth_matches_distance(recorded):
    result = invoke(recorded.url, "lineage", "upstream", recorded.version_id)
    expanded = [line for line in result.stdout.splitlines()[1:] if "[distance" in line]
    assert len(expanded) == 5
    for line in expanded:
        branch_column = next(i for i, char in enumerate(line) if char in "├└")
        depth = branch_column // 4 + 1
        assert line.endswith(f"[distance {depth}]"), line


def test_lineage_depth_limits_traversal(recorded):
    result = invoke(recorded.url, "lineage", "upstream", recorded.version_id,
                    "--depth", "1", "--format", "json")
    assert {node["id"] for node in parse_json(result.stdout)["nodes"]} == \
        {recorded.version_id, recorded.fast_id}


def test_lineage_downstream_from_dataset_version(recorded):
    result = invoke(recorded.url, "lineage", "downstream", "raw@1", "--format", "csv")
    rows = {row["id"]: row for row in parse_csv(result.stdout)}
    assert rows[recorded.raw_id]["distance"] == "0"
    assert rows[recorded.clean_id]["distance"] == "1"
    assert rows[recorded.version_id]["kind"] == "model_version"


def test_lineage_unknown_node(recorded):
    result = invoke(recorded.url, "lineage", "upstream", "nothing")
    assert_one_line_error(result, 1, "lineage node 'nothing' not found")
    named = invoke(recorded.url, "lineage", "upstream", "classifier@staging")
    assert_one_line_error(named, 1, "'classifier@staging'", "MODEL@ALIAS")


# ----------------------------------------------------------------------
# models and datasets
# ----------------------------------------------------------------------


def test_models_list_show_versions(recorded):
    result = invoke(recorded.url, "models", "list", "--format", "json")
    listed = parse_json(result.stdout)
    assert listed[0]["name"] == "classifier"
    assert listed[0]["aliases"] == {"production": 1}
    assert listed[0]["latest_version"] == 1

    model = parse_json(invoke(recorded.url, "models", "show", "classifier",
                              "--format", "json").stdout)
    assert model["versions"][0]["run_id"] == recorded.fast_id
    assert model["versions"][0]["aliases"] == ["production"]

    versions = parse_csv(invoke(recorded.url, "models", "versions", "classifier",
                                "--format", "csv").stdout)
    assert [row["version"] for row in versions] == ["1"]

    table = invoke(recorded.url, "models", "show", "classifier")
    assert "Versions" in table.stdout
    assert recorded.version_id in table.stdout


def test_models_alias_rollback_delete_restore(recorded):
    store = mltrail.connect(recorded.url)
    store.register_model_version("classifier", run_id=recorded.slow_id)

    moved = invoke(recorded.url, "models", "alias", "classifier", "production", "2")
    assert moved.exit_code == 0, moved.output
    assert "alias 'production' -> version 2 (was 1)" in moved.stdout

    rolled = invoke(recorded.url, "models", "rollback", "classifier", "production")
    assert "rolled back to version 1 (was 2)" in rolled.stdout
    assert store.get_model("classifier").aliases == {"production": 1}

    deleted = invoke(recorded.url, "models", "delete-version", "classifier", "2")
    assert deleted.exit_code == 0, deleted.output
    versions = parse_json(invoke(recorded.url, "models", "versions", "classifier",
                                 "--format", "json").stdout)
    assert [v["version"] for v in versions] == [1]

    restored = invoke(recorded.url, "models", "restore-version", "classifier", "2",
                      "--format", "json")
    assert parse_json(restored.stdout)["deleted_at"] is None


def test_models_delete_aliased_version_conflicts(recorded):
    result = invoke(recorded.url, "models", "delete-version", "classifier", "1")
    assert_one_line_error(result, 1, "alias", "production", "move them first")


def test_models_rollback_without_history(recorded):
    result = invoke(recorded.url, "models", "rollback", "classifier", "production")
    assert_one_line_error(result, 1, "no earlier version")


def test_models_show_unknown(recorded):
    result = invoke(recorded.url, "models", "show", "ghost")
    assert_one_line_error(result, 1, "model 'ghost' not found")


def test_datasets_list_and_show(recorded):
    result = invoke(recorded.url, "datasets", "list", "--format", "json")
    listed = parse_json(result.stdout)
    assert [d["name"] for d in listed] == ["clean", "raw"]
    assert listed[0]["provenance"]["pipeline"] == "cleaner"

    table = invoke(recorded.url, "datasets", "show", "clean")
    assert table.exit_code == 0, table.output
    for text in ("Provenance", "cleaner", "Preprocessing steps", "step=dedupe",
                 "sha256:"):
        assert text in table.stdout

    by_version = parse_json(invoke(recorded.url, "datasets", "show", "raw", "--version",
                                   "1", "--format", "json").stdout)
    assert by_version["source_uri"] == "file:///data/raw.csv"

    missing = invoke(recorded.url, "datasets", "show", "raw", "--version", "9")
    assert_one_line_error(missing, 1, "dataset 'raw' version '9' not found")


# ----------------------------------------------------------------------
# audit
# ----------------------------------------------------------------------


def test_audit_log_of_entity(recorded):
    events = parse_json(invoke(recorded.url, "audit", "log", recorded.fast_id,
                               "--format", "json").stdout)
    actions = [event["action"] for event in events]
    assert actions[0] == "create"
    assert "set_status" in actions
    assert all(event["entity_id"] == recorded.fast_id for event in events)

    last = parse_json(invoke(recorded.url, "audit", "log", "--last", "2",
                             "--format", "json").stdout)
    assert len(last) == 2
    assert last[1]["action"] == "set_alias"

    rows = parse_csv(invoke(recorded.url, "audit", "log", recorded.fast_id,
                            "--format", "csv").stdout)
    assert json.loads(rows[0]["details"])["record"]["name"] == "fast"


def test_audit_verify_intact_and_broken(recorded):
    intact = invoke(recorded.url, "audit", "verify")
    assert intact.exit_code == 0
    assert "audit chain intact" in intact.stdout

    store = mltrail.connect(recorded.url)
    events = store.backend.audit.raw_events()
    events[4] = {**events[4], "actor": "mallory"}
    broken = invoke(recorded.url, "audit", "verify")
    assert_one_line_error(broken, 1, "broken at seq 5", "altered")

    as_json = invoke(recorded.url, "audit", "verify", "--format", "json")
    assert as_json.exit_code == 1
    assert parse_json(as_json.stdout)["broken_at"] == 5


# ----------------------------------------------------------------------
# emulators, demo and lazily loaded commands
# ----------------------------------------------------------------------


@dataclass
class FakeState:
    """The fields of a launcher's state that the CLI prints."""

    name: str
    pid: int
    port: int
    url: str
    started_at: float
    log_path: str


@pytest.fixture
def fake_launchers(monkeypatch):
    """Replace the launcher functions, so no server is started or stopped."""
    from mltrail.conformance import emulators
    from mltrail.conformance.emulators import EmulatorError

    calls = []

    def up(name):
        calls.append(("up", name))
        if name != "dynamodb":
            raise EmulatorError(f"no emulator named {name!r}")
        return FakeState(name=name, pid=4242, port=8000,
                         url="dynamodb://127.0.0.1:8000", started_at=0.0,
                         log_path="/tmp/dynamodb.log")

    def down(name):
        calls.append(("down", name))
        return name == "dynamodb"

    def status():
        return [FakeState(name="dynamodb", pid=4242, port=8000,
                          url="dynamodb://127.0.0.1:8000", started_at=0.0,
                          log_path="/tmp/dynamodb.log")]

    monkeypatch.setattr(emulators, "up", up)
    monkeypatch.setattr(emulators, "down", down)
    monkeypatch.setattr(emulators, "status", status)
    return calls


def test_emulators_up_prints_url_last(store_url, fake_launchers):
    result = invoke(store_url, "emulators", "up", "dynamodb")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "dynamodb://127.0.0.1:8000"
    assert fake_launchers == [("up", "dynamodb")]


def test_emulators_up_error_is_one_line(store_url, fake_launchers):
    result = invoke(store_url, "emulators", "up", "oracle")
    assert_one_line_error(result, 1, "no emulator named 'oracle'")


def test_emulators_down_and_status(store_url, fake_launchers):
    stopped = invoke(store_url, "emulators", "down", "dynamodb")
    assert "stopped dynamodb" in stopped.stdout
    idle = invoke(store_url, "emulators", "down", "mongodb")
    assert idle.exit_code == 0
    assert "mongodb: not running" in idle.stderr

    result = invoke(store_url, "emulators", "status", "--format", "json")
    states = parse_json(result.stdout)
    assert states == [{"name": "dynamodb", "pid": 4242, "port": 8000,
                       "url": "dynamodb://127.0.0.1:8000",
                       "started_at": "1970-01-01T00:00:00.000000Z",
                       "log_path": "/tmp/dynamodb.log"}]


def test_demo_command_passes_options(store_url, monkeypatch):
    from mltrail import demo

    received = {}

    def fake_main(url, quick=False, seed=0, out=print):
        received.update(url=url, quick=quick, seed=seed)
        out("demo output")

    monkeypatch.setattr(demo, "main", fake_main)
    result = invoke(store_url, "demo", "--quick", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert received == {"url": store_url, "quick": True, "seed": 7}
    assert result.stdout == "demo output\n"

    quiet = invoke(store_url, "--quiet", "demo")
    assert quiet.stdout == ""


def test_lazy_command_is_loaded_on_use(store_url, monkeypatch):
    module = types.ModuleType("mltrail_test_lazy_command")

    @click.command("fsck")
    def fsck() -> None:
        """Check references."""
        click.echo("checked")

    module.fsck = fsck
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.LAZY_COMMANDS, "fsck", f"{module.__name__}:fsck")

    assert "fsck" in CliRunner().invoke(main, ["--help"]).stdout
    result = invoke(store_url, "fsck")
    assert result.exit_code == 0, result.output
    assert result.stdout == "checked\n"


def test_lazy_command_with_missing_module(store_url, monkeypatch):
    monkeypatch.setitem(cli.LAZY_COMMANDS, "archive", "mltrail_no_such_module:archive")
    result = invoke(store_url, "archive")
    assert_one_line_error(result, 1, "command 'archive' could not be loaded")
