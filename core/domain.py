"""Domain entities and their validation; no I/O and no driver imports.

Every entity has a sortable id, `created_at` and `updated_at` in UTC at
microsecond precision, free-form `tags`, a `schema_version` and a `revision`
that backends use for compare-and-set updates. `to_record` gives the JSON-safe
dict that backends store; `from_record` inverts it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar, TypeVar

from mltrail import codec, limits
from mltrail.clock import from_micros, isoformat, new_id, to_utc, utcnow
from mltrail.errors import ConflictError, InvalidInputError

SCHEMA_VERSION = 1
DEFAULT_NAMESPACE = "default"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.:-]{0,127}$")


class RunStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.KILLED})

# Allowed status changes. Setting the current status again is a no-op, so a
# retried call never fails.
STATUS_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.KILLED}),
    RunStatus.RUNNING: TERMINAL_STATUSES,
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.KILLED: frozenset(),
}


class EdgeType(str, Enum):
    """Lineage edge types, read as `source <type> target`.

    `consumed` (run consumed dataset), `derived_from` (dataset derived from
    dataset) and `child_of` (run child of run) point upstream; `produced` (run or
    pipeline produced a model version or dataset) points downstream.
    """

    CONSUMED = "consumed"
    PRODUCED = "produced"
    DERIVED_FROM = "derived_from"
    CHILD_OF = "child_of"


class NodeKind(str, Enum):
    DATASET = "dataset"
    RUN = "run"
    MODEL_VERSION = "model_version"
    PIPELINE = "pipeline"


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}", value)
    if len(value) > limits.MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"{what} {value[:40]!r}... has {len(value)} characters; the maximum is "
            f"{limits.MAX_NAME_LENGTH}",
            value,
        )
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value!r} contains a NUL character", value)
    return value


def check_key(value: Any, what: str) -> str:
    if not isinstance(value, str) or value == "":
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}", value)
    if len(value) > limits.MAX_KEY_LENGTH:
        raise InvalidInputError(
            f"{what} {value[:40]!r}... has {len(value)} characters; the maximum is "
            f"{limits.MAX_KEY_LENGTH}",
            value,
        )
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value!r} contains a NUL character", value)
    return value


def check_id(value: Any, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInputError(
            f"{what} {value!r} is invalid; expected 1-128 letters, digits or '_.:-' "
            "starting with a letter or digit",
            value,
        )
    return value


def check_namespace(value: Any) -> str:
    if not isinstance(value, str) or not _NAMESPACE_RE.match(value):
        raise InvalidInputError(
            f"namespace {value!r} is invalid; expected 1-63 letters, digits or '_.-' "
            "starting with a letter or digit",
            value,
        )
    return value


def check_text(value: Any, what: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {value!r}", value)
    if len(value) > limits.MAX_STRING_LENGTH:
        raise InvalidInputError(
            f"{what} has {len(value)} characters; the maximum is {limits.MAX_STRING_LENGTH}",
            value,
        )
    return value


def check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise InvalidInputError(f"tags must be a dict of strings, got {tags!r}", tags)
    for key, value in tags.items():
        check_key(key, "tag key")
        if not isinstance(value, str):
            raise InvalidInputError(
                f"tag {key!r} has value {value!r}; tag values must be strings", value
            )
        if len(value) > limits.MAX_TAG_VALUE_LENGTH:
            raise InvalidInputError(
                f"tag {key!r} has a value of {len(value)} characters; the maximum is "
                f"{limits.MAX_TAG_VALUE_LENGTH}",
                value,
            )
    check_size(tags, "tags", limits.MAX_ATTRIBUTES_BYTES)
    return dict(tags)


def check_mapping(value: Any, what: str, max_bytes: int = limits.MAX_ATTRIBUTES_BYTES) -> dict:
    """Validate a free-form nested dict: string keys, JSON-like values, bounded size."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a dict, got {value!r}", value)
    for path, _ in codec.flatten(value):
        for segment in path:
            check_key(segment, f"{what} key")
    check_size(value, what, max_bytes)
    return value


