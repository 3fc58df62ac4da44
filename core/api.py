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
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mltrail import codec
from mltrail.clock import new_id, to_micros, to_utc, utcnow
from mltrail.access import AccessPolicy
from mltrail.config import Config, load_config
from mltrail.domain import (
    DEFAULT_NAMESPACE, Dataset, MetricPoint, MetricSeries, ModelVersion, Run, RunStatus,
    check_float, check_key, check_step,
)
from mltrail.errors import InvalidInputError
from mltrail.limits import MAX_METRIC_BATCH, MAX_STEP
from mltrail.pseudonym import Pseudonymizer
from mltrail.registry import open_backend
from mltrail.store import Store

logger = logging.getLogger(__name__)

# A buffered run writes its points when this many are buffered, or at the first
# point logged after the oldest buffered one is DEFAULT_FLUSH_SECONDS old, so big
# batches do not delay what readers see by more than that.
DEFAULT_FLUSH_SIZE = 10_000
DEFAULT_FLUSH_SECONDS = 5.0
# Bound on the per-run cache of metric keys that passed validation.
MAX_CHECKED_KEYS = 10_000
# The index part of a point's seq for the first MAX_METRIC_BATCH positions of
# a batch, zero-padded to ten digits so text order matches index order for any
# batch size. Looking it up is cheaper than formatting it for every point.
_SEQ_SUFFIXES = [f"{index:010d}" for index in range(MAX_METRIC_BATCH)]


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
                 flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 manage_status: bool = True) -> None:
        self.store = store
        self.run = run
        self.flush_size = flush_size
        self.flush_seconds = flush_seconds
        self._flush_at = math.inf
        self.manage_status = manage_status
        self._run_id = run.id
        # Buffered points: plain ones as columns per key (values, steps,
        # microsecond times, seqs), series from `log_metric_series`, and points
        # with optional fields as objects. `_buffered` counts them all and is
        # also the next seq index.
        self._columns: dict[str, tuple[list, list, list, list]] = {}
        self._series: list[MetricSeries] = []
        self._buffer: list[MetricPoint] = []
        self._buffered = 0
        self._last_stamp: datetime | None = None
        self._last_micros = 0
        self._new_batch()
        # Metric keys that already passed `check_key`, so a training loop that
        # logs the same few keys checks each of them once.
        self._checked_keys: set[str] = set()

    def _new_batch(self) -> None:
        self._batch_id = new_id()
        self._seq_prefix = self._batch_id + ":"

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
        """Validate and buffer one metric point; it is written at the next flush.

        The checks are those of `MetricPoint.validate`. A point with a known key,
        a float value, an int step and no optional fields takes an inlined copy
        of its fast path. Any other point goes through `validate` itself. When
        the flush that this point triggers raises, the point stays buffered and
        the next flush writes it, so do not log it again.
        """
        index = self._buffered
        if extra or type(value) is not float or type(step) is not int \
                or not 0 <= step <= MAX_STEP or type(key) is not str \
                or key not in self._checked_keys \
                or timestamp is not None and (type(timestamp) is not datetime
                                              or timestamp.tzinfo is not timezone.utc):
            point = _new_point(self._run_id, key, value, step,
                               utcnow() if timestamp is None else timestamp,
                               self._seq_prefix + _seq_suffix(index), extra)
            point.validate()
            self._remember_key(point.key)
            if point.has_extras():
                self._buffer.append(point)
            else:
                # Validated and plain after all (a new key, an int value, a
                # timestamp to normalise), so it joins the columns.
                self._buffer_column(point.key, point.value, point.step,
                                    to_micros(point.timestamp), point.seq)
        else:
            if timestamp is None:
                micros = time.time_ns() // 1000
            elif timestamp is self._last_stamp:
                micros = self._last_micros
            else:
                micros = self._last_micros = to_micros(timestamp)
                self._last_stamp = timestamp
            self._buffer_column(key, value, step, micros,
                                self._seq_prefix + _seq_suffix(index))
        self._buffered = index + 1
        now = time.monotonic()
        if index == 0:
            self._flush_at = now + self.flush_seconds
        if index + 1 >= self.flush_size or now >= self._flush_at:
            self.flush()

    def _buffer_column(self, key: str, value: float, step: int, micros: int,
                       seq: str) -> None:
        columns = self._columns.get(key)
        if columns is None:
            columns = self._columns[key] = ([], [], [], [])
        values, steps, stamps, seqs = columns
        values.append(value)
        steps.append(step)
        stamps.append(micros)
        seqs.append(seq)

    def _flush_if_due(self, first_index: int) -> None:
        """Flush after points were buffered from position `first_index` on, if due."""
        now = time.monotonic()
        if first_index == 0 and self._buffered:
            self._flush_at = now + self.flush_seconds
        if self._buffered >= self.flush_size or now >= self._flush_at:
            self.flush()

    def _remember_key(self, key: str) -> None:
        if len(self._checked_keys) >= MAX_CHECKED_KEYS:
            self._checked_keys.clear()
        self._checked_keys.add(key)

    def log_metrics(self, values: Mapping[str, float], step: int = 0,
                    timestamp: datetime | None = None, **extra: Any) -> None:
        """Buffer one point per key; without `timestamp` they share the current time.

        Every point is validated before any is buffered, so one invalid value
        rejects them all.
        """
        if timestamp is None:
            timestamp = utcnow()
        for key, value in values.items():
            _new_point(self._run_id, key, value, step, timestamp, "", extra).validate()
        for key, value in values.items():
            self.log_metric(key, value, step, timestamp, **extra)

    def log_metric_series(self, key: str, values: Sequence[float] | Any,
                          steps: Sequence[int] | Any | None = None,
                          timestamps: Sequence[datetime] | datetime | None = None,
                          **extra: Any) -> int:
        """Validate and buffer a whole series of one metric; return its length.

        `values` is a sequence of numbers or a one-dimensional array (anything
        with `tolist`, such as a numpy array). `steps` defaults to 0, 1, 2, ...;
        `timestamps` is one time for every point, a sequence with one time per
        point, or None for the current time. Optional fields in `extra` (unit,
        split, ...) apply to every point. Every point is validated before any is
        buffered, so an invalid element rejects the whole series.
        """
        values = _as_list(values, "values")
        count = len(values)
        steps = list(range(count)) if steps is None else _as_list(steps, "steps")
        if len(steps) != count:
            raise InvalidInputError(
                f"metric {key!r} has {count} values but {len(steps)} steps", len(steps))
        stamps = self._series_timestamps(key, timestamps, count)
        check_key(key, "metric key")
        values = _checked_values(key, values)
        _check_steps(steps)
        shared = _series_time(timestamps) if stamps is None else None
        if extra or stamps is not None:
            return self._buffer_points(key, values, steps, stamps or [shared] * count,
                                       extra)
        return self._buffer_plain_series(key, values, steps, shared)

    @staticmethod
    def _series_timestamps(key: str, timestamps: Any, count: int) -> list | None:
        """Return one UTC time per point, or None when one time serves them all."""
        if timestamps is None or isinstance(timestamps, (datetime, str, int, float)):
            return None
        stamps = [to_utc(stamp, "timestamp") for stamp in _as_list(timestamps,
                                                                   "timestamps")]
        if len(stamps) != count:
            raise InvalidInputError(
                f"metric {key!r} has {count} values but {len(stamps)} timestamps",
                len(stamps))
        return stamps

    def _buffer_plain_series(self, key: str, values: list[float], steps: list[int],
                             stamp: datetime) -> int:
        """Buffer an already validated series that shares one timestamp and has no extras.

        It is kept as columns (`MetricSeries`), split where a flush falls due.
        """
        micros = to_micros(stamp)
        position = 0
        while position < len(values):
            start = self._buffered
            room = max(1, self.flush_size - start)
            end = min(len(values), position + room)
            count = end - position
            if start + count <= len(_SEQ_SUFFIXES):
                suffixes = _SEQ_SUFFIXES[start:start + count]
            else:
                suffixes = [_seq_suffix(index) for index in range(start, start + count)]
            self._series.append(MetricSeries(
                run_id=self._run_id, key=key, values=values[position:end],
                steps=steps[position:end], stamps=[micros] * count,
                seqs=list(map(self._seq_prefix.__add__, suffixes))))
            self._buffered = start + count
            position = end
            self._flush_if_due(start)
        self._remember_key(key)
        return len(values)

    def _buffer_points(self, key: str, values: list[float], steps: list[int],
                       stamps: list[datetime], extra: dict[str, Any]) -> int:
        """Buffer a series with per-point times or optional fields, validating each."""
        points = [MetricPoint(run_id=self._run_id, key=key, value=value, step=step,
                              timestamp=stamp, **extra).validate()
                  for value, step, stamp in zip(values, steps, stamps)]
        for point in points:
            start = self._buffered
            point.seq = self._seq_prefix + _seq_suffix(start)
            self._buffer.append(point)
            self._buffered = start + 1
            self._flush_if_due(start)
        self._remember_key(key)
        return len(points)

    def flush(self) -> None:
        """Write buffered metric points and series as one batch."""
        if not self._buffered:
            return
        # The batch keeps its id until it is written, so a flush retried after a
        # failure overwrites whatever part of it reached the store.
        run_id = self._run_id
        series = self._series + [MetricSeries(run_id, key, *columns)
                                 for key, columns in self._columns.items()]
        self.store.append_prepared_points(run_id, self._buffer, series)
        self._buffer = []
        self._series = []
        self._columns = {}
        self._buffered = 0
        self._flush_at = math.inf
        self._new_batch()

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


