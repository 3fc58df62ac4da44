"""Unit tests of the Cassandra backend: URL parsing, credentials, errors, layout.

Tests marked `emulator("cassandra")` need a server; start one with
`python -m mltrail.conformance.emulators up cassandra` and export the URL it
prints as $MLTRAIL_TEST_CASSANDRA_URL.
"""

from __future__ import annotations

import logging
import math
import re
import os
import socket
import struct
import threading
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("cassandra", reason="cassandra-driver is not installed; "
                                        "pip install 'mltrail[cassandra]'")

import cassandra
from cassandra import WriteType
from cassandra.cluster import NoHostAvailable

from mltrail import codec, limits
from mltrail.backend import ScanRequest
from mltrail.backends import cassandra as module
from mltrail.backends.cassandra import (
    CassandraBackend,
    CassandraConfig,
    parse_url,
    translate_error,
)
from mltrail.domain import AuditEvent, Experiment, MetricPoint, MetricSeries, Run
from mltrail.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    PermissionDeniedError,
)
from mltrail.query.evaluate import OrderKey
from mltrail.query.parser import parse
from mltrail.store import Store

URL_ENV = "MLTRAIL_TEST_CASSANDRA_URL"
SERVER_URL = os.environ.get(URL_ENV) or os.environ.get("MLTRAIL_TEST_cassandra_URL")
needs_server = [
    pytest.mark.emulator("cassandra"),
    pytest.mark.skipif(SERVER_URL is None,
                       reason=f"no Cassandra server: set ${URL_ENV} to the URL that "
                              "`python -m mltrail.conformance.emulators up cassandra` "
                              "prints"),
]


# ---------------------------------------------------------------------------
# URL parsing
# ---------------------------------------------------------------------------


def test_url_defaults():
    config = parse_url("cassandra://db.example/mltrail")
    assert config.hosts == (("db.example", 9042),)
    assert config.keyspace == "mltrail"
    assert config.store == "default"
    assert config.consistency == "LOCAL_QUORUM"
    assert config.serial_consistency == "LOCAL_SERIAL"
    assert config.replication == (("class", "SimpleStrategy"),
                                  ("replication_factor", "1"))
    assert config.create_schema is True
    assert config.ssl is False


def test_url_several_hosts_and_ports():
    config = parse_url("cassandra://a:9043,b,[::1]:9044,[fe80::2]/ks")
    assert config.hosts == (("a", 9043), ("b", 9042), ("::1", 9044), ("fe80::2", 9042))


def test_url_options():
    config = parse_url(
        "cassandra://h/ks?store=team-a&consistency=one&serial_consistency=serial"
        "&local_dc=dc1&connect_timeout=2.5&request_timeout=30&protocol_version=4"
        "&ssl=true&ssl_ca_file=/etc/ca.pem&create_schema=false&replication_factor=3")
    assert config.store == "team-a"
    assert config.consistency == "ONE"
    assert config.serial_consistency == "SERIAL"
    assert config.local_dc == "dc1"
    assert config.connect_timeout == 2.5
    assert config.request_timeout == 30.0
    assert config.protocol_version == 4
    assert config.ssl is True
    assert config.ssl_ca_file == "/etc/ca.pem"
    assert config.create_schema is False
    assert dict(config.replication)["replication_factor"] == "3"


def test_url_network_topology():
    config = parse_url("cassandra://h/ks?replication_class=NetworkTopologyStrategy"
                       "&datacenters=dc1:3,dc2:2")
    assert config.replication == (("class", "NetworkTopologyStrategy"), ("dc1", "3"),
                                  ("dc2", "2"))


@pytest.mark.parametrize("url", [
    "mongodb://h/ks",
    "cassandra://h",
    "cassandra://h/",
    "cassandra://h/my-keyspace",
    "cassandra://h/" + "k" * 49,
    "cassandra://h:0/ks",
    "cassandra://h:99999/ks",
    "cassandra://h:port/ks",
    "cassandra://a,,b/ks",
    "cassandra://h/ks?colour=blue",
    "cassandra://h/ks?consistency=MOST",
    "cassandra://h/ks?serial_consistency=QUORUM",
    "cassandra://h/ks?store=-bad",
    "cassandra://h/ks?store=has space",
    "cassandra://h/ks?replication_factor=0",
    "cassandra://h/ks?replication_class=LocalStrategy",
    "cassandra://h/ks?datacenters=dc1:3",
    "cassandra://h/ks?replication_class=NetworkTopologyStrategy&datacenters=dc1",
    "cassandra://h/ks?connect_timeout=soon",
    "cassandra://h/ks?request_timeout=0",
    "cassandra://h/ks?ssl=maybe",
    "cassandra://h/ks?protocol_version=v5",
])
def test_url_rejected(url):
    with pytest.raises(InvalidInputError):
        parse_url(url)


