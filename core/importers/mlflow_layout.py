"""Facts about MLflow's file store layout, shared by the importer and the exporter.

The layout is the one `mlflow.store.tracking.file_store.FileStore` and
`mlflow.store.model_registry.file_store.FileStore` write (checked against 3.18):

    mlruns/<experiment id>/meta.yaml                  experiment
    mlruns/<experiment id>/tags/<key>                 experiment tag (key may hold /)
    mlruns/<experiment id>/<run id>/meta.yaml         run
    mlruns/<experiment id>/<run id>/params|tags/<key> value as the whole file
    mlruns/<experiment id>/<run id>/metrics/<key>     "<ms> <value> [<step> ...]" lines
    mlruns/<experiment id>/<run id>/inputs/<id>/meta.yaml   dataset or model input
    mlruns/<experiment id>/<run id>/outputs/<id>/meta.yaml  logged model output (3.x)
    mlruns/<experiment id>/datasets/<id>/meta.yaml    dataset (2.x)
    mlruns/<experiment id>/models/<model id>/...      logged model (3.x)
    mlruns/.trash/<experiment id>/...                 deleted experiment
    mlruns/models/<name>/meta.yaml                    registered model
    mlruns/models/<name>/aliases/<alias>              version number as text
    mlruns/models/<name>/version-<n>/meta.yaml        model version
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mltrail.domain import RunStatus
from mltrail.errors import InvalidInputError
from mltrail.importers.source import SourceTree
from mltrail.importers.values import derive_id
from mltrail.importers.yamlsafe import load_yaml

META_FILE = "meta.yaml"
TRASH_FOLDER = ".trash"
REGISTRY_FOLDER = "models"
# Folders inside an experiment folder that are not runs.
EXPERIMENT_RESERVED = frozenset({"tags", "datasets", "traces", "models"})

DELETED_STAGE = "deleted"
DELETED_VERSION_STAGE = "Deleted_Internal"
REGISTRY_STAGES = ("None", "Staging", "Production", "Archived")

# mlflow.entities.RunStatus: the integer codes meta.yaml stores and their names.
RUN_STATUS_CODES = {
    1: "RUNNING",
    2: "SCHEDULED",
    3: "FINISHED",
    4: "FAILED",
    5: "KILLED",
}
STATUS_FROM_MLFLOW = {
    "RUNNING": RunStatus.RUNNING,
    "SCHEDULED": RunStatus.PENDING,
    "FINISHED": RunStatus.COMPLETED,
    "FAILED": RunStatus.FAILED,
    "KILLED": RunStatus.KILLED,
}
STATUS_TO_MLFLOW = {
    RunStatus.PENDING: 2,
    RunStatus.RUNNING: 1,
    RunStatus.COMPLETED: 3,
    RunStatus.FAILED: 4,
    RunStatus.KILLED: 5,
}
# mlflow.entities.SourceType codes found in legacy run meta files.
SOURCE_TYPE_CODES = {1: "NOTEBOOK", 2: "JOB", 3: "PROJECT", 4: "LOCAL", 1000: "UNKNOWN"}
# mlflow.protos LoggedModelStatus codes of logged model meta files (3.x).
LOGGED_MODEL_STATUS_CODES = {0: "UNSPECIFIED", 1: "PENDING", 2: "READY", 3: "FAILED"}

# System tags with a field of their own in mltrail.
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
NOTE_TAG = "mlflow.note.content"
LOGGED_MODELS_TAG = "mlflow.log-model.history"
GIT_TAGS = {
    "mlflow.source.git.commit": "git_commit",
    "mlflow.source.git.branch": "branch",
    "mlflow.source.git.repoURL": "repository",
}


def read_meta(tree: SourceTree, folder: Path) -> dict[str, Any]:
    """Return the mapping in `folder/meta.yaml`; raise InvalidInputError if none."""
    meta = load_yaml(tree.read_text(folder / META_FILE))
    if not isinstance(meta, dict):
        raise InvalidInputError(
            f"{tree.relative(folder / META_FILE)!r} contains "
            f"{type(meta).__name__}, not a mapping",
            str(folder),
        )
    return meta


def read_values(tree: SourceTree, folder: Path) -> dict[str, str]:
    """Return key -> file text for a params or tags folder; keys may contain '/'."""
    return {key: tree.read_text(path) for key, path in tree.files(folder)}


def run_status_name(value: Any) -> str:
    """Return the MLflow status name of a meta.yaml `status`, stored as int or text."""
    if value is None:
        return "RUNNING"  # MLflow reads a missing status as RUNNING
    if isinstance(value, int) and not isinstance(value, bool):
        if value in RUN_STATUS_CODES:
            return RUN_STATUS_CODES[value]
    elif isinstance(value, str) and value.strip().upper() in STATUS_FROM_MLFLOW:
        return value.strip().upper()
    raise InvalidInputError(
        f"run status {value!r} is not an MLflow status; expected "
        "1-5 or RUNNING, SCHEDULED, FINISHED, FAILED, KILLED",
        value,
    )


def text_id(value: Any) -> str | None:
    """Return an id stored as int (legacy) or text, as text; None when absent."""
    if value is None or value == "":
        return None
    return str(value)


def run_id_for(mlflow_run_id: str) -> str:
    """Return the mltrail id of the run imported from an MLflow run id."""
    return derive_id("mlflow-run", mlflow_run_id)
