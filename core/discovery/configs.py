"""Shared configurations: a run's complete params stored once under their content hash.

The configuration hash is the SHA-256 of the params' canonical JSON
(`mltrail.codec.dumps`: sorted keys, ints and floats kept apart, non-finite
floats by their bits). Two runs therefore share a configuration exactly when
their params are equal key by key, type by type and bit by bit.

Three kinds of blob record hold it, all derived from run params:

- `configs` / HASH: `{"hash", "params"}`, the params stored once;
- `config-runs-HASH` / RUN_ID: one small record per run with that
  configuration. Each hash has its own blob namespace, so all runs of a
  configuration are found with one `BlobRepository.scan`, and recording a run
  writes a record of its own instead of rewriting a shared, growing document;
- `config-of` / RUN_ID: `{"hash"}`, the hash last recorded for the run, so the
  run's record can leave its old configuration when more params are logged.

Readers never trust the index alone: each run found is read and its hash
recomputed, so an entry left behind by a crash or a race is skipped, never
returned. Because everything here can be rebuilt from the runs,
`rebuild_configuration_index` restores it after a restore or migration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mltrail import codec
from mltrail.access import Role
from mltrail.backend import chunked
from mltrail.clock import isoformat, utcnow
from mltrail.domain import Run
from mltrail.errors import InvalidInputError, NotFoundError
from mltrail.store import Store

CONFIG_NAMESPACE = "configs"
CONFIG_OF_NAMESPACE = "config-of"
CONFIG_RUNS_PREFIX = "config-runs-"
# Runs read per batch when checking index entries; bounds memory per lookup.
READ_BATCH = 200


def configuration_hash(params: Mapping[str, Any]) -> str:
    """Return the SHA-256 hex digest of the params' canonical JSON."""
    if not isinstance(params, Mapping):
        raise InvalidInputError(f"params must be a dict, got {params!r}", params)
    return hashlib.sha256(codec.dumps(dict(params)).encode("utf-8")).hexdigest()


def runs_namespace(config_hash: str) -> str:
    """Return the blob namespace that lists the runs of one configuration."""
    return CONFIG_RUNS_PREFIX + config_hash


@dataclass(frozen=True)
class Configuration:
    """A complete set of params and its content hash."""

    hash: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ParamComparison:
    """A key-by-key diff of two runs' params, keyed by dotted param path.

    Paths are `codec.join_path` of the nested keys, so a key that contains a
    dot stays distinct from a nested key. Values are equal only when their
    types match and floats are equal bit for bit (1 and 1.0 differ, as do 0.0
    and -0.0, while NaN equals the same NaN).
    """

    run_a: str
    run_b: str
    hash_a: str
    hash_b: str
    only_in_a: dict[str, Any] = field(default_factory=dict)
    only_in_b: dict[str, Any] = field(default_factory=dict)
    differing: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    equal: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.hash_a == self.hash_b

    def rows(self) -> list[dict[str, Any]]:
        """Return one row per param path: path, change, value in a, value in b."""
        rows = []
        for path, value in self.only_in_a.items():
            rows.append({"param": path, "change": "only_in_a", "a": value, "b": None})
        for path, value in self.only_in_b.items():
            rows.append({"param": path, "change": "only_in_b", "a": None, "b": value})
        for path, (left, right) in self.differing.items():
            rows.append({"param": path, "change": "differing", "a": left, "b": right})
        for path, value in self.equal.items():
            rows.append({"param": path, "change": "equal", "a": value, "b": value})
        return sorted(rows, key=lambda row: row["param"])


def record_configuration(store: Store, run: Run) -> str | None:
    """Store `run`'s params under their hash and index the run; return the hash.

    Idempotent: when the run is already recorded under its current hash, this
    costs one blob read and writes nothing. A run without params has no
    configuration and returns None. Call it after every successful write that
    changes a run's params. When params grew, the run moves from its old
    configuration to the new one, and the old configuration's params are
    removed once no run is left in it.
    """
    if not run.params:
        return None
    store._authorize(Role.WRITER, "record_configuration", run.namespace, "run", run.id)
    blobs = store.backend.blobs
    config_hash = configuration_hash(run.params)
    previous = _recorded_hash(store, run.id)
    if previous == config_hash:
        return config_hash
    # Index entry first, pointer last: a crash in between leaves an entry that
    # readers skip because the run's recomputed hash differs, and the next call
    # completes the move.
    blobs.put(runs_namespace(config_hash), run.id, {
        "run_id": run.id, "namespace": run.namespace,
        "experiment_id": run.experiment_id, "recorded_at": isoformat(utcnow())})
    _store_params(store, config_hash, run.params)
    blobs.put(CONFIG_OF_NAMESPACE, run.id, {"hash": config_hash})
    if previous is not None:
        _leave_configuration(store, previous, run.id)
    return config_hash


def _recorded_hash(store: Store, run_id: str) -> str | None:
    try:
        return store.backend.blobs.get(CONFIG_OF_NAMESPACE, run_id).get("hash")
    except NotFoundError:
        return None


def _store_params(store: Store, config_hash: str, params: Mapping[str, Any]) -> None:
    blobs = store.backend.blobs
    try:
        blobs.get(CONFIG_NAMESPACE, config_hash)
        return
    except NotFoundError:
        pass
    blobs.put(CONFIG_NAMESPACE, config_hash, {
        "hash": config_hash, "params": codec.encode_value(dict(params), "params")})


