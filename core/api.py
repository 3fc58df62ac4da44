"""The Python API for training code: connect, start a run, log, register.

    store = mltrail.connect()                     # $MLTRAIL_STORE or the local default
    with mltrail.start_run(store, "digits", params={"lr": 0.1}) as run:
        for epoch in range(10):
            run.log_metric("val_acc", accuracy, step=epoch)
        run.register_model("digits-sgd", script_path=__file__)

The run is marked running on entry, completed on a normal exit, failed with
the exception recorded when the block raises, and killed on KeyboardInterrupt.
Metric points are buffered and written in batches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import traceback
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mltrail import codec
from mltrail.clock import new_id, utcnow
from mltrail.access import AccessPolicy
from mltrail.config import Config, load_config
from mltrail.domain import (
    DEFAULT_NAMESPACE, Dataset, MetricPoint, ModelVersion, Run, RunStatus,
)
from mltrail.errors import InvalidInputError
from mltrail.pseudonym import Pseudonymizer
from mltrail.registry import open_backend
from mltrail.store import Store

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SIZE = 1_000


def connect(url: str | None = None, *, actor: str | None = None,
            config: Config | None = None) -> Store:
    """Open the store at `url`, else $MLTRAIL_STORE, else the local default store.

    The principal, access roles and pseudonymised fields come from `config`, by
    default the configuration file (see `mltrail.config`); `actor` overrides
    the principal.
    """
    config = config or load_config()
    return Store(
        open_backend(url), actor=actor or config.principal,
        policy=AccessPolicy.from_config(config.access),
        pseudonymizer=Pseudonymizer.from_config(config.pseudonymisation),
    )


# ----------------------------------------------------------------------
# capture of environment, code and data
# ----------------------------------------------------------------------


def capture_environment(include_packages: bool = True) -> dict[str, Any]:
    """Describe the interpreter, installed packages and hardware of this process.

    The package list is read once per process, since reading the metadata of
    every installed distribution takes a noticeable fraction of a second.
    """
    environment: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
        },
    }
    if include_packages:
        environment["packages"] = dict(_installed_packages())
    return environment


@functools.lru_cache(maxsize=1)
def _installed_packages() -> tuple[tuple[str, str], ...]:
    packages = {}
    for distribution in metadata.distributions():
        name = distribution.metadata.get("Name")
        if name:
            packages[name.lower()] = distribution.version
    return tuple(sorted(packages.items()))


def capture_git(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return the commit and dirty flag of the git work tree at `path`, or {}."""
    cwd = Path(path or os.getcwd())
    if cwd.is_file():
        cwd = cwd.parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=cwd, capture_output=True,
                                    text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return {"git_commit": commit, "dirty": bool(status), "branch": branch}


