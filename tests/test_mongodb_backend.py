"""Unit tests of the MongoDB backend: URL handling, encodings, pushdown, errors.

Tests marked `emulator("mongodb")` need a server; they read its URL from
$MLTRAIL_TEST_MONGODB_URL (`python -m mltrail.conformance.emulators up mongodb`
prints one) and are skipped without it.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("pymongo", reason="the mongodb extra is not installed")

import bson
import pymongo
from mltrail import codec
from mltrail.backend import ScanRequest, WriteCounters
from mltrail.backends import mongodb
from mltrail.backends.mongodb import (
    NEVER,
    MongoBackend,
    MongoLocation,
    PackedChunk,
    _Pushdown,
    _Row,
)
from mltrail.clock import new_id
from mltrail.conformance.cases.support import (
    AWKWARD_KEYS,
    FLOAT_VALUES,
    PARAM_VALUES,
    bits,
)
from mltrail.domain import Experiment, MetricPoint, MetricSeries, Run
from mltrail.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    MltrailError,
)
from mltrail.query.paging import parse_order
from mltrail.query.parser import parse
from mltrail.store import Store
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
)

URL_ENV = "MLTRAIL_TEST_MONGODB_URL"
SECRET = "s3cr3t-pa55"


# ---------------------------------------------------------------------------
# URL
# ---------------------------------------------------------------------------


def test_url_default_database():
    location = MongoLocation.parse("mongodb://127.0.0.1:27017")
    assert location.database == "mltrail"
    assert location.url == "mongodb://127.0.0.1:27017/mltrail"


def test_url_database_and_options():
    location = MongoLocation.parse(
        "mongodb://h1:27017,h2:27018/metadata?replicaSet=rs0&w=majority")
    assert location.hosts == "h1:27017,h2:27018"
    assert location.database == "metadata"
    assert location.option("replicaset") == "rs0"
    assert location.uri == \
        "mongodb://h1:27017,h2:27018/metadata?replicaSet=rs0&w=majority"


def test_url_percent_encoded_database():
    assert MongoLocation.parse("mongodb://h/team%2Dx").database == "team-x"


def test_url_srv_scheme():
    location = MongoLocation.parse("mongodb+srv://cluster0.example.net/ml?tls=true")
    assert location.scheme == "mongodb+srv"
    assert location.url == "mongodb+srv://cluster0.example.net/ml?tls=true"


def test_url_hides_credentials():
    url = f"mongodb://ana:{SECRET}@h:27017/ml?authSource=admin"
    location = MongoLocation.parse(url)
    assert SECRET not in location.url
    assert SECRET not in repr(location)
    assert SECRET in location.uri
    assert location.url == "mongodb://h:27017/ml?authSource=admin"


def test_url_hides_secret_options():
    url = ("mongodb://h/ml?tls=true&tlsCertificateKeyFilePassword=" + SECRET
           + "&authMechanismProperties=AWS_SESSION_TOKEN:" + SECRET)
    location = MongoLocation.parse(url)
    assert SECRET not in location.url
    assert location.url == "mongodb://h/ml?tls=true"
    assert SECRET in location.uri


def test_backend_url_without_credentials():
    backend = MongoBackend.from_url(f"mongodb://ana:{SECRET}@127.0.0.1:1/ml")
    try:
        assert backend.url == "mongodb://127.0.0.1:1/ml"
    finally:
        backend.close()


@pytest.mark.parametrize("url", [
    "postgres://h/db", "mongodb:/h/db", "mongodb:///db", "mongodb://h/a.b",
    "mongodb://h/has space", "mongodb://h/" + "d" * 64, 42,
])
def test_url_rejected(url):
    with pytest.raises(InvalidInputError):
        MongoLocation.parse(url)


def test_url_error_never_shows_password():
    url = f"mongodb://ana:{SECRET}/x@h:27017/ml"
    with pytest.raises(InvalidInputError) as caught:
        MongoLocation.parse(url)
    assert "x@h" not in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "percent-encode" in str(caught.value)


def test_invalid_driver_option_rejected():
    with pytest.raises(InvalidInputError) as caught:
        MongoBackend.from_url("mongodb://127.0.0.1:1/ml?connectTimeoutMS=soon")
    assert "connectTimeoutMS" in str(caught.value)


def test_harness_store_url_keeps_auth_database():
    url = f"mongodb://ana:{SECRET}@127.0.0.1:1/base"
    harness = MongoBackend.conformance_harness(url)
    backend = MongoBackend(harness.location.with_database("base_case"),
                           client=harness.client)
    try:
        url = harness.store_url(backend)
        assert url == f"mongodb://ana:{SECRET}@127.0.0.1:1/base_case?authSource=base"
    finally:
        harness.close()


# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------


def test_escape_field_safe_for_mongodb():
    for key in AWKWARD_KEYS.values():
        escaped = mongodb.escape_field(key)
        assert "." not in escaped
        assert not escaped.startswith("$")
        assert not any(char.isspace() for char in escaped)


def test_escape_field_injective():
    keys = [*AWKWARD_KEYS.values(), "a.b", "a%2Eb", "a%252Eb", "$x", "%24x", " x",
            "%20x", "\tx", "a b", "a%20b"]
    escaped = {mongodb.escape_field(key) for key in keys}
    assert len(escaped) == len(set(keys))


@pytest.mark.parametrize("value,expected", [
    (math.nan, None), (math.inf, mongodb.MAX_FLOAT), (-math.inf, -mongodb.MAX_FLOAT),
    (2**70, mongodb.MAX_FLOAT), (-(2**70), -mongodb.MAX_FLOAT), (True, True),
    (5, 5), (0.25, 0.25), ("x", "x"), ([1, 2], None), (None, None),
])
def test_view_scalar(value, expected):
    assert mongodb.view_scalar(value) == expected
    assert type(mongodb.view_scalar(value)) is type(expected)


def test_view_scalar_negative_zero():
    assert math.copysign(1.0, mongodb.view_scalar(-0.0)) == 1.0


def test_entity_document_round_trip():
    run = Run(experiment_id="EXP1", name="r", params=dict(PARAM_VALUES),
              tags={key: "v" for key in AWKWARD_KEYS.values()})
    record = run.to_record()
    document = mongodb.entity_document(record, "run")
    assert mongodb.entity_record(document) == record
    assert Run.from_record(mongodb.entity_record(document)).to_record() == record


def test_entity_document_layout():
    run = Run(experiment_id="EXP1", name="r", params={"opt": {"lr": 0.1}},
              tags={"a.b": "v"}, dataset_ids=["D1"])
    document = mongodb.entity_document(run.to_record(), "run")
    assert document["_id"] == run.id
    assert document["name"] == "r"
    assert document["dataset_ids"] == ["D1"]
    assert set(document["_json"]) >= {"params", "tags", "resources"}
    assert document["_view"] == {"tags": {"a%2Eb": "v"}, "params": {"opt": {"lr": 0.1}}}


def test_entity_document_keys_valid():
    run = Run(experiment_id="EXP1", name="r", params=dict(PARAM_VALUES),
              tags={key: "v" for key in AWKWARD_KEYS.values()})
    for key in _all_keys(mongodb.entity_document(run.to_record(), "run")):
        assert "." not in key
        assert not key.startswith("$")


def test_entity_document_no_special_doubles():
    run = Run(experiment_id="EXP1", name="r", params=dict(PARAM_VALUES))
    for value in _all_values(mongodb.entity_document(run.to_record(), "run")):
        if isinstance(value, float):
            assert math.isfinite(value)
            assert math.copysign(1.0, value) == 1.0 or value != 0.0


def test_view_depth_cut_off():
    deep: dict = {}
    node = deep
    for _ in range(mongodb.MAX_VIEW_DEPTH + 10):
        node["k"] = {}
        node = node["k"]
    node["leaf"] = 1
    run = Run(experiment_id="EXP1", name="r", params=deep)
    view = mongodb.entity_document(run.to_record(), "run")["_view"]["params"]
    depth = 0
    while view:
        view = view["k"]
        depth += 1
    assert depth == mongodb.MAX_VIEW_DEPTH


@pytest.mark.parametrize("name", sorted(FLOAT_VALUES))
def test_packed_points_bit_exact(name):
    value = FLOAT_VALUES[name]
    points = [
        MetricPoint(run_id="RUN1", key="m", value=value, step=1, seq="B:000000",
                    timestamp=datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)),
        MetricPoint(run_id="RUN1", key="m", value=0.5, step=2, seq="B:000001",
                    ci_low=value, drift={"psi": value}, unit="ratio"),
    ]
    rows = [_Row.of(point) for point in points]
    chunk = PackedChunk("RUN1", "m", len(rows), mongodb.pack_rows(rows))
    first, second = chunk.point(0), chunk.point(1)
    assert bits(first.value) == bits(value)
    assert first.timestamp == points[0].timestamp
    assert first.seq == "B:000000"
    assert bits(second.ci_low) == bits(value)
    assert bits(second.drift["psi"]) == bits(value)
    assert second.unit == "ratio"


def test_float_bits_round_trip():
    for value in FLOAT_VALUES.values():
        assert bits(mongodb.bits_float(mongodb.float_bits(value))) == bits(value)


def _chunk(steps: list[int], batch: str) -> PackedChunk:
    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = [_Row.of(MetricPoint(run_id="R", key="m", value=float(step), step=step,
                                timestamp=stamp, seq=f"{batch}:{index:06d}"))
            for index, step in enumerate(steps)]
    return PackedChunk("R", "m", len(rows), mongodb.pack_rows(rows))


def test_merge_overlapping_chunks():
    chunks = [_chunk([0, 2, 4, 6], "A"), _chunk([1, 3, 5], "B"), _chunk([7, 8], "C")]
    merged = [chunk.order(index)[0] for chunk, index in mongodb._merged(chunks)]
    assert merged == list(range(9))


def test_merge_equal_orders_all_kept():
    chunks = [_chunk([1, 1], "A"), _chunk([1], "B")]
    merged = [chunk.order(index)[2] for chunk, index in mongodb._merged(chunks)]
    assert merged == ["A:000000", "A:000001", "B:000000"]


def test_chunks_cut_by_count():
    rows = [_Row.of(MetricPoint(run_id="R", key="m", value=1.0, step=step,
                                seq=f"S{step}"))
            for step in range(mongodb.CHUNK_POINTS * 2 + 1)]
    sizes = [len(chunk) for chunk in mongodb._chunked_rows(rows)]
    assert sizes == [mongodb.CHUNK_POINTS, mongodb.CHUNK_POINTS, 1]


# ---------------------------------------------------------------------------
# Pushdown
# ---------------------------------------------------------------------------


def _pushed(text: str, entity_type=Run):
    return _Pushdown(entity_type).query(parse(text))


def test_pushdown_string_field():
    assert _pushed("name = 'a'") == {"name": "a"}
    assert _pushed("experiment = 'E1'") == {"experiment_id": "E1"}
    assert _pushed("id in ('A', 'B', 3)") == {"_id": {"$in": ["A", "B"]}}


def test_pushdown_non_string_literal_matches_nothing():
    assert _pushed("name = 5") is NEVER
    assert _pushed("status in (1, 2)") is NEVER


def test_pushdown_negations_stay_in_core():
    assert _pushed("name != 'a'") == {}
    assert _pushed("not name = 'a'") == {}
    assert _pushed("tags.t not exists") == {}
    assert _pushed("params.x not in (1)") == {}


def test_pushdown_nan_matches_nothing():
    assert _pushed("params.lr = nan") is NEVER
    assert _pushed("params.lr in (nan)") is NEVER
    assert _pushed("params.lr in (nan, 1)") == {"_view.params.lr": {"$in": [1]}}


def test_pushdown_view_paths_cover_joined_keys():
    query = _pushed("params.a.b = 7")
    assert query == {"$or": [{"_view.params.a%2Eb": 7}, {"_view.params.a.b": 7}]}


def test_pushdown_view_range_includes_bound():
    assert _pushed("params.lr < 0.5") == {"_view.params.lr": {"$lte": 0.5}}
    assert _pushed("params.lr > inf") == {
        "_view.params.lr": {"$gte": mongodb.MAX_FLOAT}}


def test_pushdown_tags_single_path():
    assert _pushed("tags.a.b = 'x'") == {"_view.tags.a%2Eb": "x"}
    assert _pushed("tags.`space key` exists") == {
        "_view.tags.space%20key": {"$exists": True}}


def test_pushdown_like_prefix():
    assert _pushed("name like 'ad%'") == {"name": {"$regex": "^ad"}}
    assert _pushed("name like 'a.b_c%'") == {"name": {"$regex": "^a\\.b"}}
    assert _pushed("name like '%x'") == {}


def test_pushdown_time_literal():
    assert _pushed("created_at >= '2024-01-02T03:04:05Z'") == {
        "created_at": {"$gte": "2024-01-02T03:04:05.000000Z"}}
    assert _pushed("created_at > 'not a time'") == {}
    assert _pushed("created_at > '0999-01-01T00:00:00Z'") == {}


def test_pushdown_or_needs_every_branch():
    assert _pushed("name = 'a' or tags.t = 'b'") == {
        "$or": [{"name": "a"}, {"_view.tags.t": "b"}]}
    assert _pushed("name = 'a' or metrics.acc > 0.5") == {}


def test_pushdown_long_path_stays_in_core():
    assert _pushed("params.a.b.c.d.e.f.g = 1") == {}


def test_pushdown_ignores_metrics_and_other_maps():
    assert _pushed("metrics.acc > 0.5 and resources.gpu = 1") == {}


def test_pushdown_params_only_for_runs():
    assert _pushed("params.x = 1", Experiment) == {}


def test_regex_literal_escapes():
    assert mongodb._regex_literal("a b.c*\t学") == "a\\x20b\\.c\\*\\x09学"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

URL = "mongodb://127.0.0.1:1/ml"


@pytest.mark.parametrize("error,expected", [
    (DuplicateKeyError("E11000 duplicate key", 11000), AlreadyExistsError),
    (AutoReconnect("connection closed"), BackendUnavailableError),
    (OperationFailure("Authentication failed.", 18), BackendUnavailableError),
    (OperationFailure("not authorized", 13), BackendUnavailableError),
    (DocumentTooLarge("too large"), InvalidInputError),
    (OperationFailure("unknown operator", 2), MltrailError),
])
def test_error_translation(error, expected):
    translated = mongodb._translate(error, URL)
    assert type(translated) is expected
    assert URL in str(translated)


def test_translated_errors_chain_cause():
    database = mongodb._MongoDatabase(None, URL)
    with pytest.raises(BackendUnavailableError) as caught, database.errors():
        raise AutoReconnect("connection closed")
    assert isinstance(caught.value.__cause__, AutoReconnect)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_store():
    url = f"mongodb://127.0.0.1:{_closed_port()}/ml?serverSelectionTimeoutMS=300"
    backend = MongoBackend.from_url(url)
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            backend.experiments.get("E1")
        assert "unreachable" in str(caught.value)
    finally:
        backend.close()


def test_missing_driver_names_extra():
    code = ("import sys; sys.modules['pymongo'] = None\n"
            "try:\n    import mltrail.backends.mongodb\n"
            "except Exception as error:\n    print(type(error).__name__, error)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True).stdout
    assert output.startswith("BackendUnavailableError")
    assert "pip install 'mltrail[mongodb]'" in output


def test_capabilities_declared():
    backend = MongoBackend.from_url(URL)
    try:
        capabilities = backend.capabilities
    finally:
        backend.close()
    assert capabilities.transactions is False
    assert capabilities.conditional_writes is True
    assert capabilities.multi_process is True
    assert capabilities.max_item_bytes == 16 * 1024 * 1024
    assert capabilities.native_order_fields == {
        "id", "created_at", "updated_at", "name"}


# ---------------------------------------------------------------------------
# Against a server
# ---------------------------------------------------------------------------

needs_server = pytest.mark.skipif(not os.environ.get(URL_ENV),
                                  reason=f"set {URL_ENV} to a MongoDB URL")


@pytest.fixture(scope="module")
def harness():
    if not os.environ.get(URL_ENV):
        pytest.skip(f"set {URL_ENV} to a MongoDB URL")
    instance = MongoBackend.conformance_harness(os.environ[URL_ENV])
    yield instance
    instance.close()


@pytest.fixture
def backend(harness):
    instance = harness.create()
    yield instance
    harness.destroy(instance)


@pytest.fixture
def store(backend):
    return Store(backend, actor="test")


def _all_keys(document):
    if isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from _all_keys(value)
    elif isinstance(document, list):
        for item in document:
            yield from _all_keys(item)


def _all_values(document):
    if isinstance(document, dict):
        for value in document.values():
            yield from _all_values(value)
    elif isinstance(document, list):
        for item in document:
            yield from _all_values(item)
    else:
        yield document


@pytest.mark.emulator("mongodb")
@needs_server
def test_initialize_twice_on_same_database(harness, backend):
    again = MongoBackend(backend.location, client=harness.client)
    again.initialize()
    again.initialize()
    names = {i["name"] for i in backend.db.collection("runs").list_indexes()}
    assert "experiment_id_1__id_1" in names


@pytest.mark.emulator("mongodb")
@needs_server
def test_stored_run_document(store, backend):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id, params={"$lr": math.nan, "a.b": -0.0},
                           tags={"team": "cv"})
    document = backend.db.collection("runs").find_one({"_id": run.id})
    assert document["experiment_id"] == experiment.id
    assert document["status"] == "pending"
    params = codec.loads(document["_json"]["params"])
    assert math.isnan(params["$lr"])
    assert math.copysign(1.0, params["a.b"]) == -1.0
    assert document["_view"]["params"] == {"%24lr": None, "a%2Eb": 0.0}
    assert document["_incarnation"]


@pytest.mark.emulator("mongodb")
@needs_server
def test_metric_chunks_and_latest(store, backend):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    points = [{"key": "m", "value": float(i), "step": i} for i in range(5_000)]
    store.log_metrics(run.id, points, batch_id="BATCH1")
    store.log_metrics(run.id, points, batch_id="BATCH1")
    chunks = backend.db.collection("metric_chunks")
    assert chunks.count_documents({"run_id": run.id}) == 3
    assert store.latest_metrics(run.id)["m"].step == 4_999
    latest = list(backend.db.collection("metric_latest").find({"run_id": run.id}))
    # The first candidate and the repeat, whose points got later timestamps.
    assert [d["step"] for d in latest] == [4_999, 4_999]


def _points(run_id: str, steps: list[int], keys: str = "m",
            batch: str = "B") -> list[MetricPoint]:
    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [MetricPoint(run_id=run_id, key=key, value=float(step), step=step,
                        timestamp=stamp, seq=f"{batch}:{index:010d}:{key}")
            for index, step in enumerate(steps) for key in keys]


def _candidate_steps(backend, run_id: str, key: str = "m") -> list[int]:
    documents = backend.db.collection("metric_latest").find(
        {"run_id": run_id, "key": key})
    return sorted(document["step"] for document in documents)


@pytest.mark.emulator("mongodb")
@needs_server
def test_latest_keeps_first_and_own_candidate(backend):
    for batch, step in enumerate((3, 9, 12, 5)):
        backend.metrics.append("R", _points("R", [step], batch=f"B{batch}"))
    # The first candidate stays and 12 replaced 9. The 5 is not stored,
    # because this writer's own candidate is later.
    assert _candidate_steps(backend, "R") == [3, 12]
    assert backend.metrics.latest(["R"])["R"]["m"].step == 12


@pytest.mark.emulator("mongodb")
@needs_server
def test_latest_other_writers_prune(harness, backend):
    def writer():
        return MongoBackend(backend.location, client=harness.client).metrics

    first, second = backend.metrics, writer()
    first.append("R", _points("R", [3], batch="A1"))
    first.append("R", _points("R", [9], batch="A2"))
    second.append("R", _points("R", [5], batch="B1"))
    # The second writer found the pair started with a later candidate.
    assert _candidate_steps(backend, "R") == [3, 9]
    second.append("R", _points("R", [20], batch="B2"))
    # 20 outranks 9, which the second writer then deletes.
    assert _candidate_steps(backend, "R") == [3, 20]
    first.append("R", _points("R", [30], batch="A3"))
    assert _candidate_steps(backend, "R") == [3, 20, 30]
    writer().append("R", _points("R", [1], batch="C1"))
    assert _candidate_steps(backend, "R") == [3, 30]
    assert first.latest(["R"])["R"]["m"].step == 30


@pytest.mark.emulator("mongodb")
@needs_server
def test_retry_by_other_writer_adds_nothing(harness, backend):
    points = _points("R", list(range(3_000)), "ab")
    backend.metrics.append("R", points)
    documents_before = {name: backend.db.collection(name).count_documents({})
                        for name in ("metric_chunks", "metric_latest")}
    other = MongoBackend(backend.location, client=harness.client)
    other.metrics.append("R", points)
    backend.metrics.append("R", points)
    for name, count in documents_before.items():
        assert backend.db.collection(name).count_documents({}) == count
    assert other.telemetry_counters()["items_written"] == 0
    assert [p.step for p in backend.metrics.history("R", "a")] == list(range(3_000))


@pytest.mark.emulator("mongodb")
@needs_server
def test_latest_after_delete_run_elsewhere(harness, backend):
    backend.metrics.append("R", _points("R", [7], batch="A1"))
    MongoBackend(backend.location, client=harness.client).metrics.delete_run("R")
    backend.metrics.append("R", _points("R", [4], batch="A2"))
    assert backend.metrics.latest(["R"])["R"]["m"].step == 4


@pytest.mark.emulator("mongodb")
@needs_server
def test_latest_reads_earlier_layout(backend):
    row = _Row.of(_points("R", [50], batch="OLD")[0])
    # A candidate as stored before first candidates existed.
    backend.db.collection("metric_latest").insert_one(
        mongodb._latest_document("R", "m", row))
    backend.metrics.append("R", _points("R", [10], batch="A1"))
    assert backend.metrics.latest(["R"])["R"]["m"].step == 50
    backend.metrics.append("R", _points("R", [60], batch="A2"))
    assert backend.metrics.latest(["R"])["R"]["m"].step == 60
    assert backend.metrics.keys("R") == ["m"]


@pytest.mark.emulator("mongodb")
@needs_server
def test_latest_same_object_threads(backend):
    def append(worker: int) -> None:
        for index in range(10):
            step = index * 4 + worker
            backend.metrics.append("R", _points("R", [step], batch=f"W{worker}-{index}"))

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.metrics.latest(["R"])["R"]["m"].step == 39
    # The first candidate, the latest one, and at most one candidate per thread
    # whose deletion raced with another thread's append.
    assert len(_candidate_steps(backend, "R")) <= 6


def _series(run_id: str, key: str, steps: list[int], batch: str) -> MetricSeries:
    base = 1_700_000_000_000_000
    return MetricSeries(run_id=run_id, key=key, values=[step / 3 for step in steps],
                        steps=steps, stamps=[base + step % 5 for step in steps],
                        seqs=[f"{batch}:{index:010d}" for index in range(len(steps))])


def _long_series(run_id: str) -> list[MetricSeries]:
    # Two series of "a" and one of "b", 21,500 points in all, steps out of order.
    return [_series(run_id, "a", list(range(12_000))[::-1], "A"),
            _series(run_id, "b", list(range(9_000)), "B"),
            _series(run_id, "a", list(range(12_000, 12_500)), "C")]


@pytest.mark.emulator("mongodb")
@needs_server
def test_append_series_matches_points(backend):
    metrics = backend.metrics
    metrics.append_series("S", _long_series("S"))
    points = [point for one in _long_series("P") for point in one.points()]
    for start in range(0, len(points), 10_000):
        metrics.append("P", points[start:start + 10_000])
    for key in ("a", "b"):
        by_series = [(p.step, p.timestamp, p.seq, bits(p.value))
                     for p in metrics.history("S", key)]
        by_points = [(p.step, p.timestamp, p.seq, bits(p.value))
                     for p in metrics.history("P", key)]
        assert by_series == by_points
    latest = metrics.latest(["S", "P"])
    assert latest["S"]["a"].step == latest["P"]["a"].step == 12_499
    assert latest["S"]["b"].seq == latest["P"]["b"].seq


@pytest.mark.emulator("mongodb")
@needs_server
def test_append_series_batches_bounded(monkeypatch, backend):
    sizes = []
    write = backend.metrics._append_rows

    def record(run_id, by_key):
        sizes.append(sum(len(rows) for rows in by_key.values()))
        write(run_id, by_key)

    monkeypatch.setattr(backend.metrics, "_append_rows", record)
    backend.metrics.append_series("S", _long_series("S"))
    assert sizes == [10_000, 10_000, 1_500]


class _Commands(pymongo.monitoring.CommandListener):
    """The (command, collection, filter field names) of each command sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, tuple]] = []

    def started(self, event) -> None:
        command = event.command
        name = event.command_name
        statements = command.get("deletes") or command.get("updates") or \
            [{"q": command.get("filter")}]
        filters = tuple(tuple(sorted(s["q"])) if s.get("q") else () for s in statements)
        self.sent.append((name, command.get(name), filters))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


