"""Write a store out as an MLflow file store that MLflow's own client opens.

Experiments (deleted ones into `.trash`), runs with params, tags, metrics,
status, times and dataset inputs, and registered models with their versions,
stages and aliases. Ids imported from MLflow are written back as they were;
other ids are kept when MLflow accepts them and replaced by a digest otherwise.

What MLflow cannot hold is left out and counted in the summary: keys with
characters MLflow rejects, model names with `/` or `:`, lineage edges, artifact
bytes (only their locations exist in a store) and sub-millisecond time digits.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from mltrail import codec
from mltrail.clock import to_micros
from mltrail.domain import Experiment, Model, Run
from mltrail.errors import InvalidInputError
from mltrail.importers import mlflow_layout as layout
from mltrail.importers.summary import ExportSummary, ProgressReporter
from mltrail.importers.values import (
    SOURCE_FORMAT_TAG,
    SOURCE_ID_TAG,
    digest,
)
from mltrail.store import Store

# Patterns of mlflow.utils.validation (MLflow 3.x): run and experiment ids, and
# the characters allowed in param, metric and tag keys on POSIX systems.
RUN_ID_RE = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")
EXPERIMENT_ID_RE = re.compile(r"^[a-zA-Z0-9][\w\-]{0,63}$")
KEY_RE = re.compile(r"^[/\w.\- :]*$")
ALIAS_RE = re.compile(r"^[\w\-]+$")
RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


class MlflowExporter:
    """Writes one store's contents under an empty folder in MLflow's file layout."""

    def __init__(
        self,
        store: Store,
        path: str | os.PathLike,
        progress: ProgressReporter,
        namespace: str | None,
    ) -> None:
        self.store = store
        self.root = Path(path).expanduser().absolute()
        self.progress = progress
        self.namespace = namespace
        self.summary = ExportSummary(format="mlflow", source=str(self.root))
        self.run_ids: dict[str, str] = {}
        self.names: set[str] = set()
        self.used_ids: set[str] = set()

    def run(self) -> ExportSummary:
        self._prepare_root()
        experiments = list(
            self.store.list_experiments(namespace=self.namespace, include_deleted=True)
        )
        self._assign_run_ids(experiments)
        self.progress.start("experiments", len(experiments))
        for experiment in experiments:
            self._write_experiment(experiment)
            self.progress.advance(experiment.name)

        models = list(
            self.store.list_models(namespace=self.namespace, include_deleted=True)
        )
        self.progress.start("registered models", len(models))
        for model in models:
            self._write_model(model)
            self.progress.advance(model.name)

        self._count_lineage()
        return self.summary

    def _prepare_root(self) -> None:
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise InvalidInputError(
                f"export path {str(self.root)!r} is not an empty folder; name a new or "
                "empty folder so no MLflow data is overwritten",
                str(self.root),
            )
        (self.root / layout.TRASH_FOLDER).mkdir(parents=True, exist_ok=True)

    def _count_lineage(self) -> None:
        edges = sum(1 for _ in self.store.backend.lineage.scan_edges())
        if edges:
            self.summary.skip(
                "lineage_edge", None, "MLflow has no lineage graph", edges
            )

    # ------------------------------------------------------------------
    # experiments and runs
    # ------------------------------------------------------------------

    def _write_experiment(self, experiment: Experiment) -> None:
        experiment_id = self._mlflow_id(experiment, EXPERIMENT_ID_RE)
        name = experiment.name
        if name in self.names:
            name = f"{name} ({experiment.namespace})"
            self.summary.note(
                "experiment",
                experiment.name,
                "name repeats across namespaces; the namespace was appended",
            )
        self.names.add(name)

        deleted = experiment.deleted_at is not None
        folder = (
            self.root / layout.TRASH_FOLDER if deleted else self.root
        ) / experiment_id
        folder.mkdir()
        _write_yaml(
            folder / layout.META_FILE,
            {
                "artifact_location": folder.as_uri(),
                "experiment_id": experiment_id,
                "name": name,
                "creation_time": _millis(experiment.created_at),
                "last_update_time": _millis(
                    experiment.deleted_at or experiment.updated_at
                ),
                "lifecycle_stage": "deleted" if deleted else "active",
            },
        )

        tags = dict(experiment.tags)
        if experiment.description:
            tags.setdefault(layout.NOTE_TAG, experiment.description)
        self._write_values(folder / "tags", tags, f"experiment {experiment.name}")
        self.summary.count("created", "experiment")

        for run in self._runs(experiment):
            self._write_run(run, folder, experiment_id)

    def _runs(self, experiment: Experiment) -> Iterator[Run]:
        return self.store.iter_runs(
            experiment_ids=[experiment.id], include_deleted=True
        )

    def _assign_run_ids(self, experiments: list[Experiment]) -> None:
        """Choose every run's MLflow id first, so parents in any experiment resolve."""
        for experiment in experiments:
            for run in self._runs(experiment):
                self.run_ids[run.id] = self._mlflow_id(run, RUN_ID_RE)

    def _mlflow_id(self, entity: Experiment | Run, pattern: re.Pattern) -> str:
        """Return the MLflow id: the imported one, else the mltrail id, else a hash."""
        candidates = []
        if entity.tags.get(SOURCE_FORMAT_TAG) == "mlflow":
            candidates.append(entity.tags.get(SOURCE_ID_TAG) or "")
        candidates += [entity.id, f"mltrail-{digest(entity.kind, entity.id)}"]
        for candidate in candidates:
            if (
                pattern.match(candidate)
                and candidate not in self.used_ids
                and candidate not in (layout.TRASH_FOLDER, layout.REGISTRY_FOLDER)
            ):
                self.used_ids.add(candidate)
                return candidate
        raise InvalidInputError(
            f"no MLflow id could be made for {entity.kind} {entity.id!r}", entity.id
        )

    def _write_run(self, run: Run, experiment_folder: Path, experiment_id: str) -> None:
        run_id = self.run_ids[run.id]
        folder = experiment_folder / run_id
        (folder / "artifacts").mkdir(parents=True)
        deleted = run.deleted_at is not None
        _write_yaml(
            folder / layout.META_FILE,
            {
                "artifact_uri": run.artifact_uris.get("artifacts")
                or (folder / "artifacts").as_uri(),
                "end_time": _millis(run.end_time),
                "entry_point_name": "",
                "experiment_id": experiment_id,
                "lifecycle_stage": "deleted" if deleted else "active",
                "run_id": run_id,
                "run_uuid": run_id,
                "run_name": run.name,
                "source_name": "",
                "source_type": 4,
                "source_version": "",
                # MLflow requires a start time; a run that never started gets its
                # creation time.
                "start_time": _millis(run.start_time or run.created_at),
                "status": layout.STATUS_TO_MLFLOW[run.status],
                "tags": [],
                "user_id": run.trainer or "unknown",
                "deleted_time": _millis(run.deleted_at) if deleted else None,
            },
        )
        reference = f"run {run.id}"
        self._write_values(folder / "params", _params(run.params), reference)
        self._write_values(folder / "tags", self._run_tags(run), reference)
        self._write_metrics(run, folder / "metrics", reference)
        self._write_inputs(run, experiment_folder, folder)
        self.summary.count("created", "run")

    def _run_tags(self, run: Run) -> dict[str, str]:
        tags = dict(run.tags)
        tags.setdefault(layout.RUN_NAME_TAG, run.name)
        if run.trainer:
            tags.setdefault(layout.USER_TAG, run.trainer)
        if run.parent_run_id in self.run_ids:
            tags[layout.PARENT_RUN_TAG] = self.run_ids[run.parent_run_id]
        for tag, field in layout.GIT_TAGS.items():
            value = run.code_version.get(field)
            if isinstance(value, str) and value:
                tags.setdefault(tag, value)
        return tags

    def _write_values(
        self, folder: Path, values: dict[str, Any], reference: str
    ) -> None:
        """Write key -> text files, keys with '/' as nested folders, as MLflow does."""
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in values.items():
            if not _valid_key(key):
                self.summary.skip(
                    "key",
                    f"{reference} {key}",
                    "key has characters or a form MLflow rejects",
                )
                continue
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value, encoding="utf-8", newline="")

    def _write_metrics(self, run: Run, folder: Path, reference: str) -> None:
        folder.mkdir()
        for key in self.store.metric_keys(run.id):
            if not _valid_key(key):
                self.summary.skip(
                    "metric",
                    f"{reference} {key}",
                    "key has characters or a form MLflow rejects",
                )
                continue
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            count = 0
            with open(path, "w", encoding="utf-8", newline="") as handle:
                for point in self.store.metric_history(run.id, key):
                    # repr() prints the shortest text that float() reads back to
                    # the same bits, and nan/inf as MLflow itself writes them.
                    handle.write(
                        f"{_millis(point.timestamp)} {point.value!r} {point.step}\n"
                    )
                    count += 1
            self.summary.count("created", "metric_point", count)

    def _write_inputs(self, run: Run, experiment_folder: Path, folder: Path) -> None:
        for dataset_id in run.dataset_ids:
            dataset = self.store.backend.datasets.get(dataset_id)
            dataset_digest = dataset.content_hash or dataset.version
            source_id = _md5(dataset.name, dataset_digest)
            dataset_folder = experiment_folder / "datasets" / source_id
            if not dataset_folder.exists():
                dataset_folder.mkdir(parents=True)
                _write_yaml(
                    dataset_folder / layout.META_FILE,
                    {
                        "name": dataset.name,
                        "digest": dataset_digest,
                        "source_type": "mltrail",
                        "source": json.dumps({"uri": dataset.source_uri or dataset.id}),
                        "schema": json.dumps(codec.encode_value(dataset.schema))
                        if dataset.schema
                        else None,
                        "profile": None,
                    },
                )
                self.summary.count("created", "dataset")
            input_folder = folder / "inputs" / _md5(source_id, self.run_ids[run.id])
            input_folder.mkdir(parents=True)
            _write_yaml(
                input_folder / layout.META_FILE,
                {
                    "source_type": "DATASET",
                    "source_id": source_id,
                    "destination_type": "RUN",
                    "destination_id": self.run_ids[run.id],
                    "tags": {},
                },
            )

    # ------------------------------------------------------------------
    # registered models
    # ------------------------------------------------------------------

    def _write_model(self, model: Model) -> None:
        if (
            "/" in model.name
            or ":" in model.name
            or posixpath.normpath(model.name) != model.name
            or model.deleted_at is not None
        ):
            reason = (
                "model is deleted; MLflow has no deleted models"
                if model.deleted_at is not None
                else "MLflow model names cannot hold / or :"
            )
            self.summary.skip("model", model.name, reason)
            return

        folder = self.root / layout.REGISTRY_FOLDER / model.name
        folder.mkdir(parents=True)
        _write_yaml(
            folder / layout.META_FILE,
            {
                "name": model.name,
                "description": model.description,
                "creation_timestamp": _millis(model.created_at),
                "last_updated_timestamp": _millis(model.updated_at),
            },
        )
        self._write_values(folder / "tags", dict(model.tags), f"model {model.name}")
        self.summary.count("created", "model")

        versions = self.store.list_model_versions(
            model.id, namespace=model.namespace, include_deleted=True
        )
        for version in versions:
            self._write_version(model, version, folder)
        self._write_aliases(
            model, {v.version for v in versions if v.deleted_at is None}, folder
        )

    def _write_aliases(self, model: Model, live: set[int], folder: Path) -> None:
        """Write aliases MLflow accepts that point at versions not deleted."""
        aliases = {}
        for alias, number in model.aliases.items():
            if (
                not ALIAS_RE.match(alias)
                or RESERVED_ALIAS_RE.match(alias)
                or number not in live
            ):
                self.summary.skip(
                    "alias",
                    f"{model.name} {alias}",
                    "alias name is invalid or reserved in MLflow, or "
                    "its version is deleted",
                )
                continue
            aliases[alias] = str(number)
            self.summary.count("created", "alias")
        self._write_values(folder / "aliases", aliases, f"model {model.name}")

    def _write_version(self, model: Model, version: Any, folder: Path) -> None:
        tags = dict(version.tags)
        stage = tags.get("mlflow.stage", "None")
        if stage not in layout.REGISTRY_STAGES:
            stage = "None"
        if version.deleted_at is not None:
            stage = layout.DELETED_VERSION_STAGE
        version_folder = folder / f"version-{version.version}"
        version_folder.mkdir()
        run_id = self.run_ids.get(version.run_id) if version.run_id else None
        source = version.artifact_uri or (f"runs:/{run_id}/model" if run_id else "")
        _write_yaml(
            version_folder / layout.META_FILE,
            {
                "name": model.name,
                "version": version.version,
                "creation_timestamp": _millis(version.created_at),
                "last_updated_timestamp": _millis(
                    version.deleted_at or version.updated_at
                ),
                "current_stage": stage,
                "description": version.description,
                "run_id": run_id,
                "run_link": None,
                "source": source,
                "storage_location": source,
                "status": "READY",
                "status_message": None,
                "user_id": None,
            },
        )
        self._write_values(version_folder / "tags", tags, f"model {model.name}")
        self.summary.count("created", "model_version")


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(
            data, handle, default_flow_style=False, allow_unicode=True, sort_keys=True
        )


def _millis(value: datetime | None) -> int | None:
    """Return whole milliseconds since the epoch, as MLflow stores times."""
    return None if value is None else to_micros(value) // 1000


def _valid_key(key: str) -> bool:
    normalised = posixpath.normpath(key)
    return (
        bool(key)
        and KEY_RE.match(key) is not None
        and normalised == key
        and normalised != "."
        and not normalised.startswith(("..", "/"))
    )


def _params(params: dict[str, Any]) -> dict[str, str]:
    """Flatten params to dotted keys and text values, as MLflow stores params."""
    flat = {}
    for path, value in codec.flatten(params):
        key = ".".join(path)
        if value is None:
            flat[key] = ""
        elif isinstance(value, str):
            flat[key] = value
        elif isinstance(value, float):
            flat[key] = repr(value)
        elif isinstance(value, (bool, int)):
            flat[key] = str(value)
        else:
            flat[key] = codec.dumps(value)
    return flat


def _md5(*parts: str) -> str:
    """Return the MD5 hex digest that names MLflow's dataset and input folders."""
    import hashlib

    md5 = hashlib.md5(usedforsecurity=False)
    for part in parts:
        md5.update(part.encode("utf-8"))
    return md5.hexdigest()
