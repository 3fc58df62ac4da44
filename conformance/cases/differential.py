"""Differential mode: one generated workload on the backend and on the memory reference.

The workload uses fixed ids and a seeded generator, so both stores receive the
same operations; after each step the answers of both must be identical.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from mltrail.clock import isoformat
from mltrail.errors import MltrailError
from mltrail.registry import open_backend
from mltrail.store import Store

STEPS = 120


def _normalise(value: Any) -> Any:
    """Reduce an answer to plain comparable data (entities to records)."""
    if hasattr(value, "to_record"):
        record = value.to_record()
        for key in ("created_at", "updated_at", "start_time", "end_time", "deleted_at",
                    "ingested_at"):
            record.pop(key, None)
        return record
    if hasattr(value, "items") and hasattr(value, "next_page_token"):
        return [_normalise(item) for item in value.items]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if hasattr(value, "isoformat"):
        return isoformat(value)
    if hasattr(value, "value") and hasattr(value, "step") and hasattr(value, "seq"):
        return (value.key, value.step, repr(value.value), value.seq)
    return value


class _Workload:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.runs: list[str] = []
        self.counter = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter:06d}"

    def operation(self):
        """Return (name, function of a Store) for the next step."""
        r = self.random
        choices = ["run", "params", "metrics", "status", "tags", "search", "latest",
                   "history", "aggregate", "version"]
        kind = r.choice(choices if self.runs else ["run"])
        if kind == "run":
            run_id = self.next_id("RUN")
            self.runs.append(run_id)
            params = {"lr": r.choice([0.1, 0.01, 0.001, math.nan]),
                      "depth": r.randint(1, 4), "opt": r.choice(["adam", "sgd"])}
            tags = {"team": r.choice(["a", "b", "c"])}
            return kind, lambda s: s.create_run("EXP1", name=run_id, params=params,
                                                tags=tags, id=run_id)
        run_id = r.choice(self.runs)
        if kind == "params":
            key = r.choice(["lr", "batch", "seed", "extra.nested"])
            value = r.choice([0.1, 32, -0.0, "x", math.inf])
            return kind, lambda s: s.log_params(run_id, {key: value})
        if kind == "metrics":
            batch = self.next_id("BATCH")
            points = [{"key": r.choice(["acc", "loss"]), "value": r.random(),
                       "step": r.randint(0, 20),
                       "timestamp": f"2024-01-01T00:00:{r.randint(0, 59):02d}Z"}
                      for _ in range(r.randint(1, 8))]
            return kind, lambda s: s.log_metrics(run_id, points, batch_id=batch)
        if kind == "status":
            status = r.choice(["running", "completed", "failed", "killed"])
            return kind, lambda s: s.set_run_status(run_id, status)
        if kind == "tags":
            tags = {"team": r.choice(["a", "b", "c", "d"])}
            return kind, lambda s: s.set_tags("run", run_id, tags)
        if kind == "search":
            text = r.choice([
                "params.lr < 0.05", "tags.team in ('a', 'b')", "metrics.acc > 0.5",
                "params.depth >= 2 and not tags.team = 'c'", "status = 'running'",
                "params.opt like 'ad%' or metrics.loss < 0.3", "params.batch exists",
            ])
            order = r.choice([None, ["params.lr desc"], ["metrics.acc"], ["name"]])
            size = r.randint(1, 6)
            return kind, lambda s: s.search_runs(text, order_by=order, page_size=size)
        if kind == "latest":
            return kind, lambda s: s.latest_metrics(run_id)
        if kind == "history":
            key = r.choice(["acc", "loss"])
            return kind, lambda s: list(s.metric_history(run_id, key))
        if kind == "aggregate":
            group = r.choice([None, "params.opt", "tags.team"])
            return kind, lambda s: s.aggregate("acc", group_by=group)
        version_id = self.next_id("VER")
        return kind, lambda s: s.register_model_version("model", run_id=run_id,
                                                        id=version_id).version


def _apply(store: Store, action):
    try:
        return ("ok", _normalise(action(store)))
    except MltrailError as error:
        return ("error", type(error).__name__)


class DifferentialCases:
    area = "differential"

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_matches_reference(self, store, seed):
        # The reference is opened by URL, as a user would, so the suite never
        # imports a backend module.
        reference = Store(open_backend("memory://"), actor="conformance")
        for target in (store, reference):
            target.create_experiment("differential", id="EXP1")
            target.create_model("model", id="MODEL1")
        workload = _Workload(seed)
        for step in range(STEPS):
            name, action = workload.operation()
            expected = _apply(reference, action)
            actual = _apply(store, action)
            assert actual == expected, f"step {step} ({name}) differs from the reference"
        assert store.verify_audit().ok
