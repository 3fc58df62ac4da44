"""Import of PyTorch Lightning CSVLogger folders."""

from __future__ import annotations

import math
import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import mltrail
import pytest
from mltrail.domain import RunStatus
from mltrail.importers import import_path

MTIME = 1_710_000_000  # 2024-03-09T16:00:00Z, set on every file

# Lightning 2.x sorts the header; rows leave metrics they did not log empty.
SORTED_CSV = """epoch,step,train_loss,val_acc
0,49,0.6931471805599453,
0,49,,0.5
1,99,0.1000000000000000055511151231257827,
1,99,,nan
"""
# Lightning 1.x kept insertion order, with step last.
OLD_CSV = """train_loss,epoch,step
inf,0,9
-inf,0,19
1e-05,1,29
not-a-number,1,39
"""

# hparams.yaml as yaml.dump writes objects it cannot represent plainly.
HPARAMS = """batch_size: 32
betas: !!python/tuple
- 0.9
- 0.999
lr: 0.001
args: !!python/object:argparse.Namespace
  depth: 50
  name: resnet
loss_fn: !!python/object/apply:torch.nn.modules.loss.CrossEntropyLoss
  state: {{}}
run_shell: !!python/object/apply:os.system
- touch {marker}
optimizer: !!python/name:torch.optim.adam.Adam ''
"""


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, (MTIME, MTIME))


def build_logs(root: Path, outside: Path, marker: Path) -> Path:
    logs = root / "lightning_logs"
    write(logs / "version_0" / "metrics.csv", SORTED_CSV)
    write(logs / "version_0" / "hparams.yaml", HPARAMS.format(marker=marker))
    write(logs / "version_2" / "metrics.csv", OLD_CSV)  # version_1 was deleted
    write(logs / "version_5" / "hparams.yaml", "{}\n")
    write(logs / "my_run" / "metrics.csv", "step,acc\n0,0.5\n")
    write(logs / "version_0" / "checkpoints" / "epoch=1.ckpt", "binary")
    write(outside / "metrics.csv", "step,acc\n0,0.99\n")
    (logs / "version_3").symlink_to(outside, target_is_directory=True)
    return logs


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = (
        "memory://" if request.param == "memory" else f"local://{tmp_path / 'store.db'}"
    )
    opened = mltrail.connect(url)
    yield opened
    opened.close()


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "executed"


@pytest.fixture
def logs(tmp_path, marker):
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_logs(tmp_path / "source", outside, marker)


def runs_by_name(store):
    return {run.name: run for run in store.iter_runs()}


def points(store, run_id, key):
    return [(p.step, p.value) for p in store.metric_history(run_id, key)]


def test_versions_become_runs_with_gaps(store, logs):
    import_path(store, "lightning", logs)
    runs = runs_by_name(store)

    assert set(runs) == {"version_0", "version_2", "version_5", "my_run"}
    experiment = store.get_experiment("lightning_logs")
    assert all(run.experiment_id == experiment.id for run in runs.values())
    assert all(run.status == RunStatus.COMPLETED for run in runs.values())
    modified = datetime.fromtimestamp(MTIME, timezone.utc)
    assert runs["version_0"].start_time == modified
    assert runs["version_0"].end_time == modified


def test_hparams_tags_are_never_executed(store, logs, marker):
    import_path(store, "lightning", logs)
    params = runs_by_name(store)["version_0"].params

    assert not marker.exists()
    assert params["batch_size"] == 32
    assert params["betas"] == [0.9, 0.999]
    assert (
        params["args"]
        == "!!python/object:argparse.Namespace\n  depth: 50\n  name: resnet"
    )
    assert params["loss_fn"].startswith(
        "!!python/object/apply:torch.nn.modules.loss.CrossEntropyLoss"
    )
    assert params["run_shell"] == f"!!python/object/apply:os.system\n- touch {marker}"
    assert params["optimizer"] == "!!python/name:torch.optim.adam.Adam ''"
    assert runs_by_name(store)["version_5"].params == {}


def test_sparse_rows_in_any_header_order(store, logs):
    summary = import_path(store, "lightning", logs)
    runs = runs_by_name(store)
    new, old = runs["version_0"].id, runs["version_2"].id

    loss = points(store, new, "train_loss")
    assert [step for step, _ in loss] == [49, 99]
    assert bits(loss[1][1]) == bits(0.1)
    acc = points(store, new, "val_acc")
    assert acc[0] == (49, 0.5)
    assert math.isnan(acc[1][1])
    assert points(store, new, "epoch") == [(49, 0.0), (49, 0.0), (99, 1.0), (99, 1.0)]
    old_loss = points(store, old, "train_loss")
    assert old_loss == [(9, math.inf), (19, -math.inf), (29, 1e-05)]
    skipped = [o for o in summary.skips.values() if o.kind == "metric_point"]
    assert skipped[0].message == "train_loss value 'not-a-number' is not a number"
    timestamps = {p.timestamp for p in store.metric_history(new, "train_loss")}
    assert timestamps == {datetime.fromtimestamp(MTIME, timezone.utc)}


def test_import_twice_adds_nothing(store, logs):
    first = import_path(store, "lightning", logs)
    second = import_path(store, "lightning", logs)

    assert sum(second.created.values()) == 0
    assert second.unchanged["run"] == first.created["run"] == 4
    assert second.unchanged["metric_point"] == first.created["metric_point"]


def test_growing_log_updates_the_same_run(store, logs):
    import_path(store, "lightning", logs)
    run_id = runs_by_name(store)["version_0"].id
    # Lightning rewrites the file with a wider header when a metric appears.
    rewritten = SORTED_CSV.replace(
        "epoch,step,train_loss,val_acc", "epoch,lr,step,train_loss,val_acc"
    )
    rows = rewritten.splitlines()
    rows[1:] = [row.replace(",", ",,", 1) for row in rows[1:]]
    write(logs / "version_0" / "metrics.csv", "\n".join(rows) + "\n2,0.01,149,0.05,\n")

    second = import_path(store, "lightning", logs)

    assert runs_by_name(store)["version_0"].id == run_id
    assert second.created["run"] == 0
    assert points(store, run_id, "lr") == [(149, 0.01)]
    assert points(store, run_id, "train_loss")[-1] == (149, 0.05)


def test_dry_run_writes_nothing(store, logs):
    preview = import_path(store, "lightning", logs, dry_run=True)

    assert list(store.iter_runs()) == []
    assert preview.created["run"] == 4


def test_link_out_of_the_folder_is_rejected(store, logs):
    summary = import_path(store, "lightning", logs)

    assert "version_3" not in runs_by_name(store)
    assert any(
        o.message == "symbolic link leads outside the import folder"
        for o in summary.skips.values()
    )


def test_single_version_folder(store, logs):
    import_path(store, "lightning", logs / "version_2")

    assert list(runs_by_name(store)) == ["version_2"]
    assert store.get_experiment("lightning_logs")
