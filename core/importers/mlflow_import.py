"""Import an MLflow file store (`mlruns/`): experiments, runs, metrics, datasets,
logged models and the model registry.

Ids: an experiment is found by name (MLflow ids repeat across stores: every
store has experiment "0"), a run by its global run UUID, a registered model by
name and a version by (name, number). Each mltrail entity keeps the MLflow id in
the `mltrail.source.id` tag.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrail.domain import EdgeType, MetricPoint, NodeKind
from mltrail.errors import InvalidInputError
from mltrail.importers import mlflow_layout as layout
from mltrail.importers.mlflow_registry import import_registry
from mltrail.importers.source import SourceTree
from mltrail.importers.values import (
    derive_id,
    from_millis,
    parse_float,
    parse_step,
)
from mltrail.importers.writer import ImportWriter

FORMAT = "mlflow"

# Metric lines in one block whose exact repeats are dropped. Repeats come from
# retried log calls and sit close together, and a bounded block keeps memory
# bounded however long the history is.
DEDUPLICATION_BLOCK = 10_000


@dataclass
class RunSource:
    """One run folder as read from disk, before anything is written."""

    folder: Path
    run_id: str
    meta: dict[str, Any]
    tags: dict[str, str]
    reference: str
    parent: str | None = None
    logged_models: list[dict[str, Any]] = field(default_factory=list)


class MlflowImporter:
    """Reads an `mlruns/` folder and hands its records to an ImportWriter."""

    def __init__(self, tree: SourceTree, writer: ImportWriter) -> None:
        self.tree = tree
        self.writer = writer
        self.summary = writer.summary
        # (child run id, parent run id) pairs across experiments, linked at the end.
        self.deferred_parents: list[tuple[str, str, str]] = []

    def run(self) -> None:
        experiments = self._experiment_folders()
        runs_total = sum(len(self._run_folders(folder)) for folder, _ in experiments)
        self.writer.progress.start("runs", runs_total)
        for folder, in_trash in experiments:
            with self.writer.guard("experiment", self.tree.relative(folder)):
                self._import_experiment(folder, in_trash)
        for child, parent, reference in self.deferred_parents:
            self.writer.edge(child, EdgeType.CHILD_OF, parent, reference)
        registry = self.tree.root / layout.REGISTRY_FOLDER
        if self.tree.is_dir(registry):
            import_registry(self.tree, self.writer, registry)

    # ------------------------------------------------------------------
    # discovery
    # ------------------------------------------------------------------

    def _experiment_folders(self) -> list[tuple[Path, bool]]:
        root = self.tree.root
        if self.tree.is_file(root / layout.META_FILE):
            return [(root, False)]  # the path names one experiment folder
        found = [
            (p, False)
            for p in self.tree.subdirectories(root)
            if p.name not in (layout.TRASH_FOLDER, layout.REGISTRY_FOLDER)
        ]
        trash = root / layout.TRASH_FOLDER
        if self.tree.is_dir(trash):
            found += [(p, True) for p in self.tree.subdirectories(trash)]
        return [(p, t) for p, t in found if self._has_meta(p, "experiment")]

    def _has_meta(self, folder: Path, kind: str) -> bool:
        if self.tree.is_file(folder / layout.META_FILE):
            return True
        self.summary.skip(kind, self.tree.relative(folder), "folder has no meta.yaml")
        return False

    def _run_folders(self, experiment: Path) -> list[Path]:
        return [
            p
            for p in self.tree.subdirectories(experiment)
            if p.name not in layout.EXPERIMENT_RESERVED
            and self.tree.is_file(p / layout.META_FILE)
        ]

    # ------------------------------------------------------------------
    # experiments
    # ------------------------------------------------------------------

    def _import_experiment(self, folder: Path, in_trash: bool) -> None:
        reference = self.tree.relative(folder)
        meta = layout.read_meta(self.tree, folder)
        source_id = layout.text_id(meta.get("experiment_id"))
        name = meta.get("name")
        if source_id is None or not isinstance(name, str):
            raise InvalidInputError("meta.yaml lacks experiment_id or name", reference)
        if folder != self.tree.root and folder.name != source_id:
            # MLflow itself ignores an experiment whose folder and id disagree.
            raise InvalidInputError(
                f"folder name differs from experiment_id {source_id!r}", reference
            )

        deleted = in_trash or meta.get("lifecycle_stage") == layout.DELETED_STAGE
        tags = layout.read_values(self.tree, folder / "tags")
        description = tags.pop(layout.NOTE_TAG, None)
        created_at = self._millis_or_mtime(meta.get("creation_time"), folder)
        deleted_at = (
            self._millis_or_mtime(meta.get("last_update_time"), folder)
            if deleted
            else None
        )
        artifact_location = meta.get("artifact_location")
        if isinstance(artifact_location, str):
            tags["mltrail.source.artifact_location"] = artifact_location

        experiment_id = self.writer.experiment(
            id=derive_id("mlflow-exp", name),
            name=name,
            reference=reference,
            description=description,
            tags={**tags, **self.writer.source_tags(source_id)},
            created_at=created_at,
            deleted_at=deleted_at,
        )
        if experiment_id is None:
            return

        datasets = self._import_datasets(folder)
        logged_models = self._read_logged_models(folder)
        self._logged_model_nodes(logged_models, folder)
        runs = self._read_runs(folder, source_id)
        for model in logged_models:
            owner = runs.get(model.get("source_run_id") or "")
            if owner is not None:
                owner.logged_models.append(model)

        for run in _parents_first(runs, self.summary):
            with self.writer.guard("run", run.reference):
                self._import_run(run, experiment_id, deleted_at, datasets, runs)
            self.writer.progress.advance(run.reference)
        self._link_logged_models(logged_models, folder)

    def _millis_or_mtime(self, value: Any, folder: Path) -> datetime:
        if value is not None:
            return from_millis(value, "timestamp")
        return self.tree.modified_at(folder / layout.META_FILE)

    # ------------------------------------------------------------------
    # datasets (MLflow 2) and logged models (MLflow 3)
    # ------------------------------------------------------------------

    def _import_datasets(self, experiment: Path) -> dict[str, str]:
        """Register the experiment's datasets; return MLflow id -> mltrail id."""
        mapping: dict[str, str] = {}
        folder = experiment / "datasets"
        if not self.tree.is_dir(folder):
            return mapping
        for dataset_folder in self.tree.subdirectories(folder):
            reference = self.tree.relative(dataset_folder)
            with self.writer.guard("dataset", reference):
                meta = layout.read_meta(self.tree, dataset_folder)
                stored = self._register_dataset(dataset_folder.name, meta, reference)
                if stored is not None:
                    mapping[dataset_folder.name] = stored
        return mapping

    def _register_dataset(
        self, source_id: str, meta: dict[str, Any], reference: str
    ) -> str | None:
        name, digest_text = meta.get("name"), meta.get("digest")
        if not isinstance(name, str) or not name or digest_text is None:
            raise InvalidInputError("dataset meta.yaml lacks name or digest", reference)
        source = _json_or_text(meta.get("source"))
        schema = _json_or_text(meta.get("schema"))
        provenance = {
            "source_type": meta.get("source_type"),
            "source": source,
            "profile": _json_or_text(meta.get("profile")),
        }
        return self.writer.dataset(
            id=derive_id("mlflow-dataset", source_id),
            name=name,
            version=str(digest_text),
            reference=reference,
            source_uri=_source_uri(source),
            content_hash=f"mlflow-digest:{digest_text}",
            schema=schema
            if isinstance(schema, dict)
            else ({"text": schema} if schema else {}),
            provenance=provenance,
            tags=self.writer.source_tags(source_id),
        )

    def _read_logged_models(self, experiment: Path) -> list[dict[str, Any]]:
        folder = experiment / "models"
        models = []
        if not self.tree.is_dir(folder):
            return models
        for model_folder in self.tree.subdirectories(folder):
            reference = self.tree.relative(model_folder)
            with self.writer.guard("logged_model", reference):
                meta = layout.read_meta(self.tree, model_folder)
                model_id = layout.text_id(meta.get("model_id")) or model_folder.name
                status = meta.get("status")
                models.append(
                    {
                        "model_id": model_id,
                        "name": meta.get("name"),
                        "source_run_id": layout.text_id(meta.get("source_run_id")),
                        "status": layout.LOGGED_MODEL_STATUS_CODES.get(status, status),
                        "artifact_location": meta.get("artifact_location"),
                        "creation_timestamp": meta.get("creation_timestamp"),
                        "lifecycle_stage": meta.get("lifecycle_stage"),
                        "model_type": meta.get("model_type"),
                        "params": layout.read_values(
                            self.tree, model_folder / "params"
                        ),
                        "tags": layout.read_values(self.tree, model_folder / "tags"),
                    }
                )
        return models

    def _logged_model_nodes(
        self, models: list[dict[str, Any]], experiment: Path
    ) -> None:
        """Add a lineage node per logged model, before runs link to them."""
        for model in models:
            reference = f"{self.tree.relative(experiment)}/models/{model['model_id']}"
            with self.writer.guard("logged_model", reference):
                label = f"{model.get('name') or 'model'} ({model['model_id']})"
                self.writer.node(
                    derive_id("mlflow-logged-model", model["model_id"]),
                    NodeKind.MODEL_VERSION,
                    label,
                    reference,
                )

    def _link_logged_models(
        self, models: list[dict[str, Any]], experiment: Path
    ) -> None:
        """Link each logged model to the run that produced it."""
        for model in models:
            reference = f"{self.tree.relative(experiment)}/models/{model['model_id']}"
            if model["source_run_id"]:
                with self.writer.guard("lineage_edge", reference):
                    self.writer.edge(
                        layout.run_id_for(model["source_run_id"]),
                        EdgeType.PRODUCED,
                        derive_id("mlflow-logged-model", model["model_id"]),
                        reference,
                    )

    # ------------------------------------------------------------------
    # runs
    # ------------------------------------------------------------------

    def _read_runs(
        self, experiment: Path, experiment_source_id: str
    ) -> dict[str, RunSource]:
        runs: dict[str, RunSource] = {}
        for folder in self._run_folders(experiment):
            reference = self.tree.relative(folder)
            with self.writer.guard("run", reference):
                meta = layout.read_meta(self.tree, folder)
                owner = layout.text_id(meta.get("experiment_id"))
                if owner != experiment_source_id:
                    # MLflow ignores such a run too; its meta names another experiment.
                    raise InvalidInputError(
                        f"meta.yaml names experiment {owner!r}, not "
                        f"{experiment_source_id!r}",
                        reference,
                    )
                run_id = (
                    layout.text_id(meta.get("run_id"))
                    or layout.text_id(meta.get("run_uuid"))
                    or folder.name
                )
                if run_id != folder.name:
                    self.summary.note(
                        "run",
                        reference,
                        "meta.yaml run_id differs from the "
                        "folder name; the folder name is used, as MLflow does",
                    )
                    run_id = folder.name
                tags = layout.read_values(self.tree, folder / "tags")
                runs[run_id] = RunSource(
                    folder,
                    run_id,
                    meta,
                    tags,
                    reference,
                    parent=tags.get(layout.PARENT_RUN_TAG),
                )
            if not any(r.folder == folder for r in runs.values()):
                self.writer.progress.advance(reference)  # skipped, but counted as done
        return runs

    def _import_run(
        self,
        run: RunSource,
        experiment_id: str,
        experiment_deleted_at: datetime | None,
        datasets: dict[str, str],
        siblings: dict[str, RunSource],
    ) -> None:
        meta, tags = run.meta, dict(run.tags)
        status = layout.STATUS_FROM_MLFLOW[layout.run_status_name(meta.get("status"))]
        start = _optional_millis(meta.get("start_time"), "start_time")
        end = _optional_millis(meta.get("end_time"), "end_time")
        created = start or self.tree.modified_at(run.folder / layout.META_FILE)
        deleted_at = _deleted_at(meta, experiment_deleted_at, end or created)

        _add_legacy_tags(meta, tags)
        inputs = self._read_inputs(run, datasets, tags)
        for model in run.logged_models:
            carried = {
                k: v for k, v in model.items() if k not in ("model_id", "source_run_id")
            }
            tags[f"mlflow.logged_model.{model['model_id']}"] = json.dumps(
                carried, sort_keys=True, default=str
            )

        result = self.writer.run(
            id=layout.run_id_for(run.run_id),
            experiment_id=experiment_id,
            name=_run_name(meta, tags, run.run_id),
            status=status,
            reference=run.reference,
            created_at=created,
            start_time=start,
            end_time=end,
            deleted_at=deleted_at,
            params=layout.read_values(self.tree, run.folder / "params"),
            tags={**tags, **self.writer.source_tags(run.run_id)},
            parent_run_id=self._parent_of(run, siblings),
            trainer=(meta.get("user_id") or tags.get(layout.USER_TAG) or None),
            code_version=_code_version(meta, tags),
            dataset_ids=inputs["datasets"],
            artifact_uris=_artifact_uris(meta, tags),
        )
        if result is None:
            return

        mltrail_id, created_now = result
        self._import_metrics(run, mltrail_id, created_now)
        self._link_models(run, mltrail_id, inputs["models"])

    def _parent_of(self, run: RunSource, siblings: dict[str, RunSource]) -> str | None:
        """Return the parent's mltrail id if it is in the same experiment.

        A parent elsewhere is linked after all experiments are imported.
        """
        if not run.parent:
            return None
        if run.parent in siblings:
            return layout.run_id_for(run.parent)
        self.deferred_parents.append(
            (
                layout.run_id_for(run.run_id),
                layout.run_id_for(run.parent),
                run.reference,
            )
        )
        return None

    def _read_inputs(
        self, run: RunSource, datasets: dict[str, str], tags: dict[str, str]
    ) -> dict[str, list[str]]:
        """Read the run's inputs: mltrail dataset ids, and logged model ids (3.x)."""
        found: dict[str, list[str]] = {"datasets": [], "models": []}
        folder = run.folder / "inputs"
        if not self.tree.is_dir(folder):
            return found
        for input_folder in self.tree.subdirectories(folder):
            reference = self.tree.relative(input_folder)
            with self.writer.guard("run_input", reference):
                meta = layout.read_meta(self.tree, input_folder)
                kind = str(meta.get("source_type", "")).upper()
                source_id = layout.text_id(meta.get("source_id"))
                # The writer of 2.x and 3.x stores the source id as destination_id
                # too, so only the folder shows which run an input belongs to.
                if kind in ("DATASET", "2") and source_id in datasets:
                    found["datasets"].append(datasets[source_id])
                    for key, value in (meta.get("tags") or {}).items():
                        tags[f"mlflow.input.{source_id}.{key}"] = str(value)
                elif kind in ("MODEL", "3") and source_id:
                    found["models"].append(source_id)
                else:
                    self.summary.skip(
                        "run_input",
                        reference,
                        "input names a dataset or kind that is not in the experiment",
                    )
        return found

    def _link_models(
        self, run: RunSource, mltrail_id: str, consumed: list[str]
    ) -> None:
        """Record logged models the run read (inputs) and wrote (outputs)."""
        for model_id in consumed:
            node_id = derive_id("mlflow-logged-model", model_id)
            self.writer.node(node_id, NodeKind.MODEL_VERSION, model_id, run.reference)
            self.writer.edge(mltrail_id, EdgeType.CONSUMED, node_id, run.reference)
        folder = run.folder / "outputs"
        if not self.tree.is_dir(folder):
            return
        for output_folder in self.tree.subdirectories(folder):
            node_id = derive_id("mlflow-logged-model", output_folder.name)
            self.writer.node(
                node_id, NodeKind.MODEL_VERSION, output_folder.name, run.reference
            )
            self.writer.edge(mltrail_id, EdgeType.PRODUCED, node_id, run.reference)

    # ------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------

    def _import_metrics(
        self, run: RunSource, mltrail_id: str, run_created: bool
    ) -> None:
        folder = run.folder / "metrics"
        if not self.tree.is_dir(folder):
            return
        for key, path in self.tree.files(folder):
            reference = f"{run.reference}/metrics/{key}"
            reader = MetricFileReader(self.tree, path, mltrail_id, key)
            with self.writer.guard("metric", reference):
                self.writer.metric_points(
                    mltrail_id, f"metrics/{key}", reader, run_created=run_created
                )
            reader.report(self.summary, reference)


