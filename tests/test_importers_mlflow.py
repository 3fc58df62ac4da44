"""Import of MLflow file stores, and export back to one that MLflow opens."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import mltrail
import pytest
import yaml
from click.testing import CliRunner
from mltrail import cli as main_cli
from mltrail.domain import EdgeType, RunStatus
from mltrail.importers import export_mlflow, import_path
from mltrail.importers.cli import export_command, import_command

RUN_A = "a" * 32
RUN_B = "b" * 32
RUN_C = "c" * 32
RUN_D = "d" * 32
RUN_E = "e" * 32
RUN_F = "f" * 32
RUN_G = "0123456789abcdef0123456789abcdef"
RUN_TRASHED = "9" * 32
MODEL_ID = "m-0123456789abcdef0123456789abcdef"
DATASET_DIR = "5" * 32
T0 = 1_700_000_000_123

# Metric lines of run A's `loss`, as MLflow releases wrote them: two fields
# (no step), three, five (dataset name and digest, MLflow 3), four (a trailing
# id), non-finite values, a repeated line and a malformed one.
LOSS_LINES = [
    f"{T0} 0.5",
    f"{T0 + 1} 0.1000000000000000055511151231257827 1",
    f"{T0 + 2} nan 2",
    f"{T0 + 3} inf 3 train_ds 4a5b6c",
    f"{T0 + 3} inf 3 train_ds 4a5b6c",
    f"{T0 + 4} -inf 4 {RUN_A}",
    f"{T0 + 5} -0.0 5",
    f"{T0 + 6} 1.7976931348623157e+308 6",
    "garbage line here x y z w",
]
LOSS_EXPECTED = [
    (0, T0, 0.5),
    (1, T0 + 1, 0.1),
    (2, T0 + 2, float("nan")),
    (3, T0 + 3, float("inf")),
    (4, T0 + 4, float("-inf")),
    (5, T0 + 5, -0.0),
    (6, T0 + 6, 1.7976931348623157e308),
]


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, timezone.utc).replace(
        microsecond=(value % 1000) * 1000
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_yaml(path: Path, data: dict) -> None:
    write(path, yaml.safe_dump(data, sort_keys=True))


def write_values(folder: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        write(folder / key, value)


def run_meta(run_id: str, experiment_id: str, **fields) -> dict:
    meta = {
        "artifact_uri": f"file:///mlruns/{experiment_id}/{run_id}/artifacts",
        "end_time": None,
        "entry_point_name": "",
        "experiment_id": experiment_id,
        "lifecycle_stage": "active",
        "run_id": run_id,
        "run_uuid": run_id,
        "run_name": f"run-{run_id[:4]}",
        "source_name": "",
        "source_type": 4,
        "source_version": "",
        "start_time": T0,
        "status": 3,
        "tags": [],
        "user_id": "alice",
    }
    meta.update(fields)
    return meta


def build_mlruns(root: Path, outside: Path) -> Path:
    """Write an `mlruns/` folder with the quirks of MLflow 1.x to 3.x file stores."""
    mlruns = root / "mlruns"
    # A legacy experiment: integer id, no times, no lifecycle stage.
    write_yaml(
        mlruns / "1" / "meta.yaml",
        {"artifact_location": "./mlruns/1", "experiment_id": 1, "name": "legacy"},
    )
    write_yaml(
        mlruns / "1" / RUN_F / "meta.yaml",
        {
            "artifact_uri": "./mlruns/1/f/artifacts",
            "end_time": T0 + 50,
            "experiment_id": 1,
            "name": "legacy-run",
            "run_uuid": RUN_F,
            "source_name": "train.py",
            "source_type": 4,
            "source_version": "abc123",
            "start_time": T0,
            "status": 3,
            "tags": [],
            "user_id": "bob",
        },
    )
    write(mlruns / "1" / RUN_F / "metrics" / "acc", f"{T0} 0.75\n")

    exp = mlruns / "123"
    write_yaml(
        exp / "meta.yaml",
        {
            "artifact_location": "file:///mlruns/123",
            "creation_time": T0 - 1000,
            "experiment_id": "123",
            "last_update_time": T0,
            "lifecycle_stage": "active",
            "name": "vision",
        },
    )
    write_values(
        exp / "tags",
        {"mlflow.note.content": "image models", "team/owner": "vision-team"},
    )
    write_yaml(
        exp / "datasets" / DATASET_DIR / "meta.yaml",
        {
            "name": "cifar10",
            "digest": "4a5b6c",
            "source_type": "local",
            "source": '{"uri": "/data/cifar10.parquet"}',
            "schema": '{"mlflow_colspec": [{"name": "label", "type": "long"}]}',
            "profile": '{"num_rows": 50000}',
        },
    )

    run_a = exp / RUN_A
    write_yaml(
        run_a / "meta.yaml",
        run_meta(RUN_A, "123", end_time=T0 + 900, deleted_time=None),
    )
    write_values(
        run_a / "params",
        {
            "optimizer/lr": "0.001",
            "batch.size": "64",
            "empty": "",
            "note": "two\nlines\r\n",
        },
    )
    write_values(
        run_a / "tags",
        {
            "mlflow.runName": "run-aaaa",
            "mlflow.source.git.commit": "deadbeef",
            "mlflow.user": "alice",
            "team": "vision",
            "mlflow.log-model.history": '[{"artifact_path": "model", "flavors": {}}]',
        },
    )
    write(run_a / "metrics" / "loss", "\n".join(LOSS_LINES) + "\n")
    write(run_a / "metrics" / "val" / "acc", f"{T0} 0.25 0\n{T0 + 9} 0.5 1\n")
    write_yaml(
        run_a / "inputs" / "input1" / "meta.yaml",
        {
            "source_type": "DATASET",
            "source_id": DATASET_DIR,
            "destination_type": "RUN",
            "destination_id": DATASET_DIR,
            "tags": {"mlflow.data.context": "train"},
        },
    )
    write_yaml(
        run_a / "outputs" / MODEL_ID / "meta.yaml",
        {
            "source_type": "RUN_OUTPUT",
            "source_id": MODEL_ID,
            "destination_type": "MODEL_OUTPUT",
            "destination_id": MODEL_ID,
            "tags": {},
            "step": 0,
        },
    )

    # A nested run, with its status written as text as some tools do.
    write_yaml(
        exp / RUN_B / "meta.yaml",
        run_meta(RUN_B, "123", status="KILLED", start_time=T0 + 10, end_time=T0 + 20),
    )
    write_values(exp / RUN_B / "tags", {"mlflow.parentRunId": RUN_A})
    write_yaml(
        exp / RUN_C / "meta.yaml", run_meta(RUN_C, "123", status=2, start_time=None)
    )
    meta_d = run_meta(RUN_D, "123", start_time=T0 + 30)
    del meta_d["status"]  # MLflow reads a missing status as RUNNING
    write_yaml(exp / RUN_D / "meta.yaml", meta_d)
    write_yaml(
        exp / RUN_E / "meta.yaml",
        run_meta(
            RUN_E,
            "123",
            status=4,
            end_time=T0 + 40,
            lifecycle_stage="deleted",
            deleted_time=T0 + 100,
        ),
    )
    # A run whose meta names another experiment: MLflow ignores it.
    write_yaml(exp / RUN_G / "meta.yaml", run_meta(RUN_G, "999"))

    write_yaml(
        exp / "models" / MODEL_ID / "meta.yaml",
        {
            "artifact_location": f"file:///mlruns/123/models/{MODEL_ID}/artifacts",
            "creation_timestamp": T0 + 500,
            "experiment_id": "123",
            "last_updated_timestamp": T0 + 500,
            "lifecycle_stage": "active",
            "model_id": MODEL_ID,
            "model_type": None,
            "name": "resnet",
            "source_run_id": RUN_A,
            "status": 2,
            "status_message": None,
        },
    )
    write_values(exp / "models" / MODEL_ID / "params", {"depth": "50"})
    write(exp / "models" / MODEL_ID / "metrics" / "loss", f"{T0 + 1} 0.1 1 {RUN_A}\n")

    trash = mlruns / ".trash" / "456"
    write_yaml(
        trash / "meta.yaml",
        {
            "artifact_location": "file:///mlruns/456",
            "creation_time": T0 - 5000,
            "experiment_id": "456",
            "last_update_time": T0 + 7000,
            "lifecycle_stage": "deleted",
            "name": "old",
        },
    )
    write_yaml(
        trash / RUN_TRASHED / "meta.yaml",
        run_meta(RUN_TRASHED, "456", lifecycle_stage="deleted", deleted_time=T0 + 7000),
    )

    registry = mlruns / "models" / "clf"
    write_yaml(
        registry / "meta.yaml",
        {
            "creation_timestamp": T0 + 1000,
            "description": "classifier",
            "last_updated_timestamp": T0 + 2000,
            "name": "clf",
        },
    )
    write_values(registry / "tags", {"owner": "vision-team"})
    write_values(registry / "aliases", {"champion": "2"})
    stages = {
        1: ("Archived", RUN_A),
        2: ("Production", RUN_A),
        3: ("Deleted_Internal", RUN_A),
        4: ("Staging", "7" * 32),
    }
    for number, (stage, run_id) in stages.items():
        write_yaml(
            registry / f"version-{number}" / "meta.yaml",
            {
                "creation_timestamp": T0 + 1000 + number,
                "current_stage": stage,
                "description": None,
                "last_updated_timestamp": T0 + 2000,
                "name": "clf",
                "run_id": run_id,
                "run_link": None,
                "source": f"runs:/{run_id}/model",
                "status": "READY",
                "status_message": None,
                "user_id": None,
                "version": number,
            },
        )
    write_values(registry / "version-2" / "tags", {"validated": "yes"})

    # Links that lead out of the folder: a param file and a whole run folder.
    secret = outside / "secret.txt"
    write(secret, "do-not-read")
    (run_a / "params" / "leak").symlink_to(secret)
    (exp / ("8" * 32)).symlink_to(outside, target_is_directory=True)
    return mlruns


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = (
        "memory://" if request.param == "memory" else f"local://{tmp_path / 'store.db'}"
    )
    opened = mltrail.connect(url)
    yield opened
    opened.close()


@pytest.fixture
def mlruns(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_mlruns(tmp_path / "source", outside)


def all_runs(store):
    return {run.id: run for run in store.iter_runs(include_deleted=True)}


def history(store, run_id, key):
    return [(p.step, p.timestamp, p.value) for p in store.metric_history(run_id, key)]


def test_experiments_keep_names_times_and_deletion(store, mlruns):
    import_path(store, "mlflow", mlruns)

    vision = store.get_experiment("vision")
    assert vision.created_at == millis(T0 - 1000)
    assert vision.description == "image models"
    assert vision.tags["team/owner"] == "vision-team"
    assert vision.tags["mltrail.source.id"] == "123"
    assert vision.tags["mltrail.source.format"] == "mlflow"
    old = store.get_experiment("old")
    assert old.deleted_at == millis(T0 + 7000)
    legacy = store.get_experiment("legacy")
    assert legacy.tags["mltrail.source.id"] == "1"
    assert legacy.deleted_at is None


def test_runs_map_every_status_and_lifecycle(store, mlruns):
    import_path(store, "mlflow", mlruns)
    runs = all_runs(store)

    a, b = runs[f"mlflow-run-{RUN_A}"], runs[f"mlflow-run-{RUN_B}"]
    c, d = runs[f"mlflow-run-{RUN_C}"], runs[f"mlflow-run-{RUN_D}"]
    e, f = runs[f"mlflow-run-{RUN_E}"], runs[f"mlflow-run-{RUN_F}"]
    assert a.status == RunStatus.COMPLETED
    assert b.status == RunStatus.KILLED
    assert c.status == RunStatus.PENDING
    assert d.status == RunStatus.RUNNING
    assert e.status == RunStatus.FAILED
    assert f.status == RunStatus.COMPLETED
    assert a.start_time == millis(T0)
    assert a.end_time == millis(T0 + 900)
    assert a.created_at == millis(T0)
    assert c.start_time is None
    assert e.deleted_at == millis(T0 + 100)
    assert runs[f"mlflow-run-{RUN_TRASHED}"].deleted_at == millis(T0 + 7000)
    assert f"mlflow-run-{RUN_G}" not in runs
    assert a.trainer == "alice"
    assert a.name == "run-aaaa"
    assert f.name == "legacy-run"
    assert f.code_version == {"git_commit": "abc123"}
    assert f.tags["mlflow.source.name"] == "train.py"
    assert a.code_version == {"git_commit": "deadbeef"}


def test_params_keep_slash_keys_and_text(store, mlruns):
    import_path(store, "mlflow", mlruns)
    run = store.get_run(f"mlflow-run-{RUN_A}")

    assert run.params == {
        "optimizer/lr": "0.001",
        "batch.size": "64",
        "empty": "",
        "note": "two\nlines\r\n",
    }
    assert run.tags["team"] == "vision"
    assert run.tags["mltrail.source.id"] == RUN_A
    assert run.artifact_uris["artifacts"] == f"file:///mlruns/123/{RUN_A}/artifacts"
    assert (
        run.artifact_uris["model:model"]
        == f"file:///mlruns/123/{RUN_A}/artifacts/model"
    )


def test_metric_values_are_bit_exact(store, mlruns):
    summary = import_path(store, "mlflow", mlruns)
    run_id = f"mlflow-run-{RUN_A}"
    points = history(store, run_id, "loss")

    assert [(step, when) for step, when, _ in points] == [
        (step, millis(ms)) for step, ms, _ in LOSS_EXPECTED
    ]
    for (_, _, value), (_, _, expected) in zip(points, LOSS_EXPECTED):
        assert bits(value) == bits(expected)
    assert history(store, run_id, "val/acc")[1] == (1, millis(T0 + 9), 0.5)
    skipped = {(o.kind, o.message): o.count for o in summary.skips.values()}
    assert skipped[("metric_point", "exact repeat of an earlier line")] == 1
    assert skipped[("metric_point", "line has 7 fields; expected 2 to 6")] == 1


def test_nested_runs_get_parent_and_lineage(store, mlruns):
    import_path(store, "mlflow", mlruns)
    child = store.get_run(f"mlflow-run-{RUN_B}")

    assert child.parent_run_id == f"mlflow-run-{RUN_A}"
    upstream = store.upstream(child.id, depth=1)
    assert f"mlflow-run-{RUN_A}" in upstream.nodes
    assert upstream.edges[0].type == EdgeType.CHILD_OF


def test_datasets_and_logged_models_become_lineage(store, mlruns):
    import_path(store, "mlflow", mlruns)
    run = store.get_run(f"mlflow-run-{RUN_A}")

    dataset = store.get_dataset("cifar10", "4a5b6c")
    assert run.dataset_ids == [dataset.id]
    assert dataset.source_uri == "/data/cifar10.parquet"
    assert dataset.schema == {"mlflow_colspec": [{"name": "label", "type": "long"}]}
    assert run.tags[f"mlflow.input.{DATASET_DIR}.mlflow.data.context"] == "train"
    downstream = store.downstream(run.id, depth=1)
    model_node = f"mlflow-logged-model-{MODEL_ID}"
    assert model_node in downstream.nodes
    assert downstream.details[model_node].label == f"resnet ({MODEL_ID})"
    assert '"depth": "50"' in run.tags[f"mlflow.logged_model.{MODEL_ID}"]


def test_registry_versions_stages_and_aliases(store, mlruns):
    summary = import_path(store, "mlflow", mlruns)
    model = store.get_model("clf")
    versions = store.list_model_versions("clf", include_deleted=True)

    assert model.description == "classifier"
    assert model.tags["owner"] == "vision-team"
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert versions[2].deleted_at is not None
    assert [v.tags["mlflow.stage"] for v in versions] == [
        "Archived",
        "Production",
        "Deleted_Internal",
        "Staging",
    ]
    assert versions[1].run_id == f"mlflow-run-{RUN_A}"
    assert versions[1].tags["validated"] == "yes"
    assert versions[3].run_id is None
    assert model.aliases == {
        "champion": 2,
        "production": 2,
        "staging": 4,
        "archived": 1,
    }
    notes = {o.message for o in summary.notes.values()}
    assert "producing run was not imported; version has no run" in notes


def test_import_twice_adds_nothing(store, mlruns):
    first = import_path(store, "mlflow", mlruns)
    runs_before = all_runs(store)
    points_before = history(store, f"mlflow-run-{RUN_A}", "loss")
    audit_before = sum(1 for _ in store.audit_log())

    second = import_path(store, "mlflow", mlruns)

    assert sum(second.created.values()) == 0
    assert sum(second.updated.values()) == 0
    assert second.unchanged["run"] == first.created["run"]
    assert second.unchanged["metric_point"] == first.created["metric_point"]
    assert all_runs(store).keys() == runs_before.keys()
    assert len(history(store, f"mlflow-run-{RUN_A}", "loss")) == len(points_before)
    assert sum(1 for _ in store.audit_log()) == audit_before
    assert store.verify_audit().ok


def test_dry_run_writes_nothing(store, mlruns):
    preview = import_path(store, "mlflow", mlruns, dry_run=True)

    assert list(store.iter_runs(include_deleted=True)) == []
    assert list(store.list_experiments(include_deleted=True)) == []
    real = import_path(store, "mlflow", mlruns)
    assert preview.created == real.created
    assert "dry run" in preview.render()


def test_links_out_of_the_folder_are_rejected(store, mlruns):
    summary = import_path(store, "mlflow", mlruns)
    run = store.get_run(f"mlflow-run-{RUN_A}")

    assert "leak" not in run.params
    assert f"mlflow-run-{'8' * 32}" not in all_runs(store)
    escapes = [
        o
        for o in summary.skips.values()
        if o.message == "symbolic link leads outside the import folder"
    ]
    assert escapes and escapes[0].count == 2


def test_progress_reports_each_run(store, mlruns):
    reports = []
    import_path(store, "mlflow", mlruns, progress=reports.append)

    runs = [r for r in reports if r.phase == "runs"]
    assert runs[0].done == 0
    assert runs[-1].done == runs[-1].total
    assert runs[-1].total == 8


def test_cli_import_under_main_group(monkeypatch, mlruns, tmp_path):
    monkeypatch.setitem(
        main_cli.LAZY_COMMANDS, "import", "mltrail.importers.cli:import_command"
    )
    url = f"local://{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(
        main_cli.main, ["--store", url, "import", "mlflow", str(mlruns), "--dry-run"]
    )

    assert result.exit_code == 0, result.output
    assert "dry run: import of mlflow data" in result.output
    with mltrail.connect(url) as opened:
        assert list(opened.iter_runs()) == []
    monkeypatch.setitem(
        main_cli.LAZY_COMMANDS, "export", "mltrail.importers.cli:export_command"
    )
    exported = CliRunner().invoke(
        main_cli.main,
        [
            "--store",
            url,
            "--format",
            "json",
            "export",
            "--format",
            "mlflow",
            str(tmp_path / "out"),
        ],
    )
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["direction"] == "export"


def test_cli_commands_run_standalone(monkeypatch, mlruns, tmp_path):
    url = f"local://{tmp_path / 'standalone.db'}"
    monkeypatch.setenv("MLTRAIL_STORE", url)
    imported = CliRunner().invoke(import_command, ["mlflow", str(mlruns), "--quiet"])
    exported = CliRunner().invoke(
        export_command, ["--format", "mlflow", str(tmp_path / "out")]
    )

    assert imported.exit_code == 0, imported.output
    assert imported.output == ""
    assert exported.exit_code == 0, exported.output
    assert "export of mlflow data" in exported.output
    refused = CliRunner().invoke(
        export_command, ["--format", "mlflow", str(tmp_path / "out")]
    )
    assert refused.exit_code == 1
    assert "is not an empty folder" in refused.output


@pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed; install the test extra "
    "(mlflow-skinny) to read the export back with MLflow",
)
def test_export_opens_in_mlflow(store, mlruns, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import_path(store, "mlflow", mlruns)
    target = tmp_path / "exported"
    summary = export_mlflow(store, target)
    # MLflow 3.18 opens file stores only when this opt-in is set.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=target.as_uri(), registry_uri=target.as_uri())

    experiments = {e.name: e for e in client.search_experiments(view_type=3)}
    assert set(experiments) == {"vision", "legacy", "old"}
    assert experiments["vision"].experiment_id == "123"
    assert experiments["old"].lifecycle_stage == "deleted"
    run = client.get_run(RUN_A)
    assert run.info.status == "FINISHED"
    assert run.info.start_time == T0
    assert run.info.end_time == T0 + 900
    assert run.data.params["optimizer/lr"] == "0.001"
    assert run.data.params["note"] == "two\nlines\r\n"
    assert run.data.tags["team"] == "vision"
    loss = client.get_metric_history(RUN_A, "loss")
    assert [(m.step, m.timestamp) for m in loss] == [
        (step, ms) for step, ms, _ in LOSS_EXPECTED
    ]
    for metric, (_, _, expected) in zip(loss, LOSS_EXPECTED):
        assert bits(metric.value) == bits(expected)
    child = client.get_run(RUN_B)
    assert child.info.status == "KILLED"
    assert child.data.tags["mlflow.parentRunId"] == RUN_A
    assert client.get_run(RUN_C).info.status == "SCHEDULED"
    assert client.get_run(RUN_E).info.lifecycle_stage == "deleted"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["cifar10"]

    version = client.get_model_version_by_alias("clf", "champion")
    assert int(version.version) == 2
    assert version.current_stage == "Production"
    assert version.run_id == RUN_A
    assert version.creation_timestamp == T0 + 1002
    numbers = sorted(int(v.version) for v in client.search_model_versions("name='clf'"))
    assert numbers == [1, 2, 4]
    assert summary.created["run"] == 7
    assert os.path.isdir(target / ".trash" / "456")


def test_reimport_brings_runs_forward(store, mlruns):
    import_path(store, "mlflow", mlruns)
    run_d = mlruns / "123" / RUN_D
    meta = yaml.safe_load((run_d / "meta.yaml").read_text())
    meta.update(status=3, end_time=T0 + 800)
    write_yaml(run_d / "meta.yaml", meta)
    write(run_d / "params" / "added", "yes")
    write(mlruns / "123" / RUN_A / "params" / "batch.size", "128")
    with open(
        mlruns / "123" / RUN_A / "metrics" / "loss", "a", encoding="utf-8"
    ) as handle:
        handle.write(f"{T0 + 7} 0.01 7\n")

    second = import_path(store, "mlflow", mlruns)

    finished = store.get_run(f"mlflow-run-{RUN_D}")
    assert finished.status == RunStatus.COMPLETED
    assert finished.start_time == millis(T0 + 30)
    assert finished.end_time == millis(T0 + 800)
    assert finished.params["added"] == "yes"
    assert history(store, f"mlflow-run-{RUN_A}", "loss")[-1] == (
        7,
        millis(T0 + 7),
        0.01,
    )
    assert len(history(store, f"mlflow-run-{RUN_A}", "loss")) == len(LOSS_EXPECTED) + 1
    assert store.get_run(f"mlflow-run-{RUN_A}").params["batch.size"] == "64"
    assert second.updated["run"] == 1
    assert second.created["metric_point"] == 1
    conflicts = [o for o in second.skips.values() if o.kind == "param"]
    assert "write-once" in conflicts[0].message


def test_unknown_format_and_missing_path_are_rejected(store, tmp_path):
    with pytest.raises(
        mltrail.InvalidInputError, match="import format 'wandb' is unknown"
    ):
        import_path(store, "wandb", tmp_path)
    with pytest.raises(mltrail.NotFoundError, match="does not exist"):
        import_path(store, "mlflow", tmp_path / "missing")


def test_import_needs_admin_role(mlruns):
    from mltrail.access import AccessPolicy, Role
    from mltrail.registry import open_backend

    policy = AccessPolicy(enabled=True, roles={"default": {"bob": Role.WRITER}})
    store = mltrail.Store(open_backend("memory://"), actor="bob", policy=policy)

    with pytest.raises(mltrail.PermissionDeniedError, match="'import' needs 'admin'"):
        import_path(store, "mlflow", mlruns)
    preview = import_path(store, "mlflow", mlruns, dry_run=True)
    assert preview.created["run"] == 7
    denied = [e for e in store.backend.audit.scan() if e.action == "denied"]
    assert len(denied) == 1
