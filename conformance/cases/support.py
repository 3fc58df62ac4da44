"""Values and helpers shared by the conformance cases."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from mltrail import codec, limits


def bits(value: float) -> str:
    return struct.pack(">d", value).hex()


def float_from_bits(hex_bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(hex_bits))[0]


# Floats that stores are known to mangle: extremes, subnormals, signed zero,
# non-finite values and a NaN with a payload.
FLOAT_VALUES: dict[str, float] = {
    "zero": 0.0,
    "negative_zero": -0.0,
    "one": 1.0,
    "tenth": 0.1,
    "third": 1.0 / 3.0,
    "max": 1.7976931348623157e308,
    "negative_max": -1.7976931348623157e308,
    "min_normal": 2.2250738585072014e-308,
    "min_subnormal": 5e-324,
    "negative_subnormal": -5e-324,
    "epsilon": 2.220446049250313e-16,
    "large_integer": 9007199254740993.0 - 1.0,
    "positive_infinity": math.inf,
    "negative_infinity": -math.inf,
    "nan": math.nan,
    "nan_with_payload": float_from_bits("7ff8000000000001"),
    "negative_nan": float_from_bits("fff8000000000000"),
}

# Param values of every JSON-like type whose type and value must survive.
PARAM_VALUES: dict[str, Any] = {
    **{f"float_{name}": value for name, value in FLOAT_VALUES.items()},
    "int_zero": 0,
    "int_negative": -1,
    "int_above_float_precision": 2**53 + 1,
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "bool_true": True,
    "bool_false": False,
    "none": None,
    "empty_string": "",
    "ascii": "adam",
    "whitespace": " \t\n ",
    "latin": "àéîõü ß",
    "cjk": "学习率",
    "arabic_rtl": "معدل التعلم",
    "emoji_astral": "😀🚀",
    "musical_symbol": "𝄞",
    "combining_marks": "e\u0301",
    "supplementary_ideograph": "𠀋",
    "private_use_plane": "\U000f0000",
    "quotes_and_backslashes": "it's \"quoted\" \\ back",
    "json_like_text": '{"$f": "7ff8000000000000"}',
    "dollar_marker_text": "$f",
    "long_string": "x" * 4000,
    "empty_list": [],
    "mixed_list": [1, 1.0, "1", True, None, [2], {"k": -0.0}],
    "empty_dict": {},
    "nested": {"a": {"b": {"c": [1, {"d": math.inf}]}}},
    "dict_with_marker_key": {"$f": "7ff8000000000000"},
    "one_as_int": 1,
    "one_as_float": 1.0,
}

# Keys that collide with path syntax or store restrictions.
AWKWARD_KEYS: dict[str, str] = {
    "dot": "optimizer.lr",
    "slash": "data/train",
    "space": "learning rate",
    "leading_dollar": "$lr",
    "trailing_dollar": "lr$",
    "double_dollar": "$$x",
    "marker_key": "$f",
    "dunder": "__name__",
    "brackets": "layers[0]",
    "star": "*",
    "backtick": "a`b",
    "percent_escape": "a%2Eb",
    "only_dot": ".",
    "unicode": "学习率",
    "emoji": "🚀",
    "hash_and_colon": "#1:x",
    "single_space": " ",
    "max_length": "k" * limits.MAX_KEY_LENGTH,
}


def same(a: Any, b: Any) -> bool:
    """Compare nested values exactly: types must match, floats bit for bit."""
    return codec.values_equal(a, b)


def at(base: datetime, **delta: float) -> datetime:
    return base + timedelta(**delta)


BASE_TIME = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=timezone.utc)