class MetricFileReader:
    """Reads one MLflow metric file into points; callable again for a fresh pass.

    A line contains `<ms> <value>`, then optionally `<step>`, and MLflow 3 may
    append a run or model id (4 fields) or a dataset name and digest (5 or 6
    fields). Values are read with float(), so `nan`, `inf` and every digit
    survive. Exact repeats of a line within a block are dropped.
    """

    def __init__(self, tree: SourceTree, path: Path, run_id: str, key: str) -> None:
        self.tree, self.path, self.run_id, self.key = tree, path, run_id, key
        self.problems: list[tuple[str, str]] = []
        self.duplicates = 0
        self.extra_fields = 0

    def __call__(self) -> Iterator[MetricPoint]:
        self.problems, self.duplicates, self.extra_fields = [], 0, 0
        return self._points()

    def _points(self) -> Iterator[MetricPoint]:
        seen: set[tuple[int, bytes, int]] = set()
        with self.tree.open_text(self.path) as handle:
            for number, line in enumerate(handle, 1):
                if number % DEDUPLICATION_BLOCK == 0:
                    seen.clear()
                if not line.strip():
                    continue
                try:
                    point, identity = self._parse(line)
                except InvalidInputError as problem:
                    self.problems.append(
                        (f"line {number}", " ".join(str(problem).split()))
                    )
                    continue
                if identity in seen:
                    self.duplicates += 1
                    continue
                seen.add(identity)
                yield point

    def _parse(self, line: str) -> tuple[MetricPoint, tuple[int, bytes, int]]:
        fields = line.split()
        if len(fields) not in (2, 3, 4, 5, 6):
            raise InvalidInputError(
                f"line has {len(fields)} fields; expected 2 to 6", line
            )
        millis = parse_step(fields[0], "timestamp")
        value = parse_float(fields[1], "value")
        step = parse_step(fields[2], "step") if len(fields) >= 3 else 0
        if len(fields) > 3:
            self.extra_fields += 1
        point = MetricPoint(
            run_id=self.run_id,
            key=self.key,
            value=value,
            step=step,
            timestamp=from_millis(millis, "timestamp"),
        ).validate()
        return point, (millis, struct.pack(">d", value), step)

    def report(self, summary: Any, reference: str) -> None:
        for where, problem in self.problems:
            summary.skip("metric_point", f"{reference} {where}", problem)
        if self.duplicates:
            summary.skip(
                "metric_point",
                reference,
                "exact repeat of an earlier line",
                self.duplicates,
            )
        if self.extra_fields:
            summary.note(
                "metric_point",
                reference,
                "run, model or dataset fields after the step are not carried",
            )


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------


