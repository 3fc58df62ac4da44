import gzip
import io
import json
import sqlite3
import tarfile
import tracemalloc

import pytest

from mltrail.access import AccessPolicy
from mltrail.api import connect
from mltrail.config import Config, parse_config
from mltrail.conformance.cases.operations import populate
from mltrail.errors import PermissionDeniedError
from mltrail.ops import (
    ArchiveFormatError, diff_stores, export_store, fsck, import_archive, migrate,
    read_manifest,
)
from mltrail.store import Store

KINDS = ("memory", "local")


@pytest.fixture
def open_store(tmp_path):
    """Return a function that opens a new, empty store of a backend kind."""
    opened = []

    def open_kind(kind):
        url = "memory://"
        if kind == "local":
            url = f"local://{tmp_path}/{len(opened)}.db"
        store = connect(url, actor="ops-test", config=Config())
        opened.append(store)
        return store

    yield open_kind
    for store in opened:
        store.close()


def table_count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("source_kind,target_kind",
                         [(a, b) for a in KINDS for b in KINDS])
def test_round_trip_between_backends(open_store, tmp_path, source_kind, target_kind):
    source = open_store(source_kind)
    populate(source)
    export_store(source, tmp_path / "backup.mltrail")
    target = open_store(target_kind)
    report = import_archive(target, tmp_path / "backup.mltrail")
    assert report.ok
    assert diff_stores(source, target) == []


