"""Import of DVC projects: dvc.lock in both schemas, params and DVCLive output."""

from __future__ import annotations

import math
import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import mltrail
import pytest
from mltrail.domain import EdgeType, NodeKind
from mltrail.importers import import_path
from mltrail.importers.values import derive_id

MTIME = 1_710_000_000
T0 = 1_709_990_000_000  # milliseconds, before MTIME

# DVC 3: schema 2.0, `hash: md5` beside plain MD5 values, a directory output.
LOCK_V2 = """schema: '2.0'
stages:
  prepare:
    cmd: python prepare.py
    deps:
    - path: data/raw.csv
      hash: md5
      md5: 1f2e3d4c5b6a79881f2e3d4c5b6a7988
      size: 1024
    params:
      params.yaml:
        prepare.seed: 42
    outs:
    - path: data/prepared
      hash: md5
      md5: 0a1b2c3d4e5f60718293a4b5c6d7e8f9.dir
      size: 2048
      nfiles: 2
  train:
    cmd:
    - python train.py
    deps:
    - path: data/prepared
      hash: md5
      md5: 0a1b2c3d4e5f60718293a4b5c6d7e8f9.dir
      size: 2048
      nfiles: 2
    - path: train.py
      hash: md5
      md5: 99999999999999999999999999999999
    params:
      params.yaml:
        train.lr: 0.0005
      config.json:
        model.depth: 50
    outs:
    - path: model.pkl
      hash: md5
      md5: abcdefabcdefabcdefabcdefabcdefab
"""

# DVC 1.x: stages at the top level, MD5 of dos2unix text without `hash`.
LOCK_V1 = """featurize:
  cmd: python featurize.py
  deps:
  - path: data.xml
    md5: 11111111111111111111111111111111
  params:
    params.yaml:
      max_features: 500
  outs:
  - path: features
    md5: 22222222222222222222222222222222.dir
"""

# YAML 1.2 as DVC reads it: 1e-3 is a float, `yes` a string, 010 is ten.
PARAMS = """prepare:
  seed: 42
  split: 0.2
train:
  lr: 1e-3
  flag: yes
  epochs: 010
"""


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, (MTIME, MTIME))


def build_workspaces(root: Path, outside: Path) -> Path:
    workspaces = root / "workspaces"
    new = workspaces / "cnn"
    write(new / "dvc.yaml", "stages: {}\n")
    write(new / "dvc.lock", LOCK_V2)
    write(new / "params.yaml", PARAMS)
    write(new / ".git" / "HEAD", "ref: refs/heads/exp-1\n")
    write(
        new / ".git" / "refs" / "heads" / "exp-1",
        "0123456789abcdef0123456789abcdef01234567\n",
    )
    live = new / "dvclive"
    write(
        live / "metrics.json",
        '{"step": 2, "train": {"loss": 0.25}, "acc": NaN, '
        '"test_only": 0.8125, "note": "text"}',
    )
    write(live / "params.yaml", "model: resnet\n")
    write(
        live / "plots" / "metrics" / "train" / "loss.tsv",
        f"timestamp\tstep\tloss\n{T0}\t0\t1.5\n{T0 + 1000}\t1\t"
        f"0.1000000000000000055511151231257827\n{T0 + 2000}\t2\t0.25\n",
    )
    write(live / "plots" / "metrics" / "acc.tsv", "step\tacc\n0\tinf\n1\tnan\n2\tbad\n")
    (live / "plots" / "metrics" / "leak.tsv").symlink_to(outside / "leak.tsv")
    write(outside / "leak.tsv", "step\tleak\n0\t1\n")

    old = workspaces / "legacy"
    write(old / "dvc.lock", LOCK_V1)
    write(old / "params.yaml", "max_features: 500\n")
    write(old / "dvclive" / "loss.tsv", f"timestamp\tstep\tloss\n{T0}\t0\t0.5\n")
    return workspaces


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = (
        "memory://" if request.param == "memory" else f"local://{tmp_path / 'store.db'}"
    )
    opened = mltrail.connect(url)
    yield opened
    opened.close()