def hash_file(path: str | os.PathLike) -> str:
    """Return the SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def hash_data(data: Any) -> str:
    """Return a SHA-256 content hash of in-memory data.

    Arrays with a `tobytes` method (numpy) hash their dtype, shape and bytes;
    bytes hash as they are; anything else hashes as canonical JSON.
    """
    digest = hashlib.sha256()
    if hasattr(data, "tobytes") and hasattr(data, "dtype"):
        digest.update(f"{data.dtype.str}:{tuple(data.shape)}:".encode())
        digest.update(memoryview(data.tobytes()))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        digest.update(bytes(data))
    elif isinstance(data, (tuple, list)) and data and all(
            hasattr(part, "tobytes") for part in data):
        for part in data:
            digest.update(hash_data(part).encode())
    else:
        digest.update(codec.dumps(data).encode("utf-8"))
    return "sha256:" + digest.hexdigest()


def reproducibility_hash(*, dataset_hashes: Iterable[str], git_commit: str | None,
                         script_hash: str | None, environment: Mapping[str, Any],
                         params: Mapping[str, Any] | None = None) -> str:
    """Derive one hash from data, code, configuration and environment.

    Two models with the same hash were trained from the same data, code,
    params, Python version and package versions.
    """
    material = {
        "data": sorted(dataset_hashes),
        "git_commit": git_commit,
        "script": script_hash,
        "params": codec.encode_value(dict(params or {})),
        "python": environment.get("python"),
        "packages": environment.get("packages", {}),
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------


class ActiveRun:
    """A run being recorded; use it as a context manager (see the module docstring)."""

    def __init__(self, store: Store, run: Run, *, flush_size: int = DEFAULT_FLUSH_SIZE,
                 manage_status: bool = True) -> None:
        self.store = store
        self.run = run
        self.flush_size = flush_size
        self.manage_status = manage_status
        self._buffer: list[MetricPoint] = []
        self._batch_id = new_id()

    @property
    def id(self) -> str:
        return self.run.id

    def __enter__(self) -> ActiveRun:
        if self.manage_status and self.run.status == RunStatus.PENDING:
            self.run = self.store.set_run_status(self.run.id, RunStatus.RUNNING)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.flush()
        finally:
            if self.manage_status:
                self._finish(exc_type, exc, tb)

    def _finish(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.run = self.store.set_run_status(self.run.id, RunStatus.COMPLETED)
            return
        status = RunStatus.KILLED if issubclass(exc_type, KeyboardInterrupt) \
            else RunStatus.FAILED
        error = {
            "type": exc_type.__name__,
            "message": str(exc)[:2000],
            "traceback": "".join(traceback.format_exception(exc_type, exc, tb))[-6000:],
        }
        self.run = self.store.set_run_status(self.run.id, status, error=error)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run = self.store.log_params(self.run.id, params)

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run = self.store.set_tags("run", self.run.id, tags)

    def log_metric(self, key: str, value: float, step: int = 0,
                   timestamp: datetime | None = None, **extra: Any) -> None:
        """Validate and buffer one metric point; it is written at the next flush."""
        buffer = self._buffer
        point = MetricPoint(run_id=self.run.id, key=key, value=value, step=step,
                            timestamp=timestamp or utcnow(),
                            seq=f"{self._batch_id}:{len(buffer):06d}", **extra)
        buffer.append(point.validate())
        if len(buffer) >= self.flush_size:
            self.flush()

    def log_metrics(self, values: Mapping[str, float], step: int = 0,
                    timestamp: datetime | None = None, **extra: Any) -> None:
        for key, value in values.items():
            self.log_metric(key, value, step, timestamp, **extra)

    def flush(self) -> None:
        """Write buffered metric points as one batch."""
        if not self._buffer:
            return
        batch = self._buffer
        # The batch keeps its id until it is written, so a flush retried after a
        # failure overwrites whatever part of it reached the store.
        self.store.append_prepared_points(self.run.id, batch)
        self._buffer = []
        self._batch_id = new_id()

    def log_artifact(self, name: str, uri: str) -> None:
        self.run = self.store.log_artifact(self.run.id, name, uri)

    def use_dataset(self, dataset: Dataset | str) -> None:
        """Record that this run consumed a dataset."""
        dataset_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self.run = self.store.link_dataset(self.run.id, dataset_id)

    def child(self, name: str | None = None, **options: Any) -> ActiveRun:
        """Start a child run in the same experiment."""
        return start_run(self.store, self.run.experiment_id, name=name,
                         parent=self.run.id, **options)

    def register_model(
        self,
        model_name: str,
        *,
        script_path: str | os.PathLike | None = None,
        artifact_uri: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        id: str | None = None,
    ) -> ModelVersion:
        """Register this run's model as the next version of `model_name`.

        The version records the run's git commit, the training script's hash and
        location, and a reproducibility hash over the consumed datasets' content
        hashes, the code, the params and the environment.
        """
        self.flush()
        run = self.store.get_run(self.run.id)
        script_hash = script_uri = None
        if script_path is not None:
            path = Path(script_path).resolve()
            script_hash = hash_file(path)
            script_uri = path.as_uri()
        datasets = self.store.backend.datasets.get_many(run.dataset_ids)
        repro = reproducibility_hash(
            dataset_hashes=[d.content_hash or d.id for d in datasets.values()],
            git_commit=run.code_version.get("git_commit"), script_hash=script_hash,
            environment=run.environment, params=run.params,
        )
        self.store.get_or_create_model(model_name, namespace=run.namespace)
        return self.store.register_model_version(
            model_name, run_id=run.id, git_commit=run.code_version.get("git_commit"),
            script_hash=script_hash, script_uri=script_uri, reproducibility_hash=repro,
            artifact_uri=artifact_uri, description=description, tags=tags,
            namespace=run.namespace, id=id,
        )


def start_run(
    store: Store,
    experiment: str,
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent: str | ActiveRun | None = None,
    datasets: Sequence[Dataset | str] = (),
    seeds: Mapping[str, Any] | None = None,
    trainer: str | None = None,
    resources: Mapping[str, Any] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    capture_env: bool = True,
    capture_code: bool = True,
    flush_size: int = DEFAULT_FLUSH_SIZE,
    id: str | None = None,
) -> ActiveRun:
    """Create a run in `experiment` (an id or name, created when missing).

    The environment and the git commit of the working directory are captured
    unless turned off; `trainer` defaults to the current user.
    """
    if isinstance(parent, ActiveRun):
        parent = parent.id
    try:
        target = store.get_experiment(experiment, namespace=namespace)
    except LookupError:
        target = store.get_or_create_experiment(experiment, namespace=namespace)
    dataset_ids = [d.id if isinstance(d, Dataset) else d for d in datasets]
    if flush_size < 1:
        raise InvalidInputError(f"flush_size must be >= 1, got {flush_size!r}", flush_size)
    run = store.create_run(
        target.id, name=name, params=params, tags=tags, parent_run_id=parent,
        trainer=trainer or store.actor, resources=resources,
        environment=capture_environment() if capture_env else {},
        seeds=seeds, code_version=capture_git(_script_dir()) if capture_code else {},
        dataset_ids=dataset_ids, id=id,
    )
    return ActiveRun(store, run, flush_size=flush_size)


def _script_dir() -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve().parent) if path else os.getcwd()


def register_dataset(
    store: Store,
    name: str,
    version: str = "1",
    *,
    data: Any = None,
    path: str | os.PathLike | None = None,
    source_uri: str | None = None,
    preprocessing: Sequence[Any] = (),
    pipeline: str | None = None,
    schema: Mapping[str, Any] | None = None,
    derived_from: Sequence[Dataset | str] = (),
    namespace: str = DEFAULT_NAMESPACE,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    ingested_at: datetime | str | None = None,
) -> Dataset:
    """Register a dataset with the content hash of its actual data and its provenance.

    Pass the data itself (`data`, hashed in memory) or a file (`path`, hashed
    from disk). The source, the preprocessing steps and the producing pipeline
    are kept as provenance; `ingested_at` defaults to now.
    """
    if (data is None) == (path is None):
        raise InvalidInputError("pass exactly one of data= or path= to hash the content",
                                name)
    content_hash = hash_data(data) if data is not None else hash_file(path)
    if source_uri is None and path is not None:
        source_uri = Path(path).resolve().as_uri()
    provenance = {"source": source_uri, "preprocessing": list(preprocessing),
                  "pipeline": pipeline}
    return store.register_dataset(
        name, version, namespace=namespace, source_uri=source_uri,
        content_hash=content_hash, schema=schema, provenance=provenance,
        description=description, tags=tags, ingested_at=ingested_at,
        derived_from=[d.id if isinstance(d, Dataset) else d for d in derived_from],
    )
