"""Timing, memory sampling and the helper process that measures a read in isolation."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPOSITORY = Path(__file__).resolve().parent.parent


def rss_kib() -> int:
    """Return this process's resident set size in KiB, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS is missing from /proc/self/status")


class Stopwatch:
    """Sums the time spent inside `with stopwatch:` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.perf_counter() - self._started


@dataclass
class Series:
    """Repeated measurements of one contender: seconds per repetition."""

    label: str
    work: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Work units per second at the median time."""
        return self.work / self.median if self.median > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "work": self.work,
            "seconds": self.seconds,
            "median_seconds": self.median,
            "per_second": self.rate,
        }


def paired_ratio(numerator: Series, denominator: Series) -> float:
    """Return the median over repetitions of numerator rate / denominator rate.

    Both lists were measured in alternation, so each pair shares the machine's
    load at that moment; the median of the pairs resists a noisy neighbour.
    """
    ratios = [
        (numerator.work / a) / (denominator.work / b)
        for a, b in zip(numerator.seconds, denominator.seconds)
        if a > 0 and b > 0
    ]
    return statistics.median(ratios) if ratios else float("nan")


def interleave(
    repeat: int, contenders: list[tuple[Series, Callable[[], float]]]
) -> None:
    """Run each contender once per repetition, in turn, recording its seconds."""
    for _ in range(repeat):
        for series, measure in contenders:
            series.seconds.append(measure())


def run_worker(task: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    """Run one task of `benchmarks.worker` in a fresh interpreter and return its result.

    A fresh process measures memory without what earlier cases left allocated.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(task)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark worker failed on {task['kind']!r}: "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])