@pytest.mark.emulator("mongodb")
@needs_server
def test_append_requests_use_only_ids(harness, backend):
    commands = _Commands()
    client = pymongo.MongoClient(harness.location.uri, event_listeners=[commands])
    try:
        metrics = MongoBackend(backend.location, client=client).metrics
        keys = "abcdefghij"
        for batch, steps in enumerate(([0], range(1, 100), range(100, 200))):
            commands.sent.clear()
            metrics.append("R", _points("R", list(steps), keys, batch=f"B{batch}"))
            names = [(name, collection) for name, collection, _ in commands.sent]
            expected = [("insert", "metric_chunks"), ("insert", "metric_latest")]
            if batch == 2:
                # The candidates of batch 1 are replaced; the first ones stay.
                expected.append(("delete", "metric_latest"))
                assert commands.sent[-1][2] == (("_id",),) * len(keys)
            assert names == expected
        assert sorted(metrics.latest(["R"])["R"]) == list(keys)
    finally:
        client.close()


@pytest.mark.emulator("mongodb")
@needs_server
def test_special_floats_never_stored_as_doubles(store, backend):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.log_metrics(run.id, [{"key": "m", "value": v, "step": i}
                               for i, v in enumerate(FLOAT_VALUES.values())])
    for name in ("metric_chunks", "metric_latest"):
        for document in backend.db.collection(name).find({"run_id": run.id}):
            for value in _all_values(document):
                if isinstance(value, float):
                    assert math.isfinite(value)
                    assert value != 0.0 or math.copysign(1.0, value) > 0