def test_with_store_keeps_other_options():
    config = parse_url("cassandra://h/ks?replication_factor=1&store=a")
    other = config.with_store("b")
    assert other.store == "b"
    assert other.url() == "cassandra://h/ks?replication_factor=1&store=b"


def test_with_store_rejects_bad_name():
    with pytest.raises(InvalidInputError):
        parse_url("cassandra://h/ks").with_store("no/slash")


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


def test_credentials_from_url(monkeypatch):
    monkeypatch.delenv(module.USERNAME_ENV, raising=False)
    monkeypatch.delenv(module.PASSWORD_ENV, raising=False)
    config = parse_url("cassandra://alice:s%3Acr%40t@h:9043/ks?store=x")
    assert config.username == "alice"
    assert config.password == "s:cr@t"


def test_credentials_hidden_from_url_and_repr():
    config = parse_url("cassandra://alice:hunter2@h/ks?store=x")
    assert config.url() == "cassandra://h/ks?store=x"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in config.server()


def test_url_with_credentials_round_trips():
    config = parse_url("cassandra://alice:p%2Fw%3Ad@h/ks?store=x")
    again = parse_url(config.url(with_credentials=True))
    assert (again.username, again.password) == ("alice", "p/w:d")


def test_credentials_from_environment(monkeypatch):
    monkeypatch.setenv(module.USERNAME_ENV, "svc")
    monkeypatch.setenv(module.PASSWORD_ENV, "from-env")
    config = parse_url("cassandra://h/ks")
    assert (config.username, config.password) == ("svc", "from-env")
    assert "from-env" not in config.url()


def test_url_password_wins_over_environment(monkeypatch):
    monkeypatch.setenv(module.PASSWORD_ENV, "from-env")
    assert parse_url("cassandra://u:given@h/ks").password == "given"


def test_password_not_in_parse_errors():
    with pytest.raises(InvalidInputError) as caught:
        parse_url("cassandra://bob:hunter2@h/bad-keyspace")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_backend_url_has_no_credentials():
    backend = CassandraBackend.from_url("cassandra://bob:hunter2@127.0.0.1:1/ks")
    try:
        assert backend.url == "cassandra://127.0.0.1:1/ks"
    finally:
        backend.close()


# ---------------------------------------------------------------------------
# Error translation
# ---------------------------------------------------------------------------


WHERE = "cassandra://h/ks"


@pytest.mark.parametrize("error,expected", [
    (NoHostAvailable("Unable to connect to any servers", {}), BackendUnavailableError),
    (cassandra.AuthenticationFailed("bad password"), BackendUnavailableError),
    (cassandra.Unauthorized("no MODIFY"), PermissionDeniedError),
    (cassandra.InvalidRequest("unconfigured table entities"), BackendUnavailableError),
    (cassandra.InvalidRequest("Keyspace ks does not exist"), BackendUnavailableError),
    (cassandra.InvalidRequest("Key length of 70000 is longer than maximum"),
     InvalidInputError),
    (cassandra.ReadTimeout("timed out"), BackendUnavailableError),
    (cassandra.WriteTimeout("timed out", write_type=WriteType.SIMPLE),
     BackendUnavailableError),
    (cassandra.Unavailable("not enough replicas"), BackendUnavailableError),
    (cassandra.OperationTimedOut("client timeout"), BackendUnavailableError),
    (cassandra.UnresolvableContactPoints({}), BackendUnavailableError),
])
def test_translate_error(error, expected):
    translated = translate_error(error, WHERE)
    assert type(translated) is expected
    assert WHERE in str(translated)


def test_authentication_error_names_variables():
    message = str(translate_error(cassandra.AuthenticationFailed("no"), WHERE))
    assert module.USERNAME_ENV in message
    assert module.PASSWORD_ENV in message


@pytest.mark.parametrize("write_type,unknown", [
    (WriteType.CAS, True), (WriteType.SIMPLE, False), (WriteType.BATCH, False),
])
def test_cas_timeout_is_unknown_outcome(write_type, unknown):
    error = cassandra.WriteTimeout("timed out", write_type=write_type)
    assert module._is_cas_unknown(error) is unknown


def test_missing_driver_names_extra(monkeypatch):
    monkeypatch.setattr(module, "_DRIVER_IMPORT_ERROR",
                        ImportError("No module named 'cassandra'"))
    with pytest.raises(BackendUnavailableError) as caught:
        CassandraBackend.from_url("cassandra://h/ks")
    assert "pip install 'mltrail[cassandra]'" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_unreachable_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = CassandraBackend.from_url(
        f"cassandra://127.0.0.1:{port}/ks?connect_timeout=2")
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            backend.initialize()
    finally:
        backend.close()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert isinstance(caught.value.__cause__, NoHostAvailable)