# True while `Entity.from_record` rebuilds a stored record. Sizes were checked
# when the record was written, and measuring them again means serialising
# every mapping of every entity read, so `check_size` skips them then. A
# record stored under larger limits, or by another tool, still reads back.
_READING_STORED: ContextVar[bool] = ContextVar("mltrail_reading_stored", default=False)


def check_size(value: Any, what: str, max_bytes: int) -> None:
    if _READING_STORED.get():
        return
    size = len(codec.dumps(value).encode("utf-8"))
    if size > max_bytes:
        raise InvalidInputError(
            f"{what} take {size} bytes as JSON; the maximum is {max_bytes}", size
        )


def check_step(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"step must be an int, got {value!r}", value)
    if not 0 <= value <= limits.MAX_STEP:
        raise InvalidInputError(
            f"step {value!r} is out of range; expected 0 to {limits.MAX_STEP}", value
        )
    return value


def check_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{what} must be a number, got {value!r}", value)
    if isinstance(value, int):
        try:
            as_float = float(value)
        except OverflowError:
            raise InvalidInputError(
                f"{what} is an int of {len(str(abs(value)))} digits, beyond the float64 "
                "range", value) from None
        if as_float != value:
            raise InvalidInputError(f"{what} {value!r} cannot be held exactly as float64", value)
        return as_float
    return value


# ---------------------------------------------------------------------------
# Older schema versions
# ---------------------------------------------------------------------------