@pytest.mark.emulator("mongodb")
@needs_server
def test_update_inserts_revision_claim(store, backend):
    experiment = store.create_experiment("e")
    store.set_tags("experiment", experiment.id, {"k": "v"})
    claims = list(backend.db.collection("revisions").find())
    assert len(claims) == 1
    assert claims[0]["_id"].startswith(f"experiments|{experiment.id}|")
    assert claims[0]["_id"].endswith("|1")


@pytest.mark.emulator("mongodb")
@needs_server
def test_abandoned_claim_applied(store, backend):
    experiment = store.create_experiment("e")
    collection = backend.db.collection("experiments")
    incarnation = collection.find_one({"_id": experiment.id})["_incarnation"]
    abandoned = experiment.touched(tags={"from": "crashed writer"})
    document = mongodb.entity_document(abandoned.to_record(), "experiment")
    document["_incarnation"] = incarnation
    backend.db.collection("revisions").insert_one({
        "_id": f"experiments|{experiment.id}|{incarnation}|1",
        "at": datetime.now(timezone.utc) - timedelta(minutes=5), "doc": document})
    with pytest.raises(ConflictError):
        backend.experiments.update(experiment.touched(tags={"from": "late writer"}))
    assert backend.experiments.get(experiment.id).tags == {"from": "crashed writer"}


