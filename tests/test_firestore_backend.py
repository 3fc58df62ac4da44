"""Unit tests of the Firestore backend: URLs, escaping, errors, layout and indexes.

Tests marked `emulator("firestore")` run against the emulator whose URL is in
MLTRAIL_TEST_FIRESTORE_URL (start it with `python -m mltrail.conformance.emulators
up firestore`) and skip without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import re
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.firestore")

from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as google_auth_exceptions
from google.cloud.firestore_v1 import FieldFilter
from google.cloud.firestore_v1.query import Query
from mltrail import codec
from mltrail.backend import ScanRequest
from mltrail.backends import firestore as fs
from mltrail.conformance.cases.support import (
    AWKWARD_KEYS,
    FLOAT_VALUES,
    bits,
)
from mltrail.domain import Experiment, MetricPoint, Run
from mltrail.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from mltrail.query.ast import And, Compare, Exists, In
from mltrail.query.evaluate import OrderKey
from mltrail.store import Store

URL_ENV = "MLTRAIL_TEST_FIRESTORE_URL"
INDEX_FILE = Path(__file__).resolve().parents[1] / "docs" / "firestore.indexes.json"
T0 = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)


def needs_emulator(test):
    """Mark a test that needs the Firestore emulator, skipping it without one."""
    test = pytest.mark.emulator("firestore")(test)
    reason = f"set {URL_ENV} to a firestore:// URL of a running emulator"
    return pytest.mark.skipif(not os.environ.get(URL_ENV), reason=reason)(test)


# ---------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------


@pytest.fixture
def no_emulator_env(monkeypatch):
    monkeypatch.delenv(fs.EMULATOR_ENV, raising=False)


def test_url_defaults(no_emulator_env):
    settings = fs.FirestoreSettings.from_url("firestore://my-project")
    assert settings.project == "my-project"
    assert settings.database == "(default)"
    assert settings.emulator_host is None
    assert settings.root == "mltrail/default"
    assert settings.timeout == 60.0


def test_url_all_parts(no_emulator_env):
    url = "firestore://proj/ml-db?emulator_host=127.0.0.1:8080&root=a/b/c/d&timeout=5"
    settings = fs.FirestoreSettings.from_url(url)
    assert settings.database == "ml-db"
    assert settings.emulator_host == "127.0.0.1:8080"
    assert settings.root == "a/b/c/d"
    assert settings.timeout == 5.0


def test_url_round_trip(no_emulator_env):
    url = "firestore://proj/ml-db?emulator_host=127.0.0.1:8080&root=a/b&timeout=5"
    settings = fs.FirestoreSettings.from_url(url)
    assert fs.FirestoreSettings.from_url(settings.to_url()) == settings


def test_url_of_defaults_is_short(no_emulator_env):
    assert fs.FirestoreSettings("proj").to_url() == "firestore://proj"


def test_emulator_host_from_environment(monkeypatch):
    monkeypatch.setenv(fs.EMULATOR_ENV, "127.0.0.1:9999")
    settings = fs.FirestoreSettings.from_url("firestore://proj")
    assert settings.emulator_host == "127.0.0.1:9999"
    assert "emulator_host=127.0.0.1:9999" in settings.to_url()


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://proj",
        "firestore://",
        "firestore://proj/Bad_DB",
        "firestore://proj?root=only-collection",
        "firestore://proj?root=a//b",
        "firestore://proj?root=a/__reserved__",
        "firestore://proj?timeout=0",
        "firestore://proj?timeout=soon",
        "firestore://proj?emulator_host=localhost",
        "firestore://proj?colour=blue",
        "firestore://proj?root=a/b&root=c/d",
    ],
)
def test_bad_url_rejected(no_emulator_env, url):
    with pytest.raises(InvalidInputError):
        fs.FirestoreSettings.from_url(url)


def test_url_password_never_shown(no_emulator_env):
    with pytest.raises(InvalidInputError) as caught:
        fs.FirestoreSettings.from_url("firestore://user:s3cret@proj")
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in str(caught.value.value)


def test_unknown_option_named(no_emulator_env):
    with pytest.raises(InvalidInputError) as caught:
        fs.FirestoreSettings.from_url("firestore://proj?colour=blue")
    assert "colour" in str(caught.value)
    assert "emulator_host" in str(caught.value)


def test_missing_driver_names_extra(monkeypatch):
    monkeypatch.setattr(fs, "_IMPORT_ERROR", ImportError("no google.cloud"))
    with pytest.raises(BackendUnavailableError) as caught:
        fs.FirestoreBackend(fs.FirestoreSettings("proj"))
    assert "pip install 'mltrail[firestore]'" in str(caught.value)


# ---------------------------------------------------------------------------
# Field names
# ---------------------------------------------------------------------------

ESCAPE_CASES = [
    *AWKWARD_KEYS.values(),
    "__x__",
    "____",
    "~",
    "~a",
    "~~",
    "__",
    "_a_",
]


@pytest.mark.parametrize("name", ESCAPE_CASES)
def test_escape_round_trip(name):
    escaped = fs.escape_field_name(name)
    assert fs.unescape_field_name(escaped) == name


@pytest.mark.parametrize("name", ESCAPE_CASES)
def test_escaped_name_not_reserved(name):
    # Firestore documents names matching __.*__ as reserved.
    escaped = fs.escape_field_name(name)
    assert re.fullmatch(r"__.*__", escaped, re.DOTALL) is None
    assert escaped != ""


def test_escape_injective():
    escaped = [fs.escape_field_name(name) for name in ESCAPE_CASES]
    assert len(set(escaped)) == len(set(ESCAPE_CASES))


def test_plain_name_unchanged():
    assert fs.escape_field_name("learning rate.x") == "learning rate.x"


# ---------------------------------------------------------------------------
# Error translation
# ---------------------------------------------------------------------------

TRANSLATIONS = [
    (google_exceptions.AlreadyExists("exists"), AlreadyExistsError),
    (google_exceptions.NotFound("No document to update: projects/p"), NotFoundError),
    (
        google_exceptions.NotFound("The database db does not exist"),
        BackendUnavailableError,
    ),
    (google_exceptions.FailedPrecondition("stored version differs"), ConflictError),
    (google_exceptions.Aborted("contention"), ConflictError),
    (
        google_exceptions.FailedPrecondition("The query requires an index"),
        fs.MissingIndexError,
    ),
    (google_exceptions.InvalidArgument("too big"), InvalidInputError),
    (google_exceptions.PermissionDenied("no"), BackendUnavailableError),
    (google_exceptions.Unauthenticated("no"), BackendUnavailableError),
    (google_exceptions.ServiceUnavailable("down"), BackendUnavailableError),
    (google_exceptions.DeadlineExceeded("slow"), BackendUnavailableError),
    (google_exceptions.RetryError("gave up", None), BackendUnavailableError),
    (google_auth_exceptions.DefaultCredentialsError("none"), BackendUnavailableError),
]


@pytest.mark.parametrize(
    "error,expected", TRANSLATIONS, ids=[type(e).__name__ for e, _ in TRANSLATIONS]
)
def test_error_translated(error, expected):
    translated = fs.translate_error(error, "read run 'R1'")
    assert type(translated) is expected
    assert "read run 'R1'" in str(translated)


def test_missing_index_is_unavailable():
    assert issubclass(fs.MissingIndexError, BackendUnavailableError)


def test_driver_error_chained():
    with pytest.raises(ConflictError) as caught, fs._driver_errors("update run 'R1'"):
        raise google_exceptions.FailedPrecondition("stored version differs")
    assert isinstance(caught.value.__cause__, google_exceptions.FailedPrecondition)


def test_credentials_hint():
    error = google_auth_exceptions.DefaultCredentialsError("none")
    message = str(fs.translate_error(error, "connect"))
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "emulator_host" in message


# ---------------------------------------------------------------------------
# Document layout
# ---------------------------------------------------------------------------


def _points(count, key="m", batch="BATCH", **extra):
    return [
        MetricPoint(
            run_id="R1",
            key=key,
            value=float(i),
            step=i,
            timestamp=T0 + timedelta(seconds=i),
            seq=f"{batch}:{i:06d}",
            **extra,
        )
        for i in range(count)
    ]


def _decoded(chunks):
    return [row for _, document in chunks for row in fs.decode_chunk(document)]


@pytest.mark.parametrize("name", sorted(FLOAT_VALUES))
def test_chunk_value_bits(name):
    value = FLOAT_VALUES[name]
    point = MetricPoint(
        run_id="R1", key="m", value=value, step=1, timestamp=T0, seq="B:000000"
    )
    (row,) = _decoded(fs.plan_chunks("R1", [point]))
    assert bits(row[3]) == bits(value)


@pytest.mark.parametrize(
    "name", ["nan_with_payload", "negative_zero", "negative_infinity"]
)
def test_latest_value_bits(name):
    value = FLOAT_VALUES[name]
    point = MetricPoint(
        run_id="R1",
        key="m",
        value=value,
        step=1,
        timestamp=T0,
        seq="B:000000",
        ci_low=value,
        drift={"psi": value},
    )
    decoded = fs.decode_latest("R1", "m", fs.encode_latest(fs.point_row(point)))
    assert bits(decoded.value) == bits(value)
    assert bits(decoded.ci_low) == bits(value)
    assert bits(decoded.drift["psi"]) == bits(value)
    assert decoded.timestamp == T0
    assert decoded.seq == "B:000000"


def test_chunk_rows_in_history_order():
    points = _points(50)
    points.reverse()
    rows = _decoded(fs.plan_chunks("R1", points))
    assert [row[0] for row in rows] == list(range(50))
    assert rows[7][2] == "BATCH:000007"


def test_chunk_extras_round_trip():
    points = _points(3, unit="ratio", ci_low=-0.0)
    rows = _decoded(fs.plan_chunks("R1", points))
    extras = json.loads(rows[0][4])
    assert extras["unit"] == "ratio"
    assert bits(codec.decode_value(extras["ci_low"])) == bits(-0.0)


def test_chunks_same_for_retry():
    first = fs.plan_chunks("R1", _points(9000))
    again = fs.plan_chunks("R1", list(reversed(_points(9000))))
    assert [chunk_id for chunk_id, _ in first] == [chunk_id for chunk_id, _ in again]


def test_chunks_differ_per_batch():
    first = {chunk_id for chunk_id, _ in fs.plan_chunks("R1", _points(10, batch="A"))}
    second = {chunk_id for chunk_id, _ in fs.plan_chunks("R1", _points(10, batch="B"))}
    assert not first & second


def test_chunk_point_limit():
    chunks = fs.plan_chunks("R1", _points(fs.CHUNK_MAX_POINTS * 2 + 1))
    assert sorted(document["n"] for _, document in chunks) == [
        1,
        fs.CHUNK_MAX_POINTS,
        fs.CHUNK_MAX_POINTS,
    ]


def test_chunk_byte_limit():
    drift = {f"indicator-{i:03d}": 0.5 for i in range(200)}
    chunks = fs.plan_chunks("R1", _points(300, drift=drift))
    assert len(chunks) > 1
    for _, document in chunks:
        size = len(document["points"]) + len(document["seqs"]) + len(document["extras"])
        assert size < fs.MAX_DOCUMENT_BYTES // 2


def test_chunks_stay_in_one_bucket():
    width = 1 << fs.BUCKET_BITS
    steps = [0, width - 1, width, 3 * width + 5]
    points = [
        MetricPoint(
            run_id="R1",
            key="m",
            value=1.0,
            step=step,
            timestamp=T0,
            seq=f"B:{index:06d}",
        )
        for index, step in enumerate(steps)
    ]
    for _, document in fs.plan_chunks("R1", points):
        buckets = {row[0] >> fs.BUCKET_BITS for row in fs.decode_chunk(document)}
        assert buckets == {document["bucket"]}


def test_chunk_bounds():
    for _, document in fs.plan_chunks("R1", _points(20)):
        rows = list(fs.decode_chunk(document))
        assert fs.decode_order_key(document["lo"]) == rows[0][:3]
        assert fs.decode_order_key(document["hi"]) == rows[-1][:3]


def test_order_key_bytes_sort_like_tuples():
    keys = [
        (step, micros, seq)
        for step in (0, 1, 255, 256, 2**63 - 1)
        for micros in (-(2**40), -1, 0, 1, 2**40)
        for seq in ("", "A", "A:1", "B", "é")
    ]
    by_bytes = sorted(keys, key=lambda k: fs.encode_order_key(*k))
    assert by_bytes == sorted(keys)


def test_order_key_round_trip():
    key = (2**63 - 1, -123_456_789, "01HX:000042")
    assert fs.decode_order_key(fs.encode_order_key(*key)) == key


class _Opened(dict):
    """A chunk document that records when the merge decodes it."""

    log: list

    def __getitem__(self, name):
        if name == "points":
            self.log.append(self["prefix"] + "opened")
        return super().__getitem__(name)


def _chunk(batch, steps, log):
    points = [
        MetricPoint(
            run_id="R1",
            key="m",
            value=float(s),
            step=s,
            timestamp=T0,
            seq=f"{batch}:{i:06d}",
        )
        for i, s in enumerate(steps)
    ]
    ((_, document),) = fs.plan_chunks("R1", points)
    chunk = _Opened(document)
    chunk.log = log
    return chunk


def test_merge_interleaved_chunks():
    log: list = []
    chunks = [
        _chunk("A", [0, 2, 4], log),
        _chunk("B", [1, 3, 5], log),
        _chunk("C", [6, 7], log),
    ]
    rows = list(fs.merge_chunks(chunks))
    assert [row[0] for row in rows] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_merge_opens_chunks_lazily():
    log: list = []
    chunks = iter([_chunk("A", [0, 1], log), _chunk("B", [5, 6], log)])
    merged = fs.merge_chunks(chunks)
    assert next(merged)[0] == 0
    assert log == ["A:00000opened"]


def test_merge_applies_bounds():
    log: list = []
    bounds = fs._Bounds(2, 4, None, None)
    rows = fs.merge_chunks([_chunk("A", list(range(8)), log)], bounds.accepts)
    assert [row[0] for row in rows] == [2, 3, 4]


def test_params_view_keys():
    view = fs.params_view(
        {
            "a": {"b": 1},
            "a.b": 2,
            "x": [1],
            "n": math.nan,
            "big": 2**70,
            "__name__": "s",
        }
    )
    assert view["a.b"] == [1, 2]
    assert "x" not in view
    assert "n" not in view
    assert view["big"] == [float(2**70)]
    assert view["~__name__"] == ["s"]


def test_entity_document_fields():
    run = Run(experiment_id="E1", name="r", params={"lr": 0.1}, tags={"$t": "v"})
    document = fs.entity_document("run", run.to_record())
    assert json.loads(document["doc"]) == run.to_record()
    assert document["created_at"] == run.created_at
    assert document["tv"] == {"$t": "v"}
    assert document["pv"] == {"lr": [0.1]}
    assert document["uniq"] is None


def test_unique_claim_id_by_key():
    first = Experiment(name="e").to_record()
    second = Experiment(name="e").to_record()
    other = Experiment(name="e", namespace="b").to_record()
    assert fs.unique_claim_id("experiment", first) == fs.unique_claim_id(
        "experiment", second
    )
    assert fs.unique_claim_id("experiment", first) != fs.unique_claim_id(
        "experiment", other
    )


def test_audit_ids_sort_by_seq():
    ids = [fs.audit_document_id(seq) for seq in (1, 2, 10, 99, 1000)]
    assert ids == sorted(ids)


# ---------------------------------------------------------------------------
# Query plans and indexes
# ---------------------------------------------------------------------------


def _request(*parts, namespace=None, order=None):
    expr = None
    if len(parts) == 1:
        expr = parts[0]
    elif parts:
        expr = And(tuple(parts))
    keys = ()
    if order is not None:
        keys = (OrderKey(("created_at",), order == "desc"),)
    return ScanRequest(namespace=namespace, filter=expr, order=keys)


def test_plan_namespace_and_one_field():
    plan = fs.plan_scan(
        "run",
        _request(
            In(("experiment_id",), ("E1", "E2")),
            Compare(("status",), "=", "running"),
            namespace="team",
        ),
    )
    assert plan.filters == (
        ("experiment_id", "in", ["E1", "E2"]),
        ("namespace", "==", "team"),
    )


def test_plan_ordered_descending():
    plan = fs.plan_scan("run", _request(order="desc"))
    assert plan.ordered
    assert plan.order == (("created_at", "DESCENDING"), ("__name__", "ASCENDING"))


def test_plan_created_at_range():
    plan = fs.plan_scan(
        "run", _request(Compare(("created_at",), ">=", "2024-01-01T00:00:00Z"))
    )
    assert plan.filters == (("created_at", ">=", datetime(2024, 1, 1, tzinfo=UTC)),)
    assert plan.order[0] == ("created_at", "ASCENDING")


def test_plan_bad_time_literal_left_to_core():
    plan = fs.plan_scan("run", _request(Compare(("created_at",), ">", "soon")))
    assert plan.filters == ()


def test_plan_tag_filter_when_unordered():
    plan = fs.plan_scan("run", _request(Compare(("tags", "team"), "=", "cv")))
    assert plan.filters == (("tv.team", "==", "cv"),)
    assert plan.dynamic


def test_plan_no_tag_filter_when_ordered():
    plan = fs.plan_scan(
        "run", _request(Compare(("tags", "team"), "=", "cv"), order="asc")
    )
    assert plan.filters == ()


def test_plan_param_filter_array_contains():
    plan = fs.plan_scan("run", _request(Compare(("params", "optimizer", "lr"), "=", 1)))
    assert plan.filters == (("pv.`optimizer.lr`", "array_contains", 1),)


@pytest.mark.parametrize(
    "part",
    [
        Compare(("params", "lr"), "=", math.nan),
        Compare(("params", "lr"), "<", 1),
        In(("status",), tuple(f"s{i}" for i in range(31))),
        In(("status",), ("a",), negated=True),
        Compare(("status",), "=", 5),
        Exists(("tags", "team")),
        Compare(("name",), "=", "r1"),
    ],
)
def test_plan_leaves_to_core(part):
    assert fs.plan_scan("run", _request(part)).filters == ()


def test_plan_model_version_namespace_is_empty():
    assert fs.plan_scan("model_version", _request(namespace="team")).empty


def test_index_file_matches_generated():
    assert json.loads(INDEX_FILE.read_text(encoding="utf-8")) == fs.firestore_indexes()


def test_index_count_within_firestore_limit():
    # NOTE: 200 composite indexes per database is Firestore's standard-edition
    # quota as remembered, not checked against the quotas page here.
    assert len(fs.firestore_indexes()["indexes"]) <= 200


def _generated_indexes():
    found = set()
    for index in fs.firestore_indexes()["indexes"]:
        fields = tuple(
            (f["fieldPath"], f.get("order") or f.get("arrayConfig"))
            for f in index["fields"]
        )
        found.add((index["collectionGroup"], fields))
    return found


def needed_index(collection, filters, orders):
    """Return the composite index Firestore needs, or None, per its documented rules.

    Single-field indexes serve equality and array-contains filters alone (merged),
    and one order with range filters on the ordered field only. Otherwise the
    index lists equality fields (in any order), array fields, then the order; the
    implicit trailing document-id order takes the last order's direction.
    """
    equal = {name for name, op in filters if op in ("EQUAL", "IN")}
    arrays = {name for name, op in filters if op.startswith("ARRAY_CONTAINS")}
    ranges = {
        name
        for name, op in filters
        if op not in ("EQUAL", "IN") and not op.startswith("ARRAY_CONTAINS")
    }
    orders = list(orders)
    last_direction = orders[-2][1] if len(orders) > 1 else "ASCENDING"
    if orders and orders[-1] == ("__name__", last_direction):
        orders.pop()
    if not orders and not ranges:
        return None
    if not equal and not arrays:
        if not orders and len(ranges) == 1:
            return None
        if len(orders) == 1 and ranges <= {orders[0][0]}:
            return None
    return collection, equal, arrays, tuple(orders)


def _covered(need, generated):
    collection, equal, arrays, orders = need
    for group, fields in generated:
        head = fields[: len(equal)]
        rest = fields[len(equal) :]
        if (
            group == collection
            and {name for name, _ in head} == equal
            and all(mode == "ASCENDING" for _, mode in head)
            and rest == tuple((name, "CONTAINS") for name in sorted(arrays)) + orders
        ):
            return True
    return False


def _plan_filters(plan):
    names = {
        "==": "EQUAL",
        "in": "IN",
        "array_contains": "ARRAY_CONTAINS",
        "array_contains_any": "ARRAY_CONTAINS_ANY",
        ">=": "GREATER_THAN_OR_EQUAL",
        ">": "GREATER_THAN",
        "<": "LESS_THAN",
        "<=": "LESS_THAN_OR_EQUAL",
    }
    return [(name, names[op]) for name, op, _ in plan.filters]


FILTER_SHAPES = [
    None,
    Compare(("namespace",), "=", "n"),
    In(("namespace",), ("n", "m")),
    Compare(("experiment_id",), "=", "E"),
    In(("experiment_id",), ("E", "F")),
    Compare(("status",), "=", "running"),
    Compare(("parent_run_id",), "=", "P"),
    Compare(("name",), "=", "x"),
    In(("name",), ("x", "y")),
    Compare(("model_id",), "=", "M"),
    Compare(("run_id",), "=", "R"),
    Compare(("created_at",), ">", "2024-01-01T00:00:00Z"),
    Compare(("created_at",), "<=", "2025-01-01T00:00:00Z"),
    Compare(("tags", "team"), "=", "cv"),
    In(("tags", "team"), ("cv", "nlp")),
    Compare(("params", "lr"), "=", 0.1),
    In(("params", "lr"), (0.1, 0.2)),
]


def test_every_plan_has_its_index():
    generated = _generated_indexes()
    for kind in fs.COLLECTIONS:
        if kind not in fs._ENTITY_TYPES:
            continue
        for first, second in itertools.combinations(FILTER_SHAPES, 2):
            parts = [part for part in (first, second) if part is not None]
            for namespace, order in itertools.product(
                (None, "ns"), (None, "asc", "desc")
            ):
                plan = fs.plan_scan(
                    kind, _request(*parts, namespace=namespace, order=order)
                )
                need = needed_index(plan.collection, _plan_filters(plan), plan.order)
                if need is not None and not plan.dynamic:
                    assert _covered(need, generated), (kind, parts, namespace, order)


def test_dynamic_plans_need_no_composite_index():
    for part in FILTER_SHAPES[-4:]:
        for extra in FILTER_SHAPES[:11]:
            parts = [p for p in (extra, part) if p is not None]
            plan = fs.plan_scan("run", _request(*parts))
            if plan.dynamic:
                need = needed_index(plan.collection, _plan_filters(plan), plan.order)
                assert need is None, parts


# ---------------------------------------------------------------------------
# Against the emulator
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness():
    if not os.environ.get(URL_ENV):
        pytest.skip(f"set {URL_ENV} to a firestore:// URL of a running emulator")
    harness = fs.FirestoreBackend.conformance_harness(os.environ[URL_ENV])
    yield harness
    harness.close()


@pytest.fixture
def backend(harness):
    instance = harness.create()
    yield instance
    harness.destroy(instance)


@pytest.fixture
def store(backend):
    return Store(backend, actor="unit")


class _QueryLog:
    """Records the structured query of every query the client runs."""

    def __init__(self, monkeypatch):
        self.queries = []
        original = Query.stream

        def stream(query, *args, **kwargs):
            # _to_protobuf is the client's own rendering of the request it sends.
            self.queries.append(query._to_protobuf())
            return original(query, *args, **kwargs)

        monkeypatch.setattr(Query, "stream", stream)

    def needs(self):
        for structured in self.queries:
            collection = structured.from_[0].collection_id
            where = structured.where
            if "composite_filter" in where:
                items = [f.field_filter for f in where.composite_filter.filters]
            elif "field_filter" in where:
                items = [where.field_filter]
            else:
                items = []
            filters = [(item.field.field_path, item.op.name) for item in items]
            orders = [
                (o.field.field_path, o.direction.name) for o in structured.order_by
            ]
            need = needed_index(collection, filters, orders)
            if need is not None:
                yield need


def _workload(store):
    """Use every query template and listing once, with varied filters and orders."""
    team = store.create_experiment("exp", namespace="team")
    parent = store.create_run(
        team.id, name="parent", params={"lr": 0.1}, tags={"team": "cv"}
    )
    child = store.create_run(
        team.id, name="child", parent_run_id=parent.id, params={"opt": {"name": "adam"}}
    )
    store.log_metrics(
        child.id, [{"key": "acc", "value": 0.5, "step": s} for s in range(5)]
    )
    store.set_run_status(child.id, "running")
    data = store.register_dataset("raw", "1")
    store.link_dataset(parent.id, data.id)
    store.create_model("m")
    store.register_model_version("m", run_id=parent.id)

    filters = (
        None,
        "status = 'running'",
        "tags.team = 'cv'",
        "params.opt.name = 'adam' and namespace = 'team'",
        f"parent_run_id = '{parent.id}'",
        "created_at >= '2000-01-01T00:00:00Z' and status = 'pending'",
    )
    for order in (None, ["created_at desc"], ["name"], ["metrics.acc"]):
        for text in filters:
            list(store.iter_runs(text, order_by=order, namespace="team", page_size=1))
            list(store.iter_runs(text, experiment_ids=[team.id], order_by=order))

    list(store.list_experiments(filter="tags.team = 'cv'"))
    list(store.list_models(namespace="default"))
    list(store.list_datasets(filter="name = 'raw'"))
    store.list_model_versions("m")
    list(store.metric_history(child.id, "acc", min_step=1, max_step=3))
    store.upstream(child.id)
    list(store.audit_log(child.id))
    store.verify_audit()
    store.backend.blobs.put("configs", "k", {"v": 1})
    list(store.backend.blobs.scan("configs"))
    list(store.backend.metrics.runs_with_metrics())
    list(store.backend.lineage.scan_edges())
    store.purge_run(child.id)


@needs_emulator
def test_workload_queries_have_indexes(store, monkeypatch):
    log = _QueryLog(monkeypatch)
    _workload(store)
    generated = _generated_indexes()
    assert len(log.queries) > 50
    missing = [need for need in log.needs() if not _covered(need, generated)]
    assert missing == []


@needs_emulator
def test_emulator_drops_nan_payload(backend):
    # Why metric values are stored as packed bytes: a double field keeps one NaN.
    payload = FLOAT_VALUES["nan_with_payload"]
    reference = backend._conn.collection("blob").document("nan-probe")
    backend._conn.commit([fs._Write("set", reference, {"value": payload})], "probe")
    stored = reference.get().get("value")
    assert math.isnan(stored)
    assert bits(stored) != bits(payload)


@needs_emulator
def test_emulator_keeps_negative_zero(backend):
    reference = backend._conn.collection("blob").document("zero-probe")
    backend._conn.commit([fs._Write("set", reference, {"value": -0.0})], "probe")
    assert bits(reference.get().get("value")) == bits(-0.0)


def test_unreachable_store_unavailable(no_emulator_env):
    # Port 1 on loopback has no listener, so the connection is refused at once.
    backend = fs.FirestoreBackend.from_url(
        "firestore://proj?emulator_host=127.0.0.1:1&timeout=1"
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        backend.experiments.get("E1")
    assert time.monotonic() - started < 30
    backend.close()


@needs_emulator
def test_stores_isolated_by_root(harness):
    first, second = harness.create(), harness.create()
    try:
        experiment = Experiment(name="only-here")
        first.experiments.insert(experiment)
        with pytest.raises(NotFoundError):
            second.experiments.get(experiment.id)
        assert second.experiments.find_unique(("default", "only-here")) is None
        second.experiments.insert(Experiment(name="only-here"))
    finally:
        harness.destroy(first)
        harness.destroy(second)


@needs_emulator
def test_documents_under_root(backend):
    backend.experiments.insert(Experiment(name="e"))
    collection = backend._conn.collection("experiment")
    assert collection.parent.path == backend.settings.root
    assert collection.id == "mltrail_experiments"
    assert len(list(collection.stream())) == 1


def _chunk_times(backend, run_id):
    chunks = backend._conn.collection("metric_chunk")
    query = chunks.where(filter=FieldFilter("run", "==", run_id))
    return {s.id: s.update_time for s in query.stream()}


@needs_emulator
def test_chunks_never_rewritten(backend):
    backend.metrics.append("R1", _points(100, batch="A"))
    before = _chunk_times(backend, "R1")
    backend.metrics.append(
        "R1",
        [
            MetricPoint(
                run_id="R1",
                key="m",
                value=1.0,
                step=200 + i,
                timestamp=T0,
                seq=f"B:{i:06d}",
            )
            for i in range(100)
        ],
    )
    after = _chunk_times(backend, "R1")
    assert len(after) > len(before)
    assert all(after[chunk_id] == time_ for chunk_id, time_ in before.items())


@needs_emulator
def test_one_latest_write_per_append(backend):
    latest = backend._conn.collection("metric_latest").document("R1")
    backend.metrics.append("R1", _points(10, key="a") + _points(10, key="b"))
    first = latest.get().update_time
    backend.metrics.append("R1", _points(3, key="a", batch="OLD"))
    assert latest.get().update_time == first
    backend.metrics.append(
        "R1",
        [
            MetricPoint(
                run_id="R1", key="b", value=2.0, step=99, timestamp=T0, seq="N:000000"
            )
        ],
    )
    assert latest.get().update_time != first
    assert backend.metrics.latest(["R1"])["R1"]["b"].step == 99


@pytest.fixture
def other(harness, backend):
    """A second backend on the same root, standing for another process.

    `store_url` makes the harness list every collection when it clears the store.
    """
    instance = fs.FirestoreBackend.from_url(harness.store_url(backend))
    yield instance
    instance.close()


def _point_at(step, value, seq):
    return MetricPoint(
        run_id="R1", key="m", value=value, step=step, timestamp=T0, seq=seq
    )


@needs_emulator
def test_latest_survives_other_writer(backend, other):
    backend.metrics.append("R1", _points(2))
    other.metrics.append("R1", [_point_at(50, 7.0, "X:000000")])
    backend.metrics.append("R1", [_point_at(10, 3.0, "Y:000000")])
    assert backend.metrics.latest(["R1"])["R1"]["m"].step == 50


@needs_emulator
def test_stale_update_conflicts(backend, other):
    experiment = Experiment(name="e")
    backend.experiments.insert(experiment)
    stored = other.experiments.get(experiment.id)
    other.experiments.update(stored.touched(tags={"a": "1"}))
    with pytest.raises(ConflictError):
        backend.experiments.update(experiment.touched(tags={"b": "2"}))
    assert backend.experiments.get(experiment.id).tags == {"a": "1"}


@needs_emulator
def test_audit_last_without_query(store, monkeypatch):
    store.create_experiment("a")
    store.create_experiment("b")

    def no_query(*args, **kwargs):
        raise AssertionError("last() ran a query although the tail was known")

    monkeypatch.setattr(store.backend.audit._conn, "query", no_query)
    assert store.backend.audit.last().seq == 2


@needs_emulator
def test_audit_empty_chain_without_query(backend, monkeypatch):
    def no_query(*args, **kwargs):
        raise AssertionError("last() ran a query on an empty chain")

    monkeypatch.setattr(backend.audit._conn, "query", no_query)
    assert backend.audit.last() is None


@needs_emulator
def test_audit_gap_rejected(store):
    store.create_experiment("a")
    event = store.backend.audit.last()
    gap = type(event)(**{**event.__dict__, "seq": event.seq + 2})
    with pytest.raises(AlreadyExistsError):
        store.backend.audit.append(gap)


@needs_emulator
def test_missing_index_falls_back(store, monkeypatch):
    experiment = store.create_experiment("e")
    store.create_run(experiment.id, name="a", tags={"team": "cv"})
    store.create_run(experiment.id, name="b", tags={"team": "nlp"})
    original = fs._Connection.query

    def strict(connection, query, action):
        structured = query._to_protobuf()
        if "tv.team" in str(structured.where):
            raise fs.MissingIndexError("the query requires an index", action)
        return original(connection, query, action)

    monkeypatch.setattr(fs._Connection, "query", strict)
    found = store.iter_runs("tags.team = 'cv'", order_by=["name"])
    assert [run.name for run in found] == ["a"]


@needs_emulator
def test_escaped_metric_keys_listed(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    keys = ["__name__", "~tilde", "a.b", "a`b"]
    store.log_metrics(run.id, [{"key": key, "value": 1.0} for key in keys])
    assert store.metric_keys(run.id) == sorted(keys)
    assert set(store.latest_metrics(run.id)) == set(keys)


@needs_emulator
def test_history_step_range_from_later_bucket(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    width = 1 << fs.BUCKET_BITS
    steps = [0, 5, width - 1, width, width + 3, 4 * width]
    store.log_metrics(
        run.id, [{"key": "m", "value": float(s), "step": s} for s in steps]
    )
    found = [
        p.step
        for p in store.metric_history(
            run.id, "m", min_step=width - 1, max_step=width + 3
        )
    ]
    assert found == [width - 1, width, width + 3]


@needs_emulator
def test_value_bits_in_latest_document(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    payload = FLOAT_VALUES["nan_with_payload"]
    store.log_metrics(run.id, [{"key": "m", "value": payload, "step": 1}])
    document = store.backend._conn.collection("metric_latest").document(run.id).get()
    entry = document.get("k")["m"]
    # The entry starts with step and time (8 bytes each), then the value's bits.
    assert entry[16:24] == struct.pack(">d", payload)
    assert bits(store.latest_metrics(run.id)["m"].value) == bits(payload)


# ---------------------------------------------------------------------------
# Telemetry: write counters and storage figures
# ---------------------------------------------------------------------------


@pytest.fixture
def offline_client():
    """A client that is never used for a request, only to build references."""
    from google.auth.credentials import AnonymousCredentials

    client = fs.firestore.Client(project="p", credentials=AnonymousCredentials())
    yield client
    client.close()


def test_estimated_bytes_of_documented_example(offline_client):
    # The example of Firestore's "Storage size calculations" page: a 44-byte
    # name, 71 bytes of fields and 32 more bytes.
    reference = offline_client.document("users/jeff/tasks/my_task_id")
    data = {
        "type": "Personal",
        "done": False,
        "priority": 1,
        "description": "Learn Cloud Firestore",
    }
    assert fs.estimated_write_bytes(fs._Write("set", reference, data)) == 147


def test_estimated_bytes_per_operation(offline_client):
    reference = offline_client.document("c/d")
    name = 2 + 2 + 16
    data = {"b": b"\x00\x01", "t": T0, "m": {"x": [1.5, None]}, "n": None}
    fields = (2 + 2) + (2 + 8) + (2 + (2 + 8 + 1)) + (2 + 1)
    assert fs.estimated_write_bytes(fs._Write("create", reference, data)) == (
        name + fields + 32
    )
    update = fs._Write("update", reference, {"k.`a`": "v"})
    assert fs.estimated_write_bytes(update) == name + (6 + 2) + 32
    assert fs.estimated_write_bytes(fs._Write("delete", reference)) == 0


def _stored_bytes(backend) -> tuple[int, int]:
    """Return the documents under the store's root and their estimated bytes."""
    documents = 0
    size = 0
    for kind in fs.COLLECTIONS:
        for snapshot in backend._conn.collection(kind).stream():
            documents += 1
            write = fs._Write("set", snapshot.reference, snapshot.to_dict())
            size += fs.estimated_write_bytes(write)
    return documents, size


