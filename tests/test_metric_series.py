import math
import struct
from datetime import datetime, timedelta, timezone

import mltrail
import pytest
from mltrail.domain import MetricSeries
from mltrail.errors import InvalidInputError


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    # memory writes series through the contract's default `append_series`,
    # local through its own column packing.
    if request.param == "memory":
        return mltrail.connect("memory://")
    return mltrail.connect(f"local://{tmp_path}/series.db")


def _bits(value):
    return struct.pack(">d", value)


def _history(store, run_id, key):
    return list(store.metric_history(run_id, key))


def test_series_values_bit_exact(store):
    values = [0.1, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]
    with mltrail.start_run(store, "exp") as run:
        assert run.log_metric_series("m", values) == len(values)
    points = _history(store, run.id, "m")
    assert [p.step for p in points] == list(range(len(values)))
    assert [_bits(p.value) for p in points] == [_bits(v) for v in values]


def test_series_steps_and_int_values(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metric_series("m", [1, 2, 3], steps=[10, 20, 30])
    points = _history(store, run.id, "m")
    assert [(p.step, p.value) for p in points] == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert all(type(p.value) is float for p in points)


def test_series_accepts_numpy_arrays(store):
    numpy = pytest.importorskip("numpy")
    with mltrail.start_run(store, "exp") as run:
        run.log_metric_series("m", numpy.array([0.5, 0.25]), steps=numpy.array([3, 4]))
    assert [(p.step, p.value) for p in _history(store, run.id, "m")] == [
        (3, 0.5),
        (4, 0.25),
    ]


@pytest.mark.parametrize(
    "values, steps",
    [
        ([1.0, "high"], None),
        ([1.0, True], None),
        ([1.0, 2.0], [0, -1]),
        ([1.0, 2.0], [0, True]),
        ([1.0, 2.0], [0, 2**63]),
        ([1.0, 2.0], [0]),
        ("12", None),
        (2**53 + 1, None),
    ],
)
def test_series_invalid_element_rejects_all(store, values, steps):
    with mltrail.start_run(store, "exp", flush_size=1) as run:
        with pytest.raises(InvalidInputError):
            run.log_metric_series("m", values, steps=steps)
    assert _history(store, run.id, "m") == []


def test_series_invalid_key_rejected(store):
    with mltrail.start_run(store, "exp") as run:
        for key in ("", "k" * 251, "a\x00b", 7):
            with pytest.raises(InvalidInputError):
                run.log_metric_series(key, [1.0])


def test_series_timestamps_per_point(store):
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    stamps = [base + timedelta(seconds=i) for i in range(3)]
    with mltrail.start_run(store, "exp") as run:
        run.log_metric_series("m", [1.0, 2.0, 3.0], timestamps=stamps)
        with pytest.raises(InvalidInputError):
            run.log_metric_series("m", [1.0, 2.0], timestamps=stamps)
    assert [p.timestamp for p in _history(store, run.id, "m")] == stamps


def test_series_one_timestamp_and_extras(store):
    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with mltrail.start_run(store, "exp") as run:
        run.log_metric_series("m", [1.0, 2.0], timestamps=stamp, unit="s", split="val")
    points = _history(store, run.id, "m")
    assert {p.timestamp for p in points} == {stamp}
    assert {(p.unit, p.split) for p in points} == {("s", "val")}


def test_series_longer_than_flush_size(store):
    with mltrail.start_run(store, "exp", flush_size=7) as run:
        run.log_metric_series("m", [float(i) for i in range(50)])
        assert len(_history(store, run.id, "m")) == 49
    points = _history(store, run.id, "m")
    assert [p.value for p in points] == [float(i) for i in range(50)]
    assert len({p.seq for p in points}) == 50


def test_known_key_still_validates_value(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("loss", 0.5)
        for value in ("high", None, True, [1.0]):
            with pytest.raises(InvalidInputError):
                run.log_metric("loss", value)
        with pytest.raises(InvalidInputError):
            run.log_metric("loss", 0.5, step=-1)
        with pytest.raises(InvalidInputError):
            run.log_metric(["loss"], 0.5)
    assert [p.value for p in _history(store, run.id, "loss")] == [0.5]


def test_flush_seconds_zero_writes_each_point(store):
    with mltrail.start_run(store, "exp", flush_seconds=0) as run:
        run.log_metric("m", 1.0)
        assert len(_history(store, run.id, "m")) == 1
        run.log_metric("m", 2.0, step=1)
        assert len(_history(store, run.id, "m")) == 2


def test_flush_seconds_rejects_bad_values(store):
    for bad in (-1, math.nan, "5", True):
        with pytest.raises(InvalidInputError):
            mltrail.start_run(store, "exp", flush_seconds=bad)


def test_flush_size_one_writes_each_point(store):
    with mltrail.start_run(store, "exp", flush_size=1) as run:
        run.log_metric("m", 1.0)
        assert len(_history(store, run.id, "m")) == 1


def test_log_metrics_share_one_timestamp(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metrics({"a": 1.0, "b": 2.0}, step=3)
    stamps = {p.timestamp for key in ("a", "b") for p in _history(store, run.id, key)}
    assert len(stamps) == 1


def test_points_and_series_keep_log_order(store):
    stamp = datetime(2026, 3, 1, tzinfo=timezone.utc)
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("m", 1.0, step=5, timestamp=stamp)
        run.log_metric_series("m", [2.0, 3.0], steps=[5, 5], timestamps=stamp)
        run.log_metric("m", 4.0, step=5, timestamp=stamp)
    points = _history(store, run.id, "m")
    assert [p.value for p in points] == [1.0, 2.0, 3.0, 4.0]
    assert store.latest_metrics(run.id)["m"].value == 4.0


def test_series_with_unsorted_steps(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metric_series("m", [3.0, 1.0, 2.0], steps=[30, 10, 20])
    assert [(p.step, p.value) for p in _history(store, run.id, "m")] == [
        (10, 1.0), (20, 2.0), (30, 3.0)]
    assert store.latest_metrics(run.id)["m"].step == 30


def test_series_retried_adds_nothing(store):
    run = store.create_run(store.get_or_create_experiment("exp").id)
    series = MetricSeries(run_id=run.id, key="m", values=[0.5, 0.25], steps=[1, 2],
                          stamps=[1_772_323_200_000_000] * 2,
                          seqs=["B1:0000000000", "B1:0000000001"])
    assert store.append_prepared_points(run.id, [], [series]) == 2
    store.append_prepared_points(run.id, [], [series])
    assert [p.value for p in _history(store, run.id, "m")] == [0.5, 0.25]


def test_series_for_other_run_rejected(store):
    run = store.create_run(store.get_or_create_experiment("exp").id)
    series = MetricSeries(run_id="OTHERRUN1", key="m", values=[0.5], steps=[1],
                          stamps=[1_772_323_200_000_000], seqs=["B1:0000000000"])
    with pytest.raises(InvalidInputError, match="OTHERRUN1"):
        store.append_prepared_points(run.id, [], [series])
    assert _history(store, run.id, "m") == []


def test_series_flushes_with_points_in_one_batch(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("a", 1.0)
        run.log_metric_series("b", [1.0, 2.0])
    batches = {p.seq.rpartition(":")[0] for key in ("a", "b")
               for p in _history(store, run.id, key)}
    assert len(batches) == 1


def test_point_timestamps_kept_to_the_microsecond(store):
    stamp = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc)
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("m", 1.0, step=1, timestamp=stamp)
        run.log_metric("m", 2.0, step=2)
        run.log_metric("m", 3.0, step=3, timestamp=stamp)
    after = datetime.now(timezone.utc)
    points = _history(store, run.id, "m")
    assert points[0].timestamp == stamp
    assert points[2].timestamp == stamp
    assert before <= points[1].timestamp <= after


def test_clock_going_back_keeps_history_order(store):
    late = datetime(2026, 3, 1, 12, 0, 5, tzinfo=timezone.utc)
    early = datetime(2026, 3, 1, 12, 0, 1, tzinfo=timezone.utc)
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("m", 1.0, step=1, timestamp=late)
        run.log_metric("m", 2.0, step=1, timestamp=early)
    assert [p.value for p in _history(store, run.id, "m")] == [2.0, 1.0]
    assert store.latest_metrics(run.id)["m"].value == 1.0


def test_plain_points_flush_in_one_write(store):
    from mltrail.discovery.telemetry import instrument

    telemetry = instrument(store)
    with mltrail.start_run(store, "exp", capture_env=False, capture_code=False) as run:
        for step in range(5):
            run.log_metric("loss", 1 / (step + 1), step=step)
            run.log_metric("acc", step, step=step)
        run.log_metric("loss", 0.1, step=9, unit="nats")
    calls = {row["operation"]: row["calls"] for row in telemetry.operation_rows()}
    assert calls["metrics.append_series"] == 1
    # Only the point with an optional field goes through `append`.
    assert calls["metrics.append"] == 1
    assert len(_history(store, run.id, "loss")) == 6
    assert [p.value for p in _history(store, run.id, "acc")] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_log_metrics_rejects_all_on_one_bad_value(store):
    with mltrail.start_run(store, "exp") as run:
        with pytest.raises(InvalidInputError, match="'b'"):
            run.log_metrics({"a": 1.0, "b": "oops", "c": 3.0}, step=0)
    assert store.metric_keys(run.id) == []


def test_int_beyond_float_range_rejected(store):
    with mltrail.start_run(store, "exp") as run:
        with pytest.raises(InvalidInputError, match="beyond the float64 range"):
            run.log_metric("big", 2 ** 1024)
        with pytest.raises(InvalidInputError, match="beyond the float64 range"):
            run.log_metric_series("big", [1.0, 2 ** 1024])
    assert store.metric_keys(run.id) == []


def test_unknown_optional_field_rejected(store):
    with mltrail.start_run(store, "exp") as run:
        with pytest.raises(InvalidInputError, match="colour"):
            run.log_metric("k", 1.0, colour="red")
        with pytest.raises(InvalidInputError, match="colour"):
            store.log_metric(run.id, "k", 1.0, colour="red")
    assert store.metric_keys(run.id) == []


def test_epoch_zero_timestamp_kept(store):
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("a", 1.0, timestamp=0)
        run.log_metric_series("b", [1.0, 2.0], timestamps=0)
    store.log_metric(run.id, "c", 1.0, timestamp=0)
    for key in ("a", "b", "c"):
        assert {p.timestamp for p in _history(store, run.id, key)} == {epoch}, key
