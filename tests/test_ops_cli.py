import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from mltrail import cli
from mltrail.api import connect
from mltrail.config import Config
from mltrail.conformance.cases.operations import populate
from mltrail.domain import LineageNode, NodeKind
from mltrail.ops import cli as ops_cli
from mltrail.ops import diff_stores


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """Register the operations commands as the main CLI's LAZY_COMMANDS would."""
    for name in ops_cli.COMMANDS:
        monkeypatch.setitem(cli.LAZY_COMMANDS, name, f"mltrail.ops.cli:{name}_command")


@pytest.fixture
def url(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("MLTRAIL_CONFIG", str(tmp_path / "config.toml"))
    location = f"local://{tmp_path}/store.db"
    store = connect(location, actor="cli-test", config=Config())
    populate(store)
    store.close()
    return location


def open_url(url):
    return connect(url, config=Config())


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def test_backup_and_restore(url, tmp_path):
    result = invoke("--store", url, "backup", str(tmp_path / "b.mltrail"))
    assert result.exit_code == 0
    assert "whole store" in result.output
    target = f"local://{tmp_path}/target.db"
    result = invoke("--store", target, "restore", str(tmp_path / "b.mltrail"))
    assert result.exit_code == 0
    assert "audit chain: copied" in result.output
    assert diff_stores(open_url(url), open_url(target)) == []


def test_partial_backup_json(url, tmp_path):
    result = invoke("--store", url, "--format", "json", "backup",
                    str(tmp_path / "p.mltrail"), "--experiment", "ops",
                    "--filter", "status = 'completed'")
    report = json.loads(result.output)
    assert report["full"] is False
    assert report["counts"]["runs"] == 1


def test_restore_conflict_exits_nonzero(url, tmp_path):
    invoke("--store", url, "backup", str(tmp_path / "b.mltrail"))
    other = f"local://{tmp_path}/other.db"
    store = connect(other, config=Config())
    store.create_experiment("ops")
    store.close()
    result = invoke("--store", other, "restore", str(tmp_path / "b.mltrail"))
    assert result.exit_code == 1
    assert "conflicted" in result.output


def test_restore_rejects_corrupt_file(url, tmp_path):
    (tmp_path / "bad.mltrail").write_bytes(b"\0" * 2048)
    result = invoke("--store", url, "restore", str(tmp_path / "bad.mltrail"))
    assert result.exit_code == 1
    assert result.output.startswith("error: ")


def test_migrate(url, tmp_path):
    target = f"local://{tmp_path}/migrated.db"
    result = invoke("--store", url, "migrate", "--to", target)
    assert result.exit_code == 0
    assert diff_stores(open_url(url), open_url(target)) == []


def test_archive_older_than(url, tmp_path):
    store = connect(url, config=Config())
    experiment = store.create_experiment("old")
    run = store.create_run(experiment.id, status="completed",
                           end_time="2020-01-01T00:00:00Z")
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": step}
                               for step in range(500)])
    store.close()
    result = invoke("--store", url, "archive", "--older-than", "30d",
                    "--to", str(tmp_path / "cold"))
    assert result.exit_code == 0
    assert "archived 500 metric points of 1 of 1 selected runs" in result.output
    assert "saved" in result.output
    history = invoke("--store", url, "--format", "json", "metrics", "history",
                     run.id, "m")
    assert len(json.loads(history.output)) == 500


def test_archive_model_version_json(url):
    result = invoke("--store", url, "--format", "json", "archive", "--model-version",
                    "classifier:production")
    report = json.loads(result.output)
    assert report["runs_archived"] == 1
    assert report["bytes_saved"] > 0


def test_archive_needs_a_criterion(url):
    result = invoke("--store", url, "archive")
    assert result.exit_code == 2
    assert "--older-than" in result.output


@pytest.mark.parametrize("text,expected", [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
    ("90m", timedelta(minutes=90)), ("45s", timedelta(seconds=45)),
    ("2w", timedelta(weeks=2)),
])
def test_parse_duration(text, expected):
    assert ops_cli.parse_duration(text) == expected


def test_bad_duration(url):
    result = invoke("--store", url, "archive", "--older-than", "a month")
    assert result.exit_code == 2
    assert "'a month'" in result.output


def test_fsck_exit_codes(url):
    assert invoke("--store", url, "fsck").exit_code == 0
    store = connect(url, config=Config())
    store.backend.lineage.put_node(LineageNode(id="GONE1", kind=NodeKind.RUN))
    store.close()
    result = invoke("--store", url, "fsck")
    assert result.exit_code == 1
    assert "lineage.orphan_node (repairable)" in result.output
    assert "--repair" in result.output
    repaired = invoke("--store", url, "fsck", "--repair")
    assert repaired.exit_code == 0
    assert "(repaired)" in repaired.output


def test_upgrade_command(url):
    result = invoke("--store", url, "upgrade")
    assert result.exit_code == 0
    assert "0 of 3 run" in result.output


def test_quiet_prints_nothing(url, tmp_path):
    result = invoke("--store", url, "--quiet", "backup", str(tmp_path / "q.mltrail"))
    assert result.exit_code == 0
    assert result.output == ""
    result = invoke("--store", url, "fsck", "-q")
    assert result.output == ""


def test_no_bars_when_piped():
    with ops_cli.progress_bars(True) as progress:
        assert progress is None


def test_standalone_command_uses_environment(url, tmp_path, monkeypatch):
    monkeypatch.setenv("MLTRAIL_STORE", url)
    result = CliRunner().invoke(ops_cli.fsck_command, [])
    assert result.exit_code == 0
    assert "no problems found" in result.output