def _grown(before, after):
    return {key: after[key] - before[key] for key in before}


@needs_emulator
def test_counters_start_at_zero(backend):
    assert backend.telemetry_counters() == {"items_written": 0, "bytes_written": 0}


@needs_emulator
def test_counters_match_documents_stored(store):
    # This workload only creates documents, so each one written is stored once.
    store.create_experiment("counted")
    store.backend.metrics.append("R1", _points(50))
    store.backend.blobs.put("notes", "k1", {"text": "small"})
    counters = store.backend.telemetry_counters()
    documents, size = _stored_bytes(store.backend)
    assert counters["items_written"] == documents
    assert counters["bytes_written"] == size


@needs_emulator
def test_metric_append_counts_two_documents(store):
    backend = store.backend
    run = store.create_run(store.create_experiment("e").id)
    before = backend.telemetry_counters()
    store.log_metrics(
        run.id, [{"key": "loss", "value": i / 7, "step": i} for i in range(200)]
    )
    grown = _grown(before, backend.telemetry_counters())
    chunks = list(
        backend._conn.collection("metric_chunk")
        .where(filter=FieldFilter("run", "==", run.id))
        .stream()
    )
    latest = backend._conn.collection("metric_latest").document(run.id).get()
    written = [(s.reference, s.to_dict()) for s in [*chunks, latest]]
    assert len(written) == 2
    assert grown["items_written"] == 2
    assert grown["bytes_written"] == sum(
        fs.estimated_write_bytes(fs._Write("set", ref, data)) for ref, data in written
    )
    # Every point's step, time and value take 24 bytes of the chunk.
    assert grown["bytes_written"] > 24 * 200