def _upgrade_0_to_1(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a schema 0 record, which predates namespaces.

    Schema 0 runs also kept params flat under dotted keys, as
    `params_flat: {"optimizer.lr": 0.01}` with codec-encoded values, where
    schema 1 nests them under `params`.
    """
    if kind in ("experiment", "run", "dataset", "model"):
        record.setdefault("namespace", DEFAULT_NAMESPACE)
    if kind != "run" or "params_flat" not in record:
        return record
    params = codec.decode_value(record.get("params") or {})
    for dotted, value in (record.pop("params_flat") or {}).items():
        *parents, leaf = dotted.split(".")
        node = params
        for segment in parents:
            node = node.setdefault(segment, {})
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or isinstance(node.get(leaf), dict):
            raise InvalidInputError(
                f"run record {record.get('id')!r} (schema 0) has param {dotted!r} that "
                "collides with another param's path; fix the record by hand", dotted)
        node[leaf] = codec.decode_value(value)
    record["params"] = codec.encode_value(params)
    return record


# Functions that turn a record of schema version N into one of version N + 1.
RECORD_UPGRADES = {0: _upgrade_0_to_1}


# ---------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------

E = TypeVar("E", bound="Entity")


@dataclass(kw_only=True)
class Entity:
    """Fields every entity shares.

    `schema_version` is the version of the stored record the entity was read
    from (SCHEMA_VERSION for a new entity), so `mltrail upgrade` can find
    records to rewrite; `to_record` always writes the current layout.
    """

    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    revision: int = 0

    kind: ClassVar[str] = "entity"
    # Fields stored as ISO 8601 strings and as encoded JSON-safe structures.
    datetime_fields: ClassVar[tuple[str, ...]] = ("created_at", "updated_at")
    json_fields: ClassVar[tuple[str, ...]] = ("tags",)

    def __post_init__(self) -> None:
        check_id(self.id, f"{self.kind} id")
        self.created_at = to_utc(self.created_at, "created_at")
        if self.updated_at is None:
            self.updated_at = self.created_at
        self.updated_at = to_utc(self.updated_at, "updated_at")
        self.tags = check_tags(self.tags)
        self.validate()

    def validate(self) -> None:
        """Check entity-specific fields; raise InvalidInputError naming the value."""

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe dict a backend stores."""
        record: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None:
                record[item.name] = None
            elif item.name in self.datetime_fields:
                record[item.name] = isoformat(value)
            elif item.name in self.json_fields:
                record[item.name] = codec.encode_value(value)
            elif isinstance(value, Enum):
                record[item.name] = value.value
            else:
                record[item.name] = value
        record["schema_version"] = SCHEMA_VERSION
        return record

    @classmethod
    def from_record(cls: type[E], record: dict[str, Any]) -> E:
        """Rebuild an entity from a stored record, upgrading older schema versions."""
        stored_version = record.get("schema_version", 1)
        record = cls.upgrade_record(dict(record))
        values: dict[str, Any] = {}
        names = {item.name for item in dataclasses.fields(cls)}
        for name, value in record.items():
            if name not in names:
                continue
            if value is not None and name in cls.json_fields:
                value = codec.decode_value(value)
            values[name] = value
        values["schema_version"] = stored_version
        token = _READING_STORED.set(True)
        try:
            return cls(**values)
        finally:
            _READING_STORED.reset(token)

    @classmethod
    def upgrade_record(cls, record: dict[str, Any]) -> dict[str, Any]:
        """Bring a record of an older schema version up to SCHEMA_VERSION."""
        version = record.get("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidInputError(
                f"{cls.kind} record {record.get('id')!r} has schema version {version!r}; "
                "expected an int >= 0", version)
        if version > SCHEMA_VERSION:
            raise InvalidInputError(
                f"{cls.kind} record {record.get('id')!r} has schema version {version}, "
                f"newer than this mltrail ({SCHEMA_VERSION}); upgrade mltrail",
                version,
            )
        for older in range(version, SCHEMA_VERSION):
            record = RECORD_UPGRADES[older](cls.kind, record)
        record["schema_version"] = SCHEMA_VERSION
        return record

    def touched(self: E, **changes: Any) -> E:
        """Return a copy with `changes`, a fresh `updated_at` and the next revision."""
        now = utcnow()
        updated = max(now, self.updated_at)
        return dataclasses.replace(
            self, **changes, updated_at=updated, revision=self.revision + 1,
            schema_version=SCHEMA_VERSION
        )

    def same_content(self, other: Entity) -> bool:
        """Compare everything but bookkeeping, for idempotent create retries."""
        ignore = {"created_at", "updated_at", "revision"}
        mine = {k: v for k, v in self.to_record().items() if k not in ignore}
        theirs = {k: v for k, v in other.to_record().items() if k not in ignore}
        return json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True)