def test_unresolvable_host():
    backend = CassandraBackend.from_url("cassandra://no-such-host.invalid/ks")
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            backend.initialize()
    finally:
        backend.close()
    assert "no-such-host.invalid" in str(caught.value)
    assert "host names" in str(caught.value)


def test_missing_ssl_ca_file(tmp_path):
    path = tmp_path / "absent.pem"
    backend = CassandraBackend.from_url(
        f"cassandra://127.0.0.1:1/ks?ssl=true&ssl_ca_file={path}")
    try:
        with pytest.raises(InvalidInputError) as caught:
            backend.initialize()
    finally:
        backend.close()
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------
# Layout rules that need no server
# ---------------------------------------------------------------------------


def _statements() -> list[str]:
    return [value for name, value in vars(module).items()
            if name.isupper() and isinstance(value, str) and "{ks}." in value]


def test_no_statement_filters_whole_tables():
    texts = _statements() + list(module.TABLES.values())
    assert len(texts) > 60
    for text in texts:
        assert "ALLOW FILTERING" not in text.upper(), text
        assert "INDEX ON" not in text.upper(), text


def test_every_statement_names_store_first():
    for statement in _statements():
        if statement.startswith(("SELECT", "DELETE")):
            assert "WHERE store = ?" in statement, statement


def test_every_table_partitioned_by_store():
    for table, columns in module.TABLES.items():
        assert re.search(r"PRIMARY KEY \(\(store[,)]", columns), table


@pytest.mark.parametrize("when,month", [
    (datetime(1970, 1, 1, tzinfo=UTC), 0),
    (datetime(1970, 12, 31, 23, 59, tzinfo=UTC), 11),
    (datetime(2024, 5, 17, tzinfo=UTC), 54 * 12 + 4),
    (datetime(1969, 12, 31, tzinfo=UTC), -1),
])
def test_month_of_creation(when, month):
    assert module._month(module._micros(when)) == month


def test_index_write_times_order_revisions():
    # A later revision's rows must win over an earlier revision's deletes, and
    # a hard delete must win over the rows of the revision it removed.
    for revision in range(5):
        write = module._write_timestamp(revision)
        assert write + 1 < module._write_timestamp(revision + 1)


def test_capabilities_declared():
    backend = CassandraBackend.from_url("cassandra://127.0.0.1:1/ks")
    try:
        capabilities = backend.capabilities
    finally:
        backend.close()
    assert capabilities.name == "cassandra"
    assert capabilities.pushdown_operators == frozenset({"=", "in", "and"})
    assert capabilities.native_order_fields == frozenset({"created_at"})
    assert capabilities.transactions is False
    assert capabilities.conditional_writes is True
    assert capabilities.multi_process is True
    assert capabilities.persistent is True
    assert capabilities.max_batch_size == module.MAX_BATCH_ROWS


def _series(key: str, count: int, first_step: int = 0) -> MetricSeries:
    steps = list(range(first_step, first_step + count))
    return MetricSeries(run_id="r", key=key, values=[float(step) for step in steps],
                        steps=steps, stamps=[1_700_000_000_000_000] * count,
                        seqs=[f"s:{step:06d}" for step in steps])


def test_series_chunks_split_long_series():
    series = [_series("a", 5), _series("b", 12), _series("c", 3)]
    chunks = list(module._series_chunks(series, 8))
    assert [sum(len(one) for one in chunk) for chunk in chunks] == [8, 8, 4]
    assert [[(one.key, one.steps[0], len(one)) for one in chunk] for chunk in chunks] \
        == [[("a", 0, 5), ("b", 0, 3)], [("b", 3, 8)], [("b", 11, 1), ("c", 0, 3)]]
    assert chunks[0][0] is series[0]


def test_series_rows_partitioned():
    day = module.DAY_MICROS
    series = MetricSeries(run_id="r", key="m", values=[1.0, 2.0, 3.0, 4.0],
                          steps=[999, 1_000, 1_000, 1_001],
                          stamps=[5 * day, 5 * day, 6 * day, 6 * day],
                          seqs=["a", "b", "c", "d"])
    partitions = module._series_rows([series])
    assert partitions == {
        ("m", 0, 5): [(999, 5 * day, "a", 1.0, None)],
        ("m", 1, 5): [(1_000, 5 * day, "b", 2.0, None)],
        ("m", 1, 6): [(1_000, 6 * day, "c", 3.0, None), (1_001, 6 * day, "d", 4.0, None)],
    }