@needs_emulator
def test_reads_leave_counters_unchanged(store):
    experiment = store.create_experiment("read")
    run = store.create_run(experiment.id, params={"lr": 0.1})
    store.log_metrics(run.id, [{"key": "loss", "value": 0.5, "step": 1}])
    store.backend.blobs.put("notes", "k1", {"text": "small"})
    before = store.backend.telemetry_counters()
    store.get_run(run.id)
    store.get_experiment(experiment.id)
    store.search_runs("params.lr > 0", experiment_ids=[experiment.id])
    list(store.metric_history(run.id, "loss"))
    store.latest_metrics(run.id)
    list(store.audit_log())
    store.backend.blobs.get("notes", "k1")
    list(store.backend.blobs.scan("notes"))
    store.backend.storage_stats()
    assert store.backend.telemetry_counters() == before


@needs_emulator
def test_rejected_writes_not_counted(store):
    backend = store.backend
    experiment = store.create_experiment("taken")
    run = store.create_run(experiment.id)
    before = backend.telemetry_counters()
    with pytest.raises(AlreadyExistsError):
        backend.runs.insert(run)
    with pytest.raises(AlreadyExistsError):
        backend.experiments.insert(Experiment(name="taken"))
    with pytest.raises(ConflictError):
        backend.runs.update(dataclasses.replace(run, revision=run.revision + 2))
    assert backend.telemetry_counters() == before


