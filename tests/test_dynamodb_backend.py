"""Unit tests of the DynamoDB backend: URLs, credentials, encodings, errors, layout.

Tests that need a store run against the server in $MLTRAIL_TEST_DYNAMODB_URL
(`python -m mltrail.conformance.emulators up dynamodb` prints one) and are
skipped without it.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from mltrail.backends import dynamodb
from mltrail.backends.dynamodb import DynamoDBBackend, DynamoDBConfig
from mltrail.errors import (
    AlreadyExistsError, BackendUnavailableError, ConflictError, InvalidInputError,
    MltrailError, NotFoundError,
)

URL_ENV = "MLTRAIL_TEST_DYNAMODB_URL"
EMULATOR_URL = os.environ.get(URL_ENV)
needs_emulator = pytest.mark.skipif(
    not EMULATOR_URL, reason=f"no DynamoDB store: set ${URL_ENV}, for example to the "
    "URL printed by `python -m mltrail.conformance.emulators up dynamodb`")

boto3 = pytest.importorskip("boto3")
import botocore.exceptions  # noqa: E402  (after the skip when boto3 is missing)


def bits(value: float) -> str:
    return struct.pack(">d", value).hex()


# ----------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------


def test_url_with_endpoint():
    config = DynamoDBConfig.from_url(
        "dynamodb://127.0.0.1:8000/team.ml-1?region=us-east-1&tls=false")
    assert config.prefix == "team.ml-1"
    assert config.region == "us-east-1"
    assert config.endpoint == "127.0.0.1:8000"
    assert config.endpoint_url == "http://127.0.0.1:8000"
    assert config.table_name == "team.ml-1-records"
    assert config.loopback
    assert not config.serialize


def test_url_for_aws_endpoint():
    config = DynamoDBConfig.from_url("dynamodb:///ml?region=eu-west-1&profile=dev")
    assert config.endpoint is None
    assert config.endpoint_url is None
    assert config.tls
    assert config.profile == "dev"
    assert not config.loopback


@pytest.mark.parametrize("url", [
    "dynamodb://127.0.0.1:8000/mltrail?region=us-east-1&tls=false",
    "dynamodb:///mltrail?region=eu-west-1",
    "dynamodb://localhost:4566/p?region=us-east-1&tls=false&serialize=true",
    "dynamodb://dynamodb.internal/p?region=us-east-1&profile=ml",
])
def test_url_round_trip(url):
    assert DynamoDBConfig.from_url(url).to_url() == url
    assert DynamoDBBackend.from_url(url).url == url


@pytest.mark.parametrize("url,fragment", [
    ("mongodb://localhost/x", "not a DynamoDB store URL"),
    ("dynamodb://localhost:8000/", "table prefix"),
    ("dynamodb://localhost:8000/has space", "table prefix"),
    ("dynamodb://localhost:8000/ünï", "table prefix"),
    ("dynamodb://localhost:8000/" + "p" * 250, "table prefix"),
    ("dynamodb://localhost:8000/p?regoin=us-east-1", "unknown options"),
    ("dynamodb://localhost:8000/p?tls=maybe", "tls='maybe'"),
    ("dynamodb://localhost:port/p", "invalid endpoint"),
    ("dynamodb://dynamodb.internal/p?serialize=true", "serialize=true"),
])
def test_bad_url_rejected(url, fragment):
    with pytest.raises(InvalidInputError) as caught:
        DynamoDBConfig.from_url(url)
    assert fragment in str(caught.value)


def test_credentials_in_url_rejected_and_hidden():
    url = "dynamodb://AKIDEXAMPLE:s3cr3t-key@127.0.0.1:8000/p?region=us-east-1"
    with pytest.raises(InvalidInputError) as caught:
        DynamoDBConfig.from_url(url)
    message = str(caught.value)
    assert "s3cr3t-key" not in message
    assert "AKIDEXAMPLE" not in message
    assert "***@127.0.0.1:8000" in message
    assert "s3cr3t-key" not in str(caught.value.value)


@pytest.mark.parametrize("endpoint,loopback", [
    ("127.0.0.1:8000", True), ("127.5.5.5", True), ("localhost:4566", True),
    ("[::1]:8000", True), ("10.0.0.1:8000", False), ("dynamodb.internal", False),
])
def test_loopback_detection(endpoint, loopback):
    config = DynamoDBConfig.from_url(f"dynamodb://{endpoint}/p?region=us-east-1")
    assert config.loopback is loopback


# ----------------------------------------------------------------------
# Driver and credentials
# ----------------------------------------------------------------------


def test_missing_driver_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    backend = DynamoDBBackend.from_url("dynamodb://127.0.0.1:9/p?region=us-east-1")
    with pytest.raises(BackendUnavailableError) as caught:
        backend.initialize()
    assert "pip install 'mltrail[dynamodb]'" in str(caught.value)


@pytest.fixture
def no_aws_configuration(monkeypatch, tmp_path):
    """Hide every AWS credential and region source of this machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))


