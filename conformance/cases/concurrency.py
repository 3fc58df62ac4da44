"""Several processes writing to one store at once."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from mltrail.conformance.cases import workers

WORKERS = 4


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))


class ConcurrencyCases:
    area = "concurrency"

    @pytest.mark.mltrail_requires("multi_process")
    def test_concurrent_metric_appends(self, store, mltrail_harness):
        experiment = store.create_experiment("busy")
        run = store.create_run(experiment.id)
        url = mltrail_harness.store_url(store.backend)
        with _pool() as pool:
            futures = [pool.submit(workers.append_metrics, url, run.id, w, 5, 200)
                       for w in range(WORKERS)]
            written = sum(f.result(timeout=300) for f in futures)
        points = list(store.metric_history(run.id, "shared"))
        assert written == WORKERS * 5 * 200
        assert len(points) == written
        assert len({p.seq for p in points}) == written
        assert store.latest_metrics(run.id)["shared"].step == 5 * 200 - 1

    @pytest.mark.mltrail_requires("multi_process")
    def test_concurrent_version_numbers(self, store, mltrail_harness):
        store.create_model("contended")
        url = mltrail_harness.store_url(store.backend)
        with _pool() as pool:
            futures = [pool.submit(workers.register_versions, url, "contended", w, 5)
                       for w in range(WORKERS)]
            numbers = [n for f in futures for n in f.result(timeout=300)]
        assert sorted(numbers) == list(range(1, WORKERS * 5 + 1))
        stored = [v.version for v in store.list_model_versions("contended")]
        assert stored == list(range(1, WORKERS * 5 + 1))
        assert store.verify_audit().ok

    @pytest.mark.mltrail_requires("multi_process")
    def test_concurrent_param_merges(self, store, mltrail_harness):
        experiment = store.create_experiment("params")
        run = store.create_run(experiment.id, params={"base": 0})
        url = mltrail_harness.store_url(store.backend)
        with _pool() as pool:
            futures = [pool.submit(workers.log_distinct_params, url, run.id, w)
                       for w in range(WORKERS)]
            for future in futures:
                future.result(timeout=300)
        params = store.get_run(run.id).params
        assert params == {"base": 0, **{f"worker_{w}": w for w in range(WORKERS)}}
        assert store.verify_audit().ok