def _leave_configuration(store: Store, config_hash: str, run_id: str) -> None:
    """Remove a run's entry from a configuration, and the params when none is left.

    NOTE: a run that another process records under `config_hash` between the
    emptiness check and the delete loses the `configs` record. Readers then
    take the params from a run in the index instead (see `get_configuration`).
    """
    blobs = store.backend.blobs
    blobs.delete(runs_namespace(config_hash), run_id)
    if next(iter(blobs.scan(runs_namespace(config_hash))), None) is None:
        blobs.delete(CONFIG_NAMESPACE, config_hash)


def forget_configuration(store: Store, run_id: str) -> None:
    """Remove a purged run from the configuration index; nothing to remove is fine.

    Readers already skip runs that no longer exist, so this only frees the
    run's index records and, when it was the last run, the stored params.
    """
    recorded = _recorded_hash(store, run_id)
    if recorded is None:
        return
    _leave_configuration(store, recorded, run_id)
    store.backend.blobs.delete(CONFIG_OF_NAMESPACE, run_id)


def configuration_of(store: Store, run_id: str) -> Configuration | None:
    """Return the configuration of a run, or None when it has no params.

    The run's own params are the source of truth, so the result is right even
    for runs written before configurations were recorded.
    """
    run = store.get_run(run_id)
    if not run.params:
        return None
    return Configuration(configuration_hash(run.params), run.params)


def get_configuration(store: Store, config_hash: str) -> Configuration:
    """Return the params stored under a configuration hash.

    With access control on, the configuration must be used by a run the
    principal may read, so a hash never reveals params of a hidden namespace.
    """
    _check_hash(config_hash)
    try:
        record = store.backend.blobs.get(CONFIG_NAMESPACE, config_hash)
    except NotFoundError:
        record = None
    if record is not None and not store.policy.enabled:
        return Configuration(config_hash, codec.decode_value(record["params"]))
    for run in _runs_in(store, config_hash, include_deleted=True):
        return Configuration(config_hash, run.params)
    raise NotFoundError(
        f"configuration {config_hash!r} not found; no readable run has these params "
        "(run `mltrail runs same-config --rebuild` if the index predates the runs)",
        config_hash)


def runs_with_same_configuration(store: Store, run_id: str, *,
                                 include_deleted: bool = False) -> Iterator[Run]:
    """Stream the runs whose params equal `run_id`'s, the run itself included.

    One blob scan finds the candidates in run id order, and they are read in
    batches of READ_BATCH. A candidate is kept only if it still exists, the
    principal may read its namespace, it is not deleted (unless
    `include_deleted`) and its params still hash to the same configuration.
    A run without params yields nothing.
    """
    run = store.get_run(run_id)
    if not run.params:
        return iter(())
    return _runs_in(store, configuration_hash(run.params), include_deleted)


def _runs_in(store: Store, config_hash: str, include_deleted: bool) -> Iterator[Run]:
    index = store.backend.blobs.scan(runs_namespace(config_hash))
    candidates = (key for key, _ in index)
    for batch in chunked(candidates, READ_BATCH):
        found = store.backend.runs.get_many(batch)
        for candidate_id in batch:
            candidate = found.get(candidate_id)
            if candidate is None or not store._may_read(candidate.namespace):
                continue
            if candidate.deleted_at is not None and not include_deleted:
                continue
            if candidate.params and configuration_hash(candidate.params) == config_hash:
                yield candidate


def compare_params(store: Store, run_a: str, run_b: str) -> ParamComparison:
    """Diff two runs' params key by key; floats are compared bit for bit."""
    first = store.get_run(run_a)
    second = store.get_run(run_b)
    left = _flat(first.params)
    right = _flat(second.params)
    comparison = ParamComparison(first.id, second.id, configuration_hash(first.params),
                                 configuration_hash(second.params))
    for path in sorted(left.keys() | right.keys()):
        if path not in right:
            comparison.only_in_a[path] = left[path]
        elif path not in left:
            comparison.only_in_b[path] = right[path]
        elif codec.values_equal(left[path], right[path]):
            comparison.equal[path] = left[path]
        else:
            comparison.differing[path] = (left[path], right[path])
    return comparison


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    return {codec.join_path(path): value for path, value in codec.flatten(params)}


def rebuild_configuration_index(store: Store, filter: str | None = None) -> int:
    """Record the configuration of every run matching `filter`; return how many.

    Use it for runs written before configurations were recorded, and after a
    backup restore or migration, which copy the runs but not this derived index.
    Runs already recorded cost one read each.
    """
    count = 0
    for run in store.iter_runs(filter, include_deleted=True):
        if record_configuration(store, run) is not None:
            count += 1
    return count


def _check_hash(config_hash: Any) -> str:
    if not isinstance(config_hash, str) or len(config_hash) != 64 or \
            any(c not in "0123456789abcdef" for c in config_hash):
        raise InvalidInputError(
            f"configuration hash {config_hash!r} is invalid; expected 64 lowercase hex "
            "digits as printed by `mltrail runs same-config`", config_hash)
    return config_hash
