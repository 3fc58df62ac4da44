"""Value fidelity: params, tags and metric values survive every store bit for bit."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mltrail import limits
from mltrail.domain import MetricPoint
from mltrail.errors import InvalidInputError

from mltrail.conformance.cases.support import (
    AWKWARD_KEYS, BASE_TIME, FLOAT_VALUES, PARAM_VALUES, bits, same,
)


def _run(store, **options):
    experiment = store.get_or_create_experiment("values")
    return store.create_run(experiment.id, **options)


class ValueCases:
    area = "values"

    @pytest.mark.parametrize("name", sorted(PARAM_VALUES))
    def test_param_value_round_trip(self, store, name):
        value = PARAM_VALUES[name]
        run = _run(store, params={"value": value})
        loaded = store.get_run(run.id)
        assert same(loaded.params["value"], value), (loaded.params["value"], value)

    @pytest.mark.parametrize("name", sorted(PARAM_VALUES))
    def test_param_value_raw_record(self, store, mltrail_harness, name):
        value = PARAM_VALUES[name]
        run = _run(store, params={"value": value})
        raw = mltrail_harness.raw_read(store.backend, "run", run.id)
        assert raw["params"] == run.to_record()["params"]

    @pytest.mark.parametrize("name", sorted(AWKWARD_KEYS))
    def test_awkward_param_key(self, store, name):
        key = AWKWARD_KEYS[name]
        run = _run(store, params={key: 1, "nested": {key: "x"}})
        loaded = store.get_run(run.id)
        assert loaded.params == {key: 1, "nested": {key: "x"}}

    @pytest.mark.parametrize("name", sorted(AWKWARD_KEYS))
    def test_awkward_tag_key(self, store, name):
        key = AWKWARD_KEYS[name]
        run = _run(store, tags={key: "v"})
        assert store.get_run(run.id).tags == {key: "v"}

    @pytest.mark.parametrize("name", sorted(AWKWARD_KEYS))
    def test_awkward_metric_key(self, store, name):
        key = AWKWARD_KEYS[name]
        run = _run(store)
        store.log_metrics(run.id, [{"key": key, "value": 2.5, "step": 3}])
        assert [p.value for p in store.metric_history(run.id, key)] == [2.5]
        assert store.latest_metrics(run.id)[key].step == 3
        assert store.metric_keys(run.id) == [key]

    @pytest.mark.parametrize("name", sorted(FLOAT_VALUES))
    def test_metric_value_history(self, store, name):
        value = FLOAT_VALUES[name]
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": value, "step": 1}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert bits(point.value) == bits(value)

    @pytest.mark.parametrize("name", sorted(FLOAT_VALUES))
    def test_metric_value_latest(self, store, name):
        value = FLOAT_VALUES[name]
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 0.5, "step": 0},
                                   {"key": "m", "value": value, "step": 1}])
        assert bits(store.latest_metrics(run.id)["m"].value) == bits(value)

    @pytest.mark.parametrize("name", ["min_subnormal", "nan_with_payload",
                                      "negative_zero", "negative_infinity"])
    def test_metric_extras_round_trip(self, store, name):
        value = FLOAT_VALUES[name]
        run = _run(store)
        store.log_metrics(run.id, [{
            "key": "acc", "value": 0.9, "step": 1, "unit": "ratio",
            "metric_kind": "accuracy", "split": "validation", "hardware": "cpu-2",
            "ci_low": value, "ci_high": 0.95, "ci_level": 0.95,
            "drift": {"psi": value, "ks": 0.25},
        }])
        (point,) = list(store.metric_history(run.id, "acc"))
        assert point.unit == "ratio"
        assert point.metric_kind == "accuracy"
        assert point.split == "validation"
        assert point.hardware == "cpu-2"
        assert bits(point.ci_low) == bits(value)
        assert point.ci_high == 0.95
        assert point.ci_level == 0.95
        assert bits(point.drift["psi"]) == bits(value)
        assert point.drift["ks"] == 0.25

    def test_int_metric_becomes_float(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 3, "step": 0}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert type(point.value) is float
        assert point.value == 3.0

    @pytest.mark.parametrize("bad", ["0.5", None, True, [1.0], 2**60 + 1])
    def test_bad_metric_value_rejected(self, store, bad):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.log_metrics(run.id, [{"key": "m", "value": bad}])
        assert list(store.metric_history(run.id, "m")) == []

    @pytest.mark.parametrize("bad", [-1, 1.5, "3", True, limits.MAX_STEP + 1])
    def test_bad_step_rejected(self, store, bad):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": bad}])

    def test_max_step_round_trip(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": limits.MAX_STEP}])
        assert store.latest_metrics(run.id)["m"].step == limits.MAX_STEP

    def test_bad_point_in_batch_writes_nothing(self, store):
        run = _run(store)
        points = [{"key": "m", "value": float(i), "step": i} for i in range(50)]
        points.append({"key": "m", "value": "bad", "step": 50})
        with pytest.raises(InvalidInputError):
            store.log_metrics(run.id, points)
        assert list(store.metric_history(run.id, "m")) == []


class LimitCases:
    area = "limits"

    def test_name_at_limit(self, store):
        name = "n" * limits.MAX_NAME_LENGTH
        assert store.create_experiment(name).name == name

    def test_name_past_limit(self, store):
        with pytest.raises(InvalidInputError) as caught:
            store.create_experiment("n" * (limits.MAX_NAME_LENGTH + 1))
        assert "256" in str(caught.value)

    def test_key_at_limit(self, store):
        key = "k" * limits.MAX_KEY_LENGTH
        run = _run(store, params={key: 1}, tags={key: "v"})
        assert store.get_run(run.id).params == {key: 1}

    def test_param_key_past_limit(self, store):
        with pytest.raises(InvalidInputError):
            _run(store, params={"k" * (limits.MAX_KEY_LENGTH + 1): 1})

    def test_metric_key_past_limit(self, store):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.log_metrics(run.id, [{"key": "k" * (limits.MAX_KEY_LENGTH + 1),
                                        "value": 1.0}])

    def test_tag_value_at_limit(self, store):
        value = "v" * limits.MAX_TAG_VALUE_LENGTH
        run = _run(store, tags={"t": value})
        assert store.get_run(run.id).tags["t"] == value

    def test_tag_value_past_limit(self, store):
        with pytest.raises(InvalidInputError):
            _run(store, tags={"t": "v" * (limits.MAX_TAG_VALUE_LENGTH + 1)})

    def test_params_size_near_limit(self, store):
        chunk = "x" * 1000
        params = {f"p{i:03d}": chunk for i in range(limits.MAX_PARAMS_BYTES // 1010)}
        run = _run(store, params=params)
        assert store.get_run(run.id).params == params

    def test_params_size_past_limit(self, store):
        chunk = "x" * 1000
        params = {f"p{i:03d}": chunk for i in range(limits.MAX_PARAMS_BYTES // 1000 + 2)}
        with pytest.raises(InvalidInputError):
            _run(store, params=params)
        assert list(store.iter_runs()) == []

    def test_log_params_past_size_limit_writes_nothing(self, store):
        run = _run(store, params={"a": 1})
        chunk = "x" * 1000
        params = {f"p{i:03d}": chunk for i in range(limits.MAX_PARAMS_BYTES // 1000 + 2)}
        with pytest.raises(InvalidInputError):
            store.log_params(run.id, params)
        assert store.get_run(run.id).params == {"a": 1}

    def test_params_count_past_limit(self, store):
        params = {f"p{i}": i for i in range(limits.MAX_PARAMS_PER_CALL + 1)}
        with pytest.raises(InvalidInputError):
            _run(store, params=params)

    def test_params_count_at_limit(self, store):
        params = {f"p{i}": i for i in range(limits.MAX_PARAMS_PER_CALL)}
        run = _run(store, params=params)
        assert len(store.get_run(run.id).params) == limits.MAX_PARAMS_PER_CALL

    def test_metric_batch_larger_than_backend_batch(self, store):
        run = _run(store)
        count = limits.MAX_METRIC_BATCH + 17
        store.log_metrics(run.id, [{"key": "m", "value": float(i), "step": i}
                                   for i in range(count)])
        assert sum(1 for _ in store.metric_history(run.id, "m")) == count

    @pytest.mark.parametrize("bad", ["", "   ", None, 7, "a\x00b"])
    def test_bad_experiment_name(self, store, bad):
        with pytest.raises(InvalidInputError):
            store.create_experiment(bad)

    @pytest.mark.parametrize("bad", ["", "has space", "-lead", "x" * 64, None])
    def test_bad_namespace(self, store, bad):
        with pytest.raises(InvalidInputError):
            store.create_experiment("ok", namespace=bad)

    @pytest.mark.parametrize("bad", [{"k": 1}, {"k": None}, {1: "v"}, ["k"]])
    def test_bad_tags(self, store, bad):
        with pytest.raises(InvalidInputError):
            store.create_experiment("tagged", tags=bad)

    @pytest.mark.parametrize("bad", [{1: "x"}, {"k": {1, 2}}, {"k": b"bytes"},
                                     {"k": object()}])
    def test_bad_params(self, store, bad):
        with pytest.raises(InvalidInputError):
            _run(store, params=bad)


class TimeCases:
    area = "time"

    def test_microsecond_precision(self, store):
        run = _run(store)
        stamp = datetime(2023, 1, 2, 3, 4, 5, 999999, tzinfo=timezone.utc)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0, "timestamp": stamp}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert point.timestamp == stamp
        assert point.timestamp.tzinfo is not None

    def test_other_zone_normalised_to_utc(self, store):
        run = _run(store)
        zone = timezone(timedelta(hours=5, minutes=30))
        stamp = datetime(2023, 6, 1, 10, 0, 0, 1, tzinfo=zone)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0, "timestamp": stamp}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert point.timestamp == stamp
        assert point.timestamp.utcoffset() == timedelta(0)

    def test_naive_time_read_as_utc(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0,
                                    "timestamp": datetime(2023, 6, 1, 10, 0, 0)}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert point.timestamp == datetime(2023, 6, 1, 10, 0, 0, tzinfo=timezone.utc)

    def test_iso_string_time(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0,
                                    "timestamp": "2023-06-01T10:00:00.000007+02:00"}])
        (point,) = list(store.metric_history(run.id, "m"))
        assert point.timestamp == datetime(2023, 6, 1, 8, 0, 0, 7, tzinfo=timezone.utc)

    def test_entity_times_round_trip(self, store):
        run = _run(store)
        loaded = store.get_run(run.id)
        assert loaded.created_at == run.created_at
        assert loaded.created_at.microsecond == run.created_at.microsecond
        assert loaded.created_at.utcoffset() == timedelta(0)

    def test_updated_at_moves_forward(self, store):
        run = _run(store)
        changed = store.set_run_status(run.id, "running")
        assert changed.updated_at >= run.updated_at
        assert store.get_run(run.id).start_time is not None

    def test_old_and_far_future_times(self, store):
        run = _run(store)
        early = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)
        late = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": 0, "timestamp": early},
                                   {"key": "m", "value": 2.0, "step": 1, "timestamp": late}])
        stamps = [p.timestamp for p in store.metric_history(run.id, "m")]
        assert stamps == [early, late]

    def test_bad_timestamp_rejected(self, store):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.log_metrics(run.id, [{"key": "m", "value": 1.0, "timestamp": "yesterday"}])

    def test_time_range_query(self, store):
        run = _run(store)
        points = [MetricPoint(run_id=run.id, key="m", value=float(i), step=i,
                              timestamp=BASE_TIME + timedelta(minutes=i)) for i in range(10)]
        store.log_metrics(run.id, points)
        selected = store.metric_history(run.id, "m", start=BASE_TIME + timedelta(minutes=3),
                                        end=BASE_TIME + timedelta(minutes=6))
        assert [p.step for p in selected] == [3, 4, 5, 6]
