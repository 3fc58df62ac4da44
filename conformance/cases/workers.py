"""Functions run in child processes by the concurrency cases (spawned, so importable)."""

from __future__ import annotations


def append_metrics(url: str, run_id: str, worker: int, batches: int, size: int) -> int:
    from mltrail.api import connect

    store = connect(url, actor=f"worker-{worker}")
    written = 0
    for batch in range(batches):
        points = [{"key": "shared", "value": float(worker * 1_000_000 + batch * size + i),
                   "step": batch * size + i} for i in range(size)]
        written += store.log_metrics(run_id, points)
    store.close()
    return written


def register_versions(url: str, model: str, worker: int, count: int) -> list[int]:
    from mltrail.api import connect

    store = connect(url, actor=f"worker-{worker}")
    numbers = [store.register_model_version(model).version for _ in range(count)]
    store.close()
    return numbers


def log_distinct_params(url: str, run_id: str, worker: int) -> None:
    from mltrail.api import connect

    store = connect(url, actor=f"worker-{worker}")
    store.log_params(run_id, {f"worker_{worker}": worker})
    store.close()