def _parents_first(runs: dict[str, RunSource], summary: Any) -> list[RunSource]:
    """Order runs so each parent in the same experiment comes before its children."""
    ordered: list[RunSource] = []
    done: set[str] = set()

    def visit(run_id: str, chain: tuple[str, ...]) -> None:
        if run_id in done:
            return
        run = runs[run_id]
        if run.parent in runs and run.parent not in done:
            if run.parent in chain or run.parent == run_id:
                summary.note(
                    "run",
                    run.reference,
                    "parent runs form a loop; the link that closes it is left out",
                )
                run.parent = None
            else:
                visit(run.parent, chain + (run_id,))
        done.add(run_id)
        ordered.append(run)

    for run_id in sorted(runs, key=lambda r: (runs[r].meta.get("start_time") or 0, r)):
        visit(run_id, ())
    return ordered


def _deleted_at(
    meta: dict[str, Any], experiment_deleted_at: datetime | None, fallback: datetime
) -> datetime | None:
    """Return when a run was deleted: its own deletion time, else its experiment's."""
    if meta.get("lifecycle_stage") == layout.DELETED_STAGE:
        return (
            _optional_millis(meta.get("deleted_time"), "deleted_time")
            or experiment_deleted_at
            or fallback
        )
    return experiment_deleted_at