@dataclass(kw_only=True)
class Experiment(Entity):
    """A named group of runs; the name is unique within its namespace."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    description: str | None = None
    deleted_at: datetime | None = None

    kind: ClassVar[str] = "experiment"
    datetime_fields: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "deleted_at")

    def validate(self) -> None:
        check_name(self.name, "experiment name")
        check_namespace(self.namespace)
        check_text(self.description, "description")
        if self.deleted_at is not None:
            self.deleted_at = to_utc(self.deleted_at, "deleted_at")


@dataclass(kw_only=True)
class CodeVersion:
    git_commit: str | None = None
    dirty: bool | None = None
    branch: str | None = None
    repository: str | None = None


@dataclass(kw_only=True)
class Run(Entity):
    """One execution of training or evaluation code within an experiment."""

    experiment_id: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    status: RunStatus = RunStatus.PENDING
    params: dict[str, Any] = field(default_factory=dict)
    trainer: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    dataset_ids: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    code_version: dict[str, Any] = field(default_factory=dict)
    artifact_uris: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    deleted_at: datetime | None = None

    kind: ClassVar[str] = "run"
    datetime_fields: ClassVar[tuple[str, ...]] = (
        "created_at", "updated_at", "start_time", "end_time", "deleted_at",
    )
    json_fields: ClassVar[tuple[str, ...]] = (
        "tags", "params", "resources", "environment", "seeds", "code_version",
        "artifact_uris", "error",
    )

    def validate(self) -> None:
        check_id(self.experiment_id, "experiment id")
        check_name(self.name, "run name")
        check_namespace(self.namespace)
        self.status = _status(self.status)
        self.params = check_mapping(self.params, "params", limits.MAX_PARAMS_BYTES)
        if self.trainer is not None:
            check_name(self.trainer, "trainer")
        for name in ("resources", "environment", "seeds", "code_version"):
            setattr(self, name, check_mapping(getattr(self, name), name))
        self.artifact_uris = check_mapping(self.artifact_uris, "artifact_uris")
        for key, uri in self.artifact_uris.items():
            check_text(uri, f"artifact URI {key!r}", optional=False)
        if self.error is not None:
            check_mapping(self.error, "error")
        for dataset_id in self.dataset_ids:
            check_id(dataset_id, "dataset id")
        if self.parent_run_id is not None:
            check_id(self.parent_run_id, "parent run id")
        for name in ("start_time", "end_time", "deleted_at"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, to_utc(value, name))

    @property
    def params_flat(self) -> dict[tuple[str, ...], Any]:
        """The dotted-key view of `params`: key path -> leaf value."""
        return dict(codec.flatten(self.params))


def _status(value: Any) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise InvalidInputError(f"run status {value!r} is invalid; expected one of {known}",
                                value) from None


def check_transition(run: Run, target: Any) -> RunStatus:
    """Return the target status if `run` may move to it; raise ConflictError if not."""
    target = _status(target)
    if target == run.status:
        return target
    if target not in STATUS_TRANSITIONS[run.status]:
        raise ConflictError(
            f"run {run.id!r} cannot change status from {run.status.value!r} to "
            f"{target.value!r}",
            target.value,
        )
    return target


@dataclass(kw_only=True)
class Dataset(Entity):
    """A versioned dataset with its content hash and provenance.

    `provenance` holds `source`, `preprocessing` (a list of steps) and `pipeline`
    (the feature pipeline that produced it); `schema` describes its columns.
    """

    name: str
    version: str = "1"
    namespace: str = DEFAULT_NAMESPACE
    source_uri: str | None = None
    content_hash: str | None = None
    ingested_at: datetime | None = None
    schema: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    kind: ClassVar[str] = "dataset"
    datetime_fields: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "ingested_at")
    json_fields: ClassVar[tuple[str, ...]] = ("tags", "schema", "provenance")

    def validate(self) -> None:
        check_name(self.name, "dataset name")
        check_name(self.version, "dataset version")
        check_namespace(self.namespace)
        check_text(self.source_uri, "source URI")
        check_text(self.content_hash, "content hash")
        check_text(self.description, "description")
        if self.ingested_at is not None:
            self.ingested_at = to_utc(self.ingested_at, "ingested_at")
        self.schema = check_mapping(self.schema, "schema")
        self.provenance = check_mapping(self.provenance, "provenance")


@dataclass(kw_only=True)
class Model(Entity):
    """A registered model; its versions are numbered 1, 2, 3 ... without gaps.

    `aliases` maps an alias such as `production` to a version number, and
    `alias_history` keeps each alias's earlier targets so it can be rolled back.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    description: str | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    alias_history: dict[str, list[int]] = field(default_factory=dict)
    deleted_at: datetime | None = None

    kind: ClassVar[str] = "model"
    datetime_fields: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "deleted_at")
    json_fields: ClassVar[tuple[str, ...]] = ("tags", "aliases", "alias_history")

    def validate(self) -> None:
        check_name(self.name, "model name")
        check_namespace(self.namespace)
        check_text(self.description, "description")
        for alias, version in self.aliases.items():
            check_name(alias, "alias")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise InvalidInputError(f"alias {alias!r} points at {version!r}", version)
        if self.deleted_at is not None:
            self.deleted_at = to_utc(self.deleted_at, "deleted_at")


