import math
import struct

import pytest

from mltrail import codec
from mltrail.errors import InvalidInputError


def nan_with_payload(payload: int) -> float:
    return struct.unpack(">d", struct.pack(">Q", 0x7FF8000000000000 | payload))[0]


@pytest.mark.parametrize("value", [
    0.0, -0.0, math.inf, -math.inf, math.nan, nan_with_payload(5), 5e-324,
    1.7976931348623157e308, 2**63 - 1, -(2**63), True, False, None, "", "😀",
])
def test_scalar_round_trip_through_json(value):
    decoded = codec.loads(codec.dumps({"v": value}))["v"]
    assert codec.values_equal(decoded, value)


def test_non_finite_floats_become_markers():
    encoded = codec.encode_value({"a": math.inf})
    assert encoded == {"a": {"$f": "7ff0000000000000"}}


def test_dollar_keys_escaped_reversibly():
    value = {"$f": 1, "$$g": {"$h": [math.nan]}}
    encoded = codec.encode_value(value)
    assert set(encoded) == {"$$f", "$$$g"}
    assert codec.values_equal(codec.decode_value(encoded), value)


def test_marker_lookalike_dict_survives():
    value = {"$f": "7ff0000000000000"}
    assert codec.decode_value(codec.encode_value(value)) == value


def test_tuple_becomes_list():
    assert codec.decode_value(codec.encode_value((1, 2))) == [1, 2]


@pytest.mark.parametrize("bad", [{1: "x"}, {"k": {1, 2}}, {"k": b"x"}, object()])
def test_unsupported_values_rejected(bad):
    with pytest.raises(InvalidInputError):
        codec.encode_value(bad)


def test_error_names_path():
    with pytest.raises(InvalidInputError) as caught:
        codec.encode_value({"outer": {"inner": [1, {2}]}}, "params")
    assert "params.outer.inner[1]" in str(caught.value)


@pytest.mark.parametrize("a,b,equal", [
    (1, 1.0, False), (0.0, -0.0, False), (math.nan, math.nan, True), (True, 1, False),
    ([1, 2], [1, 2], True), ({"a": 1}, {"a": 1, "b": 2}, False), ("x", "x", True),
])
def test_values_equal(a, b, equal):
    assert codec.values_equal(a, b) is equal


def test_flatten_keeps_empty_dicts_and_lists():
    flat = dict(codec.flatten({"a": {"b": 1, "c": {}}, "d": [1, {"e": 2}]}))
    assert flat == {("a", "b"): 1, ("a", "c"): {}, ("d",): [1, {"e": 2}]}


@pytest.mark.parametrize("path", [("a",), ("a.b", "c"), ("%2E", "x%y"), ("", "."), ("…",)])
def test_join_and_split_path(path):
    assert codec.split_path(codec.join_path(path)) == path


def test_join_path_distinguishes_dotted_keys():
    assert codec.join_path(("a.b",)) != codec.join_path(("a", "b"))


def test_stored_record_over_size_limit_reads_back():
    from mltrail import limits
    from mltrail.domain import Experiment, Run

    run = Run(experiment_id=Experiment(name="e").id, name="r", params={"a": 1})
    record = run.to_record()
    big = "x" * (limits.MAX_PARAMS_BYTES + 10)
    record["params"] = {"blob": big}
    with pytest.raises(InvalidInputError, match="params take"):
        Run(experiment_id=run.experiment_id, name="r", params={"blob": big})
    again = Run.from_record(record)
    assert again.params["blob"] == big
    # The size check is skipped only while rebuilding a stored record.
    with pytest.raises(InvalidInputError, match="params take"):
        Run(experiment_id=run.experiment_id, name="r", params={"blob": big})
