"""The data every case writes and reads, generated the same way for each contender.

Values come from seeded generators, so every store receives bit-identical
points, and the search data set has params, tags and one metric chosen so that
a filter selects a known fraction of the runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

# Timestamps of generated points, in microseconds since the Unix epoch
# (2024-12-01T00:00:00Z), one millisecond apart per step.
BASE_MICROS = 1_733_011_200_000_000
STEP_MICROS = 1_000

LEARNING_RATES = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
TEAMS = ("vision", "nlp", "speech", "tabular", "rl")
# The search: learning rate below 0.001 (2 of 8 values) and team vision (1 of 5),
# ordered by the latest val_acc. It matches 1/20 of the runs.
SEARCH_LR_BELOW = 0.001
# The same selection in MLflow's filter syntax, which compares params as strings
# and has neither `<` nor `IN` nor `OR` for them: among LEARNING_RATES exactly
# the values below SEARCH_LR_BELOW are written as '0.000...'.
MLFLOW_LR_PATTERN = "0.000%"
SEARCH_TEAM = "vision"
SEARCH_METRIC = "val_acc"


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark mode."""

    name: str
    runs: int
    metrics: int
    steps: int
    long_history: int
    search_runs: int
    repeat: int
    search_page: int = 100

    @property
    def many_points(self) -> int:
        return self.runs * self.metrics * self.steps

    def reduced(self, divisor: int) -> Scale:
        """Return this scale with `divisor` times fewer runs and long-history points."""
        return replace(
            self,
            runs=max(1, self.runs // divisor),
            long_history=max(1, self.long_history // divisor),
            search_runs=max(40, self.search_runs // divisor),
        )


FULL = Scale(
    "full",
    runs=1_000,
    metrics=10,
    steps=100,
    long_history=1_000_000,
    search_runs=25_000,
    repeat=2,
)
QUICK = Scale(
    "quick",
    runs=100,
    metrics=10,
    steps=100,
    long_history=100_000,
    search_runs=2_500,
    repeat=3,
)


def metric_keys(scale: Scale) -> list[str]:
    return [f"metric_{index}" for index in range(scale.metrics)]


def run_values(run_index: int, scale: Scale) -> list[list[float]]:
    """Return values[metric][step] of one run of the many-runs workload."""
    rng = random.Random(run_index)
    return [[rng.random() for _ in range(scale.steps)] for _ in range(scale.metrics)]


def long_values(count: int) -> list[float]:
    """Return the values of the long history: a noisy decreasing loss."""
    rng = random.Random(-1)
    return [1.0 / (1.0 + step * 1e-4) + rng.random() * 1e-3 for step in range(count)]


@dataclass(frozen=True)
class SearchRun:
    """One run of the search data set."""

    index: int
    lr: float
    batch_size: int
    optimizer: str
    team: str
    val_acc: float

    @property
    def name(self) -> str:
        return f"search-{self.index:06d}"

    @property
    def params(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "layers": 2 + self.index % 6,
            "dropout": 0.1 * (self.index % 5),
        }

    @property
    def tags(self) -> dict[str, str]:
        return {"team": self.team, "purpose": "benchmark"}

    def selected(self) -> bool:
        return self.lr < SEARCH_LR_BELOW and self.team == SEARCH_TEAM


def search_runs(count: int) -> list[SearchRun]:
    """Return the search data set. Every val_acc differs, so the order is total."""
    rng = random.Random(7)
    accuracies = rng.sample(range(count * 10), count)
    return [
        SearchRun(
            index=index,
            lr=LEARNING_RATES[index % len(LEARNING_RATES)],
            batch_size=(32, 64, 128, 256)[index // 8 % 4],
            optimizer=OPTIMIZERS[index // 3 % len(OPTIMIZERS)],
            team=TEAMS[index // 7 % len(TEAMS)],
            val_acc=accuracies[index] / (count * 10),
        )
        for index in range(count)
    ]


def expected_selection(runs: list[SearchRun], page: int) -> list[str]:
    """Return the names of the first `page` selected runs by val_acc, best first."""
    chosen = sorted((r for r in runs if r.selected()), key=lambda r: -r.val_acc)
    return [r.name for r in chosen[:page]]