def _access_key(client) -> str:
    return client._request_signer._credentials.get_frozen_credentials().access_key


def test_dummy_credentials_only_for_loopback(no_aws_configuration):
    config = DynamoDBConfig.from_url("dynamodb://127.0.0.1:8000/p?region=us-east-1")
    assert _access_key(dynamodb._make_client(config)) == "mltrail-emulator"


def test_configured_credentials_win_on_loopback(no_aws_configuration, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCONFIGURED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "configured-secret")
    config = DynamoDBConfig.from_url("dynamodb://127.0.0.1:8000/p?region=us-east-1")
    assert _access_key(dynamodb._make_client(config)) == "AKIDCONFIGURED"


def test_missing_region_rejected(no_aws_configuration):
    config = DynamoDBConfig.from_url("dynamodb://127.0.0.1:8000/p")
    with pytest.raises(InvalidInputError) as caught:
        dynamodb._make_client(config)
    assert "region" in str(caught.value)


def test_unreachable_endpoint(no_aws_configuration):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = DynamoDBBackend.from_url(
        f"dynamodb://127.0.0.1:{port}/p?region=us-east-1&tls=false")
    with pytest.raises(BackendUnavailableError) as caught:
        backend.experiments.get("E1")
    assert f"127.0.0.1:{port}" in str(caught.value)
    backend.close()


# ----------------------------------------------------------------------
# Error translation
# ----------------------------------------------------------------------


def _client_error(code: str, **extra) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": f"{code} happened"}, **extra}
    return botocore.exceptions.ClientError(response, "PutItem")


@pytest.mark.parametrize("code,expected", [
    ("ValidationException", InvalidInputError),
    ("ItemCollectionSizeLimitExceededException", InvalidInputError),
    ("ResourceNotFoundException", BackendUnavailableError),
    ("AccessDeniedException", BackendUnavailableError),
    ("UnrecognizedClientException", BackendUnavailableError),
    ("ProvisionedThroughputExceededException", BackendUnavailableError),
    ("InternalServerError", BackendUnavailableError),
    ("TransactionConflictException", ConflictError),
    ("ConditionalCheckFailedException", ConflictError),
])
def test_client_errors_translated(code, expected):
    error = dynamodb._translate(_client_error(code), "put_item", "t-records")
    assert isinstance(error, expected)
    assert isinstance(error, MltrailError)
    assert "t-records" in str(error)
    assert error.aws_code == code


def test_condition_failure_keeps_old_item():
    old = {"pk": {"S": "entity|run|R1"}, "revision": {"N": "3"}}
    error = dynamodb._translate(
        _client_error("ConditionalCheckFailedException", Item=old), "put_item", "t")
    assert error.old_item == old


def test_cancelled_transaction_keeps_reasons():
    reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed"}]
    error = dynamodb._translate(
        _client_error("TransactionCanceledException", CancellationReasons=reasons),
        "transact_write_items", "t")
    assert isinstance(error, ConflictError)
    assert error.reasons == ["None", "ConditionalCheckFailed"]


def test_invalid_transaction_is_invalid_input():
    reasons = [{"Code": "ValidationError"}, {"Code": "None"}]
    error = dynamodb._translate(
        _client_error("TransactionCanceledException", CancellationReasons=reasons),
        "transact_write_items", "t")
    assert isinstance(error, InvalidInputError)


@pytest.mark.parametrize("error,expected", [
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
     BackendUnavailableError),
    (botocore.exceptions.NoCredentialsError(), BackendUnavailableError),
    (botocore.exceptions.ParamValidationError(report="bad key"), InvalidInputError),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
     InvalidInputError),
])
def test_driver_errors_translated(error, expected):
    assert isinstance(dynamodb._translate(error, "get_item", "t"), expected)


