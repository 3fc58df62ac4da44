"""The binary layout of a cold metric segment: one metric of one run, columnar.

A segment holds up to `SEGMENT_POINTS` points in history order (step,
timestamp, seq). Each column is encoded so that a general-purpose compressor
finds long repeats, then the whole body is compressed:

- steps and timestamps (microseconds since the Unix epoch) as zigzag varint
  deltas from the previous point, so regular logging becomes runs of equal
  bytes;
- values as their IEEE 754 bits XOR the previous value's bits, with the eight
  bytes of all values transposed into byte planes, so every float comes back
  bit for bit, NaN payloads and -0.0 included;
- seqs as the length of the prefix shared with the previous seq plus the rest,
  because the core's seqs are `<batch id>:<index>`;
- optional fields (unit, CI, drift, ...) as canonical JSON, with one byte for
  "none" and one for "same as the previous point".

Body: magic `MTS1`, varint count, then five length-prefixed sections in the
order above. The compressor is named in the segment's catalog entry.
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from mltrail.clock import from_micros, to_micros
from mltrail.domain import MetricPoint
from mltrail.errors import InvalidInputError

MAGIC = b"MTS1"
SEGMENT_POINTS = 8_192
DEFAULT_COMPRESSION = "lzma"

_EXTRA_NONE = 0
_EXTRA_SAME = 1
_EXTRA_OFFSET = 2


# A segment body is rarely over 1 MiB, so a larger dictionary than that would
# gain nothing, while every reader would allocate it (8 MiB at preset 6).
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]


def _lzma_compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=LZMA_FILTERS)


COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (lambda data: zlib.compress(data, 9), zlib.decompress),
    "lzma": (_lzma_compress, lzma.decompress),
}


class SegmentFormatError(InvalidInputError):
    """A stored segment cannot be decoded; it was damaged or written by another tool."""


# ----------------------------------------------------------------------
# varints
# ----------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


class _Reader:
    """Reads varints and byte strings from a body, raising on truncation."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.position = 0

    def varint(self) -> int:
        result = 0
        shift = 0
        while True:
            if self.position >= len(self.data):
                raise SegmentFormatError("metric segment is truncated inside a varint",
                                         self.position)
            byte = self.data[self.position]
            self.position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def take(self, size: int) -> memoryview:
        end = self.position + size
        if end > len(self.data):
            raise SegmentFormatError(
                f"metric segment is truncated: needs {size} bytes at offset "
                f"{self.position}, has {len(self.data) - self.position}", self.position)
        chunk = self.data[self.position:end]
        self.position = end
        return chunk


# ----------------------------------------------------------------------
# columns
# ----------------------------------------------------------------------


def _deltas(values: Iterable[int]) -> bytes:
    out = bytearray()
    previous = 0
    for value in values:
        _put_varint(out, _zigzag(value - previous))
        previous = value
    return bytes(out)


def _undeltas(data: memoryview, count: int) -> list[int]:
    reader = _Reader(data)
    values = []
    previous = 0
    for _ in range(count):
        previous += _unzigzag(reader.varint())
        values.append(previous)
    return values


def _value_planes(values: Sequence[float]) -> bytes:
    count = len(values)
    words = struct.unpack(f">{count}Q", struct.pack(f">{count}d", *values))
    previous = (0, *words)[:count]
    xored = [word ^ before for word, before in zip(words, previous, strict=True)]
    raw = struct.pack(f">{count}Q", *xored)
    return b"".join(raw[plane::8] for plane in range(8))


def _values_from_planes(data: memoryview, count: int) -> list[float]:
    if len(data) != 8 * count:
        raise SegmentFormatError(
            f"metric segment value column has {len(data)} bytes; expected {8 * count}",
            len(data))
    raw = bytearray(8 * count)
    for plane in range(8):
        raw[plane::8] = data[plane * count:(plane + 1) * count]
    words = list(struct.unpack(f">{count}Q", raw))
    for index in range(1, count):
        words[index] ^= words[index - 1]
    return list(struct.unpack(f">{count}d", struct.pack(f">{count}Q", *words)))


def _seq_column(seqs: Iterable[str]) -> bytes:
    out = bytearray()
    previous = b""
    for seq in seqs:
        encoded = seq.encode("utf-8")
        shared = 0
        limit = min(len(previous), len(encoded))
        while shared < limit and previous[shared] == encoded[shared]:
            shared += 1
        _put_varint(out, shared)
        _put_varint(out, len(encoded) - shared)
        out += encoded[shared:]
        previous = encoded
    return bytes(out)


