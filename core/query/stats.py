"""Summary statistics across runs: count, mean, median, standard deviation and a
95% confidence interval of the mean."""

from __future__ import annotations

import math
import statistics
from array import array
from dataclasses import dataclass, field
from typing import Any

# Two-sided 95% critical values of Student's t distribution by degrees of
# freedom, from standard statistical tables (three decimals). Between listed
# values the next smaller listed df is used, which errs towards a wider interval.
_T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
    16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
    23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
    30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
_Z_975 = 1.960


def t_critical_95(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees_of_freedom}")
    if degrees_of_freedom in _T_975:
        return _T_975[degrees_of_freedom]
    if degrees_of_freedom > 120:
        return _Z_975
    return _T_975[max(df for df in _T_975 if df <= degrees_of_freedom)]


@dataclass
class GroupStats:
    """Statistics of one group; NaN values are counted apart and left out."""

    group: Any
    values: array = field(default_factory=lambda: array("d"), repr=False)
    nan_count: int = 0

    def add(self, value: float) -> None:
        if math.isnan(value):
            self.nan_count += 1
        else:
            self.values.append(value)

    def summary(self) -> dict[str, Any]:
        values = self.values
        count = len(values)
        result: dict[str, Any] = {
            "group": self.group,
            "count": count,
            "nan_count": self.nan_count,
            "mean": None, "median": None, "stddev": None, "min": None, "max": None,
            "ci95_low": None, "ci95_high": None,
        }
        if count == 0:
            return result
        finite = all(math.isfinite(v) for v in values)
        result["min"] = min(values)
        result["max"] = max(values)
        result["median"] = statistics.median(values)
        result["mean"] = statistics.fmean(values) if finite else _mean_with_inf(values)
        if count >= 2 and finite:
            stddev = statistics.stdev(values)
            half_width = t_critical_95(count - 1) * stddev / math.sqrt(count)
            result["stddev"] = stddev
            result["ci95_low"] = result["mean"] - half_width
            result["ci95_high"] = result["mean"] + half_width
        return result


def _mean_with_inf(values: array) -> float:
    has_pos = any(v == math.inf for v in values)
    has_neg = any(v == -math.inf for v in values)
    if has_pos and has_neg:
        return math.nan
    return math.inf if has_pos else -math.inf