@pytest.mark.emulator("mongodb")
@needs_server
def test_fresh_claim_not_applied(store, backend):
    experiment = store.create_experiment("e")
    first = experiment.touched(tags={"writer": "a"})
    backend.experiments.update(first)
    with pytest.raises(ConflictError):
        backend.experiments.update(experiment.touched(tags={"writer": "b"}))
    assert backend.experiments.get(experiment.id).tags == {"writer": "a"}


@pytest.mark.emulator("mongodb")
@needs_server
def test_concurrent_updates_lose_nothing(harness, store, backend):
    experiment = store.create_experiment("e")
    url = harness.store_url(backend)
    errors: list[Exception] = []

    def write(worker: int) -> None:
        other = Store(MongoBackend.from_url(url), actor=f"w{worker}")
        try:
            for index in range(8):
                other.set_tags("experiment", experiment.id, {f"w{worker}-{index}": "x"})
        except MltrailError as error:  # reported by the assertion below
            errors.append(error)
        finally:
            other.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.get_experiment(experiment.id).tags) == 32
    assert store.verify_audit().ok


@pytest.mark.emulator("mongodb")
@needs_server
def test_scan_pushdown_filters_in_store(store, backend):
    experiment = store.create_experiment("e")
    for team in ("a", "b", "a"):
        store.create_run(experiment.id, tags={"team": team})
    request = ScanRequest(filter=parse("tags.team = 'a'"))
    assert [r.tags["team"] for r in backend.runs.scan(request)] == ["a", "a"]
    assert list(backend.runs.scan(ScanRequest(filter=parse("params.x = nan")))) == []


