import math
from datetime import datetime, timedelta, timezone

import pytest

from mltrail import codec
from mltrail.conformance.cases.support import FLOAT_VALUES
from mltrail.domain import MetricPoint
from mltrail.errors import InvalidInputError
from mltrail.ops import segments
from mltrail.ops.cold import merge_sources
from mltrail.ops.records import order_key, point_to_record, redact_url

BASE = datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=timezone.utc)


def point(step, value=0.5, seconds=0.0, seq=None, **extra):
    return MetricPoint(run_id="R1", key="loss", value=value, step=step,
                       timestamp=BASE + timedelta(seconds=seconds),
                       seq=seq or f"01BATCH:{step:06d}", **extra)


def round_trip(points, method="lzma"):
    data = segments.compress(segments.encode_points(points), method)
    return segments.decode_points("R1", "loss", segments.decompress(data, method))


def records(points):
    return [point_to_record(p) for p in points]


@pytest.mark.parametrize("method", sorted(segments.COMPRESSORS))
def test_special_floats_bit_exact(method):
    points = [point(i, value) for i, value in enumerate(FLOAT_VALUES.values())]
    decoded = round_trip(points, method)
    assert [codec.float_to_bits(p.value) for p in decoded] == \
        [codec.float_to_bits(p.value) for p in points]


def test_all_fields_survive():
    points = [
        point(0, 1.0, unit="nats", split="val", metric_kind="loss", hardware="a100"),
        point(0, 2.0, seconds=-5.0, ci_low=-0.0, ci_high=math.inf, ci_level=0.9),
        point(7, 3.0, seconds=1e6, drift={"psi": math.nan, "kl": -0.0}),
        point(7, 3.0, seconds=1e6, drift={"psi": math.nan, "kl": -0.0}),
        point(2**63 - 1, -1.0, seq="other-batch:000001"),
    ]
    decoded = round_trip(points)
    assert codec.values_equal(records(decoded), records(points))


def test_timestamps_before_epoch():
    early = MetricPoint(run_id="R1", key="loss", value=1.0, step=0, seq="b:1",
                        timestamp=datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc))
    assert round_trip([early, point(1)])[0].timestamp == early.timestamp


def test_empty_segment():
    assert round_trip([]) == []


def test_unicode_seqs_with_shared_prefix():
    points = [point(i, seq=f"lot-ü-{i:03d}") for i in range(300)]
    assert [p.seq for p in round_trip(points)] == [p.seq for p in points]


def test_repeated_extras_compress_well():
    points = [point(i, float(i), seconds=i, unit="nats") for i in range(5_000)]
    body = segments.encode_points(points)
    as_json = sum(len(codec.dumps(r)) for r in records(points))
    assert len(segments.compress(body, "lzma")) * 20 < as_json


def test_wrong_magic_rejected():
    with pytest.raises(segments.SegmentFormatError) as caught:
        segments.decode_points("R1", "loss", b"XXXX\x00")
    assert "'R1'" in str(caught.value)


def test_truncated_body_rejected():
    body = segments.encode_points([point(i) for i in range(10)])
    with pytest.raises(segments.SegmentFormatError):
        segments.decode_points("R1", "loss", body[:-7])


def test_garbage_does_not_decompress():
    with pytest.raises(segments.SegmentFormatError):
        segments.decompress(b"not compressed", "zlib")


def test_unknown_compression_named():
    with pytest.raises(InvalidInputError) as caught:
        segments.check_compression("brotli")
    assert "'brotli'" in str(caught.value)
    assert "lzma" in str(caught.value)


def test_merge_orders_and_drops_repeats():
    first = [point(0), point(2), point(4)]
    second = [point(1), point(2), point(3)]
    merged = list(merge_sources([((0,), lambda: iter(first)),
                                 ((1,), lambda: iter(second))]))
    assert [p.step for p in merged] == [0, 1, 2, 3, 4]


def test_merge_opens_sources_lazily():
    opened = []

    def source(steps):
        def open_source():
            opened.append(steps[0])
            return iter([point(step) for step in steps])
        return (order_key(point(steps[0])), open_source)

    merged = merge_sources([source([0, 1]), source([10, 11]), source([20, 21])])
    assert next(merged).step == 0
    assert opened == [0]
    assert [p.step for p in merged] == [1, 10, 11, 20, 21]
    assert opened == [0, 10, 20]


def test_redact_url_drops_secrets():
    url = "mongodb://alice:s3cret@db.example:27017/mltrail?authSource=admin&password=x"
    redacted = redact_url(url)
    assert "s3cret" in url
    assert "s3cret" not in redacted
    assert "alice" not in redacted
    assert "password=%2A%2A%2A" in redacted
    assert "authSource=admin" in redacted