@needs_emulator
def test_failed_precondition_not_counted(backend, other, caplog):
    backend.metrics.append("R1", _points(2))
    other.metrics.append("R1", [_point_at(50, 7.0, "X:000000")])
    before = backend.telemetry_counters()
    # The first commit carries a stale update time, so it fails, and the
    # retry commits the chunk and the latest point.
    with caplog.at_level(logging.DEBUG, logger=fs.__name__):
        backend.metrics.append("R1", [_point_at(60, 3.0, "Y:000000")])
    assert "changed concurrently, retrying" in caplog.text
    grown = _grown(before, backend.telemetry_counters())
    assert grown["items_written"] == 2
    assert backend.metrics.latest(["R1"])["R1"]["m"].step == 60


@needs_emulator
def test_storage_stats_counts_documents(store):
    store.create_experiment("sized")
    stats = store.backend.storage_stats()
    assert stats["method"] == "document_count"
    assert stats["total_bytes"] == "unknown"
    assert set(stats["collections"]) == set(fs.COLLECTIONS.values())
    for figures in stats["collections"].values():
        assert figures["bytes"] == "unknown"
        assert figures["index_bytes"] == "unknown"
        assert figures["documents_exact"] is True
    documents = {
        name: figures["documents"] for name, figures in stats["collections"].items()
    }
    # The experiment, its unique-key claim and its audit event.
    assert documents["mltrail_experiments"] == 1
    assert documents["mltrail_unique_keys"] == 1
    assert documents["mltrail_audit"] == 1
    assert documents["mltrail_runs"] == 0
    assert stats["total_documents"] == 3


@needs_emulator
def test_storage_count_stops_at_limit(backend, monkeypatch):
    monkeypatch.setattr(fs, "STORAGE_COUNT_LIMIT", 2)
    for key in ("a", "b", "c"):
        backend.blobs.put("notes", key, {"text": key})
    collections = backend.storage_stats()["collections"]
    assert collections["mltrail_blobs"]["documents"] == 2
    assert collections["mltrail_blobs"]["documents_exact"] is False
    assert collections["mltrail_experiments"]["documents"] == 0
    assert collections["mltrail_experiments"]["documents_exact"] is True