# ----------------------------------------------------------------------
# Encodings
# ----------------------------------------------------------------------

SPECIAL_FLOATS = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324,
                  struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0],
                  struct.unpack(">d", bytes.fromhex("fff8000000000000"))[0]]


def test_packed_points_bit_exact():
    rows = [(step, -5_000_000 + step, f"B:{step:06d}", value,
             {"drift": {"psi": {"$f": bits(value)}}} if step % 2 else None)
            for step, value in enumerate(SPECIAL_FLOATS)]
    unpacked = dynamodb._unpack_rows(dynamodb._pack_rows(rows))
    assert [bits(row[3]) for row in unpacked] == [bits(v) for v in SPECIAL_FLOATS]
    assert [row[:3] for row in unpacked] == [row[:3] for row in rows]
    assert [row[4] for row in unpacked] == [row[4] for row in rows]


def test_order_prefix_sorts_numerically():
    pairs = [(0, -(2**62)), (0, -1), (0, 0), (0, 1), (1, -5), (2**63 - 1, 2**62)]
    prefixes = [dynamodb._order_prefix(step, micros) for step, micros in pairs]
    assert prefixes == sorted(prefixes)
    assert len({len(p) for p in prefixes}) == 1


def test_record_too_large_rejected():
    with pytest.raises(InvalidInputError) as caught:
        dynamodb._record_json({"payload": "x" * 500_000}, "run 'R1'")
    assert "run 'R1'" in str(caught.value)


def test_lone_surrogate_survives_as_json_escape():
    record = {"name": "a\ud800b"}
    text = dynamodb._record_json(record, "run 'R1'")
    text.encode("utf-8")
    assert dynamodb.json.loads(text) == record


@pytest.mark.parametrize("text,storable", [
    ("R1", True), ("a/b c", True), ("", False), ("x" * 1025, False),
    ("\ud800", False), (7, False), ("学" * 341, True), ("学" * 342, False),
])
def test_storable_key_text(text, storable):
    assert dynamodb._storable(text) is storable


# ----------------------------------------------------------------------
# Against the emulator
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness():
    return DynamoDBBackend.conformance_harness(EMULATOR_URL)


@pytest.fixture
def backend(harness):
    instance = harness.create()
    yield instance
    harness.destroy(instance)


@pytest.fixture
def store(backend):
    from mltrail.store import Store

    return Store(backend, actor="unit")


def _items(backend, pk: str) -> list[dict]:
    client = backend._table.client
    response = client.query(
        TableName=backend.table_name, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}}, ConsistentRead=True)
    return response["Items"]


@needs_emulator
def test_table_layout(backend):
    client = backend._table.client
    table = client.describe_table(TableName=backend.table_name)["Table"]
    keys = {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]}
    assert keys == {("pk", "HASH"), ("sk", "RANGE")}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"list-index", "field1-index", "field2-index",
                            "field3-index", "field4-index"}
    for index in indexes.values():
        assert index["Projection"]["ProjectionType"] == "INCLUDE"
        assert index["Projection"]["NonKeyAttributes"] == ["doc"]


@needs_emulator
def test_store_url_reopens_same_store(store, harness):
    experiment = store.create_experiment("kept")
    url = harness.store_url(store.backend)
    assert "serialize=true" in url
    reopened = DynamoDBBackend.from_url(url)
    try:
        assert reopened.experiments.get(experiment.id).name == "kept"
    finally:
        reopened.close()


@needs_emulator
def test_no_scan_in_any_operation(store):
    operations = []
    events = store.backend._table.client.meta.events
    events.register("before-call.dynamodb",
                    lambda model, **_: operations.append(model.name))
    experiment = store.create_experiment("e", tags={"team": "a"})
    data = store.register_dataset("d", "1")
    run = store.create_run(experiment.id, params={"lr": 0.1}, dataset_ids=[data.id])
    store.log_metrics(run.id, [{"key": "acc", "value": 0.5, "step": s}
                               for s in range(20)])
    store.set_run_status(run.id, "running")
    list(store.iter_runs("metrics.acc > 0.1 and tags.team = 'a'"))
    list(store.iter_runs(namespace="default", order_by=["-created_at"]))
    list(store.metric_history(run.id, "acc", min_step=3, max_step=9))
    store.create_model("m")
    store.register_model_version("m", run_id=run.id)
    store.downstream(data.id, depth=3)
    assert store.verify_audit().ok
    list(store.audit_log(run.id))
    store.purge_run(run.id)
    assert operations
    assert "Scan" not in operations


