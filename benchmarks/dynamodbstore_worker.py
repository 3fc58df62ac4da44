"""Log points through MLflow's `mlflow-dynamodbstore` plugin; print one JSON line.

Run by `benchmarks.run` with the interpreter given as --dynamodbstore-python,
because the plugin needs the full `mlflow` distribution, whose pinned
mlflow-skinny may differ from the one beside mltrail. This file imports nothing
from mltrail or the benchmarks package, so it runs in any environment that has
the plugin: `python dynamodbstore_worker.py HOST:PORT POINTS`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid

LOG_BATCH_MAX = 1_000
BASE_MILLIS = 1_733_011_200_000


def main() -> None:
    endpoint, points = sys.argv[1], int(sys.argv[2])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.disable(logging.WARNING)
    from mlflow import __version__ as mlflow_version
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"dynamodb://{endpoint}/mlflow-bench")
    experiment = client.create_experiment(f"bench-{uuid.uuid4().hex}")
    # The plugin (0.1.0) writes the run name into an index key, and DynamoDB
    # rejects an empty one, so the run needs a name.
    run_id = client.create_run(experiment, run_name="bench").info.run_id
    metrics = [
        Metric(f"metric_{index % 10}", 0.5 + index, BASE_MILLIS + index, index // 10)
        for index in range(points)
    ]
    started = time.perf_counter()
    for start in range(0, points, LOG_BATCH_MAX):
        client.log_batch(run_id, metrics=metrics[start : start + LOG_BATCH_MAX])
    seconds = time.perf_counter() - started
    result = {
        "points": points,
        "seconds": seconds,
        "per_second": points / seconds,
        "mlflow": mlflow_version,
    }
    try:
        client.get_metric_history(run_id, "metric_0")
        result["history_read"] = "works"
    except Exception as error:  # noqa: BLE001 - reported, not raised
        result["history_read"] = f"fails: {type(error).__name__}: {error}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