@pytest.mark.emulator("mongodb")
@needs_server
def test_scan_native_order_after(store, backend):
    experiment = store.create_experiment("e")
    runs = [store.create_run(experiment.id, name=name) for name in ("c", "a", "b", "a")]
    order = parse_order(["name desc"])
    ordered = list(backend.runs.scan(ScanRequest(order=order)))
    expected = sorted(runs, key=lambda r: (-ord(r.name), r.id))
    assert [r.id for r in ordered] == [r.id for r in expected]
    after = (expected[1].name, expected[1].id)
    rest = list(backend.runs.scan(ScanRequest(order=order, after=after)))
    assert [r.id for r in rest] == [r.id for r in expected[2:]]


@pytest.mark.emulator("mongodb")
@needs_server
def test_duplicate_unique_key_names_fields(backend):
    backend.experiments.insert(Experiment(name="same"))
    with pytest.raises(AlreadyExistsError) as caught:
        backend.experiments.insert(Experiment(name="same"))
    assert "'name': 'same'" in str(caught.value)


# ---------------------------------------------------------------------------
# Telemetry
# ---------------------------------------------------------------------------


def _stored(harness, backend) -> tuple[int, int]:
    """Return the number of documents in the store's database and their BSON bytes."""
    database = harness.client[backend.database_name]
    documents = [document for name in database.list_collection_names()
                 for document in database[name].find()]
    return len(documents), sum(len(bson.encode(d)) for d in documents)


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_start_at_zero(backend):
    assert backend.telemetry_counters() == {"items_written": 0, "bytes_written": 0}


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_match_inserted_documents(harness, backend):
    experiment = Experiment(name="counted")
    backend.experiments.insert(experiment)
    stored = harness.client[backend.database_name]["experiments"].find_one(
        {"_id": experiment.id})
    counters = backend.telemetry_counters()
    assert counters["items_written"] == 1
    assert counters["bytes_written"] == len(bson.encode(stored))


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_match_create_run(harness, store, backend):
    experiment = store.create_experiment("e")
    documents_before, bytes_before = _stored(harness, backend)
    counters_before = backend.telemetry_counters()
    store.create_run(experiment.id, params={"lr": 0.1}, tags={"team": "cv"})
    documents_after, bytes_after = _stored(harness, backend)
    grown = _grown(counters_before, backend.telemetry_counters())
    # Creating a run only inserts documents: the run, its audit event, its
    # lineage node and blob records.
    assert grown["items_written"] == documents_after - documents_before
    assert grown["bytes_written"] == bytes_after - bytes_before


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_match_metric_chunks(harness, store, backend):
    run = store.create_run(store.create_experiment("e").id)
    documents_before, bytes_before = _stored(harness, backend)
    counters_before = backend.telemetry_counters()
    points = [{"key": "loss", "value": step / 7, "step": step} for step in range(5_000)]
    store.log_metrics(run.id, points)
    documents_after, bytes_after = _stored(harness, backend)
    grown = _grown(counters_before, backend.telemetry_counters())
    # 5,000 points make three chunks of at most CHUNK_POINTS, plus one latest
    # point. Logging metrics writes no audit event.
    assert documents_after - documents_before == 4
    assert grown["items_written"] == 4
    assert grown["bytes_written"] == bytes_after - bytes_before


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_count_replaced_candidates(backend):
    for batch, step in enumerate((3, 9, 12)):
        backend.metrics.append("R", _points("R", [step], batch=f"B{batch}"))
    counters = backend.telemetry_counters()
    # Three chunks and three candidates inserted, and the candidate of 9 deleted.
    assert counters["items_written"] == 7
    stored = [document for name in ("metric_chunks", "metric_latest")
              for document in backend.db.collection(name).find()]
    assert len(stored) == 5
    deleted = mongodb._latest_document("R", "m", _Row.of(_points("R", [9], batch="B1")[0]))
    assert counters["bytes_written"] == \
        sum(len(bson.encode(d)) for d in stored) + len(bson.encode(deleted))


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_count_updates(store, backend):
    run = store.create_run(store.create_experiment("e").id)
    before = backend.telemetry_counters()
    store.set_run_status(run.id, "running")
    grown = _grown(before, backend.telemetry_counters())
    # The revision claim, the replaced run document and the audit event.
    assert grown["items_written"] == 3
    assert grown["bytes_written"] > 0


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_count_deletes_without_bytes(store, backend):
    run = store.create_run(store.create_experiment("e").id)
    store.log_metrics(run.id, [{"key": k, "value": 1.0, "step": 1} for k in "abc"])
    before = backend.telemetry_counters()
    backend.metrics.delete_run(run.id)
    grown = _grown(before, backend.telemetry_counters())
    # One chunk and one latest point per key.
    assert grown["items_written"] == 6
    assert grown["bytes_written"] == 0
    backend.metrics.delete_run(run.id)
    assert backend.telemetry_counters()["items_written"] == before["items_written"] + 6


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_unchanged_by_reads(store, backend):
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


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_skip_rejected_writes(store, backend):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.set_run_status(run.id, "running")
    before = backend.telemetry_counters()
    with pytest.raises(AlreadyExistsError):
        backend.runs.insert(run)
    with pytest.raises(AlreadyExistsError):
        backend.experiments.insert(Experiment(name="e"))
    with pytest.raises(ConflictError):
        backend.runs.update(run.touched(name="stale"))
    assert backend.telemetry_counters() == before