@pytest.fixture
def workspaces(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_workspaces(tmp_path / "source", outside)


def run_of(store, experiment):
    runs = list(store.iter_runs(experiment_ids=[store.get_experiment(experiment).id]))
    assert len(runs) == 1
    return runs[0]


def history(store, run_id, key):
    return [(p.step, p.value) for p in store.metric_history(run_id, key)]


def test_each_workspace_is_one_run(store, workspaces):
    import_path(store, "dvc", workspaces)

    cnn, legacy = run_of(store, "cnn"), run_of(store, "legacy")
    assert cnn.tags["dvc.lock.schema"] == "2.0"
    assert legacy.tags["dvc.lock.schema"] == "1.0"
    assert cnn.code_version == {
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "branch": "exp-1",
    }
    assert cnn.start_time == datetime.fromtimestamp(T0 / 1000, timezone.utc)
    assert cnn.end_time == datetime.fromtimestamp(MTIME, timezone.utc)


def test_params_follow_yaml_12_and_the_lock(store, workspaces):
    summary = import_path(store, "dvc", workspaces)
    params = run_of(store, "cnn").params

    assert params["prepare"] == {"seed": 42, "split": 0.2}
    assert params["train"]["flag"] == "yes"
    assert params["train"]["epochs"] == 10
    assert params["train"]["lr"] == 0.0005  # the value dvc.lock recorded
    assert params["config.json"] == {"model": {"depth": 50}}
    assert params["dvclive"] == {"model": "resnet"}
    notes = [o for o in summary.notes.values() if o.kind == "params"]
    assert notes[0].examples == ["cnn params.yaml:train.lr"]
    assert run_of(store, "legacy").params == {"max_features": 500}


def test_dvclive_histories_and_summary(store, workspaces):
    summary = import_path(store, "dvc", workspaces)
    run = run_of(store, "cnn")

    loss = list(store.metric_history(run.id, "train/loss"))
    assert [(p.step, p.timestamp) for p in loss] == [
        (step, datetime.fromtimestamp((T0 + 1000 * step) / 1000, timezone.utc))
        for step in range(3)
    ]
    assert bits(loss[1].value) == bits(0.1)
    acc = history(store, run.id, "acc")
    assert acc[0] == (0, math.inf)
    assert math.isnan(acc[1][1])
    assert len(acc) == 2
    assert history(store, run.id, "test_only") == [(2, 0.8125)]
    assert store.metric_keys(run.id) == ["acc", "test_only", "train/loss"]
    assert history(store, run_of(store, "legacy").id, "loss") == [(0, 0.5)]
    reasons = {o.message for o in summary.skips.values()}
    assert "summary value is not a number" in reasons
    assert "symbolic link leads outside the import folder" in reasons


def test_stages_become_lineage(store, workspaces):
    import_path(store, "dvc", workspaces)
    run = run_of(store, "cnn")

    raw = store.get_dataset("data/raw.csv", "1f2e3d4c5b6a79881f2e3d4c5b6a7988")
    prepared = store.get_dataset(
        "data/prepared", "0a1b2c3d4e5f60718293a4b5c6d7e8f9.dir"
    )
    model = store.get_dataset("model.pkl", "abcdefabcdefabcdefabcdefabcdefab")
    assert raw.content_hash == "md5:1f2e3d4c5b6a79881f2e3d4c5b6a7988"
    assert prepared.provenance == {"size": 2048, "nfiles": 2, "source": "data/prepared"}
    legacy = store.get_dataset("data.xml", "11111111111111111111111111111111")
    assert legacy.content_hash == "md5-dos2unix:11111111111111111111111111111111"
    consumed = {store.get_dataset(d).name for d in run.dataset_ids}
    assert consumed == {"data/raw.csv", "train.py"}

    prepare = derive_id("dvc-stage", "cnn", "prepare")
    train = derive_id("dvc-stage", "cnn", "train")
    assert store.backend.lineage.get_node(train).kind == NodeKind.PIPELINE
    upstream = store.upstream(model.id, depth=10)
    assert {prepare, train, raw.id, prepared.id} <= set(upstream.nodes)
    produced_by = {
        e.source
        for e in upstream.edges
        if e.target == model.id and e.type == EdgeType.PRODUCED
    }
    assert produced_by == {train, run.id}


def test_import_twice_adds_nothing(store, workspaces):
    first = import_path(store, "dvc", workspaces)
    second = import_path(store, "dvc", workspaces)

    assert sum(second.created.values()) == 0
    assert second.unchanged["run"] == first.created["run"] == 2
    assert second.unchanged["metric_point"] == first.created["metric_point"]
    assert second.unchanged["lineage_edge"] == first.created["lineage_edge"]


def test_changed_lock_makes_a_new_run(store, workspaces):
    import_path(store, "dvc", workspaces)
    write(workspaces / "cnn" / "dvc.lock", LOCK_V2.replace("0.0005", "0.0001"))

    second = import_path(store, "dvc", workspaces)

    assert second.created["run"] == 1
    experiment = store.get_experiment("cnn")
    assert len(list(store.iter_runs(experiment_ids=[experiment.id]))) == 2


def test_dry_run_writes_nothing(store, workspaces):
    preview = import_path(store, "dvc", workspaces, dry_run=True)

    assert list(store.iter_runs()) == []
    assert preview.created["run"] == 2
    assert preview.created["dataset"] == 6


def test_folder_without_project_is_rejected(store, tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(mltrail.InvalidInputError, match="contains no DVC project"):
        import_path(store, "dvc", tmp_path / "empty")