def _optional_millis(value: Any, what: str) -> datetime | None:
    return None if value is None or value == "" else from_millis(value, what)


def _run_name(meta: dict[str, Any], tags: dict[str, str], run_id: str) -> str:
    for candidate in (
        meta.get("run_name"),
        tags.get(layout.RUN_NAME_TAG),
        meta.get("name"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return run_id


def _add_legacy_tags(meta: dict[str, Any], tags: dict[str, str]) -> None:
    """Keep meta.yaml fields of MLflow before 1.0 as the tags that replaced them."""
    legacy = {
        "mlflow.source.name": meta.get("source_name"),
        "mlflow.project.entryPoint": meta.get("entry_point_name"),
        "mlflow.source.type": layout.SOURCE_TYPE_CODES.get(meta.get("source_type"))
        if meta.get("source_name")
        else None,
    }
    for key, value in legacy.items():
        if isinstance(value, str) and value and key not in tags:
            tags[key] = value


def _code_version(meta: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    code = {field: tags[tag] for tag, field in layout.GIT_TAGS.items() if tags.get(tag)}
    legacy_commit = meta.get("source_version")
    if "git_commit" not in code and isinstance(legacy_commit, str) and legacy_commit:
        code["git_commit"] = legacy_commit
    return code


def _artifact_uris(meta: dict[str, Any], tags: dict[str, str]) -> dict[str, str]:
    uris: dict[str, str] = {}
    root = meta.get("artifact_uri")
    if isinstance(root, str) and root:
        uris["artifacts"] = root
    try:
        history = json.loads(tags.get(layout.LOGGED_MODELS_TAG) or "[]")
    except ValueError:
        history = []
    for entry in history if isinstance(history, list) else []:
        path = entry.get("artifact_path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path and isinstance(root, str):
            uris[f"model:{path}"] = f"{root.rstrip('/')}/{path}"
    return uris


def _json_or_text(value: Any) -> Any:
    """Parse a JSON document stored as text in a meta file; keep other text as is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _source_uri(source: Any) -> str | None:
    if isinstance(source, dict):
        for key in ("uri", "url", "path", "table_name", "source"):
            if isinstance(source.get(key), str):
                return source[key]
    return source if isinstance(source, str) else None


def import_mlflow(tree: SourceTree, writer: ImportWriter) -> None:
    MlflowImporter(tree, writer).run()