@pytest.mark.emulator("mongodb")
@needs_server
def test_counters_exact_across_threads(backend):
    per_thread, threads = 25, 4

    def insert() -> None:
        for _ in range(per_thread):
            backend.experiments.insert(Experiment(name=new_id()))

    workers = [threading.Thread(target=insert) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert backend.telemetry_counters()["items_written"] == per_thread * threads


def test_uncounted_write_method_rejected():
    collection = mongodb._CountedCollection(object(), WriteCounters())
    with pytest.raises(AttributeError, match="update_one is not counted"):
        collection.update_one({}, {"$set": {"a": 1}})


@pytest.mark.emulator("mongodb")
@needs_server
def test_storage_stats_per_collection(harness, store, backend):
    run = store.create_run(store.create_experiment("e").id)
    store.log_metrics(run.id, [{"key": "loss", "value": 0.5, "step": 1}])
    stats = backend.storage_stats()
    database = harness.client[backend.database_name]
    assert stats["method"] == "$collStats"
    assert set(stats["collections"]) == set(database.list_collection_names())
    for name in ("experiments", "runs", "metric_chunks", "audit_events"):
        figures = stats["collections"][name]
        assert figures["documents"] == database[name].count_documents({}), name
        assert figures["bytes"] > 0, name
        assert figures["index_bytes"] > 0, name
    assert stats["total_bytes"] == sum(
        figures["bytes"] + figures["index_bytes"]
        for figures in stats["collections"].values())


def test_storage_stats_unreachable_names_database():
    url = f"mongodb://127.0.0.1:{_closed_port()}/ml?serverSelectionTimeoutMS=300"
    backend = MongoBackend.from_url(url)
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            backend.storage_stats()
        assert "database 'ml'" in str(caught.value)
    finally:
        backend.close()
