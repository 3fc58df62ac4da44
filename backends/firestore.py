"""The Cloud Firestore backend: collections under one root document per store.

URL: `firestore://PROJECT[/DATABASE][?emulator_host=HOST:PORT&root=PATH&timeout=S]`.
DATABASE defaults to `(default)`. With `emulator_host`, or the standard
FIRESTORE_EMULATOR_HOST variable, the client talks to the emulator with anonymous
credentials; otherwise it uses Google's application default credentials. `root` is
the document under which every collection lives (default `mltrail/default`), so
several stores share one database without seeing each other's data.

Layout, all collections below the root document:

    mltrail_experiments, mltrail_runs, mltrail_datasets, mltrail_models,
    mltrail_model_versions/{entity id}
        doc: the record as JSON text. Next to it, for queries: id, revision,
        created_at and updated_at (timestamps), the indexed fields, uniq (the
        unique-key claim id), tv (tags view) and pv (params view of a run)
    mltrail_unique_keys/{sha256 of kind and unique key}: created atomically with
        the entity, so a second entity with the same key fails
    mltrail_metric_chunks/{sha256}: packed points of one run, metric, step bucket
        and batch, written once and never updated
    mltrail_metric_latest/{run id}: map of escaped metric key -> latest point,
        updated once per append with a precondition
    mltrail_lineage_nodes/{node id}, mltrail_lineage_edges/{sha256 of edge key}
    mltrail_audit/{seq as 20 digits}: created with create(), so a seq is taken once
    mltrail_blobs/{sha256 of namespace and key}

Conditional writes use `create()` (fails when the document exists) and update-time
preconditions, never read-write transactions: the emulator serialises contended
transactions slowly, and preconditions fail fast under contention so the core's
retries stay cheap. Queries that the filter language can push down, and the
composite indexes they need, come from `plan_scan` and `firestore_indexes`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import re
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from mltrail import codec
from mltrail.backend import (
    INDEXED_FIELDS,
    UNIQUE_KEYS,
    AuditRepository,
    Backend,
    BlobRepository,
    Capabilities,
    EntityRepository,
    LineageRepository,
    MetricRepository,
    ScanRequest,
    WriteCounters,
    chunked,
)
from mltrail.clock import EPOCH, to_micros, to_utc
from mltrail.domain import (
    AuditEvent,
    Dataset,
    Entity,
    Experiment,
    LineageEdge,
    LineageNode,
    MetricPoint,
    Model,
    ModelVersion,
    Run,
)
from mltrail.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    MltrailError,
    NotFoundError,
)
from mltrail.query.ast import And, Compare, In, conjuncts
from mltrail.query.evaluate import OrderKey

try:
    import google.auth.exceptions as google_auth_exceptions
    from google.api_core import exceptions as google_exceptions
    from google.api_core import retry as google_retry
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore
    from google.cloud.firestore_v1 import FieldFilter
    from google.cloud.firestore_v1.field_path import FieldPath
except ImportError as error:  # the driver is an optional extra
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

logger = logging.getLogger(__name__)

EMULATOR_ENV = "FIRESTORE_EMULATOR_HOST"
DEFAULT_DATABASE = "(default)"
DEFAULT_ROOT = "mltrail/default"
DEFAULT_TIMEOUT_SECONDS = 60.0
URL_OPTIONS = ("emulator_host", "root", "timeout")

COLLECTIONS: dict[str, str] = {
    "experiment": "mltrail_experiments",
    "run": "mltrail_runs",
    "dataset": "mltrail_datasets",
    "model": "mltrail_models",
    "model_version": "mltrail_model_versions",
    "unique_key": "mltrail_unique_keys",
    "metric_chunk": "mltrail_metric_chunks",
    "metric_latest": "mltrail_metric_latest",
    "lineage_node": "mltrail_lineage_nodes",
    "lineage_edge": "mltrail_lineage_edges",
    "audit": "mltrail_audit",
    "blob": "mltrail_blobs",
}

# Firestore's documented limits: 500 writes per commit, 1 MiB per document,
# 30 values in one `in` or `array-contains-any` filter. A commit request must
# stay below 10 MiB, so commits are cut well below that.
MAX_WRITES_PER_COMMIT = 500
MAX_DOCUMENT_BYTES = 1_048_576
MAX_DISJUNCTION_VALUES = 30
MAX_COMMIT_BYTES = 8_000_000

# A metric chunk never crosses a step bucket of 2**16 steps, so a history read
# from `min_step` starts at the first chunk of that step's bucket. A chunk contains
# at most 4,096 points and about 256 KiB, a quarter of the document limit.
BUCKET_BITS = 16
CHUNK_MAX_POINTS = 4_096
CHUNK_MAX_BYTES = 262_144
HISTORY_PAGE_CHUNKS = 8
SCAN_PAGE_SIZE = 300
DELETE_PAGE_SIZE = 500
GET_ALL_CHUNK = 300
MAX_PRECONDITION_ATTEMPTS = 30
RECENT_STATES_SIZE = 4_096
# `storage_stats` counts at most this many documents per collection. Firestore
# bills a count query one document read per 1,000 index entries it matches
# (at least one), so a call costs at most 100 reads per collection.
STORAGE_COUNT_LIMIT = 100_000
UNKNOWN = "unknown"

NATIVE_ORDER_FIELD = "created_at"
ASCENDING = "ASCENDING"
DESCENDING = "DESCENDING"
NAME_FIELD = "__name__"
ESCAPE_PREFIX = "~"
_RESERVED_NAME = re.compile(r"__.*__", re.DOTALL)
_DATABASE_RE = re.compile(r"^(\(default\)|[a-z][a-z0-9-]{2,62})$")
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")

# The filter fields each kind can push down, most selective first. A plan uses the
# namespace and at most one of the others, so few composite indexes are needed.
PUSHDOWN_PRIORITY: dict[str, tuple[str, ...]] = {
    "experiment": ("name", "namespace"),
    "dataset": ("name", "namespace"),
    "model": ("name", "namespace"),
    "model_version": ("model_id", "run_id"),
    "run": ("parent_run_id", "experiment_id", "status", "namespace"),
}

_ENTITY_TYPES: dict[str, type[Entity]] = {
    cls.kind: cls for cls in (Experiment, Run, Dataset, Model, ModelVersion)
}

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# A point in a chunk: step, timestamp in microseconds since the epoch, value.
_POINT = struct.Struct(">Qqd")
# The sortable prefix of a point's order key: step and timestamp shifted by 2**63,
# so that byte order equals numeric order also for times before 1970.
_ORDER_PREFIX = struct.Struct(">QQ")
_MICROS_OFFSET = 2**63
_SEQ_LENGTH = struct.Struct(">I")


# ---------------------------------------------------------------------------
# URL and settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FirestoreSettings:
    """The project, database, emulator and root document of a store, from its URL."""

    project: str
    database: str = DEFAULT_DATABASE
    emulator_host: str | None = None
    root: str = DEFAULT_ROOT
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_url(cls, url: str) -> FirestoreSettings:
        """Parse a `firestore://` URL; raise InvalidInputError naming the bad part."""
        if not isinstance(url, str):
            raise InvalidInputError(f"store URL must be a string, got {url!r}", url)
        parts = urlsplit(url)
        if parts.scheme != "firestore":
            raise InvalidInputError(
                f"not a Firestore URL: {_redact(url)!r}; expected "
                "firestore://PROJECT[/DATABASE][?emulator_host=HOST:PORT&root=PATH]",
                _redact(url),
            )
        if "@" in parts.netloc:
            raise InvalidInputError(
                f"Firestore URL {_redact(url)!r} contains user information; Firestore "
                "takes no password in the URL, so use application default credentials "
                "or GOOGLE_APPLICATION_CREDENTIALS",
                _redact(url),
            )
        options = _url_options(url, parts.query)
        host = options.get("emulator_host") or os.environ.get(EMULATOR_ENV) or None
        return cls(
            project=_check_project(parts.netloc, url),
            database=_check_database(parts.path.strip("/") or DEFAULT_DATABASE, url),
            emulator_host=None if host is None else _check_host(host),
            root=_check_root(options.get("root", DEFAULT_ROOT)),
            timeout=_check_timeout(
                options.get("timeout", str(DEFAULT_TIMEOUT_SECONDS))
            ),
        )

    def to_url(self) -> str:
        """Render the URL; credentials are never part of it."""
        url = f"firestore://{self.project}"
        if self.database != DEFAULT_DATABASE:
            url += f"/{self.database}"
        options = []
        if self.emulator_host:
            options.append(f"emulator_host={self.emulator_host}")
        if self.root != DEFAULT_ROOT:
            options.append(f"root={quote(self.root, safe='/')}")
        if self.timeout != DEFAULT_TIMEOUT_SECONDS:
            options.append(f"timeout={self.timeout:g}")
        return url + ("?" + "&".join(options) if options else "")


def _redact(url: str) -> str:
    """Replace any user information in a URL, so a password never reaches a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def _url_options(url: str, query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidInputError(
            f"Firestore URL {url!r} has a malformed query string {query!r}", query
        ) from None
    options = {}
    for name, values in parsed.items():
        if name not in URL_OPTIONS:
            raise InvalidInputError(
                f"Firestore URL option {name!r} is unknown; known options: "
                f"{', '.join(URL_OPTIONS)}",
                name,
            )
        if len(values) != 1:
            raise InvalidInputError(
                f"Firestore URL option {name!r} is given "
                f"{len(values)} times; give it once",
                name,
            )
        options[name] = values[0]
    return options


def _check_project(project: str, url: str) -> str:
    if not _PROJECT_RE.match(project):
        raise InvalidInputError(
            f"Firestore URL {url!r} names project {project!r}; expected a Google Cloud "
            "project id such as firestore://my-project",
            project,
        )
    return project


def _check_database(database: str, url: str) -> str:
    if not _DATABASE_RE.match(database):
        raise InvalidInputError(
            f"Firestore URL {url!r} names database {database!r}; expected (default) or "
            "4-63 lowercase letters, digits and hyphens starting with a letter",
            database,
        )
    return database


def _check_host(host: str) -> str:
    if not _HOST_RE.match(host):
        raise InvalidInputError(
            f"Firestore emulator host {host!r} is invalid; expected HOST:PORT such as "
            "127.0.0.1:8080",
            host,
        )
    return host


def _check_root(root: str) -> str:
    segments = root.split("/")
    if len(segments) % 2 or any(not _valid_document_id(s) for s in segments):
        raise InvalidInputError(
            f"Firestore root {root!r} is invalid; expected a document path of "
            "collection/document pairs such as mltrail/default, without empty, '.', "
            "'..' or __reserved__ segments",
            root,
        )
    return root


def _valid_document_id(segment: str) -> bool:
    return (
        segment not in ("", ".", "..")
        and not _RESERVED_NAME.fullmatch(segment)
        and len(segment.encode("utf-8")) <= 1500
    )


def _check_timeout(text: str) -> float:
    try:
        timeout = float(text)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < float("inf"):
        raise InvalidInputError(
            f"Firestore URL option timeout={text!r} is invalid; "
            "expected seconds greater than 0",
            text,
        )
    return timeout


# ---------------------------------------------------------------------------
# Driver errors: translated here and nowhere else
# ---------------------------------------------------------------------------


class MissingIndexError(BackendUnavailableError):
    """Firestore rejected a query because a composite index is not deployed."""


def translate_error(error: Exception, action: str) -> MltrailError:
    """Return the mltrail error for a driver error raised while doing `action`."""
    message = getattr(error, "message", None) or str(error)
    if isinstance(error, google_exceptions.AlreadyExists):
        return AlreadyExistsError(
            f"{action} failed: the document already exists", action
        )
    if isinstance(error, google_exceptions.NotFound):
        # An update of a missing document fails with "no document to update"
        # (the emulator writes "no entity to update"). Other NotFound errors
        # name a missing database or project.
        if "to update" in message:
            return NotFoundError(
                f"{action} failed: the document does not exist", action
            )
        return BackendUnavailableError(
            f"{action} failed: Firestore reports {message!r}; check that the project "
            "and database in the URL exist",
            action,
        )
    if isinstance(error, google_exceptions.FailedPrecondition) and "index" in message:
        return MissingIndexError(
            f"{action} failed because Firestore needs a composite index ({message}); "
            "deploy docs/firestore.indexes.json with `firebase deploy --only "
            "firestore:indexes`",
            action,
        )
    if isinstance(
        error, (google_exceptions.FailedPrecondition, google_exceptions.Aborted)
    ):
        return ConflictError(
            f"{action} failed: the document changed concurrently", action
        )
    if isinstance(error, google_exceptions.InvalidArgument):
        return InvalidInputError(
            f"{action} failed: Firestore rejected the request ({message})", action
        )
    if isinstance(
        error, (google_exceptions.PermissionDenied, google_exceptions.Unauthenticated)
    ):
        return BackendUnavailableError(
            f"{action} failed: Firestore rejected the credentials ({message}); check "
            "the service account's roles",
            action,
        )
    if isinstance(error, google_auth_exceptions.DefaultCredentialsError):
        return BackendUnavailableError(
            f"{action} failed: no Google credentials were found; set "
            "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default "
            "login`, or add emulator_host=HOST:PORT to the URL for the emulator",
            action,
        )
    return BackendUnavailableError(
        f"{action} failed: Firestore is unavailable "
        f"({type(error).__name__}: {message})",
        action,
    )


def _driver_error_types() -> tuple[type[BaseException], ...]:
    return (google_exceptions.GoogleAPIError, google_auth_exceptions.GoogleAuthError)


@contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    try:
        yield
    except _driver_error_types() as error:
        raise translate_error(error, action) from error


# ---------------------------------------------------------------------------
# Field names and document layout, shared by the repositories and the harness
# ---------------------------------------------------------------------------


def escape_field_name(name: str) -> str:
    """Return a map key Firestore accepts for `name`; `unescape_field_name` inverts it.

    Firestore reserves names matching `__.*__`. Such names, and names that start
    with the escape prefix `~`, gain one leading `~`. Every other character is
    allowed in a map key: FieldPath quotes '.', '`', '*' and the like in queries.
    """
    if name.startswith(ESCAPE_PREFIX) or _RESERVED_NAME.fullmatch(name):
        return ESCAPE_PREFIX + name
    return name


def unescape_field_name(name: str) -> str:
    return name[1:] if name.startswith(ESCAPE_PREFIX) else name


def _view_path(view: str, name: str) -> str:
    return FieldPath(view, escape_field_name(name)).to_api_repr()


def dumps_record(record: dict[str, Any]) -> str:
    return json.dumps(
        record, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _sha256(*parts: str) -> str:
    return hashlib.sha256(
        "\x00".join(parts).encode("utf-8", "surrogatepass")
    ).hexdigest()


def unique_claim_id(kind: str, record: dict[str, Any]) -> str | None:
    """Return the id of the document that claims `record`'s unique key, or None."""
    names = UNIQUE_KEYS[kind]
    if not names:
        return None
    return _claim_id(kind, tuple(record[name] for name in names))


def _claim_id(kind: str, key: tuple) -> str:
    return _sha256(kind, json.dumps(list(key), ensure_ascii=False))


def entity_document(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Return the Firestore document that stores an entity record."""
    document: dict[str, Any] = {
        "doc": dumps_record(record),
        "id": record["id"],
        "revision": record["revision"],
        "created_at": to_utc(record["created_at"]),
        "updated_at": to_utc(record["updated_at"]),
        "uniq": unique_claim_id(kind, record),
        "tv": tags_view(codec.decode_value(record.get("tags") or {})),
    }
    for name in INDEXED_FIELDS[kind]:
        document[name] = record.get(name)
    if kind == "run":
        document["pv"] = params_view(codec.decode_value(record.get("params") or {}))
    return document


def tags_view(tags: dict[str, str]) -> dict[str, str]:
    """Return tags keyed by escaped name, for equality pushdown on `tags.KEY`."""
    return {escape_field_name(key): value for key, value in tags.items()}


def params_view(params: dict[str, Any]) -> dict[str, list[Any]]:
    """Return scalar param leaves keyed by their dot-joined path, as lists.

    The filter `params.a.b` finds a leaf under any path whose segments joined with
    dots read `a.b` ({"a": {"b": 1}} or {"a.b": 1}), so several leaves can share
    one entry. A list keeps them all, and `array-contains` matches any of them.
    """
    view: dict[str, list[Any]] = {}
    for path, leaf in codec.flatten(params):
        value = _view_value(leaf)
        if value is not None:
            view.setdefault(escape_field_name(".".join(path)), []).append(value)
    return view


def _view_value(value: Any) -> Any:
    """Return a value Firestore can index that equals `value` in the core's terms.

    NaN equals nothing, lists and dicts never equal a literal, so they are left
    out. Ints beyond int64 become floats, which can only add matches.
    """
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else float(value)
    if isinstance(value, float) and not math.isnan(value):
        return value
    return None


def audit_document_id(seq: int) -> str:
    return f"{seq:020d}"


def audit_document(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": record["seq"],
        "entity_id": record["entity_id"],
        "doc": dumps_record(record),
    }


# ---------------------------------------------------------------------------
# Query plans and the composite indexes they need
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanPlan:
    """A Firestore query for an entity scan: filters in order, then the order.

    `order` always ends with the document id ascending. `ordered` is true when
    the plan honours the request's order, and `dynamic` when it filters on the
    tags or params views, whose keys no composite index can name in advance.
    """

    collection: str
    filters: tuple[tuple[str, str, Any], ...]
    order: tuple[tuple[str, str], ...]
    ordered: bool
    dynamic: bool = False
    empty: bool = False


def _honoured_order(request: ScanRequest) -> str | None:
    """Return the direction of the native order in the request, or None."""
    if not request.order:
        return None
    if any(key.field != (NATIVE_ORDER_FIELD,) for key in request.order):
        return None
    return DESCENDING if request.order[0].descending else ASCENDING


def plan_scan(kind: str, request: ScanRequest, dynamic: bool = True) -> ScanPlan:
    """Return the query that serves `request`; the core filters what it returns."""
    collection = COLLECTIONS[kind]
    direction = _honoured_order(request)
    ordered = direction is not None
    if request.namespace is not None and "namespace" not in INDEXED_FIELDS[kind]:
        # The memory reference returns nothing: this kind has no namespace.
        return ScanPlan(collection, (), ((NAME_FIELD, ASCENDING),), ordered, empty=True)

    parts = conjuncts(request.filter)
    filters = _indexed_equalities(kind, request.namespace, parts)
    ranges = _created_at_ranges(parts)
    order: tuple[tuple[str, str], ...] = ((NAME_FIELD, ASCENDING),)
    if ordered or ranges:
        # Firestore orders by a range filter's field first, so a range on
        # created_at uses the same index as the ascending native order.
        order = ((NATIVE_ORDER_FIELD, direction or ASCENDING), (NAME_FIELD, ASCENDING))
    filters += ranges

    view_filter = None
    if dynamic and not ordered and not ranges:
        has_in = any(op == "in" for _, op, _ in filters)
        view_filter = _view_equality(kind, parts, allow_membership=not has_in)
    if view_filter is not None:
        filters += (view_filter,)
    return ScanPlan(collection, filters, order, ordered, view_filter is not None)


def _indexed_equalities(
    kind: str, namespace: str | None, parts: list
) -> tuple[tuple[str, str, Any], ...]:
    """Pick the namespace and at most one other indexed field to filter on."""
    candidates: dict[str, tuple[str, Any]] = {}
    for part in parts:
        field_name = _indexed_field(kind, part)
        if field_name is None:
            continue
        if isinstance(part, Compare):
            candidates[field_name] = ("==", part.value)
        elif field_name not in candidates:
            candidates[field_name] = ("in", list(dict.fromkeys(part.values)))
    chosen: dict[str, tuple[str, Any]] = {}
    if namespace is not None:
        chosen["namespace"] = ("==", namespace)
    elif "namespace" in candidates and candidates["namespace"][0] == "==":
        # An `in` on the namespace would be a second disjunction next to the
        # other field's, so only an equality is taken from the filter.
        chosen["namespace"] = candidates["namespace"]
    for name in PUSHDOWN_PRIORITY[kind]:
        if name in candidates and name not in chosen and name != "namespace":
            chosen[name] = candidates[name]
            break
    return tuple((name, op, value) for name, (op, value) in sorted(chosen.items()))


def _indexed_field(kind: str, part: Any) -> str | None:
    """Return the indexed field `part` filters by equality on, or None."""
    field_path = getattr(part, "field", ())
    if len(field_path) != 1 or field_path[0] not in INDEXED_FIELDS[kind]:
        return None
    if isinstance(part, Compare) and part.op == "=" and isinstance(part.value, str):
        return field_path[0]
    if (
        isinstance(part, In)
        and not part.negated
        and 0 < len(set(part.values)) <= MAX_DISJUNCTION_VALUES
        and all(isinstance(value, str) for value in part.values)
    ):
        return field_path[0]
    return None


_RANGE_OPERATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _created_at_ranges(parts: list) -> tuple[tuple[str, str, Any], ...]:
    """Return `created_at` comparisons with a timestamp literal, as range filters."""
    ranges = []
    for part in parts:
        if (
            not isinstance(part, Compare)
            or part.field != (NATIVE_ORDER_FIELD,)
            or part.op not in _RANGE_OPERATORS
            or not isinstance(part.value, str)
        ):
            continue
        try:
            bound = to_utc(part.value, "created_at literal")
        except InvalidInputError:
            continue  # the core reports the bad literal when it filters
        ranges.append((NATIVE_ORDER_FIELD, _RANGE_OPERATORS[part.op], bound))
    return tuple(ranges)


def _view_equality(
    kind: str, parts: list, allow_membership: bool
) -> tuple[str, str, Any] | None:
    """Return one filter on the tags or params view, or None."""
    for part in parts:
        field_path = getattr(part, "field", ())
        if len(field_path) < 2 or field_path[0] not in ("tags", "params"):
            continue
        if field_path[0] == "params" and kind != "run":
            continue
        found = _view_filter(field_path, part, allow_membership)
        if found is not None:
            return found
    return None


def _view_filter(
    field_path: tuple[str, ...], part: Any, allow_membership: bool
) -> tuple[str, str, Any] | None:
    view = "tv" if field_path[0] == "tags" else "pv"
    path = _view_path(view, ".".join(field_path[1:]))
    if isinstance(part, Compare) and part.op == "=":
        value = _literal_for(view, part.value)
        if value is not None:
            return (path, "==" if view == "tv" else "array_contains", value)
    if isinstance(part, In) and not part.negated and allow_membership:
        values = [_literal_for(view, v) for v in dict.fromkeys(part.values)]
        if values and None not in values and len(values) <= MAX_DISJUNCTION_VALUES:
            return (path, "in" if view == "tv" else "array_contains_any", values)
    return None


def _literal_for(view: str, literal: Any) -> Any:
    if view == "tv":
        return literal if isinstance(literal, str) else None
    return _view_value(literal)


@dataclass(frozen=True)
class IndexSpec:
    """A composite index: a collection group and its ordered (field, mode) pairs."""

    collection: str
    fields: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, Any]:
        fields = []
        for name, mode in self.fields:
            key = "arrayConfig" if mode == "CONTAINS" else "order"
            fields.append({"fieldPath": name, key: mode})
        return {
            "collectionGroup": self.collection,
            "queryScope": "COLLECTION",
            "fields": fields,
        }


def required_index(
    collection: str,
    filters: Iterable[tuple[str, str, Any]],
    order: Sequence[tuple[str, str]],
) -> IndexSpec | None:
    """Return the composite index a query needs, or None when single-field indexes do.

    Firestore serves equality-only filters by merging single-field indexes, and
    one ordered field with range filters on that field from its single-field
    index. Any other combination needs a composite index: the equality fields,
    then array fields, then the order, with the document id listed when its
    direction differs from the last ordered field.
    """
    equalities = sorted({name for name, op, _ in filters if op in ("==", "in")})
    arrays = sorted({name for name, op, _ in filters if op.startswith("array")})
    ranges = {name for name, op, _ in filters if op in _RANGE_OPERATORS}
    ordered = list(order)
    if len(ordered) > 1 and ordered[-1] == (NAME_FIELD, ordered[-2][1]):
        ordered.pop()
    if ordered == [(NAME_FIELD, ASCENDING)]:
        ordered = []
    if not ordered and not ranges:
        return None
    if (
        len(ordered) == 1
        and not equalities
        and not arrays
        and ranges <= {ordered[0][0]}
    ):
        return None
    fields = [(name, ASCENDING) for name in equalities]
    fields += [(name, "CONTAINS") for name in arrays]
    fields += ordered
    return IndexSpec(collection, tuple(fields))


def _chunk_query_order() -> tuple[tuple[str, str], ...]:
    return (("bucket", ASCENDING), ("lo", ASCENDING), (NAME_FIELD, ASCENDING))


def _fixed_indexes() -> list[IndexSpec]:
    """Return the indexes of the metric history and blob queries."""
    chunk = required_index(
        COLLECTIONS["metric_chunk"],
        [("run", "==", ""), ("key", "==", ""), ("bucket", ">=", 0)],
        _chunk_query_order(),
    )
    blob = required_index(
        COLLECTIONS["blob"],
        [("namespace", "==", "")],
        [("key", ASCENDING), (NAME_FIELD, ASCENDING)],
    )
    return [index for index in (chunk, blob) if index is not None]


def _sample_requests(kind: str) -> Iterator[ScanRequest]:
    """Yield one scan request per shape the planner distinguishes for `kind`."""
    indexed = INDEXED_FIELDS[kind]
    namespaces = (None, "ns") if "namespace" in indexed else (None,)
    shapes = itertools.product((None, "eq", "in"), repeat=len(indexed))
    for namespace, choice in itertools.product(namespaces, shapes):
        parts = []
        for name, shape in zip(indexed, choice):
            if shape == "eq":
                parts.append(Compare((name,), "=", "x"))
            elif shape == "in":
                parts.append(In((name,), ("x", "y")))
        for order, with_range in itertools.product((None, False, True), (False, True)):
            items = list(parts)
            if with_range:
                items.append(
                    Compare((NATIVE_ORDER_FIELD,), ">=", "2024-01-01T00:00:00Z")
                )
            keys = () if order is None else (OrderKey((NATIVE_ORDER_FIELD,), order),)
            yield ScanRequest(
                namespace=namespace, filter=_conjunction(items), order=keys
            )


def _conjunction(items: list) -> Any:
    if not items:
        return None
    return items[0] if len(items) == 1 else And(tuple(items))


def firestore_indexes() -> dict[str, Any]:
    """Return the firestore.indexes.json content that every query of this backend needs.

    `fieldOverrides` switch off single-field indexes on large values that no query
    filters on, and keep only the index kinds that the tags and params views use.
    This keeps documents under Firestore's limit of 40,000 index entries.
    """
    indexes: dict[IndexSpec, None] = {}
    for kind in _ENTITY_TYPES:
        for request in _sample_requests(kind):
            plan = plan_scan(kind, request)
            index = required_index(plan.collection, plan.filters, plan.order)
            if index is not None:
                indexes[index] = None
    for index in _fixed_indexes():
        indexes[index] = None
    ordered = sorted(indexes, key=lambda spec: (spec.collection, spec.fields))
    return {
        "indexes": [spec.as_json() for spec in ordered],
        "fieldOverrides": _field_overrides(),
    }


def _field_overrides() -> list[dict[str, Any]]:
    unindexed = [(COLLECTIONS[kind], "doc") for kind in _ENTITY_TYPES]
    unindexed += [
        (COLLECTIONS["metric_chunk"], name) for name in ("points", "seqs", "extras")
    ]
    unindexed += [
        (COLLECTIONS["metric_latest"], "k"),
        (COLLECTIONS["audit"], "doc"),
        (COLLECTIONS["blob"], "doc"),
    ]
    overrides = [
        {"collectionGroup": group, "fieldPath": name, "indexes": []}
        for group, name in unindexed
    ]
    ascending = {"order": ASCENDING, "queryScope": "COLLECTION"}
    for kind in _ENTITY_TYPES:
        overrides.append(
            {
                "collectionGroup": COLLECTIONS[kind],
                "fieldPath": "tv",
                "indexes": [ascending],
            }
        )
    overrides.append(
        {
            "collectionGroup": COLLECTIONS["run"],
            "fieldPath": "pv",
            "indexes": [{"arrayConfig": "CONTAINS", "queryScope": "COLLECTION"}],
        }
    )
    return sorted(
        overrides, key=lambda item: (item["collectionGroup"], item["fieldPath"])
    )


def write_indexes_file(path: str | os.PathLike) -> None:
    """Write `firestore_indexes()` as JSON, the format `firebase deploy` reads."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(firestore_indexes(), handle, indent=2)
        handle.write("\n")


# ---------------------------------------------------------------------------
# The connection: one client, a root document, and every remote call
# ---------------------------------------------------------------------------


@dataclass
class _Write:
    """One write of a batched commit."""

    operation: str
    reference: Any
    data: dict[str, Any] | None = None
    option: Any = None
    size: int = 256

    def apply(self, batch: Any) -> None:
        if self.operation == "set":
            batch.set(self.reference, self.data)
        elif self.operation == "create":
            batch.create(self.reference, self.data)
        elif self.operation == "update":
            batch.update(self.reference, self.data, option=self.option)
        else:
            batch.delete(self.reference, option=self.option)


def estimated_write_bytes(write: _Write) -> int:
    """Estimate the bytes one write stores, by Firestore's storage size rules.

    The rules are those of "Storage size calculations" in the Firestore
    documentation. A set or create counts the size of the whole document: its
    name, its fields and 32 bytes. An update counts the same for the fields
    it sends only, with a dotted field path sized as one name. A delete
    counts 0.
    """
    if write.operation == "delete":
        return 0
    segments = write.reference.path.split("/")
    name = sum(_string_bytes(segment) for segment in segments) + 16
    return name + _map_bytes(write.data or {}) + 32


def _string_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + 1


def _map_bytes(fields: dict[str, Any]) -> int:
    return sum(_string_bytes(name) + _value_bytes(v) for name, v in fields.items())


def _value_bytes(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return _string_bytes(value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return _map_bytes(value)
    if isinstance(value, (list, tuple)):
        return sum(_value_bytes(element) for element in value)
    # Integers, floats and timestamps take 8 bytes. The backend writes no
    # other types (references, geographical points, vectors).
    return 8


_EMULATOR_ENV_LOCK = threading.Lock()


def _make_client(settings: FirestoreSettings) -> Any:
    """Build a client for the project, reaching the emulator when one is configured."""
    if settings.emulator_host is None:
        with _driver_errors(f"connect to Firestore project {settings.project!r}"):
            return firestore.Client(
                project=settings.project, database=settings.database
            )
    # The client finds the emulator only through FIRESTORE_EMULATOR_HOST, read once
    # when it is built, so the variable is set for that moment when the URL names
    # the host.
    with _EMULATOR_ENV_LOCK:
        previous = os.environ.get(EMULATOR_ENV)
        os.environ[EMULATOR_ENV] = settings.emulator_host
        try:
            return firestore.Client(
                project=settings.project,
                database=settings.database,
                credentials=AnonymousCredentials(),
            )
        finally:
            if previous is None:
                os.environ.pop(EMULATOR_ENV, None)
            else:
                os.environ[EMULATOR_ENV] = previous


class _Connection:
    """A Firestore client scoped to one root document; every remote call goes here."""

    def __init__(
        self,
        settings: FirestoreSettings,
        client: Any = None,
        track_writes: bool = False,
    ) -> None:
        self.settings = settings
        self.owns_client = client is None
        self.client = _make_client(settings) if client is None else client
        self.root = self.client.document(settings.root)
        # Paths of the documents this connection wrote, kept when a test harness
        # requests it, so that it can delete them without queries.
        self.written: dict[str, Any] | None = {} if track_writes else None
        self.counters = WriteCounters()
        transient = (
            google_exceptions.ServiceUnavailable,
            google_exceptions.ResourceExhausted,
        )
        self.read_options = {
            "timeout": settings.timeout,
            "retry": google_retry.Retry(
                initial=0.1,
                maximum=5.0,
                multiplier=1.5,
                timeout=settings.timeout,
                predicate=google_retry.if_exception_type(
                    *transient,
                    google_exceptions.InternalServerError,
                    google_exceptions.DeadlineExceeded,
                ),
            ),
        }
        # Commits retry only errors that mean the request was not applied.
        self.write_options = {
            "timeout": settings.timeout,
            "retry": google_retry.Retry(
                initial=0.1,
                maximum=5.0,
                multiplier=1.5,
                timeout=settings.timeout,
                predicate=google_retry.if_exception_type(*transient),
            ),
        }

    def collection(self, kind: str) -> Any:
        return self.root.collection(COLLECTIONS[kind])

    def get(
        self, reference: Any, action: str, field_paths: Sequence[str] | None = None
    ):
        with _driver_errors(action):
            return reference.get(field_paths=field_paths, **self.read_options)

    def get_all(
        self,
        references: Sequence[Any],
        action: str,
        field_paths: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Return existing snapshots by document id, reading in few round trips."""
        found = {}
        for group in chunked(references, GET_ALL_CHUNK):
            with _driver_errors(action):
                snapshots = list(
                    self.client.get_all(
                        group, field_paths=field_paths, **self.read_options
                    )
                )
            found.update({s.id: s for s in snapshots if s.exists})
        return found

    def query(self, query: Any, action: str) -> list[Any]:
        with _driver_errors(action):
            return list(query.stream(**self.read_options))

    def pages(
        self, query: Any, action: str, page_size: int, start_after: Any = None
    ) -> Iterator[Any]:
        """Stream a query's results page by page, so memory stays bounded."""
        cursor = start_after
        while True:
            page = query.limit(page_size)
            if cursor is not None:
                page = page.start_after(cursor)
            snapshots = self.query(page, action)
            yield from snapshots
            if len(snapshots) < page_size:
                return
            cursor = snapshots[-1]

    def commit(self, writes: Sequence[_Write], action: str) -> list[Any]:
        """Apply writes in one atomic commit; return the write results.

        Every write of the backend goes through here, so the connection's
        counters add the documents of each successful commit.
        """
        batch = self.client.batch()
        for write in writes:
            write.apply(batch)
            if self.written is not None:
                self.written[write.reference.path] = write.reference
        with _driver_errors(action):
            results = batch.commit(**self.write_options)
        self.counters.add(len(results), sum(estimated_write_bytes(write)
                                            for write in writes))
        return results

    def count(self, kind: str, limit: int) -> int:
        """Count a collection's documents with an aggregation query, up to `limit`."""
        name = COLLECTIONS[kind]
        query = self.collection(kind).limit(limit).count(alias="documents")
        with _driver_errors(f"count the documents of collection {name!r}"):
            result = query.get(**self.read_options)
        # The emulator returns the count of an empty collection as 0.0.
        return int(result[0][0].value)

    def commit_all(self, writes: Sequence[_Write], action: str) -> None:
        """Apply writes in as few commits as the limits allow; not atomic as a whole."""
        for group in _commit_groups(writes):
            self.commit(group, action)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def _commit_groups(writes: Sequence[_Write]) -> Iterator[list[_Write]]:
    group: list[_Write] = []
    size = 0
    for write in writes:
        if group and (
            len(group) >= MAX_WRITES_PER_COMMIT or size + write.size > MAX_COMMIT_BYTES
        ):
            yield group
            group, size = [], 0
        group.append(write)
        size += write.size
    if group:
        yield group


def _fits_one_commit(writes: Sequence[_Write], reserved: int = 0) -> bool:
    """Tell whether `writes` and `reserved` small writes fit in one commit."""
    return (
        len(writes) + reserved <= MAX_WRITES_PER_COMMIT
        and sum(write.size for write in writes) <= MAX_COMMIT_BYTES - reserved * 4096
    )


class _RecentStates:
    """A bounded cache of document states as this process last saw them.

    The states only save reads before precondition writes. A stale state makes
    the precondition fail, and the caller reads again. The least recently used
    state goes first.
    """

    def __init__(self, size: int = RECENT_STATES_SIZE) -> None:
        self._size = size
        self._states: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def recall(self, document_id: str) -> Any:
        with self._lock:
            return self._states.get(document_id)

    def remember(self, document_id: str, state: Any) -> None:
        """Store the state of a document; None removes it."""
        with self._lock:
            self._states.pop(document_id, None)
            if state is not None:
                self._states[document_id] = state
                if len(self._states) > self._size:
                    self._states.popitem(last=False)


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.005 * (attempt + 1)))


# ---------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """The revision, update time and unique-key claim of an entity document."""

    revision: int
    update_time: Any
    uniq: str | None


class FirestoreEntityRepository(EntityRepository):
    """One collection per kind, plus unique-key claim documents."""

    def __init__(self, connection: _Connection, entity_type: type[Entity]) -> None:
        self.entity_type = entity_type
        self._conn = connection
        self._collection = connection.collection(entity_type.kind)
        self._claims = connection.collection("unique_key")
        # An update whose base revision matches what this process last read
        # needs no read before its precondition write.
        self._seen = _RecentStates()

    def _from_snapshot(self, snapshot: Any) -> Entity:
        record = json.loads(snapshot.get("doc"))
        self._seen.remember(
            record["id"],
            _Seen(
                record["revision"],
                snapshot.update_time,
                unique_claim_id(self.kind, record),
            ),
        )
        return self.entity_type.from_record(record)

    def insert(self, entity: Entity) -> None:
        record = entity.to_record()
        document = entity_document(self.kind, record)
        writes = [_Write("create", self._collection.document(entity.id), document)]
        if document["uniq"] is not None:
            writes.append(
                _Write(
                    "create",
                    self._claims.document(document["uniq"]),
                    {"kind": self.kind, "entity_id": entity.id},
                )
            )
        try:
            results = self._conn.commit(writes, f"insert {self.kind} {entity.id!r}")
        except AlreadyExistsError as error:
            raise self._insert_conflict(entity, record) from error
        self._seen.remember(
            entity.id, _Seen(entity.revision, results[0].update_time, document["uniq"])
        )

    def _insert_conflict(self, entity: Entity, record: dict[str, Any]) -> MltrailError:
        snapshot = self._conn.get(
            self._collection.document(entity.id),
            f"read {self.kind} {entity.id!r}",
            ["id"],
        )
        if snapshot.exists:
            return AlreadyExistsError(
                f"{self.kind} {entity.id!r} already exists", entity.id
            )
        unique = tuple(record[name] for name in self.unique_key)
        return AlreadyExistsError(
            f"{self.kind} with {dict(zip(self.unique_key, unique))} already exists",
            unique,
        )

    def get(self, entity_id: str) -> Entity:
        snapshot = self._conn.get(
            self._collection.document(entity_id),
            f"read {self.kind} {entity_id!r}",
            ["doc"],
        )
        if not snapshot.exists:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self._from_snapshot(snapshot)

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, Entity]:
        references = [self._collection.document(i) for i in dict.fromkeys(entity_ids)]
        snapshots = self._conn.get_all(references, f"read {self.kind}s", ["doc"])
        return {
            entity_id: self._from_snapshot(snapshot)
            for entity_id, snapshot in snapshots.items()
        }

    def find_unique(self, key: tuple) -> Entity | None:
        # Two document reads cost less than a query, most of all on the emulator.
        action = f"find {self.kind} by {dict(zip(self.unique_key, key))}"
        claim = self._conn.get(
            self._claims.document(_claim_id(self.kind, tuple(key))),
            action,
            ["entity_id"],
        )
        if not claim.exists:
            return None
        snapshot = self._conn.get(
            self._collection.document(claim.get("entity_id")), action, ["doc"]
        )
        return self._from_snapshot(snapshot) if snapshot.exists else None

    def update(self, entity: Entity) -> None:
        record = entity.to_record()
        document = entity_document(self.kind, record)
        seen = self._seen.recall(entity.id)
        for _ in range(MAX_PRECONDITION_ATTEMPTS):
            if (
                seen is None
                or seen.revision != entity.revision - 1
                or seen.uniq != document["uniq"]
            ):
                seen = self._check_base(entity, document["uniq"])
            reference = self._collection.document(entity.id)
            option = self._conn.client.write_option(last_update_time=seen.update_time)
            try:
                results = self._conn.commit(
                    [_Write("update", reference, document, option)],
                    f"update {self.kind} {entity.id!r}",
                )
            except (ConflictError, NotFoundError):
                # Another writer (or a raw write) got there first; re-read to tell
                # a lost race from a document that changed without a new revision.
                seen = None
                self._seen.remember(entity.id, None)
                continue
            self._seen.remember(
                entity.id,
                _Seen(entity.revision, results[0].update_time, document["uniq"]),
            )
            return
        raise ConflictError(
            f"{self.kind} {entity.id!r} kept changing concurrently", entity.id
        )

    def _check_base(self, entity: Entity, uniq: str | None) -> _Seen:
        """Read the stored revision; raise unless `entity` may replace it."""
        snapshot = self._conn.get(
            self._collection.document(entity.id),
            f"read {self.kind} {entity.id!r}",
            ["revision", "uniq"],
        )
        if not snapshot.exists:
            raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
        revision = snapshot.get("revision")
        if revision != entity.revision - 1:
            raise ConflictError(
                f"{self.kind} {entity.id!r} was changed concurrently (stored revision "
                f"{revision}, expected {entity.revision - 1})",
                entity.id,
            )
        if snapshot.get("uniq") != uniq:
            raise InvalidInputError(
                f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot "
                "change",
                entity.id,
            )
        return _Seen(revision, snapshot.update_time, uniq)

    def delete(self, entity_id: str) -> None:
        reference = self._collection.document(entity_id)
        snapshot = self._conn.get(
            reference, f"read {self.kind} {entity_id!r}", ["uniq"]
        )
        self._seen.remember(entity_id, None)
        if not snapshot.exists:
            return
        writes = [_Write("delete", reference)]
        uniq = snapshot.get("uniq")
        if uniq is not None:
            writes.append(_Write("delete", self._claims.document(uniq)))
        self._conn.commit(writes, f"delete {self.kind} {entity_id!r}")

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        plan = plan_scan(self.kind, request)
        if plan.empty:
            return
        try:
            first, snapshots = self._start(plan, request)
        except MissingIndexError:
            if not plan.dynamic:
                raise
            # Production Firestore may lack an index for a tags or params filter
            # combined with other equalities; the core filters the wider scan.
            logger.warning(
                "Firestore needs an index for a %s filter on %s; scanning without it",
                self.kind,
                plan.filters[-1][0],
            )
            plan = plan_scan(self.kind, request, dynamic=False)
            first, snapshots = self._start(plan, request)
        for snapshot in itertools.chain(first, snapshots):
            yield self.entity_type.from_record(json.loads(snapshot.get("doc")))

    def _start(self, plan: ScanPlan, request: ScanRequest) -> tuple[list, Iterator]:
        """Run the plan and fetch its first page, where a missing index shows up."""
        query = self._collection
        for name, op, value in plan.filters:
            query = query.where(filter=FieldFilter(name, op, value))
        for name, direction in plan.order:
            query = query.order_by(name, direction=direction)
        query = query.select(["doc", *(n for n, _ in plan.order if n != NAME_FIELD)])
        start = None
        if plan.ordered and request.after is not None:
            *values, last_id = request.after
            start = {
                NATIVE_ORDER_FIELD: values[0],
                NAME_FIELD: self._collection.document(last_id),
            }
        snapshots = self._conn.pages(query, f"scan {self.kind}s", SCAN_PAGE_SIZE, start)
        first = list(itertools.islice(snapshots, 1))
        return first, snapshots


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


# A row is one point as (step, time in microseconds, seq, value, extras JSON or
# None); its first three items are the history order.


def point_row(point: MetricPoint) -> tuple[int, int, str, float, str | None]:
    extras = point.extras()
    return (
        point.step,
        to_micros(point.timestamp),
        point.seq,
        point.value,
        None if extras is None else dumps_record(extras),
    )


def _row_order(row: tuple) -> tuple[int, int, str]:
    return row[0], row[1], row[2]


def encode_order_key(step: int, micros: int, seq: str) -> bytes:
    """Return bytes whose byte order is the history order (step, time, seq)."""
    return _ORDER_PREFIX.pack(step, micros + _MICROS_OFFSET) + seq.encode(
        "utf-8", "surrogatepass"
    )


def decode_order_key(data: bytes) -> tuple[int, int, str]:
    step, shifted = _ORDER_PREFIX.unpack_from(data)
    seq = data[_ORDER_PREFIX.size :].decode("utf-8", "surrogatepass")
    return (step, shifted - _MICROS_OFFSET, seq)


def encode_chunk(run_id: str, key: str, bucket: int, rows: Sequence[tuple]) -> dict:
    """Return the document of one chunk: rows sorted in history order, packed.

    Values are stored as their IEEE 754 bytes, because Firestore keeps only one
    NaN (payloads and the sign bit of NaN are lost in a double field).
    """
    ordered = sorted(rows, key=_row_order)
    prefix = os.path.commonprefix([row[2] for row in ordered])
    document = {
        "run": run_id,
        "key": key,
        "bucket": bucket,
        "lo": encode_order_key(*_row_order(ordered[0])),
        "hi": encode_order_key(*_row_order(ordered[-1])),
        "n": len(ordered),
        "points": b"".join(_POINT.pack(row[0], row[1], row[3]) for row in ordered),
        "prefix": prefix,
        "seqs": json.dumps(
            [row[2][len(prefix) :] for row in ordered], separators=(",", ":")
        ),
    }
    if any(row[4] is not None for row in ordered):
        document["extras"] = json.dumps(
            [row[4] for row in ordered], separators=(",", ":")
        )
    return document


def decode_chunk(document: dict[str, Any]) -> Iterator[tuple]:
    """Yield the rows of a chunk document in history order."""
    prefix = document["prefix"]
    seqs = json.loads(document["seqs"])
    extras = json.loads(document["extras"]) if "extras" in document else None
    for index, (step, micros, value) in enumerate(
        _POINT.iter_unpack(document["points"])
    ):
        yield (
            step,
            micros,
            prefix + seqs[index],
            value,
            None if extras is None else extras[index],
        )


def _row_size(row: tuple) -> int:
    return _POINT.size + len(row[2]) + 8 + (0 if row[4] is None else len(row[4]))


def plan_chunks(run_id: str, points: Sequence[MetricPoint]) -> list[tuple[str, dict]]:
    """Split a batch into chunk documents; return (document id, document) pairs.

    Points are grouped by metric and step bucket, sorted by seq and cut by count
    and size, so the same batch always gives the same chunks and a retry
    overwrites them instead of adding copies.

    NOTE: a retry must resend the whole batch, as the core does. Resending only
    some of its points rewrites their chunks with fewer points.
    """
    groups: dict[tuple[str, int], list[tuple]] = {}
    for point in points:
        group = groups.setdefault((point.key, point.step >> BUCKET_BITS), [])
        group.append(point_row(point))
    chunks = []
    for (key, bucket), rows in groups.items():
        rows.sort(key=lambda row: row[2])
        for piece in _cut(rows):
            document_id = _sha256(run_id, key, str(bucket), piece[0][2])
            chunks.append((document_id, encode_chunk(run_id, key, bucket, piece)))
    return chunks


def _cut(rows: list[tuple]) -> Iterator[list[tuple]]:
    piece: list[tuple] = []
    size = 0
    for row in rows:
        row_size = _row_size(row)
        if piece and (
            len(piece) >= CHUNK_MAX_POINTS or size + row_size > CHUNK_MAX_BYTES
        ):
            yield piece
            piece, size = [], 0
        piece.append(row)
        size += row_size
    if piece:
        yield piece


def encode_latest(row: tuple) -> bytes:
    """Pack one latest point: step, time, value bits, seq and extras JSON."""
    step, micros, seq, value, extras = row
    seq_bytes = seq.encode("utf-8", "surrogatepass")
    return (
        _POINT.pack(step, micros, value)
        + _SEQ_LENGTH.pack(len(seq_bytes))
        + seq_bytes
        + (b"" if extras is None else extras.encode("utf-8"))
    )


def decode_latest(run_id: str, key: str, data: bytes) -> MetricPoint:
    step, micros, value = _POINT.unpack_from(data)
    (length,) = _SEQ_LENGTH.unpack_from(data, _POINT.size)
    start = _POINT.size + _SEQ_LENGTH.size
    seq = data[start : start + length].decode("utf-8", "surrogatepass")
    extras = data[start + length :]
    return _point(run_id, key, (step, micros, seq, value, extras or None))


def _point(run_id: str, key: str, row: tuple) -> MetricPoint:
    step, micros, seq, value, extras = row
    point = MetricPoint(
        run_id=run_id,
        key=key,
        value=value,
        step=step,
        timestamp=EPOCH + timedelta(microseconds=micros),
        seq=seq,
    )
    return point.with_extras(json.loads(extras)) if extras else point


def _latest_order(data: bytes) -> tuple[int, int, str]:
    step, micros, _ = _POINT.unpack_from(data)
    (length,) = _SEQ_LENGTH.unpack_from(data, _POINT.size)
    start = _POINT.size + _SEQ_LENGTH.size
    return (step, micros, data[start : start + length].decode("utf-8", "surrogatepass"))


def _latest_field(key: str) -> str:
    return _view_path("k", key)


class FirestoreMetricRepository(MetricRepository):
    """Append-only chunk documents plus one latest-point document per run."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._chunks = connection.collection("metric_chunk")
        self._latest = connection.collection("metric_latest")
        self._states = _RecentStates()

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        chunk_writes = [
            _Write(
                "set",
                self._chunks.document(document_id),
                document,
                size=len(document["points"])
                + len(document["seqs"])
                + len(document.get("extras", ""))
                + 512,
            )
            for document_id, document in plan_chunks(run_id, points)
        ]
        best: dict[str, MetricPoint] = {}
        for point in points:
            current = best.get(point.key)
            if current is None or point.order_key() > current.order_key():
                best[point.key] = point
        if not _fits_one_commit(chunk_writes, reserved=1):
            self._conn.commit_all(chunk_writes, f"append metrics of run {run_id!r}")
            chunk_writes = []
        self._commit_latest(run_id, best, chunk_writes)

    def _commit_latest(
        self, run_id: str, best: dict[str, MetricPoint], chunk_writes: list[_Write]
    ) -> None:
        """Commit the chunks with the latest points that beat the stored ones.

        The latest document is updated with an update-time precondition, so two
        appenders never overwrite each other's newer point; the loser re-reads
        and tries again. The state this process last wrote is kept, so an
        appender that is alone on a run writes without reading first.
        """
        rows = {escape_field_name(key): point_row(point) for key, point in best.items()}
        state = self._states.recall(run_id)
        for attempt in range(MAX_PRECONDITION_ATTEMPTS):
            if state is None or not state.knows(rows):
                state = self._read_state(run_id, rows)
            changes = {
                name: encode_latest(row)
                for name, row in rows.items()
                if state.beaten_by(name, row)
            }
            writes = list(chunk_writes)
            if changes:
                writes.append(self._latest_write(run_id, state, changes))
            if not writes:
                return
            try:
                results = self._conn.commit(writes, f"append metrics of run {run_id!r}")
            except (ConflictError, AlreadyExistsError, NotFoundError):
                logger.debug(
                    "latest metrics of run %s changed concurrently, retrying "
                    "(attempt %d)",
                    run_id,
                    attempt + 1,
                )
                state = None
                _backoff(attempt)
                continue
            if changes:
                self._states.remember(
                    run_id, state.after(results[-1].update_time, changes)
                )
            return
        self._states.remember(run_id, None)
        raise ConflictError(
            f"latest metrics of run {run_id!r} kept changing concurrently", run_id
        )

    def _read_state(self, run_id: str, rows: dict[str, tuple]) -> _LatestState:
        snapshot = self._conn.get(
            self._latest.document(run_id),
            f"read latest metrics of run {run_id!r}",
            [FieldPath("k", name).to_api_repr() for name in rows],
        )
        stored = _stored_map(snapshot)
        return _LatestState(
            snapshot.exists,
            snapshot.update_time,
            {name: stored.get(name) for name in rows},
        )

    def _latest_write(
        self, run_id: str, state: _LatestState, changes: dict[str, bytes]
    ) -> _Write:
        reference = self._latest.document(run_id)
        if not state.exists:
            return _Write("create", reference, {"run": run_id, "k": changes})
        option = self._conn.client.write_option(last_update_time=state.update_time)
        data = {
            FieldPath("k", name).to_api_repr(): value for name, value in changes.items()
        }
        return _Write("update", reference, data, option)

    def history(
        self, run_id, key, *, min_step=None, max_step=None, start=None, end=None
    ) -> Iterator[MetricPoint]:
        query = (
            self._chunks.where(filter=FieldFilter("run", "==", run_id))
            .where(filter=FieldFilter("key", "==", key))
            .where(filter=FieldFilter("bucket", ">=", (min_step or 0) >> BUCKET_BITS))
        )
        if max_step is not None:
            query = query.where(
                filter=FieldFilter("bucket", "<=", max_step >> BUCKET_BITS)
            )
        for name, direction in _chunk_query_order():
            query = query.order_by(name, direction=direction)
        snapshots = self._conn.pages(
            query,
            f"read history of metric {key!r} of run {run_id!r}",
            HISTORY_PAGE_CHUNKS,
        )
        bounds = _Bounds(min_step, max_step, start, end)
        accepts = None if bounds.unbounded else bounds.accepts
        for row in merge_chunks((s.to_dict() for s in snapshots), accepts):
            yield _point(run_id, key, row)

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        references = [self._latest.document(r) for r in dict.fromkeys(run_ids)]
        fields = ["k"] if keys is None else [_latest_field(key) for key in keys]
        if not references or not fields:
            return {}
        snapshots = self._conn.get_all(references, "read latest metrics", fields)
        result: dict[str, dict[str, MetricPoint]] = {}
        for run_id, snapshot in snapshots.items():
            points = {
                unescape_field_name(name): data
                for name, data in _stored_map(snapshot).items()
            }
            if points:
                result[run_id] = {
                    key: decode_latest(run_id, key, data)
                    for key, data in points.items()
                }
        return result

    def keys(self, run_id: str) -> list[str]:
        snapshot = self._conn.get(
            self._latest.document(run_id), f"read metric keys of run {run_id!r}", ["k"]
        )
        return sorted(unescape_field_name(name) for name in _stored_map(snapshot))

    def delete_run(self, run_id: str) -> None:
        # Chunks go first and the latest document last, so a failure part way
        # leaves a run that still reports metrics and a retry finishes the job.
        query = (
            self._chunks.where(filter=FieldFilter("run", "==", run_id))
            .order_by(NAME_FIELD)
            .select([])
        )
        action = f"delete metrics of run {run_id!r}"
        chunks = self._conn.pages(query, action, DELETE_PAGE_SIZE)
        writes = [_Write("delete", snapshot.reference) for snapshot in chunks]
        writes.append(_Write("delete", self._latest.document(run_id)))
        self._states.remember(run_id, None)
        self._conn.commit_all(writes, action)

    def runs_with_metrics(self) -> Iterator[str]:
        query = self._latest.order_by(NAME_FIELD).select([])
        for snapshot in self._conn.pages(query, "list runs with metrics", 1_000):
            yield snapshot.id


@dataclass(frozen=True)
class _LatestState:
    """Entries of a latest document as of `update_time`; None marks a known absence."""

    exists: bool
    update_time: Any
    entries: dict[str, bytes | None]

    def knows(self, rows: dict[str, tuple]) -> bool:
        return all(name in self.entries for name in rows)

    def beaten_by(self, name: str, row: tuple) -> bool:
        """Tell whether `row` beats the stored entry for `name`."""
        current = self.entries[name]
        return current is None or _latest_order(current) < _row_order(row)

    def after(self, update_time: Any, changes: dict[str, bytes]) -> _LatestState:
        return _LatestState(True, update_time, {**self.entries, **changes})


def _stored_map(snapshot: Any) -> dict[str, Any]:
    if not snapshot.exists:
        return {}
    try:
        return snapshot.get("k") or {}
    except KeyError:
        return {}


@dataclass(frozen=True)
class _Bounds:
    """Inclusive step and time bounds of a history read."""

    min_step: int | None
    max_step: int | None
    start: datetime | None
    end: datetime | None
    start_micros: int | None = field(init=False)
    end_micros: int | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "start_micros", None if self.start is None else to_micros(self.start)
        )
        object.__setattr__(
            self, "end_micros", None if self.end is None else to_micros(self.end)
        )

    @property
    def unbounded(self) -> bool:
        return (
            self.min_step is None
            and self.max_step is None
            and self.start is None
            and self.end is None
        )

    def accepts(self, row: tuple) -> bool:
        step, micros = row[0], row[1]
        return not (
            self.min_step is not None
            and step < self.min_step
            or self.max_step is not None
            and step > self.max_step
            or self.start_micros is not None
            and micros < self.start_micros
            or self.end_micros is not None
            and micros > self.end_micros
        )


def merge_chunks(chunks: Iterable[dict[str, Any]], accepts=None) -> Iterator[tuple]:
    """Merge chunks that arrive sorted by their first point into one sorted stream.

    A chunk is opened only when its first point could come next, so memory keeps
    only the chunks whose ranges overlap the current position: one for a run logged
    in order, a few when batches interleave. A chunk that overlaps no other is
    streamed without the heap.
    """
    heap: list[tuple] = []
    counter = itertools.count()
    pending = (
        (decode_order_key(c["lo"]), decode_order_key(c["hi"]), c) for c in chunks
    )
    upcoming = next(pending, None)
    while True:
        while upcoming is not None and (not heap or upcoming[0] <= heap[0][:3]):
            rows = decode_chunk(upcoming[2])
            if accepts is not None:
                rows = (row for row in rows if accepts(row))
            _push_next(heap, counter, rows, upcoming[1])
            upcoming = next(pending, None)
        if not heap:
            return
        if len(heap) == 1 and (upcoming is None or heap[0][-1] < upcoming[0]):
            *_, row, rows, _ = heap.pop()
            yield row
            yield from rows
            continue
        *_, row, rows, last = heapq.heappop(heap)
        yield row
        _push_next(heap, counter, rows, last)


def _push_next(
    heap: list, counter: Iterator[int], rows: Iterator[tuple], last: tuple
) -> None:
    """Push a chunk's next row, keyed by its order and a tie-breaking counter."""
    row = next(rows, None)
    if row is not None:
        heapq.heappush(heap, (row[0], row[1], row[2], next(counter), row, rows, last))


# ---------------------------------------------------------------------------
# Lineage, audit and blobs
# ---------------------------------------------------------------------------


class FirestoreLineageRepository(LineageRepository):
    """Nodes keyed by id; edges keyed by a hash of (source, type, target)."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._nodes = connection.collection("lineage_node")
        self._edges = connection.collection("lineage_edge")

    def put_node(self, node: LineageNode) -> None:
        record = node.to_record()
        reference = self._nodes.document(node.id)
        try:
            self._conn.commit(
                [_Write("create", reference, record)], f"add lineage node {node.id!r}"
            )
            return
        except AlreadyExistsError:
            existing = self.get_node(node.id)
        if existing.kind != node.kind:
            raise AlreadyExistsError(
                f"lineage node {node.id!r} exists as a {existing.kind.value}, not a "
                f"{node.kind.value}",
                node.id,
            )

    def get_node(self, node_id: str) -> LineageNode:
        snapshot = self._conn.get(
            self._nodes.document(node_id), f"read lineage node {node_id!r}"
        )
        if not snapshot.exists:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return LineageNode.from_record(snapshot.to_dict())

    def add_edge(self, edge: LineageEdge) -> None:
        data = {**edge.to_record(), "key": edge.key}
        try:
            self._conn.commit(
                [_Write("create", self._edges.document(_sha256(edge.key)), data)],
                f"add lineage edge {edge.key!r}",
            )
        except AlreadyExistsError:
            return  # edges are immutable: the stored one stays as it is

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        end = "downstream" if direction == "upstream" else "upstream"
        query = self._edges.where(filter=FieldFilter(end, "==", node_id))
        found = self._conn.query(query, f"read {direction} edges of {node_id!r}")
        edges = [LineageEdge.from_record(s.to_dict()) for s in found]
        return sorted(edges, key=lambda e: (e.source, e.type.value, e.target))

    def scan_nodes(self) -> Iterator[LineageNode]:
        query = self._nodes.order_by(NAME_FIELD)
        for snapshot in self._conn.pages(query, "scan lineage nodes", 1_000):
            yield LineageNode.from_record(snapshot.to_dict())

    def scan_edges(self) -> Iterator[LineageEdge]:
        query = self._edges.order_by("key")
        for snapshot in self._conn.pages(query, "scan lineage edges", 1_000):
            yield LineageEdge.from_record(snapshot.to_dict())

    def delete_node(self, node_id: str) -> None:
        action = f"delete lineage node {node_id!r}"
        touching: dict[str, Any] = {}
        for end in ("source", "target"):
            query = self._edges.where(filter=FieldFilter(end, "==", node_id)).select([])
            touching.update(
                {s.id: s.reference for s in self._conn.query(query, action)}
            )
        writes = [_Write("delete", reference) for reference in touching.values()]
        writes.append(_Write("delete", self._nodes.document(node_id)))
        self._conn.commit_all(writes, action)


class FirestoreAuditRepository(AuditRepository):
    """Events keyed by their zero-padded seq, so document order is chain order.

    Appending event n also sets `next` on event n-1 in the same commit. That
    keeps the chain gapless, and `last` checks with one document read, instead
    of a query, whether the event it last saw (or event 1) is the tail.
    """

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._events = connection.collection("audit")
        self._tail: int | None = None

    def append(self, event: AuditEvent) -> None:
        record = event.to_record()
        writes = [
            _Write(
                "create",
                self._events.document(audit_document_id(event.seq)),
                audit_document(record),
            )
        ]
        if event.seq > 1:
            # An update fails when the document is missing, which rejects gaps.
            previous = self._events.document(audit_document_id(event.seq - 1))
            writes.append(_Write("update", previous, {"next": event.seq}))
        try:
            self._conn.commit(writes, f"append audit event {event.seq}")
        except AlreadyExistsError as error:
            raise AlreadyExistsError(
                f"audit event seq {event.seq} is taken", event.seq
            ) from error
        except NotFoundError as error:
            raise AlreadyExistsError(
                f"audit event seq {event.seq} does not follow the last event; "
                f"event {event.seq - 1} does not exist",
                event.seq,
            ) from error
        self._tail = event.seq

    def last(self) -> AuditEvent | None:
        # Gapless seqs make event 1 a cheap probe: without it the chain is empty.
        probe = self._tail or 1
        snapshot = self._conn.get(
            self._events.document(audit_document_id(probe)),
            "read the last audit event",
            ["doc", "next"],
        )
        if not snapshot.exists and probe == 1:
            self._tail = None
            return None
        if snapshot.exists and "next" not in (snapshot.to_dict() or {}):
            self._tail = probe
            return _event(snapshot)
        query = self._events.order_by("seq", direction=DESCENDING).limit(1)
        found = self._conn.query(query, "read the last audit event")
        self._tail = found[0].get("seq") if found else None
        return _event(found[0]) if found else None

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        query = self._events.where(filter=FieldFilter("seq", ">", after_seq)).order_by(
            "seq"
        )
        for snapshot in self._conn.pages(query, "scan the audit chain", 1_000):
            yield _event(snapshot)

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        query = self._events.where(
            filter=FieldFilter("entity_id", "==", entity_id)
        ).order_by(NAME_FIELD)
        for snapshot in self._conn.pages(
            query, f"read audit events of {entity_id!r}", 1_000
        ):
            yield _event(snapshot)


def _event(snapshot: Any) -> AuditEvent:
    return AuditEvent.from_record(json.loads(snapshot.get("doc")))


class FirestoreBlobRepository(BlobRepository):
    """Records keyed by a hash of (namespace, key), with both kept as fields."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._blobs = connection.collection("blob")

    def _reference(self, namespace: str, key: str) -> Any:
        return self._blobs.document(_sha256(namespace, key))

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        data = {"namespace": namespace, "key": key, "doc": dumps_record(record)}
        self._conn.commit(
            [
                _Write(
                    "set",
                    self._reference(namespace, key),
                    data,
                    size=len(data["doc"]) + 256,
                )
            ],
            f"store {namespace} record {key!r}",
        )

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        snapshot = self._conn.get(
            self._reference(namespace, key), f"read {namespace} record {key!r}", ["doc"]
        )
        if not snapshot.exists:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return json.loads(snapshot.get("doc"))

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        query = self._blobs.where(
            filter=FieldFilter("namespace", "==", namespace)
        ).order_by("key")
        for snapshot in self._conn.pages(query, f"scan {namespace} records", 500):
            yield snapshot.get("key"), json.loads(snapshot.get("doc"))

    def delete(self, namespace: str, key: str) -> None:
        self._conn.commit(
            [_Write("delete", self._reference(namespace, key))],
            f"delete {namespace} record {key!r}",
        )


# ---------------------------------------------------------------------------
# The backend and its conformance harness
# ---------------------------------------------------------------------------


def _require_driver() -> None:
    if _IMPORT_ERROR is not None:
        raise BackendUnavailableError(
            f"the Firestore driver is not installed ({_IMPORT_ERROR}); install it "
            "with: pip install 'mltrail[firestore]'",
            "firestore",
        ) from _IMPORT_ERROR


class FirestoreBackend(Backend):
    """A Cloud Firestore database, or its emulator; see the module docstring."""

    schemes = ("firestore",)

    def __init__(
        self,
        settings: FirestoreSettings,
        client: Any = None,
        track_writes: bool = False,
    ) -> None:
        """Open the store; `client` and `track_writes` are for test harnesses."""
        _require_driver()
        self.settings = settings
        self._conn = _Connection(settings, client, track_writes)
        self.experiments = FirestoreEntityRepository(self._conn, Experiment)
        self.runs = FirestoreEntityRepository(self._conn, Run)
        self.datasets = FirestoreEntityRepository(self._conn, Dataset)
        self.models = FirestoreEntityRepository(self._conn, Model)
        self.model_versions = FirestoreEntityRepository(self._conn, ModelVersion)
        self.metrics = FirestoreMetricRepository(self._conn)
        self.lineage = FirestoreLineageRepository(self._conn)
        self.audit = FirestoreAuditRepository(self._conn)
        self.blobs = FirestoreBlobRepository(self._conn)

    @classmethod
    def from_url(cls, url: str) -> FirestoreBackend:
        return cls(FirestoreSettings.from_url(url))

    @classmethod
    def conformance_harness(cls, url: str) -> FirestoreConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return FirestoreConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="firestore",
            # `=` and `in` on indexed fields and on the tags and params views;
            # the range operators on created_at only.
            pushdown_operators=frozenset({"=", "in", "<", "<=", ">", ">=", "and"}),
            native_order_fields=frozenset({NATIVE_ORDER_FIELD}),
            # Writes that touch several documents are atomic batched writes with
            # preconditions; no read-write transactions are used.
            transactions=False,
            conditional_writes=True,
            max_item_bytes=MAX_DOCUMENT_BYTES,
            max_batch_size=MAX_WRITES_PER_COMMIT,
            persistent=True,
            multi_process=True,
            extra={"emulator": self.settings.emulator_host is not None},
        )

    @property
    def url(self) -> str:
        return self.settings.to_url()

    def telemetry_counters(self) -> dict[str, int]:
        """Return what this backend's successful commits wrote since it was opened.

        `items_written` counts the documents set, created, updated or deleted,
        one per write result, audit, blob and lineage documents included. A
        commit that Firestore rejected, such as one whose precondition failed,
        counts nothing. `bytes_written` is an estimate from
        `estimated_write_bytes`.
        """
        return self._conn.counters.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Count the documents of each collection, and report bytes as "unknown".

        Neither Firestore's client API nor its emulator reports storage sizes,
        so `bytes`, `index_bytes` and `total_bytes` are "unknown". Each
        collection's `documents` comes from a count query, which stops at
        `STORAGE_COUNT_LIMIT`. `documents_exact` is False when it stopped.
        """
        collections = {}
        for kind, name in COLLECTIONS.items():
            documents = self._conn.count(kind, STORAGE_COUNT_LIMIT)
            collections[name] = {
                "bytes": UNKNOWN,
                "index_bytes": UNKNOWN,
                "documents": documents,
                "documents_exact": documents < STORAGE_COUNT_LIMIT,
            }
        return {
            "collections": collections,
            "total_bytes": UNKNOWN,
            "total_documents": sum(c["documents"] for c in collections.values()),
            "method": "document_count",
        }

    def close(self) -> None:
        self._conn.close()


HARNESS_ROOT_COLLECTION = "mltrail_stores"


class FirestoreConformanceHarness:
    """Conformance harness for `firestore://` stores: one root document per case.

    Every store shares one client and lives under `mltrail_stores/{store id}`, so
    creating a store costs nothing. `destroy` deletes the store's documents on a
    background thread, which overlaps the deletes with the next case; `close`
    waits for them. Raw hooks read and write documents with the client, without
    the repositories.
    """

    def __init__(self, url: str) -> None:
        _require_driver()
        self.settings = FirestoreSettings.from_url(url)
        self._client = _make_client(self.settings)
        self._cleaner = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="firestore-cleanup"
        )
        self._cleanups: list[Any] = []
        self._shared: set[int] = set()

    def create(self) -> FirestoreBackend:
        store_id = f"{os.getpid():x}-{uuid.uuid4().hex[:16]}"
        root = f"{HARNESS_ROOT_COLLECTION}/{store_id}"
        backend = FirestoreBackend(
            replace(self.settings, root=root), self._client, track_writes=True
        )
        backend.initialize()
        return backend

    def destroy(self, backend: FirestoreBackend) -> None:
        connection = backend._conn
        # Documents that other processes wrote are found by listing every
        # collection; otherwise the paths this process wrote are enough.
        shared = id(backend) in self._shared
        self._shared.discard(id(backend))
        backend.close()
        self._cleanups = [f for f in self._cleanups if not f.done()]
        self._cleanups.append(self._cleaner.submit(_clear_store, connection, shared))

    def store_url(self, backend: FirestoreBackend) -> str:
        self._shared.add(id(backend))
        return backend.url

    def raw_read(self, backend: FirestoreBackend, kind: str, key: Any) -> dict | None:
        if kind == "audit":
            reference = backend._conn.collection("audit").document(
                audit_document_id(key)
            )
        else:
            reference = backend._conn.collection(kind).document(key)
        snapshot = reference.get()
        return json.loads(snapshot.get("doc")) if snapshot.exists else None

    def raw_write(self, backend: FirestoreBackend, kind: str, record: dict) -> None:
        connection = backend._conn
        batch = connection.client.batch()
        if kind == "audit":
            reference = connection.collection("audit").document(
                audit_document_id(record["seq"])
            )
            # A merge keeps the `next` marker that appends set on earlier events.
            batch.set(reference, audit_document(record), merge=True)
            references = [reference]
        else:
            document = entity_document(kind, record)
            references = [connection.collection(kind).document(record["id"])]
            batch.set(references[0], document)
            if document["uniq"] is not None:
                references.append(
                    connection.collection("unique_key").document(document["uniq"])
                )
                batch.set(references[1], {"kind": kind, "entity_id": record["id"]})
        for write_reference in references:
            connection.written[write_reference.path] = write_reference
        batch.commit()

    def close(self) -> None:
        """Wait for pending deletes and release the shared client."""
        self._cleaner.shutdown(wait=True)
        for future in self._cleanups:
            future.result()
        self._client.close()


def _clear_store(connection: _Connection, everything: bool) -> None:
    """Delete the documents under the connection's root.

    With `everything`, every collection is listed; otherwise the documents the
    connection wrote are deleted without a query.
    """
    try:
        references = dict(connection.written or {})
        if everything:
            references.update(
                (reference.path, reference)
                for kind in COLLECTIONS
                for reference in _document_references(connection, kind)
            )
        connection.commit_all(
            [_Write("delete", r) for r in references.values()],
            f"clear store {connection.root.path}",
        )
    except MltrailError as error:
        logger.warning(
            "could not clear Firestore store %s: %s", connection.root.path, error
        )


def _document_references(connection: _Connection, kind: str) -> Iterator[Any]:
    query = connection.collection(kind).order_by(NAME_FIELD).select([])
    for snapshot in connection.pages(query, f"list {kind} documents", DELETE_PAGE_SIZE):
        yield snapshot.reference