@needs_emulator
def test_metric_points_packed_into_few_items(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    points = [{"key": "loss|#x", "value": float(i), "step": i} for i in range(12_000)]
    store.log_metrics(run.id, points, batch_id="BATCH1")
    store.log_metrics(run.id, points, batch_id="BATCH1")
    first = _items(store.backend, f"points|{run.id}|loss|#x|{0:016x}")
    second = _items(store.backend, f"points|{run.id}|loss|#x|{1:016x}")
    assert len(first) == 2
    assert len(second) == 1
    assert len(_items(store.backend, f"latest|{run.id}")) == 1
    history = list(store.metric_history(run.id, "loss|#x"))
    assert [p.step for p in history] == list(range(12_000))


@needs_emulator
def test_overlapping_chunks_merge_in_order(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for batch in range(3):
        points = [{"key": "m", "value": float(batch), "step": step,
                   "timestamp": base + timedelta(seconds=batch)}
                  for step in range(batch, 30, 3)]
        store.log_metrics(run.id, points)
    history = list(store.metric_history(run.id, "m"))
    assert [p.step for p in history] == list(range(30))


@needs_emulator
def test_retry_with_new_timestamps_overwrites(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    points = [{"key": "m", "value": float(i), "step": i} for i in range(50)]
    store.log_metrics(run.id, points, batch_id="BATCH1")
    first = list(store.metric_history(run.id, "m"))
    store.log_metrics(run.id, points, batch_id="BATCH1")
    second = list(store.metric_history(run.id, "m"))
    assert [p.seq for p in second] == [p.seq for p in first]
    assert all(b.timestamp >= a.timestamp for a, b in zip(first, second))


@needs_emulator
def test_regrouped_retry_keeps_latest_write(backend):
    from mltrail.domain import MetricPoint

    base = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def points(steps, minutes):
        return [MetricPoint(run_id="R1", key="m", value=float(minutes), step=step,
                            timestamp=base + timedelta(minutes=minutes - step),
                            seq=f"B:{step:06d}") for step in steps]

    backend.metrics.append("R1", points(range(10), 0))
    backend.metrics.append("R1", points(range(3, 6), 30))
    history = list(backend.metrics.history("R1", "m"))
    assert [p.seq for p in history] == [f"B:{step:06d}" for step in range(10)]
    assert [p.value for p in history] == [0.0] * 3 + [30.0] * 3 + [0.0] * 4


@needs_emulator
def test_latest_keeps_later_point(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.log_metrics(run.id, [{"key": "a", "value": 9.0, "step": 9},
                               {"key": "b", "value": 1.0, "step": 1}])
    store.log_metrics(run.id, [{"key": "a", "value": 2.0, "step": 2},
                               {"key": "b", "value": 5.0, "step": 5}])
    latest = store.latest_metrics(run.id)
    assert latest["a"].value == 9.0
    assert latest["b"].value == 5.0


@needs_emulator
@pytest.mark.parametrize("entity_id", ["a/b c", "x" * 3000, "\ud800", "", "名前"])
def test_any_typed_id_is_not_found(backend, entity_id):
    with pytest.raises(NotFoundError):
        backend.runs.get(entity_id)
    with pytest.raises(NotFoundError):
        backend.lineage.get_node(entity_id)
    assert backend.runs.get_many([entity_id]) == {}
    assert backend.metrics.keys(entity_id) == []
    assert list(backend.audit.for_entity(entity_id)) == []


@needs_emulator
def test_unique_key_claimed_in_table(store):
    store.create_experiment("claimed")
    with pytest.raises(AlreadyExistsError) as caught:
        store.create_experiment("claimed")
    assert "claimed" in str(caught.value)
    pk = dynamodb._unique_pk("experiment", ["default", "claimed"])
    (claim,) = _items(store.backend, pk)
    assert claim["unique_key"]["S"] == '["default", "claimed"]'


@needs_emulator
def test_blob_too_large_writes_nothing(backend):
    with pytest.raises(InvalidInputError):
        backend.blobs.put("big", "one", {"payload": "q" * 450_000})
    with pytest.raises(NotFoundError):
        backend.blobs.get("big", "one")


@needs_emulator
def test_audit_walks_full_buckets(harness, store):
    small = replace(dynamodb.DEFAULT_LAYOUT, audit_bucket_size=3)
    store.backend._table._layout = small
    for index in range(4):
        store.create_experiment(f"e{index}")
    for index in range(6):
        store.set_tags("experiment", store.get_experiment("e0").id, {"n": str(index)})
    reopened = DynamoDBBackend.from_url(harness.store_url(store.backend))
    reopened._table._layout = small
    assert reopened.audit.last().seq == 10
    assert [e.seq for e in reopened.audit.scan()] == list(range(1, 11))
    assert [e.seq for e in reopened.audit.scan(after_seq=5)] == list(range(6, 11))
    assert int(_items(store.backend, "audit-bucket")[0]["bucket"]["N"]) == 3
    reopened.close()


@needs_emulator
def test_foreign_table_rejected(harness):
    config = replace(harness.config, prefix=f"foreign-{os.getpid()}")
    client = dynamodb._Table(harness.config).client
    client.create_table(
        TableName=config.table_name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    try:
        with pytest.raises(InvalidInputError) as caught:
            DynamoDBBackend(config, client).initialize()
        assert config.table_name in str(caught.value)
    finally:
        client.delete_table(TableName=config.table_name)


@needs_emulator
def test_newer_layout_rejected(backend, harness):
    backend._table.client.put_item(TableName=backend.table_name, Item={
        "pk": {"S": "layout"}, "sk": {"S": "#"}, "version": {"N": "2"},
        "shards": {"N": "4"}, "step_bucket_width": {"N": "10000"},
        "audit_bucket_size": {"N": "1000"}})
    reopened = DynamoDBBackend.from_url(harness.store_url(backend))
    with pytest.raises(BackendUnavailableError) as caught:
        reopened.initialize()
    assert "layout version 2" in str(caught.value)


# ----------------------------------------------------------------------
# Telemetry: write counters and storage figures
# ----------------------------------------------------------------------


@pytest.mark.parametrize("item,size", [
    ({"pk": {"S": "ab"}}, 2 + 2),
    ({"名": {"S": "前"}}, 3 + 3),
    ({"n": {"N": "123"}}, 1 + 3),
    ({"n": {"N": "-0.00120"}}, 1 + 2),
    ({"n": {"N": "0"}}, 1 + 2),
    ({"b": {"B": b"\x00\x01\x02"}}, 1 + 3),
    ({"m": {"M": {"a": {"S": "xy"}}}}, 1 + 3 + (1 + 1 + 2)),
    ({"l": {"L": [{"BOOL": True}, {"NULL": True}]}}, 1 + 3 + 2 + 2),
    ({"s": {"SS": ["a", "bc"]}}, 1 + 3),
])
def test_item_bytes_follow_dynamodb_rules(item, size):
    assert dynamodb.item_bytes(item) == size


def test_table_storage_sums_indexes():
    description = {
        "TableName": "p-records", "TableSizeBytes": 1000, "ItemCount": 7,
        "GlobalSecondaryIndexes": [
            {"IndexName": "list-index", "IndexSizeBytes": 300, "ItemCount": 5},
            {"IndexName": "field1-index", "IndexSizeBytes": 200, "ItemCount": 2},
        ],
    }
    stats = dynamodb._table_storage(description)
    figures = stats["collections"]["p-records"]
    assert figures["bytes"] == 1000
    assert figures["index_bytes"] == 500
    assert figures["items"] == 7
    assert figures["indexes"]["list-index"] == {"bytes": 300, "items": 5}
    assert stats["total_bytes"] == 1500
    assert stats["method"] == "describe_table"


def test_table_storage_without_index_sizes():
    description = {"TableName": "p-records", "TableSizeBytes": 0, "ItemCount": 3,
                   "GlobalSecondaryIndexes": [{"IndexName": "list-index"}]}
    stats = dynamodb._table_storage(description)
    assert stats["collections"]["p-records"]["index_bytes"] == "unknown"
    assert stats["total_bytes"] == "unknown"
    assert stats["total_items"] == 3


def test_storage_stats_unreachable_names_table(no_aws_configuration):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = DynamoDBBackend.from_url(
        f"dynamodb://127.0.0.1:{port}/p?region=us-east-1&tls=false")
    with pytest.raises(BackendUnavailableError) as caught:
        backend.storage_stats()
    assert "p-records" in str(caught.value)
    backend.close()


def _scanned(backend) -> list[dict]:
    """Return every item of the backend's table with a raw Scan, for checks only."""
    client = backend._table.client
    request = {"TableName": backend.table_name, "ConsistentRead": True}
    items = []
    while True:
        response = client.scan(**request)
        items += response["Items"]
        if "LastEvaluatedKey" not in response:
            return items
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


def _loss_points(count: int) -> list[dict]:
    return [{"key": "loss", "value": step / 7, "step": step} for step in range(count)]


@needs_emulator
def test_counters_start_at_zero(backend):
    assert backend.telemetry_counters() == {
        "items_written": 0, "bytes_written": 0, "write_capacity_units": 0}


@needs_emulator
def test_counters_match_items_stored(store):
    # This workload never overwrites or deletes an item, so the new table
    # contains each item written exactly once.
    experiment = store.create_experiment("counted")
    run = store.create_run(experiment.id, params={"lr": 0.1})
    store.log_metrics(run.id, _loss_points(50))
    counters = store.backend.telemetry_counters()
    items = _scanned(store.backend)
    assert counters["items_written"] == len(items)
    assert counters["bytes_written"] == sum(dynamodb.item_bytes(i) for i in items)


@needs_emulator
def test_metric_append_counts_four_items(store):
    backend = store.backend
    run = store.create_run(store.create_experiment("e").id)
    before = backend.telemetry_counters()
    store.log_metrics(run.id, _loss_points(200))
    grown = _grown(before, backend.telemetry_counters())
    # One chunk of packed points, the bucket list, the run's entry in the
    # list of runs with metrics, and the latest point.
    written = (_items(backend, dynamodb._points_pk(run.id, "loss", 0))
               + _items(backend, f"buckets|{run.id}|loss")
               + _items(backend, f"metrics|{run.id}")
               + _items(backend, f"latest|{run.id}"))
    assert len(written) == 4
    assert grown["items_written"] == 4
    assert grown["bytes_written"] == sum(dynamodb.item_bytes(i) for i in written)


@needs_emulator
def test_blob_put_costs_one_capacity_unit(backend):
    before = backend.telemetry_counters()
    backend.blobs.put("notes", "k1", {"text": "small"})
    grown = _grown(before, backend.telemetry_counters())
    (item,) = _items(backend, "blob|notes")
    assert grown["items_written"] == 1
    assert grown["bytes_written"] == dynamodb.item_bytes(item)
    # An item under 1 KB costs one write unit on AWS, and moto charges one per put.
    assert grown["write_capacity_units"] == 1


@needs_emulator
def test_delete_counts_items_without_bytes(backend):
    backend.blobs.put("notes", "k1", {"text": "small"})
    before = backend.telemetry_counters()
    backend.blobs.delete("notes", "k1")
    grown = _grown(before, backend.telemetry_counters())
    assert grown["items_written"] == 1
    assert grown["bytes_written"] == 0


@needs_emulator
def test_reads_leave_counters_unchanged(store):
    experiment = store.create_experiment("read")
    run = store.create_run(experiment.id, params={"lr": 0.1})
    store.log_metrics(run.id, _loss_points(3))
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
def test_failed_conditions_not_counted(store):
    from mltrail.domain import Experiment

    backend = store.backend
    experiment = store.create_experiment("taken")
    run = store.create_run(experiment.id)
    before = backend.telemetry_counters()
    with pytest.raises(AlreadyExistsError):
        backend.runs.insert(run)  # a conditional put
    with pytest.raises(AlreadyExistsError):
        backend.experiments.insert(Experiment(name="taken"))  # a cancelled transaction
    with pytest.raises(ConflictError):
        backend.runs.update(replace(run, revision=run.revision + 2))
    assert backend.telemetry_counters() == before


@needs_emulator
def test_beaten_latest_point_not_counted(store):
    run = store.create_run(store.create_experiment("e").id)
    store.log_metrics(run.id, [{"key": "a", "value": 9.0, "step": 9}])
    before = store.backend.telemetry_counters()
    store.log_metrics(run.id, [{"key": "a", "value": 1.0, "step": 1}])
    grown = _grown(before, store.backend.telemetry_counters())
    # The chunk, the bucket list and the run's list entry are written. The
    # conditional put of the latest point fails because step 9 is later.
    assert grown["items_written"] == 3
    assert store.latest_metrics(run.id)["a"].step == 9


@needs_emulator
def test_storage_stats_of_table(store):
    store.create_experiment("sized")
    backend = store.backend
    stats = backend.storage_stats()
    assert stats["method"] == "describe_table"
    assert list(stats["collections"]) == [backend.table_name]
    figures = stats["collections"][backend.table_name]
    assert isinstance(figures["bytes"], int)
    assert figures["bytes"] >= 0
    assert isinstance(figures["items"], int)
    assert figures["items"] >= 0
    assert set(figures["indexes"]) == {dynamodb.LIST_INDEX, *dynamodb.FIELD_INDEXES}
    if stats["total_bytes"] != "unknown":
        assert stats["total_bytes"] == figures["bytes"] + figures["index_bytes"]


@needs_emulator
def test_storage_stats_of_missing_table(harness):
    config = replace(harness.config, prefix=f"absent-{os.getpid()}")
    backend = DynamoDBBackend(config)
    try:
        with pytest.raises(NotFoundError) as caught:
            backend.storage_stats()
        assert config.table_name in str(caught.value)
    finally:
        backend.close()


# ----------------------------------------------------------------------
# Metric appends: requests, series, partial writes
# ----------------------------------------------------------------------


def _operations(backend) -> list[str]:
    """Record the name of every request the backend's client sends from now on."""
    sent: list[str] = []
    backend._table.client.meta.events.register(
        "before-call.dynamodb", lambda model, **_: sent.append(model.name))
    return sent


def _series(run_id: str, key: str, steps: list[int], micros: int, batch: str):
    from mltrail.domain import MetricSeries

    return MetricSeries(run_id=run_id, key=key, values=[s / 3 for s in steps],
                        steps=list(steps), stamps=[micros + s for s in steps],
                        seqs=[f"{batch}:{s:010d}" for s in steps])


def _history_rows(backend, run_id: str, key: str) -> list[tuple]:
    return [(p.step, p.timestamp, p.seq, bits(p.value))
            for p in backend.metrics.history(run_id, key)]


@needs_emulator
def test_append_sends_one_batch_and_put_per_metric(backend):
    from mltrail.domain import MetricPoint

    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    points = [MetricPoint(run_id="R1", key=f"m{k}", value=float(step), step=step,
                          timestamp=stamp, seq=f"B:{step * 10 + k:010d}")
              for step in range(100) for k in range(10)]
    backend.metrics.latest(["R1"])  # creates the table before counting
    sent = _operations(backend)
    backend.metrics.append("R1", points)
    # 10 chunks, 10 bucket-list items and the run's list item fit in one
    # BatchWriteItem. Each metric's latest point is one conditional PutItem.
    assert sent.count("BatchWriteItem") == 1
    assert sent.count("PutItem") == 10
    assert "TransactWriteItems" not in sent
    assert len(sent) == 11


@needs_emulator
def test_append_series_matches_append(backend):
    micros = 1_700_000_000_000_000
    series = [_series("S", key, list(range(40)), micros, "B") for key in ("a", "b")]
    backend.metrics.append_series("S", series)
    points = [point for one in series for point in one.points()]
    backend.metrics.append("P", [replace(p, run_id="P") for p in points])
    for key in ("a", "b"):
        assert _history_rows(backend, "S", key) == _history_rows(backend, "P", key)
        assert len(_history_rows(backend, "S", key)) == 40
    latest = backend.metrics.latest(["S", "P"])
    assert latest["S"]["a"].step == 39
    assert replace(latest["S"]["b"], run_id="P") == latest["P"]["b"]
    assert backend.metrics.keys("S") == ["a", "b"]


@needs_emulator
def test_append_series_across_buckets(backend):
    width = backend._table.layout.step_bucket_width
    steps = [width - 2, width - 1, width, 2 * width + 5]
    backend.metrics.append_series("R1", [_series("R1", "m", steps, 10**15, "B")])
    assert [row[0] for row in _history_rows(backend, "R1", "m")] == steps
    assert len(_items(backend, "buckets|R1|m")) == 3
    assert backend.metrics.latest(["R1"])["R1"]["m"].step == 2 * width + 5


@needs_emulator
def test_append_series_retry_adds_nothing(backend):
    series = [_series("R1", "m", list(range(30)), 10**15, "B")]
    backend.metrics.append_series("R1", series)
    first = _history_rows(backend, "R1", "m")
    backend.metrics.append_series("R1", series)
    assert _history_rows(backend, "R1", "m") == first
    assert len(_items(backend, dynamodb._points_pk("R1", "m", 0))) == 1


@needs_emulator
def test_append_series_of_empty_series_writes_nothing(backend):
    backend.metrics.latest(["R1"])
    before = backend.telemetry_counters()
    backend.metrics.append_series("R1", [_series("R1", "m", [], 10**15, "B")])
    assert backend.telemetry_counters() == before
    assert backend.metrics.keys("R1") == []


@needs_emulator
def test_beaten_latest_keeps_other_metrics(store):
    run = store.create_run(store.create_experiment("e").id)
    store.log_metrics(run.id, [{"key": "a", "value": 9.0, "step": 9}])
    before = store.backend.telemetry_counters()
    store.log_metrics(run.id, [{"key": "a", "value": 1.0, "step": 1},
                               {"key": "b", "value": 2.0, "step": 2},
                               {"key": "c", "value": 3.0, "step": 3}])
    grown = _grown(before, store.backend.telemetry_counters())
    # Three chunks, three bucket-list items, the run's list entry and the
    # latest points of b and c are written. Step 9 beats the latest of a.
    assert grown["items_written"] == 9
    latest = store.latest_metrics(run.id)
    assert latest["a"].step == 9
    assert latest["b"].step == 2
    assert latest["c"].step == 3


@needs_emulator
def test_failed_latest_write_leaves_history(backend, monkeypatch):
    from mltrail.domain import MetricPoint

    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    points = [MetricPoint(run_id="R1", key=key, value=float(step), step=step,
                          timestamp=stamp, seq=f"B:{key}{step:06d}")
              for key in ("a", "b") for step in range(5)]
    table = backend._table
    original = table.call

    def fail_latest(operation, **kwargs):
        if operation == "put_item" and kwargs["Item"]["sk"]["S"] == "b":
            raise BackendUnavailableError("connection lost", "test")
        return original(operation, **kwargs)

    monkeypatch.setattr(table, "call", fail_latest)
    with pytest.raises(BackendUnavailableError):
        backend.metrics.append("R1", points)
    # History went first, so it contains every point, but b has no latest yet.
    assert [p.step for p in backend.metrics.history("R1", "b")] == list(range(5))
    assert set(backend.metrics.latest(["R1"])["R1"]) == {"a"}
    monkeypatch.setattr(table, "call", original)
    backend.metrics.append("R1", points)
    assert [p.step for p in backend.metrics.history("R1", "b")] == list(range(5))
    assert backend.metrics.latest(["R1"])["R1"]["b"].step == 4


@needs_emulator
def test_parallel_latest_puts_without_lock(harness):
    from mltrail.domain import MetricPoint

    config = replace(harness.config, serialize=False,
                     prefix=f"{harness.config.prefix}-parallel-{os.getpid()}")
    backend = DynamoDBBackend(config)
    try:
        backend._table.ensure_ready(new=True)
        stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
        backend.metrics.append("R1", [MetricPoint(
            run_id="R1", key="k3", value=9.0, step=9, timestamp=stamp, seq="A:0")])
        points = [MetricPoint(run_id="R1", key=f"k{k}", value=float(k), step=5,
                              timestamp=stamp, seq=f"B:{k:06d}") for k in range(20)]
        before = backend.telemetry_counters()
        backend.metrics.append("R1", points)
        grown = _grown(before, backend.telemetry_counters())
        latest = backend.metrics.latest(["R1"])["R1"]
        assert backend._table._pool is not None
        assert sorted(latest) == sorted(f"k{k}" for k in range(20))
        assert latest["k3"].step == 9
        assert all(latest[f"k{k}"].step == 5 for k in range(20) if k != 3)
        # 20 chunks, 20 bucket-list items, the run's list item and 19 latest
        # points are written, because step 9 beats the latest of k3.
        assert grown["items_written"] == 60
    finally:
        backend._table.drop()
        backend.close()
    assert backend._table._pool is None