def test_done_criterion_memory_to_local(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    export_store(source, tmp_path / "backup.mltrail")
    target = open_store("local")
    import_archive(target, tmp_path / "backup.mltrail")
    assert fsck(target).ok
    assert target.verify_audit().ok
    assert diff_stores(source, target) == []
    database = target.backend.path
    with sqlite3.connect(database) as conn:
        doc = json.loads(conn.execute("SELECT doc FROM audit_events WHERE seq = 5")
                         .fetchone()[0])
        doc["actor"] = "mallory"
        conn.execute("UPDATE audit_events SET doc = ? WHERE seq = 5", [json.dumps(doc)])
    result = target.verify_audit()
    assert not result.ok
    assert result.broken_at == 5


@pytest.mark.parametrize("source_kind,target_kind", [("memory", "local"),
                                                     ("local", "memory")])
def test_migrate_between_backends(open_store, source_kind, target_kind):
    source = open_store(source_kind)
    populate(source)
    target = open_store(target_kind)
    assert migrate(source, target).ok
    assert diff_stores(source, target) == []
    assert target.verify_audit().ok
    assert migrate(source, target).ok
    assert diff_stores(source, target) == []


def test_reimport_adds_no_rows(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    export_store(source, tmp_path / "a.mltrail")
    target = open_store("local")
    import_archive(target, tmp_path / "a.mltrail")
    path = target.backend.path
    tables = ("runs", "metric_chunks", "lineage_edges")
    counts = {table: table_count(path, table) for table in tables}
    again = import_archive(target, tmp_path / "a.mltrail")
    assert again.audit.startswith("already present")
    assert {t: table_count(path, t) for t in counts} == counts
    assert target.verify_audit().ok


def test_manifest_describes_archive(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    export_store(source, tmp_path / "a.mltrail")
    manifest = read_manifest(tmp_path / "a.mltrail")
    members = {entry["name"]: entry for entry in manifest["members"]}
    assert manifest["format_version"] == 1
    assert manifest["scope"]["full"] is True
    assert members["runs"]["count"] == 3
    assert len(members["metrics"]["sha256"]) == 64
    assert manifest["audit"]["events"] == source.backend.audit.last().seq


def test_partial_export_by_experiment(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    report = export_store(source, tmp_path / "part.mltrail", experiments=["ops"])
    assert report.full is False
    assert report.counts["runs"] == 2
    assert "audit" not in report.counts
    target = open_store("local")
    import_archive(target, tmp_path / "part.mltrail")
    runs = target.iter_runs(include_deleted=True, order_by="name")
    assert [r.name for r in runs] == ["child", "parent"]
    assert fsck(target).ok


def test_export_url_has_no_password(open_store, tmp_path):
    source = open_store("memory")
    source.backend._name = "user:secret@host"
    export_store(source, tmp_path / "a.mltrail")
    assert "secret" not in read_manifest(tmp_path / "a.mltrail")["source"]["url"]


def rewrite_archive(source, target, change):
    """Copy a tar archive, letting `change(name, data)` replace member bytes."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for info in old.getmembers():
            data = change(info.name, old.extractfile(info).read())
            if data is None:
                continue
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))


@pytest.fixture
def backup(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    export_store(source, tmp_path / "good.mltrail")
    return tmp_path / "good.mltrail"


def assert_rejected(open_store, path, words):
    target = open_store("local")
    with pytest.raises(ArchiveFormatError) as caught:
        import_archive(target, path)
    for word in words:
        assert word in str(caught.value)
    assert target.backend.audit.last() is None
    assert list(target.iter_runs()) == []


def test_corrupted_member_rejected(open_store, backup, tmp_path):
    def flip(name, data):
        if name != "runs.jsonl.gz":
            return data
        return data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]

    rewrite_archive(backup, tmp_path / "bad.mltrail", flip)
    assert_rejected(open_store, tmp_path / "bad.mltrail", ["runs.jsonl.gz", "SHA-256"])


def test_unknown_version_rejected(open_store, backup, tmp_path):
    def bump(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["format_version"] = 99
        return json.dumps(manifest).encode()

    rewrite_archive(backup, tmp_path / "future.mltrail", bump)
    assert_rejected(open_store, tmp_path / "future.mltrail", ["99", "version 1"])


def test_missing_member_rejected(open_store, backup, tmp_path):
    rewrite_archive(backup, tmp_path / "short.mltrail",
                    lambda name, data: None if name == "audit.jsonl.gz" else data)
    assert_rejected(open_store, tmp_path / "short.mltrail", ["audit.jsonl.gz"])


def test_invalid_record_rejected(open_store, backup, tmp_path):
    """A record that fails validation is caught before anything is written."""

    def break_run(name, data):
        if name != "runs.jsonl.gz":
            return data
        lines = gzip.decompress(data).splitlines()
        record = json.loads(lines[-1])
        record["status"] = "exploded"
        lines[-1] = json.dumps(record).encode()
        return gzip.compress(b"\n".join(lines) + b"\n")

    def fix_digest(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        with tarfile.open(tmp_path / "broken.mltrail") as tar:
            member = tar.extractfile("runs.jsonl.gz").read()
        import hashlib
        for entry in manifest["members"]:
            if entry["name"] == "runs":
                entry["sha256"] = hashlib.sha256(member).hexdigest()
        return json.dumps(manifest).encode()

    rewrite_archive(backup, tmp_path / "broken.mltrail", break_run)
    rewrite_archive(tmp_path / "broken.mltrail", tmp_path / "resealed.mltrail",
                    fix_digest)
    assert_rejected(open_store, tmp_path / "resealed.mltrail", ["exploded"])


def test_not_a_tar_rejected(open_store, tmp_path):
    (tmp_path / "junk.mltrail").write_bytes(b"hello" * 100)
    assert_rejected(open_store, tmp_path / "junk.mltrail", ["not an mltrail archive"])


def test_audit_not_copied_into_used_chain(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    export_store(source, tmp_path / "a.mltrail")
    target = open_store("memory")
    target.create_experiment("already here")
    report = import_archive(target, tmp_path / "a.mltrail")
    assert report.audit.startswith("not copied")
    assert target.verify_audit().ok
    assert target.backend.audit.last().action == "import"


def test_conflicting_record_reported(open_store, tmp_path):
    source = open_store("memory")
    experiment = source.create_experiment("shared")
    export_store(source, tmp_path / "a.mltrail")
    target = open_store("memory")
    target.create_experiment("shared")
    report = import_archive(target, tmp_path / "a.mltrail")
    assert not report.ok
    assert report.counts["experiments"].conflicts == 1
    assert experiment.id in report.conflicts[0]


def test_export_memory_bounded(open_store, tmp_path):
    """Holding 12,000 points at once would take over 7 MB; a page takes about 1.5 MB."""
    source = open_store("local")
    experiment = source.create_experiment("long")
    run = source.create_run(experiment.id)
    source.log_metrics(run.id, [{"key": "loss", "value": i / 7, "step": i}
                                for i in range(12_000)])
    tracemalloc.start()
    try:
        export_store(source, tmp_path / "long.mltrail")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def store_as(backend, principal):
    config = parse_config({"access": {"enabled": True, "roles": {
        "*": {"root": "admin"}, "default": {"ada": "admin", "rita": "reader"}}}})
    policy = AccessPolicy.from_config(config.access)
    return Store(backend, actor=principal, policy=policy)


def test_export_needs_admin_everywhere(open_store, tmp_path):
    source = open_store("memory")
    populate(source)
    with pytest.raises(PermissionDeniedError):
        export_store(store_as(source.backend, "ada"), tmp_path / "a.mltrail")
    export_store(store_as(source.backend, "root"), tmp_path / "a.mltrail")
    with pytest.raises(PermissionDeniedError):
        import_archive(store_as(open_store("memory").backend, "rita"),
                       tmp_path / "a.mltrail")
