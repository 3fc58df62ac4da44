"""Consistency checks of a store: orphaned references, dangling lineage, broken audit.

`fsck` reads every entity, lineage node and edge once or twice and reports
each problem it finds. With `repair=True` it fixes what is safe to fix
without guessing:

- a missing lineage node of an existing run, dataset or model version is
  created, and a missing edge that the entities imply (a run's parent and
  consumed datasets, a version's producing run) is added;
- a lineage node whose entity is gone is removed with its edges, and so is
  every edge whose end node is missing;
- metric points and store archives of runs that no longer exist are removed,
  and so are archive records that no committed generation references (left
  by an interrupted archiving pass).

Some problems cannot be fixed without inventing data, so they are reported
and stay: a missing experiment, parent run, dataset, model or run behind a
reference, an alias naming a missing version, and a broken audit chain.
Memory grows with the number of ids in the store, not with their records.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from mltrail.access import Role
from mltrail.audit import verify_chain
from mltrail.backend import ScanRequest
from mltrail.domain import (
    SCHEMA_VERSION, EdgeType, Entity, LineageEdge, LineageNode, NodeKind,
)
from mltrail.errors import MltrailError, UnsupportedCapabilityError
from mltrail.ops.cold import (
    ARCHIVE_TAG, BlobSegmentStore, open_location, read_head, run_of_key,
)
from mltrail.ops.records import Progress, no_progress

logger = logging.getLogger(__name__)

ENTITY_NODE_KINDS = {
    NodeKind.RUN: "run", NodeKind.DATASET: "dataset",
    NodeKind.MODEL_VERSION: "model_version",
}


@dataclass
class Problem:
    """One inconsistency; `check` names its kind, such as `run.missing_experiment`."""

    check: str
    entity_type: str
    entity_id: str
    message: str
    repairable: bool = False
    repaired: bool = False


@dataclass
class FsckReport:
    """Problems found, what was repaired, and how many records each check read."""

    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        """True when no problem remains (all were absent or repaired)."""
        return not self.remaining

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [asdict(p) for p in self.problems],
                "checked": dict(self.checked), "warnings": list(self.warnings)}


class _Check:
    """State shared by the checks of one fsck call."""

    def __init__(self, store: Any, repair: bool, progress: Progress) -> None:
        self.store = store
        self.backend = store.backend
        self.repair = repair
        self.progress = progress
        self.report = FsckReport()
        self.ids: dict[str, set[str]] = {}
        self.nodes: dict[str, NodeKind] = {}
        self.outdated = 0

    def problem(self, check: str, entity_type: str, entity_id: str, message: str,
                fix: Callable[[], None] | None = None) -> None:
        """Record a problem and, when repairing and `fix` is given, apply the fix."""
        found = Problem(check, entity_type, entity_id, message,
                        repairable=fix is not None)
        self.report.problems.append(found)
        if fix is None or not self.repair:
            return
        try:
            fix()
        except MltrailError as error:
            found.message += f"; repair failed: {error}"
            logger.warning("fsck could not repair %s %s: %s", check, entity_id, error)
            return
        found.repaired = True

    def scan(self, kind: str) -> Iterator[Entity]:
        count = 0
        for entity in self.backend.entity_repository(kind).scan(ScanRequest()):
            count += 1
            if count % 1_000 == 0:
                self.progress(f"fsck {kind}", count, None)
            yield entity
        self.report.checked[kind] = count


def fsck(store: Any, repair: bool = False, *,
         progress: Progress | None = None) -> FsckReport:
    """Check the store's consistency and, with `repair`, fix what is safe.

    Reading needs the reader role in every namespace; repairing needs admin.
    See the module docstring for what is checked and repaired.
    """
    store._authorize(Role.ADMIN if repair else Role.READER, "fsck", "*")
    check = _Check(store, repair, progress or no_progress)
    _collect_ids(check)
    _check_runs(check)
    _check_versions(check)
    _check_models(check)
    _check_datasets(check)
    _check_nodes(check)
    _check_edges(check)
    _check_metrics(check)
    _check_archives(check)
    _check_audit(check)
    if check.outdated:
        check.report.warnings.append(
            f"{check.outdated} records use a schema older than version "
            f"{SCHEMA_VERSION}; reads upgrade them, and `mltrail upgrade` rewrites "
            "them")
    repaired = [p for p in check.report.problems if p.repaired]
    if repaired:
        fixed = [{"check": p.check, "entity_id": p.entity_id} for p in repaired]
        store._audit("repair", "store", "-", {"repaired": fixed})
    return check.report


def _collect_ids(check: _Check) -> None:
    for kind in ("experiment", "run", "dataset", "model", "model_version"):
        ids = set()
        for entity in check.scan(kind):
            ids.add(entity.id)
            if entity.schema_version < SCHEMA_VERSION:
                check.outdated += 1
        check.ids[kind] = ids
    check.nodes = {node.id: node.kind for node in check.backend.lineage.scan_nodes()}


# ----------------------------------------------------------------------
# entities
# ----------------------------------------------------------------------


def _check_runs(check: _Check) -> None:
    ids = check.ids
    for run in check.scan("run"):
        if run.experiment_id not in ids["experiment"]:
            check.problem("run.missing_experiment", "run", run.id,
                          f"run {run.id!r} belongs to experiment "
                          f"{run.experiment_id!r}, which does not exist")
        if run.parent_run_id is not None and run.parent_run_id not in ids["run"]:
            check.problem("run.missing_parent", "run", run.id,
                          f"run {run.id!r} has parent run {run.parent_run_id!r}, which "
                          "does not exist")
        for dataset_id in run.dataset_ids:
            if dataset_id not in ids["dataset"]:
                check.problem("run.missing_dataset", "run", run.id,
                              f"run {run.id!r} consumed dataset {dataset_id!r}, which "
                              "does not exist")
        _ensure_node(check, run.id, NodeKind.RUN, run.name)
        if run.parent_run_id in ids["run"]:
            _ensure_edge(check, run.id, EdgeType.CHILD_OF, run.parent_run_id)
        for dataset_id in run.dataset_ids:
            if dataset_id in ids["dataset"]:
                _ensure_edge(check, run.id, EdgeType.CONSUMED, dataset_id)
        _check_run_archive(check, run)


def _check_run_archive(check: _Check, run: Any) -> None:
    location = run.tags.get(ARCHIVE_TAG)
    if location is None:
        return
    try:
        head = read_head(open_location(check.backend, location), run.id)
    except MltrailError as error:
        head, reason = None, str(error)
    else:
        reason = f"has no archive head at {location!r}"
    if head is None or not head["generations"]:
        check.problem("run.missing_archive", "run", run.id,
                      f"run {run.id!r} is tagged {ARCHIVE_TAG}={location!r} but "
                      f"{reason}; its archived metric points cannot be read")


def _check_versions(check: _Check) -> None:
    ids = check.ids
    for version in check.scan("model_version"):
        if version.model_id not in ids["model"]:
            check.problem("model_version.missing_model", "model_version", version.id,
                          f"model version {version.id!r} belongs to model "
                          f"{version.model_id!r}, which does not exist")
        if version.run_id is not None and version.run_id not in ids["run"]:
            check.problem("model_version.missing_run", "model_version", version.id,
                          f"model version {version.id!r} was produced by run "
                          f"{version.run_id!r}, which does not exist")
        _ensure_node(check, version.id, NodeKind.MODEL_VERSION,
                     f"version {version.version}")
        if version.run_id in ids["run"]:
            _ensure_edge(check, version.run_id, EdgeType.PRODUCED, version.id)


def _check_models(check: _Check) -> None:
    numbers: dict[str, set[int]] = {}
    for version in check.backend.model_versions.scan(ScanRequest()):
        if version.deleted_at is None:
            numbers.setdefault(version.model_id, set()).add(version.version)
    for model in check.scan("model"):
        for alias, number in sorted(model.aliases.items()):
            if number not in numbers.get(model.id, set()):
                check.problem("model.dangling_alias", "model", model.id,
                              f"alias {alias!r} of model {model.name!r} points at "
                              f"version {number}, which does not exist or is deleted")


def _check_datasets(check: _Check) -> None:
    for dataset in check.scan("dataset"):
        _ensure_node(check, dataset.id, NodeKind.DATASET,
                     f"{dataset.name}@{dataset.version}")


# ----------------------------------------------------------------------
# lineage
# ----------------------------------------------------------------------


def _ensure_node(check: _Check, node_id: str, kind: NodeKind, label: str) -> None:
    if node_id in check.nodes:
        return

    def fix() -> None:
        check.backend.lineage.put_node(LineageNode(id=node_id, kind=kind, label=label))
        check.nodes[node_id] = kind

    check.problem("lineage.missing_node", kind.value, node_id,
                  f"{kind.value} {node_id!r} has no lineage node", fix)


def _ensure_edge(check: _Check, source: str, edge_type: EdgeType, target: str) -> None:
    edge = LineageEdge(source=source, target=target, type=edge_type)
    if source not in check.nodes or target not in check.nodes:
        return
    stored = {e.key for e in check.backend.lineage.edges(edge.downstream, "upstream")}
    if edge.key in stored:
        return
    check.problem("lineage.missing_edge", "lineage", source,
                  f"lineage edge {edge.key!r} is implied by the entities but missing",
                  lambda: check.store.add_lineage_edge(source, edge_type, target))


def _check_nodes(check: _Check) -> None:
    for node_id, kind in sorted(check.nodes.items()):
        entity_kind = ENTITY_NODE_KINDS.get(kind)
        if entity_kind is None or node_id in check.ids[entity_kind]:
            continue

        def fix(node_id: str = node_id) -> None:
            check.backend.lineage.delete_node(node_id)
            check.nodes.pop(node_id, None)

        check.problem("lineage.orphan_node", "lineage", node_id,
                      f"lineage node {node_id!r} names a {entity_kind} that does not "
                      "exist", fix)
    check.report.checked["lineage_node"] = len(check.nodes)


def _check_edges(check: _Check) -> None:
    count = 0
    dangling = []
    for edge in check.backend.lineage.scan_edges():
        count += 1
        missing = [end for end in (edge.source, edge.target) if end not in check.nodes]
        if missing:
            dangling.append((edge, missing))
    check.report.checked["lineage_edge"] = count
    for edge, missing in dangling:
        check.problem("lineage.dangling_edge", "lineage", edge.source,
                      f"lineage edge {edge.key!r} points at missing node(s) {missing}",
                      partial(_drop_edge, check, edge, missing))


def _drop_edge(check: _Check, edge: LineageEdge, missing: list[str]) -> None:
    # The contract has no edge delete. Deleting the absent end node removes the
    # edges that touch it on the built-in backends, and the lookup below checks that.
    for node_id in missing:
        check.backend.lineage.delete_node(node_id)
    if any(e.key == edge.key for e in check.backend.lineage.edges(edge.downstream,
                                                                  "upstream")):
        raise UnsupportedCapabilityError(
            f"backend {check.backend.capabilities.name!r} kept edge {edge.key!r} after "
            "deleting its missing end node", "delete_edge")


# ----------------------------------------------------------------------
# metrics, archives, audit
# ----------------------------------------------------------------------


def _check_metrics(check: _Check) -> None:
    try:
        listed = list(check.backend.metrics.runs_with_metrics())
    except UnsupportedCapabilityError:
        check.report.warnings.append(
            f"backend {check.backend.capabilities.name!r} cannot list runs with "
            "metrics, so metric points of deleted runs were not checked")
        return
    check.report.checked["runs_with_metrics"] = len(listed)
    for run_id in listed:
        if run_id in check.ids["run"]:
            continue
        check.problem("metrics.orphan", "run", run_id,
                      f"metric points are stored for run {run_id!r}, which does not "
                      "exist", partial(check.backend.metrics.delete_run, run_id))


def _check_archives(check: _Check) -> None:
    """Check the archive records kept in the store (directories are not scanned)."""
    archive = BlobSegmentStore(check.backend.blobs)
    count = 0
    keys = (key for key, _ in archive.scan())
    for run_id, group in itertools.groupby(keys, key=run_of_key):
        run_keys = list(group)
        count += len(run_keys)
        if run_id not in check.ids["run"]:
            check.problem("archive.orphan", "run", run_id,
                          f"{len(run_keys)} archive records are stored for run "
                          f"{run_id!r}, which does not exist",
                          lambda keys=run_keys: _delete_keys(archive, keys))
            continue
        _check_uncommitted(check, archive, run_id, run_keys)
    check.report.checked["archive_record"] = count


def _check_uncommitted(check: _Check, archive: BlobSegmentStore, run_id: str,
                       run_keys: list[str]) -> None:
    head = read_head(archive, run_id)
    committed = {f"g{g['generation']:04d}" for g in head["generations"]}
    stray = [key for key in run_keys
             if not key.endswith("|head") and key.split("|")[1] not in committed]
    if stray:
        check.problem("archive.uncommitted", "run", run_id,
                      f"{len(stray)} archive records of run {run_id!r} belong to no "
                      "committed generation (an interrupted archiving pass)",
                      lambda: _delete_keys(archive, stray))


def _delete_keys(archive: BlobSegmentStore, keys: list[str]) -> None:
    for key in keys:
        archive.delete(key)


def _check_audit(check: _Check) -> None:
    result = verify_chain(check.backend.audit.scan())
    check.report.checked["audit_event"] = result.checked
    if not result.ok:
        check.problem("audit.broken_chain", "audit", str(result.broken_at),
                      f"audit chain broken at seq {result.broken_at}: {result.reason}")