def _seqs_from_column(data: memoryview, count: int) -> list[str]:
    reader = _Reader(data)
    seqs = []
    previous = b""
    for _ in range(count):
        shared = reader.varint()
        rest = bytes(reader.take(reader.varint()))
        current = previous[:shared] + rest
        seqs.append(current.decode("utf-8"))
        previous = current
    return seqs


def _extra_column(extras: Iterable[dict[str, Any] | None]) -> bytes:
    out = bytearray()
    previous: bytes | None = None
    for extra in extras:
        if extra is None:
            _put_varint(out, _EXTRA_NONE)
            previous = None
            continue
        encoded = json.dumps(extra, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False, allow_nan=False).encode("utf-8")
        if encoded == previous:
            _put_varint(out, _EXTRA_SAME)
            continue
        _put_varint(out, len(encoded) + _EXTRA_OFFSET)
        out += encoded
        previous = encoded
    return bytes(out)


def _extras_from_column(data: memoryview, count: int) -> list[dict[str, Any] | None]:
    reader = _Reader(data)
    extras: list[dict[str, Any] | None] = []
    previous: dict[str, Any] | None = None
    for _ in range(count):
        flag = reader.varint()
        if flag == _EXTRA_NONE:
            previous = None
        elif flag != _EXTRA_SAME:
            previous = json.loads(bytes(reader.take(flag - _EXTRA_OFFSET)))
        elif previous is None:
            raise SegmentFormatError("metric segment repeats the optional fields of a "
                                     "point that has none", reader.position)
        extras.append(previous)
    return extras


# ----------------------------------------------------------------------
# segments
# ----------------------------------------------------------------------


def encode_points(points: Sequence[MetricPoint]) -> bytes:
    """Return the uncompressed body of a segment holding `points` in their order."""
    sections = (
        _deltas(p.step for p in points),
        _deltas(to_micros(p.timestamp) for p in points),
        _value_planes([p.value for p in points]),
        _seq_column(p.seq for p in points),
        _extra_column(p.extras() for p in points),
    )
    out = bytearray(MAGIC)
    _put_varint(out, len(points))
    for section in sections:
        _put_varint(out, len(section))
        out += section
    return bytes(out)


def decode_points(run_id: str, key: str, body: bytes) -> list[MetricPoint]:
    """Rebuild the points of an uncompressed segment body; see `encode_points`."""
    return list(iter_points(run_id, key, body)[1])


def iter_points(run_id: str, key: str,
                body: bytes) -> tuple[int, Iterator[MetricPoint]]:
    """Return a segment's point count and an iterator that builds its points one by one.

    The columns are decoded and checked before this returns. Only the point
    objects are made lazily, so a reader keeps one segment's columns at a time.
    """
    if body[:len(MAGIC)] != MAGIC:
        raise SegmentFormatError(
            f"metric segment of run {run_id!r} metric {key!r} starts with "
            f"{bytes(body[:4])!r}, not {MAGIC!r}", run_id)
    reader = _Reader(body)
    reader.take(len(MAGIC))
    count = reader.varint()
    steps, stamps, values, seqs, extras = (reader.take(reader.varint())
                                           for _ in range(5))
    columns = (_undeltas(steps, count), _undeltas(stamps, count),
               _values_from_planes(values, count), _seqs_from_column(seqs, count),
               _extras_from_column(extras, count))
    return count, _points(run_id, key, columns)


def _points(run_id: str, key: str, columns: tuple[list, ...]) -> Iterator[MetricPoint]:
    for step, micros, value, seq, extra in zip(*columns, strict=True):
        point = MetricPoint(run_id=run_id, key=key, value=value, step=step,
                            timestamp=from_micros(micros), seq=seq)
        yield point.with_extras(dict(extra)) if extra else point


def check_compression(method: str) -> str:
    """Return `method` if it names a known compressor; else raise InvalidInputError."""
    _compressor(method)
    return method


def compress(body: bytes, method: str) -> bytes:
    return _compressor(method)[0](body)


def decompress(data: bytes, method: str) -> bytes:
    try:
        return _compressor(method)[1](data)
    except (zlib.error, lzma.LZMAError) as error:
        raise SegmentFormatError(f"metric segment does not decompress with {method}: "
                                 f"{error}", method) from error


Codec = Callable[[bytes], bytes]


def _compressor(method: str) -> tuple[Codec, Codec]:
    try:
        return COMPRESSORS[method]
    except KeyError:
        raise InvalidInputError(
            f"compression {method!r} is unknown; expected one of "
            f"{', '.join(sorted(COMPRESSORS))}", method) from None