def _seq_suffix(index: int) -> str:
    """Return the zero-padded position that follows the batch id in a point's seq."""
    try:
        return _SEQ_SUFFIXES[index]
    except IndexError:
        return f"{index:010d}"


def _as_list(values: Any, what: str) -> list:
    """Copy a sequence or a one-dimensional array (via its `tolist`) into a list."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} must be a sequence, got {values!r}", values)
    return list(values)


def _checked_values(key: str, values: list) -> list[float]:
    """Return the values as floats; raise InvalidInputError for any other type."""
    if set(map(type, values)) <= {float}:
        return values
    what = f"metric {key!r} value"
    return [value if type(value) is float else check_float(value, what)
            for value in values]


def _check_steps(steps: list) -> None:
    """Raise InvalidInputError unless every step is an int from 0 to MAX_STEP."""
    if not steps:
        return
    if not set(map(type, steps)) <= {int} or min(steps) < 0 or max(steps) > MAX_STEP:
        for step in steps:
            check_step(step)


def _new_point(run_id: str, key: Any, value: Any, step: Any, timestamp: Any, seq: str,
               extra: dict[str, Any]) -> MetricPoint:
    """Return an unvalidated point; an unknown optional field raises InvalidInputError."""
    unknown = sorted(set(extra) - set(MetricPoint.optional_fields))
    if unknown:
        raise InvalidInputError(
            f"metric {key!r} has unknown fields {unknown}; the optional fields are "
            f"{list(MetricPoint.optional_fields)}", unknown)
    return MetricPoint(run_id=run_id, key=key, value=value, step=step, timestamp=timestamp,
                       seq=seq, **extra)


def _series_time(timestamp: datetime | str | int | float | None) -> datetime:
    return utcnow() if timestamp is None else to_utc(timestamp, "timestamp")


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
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
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
    if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) \
            or not flush_seconds >= 0:
        raise InvalidInputError(
            f"flush_seconds must be a number of seconds >= 0, got {flush_seconds!r}",
            flush_seconds)
    run = store.create_run(
        target.id, name=name, params=params, tags=tags, parent_run_id=parent,
        trainer=trainer or store.actor, resources=resources,
        environment=capture_environment() if capture_env else {},
        seeds=seeds, code_version=capture_git(_script_dir()) if capture_code else {},
        dataset_ids=dataset_ids, id=id,
    )
    return ActiveRun(store, run, flush_size=flush_size, flush_seconds=flush_seconds)


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