# ---------------------------------------------------------------------------
# Against a server
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness():
    if SERVER_URL is None:
        pytest.skip(f"no Cassandra server: set ${URL_ENV}")
    return CassandraBackend.conformance_harness(SERVER_URL)


@pytest.fixture
def backend(harness):
    instance = harness.create()
    yield instance
    harness.destroy(instance)


def _raw(backend, cql, params):
    return backend.cql.rows(cql, params)


class TestWithServer:
    pytestmark = needs_server

    def test_initialize_twice(self, backend):
        backend.initialize()
        backend.initialize()
        assert backend.experiments.find_unique(("default", "absent")) is None

    def test_stores_isolated(self, harness):
        first, second = harness.create(), harness.create()
        try:
            store = Store(first, actor="test")
            experiment = store.create_experiment("shared-name")
            Store(second, actor="test").create_experiment("shared-name")
            assert [e.id for e in first.experiments.scan(ScanRequest())] == \
                [experiment.id]
            assert len(list(second.experiments.scan(ScanRequest()))) == 1
            assert second.experiments.find_unique(("default", "shared-name")).id != \
                experiment.id
            assert [e.seq for e in second.audit.scan()] == [1]
        finally:
            harness.destroy(first)
            harness.destroy(second)

    def test_nan_payload_kept_in_double_column(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        payload = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0]
        stamp = datetime(2024, 1, 2, tzinfo=UTC)
        store.log_metrics(run.id, [{"key": "m", "value": payload, "step": 1,
                                    "timestamp": stamp}])
        day = module._micros(stamp) // module.DAY_MICROS
        select = f"SELECT value FROM {{ks}}.metric_points WHERE {module.POINTS_KEY}"
        rows = _raw(backend, select, (backend.cql.store, run.id, "m", 0, day))
        assert codec.float_to_bits(rows[0][0]) == "7ff8000000000001"

    def test_points_partitioned_by_step_bucket(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        stamp = datetime(2024, 1, 2, tzinfo=UTC)
        store.log_metrics(run.id, [{"key": "m", "value": float(i), "step": i,
                                    "timestamp": stamp} for i in range(2_500)])
        rows = _raw(backend, module.SELECT_RUN_PARTITIONS, (backend.cql.store, run.id))
        day = module._micros(stamp) // module.DAY_MICROS
        assert rows == [("m", 0, day), ("m", 1, day), ("m", 2, day)]
        steps = [p.step for p in store.metric_history(run.id, "m", min_step=990,
                                                      max_step=2_010)]
        assert steps == list(range(990, 2_011))

    def test_same_step_split_by_day_and_merged(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        base = datetime(2024, 1, 1, 23, tzinfo=UTC)
        stamps = [base + timedelta(hours=h) for h in (3, 0, 2, 1)]
        store.log_metrics(run.id, [{"key": "m", "value": float(i), "step": 0,
                                    "timestamp": s} for i, s in enumerate(stamps)])
        rows = _raw(backend, module.SELECT_RUN_PARTITIONS, (backend.cql.store, run.id))
        assert len(rows) == 2
        history = [p.timestamp for p in store.metric_history(run.id, "m")]
        assert history == sorted(stamps)
        late = store.metric_history(run.id, "m", start=base + timedelta(hours=1))
        assert [p.timestamp for p in late] == sorted(stamps)[1:]

    def test_latest_one_row_per_key(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        for step in (3, 1, 7, 5):
            store.log_metrics(run.id, [{"key": "a", "value": float(step), "step": step},
                                       {"key": "b", "value": -0.0, "step": 0}])
        rows = _raw(backend, module.SELECT_LATEST, (backend.cql.store, run.id))
        assert [(row[0], row[1]) for row in rows] == [("a", 7), ("b", 0)]
        assert math.copysign(1.0, rows[1][4]) == -1.0

    def test_status_index_follows_updates(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        store.set_run_status(run.id, "running")
        month = module._month(module._micros(run.created_at))

        def indexed(status):
            return _raw(backend, "SELECT id FROM {ks}.entity_index WHERE store = ? AND "
                                 "kind = ? AND field = ? AND value = ? AND month = ?",
                        (backend.cql.store, "run", "status", status, month))

        assert indexed("pending") == []
        assert indexed("running") == [(run.id,)]

    def test_update_after_stale_read(self, backend, harness):
        run = Run(id="RUNS1", experiment_id="E1", name="r")
        backend.runs.insert(run)
        backend.runs.get(run.id)
        # Another writer replaces the record at the same revision, so the index
        # entries this repository remembers for revision 0 are out of date.
        harness.raw_write(backend, "run", {**run.to_record(), "status": "running"})
        backend.runs.update(run.touched(status="completed"))
        assert backend.runs.get(run.id).status.value == "completed"
        month = module._month(module._micros(run.created_at))
        for status, expected in (("pending", []), ("running", []),
                                 ("completed", [(run.id,)])):
            rows = _raw(backend, "SELECT id FROM {ks}.entity_index WHERE "
                                 f"{module.INDEX_KEY} AND month = ?",
                        (backend.cql.store, "run", "status", status, month))
            assert rows == expected, status

    def test_created_at_order_breaks_ties_by_id(self, backend):
        stamp = datetime(2024, 3, 1, 12, tzinfo=UTC)
        ids = ["RUNC", "RUNA", "RUNB"]
        for entity_id in ids:
            backend.runs.insert(Run(id=entity_id, experiment_id="E1", name=entity_id,
                                    created_at=stamp))
        backend.runs.insert(Run(id="RUNZ", experiment_id="E1", name="z",
                                created_at=stamp - timedelta(days=40)))
        descending = (OrderKey(("created_at",), descending=True),)
        found = [r.id for r in backend.runs.scan(ScanRequest(order=descending))]
        assert found == ["RUNA", "RUNB", "RUNC", "RUNZ"]
        after = [r.id for r in backend.runs.scan(
            ScanRequest(order=descending, after=(stamp, "RUNA")))]
        assert after == ["RUNB", "RUNC", "RUNZ"]
        ascending = (OrderKey(("created_at",)),)
        later = [r.id for r in backend.runs.scan(
            ScanRequest(order=ascending, after=(stamp, "RUNB")))]
        assert later == ["RUNC"]

    def test_pushdown_in_and_no_match(self, backend):
        backend.runs.insert(Run(id="RUN1", experiment_id="E1", name="r"))
        request = ScanRequest(filter=parse("experiment_id in ('E1', 'E2')"))
        assert [r.id for r in backend.runs.scan(request)] == ["RUN1"]
        assert list(backend.runs.scan(ScanRequest(filter=parse("status = 'x'")))) == []

    def test_stale_unique_claim_taken_over(self, backend):
        cql = backend.cql
        uniq = codec.dumps(["default", "orphan"])
        old = datetime.now(UTC) - timedelta(hours=1)
        cql.run(module.RAW_INSERT_CLAIM, (cql.store, "experiment", uniq, "GONE", old))
        backend.experiments.insert(Experiment(id="NEW1", name="orphan"))
        assert backend.experiments.find_unique(("default", "orphan")).id == "NEW1"

    def test_fresh_claim_blocks_insert(self, backend):
        cql = backend.cql
        uniq = codec.dumps(["default", "in-flight"])
        cql.run(module.RAW_INSERT_CLAIM, (cql.store, "experiment", uniq, "OTHER",
                                          datetime.now(UTC)))
        with pytest.raises(AlreadyExistsError):
            backend.experiments.insert(Experiment(id="NEW2", name="in-flight"))
        assert backend.experiments.find_unique(("default", "in-flight")) is None

    def test_audit_chain_across_partitions(self, backend, monkeypatch):
        monkeypatch.setattr(module, "AUDIT_BUCKET", 3)
        store = Store(backend, actor="test")
        experiment = store.create_experiment("e")
        for index in range(8):
            store.set_tags("experiment", experiment.id, {"n": str(index)})
        assert backend.audit.last().seq == 9
        assert [e.seq for e in backend.audit.scan()] == list(range(1, 10))
        assert [e.seq for e in backend.audit.scan(after_seq=4)] == list(range(5, 10))
        assert len(list(backend.audit.for_entity(experiment.id))) == 9
        assert store.verify_audit().ok

    def test_audit_gap_detected(self, backend, monkeypatch):
        monkeypatch.setattr(module, "AUDIT_BUCKET", 3)
        store = Store(backend, actor="test")
        experiment = store.create_experiment("e")
        for index in range(8):
            store.set_tags("experiment", experiment.id, {"n": str(index)})
        backend.cql.run("DELETE FROM {ks}.audit_events WHERE store = ? AND bucket = ?",
                        (backend.cql.store, 1))
        result = store.verify_audit()
        assert not result.ok
        assert result.broken_at == 3
        assert [e.seq for e in backend.audit.scan()] == [1, 2, 6, 7, 8, 9]

    def test_audit_seq_taken(self, backend):
        store = Store(backend, actor="test")
        store.create_experiment("e")
        last = backend.audit.last()
        clash = AuditEvent(**{**last.__dict__, "id": "OTHER"})
        with pytest.raises(AlreadyExistsError):
            backend.audit.append(clash)

    def test_lineage_lists_sorted(self, backend):
        store = Store(backend, actor="test")
        ids = [store.register_dataset(f"d{i}", "1").id for i in range(5)]
        store.add_lineage_edge(ids[1], "derived_from", ids[0])
        store.add_lineage_edge(ids[2], "derived_from", ids[1])
        nodes = [n.id for n in backend.lineage.scan_nodes()]
        assert nodes == sorted(ids)
        edges = [e.key for e in backend.lineage.scan_edges()]
        assert edges == sorted(edges)
        backend.lineage.delete_node(ids[1])
        assert list(backend.lineage.scan_edges()) == []
        assert backend.lineage.edges(ids[2], "upstream") == []

    def test_blobs_sorted_by_key(self, backend):
        for key in ("b", "a", "c"):
            backend.blobs.put("configs", key, {"key": key, "x": [1, 2]})
        assert [k for k, _ in backend.blobs.scan("configs")] == ["a", "b", "c"]
        backend.blobs.delete("configs", "b")
        assert [k for k, _ in backend.blobs.scan("configs")] == ["a", "c"]
        assert backend.blobs.get("configs", "a") == {"key": "a", "x": [1, 2]}

    def test_runs_with_metrics(self, backend):
        store = Store(backend, actor="test")
        experiment = store.create_experiment("e")
        runs = [store.create_run(experiment.id) for _ in range(3)]
        for run in runs[:2]:
            store.log_metrics(run.id, [{"key": "m", "value": 1.0}])
        listed = list(backend.metrics.runs_with_metrics())
        assert listed == sorted(run.id for run in runs[:2])
        store.purge_run(runs[0].id)
        assert list(backend.metrics.runs_with_metrics()) == [runs[1].id]

    def test_password_never_logged(self, caplog):
        url = SERVER_URL.replace("cassandra://", "cassandra://someone:hunter2@", 1)
        with caplog.at_level(logging.DEBUG):
            backend = CassandraBackend.from_url(url)
            try:
                backend.initialize()
                backend.experiments.find_unique(("default", "x"))
            except BackendUnavailableError:
                pass
            finally:
                backend.close()
        assert "hunter2" not in caplog.text

    def test_missing_schema_reported(self):
        keyspace_url = SERVER_URL.split("?")[0].rsplit("/", 1)[0] + \
            "/mltrail_absent?create_schema=false"
        backend = CassandraBackend.from_url(keyspace_url)
        try:
            with pytest.raises(BackendUnavailableError) as caught:
                backend.experiments.get("X1")
        finally:
            backend.close()
        assert "create_schema=true" in str(caught.value)


# ---------------------------------------------------------------------------
# Telemetry
# ---------------------------------------------------------------------------


def _point(run_id, key, step, value=None, **extra):
    stamp = datetime(2024, 1, 2, tzinfo=UTC) + timedelta(seconds=step)
    return MetricPoint(run_id=run_id, key=key, value=float(step if value is None
                                                           else value),
                       step=step, timestamp=stamp, seq=f"seq-{step}", **extra)


def _latest_step(backend, run_id, key):
    return backend.metrics.latest([run_id])[run_id][key].step


class TestMetricAppendWithServer:
    pytestmark = needs_server

    def test_point_batch_matches_driver_bind(self, backend):
        prepared = backend.cql.connection.prepare(module.INSERT_POINT)
        binder = module._PointBinder(prepared)
        rows = [(step, 1_700_000_000_000_000 + step, f"seq-{step}", step / 3,
                 None if step % 2 else '{"unit":"s"}') for step in range(5)]
        key = (backend.cql.store, "run", "m", 0, 19_675)
        batch = binder.batch(key, rows)
        entries = batch._statements_and_parameters
        unset = cassandra.query.UNSET_VALUE
        for row, (_, _, values) in zip(rows, entries):
            expected = prepared.bind((*key, *row[:4],
                                      unset if row[4] is None else row[4])).values
            assert values == expected
        generic = sum(module._bound_bytes(values) for _, _, values in entries)
        assert batch.bound_bytes == generic
        assert batch.routing_key == prepared.bind((*key, *rows[0][:4], None)).routing_key

    def test_series_and_points_store_same_rows(self, backend, monkeypatch):
        monkeypatch.setattr(limits, "MAX_METRIC_BATCH", 700)
        day = module.DAY_MICROS
        steps = list(range(0, 2_100, 2))
        stamps = [19_000 * day + step * 100_000_000 for step in steps]
        series = MetricSeries(run_id="by-series", key="m", values=[s / 7 for s in steps],
                              steps=steps, stamps=stamps,
                              seqs=[f"s{step:05d}" for step in steps])
        backend.metrics.append_series("by-series", [series])
        points = [MetricPoint(run_id="by-points", key=p.key, value=p.value, step=p.step,
                              timestamp=p.timestamp, seq=p.seq)
                  for p in series.points()]
        backend.metrics.append("by-points", points)
        by_series = [(p.step, p.timestamp, p.seq, p.value)
                     for p in backend.metrics.history("by-series", "m")]
        by_points = [(p.step, p.timestamp, p.seq, p.value)
                     for p in backend.metrics.history("by-points", "m")]
        assert len(by_series) == len(steps)
        assert by_series == by_points
        assert _latest_step(backend, "by-series", "m") == 2_098
        partitions = _raw(backend, module.SELECT_RUN_PARTITIONS,
                          (backend.cql.store, "by-series"))
        assert len(partitions) > 3

    def test_retried_series_adds_nothing(self, backend):
        series = _series("m", 50)
        backend.metrics.append_series("r", [series])
        backend.metrics.append_series("r", [series])
        assert len(list(backend.metrics.history("r", "m"))) == 50
        assert _latest_step(backend, "r", "m") == 49

    def test_point_without_extras_leaves_extra_unset(self, backend):
        point = _point("r", "m", 1)
        day = module._micros(point.timestamp) // module.DAY_MICROS
        partition = (backend.cql.store, "r", "m", 0, day)
        backend.cql.run(module.INSERT_POINT, (*partition, 1, module._micros(
            point.timestamp), point.seq, 1.0, "marker"))
        backend.metrics.append("r", [point])
        # A null would have replaced the stored text with a tombstone.
        select = f"SELECT extra FROM {{ks}}.metric_points WHERE {module.POINTS_KEY}"
        assert _raw(backend, select, partition) == [("marker",)]

    def test_latest_raised_by_another_writer(self, harness):
        first = harness.create()
        other = module.CassandraBackend(first.config)
        try:
            first.metrics.append("r", [_point("r", "m", 5)])
            other.metrics.append("r", [_point("r", "m", 10)])
            # `first` still expects step 5 to be stored, so its update fails,
            # and it reads step 10 and leaves it.
            first.metrics.append("r", [_point("r", "m", 7)])
            assert _latest_step(first, "r", "m") == 10
            first.metrics.append("r", [_point("r", "m", 12)])
            assert _latest_step(other, "r", "m") == 12
        finally:
            other.close()
            harness.destroy(first)

    def test_latest_written_after_delete_elsewhere(self, harness):
        first = harness.create()
        other = module.CassandraBackend(first.config)
        try:
            first.metrics.append("r", [_point("r", "m", 10)])
            other.metrics.delete_run("r")
            # A lower step than the one `first` remembers must still be written.
            first.metrics.append("r", [_point("r", "m", 3)])
            assert _latest_step(other, "r", "m") == 3
            other.metrics.delete_run("r")
            first.metrics.append("r", [_point("r", "m", 20)])
            assert _latest_step(other, "r", "m") == 20
            assert [p.step for p in other.metrics.history("r", "m")] == [20]
        finally:
            other.close()
            harness.destroy(first)

    def test_known_latest_skips_read(self, backend, monkeypatch):
        backend.metrics.append("r", [_point("r", "m", 1)])
        reads = []
        original = backend.cql.start

        def counting(cql, params, *args, **kwargs):
            if cql == module.SELECT_LATEST_ORDER:
                reads.append(params)
            return original(cql, params, *args, **kwargs)

        monkeypatch.setattr(backend.cql, "start", counting)
        backend.metrics.append("r", [_point("r", "m", 2)])
        assert reads == []
        # Nothing to raise by the remembered point, so the stored one is read.
        backend.metrics.append("r", [_point("r", "m", 0)])
        assert len(reads) == 1
        assert _latest_step(backend, "r", "m") == 2
        backend.metrics.append("r", [_point("r", "m", 3), _point("r", "new", 0)])
        assert len(reads) == 2
        assert _latest_step(backend, "r", "new") == 0


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


def test_size_estimates_summed_per_table():
    rows = [("entities", 100, 3), ("entities", 50, 2), ("blobs", 0, 0)]
    stats = module.size_estimate_stats(rows, ["entities", "blobs"])
    assert stats["collections"]["entities"] == {"bytes": 400, "partitions": 5,
                                                "index_bytes": 0}
    assert stats["collections"]["blobs"]["bytes"] == 0
    assert stats["total_bytes"] == 400


def test_size_estimates_missing_table_unknown():
    stats = module.size_estimate_stats([("entities", 100, 3)], ["entities", "blobs"])
    assert stats["collections"]["blobs"]["bytes"] == "unknown"
    assert stats["collections"]["entities"]["bytes"] == 300
    assert stats["total_bytes"] == "unknown"


class TestTelemetryWithServer:
    pytestmark = needs_server

    def test_counters_start_at_zero(self, backend):
        assert backend.telemetry_counters() == {"items_written": 0,
                                                "bytes_written": 0}

    def test_experiment_insert_rows(self, backend):
        experiment = Experiment(name="counted")
        backend.experiments.insert(experiment)
        counters = backend.telemetry_counters()
        # The unique-key claim, the entity row, and an index row plus a month
        # row for each of the entries `*`, namespace and name.
        assert counters["items_written"] == 1 + 1 + 3 * 2
        assert counters["bytes_written"] > len(codec.dumps(experiment.to_record()))

    def test_metric_points_counted_per_row(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        stamp = datetime(2024, 1, 2, tzinfo=UTC)
        before = backend.telemetry_counters()
        store.log_metrics(run.id, [{"key": "m", "value": step / 7, "step": step,
                                    "timestamp": stamp} for step in range(2_500)])
        grown = _grown(before, backend.telemetry_counters())
        # The run's metric_runs row, one partition row per step bucket (0, 1
        # and 2), the points, and the latest point of the key.
        assert grown["items_written"] == 1 + 3 + 2_500 + 1
        assert grown["bytes_written"] >= 2_500 * 8

    def test_rejected_unique_claim_not_counted(self, backend):
        backend.experiments.insert(Experiment(name="same"))
        before = backend.telemetry_counters()
        with pytest.raises(AlreadyExistsError):
            backend.experiments.insert(Experiment(name="same"))
        assert backend.telemetry_counters() == before

    def test_rejected_insert_counts_only_index_rows(self, backend):
        run = Run(id="RUNDUP", experiment_id="E1", name="r")
        backend.runs.insert(run)
        before = backend.telemetry_counters()
        with pytest.raises(AlreadyExistsError):
            backend.runs.insert(run)
        grown = _grown(before, backend.telemetry_counters())
        # The index rows (`*`, namespace, experiment_id and status, each with
        # its month row) are written again before the conditional insert of
        # the entity row, which is not applied and not counted.
        assert grown["items_written"] == 4 * 2

    def test_stale_update_not_counted(self, backend):
        store = Store(backend, actor="test")
        run = store.create_run(store.create_experiment("e").id)
        store.set_run_status(run.id, "running")
        before = backend.telemetry_counters()
        with pytest.raises(ConflictError):
            backend.runs.update(run.touched(name="stale"))
        assert backend.telemetry_counters() == before

    def test_counters_unchanged_by_reads(self, backend):
        store = Store(backend, actor="test")
        experiment = store.create_experiment("e")
        run = store.create_run(experiment.id, params={"lr": 0.1})
        store.log_metrics(run.id, [{"key": "loss", "value": 0.5, "step": 1}])
        before = backend.telemetry_counters()
        store.get_run(run.id)
        store.search_runs("params.lr > 0", experiment_ids=[experiment.id])
        list(store.metric_history(run.id, "loss"))
        store.latest_metrics(run.id)
        assert store.verify_audit().ok
        assert backend.telemetry_counters() == before

    def test_deletes_counted(self, backend):
        backend.blobs.put("configs", "a", {"x": 1})
        before = backend.telemetry_counters()
        backend.blobs.delete("configs", "a")
        grown = _grown(before, backend.telemetry_counters())
        # The blob row and its key-list row.
        assert grown["items_written"] == 2

    def test_counters_exact_across_threads(self, backend):
        per_thread, threads = 25, 4

        def put(worker: int) -> None:
            for index in range(per_thread):
                backend.blobs.put("configs", f"{worker}-{index}", {"n": index})

        workers = [threading.Thread(target=put, args=(w,)) for w in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        counters = backend.telemetry_counters()
        assert counters["items_written"] == 2 * per_thread * threads

    def test_storage_stats_lists_every_table(self, backend):
        Store(backend, actor="test").create_experiment("e")
        stats = backend.storage_stats()
        assert stats["method"] == "system.size_estimates"
        assert stats["keyspace"] == backend.config.keyspace
        assert set(stats["collections"]) == set(module.TABLES)
        sizes = []
        for table, figures in stats["collections"].items():
            assert figures["index_bytes"] == 0, table
            size = figures["bytes"]
            assert size == "unknown" or (isinstance(size, int) and size >= 0), table
            sizes.append(size)
        if "unknown" in sizes:
            assert stats["total_bytes"] == "unknown"
        else:
            assert stats["total_bytes"] == sum(sizes)

    def test_storage_stats_of_closed_store(self, harness):
        backend = harness.create()
        harness.destroy(backend)
        with pytest.raises(BackendUnavailableError):
            backend.storage_stats()


def test_config_is_frozen():
    config = CassandraConfig(hosts=(("h", 9042),), keyspace="ks")
    with pytest.raises(AttributeError):
        config.store = "other"  # type: ignore[misc]