@dataclass(kw_only=True)
class ModelVersion(Entity):
    """One numbered version of a model with what reproduces it."""

    model_id: str
    version: int
    run_id: str | None = None
    git_commit: str | None = None
    script_hash: str | None = None
    script_uri: str | None = None
    reproducibility_hash: str | None = None
    artifact_uri: str | None = None
    description: str | None = None
    deleted_at: datetime | None = None

    kind: ClassVar[str] = "model_version"
    datetime_fields: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "deleted_at")

    def validate(self) -> None:
        check_id(self.model_id, "model id")
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or self.version < 1:
            raise InvalidInputError(f"version {self.version!r} must be an int >= 1",
                                    self.version)
        if self.run_id is not None:
            check_id(self.run_id, "run id")
        for name in ("git_commit", "script_hash", "script_uri", "reproducibility_hash",
                     "artifact_uri", "description"):
            check_text(getattr(self, name), name.replace("_", " "))
        if self.deleted_at is not None:
            self.deleted_at = to_utc(self.deleted_at, "deleted_at")


@dataclass(kw_only=True, slots=True)
class MetricPoint:
    """One evaluation record; append-only.

    `seq` orders points that share step and timestamp: the core sets it to the
    batch id and the point's index in the batch, which also makes a retried
    batch overwrite itself instead of adding duplicates.
    """

    run_id: str
    key: str
    value: float
    step: int = 0
    timestamp: datetime = field(default_factory=utcnow)
    seq: str = ""
    unit: str | None = None
    metric_kind: str | None = None
    split: str | None = None
    hardware: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    drift: dict[str, float] | None = None

    optional_fields: ClassVar[tuple[str, ...]] = (
        "unit", "metric_kind", "split", "hardware", "ci_low", "ci_high", "ci_level",
        "drift",
    )

    def validate(self) -> MetricPoint:
        """Check and normalise every field in place; return the point.

        The common case (a str key, a float value, an int step and a UTC
        timestamp) is checked with exact type tests first, because the Python
        API validates every logged point.
        """
        key = self.key
        if type(key) is not str or not key or len(key) > limits.MAX_KEY_LENGTH \
                or "\x00" in key:
            check_key(key, "metric key")
        if type(self.value) is not float:
            self.value = check_float(self.value, f"metric {key!r} value")
        step = self.step
        if type(step) is not int or not 0 <= step <= limits.MAX_STEP:
            check_step(step)
        stamp = self.timestamp
        if type(stamp) is not datetime or stamp.tzinfo is not timezone.utc:
            self.timestamp = to_utc(stamp, "timestamp")
        if self.has_extras():
            self._validate_extras()
        return self

    def has_extras(self) -> bool:
        return not (self.unit is None and self.metric_kind is None and self.split is None
                    and self.hardware is None and self.ci_low is None
                    and self.ci_high is None and self.ci_level is None
                    and self.drift is None)

    def _validate_extras(self) -> None:
        check_id(self.run_id, "run id")
        for name in ("unit", "metric_kind", "split", "hardware"):
            value = getattr(self, name)
            if value is not None:
                check_key(value, name)
        for name in ("ci_low", "ci_high", "ci_level"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_float(value, name))
        if self.ci_level is not None and not 0.0 < self.ci_level < 1.0:
            raise InvalidInputError(f"ci_level {self.ci_level!r} must be in (0, 1)",
                                    self.ci_level)
        if self.drift is not None:
            if not isinstance(self.drift, dict):
                raise InvalidInputError(f"drift must be a dict, got {self.drift!r}",
                                        self.drift)
            for name, value in self.drift.items():
                check_key(name, "drift indicator")
                self.drift[name] = check_float(value, f"drift {name!r}")

    def order_key(self) -> tuple[int, datetime, str]:
        """History order: step, then timestamp, then write order."""
        return (self.step, self.timestamp, self.seq)

    def extras(self) -> dict[str, Any] | None:
        """Return the optional fields that are set, encoded, or None when none is."""
        if not self.has_extras():
            return None
        extra = {}
        for name in self.optional_fields:
            value = getattr(self, name)
            if value is not None:
                extra[name] = codec.encode_value(value)
        return extra or None

    def with_extras(self, extra: dict[str, Any] | None) -> MetricPoint:
        for name, value in (extra or {}).items():
            setattr(self, name, codec.decode_value(value))
        return self

    def same_as(self, other: MetricPoint) -> bool:
        return (
            self.key == other.key
            and codec.same_float(self.value, other.value)
            and self.step == other.step
            and self.timestamp == other.timestamp
        )


