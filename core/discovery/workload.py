"""A small, fixed workload that exercises every query template, for `mltrail stats`.

It records one experiment in its own namespace with a parent run and child
runs, params, tags, metrics, status changes and artifacts, then runs each read
template and the discovery functions once or more, and purges the experiment.
The audit events it appended stay, because the audit trail is append-only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mltrail.clock import new_id
from mltrail.errors import InvalidInputError, PermissionDeniedError
from mltrail.store import Store

logger = logging.getLogger(__name__)

WORKLOAD_NAMESPACE = "mltrail-stats"
METRICS = ("loss", "val_acc")


@dataclass
class WorkloadResult:
    """The experiment, runs and points a workload wrote, and whether it was purged."""

    experiment_id: str
    runs: int
    points: int
    purged: bool


def run_workload(store: Store, *, runs: int = 5, points: int = 50,
                 keep: bool = False) -> WorkloadResult:
    """Write and read a small experiment; purge it unless `keep`.

    Purging needs the admin role; without it the experiment is left in
    namespace `mltrail-stats` and `purged` is False.
    """
    for name, value in (("runs", runs), ("points", points)):
        valid = isinstance(value, int) and not isinstance(value, bool)
        if not valid or not 1 <= value <= 10_000:
            raise InvalidInputError(f"workload {name} {value!r} is invalid; expected 1 "
                                    "to 10000", value)
    experiment = store.create_experiment(f"stats-{new_id().lower()}",
                                         namespace=WORKLOAD_NAMESPACE,
                                         description="mltrail stats workload")
    run_ids = _write(store, experiment.id, runs, points)
    _read(store, experiment.id, run_ids)
    purged = False
    if not keep:
        try:
            store.purge_experiment(experiment.id)
            purged = True
        except PermissionDeniedError:
            logger.info("stats workload experiment %s kept: purging needs the admin "
                        "role", experiment.id)
    return WorkloadResult(experiment.id, runs, runs * points * len(METRICS), purged)


def _write(store: Store, experiment_id: str, runs: int, points: int) -> list[str]:
    parent = store.create_run(experiment_id, name="sweep", status="running")
    run_ids = [parent.id]
    for index in range(runs):
        run = store.create_run(experiment_id, name=f"trial-{index}",
                               parent_run_id=parent.id,
                               params={"optimizer": ("adam", "sgd")[index % 2],
                                       "lr": 10.0 ** -(1 + index % 3)},
                               tags={"team": ("vision", "nlp")[index % 2]})
        store.set_run_status(run.id, "running")
        store.log_params(run.id, {"batch_size": 32 * (1 + index % 2)})
        batch = [{"key": key, "value": 1.0 / (step + 1) if key == "loss"
                  else step / points, "step": step}
                 for step in range(points) for key in METRICS]
        store.log_metrics(run.id, batch)
        store.log_artifact(run.id, "model", f"file:///tmp/mltrail-stats/{run.id}")
        store.set_run_status(run.id, "completed")
        run_ids.append(run.id)
    store.set_run_status(parent.id, "completed")
    return run_ids


def _read(store: Store, experiment_id: str, run_ids: list[str]) -> None:
    # Imported here because the discovery package imports this module.
    from mltrail.discovery import catalog, facets, timeline

    scope = [experiment_id]
    store.search_runs("tags.team = 'vision'", experiment_ids=scope)
    list(store.iter_runs("params.lr < 0.05", experiment_ids=scope))
    store.best_runs("val_acc", 3, experiment_ids=scope)
    store.aggregate("val_acc", group_by="params.optimizer", experiment_ids=scope)
    store.compare_runs(run_ids[1:3] if len(run_ids) > 2 else run_ids)
    for run_id in run_ids[1:]:
        list(store.metric_history(run_id, "loss"))
        list(store.metric_history(run_id, "loss", max_points=10))
        store.latest_metrics(run_id)
        store.get_run(run_id)
        list(store.audit_log(run_id))
    store.upstream(run_ids[-1], depth=2)
    store.downstream(run_ids[0], depth=2)
    list(store.list_experiments(namespace=WORKLOAD_NAMESPACE))
    catalog(store, kinds=["experiment"], namespace=WORKLOAD_NAMESPACE)
    facets(store, experiment_ids=scope)
    timeline(store, run_ids[-1])