@dataclass(slots=True)
class MetricSeries:
    """Validated points of one metric, as columns, with no optional fields.

    The columns are parallel lists: `values[i]` was logged at `steps[i]`, at
    `stamps[i]` microseconds since the Unix epoch (UTC), with seq `seqs[i]`.
    The Python API buffers points this way, so a backend can pack them without
    building a `MetricPoint` per value.
    """

    run_id: str
    key: str
    values: list[float]
    steps: list[int]
    stamps: list[int]
    seqs: list[str]

    def __len__(self) -> int:
        return len(self.values)

    def points(self) -> list[MetricPoint]:
        """Return the series as `MetricPoint` objects."""
        run_id, key = self.run_id, self.key
        times: dict[int, datetime] = {}
        points = []
        for value, step, micros, seq in zip(self.values, self.steps, self.stamps,
                                            self.seqs):
            stamp = times.get(micros)
            if stamp is None:
                stamp = times[micros] = from_micros(micros)
            points.append(MetricPoint(run_id=run_id, key=key, value=value, step=step,
                                      timestamp=stamp, seq=seq))
        return points


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@dataclass(kw_only=True, frozen=True)
class LineageNode:
    """A node of the lineage graph: the id of a dataset, run, model version or pipeline."""

    id: str
    kind: NodeKind
    label: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "kind": NodeKind(self.kind).value, "label": self.label}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LineageNode:
        return cls(id=record["id"], kind=NodeKind(record["kind"]), label=record.get("label"))


@dataclass(kw_only=True, frozen=True)
class LineageEdge:
    """An immutable typed edge, stored with its upstream and downstream ends.

    `upstream` and `downstream` are derived from `source`, `target` and `type`
    so traversal treats every edge type alike.
    """

    source: str
    target: str
    type: EdgeType
    created_at: datetime = field(default_factory=utcnow)

    @property
    def upstream(self) -> str:
        return self.source if self.type == EdgeType.PRODUCED else self.target

    @property
    def downstream(self) -> str:
        return self.target if self.type == EdgeType.PRODUCED else self.source

    @property
    def key(self) -> str:
        return f"{self.source}|{EdgeType(self.type).value}|{self.target}"

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "type": EdgeType(self.type).value,
            "upstream": self.upstream,
            "downstream": self.downstream,
            "created_at": isoformat(self.created_at),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LineageEdge:
        return cls(
            source=record["source"],
            target=record["target"],
            type=EdgeType(record["type"]),
            created_at=to_utc(record["created_at"]),
        )


@dataclass(kw_only=True, frozen=True)
class AuditEvent:
    """One entry of the tamper-evident audit chain.

    `hash` is SHA-256 over the previous event's hash and this event's canonical
    content, so altering, removing or reordering any stored event breaks the chain.
    """

    seq: int
    id: str
    actor: str
    action: str
    entity_type: str
    entity_id: str
    at: datetime
    digest: str
    prev_hash: str
    hash: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["at"] = isoformat(self.at)
        record["details"] = codec.encode_value(self.details)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AuditEvent:
        values = dict(record)
        values["at"] = to_utc(values["at"])
        values["details"] = codec.decode_value(values.get("details") or {})
        return cls(**values)


ENTITY_TYPES: dict[str, type[Entity]] = {
    cls.kind: cls for cls in (Experiment, Run, Dataset, Model, ModelVersion)
}
