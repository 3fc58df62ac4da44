"""The MongoDB backend: collections with indexes on the query templates' keys.

URL: `mongodb://[user:password@]host[:port][,host2...]/[database][?options]` or
`mongodb+srv://...`. The path names the database (default `mltrail`). The query
string contains driver options such as `replicaSet`, `authSource` or `tls`, which
go to pymongo unchanged. No network traffic happens until the first operation.

Layout, one database per store:

- `experiments`, `runs`, `datasets`, `models`, `model_versions`: one document per
  entity, `_id` = entity id. Top-level scalar fields of the record (names,
  namespace, status, revision, ISO 8601 times, ...) are stored as BSON values so
  they can be indexed, filtered and sorted. Nested maps such as `params` and `tags`
  are stored as JSON text under `_json`, because their keys may contain `.` or
  start with `$` and their floats may be NaN, infinite or -0.0. `_view` contains
  a copy of `tags` (and a run's `params`) with escaped keys and comparable
  scalars. It serves filter pushdown only and is never read back.
- `revisions`: one small document per entity update, `_id` =
  `collection|id|incarnation|revision`. Inserting it is the compare-and-set (see
  `_RevisionClaims`).
- `metric_chunks`: the points of one batch, one metric key and a run, sorted and
  packed into a binary field, at most `CHUNK_POINTS` per document. A chunk is never
  modified; a retried batch rewrites the same chunk ids with the same content.
- `metric_latest`: the latest point per (run, key), kept as a small set of
  immutable candidates; `latest` returns the greatest. A pair's first candidate
  has `_id` = `run|key`, the others `run|key|seq` (see `_LatestCandidates`).
- `lineage_nodes`, `lineage_edges` (`_id` = edge key), `audit_events` (`_id` =
  seq), `blobs`.

Atomicity: every write is a single-document insert, replace or delete. Uniqueness
(ids, unique keys, audit seq, revision claims) comes from unique indexes, which
reject a duplicate atomically. The backend never relies on a conditional update
being atomic, because FerretDB 1.24 (the test server) applies one as a read
followed by a write; see the mongodb section of
docs/backends.md.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import math
import secrets
import string
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from mltrail import codec, limits
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
)
from mltrail.clock import (
    EPOCH,
    from_micros,
    isoformat,
    new_id,
    to_micros,
    to_utc,
    utcnow,
)
from mltrail.domain import (
    AuditEvent,
    Dataset,
    Entity,
    Experiment,
    LineageEdge,
    LineageNode,
    MetricPoint,
    MetricSeries,
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
    UnsupportedCapabilityError,
)
from mltrail.query.ast import And, Compare, Exists, Expr, In, Like, Or, conjuncts

try:
    import bson
    import pymongo
    from pymongo import DeleteOne, IndexModel, ReplaceOne, uri_parser
    from pymongo.errors import (
        BulkWriteError,
        ConfigurationError,
        ConnectionFailure,
        DocumentTooLarge,
        DuplicateKeyError,
        OperationFailure,
        PyMongoError,
    )
except ImportError as error:
    raise BackendUnavailableError(
        f"the MongoDB backend needs pymongo ({error}); install it with: "
        "pip install 'mltrail[mongodb]'",
        "pymongo",
    ) from error

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "mltrail"
SCHEMES = ("mongodb", "mongodb+srv")

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's limit on one BSON document."""

CHUNK_POINTS = 2_000
"""Points packed into one metric chunk document."""

CHUNK_BYTES = 4 * 1024 * 1024
"""Packed bytes after which a chunk is closed, well inside MAX_DOCUMENT_BYTES."""

CHUNK_FORMAT = 1
"""Version of the packed point layout in `metric_chunks.points`."""

CLAIM_LEASE_SECONDS = 30.0
"""Age after which a revision claim whose writer never wrote the entity is applied
by the next writer. Clocks of writing hosts must agree to well within this."""

CLAIM_RETENTION_SECONDS = 24 * 3600
"""Lifetime of revision claims on servers with TTL indexes."""

LATEST_MEMORY = 10_000
"""(run, key) pairs whose latest-point candidate a metric repository remembers."""

SCAN_BATCH = 500
HISTORY_BATCH = 8
ID_CHUNK = 500

MAX_VIEW_DEPTH = 32
"""Nesting levels of a param map copied into `_view`; deeper maps are cut off."""

MAX_JOINED_SEGMENTS = 6
"""Maximum segments of a pushed-down filter path; n segments have 2**(n-1)
spellings, because each dot may be part of a key."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_FLOAT = 1.7976931348623157e308

# Query options whose values are secrets, left out of `MongoBackend.url`.
SECRET_OPTIONS = frozenset({
    "tlscertificatekeyfilepassword", "sslpemkeypassword", "authmechanismproperties",
})

# Server error codes meaning that authentication failed or a role is missing.
AUTH_ERROR_CODES = frozenset({13, 18})

# Server error codes meaning that a command or aggregation stage does not exist:
# CommandNotFound, CommandNotSupported, NotImplemented and "unrecognized
# pipeline stage name".
UNSUPPORTED_ERROR_CODES = frozenset({59, 115, 238, 40324})

# pymongo write methods that `_CountedCollection` does not count. Calling one
# raises AttributeError, so a new write path cannot bypass the counters.
UNCOUNTED_WRITES = frozenset({
    "bulk_write", "insert_many", "update_one", "update_many", "find_one_and_delete",
    "find_one_and_replace", "find_one_and_update",
})

INVALID_DATABASE_CHARS = frozenset('/\\. "$*<>:|?\x00')

COLLECTIONS: dict[str, type[Entity]] = {
    "experiments": Experiment,
    "runs": Run,
    "datasets": Dataset,
    "models": Model,
    "model_versions": ModelVersion,
}

# Top-level fields whose stored value is always a string or null; filters on them
# are pushed down.
STRING_FIELDS: dict[str, tuple[str, ...]] = {
    "experiment": ("id", "name", "namespace", "description"),
    "run": ("id", "name", "namespace", "experiment_id", "status", "parent_run_id",
            "trainer"),
    "dataset": ("id", "name", "namespace", "version", "source_uri", "content_hash",
                "description"),
    "model": ("id", "name", "namespace", "description"),
    "model_version": ("id", "model_id", "run_id", "git_commit", "script_hash",
                      "script_uri", "reproducibility_hash", "artifact_uri",
                      "description"),
}

# Nested maps copied into `_view` for pushdown, per kind.
VIEW_FIELDS: dict[str, tuple[str, ...]] = {
    "experiment": ("tags",),
    "run": ("tags", "params"),
    "dataset": ("tags",),
    "model": ("tags",),
    "model_version": ("tags",),
}

NATIVE_ORDER_FIELDS = frozenset({"id", "created_at", "updated_at", "name"})
PUSHDOWN_OPERATORS = frozenset({"=", "<", "<=", ">", ">=", "in", "like", "exists",
                                "and", "or"})

_logged_unsupported: set[str] = set()


# ---------------------------------------------------------------------------
# URL
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MongoLocation:
    """A parsed store URL; `userinfo` keeps the credentials and is never shown.

    `options` are the query string's `name=value` parts, kept percent-encoded as
    given so that the driver reads them exactly as written.
    """

    scheme: str
    hosts: str
    database: str
    options: tuple[str, ...] = ()
    userinfo: str = dataclasses.field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> MongoLocation:
        """Split a `mongodb://` or `mongodb+srv://` URL; raise InvalidInputError."""
        scheme, separator, rest = url.partition("://") if isinstance(url, str) \
            else ("", "", "")
        if scheme not in SCHEMES or not separator:
            raise InvalidInputError(
                f"not a MongoDB URL: {_redact(url)!r}; expected "
                "mongodb://host[:port]/database or mongodb+srv://host/database",
                _redact(url))
        end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0),
                  default=len(rest))
        userinfo, _, hosts = rest[:end].rpartition("@")
        path, _, query = rest[end:].partition("?")
        if "@" in path:
            raise InvalidInputError(
                f"MongoDB URL {_redact(url)!r} has '/' or '@' in its user name or "
                "password; percent-encode them (%2F, %40)", _redact(url))
        if not hosts:
            raise InvalidInputError(
                f"MongoDB URL {_redact(url)!r} names no host; expected e.g. "
                "mongodb://127.0.0.1:27017/mltrail", _redact(url))
        database = unquote(path.lstrip("/")) or DEFAULT_DATABASE
        _check_database_name(database, url)
        options = tuple(part for part in query.split("&") if part)
        return cls(scheme, hosts, database, options, userinfo)

    def with_database(self, database: str) -> MongoLocation:
        _check_database_name(database, self.url)
        return dataclasses.replace(self, database=database)

    def with_option(self, name: str, value: str) -> MongoLocation:
        return dataclasses.replace(
            self, options=(*self.options, f"{quote(name)}={quote(value)}"))

    def option(self, name: str) -> str | None:
        """Return a query option's decoded value; option names ignore case."""
        for part in self.options:
            key, _, value = part.partition("=")
            if unquote(key).lower() == name.lower():
                return unquote(value)
        return None

    @property
    def uri(self) -> str:
        """The full URI with credentials, for the driver only."""
        return self._build(self.options, with_credentials=True)

    @property
    def url(self) -> str:
        """The URI without credentials or secret options, safe to print and log."""
        public_options = tuple(
            part for part in self.options
            if unquote(part.partition("=")[0]).lower() not in SECRET_OPTIONS)
        return self._build(public_options, with_credentials=False)

    def _build(self, options: Sequence[str], with_credentials: bool) -> str:
        credentials = f"{self.userinfo}@" if with_credentials and self.userinfo else ""
        text = f"{self.scheme}://{credentials}{self.hosts}/{quote(self.database)}"
        return f"{text}?{'&'.join(options)}" if options else text


def _redact(url: Any) -> str:
    """Return `url` without anything up to the last `@` of its authority part.

    Everything before the query string counts, so a password with an unescaped
    `/` is removed too.
    """
    if not isinstance(url, str):
        return repr(url)
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    head, question, query = rest.partition("?")
    return f"{scheme}://{head.rpartition('@')[2]}{question}{query}"


def _check_database_name(name: str, url: str) -> None:
    bad = sorted(INVALID_DATABASE_CHARS.intersection(name))
    if bad or len(name.encode("utf-8")) > 63:
        raise InvalidInputError(
            f"MongoDB database name {name!r} in {_redact(url)!r} is invalid; use at "
            "most 63 bytes without any of / \\ . space \" $ * < > : | ?", name)


# ---------------------------------------------------------------------------
# Document encoding
# ---------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _is_native(value: Any) -> bool:
    """Tell whether a record value is stored as a BSON value instead of JSON text."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return False


def escape_field(name: str) -> str:
    """Escape a key for use as a MongoDB field name, reversibly and injectively.

    `%`, `.`, `$`, whitespace and control characters become `%XX` per UTF-8 byte:
    MongoDB forbids `.` and a leading `$` in field names, and FerretDB also rejects
    query paths whose elements contain whitespace.
    """
    out = []
    for char in name:
        if char in "%.$" or char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def _escape_id_part(text: str) -> str:
    """Escape `|` so that joined `_id` parts stay unambiguous."""
    return text.replace("%", "%25").replace("|", "%7C")


def view_scalar(value: Any) -> Any:
    """Return a value that compares like `value` and that every server accepts.

    NaN becomes null, so it never compares. Infinities become the largest finite
    double and -0.0 becomes 0.0; ints outside int64 become the nearest double.
    These maps are monotone, so a pushed-down comparison widened to include its
    bound never drops a match. Lists and None become null.
    """
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        return MAX_FLOAT if value > 0 else -MAX_FLOAT
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return MAX_FLOAT if value > 0 else -MAX_FLOAT
        return value + 0.0
    return None


def _map_view(value: dict[str, Any], depth: int = 1) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            view[escape_field(key)] = _map_view(item, depth + 1) \
                if depth < MAX_VIEW_DEPTH else {}
        else:
            view[escape_field(key)] = view_scalar(item)
    return view


def entity_document(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return the stored document of an entity record, without `_incarnation`."""
    document: dict[str, Any] = {"_id": record["id"]}
    texts: dict[str, str] = {}
    for name, value in record.items():
        if name == "id":
            continue
        if _is_native(value):
            document[name] = value
        else:
            texts[name] = _dumps(value)
    document["_json"] = texts
    document["_view"] = {name: _map_view(codec.decode_value(record.get(name) or {}))
                         for name in VIEW_FIELDS[kind]}
    return document


def entity_record(document: dict[str, Any]) -> dict[str, Any]:
    """Invert `entity_document`."""
    record = {"id": document["_id"]}
    record.update((k, v) for k, v in document.items() if not k.startswith("_"))
    record.update((k, json.loads(v)) for k, v in document.get("_json", {}).items())
    return record


def float_bits(value: float) -> int:
    """Return the IEEE 754 bits of a float as a signed int64, NaN payloads included."""
    return struct.unpack(">q", struct.pack(">d", value))[0]


def bits_float(bits: int) -> float:
    return struct.unpack(">d", struct.pack(">q", bits))[0]


def _plain_double(value: float) -> float | None:
    """Return `value` when every server stores it exactly as a double, else None."""
    if math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0):
        return value
    return None


# ---------------------------------------------------------------------------
# Driver access and error translation
# ---------------------------------------------------------------------------


def _translate(error: Exception, url: str) -> MltrailError:
    """Map a driver error to the mltrail error a caller can act on."""
    if isinstance(error, DuplicateKeyError):
        return AlreadyExistsError(f"a document with the same key already exists in "
                                  f"the MongoDB store {url!r}: {error}", None)
    if isinstance(error, ConnectionFailure):
        return BackendUnavailableError(
            f"the MongoDB store {url!r} is unreachable: {error}; check that the "
            "server runs and that the URL names the right hosts and port", url)
    if isinstance(error, OperationFailure) and error.code in AUTH_ERROR_CODES:
        return BackendUnavailableError(
            f"the MongoDB store {url!r} rejected the request: {error}; check the "
            "user, password and authSource in the URL, and the user's roles", url)
    if isinstance(error, (DocumentTooLarge, bson.errors.BSONError)):
        return InvalidInputError(
            f"a value could not be stored in the MongoDB store {url!r}: {error}; "
            f"documents are limited to {MAX_DOCUMENT_BYTES} bytes of valid UTF-8",
            None)
    if isinstance(error, ConfigurationError):
        return InvalidInputError(f"MongoDB URL {url!r} is invalid: {error}", url)
    return MltrailError(f"the MongoDB store {url!r} failed: {error}", url)


class _CountedCollection:
    """A pymongo collection whose writes add to the backend's `WriteCounters`.

    Items are the documents that the server reports as inserted, upserted,
    modified or deleted, so a duplicate key, a replace that matched nothing or
    an unacknowledged write (w=0) adds nothing. Bytes are the BSON size of each
    inserted or replacing document that was written. Deletes add no bytes.
    Every other attribute is the collection's own.
    """

    def __init__(self, collection: Any, counters: WriteCounters) -> None:
        self.collection = collection
        self.counters = counters

    def __getattr__(self, name: str) -> Any:
        if name in UNCOUNTED_WRITES:
            raise AttributeError(f"{name} is not counted by _CountedCollection; add "
                                 "it there before calling it")
        return getattr(self.collection, name)

    def insert_one(self, document: dict[str, Any], **options: Any) -> Any:
        result = self.collection.insert_one(document, **options)
        if result.acknowledged:
            self.counters.add(1, len(bson.encode(document)))
        return result

    def replace_one(self, query: dict[str, Any], document: dict[str, Any],
                    **options: Any) -> Any:
        result = self.collection.replace_one(query, document, **options)
        if result.acknowledged:
            written = result.modified_count + (result.upserted_id is not None)
            if written:
                stored = document
                if "_id" not in document and "_id" in query:
                    # The stored document keeps the `_id` of the query.
                    stored = {"_id": query["_id"], **document}
                self.counters.add(written, len(bson.encode(stored)))
        return result

    def delete_one(self, query: dict[str, Any], **options: Any) -> Any:
        result = self.collection.delete_one(query, **options)
        if result.acknowledged:
            self.counters.add(result.deleted_count, 0)
        return result

    def delete_many(self, query: dict[str, Any], **options: Any) -> Any:
        result = self.collection.delete_many(query, **options)
        if result.acknowledged:
            self.counters.add(result.deleted_count, 0)
        return result

    def insert_all(self, documents: list[dict[str, Any]]) -> set[Any]:
        """Insert documents in one unordered bulk insert; return the `_id`s that
        were already stored.

        A duplicate `_id` leaves the stored document as it is. Any other write
        error raises BulkWriteError after the inserted documents were counted.
        """
        try:
            result = self.collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            failed = {entry["index"] for entry in errors}
            self.counters.add(error.details.get("nInserted", 0), sum(
                len(bson.encode(document)) for index, document in enumerate(documents)
                if index not in failed))
            if len(failed) > sum(entry.get("code") == 11000 for entry in errors) or \
                    error.details.get("writeConcernErrors"):
                raise
            return {documents[index]["_id"] for index in failed}
        if result.acknowledged:
            self.counters.add(len(documents), sum(len(bson.encode(document))
                                                  for document in documents))
        return set()

    def delete_ids(self, ids: Iterable[Any]) -> None:
        """Delete the documents with these `_id`s, one `{_id: ...}` filter each.

        FerretDB 1.24 uses its `_id` index only for a filter that is exactly
        `{"_id": value}`, and it reads the whole collection for
        `{"_id": {"$in": ...}}`.
        """
        writes = [DeleteOne({"_id": key}) for key in ids]
        if not writes:
            return
        result = self.collection.bulk_write(writes, ordered=False)
        if result.acknowledged:
            self.counters.add(result.deleted_count, 0)

    def upsert_all(self, documents: list[dict[str, Any]]) -> None:
        """Replace or insert each document by `_id` in one unordered bulk write.

        Two writers that upsert the same `_id` (a retried batch) race on the
        insert. The loser's document is then already stored by the winner, with
        the same content, so duplicate-key errors are ignored.
        """
        writes = [ReplaceOne({"_id": document["_id"]}, document, upsert=True)
                  for document in documents]
        try:
            result = self.collection.bulk_write(writes, ordered=False)
        except BulkWriteError as error:
            self._count_upserts(documents, error.details)
            others = [e for e in error.details.get("writeErrors", [])
                      if e.get("code") != 11000]
            if others or error.details.get("writeConcernErrors"):
                raise
            return
        if result.acknowledged:
            self._count_upserts(documents, result.bulk_api_result)

    def _count_upserts(self, documents: list[dict[str, Any]],
                       details: dict[str, Any]) -> None:
        sizes = {document["_id"]: len(bson.encode(document)) for document in documents}
        # Upserts are matched by `_id`, because FerretDB 1.24 reports wrong
        # request indexes in `upserted` for unordered writes.
        upserted = {entry["_id"] for entry in details.get("upserted", [])}
        modified = details.get("nModified", 0)
        size = sum(sizes[key] for key in upserted if key in sizes)
        replaced = [sizes[key] for key in sizes if key not in upserted]
        if modified and modified == len(replaced):
            size += sum(replaced)
        elif modified and replaced:
            # NOTE: an estimate. The server does not say which of the matched
            # documents it modified, so their mean size stands for each.
            size += modified * sum(replaced) // len(replaced)
        self.counters.add(len(upserted) + modified, size)


class _MongoDatabase:
    """One database of a client, with every driver error translated in one place."""

    def __init__(self, database: Any, url: str) -> None:
        self.database = database
        self.url = url
        self.counters = WriteCounters()

    def collection(self, name: str) -> _CountedCollection:
        return _CountedCollection(self.database[name], self.counters)

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except (PyMongoError, bson.errors.BSONError) as error:
            raise _translate(error, self.url) from error

    def stream(self, cursor: Any) -> Iterator[dict[str, Any]]:
        """Iterate a cursor with translated errors; close it however iteration ends."""
        try:
            while True:
                with self.errors():
                    document = next(cursor, None)
                if document is None:
                    return
                yield document
        finally:
            cursor.close()


# ---------------------------------------------------------------------------
# Filter pushdown
# ---------------------------------------------------------------------------

NEVER = object()
"""A pushed-down predicate that no stored entity can satisfy."""


def _view_literal(value: Any) -> Any:
    """Return the `_view` form of a filter literal, or NEVER for NaN."""
    if isinstance(value, float) and math.isnan(value):
        return NEVER
    return view_scalar(value)


def _like_prefix(pattern: str) -> str:
    """Return the literal text before the first wildcard of a LIKE pattern."""
    prefix = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            prefix.append(pattern[index + 1])
            index += 2
            continue
        if char in "%_":
            break
        prefix.append(char)
        index += 1
    return "".join(prefix)


def _regex_literal(text: str) -> str:
    """Escape text for both PCRE (MongoDB) and RE2 (FerretDB)."""
    out = []
    for char in text:
        if (char.isascii() and char.isalnum()) or ord(char) > 0x7F:
            out.append(char)
        elif char in string.punctuation:
            out.append("\\" + char)
        else:
            out.append(f"\\x{ord(char):02x}")
    return "".join(out)


def _time_literal(value: Any) -> str | None:
    """Return the stored form of a time literal, or None when it cannot be pushed."""
    if not isinstance(value, str):
        return None
    try:
        moment = to_utc(value)
    except InvalidInputError:
        return None
    # Stored ISO strings compare like times only with four-digit years.
    return isoformat(moment) if 1000 <= moment.year <= 9999 else None


class _Pushdown:
    """Translate filter predicates of one entity kind into MongoDB queries.

    A translation returns a query, None when the predicate stays with the core,
    or NEVER. Every query matches at least the entities the core's evaluator
    accepts (see `mltrail.query.evaluate`), so the core's residual filter stays
    correct: comparisons on `_view` include their bound, and a path is tried in
    every spelling that `resolve` accepts (`a.b` also finds the key `"a.b"`).
    """

    def __init__(self, entity_type: type[Entity]) -> None:
        kind = entity_type.kind
        self.strings = frozenset(STRING_FIELDS[kind])
        self.times = frozenset(entity_type.datetime_fields)
        self.views = frozenset(VIEW_FIELDS[kind])
        self.aliases = {"experiment": "experiment_id"} if kind == "run" else {}

    def query(self, expr: Expr | None) -> Any:
        """Return the query for the conjuncts that can be pushed down, or NEVER."""
        parts = []
        for part in conjuncts(expr):
            translated = self.translate(part)
            if translated is NEVER:
                return NEVER
            if translated:
                parts.append(translated)
        return _all_of(parts)

    def translate(self, expr: Expr) -> Any:
        if isinstance(expr, And):
            return self.query(expr)
        if isinstance(expr, Or):
            return self._any_of(expr)
        if not isinstance(expr, (Compare, In, Like, Exists)) or \
                getattr(expr, "negated", False) or expr.op == "!=":
            return None
        if len(expr.field) == 1:
            return self._top_level(expr)
        if expr.field[0] in self.views:
            return self._view(expr)
        return None

    def _any_of(self, expr: Or) -> Any:
        items = []
        for item in expr.items:
            translated = self.translate(item)
            if translated is None or translated == {}:
                return None
            if translated is not NEVER:
                items.append(translated)
        return {"$or": items} if items else NEVER

    def _top_level(self, expr: Compare | In | Like | Exists) -> Any:
        name = self.aliases.get(expr.field[0], expr.field[0])
        if name in self.strings:
            return self._string_field("_id" if name == "id" else name, expr)
        if name in self.times:
            return self._time_field(name, expr)
        return None

    @staticmethod
    def _string_field(field: str, expr: Compare | In | Like | Exists) -> Any:
        if isinstance(expr, Compare):
            if not isinstance(expr.value, str):
                return NEVER
            return {field: _comparison(expr.op, expr.value, inclusive=False)}
        if isinstance(expr, In):
            values = [v for v in expr.values if isinstance(v, str)]
            return {field: {"$in": values}} if values else NEVER
        if isinstance(expr, Like):
            prefix = _like_prefix(expr.pattern)
            return {field: {"$regex": "^" + _regex_literal(prefix)}} if prefix else None
        return None

    @staticmethod
    def _time_field(field: str, expr: Compare | In | Like | Exists) -> Any:
        if isinstance(expr, Compare):
            stamp = _time_literal(expr.value)
            return None if stamp is None else \
                {field: _comparison(expr.op, stamp, inclusive=False)}
        if isinstance(expr, In):
            stamps = [_time_literal(v) for v in expr.values]
            return None if None in stamps else {field: {"$in": stamps}}
        return None

    def _view(self, expr: Compare | In | Like | Exists) -> Any:
        paths = self._view_paths(expr.field[0], expr.field[1:])
        if paths is None:
            return None
        if isinstance(expr, Compare):
            literal = _view_literal(expr.value)
            if literal is NEVER:
                return NEVER
            condition = _comparison(expr.op, literal, inclusive=True)
        elif isinstance(expr, In):
            values = [v for v in map(_view_literal, expr.values) if v is not NEVER]
            if not values:
                return NEVER
            condition = {"$in": values}
        elif isinstance(expr, Like):
            prefix = _like_prefix(expr.pattern)
            if not prefix:
                return None
            condition = {"$regex": "^" + _regex_literal(prefix)}
        else:
            condition = {"$exists": True}
        alternatives = [{path: condition} for path in paths]
        return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}

    @staticmethod
    def _view_paths(name: str, segments: tuple[str, ...]) -> list[str] | None:
        """Return every stored path that `resolve` could read for these segments."""
        if len(segments) > MAX_JOINED_SEGMENTS:
            return None
        if name == "tags":
            # Tag values are strings, so only the whole remainder can be one key.
            return [f"_view.tags.{escape_field('.'.join(segments))}"]
        paths = []
        for cuts in itertools.product((False, True), repeat=len(segments) - 1):
            groups = [[segments[0]]]
            for cut, segment in zip(cuts, segments[1:]):
                if cut:
                    groups.append([segment])
                else:
                    groups[-1].append(segment)
            keys = (escape_field(".".join(group)) for group in groups)
            paths.append(f"_view.{name}." + ".".join(keys))
        return paths


def _comparison(op: str, value: Any, inclusive: bool) -> Any:
    if op == "=":
        return value
    if inclusive:
        return {"$lte" if op in ("<", "<=") else "$gte": value}
    return {{"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}[op]: value}


def _all_of(parts: list[Any]) -> dict[str, Any]:
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


# ---------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------


class _RevisionClaims:
    """Compare-and-set of entity documents built on a unique insert.

    The writer of revision r inserts the claim `collection|id|incarnation|r`.
    Because `_id` is unique, exactly one writer wins, and only the winner replaces
    the entity document. The next writer can claim r+1 only after it has read
    revision r, so replacements land in revision order.

    The claim contains the new document. If its writer stops before replacing the
    entity, the next writer that finds the claim older than CLAIM_LEASE_SECONDS
    applies it. `incarnation` is new for every insert, so an entity that is
    removed and created again never meets its old claims.
    """

    def __init__(self, db: _MongoDatabase) -> None:
        self.db = db
        self.collection = db.collection("revisions")

    def claim(self, target: Any, entity_id: str, incarnation: str, revision: int,
              document: dict[str, Any]) -> float:
        """Insert the claim; return its monotonic time, or raise ConflictError."""
        claim_id = f"{target.name}|{entity_id}|{incarnation}|{revision}"
        started = time.monotonic()
        try:
            self.collection.insert_one(
                {"_id": claim_id, "at": utcnow(), "doc": document})
        except DuplicateKeyError as error:
            self._apply_abandoned(claim_id, target, entity_id, incarnation, revision)
            raise ConflictError(
                f"{target.name} {entity_id!r} was changed concurrently (revision "
                f"{revision} is already taken)", entity_id) from error
        return started

    def _apply_abandoned(self, claim_id: str, target: Any, entity_id: str,
                         incarnation: str, revision: int) -> None:
        claim = self.collection.find_one({"_id": claim_id})
        if claim is None:
            return
        age = (utcnow() - to_utc(claim["at"])).total_seconds()
        if age < CLAIM_LEASE_SECONDS:
            return
        stored = target.find_one({"_id": entity_id}, {"revision": 1, "_incarnation": 1})
        if stored is None or stored.get("_incarnation", "") != incarnation \
                or stored["revision"] != revision - 1:
            return
        target.replace_one({"_id": entity_id}, claim["doc"])
        logger.warning("applied revision %d of %s %s, claimed %.0f s ago by a writer "
                       "that did not finish", revision, target.name, entity_id, age)


class MongoEntityRepository(EntityRepository):
    def __init__(self, db: _MongoDatabase, name: str, entity_type: type[Entity],
                 claims: _RevisionClaims) -> None:
        self.db = db
        self.collection = db.collection(name)
        self.entity_type = entity_type
        self.claims = claims
        self.pushdown = _Pushdown(entity_type)
        self.fields = frozenset(f.name for f in dataclasses.fields(entity_type))

    def _document(self, entity: Entity) -> dict[str, Any]:
        return entity_document(entity.to_record(), self.kind)

    def _entity(self, document: dict[str, Any]) -> Entity:
        return self.entity_type.from_record(entity_record(document))

    def insert(self, entity: Entity) -> None:
        document = self._document(entity)
        document["_incarnation"] = new_id()
        with self.db.errors():
            try:
                self.collection.insert_one(document)
            except DuplicateKeyError as error:
                raise self._duplicate(entity) from error

    def _duplicate(self, entity: Entity) -> AlreadyExistsError:
        if self.collection.find_one({"_id": entity.id}, {"_id": 1}) is not None:
            return AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                      entity.id)
        unique = tuple(getattr(entity, name) for name in self.unique_key)
        return AlreadyExistsError(
            f"{self.kind} with {dict(zip(self.unique_key, unique))} already exists",
            unique)

    def get(self, entity_id: str) -> Entity:
        with self.db.errors():
            document = self.collection.find_one({"_id": entity_id})
        if document is None:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self._entity(document)

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, Entity]:
        found: dict[str, Entity] = {}
        ids = list(dict.fromkeys(entity_ids))
        for start in range(0, len(ids), ID_CHUNK):
            cursor = self.collection.find({"_id": {"$in": ids[start:start + ID_CHUNK]}})
            for document in self.db.stream(cursor):
                found[document["_id"]] = self._entity(document)
        return found

    def find_unique(self, key: tuple) -> Entity | None:
        with self.db.errors():
            document = self.collection.find_one(dict(zip(self.unique_key, key)))
        return None if document is None else self._entity(document)

    def update(self, entity: Entity) -> None:
        document = self._document(entity)
        projection = {"revision": 1, "_incarnation": 1,
                      **dict.fromkeys(self.unique_key, 1)}
        with self.db.errors():
            stored = self.collection.find_one({"_id": entity.id}, projection)
            self._check_stored(entity, stored, document)
            incarnation = stored.get("_incarnation", "")
            document["_incarnation"] = incarnation
            started = self.claims.claim(self.collection, entity.id, incarnation,
                                        entity.revision, document)
            if time.monotonic() - started > CLAIM_LEASE_SECONDS / 2 and \
                    self._revision(entity.id) >= entity.revision:
                # Stalled long enough for another writer to apply this claim.
                return
            result = self.collection.replace_one({"_id": entity.id}, document)
        if result.matched_count == 0:
            raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)

    def _check_stored(self, entity: Entity, stored: dict[str, Any] | None,
                      document: dict[str, Any]) -> None:
        if stored is None:
            raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
        if stored["revision"] != entity.revision - 1:
            raise ConflictError(
                f"{self.kind} {entity.id!r} was changed concurrently (stored revision "
                f"{stored['revision']}, expected {entity.revision - 1})", entity.id)
        if any(stored.get(name) != document.get(name) for name in self.unique_key):
            raise InvalidInputError(
                f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot "
                "change", entity.id)

    def _revision(self, entity_id: str) -> int:
        stored = self.collection.find_one({"_id": entity_id}, {"revision": 1})
        return -1 if stored is None else stored["revision"]

    def delete(self, entity_id: str) -> None:
        with self.db.errors():
            self.collection.delete_one({"_id": entity_id})

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        query = self.pushdown.query(request.filter)
        if query is NEVER:
            return
        parts = [query] if query else []
        if request.namespace is not None and "namespace" in self.fields:
            parts.append({"namespace": request.namespace})
        sort: list[tuple[str, int]] = [("_id", 1)]
        if request.order and all(len(k.field) == 1 and k.field[0] in NATIVE_ORDER_FIELDS
                                 for k in request.order):
            sort, keyset = self._keyset(request)
            if keyset is not None:
                parts.append(keyset)
        cursor = self.collection.find(_all_of(parts), sort=sort, batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield self._entity(document)

    def _keyset(self, request: ScanRequest) -> tuple[list[tuple[str, int]], Any]:
        """Return the sort of a native order and the query for `request.after`."""
        keys: list[tuple[str, bool, Any]] = []
        after = request.after or (None,) * (len(request.order) + 1)
        for key, value in zip(request.order, after):
            name = key.field[0]
            field = "_id" if name == "id" else name
            if name not in self.fields or field in (k[0] for k in keys):
                continue
            keys.append((field, key.descending,
                         isoformat(value) if isinstance(value, datetime) else value))
            if field == "_id":
                break
        if not keys or keys[-1][0] != "_id":
            keys.append(("_id", False, after[-1]))
        sort = [(field, -1 if descending else 1) for field, descending, _ in keys]
        if request.after is None:
            return sort, None
        alternatives = []
        for index, (field, descending, value) in enumerate(keys):
            clause = {name: bound for name, _, bound in keys[:index]}
            clause[field] = {"$lt" if descending else "$gt": value}
            alternatives.append(clause)
        return sort, {"$or": alternatives}


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


class _Row(NamedTuple):
    """One point prepared for packing: its history order and encoded parts."""

    order: tuple[int, int, str]
    value: float
    seq: bytes
    extra: bytes

    @classmethod
    def of(cls, point: MetricPoint) -> _Row:
        extra = point.extras()
        return cls((point.step, to_micros(point.timestamp), point.seq), point.value,
                   point.seq.encode("utf-8"),
                   b"" if extra is None else _dumps(extra).encode("utf-8"))

    @classmethod
    def plain(cls, step: int, micros: int, seq: str, value: float) -> _Row:
        """Return the row of a point without optional fields."""
        return cls((step, micros, seq), value, seq.encode("utf-8"), b"")

    @property
    def size(self) -> int:
        return 32 + len(self.seq) + len(self.extra)


def pack_rows(rows: Sequence[_Row]) -> bytes:
    """Pack sorted points: steps, micros and value bits as big-endian 8-byte
    numbers, then the UTF-8 lengths of the seqs and of the extras JSON (0 for
    none) as 4-byte numbers, then the seq bytes and the extras bytes."""
    count = len(rows)
    numbers = struct.pack(
        f">{count}q{count}q{count}d{count}I{count}I",
        *(r.order[0] for r in rows), *(r.order[1] for r in rows),
        *(r.value for r in rows), *(len(r.seq) for r in rows),
        *(len(r.extra) for r in rows))
    return b"".join([numbers, *(r.seq for r in rows), *(r.extra for r in rows)])


class PackedChunk:
    """The decoded points of one chunk document, read by index."""

    __slots__ = ("extras", "key", "run_id", "seqs", "stamps", "steps", "values")

    def __init__(self, run_id: str, key: str, count: int, data: bytes) -> None:
        layout = f">{count}q{count}q{count}d{count}I{count}I"
        numbers = struct.unpack_from(layout, data)
        self.run_id = run_id
        self.key = key
        self.steps = numbers[:count]
        self.stamps = numbers[count:2 * count]
        self.values = numbers[2 * count:3 * count]
        offset = struct.calcsize(layout)
        self.seqs, offset = _slices(data, numbers[3 * count:4 * count], offset)
        self.extras, _ = _slices(data, numbers[4 * count:], offset)

    def __len__(self) -> int:
        return len(self.steps)

    def order(self, index: int) -> tuple[int, int, str]:
        return (self.steps[index], self.stamps[index], self.seqs[index])

    def point(self, index: int) -> MetricPoint:
        stamp = EPOCH + timedelta(microseconds=self.stamps[index])
        point = MetricPoint(run_id=self.run_id, key=self.key, value=self.values[index],
                            step=self.steps[index], timestamp=stamp,
                            seq=self.seqs[index])
        extra = self.extras[index]
        return point.with_extras(json.loads(extra)) if extra else point


def _slices(data: bytes, lengths: Sequence[int], offset: int) -> tuple[list[str], int]:
    texts = []
    for length in lengths:
        texts.append(data[offset:offset + length].decode("utf-8"))
        offset += length
    return texts, offset


def _chunked_rows(rows: list[_Row]) -> Iterator[list[_Row]]:
    """Cut sorted rows into chunks by count and by packed size."""
    chunk: list[_Row] = []
    size = 0
    for row in rows:
        if chunk and (len(chunk) >= CHUNK_POINTS or size + row.size > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row.size
    if chunk:
        yield chunk


def _merged(chunks: Iterable[PackedChunk]) -> Iterator[tuple[PackedChunk, int]]:
    """Yield (chunk, index) of every point in history order.

    `chunks` arrive sorted by their first point, and each is sorted, so a point
    can be yielded once the next chunk starts after it. Memory contains the chunks
    whose ranges overlap the current position, which is one chunk for a run logged
    in step order.
    """
    heap: list[tuple[tuple, int, PackedChunk, int]] = []
    tie = itertools.count()
    for chunk in itertools.chain(chunks, [None]):
        first = None if chunk is None else chunk.order(0)
        while heap and (first is None or heap[0][0] < first):
            _, _, current, index = heapq.heappop(heap)
            if not heap and (first is None or current.order(len(current) - 1) < first):
                # The only open chunk ends before the next one starts.
                yield from ((current, i) for i in range(index, len(current)))
                break
            yield current, index
            if index + 1 < len(current):
                heapq.heappush(heap, (current.order(index + 1), next(tie), current,
                                      index + 1))
        if chunk is not None:
            heapq.heappush(heap, (first, next(tie), chunk, 0))


class MongoMetricRepository(MetricRepository):
    """Metric chunks and latest-point candidates; see `_LatestCandidates`."""

    def __init__(self, db: _MongoDatabase) -> None:
        self.db = db
        self.chunks = db.collection("metric_chunks")
        self.latest_points = db.collection("metric_latest")
        self.candidates = _LatestCandidates(db, self.latest_points)

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        by_key: dict[str, list[_Row]] = {}
        for point in points:
            by_key.setdefault(point.key, []).append(_Row.of(point))
        self._append_rows(run_id, by_key)

    def append_series(self, run_id: str, series: Sequence[MetricSeries]) -> None:
        """Store series like `append`, with rows built from the columns directly.

        Each call to `_append_rows` gets at most `limits.MAX_METRIC_BATCH`
        points, as each `append` call does.
        """
        by_key: dict[str, list[_Row]] = {}
        count = 0
        for metric_series in series:
            position = 0
            while position < len(metric_series):
                if count == limits.MAX_METRIC_BATCH:
                    self._append_rows(run_id, by_key)
                    by_key, count = {}, 0
                end = min(len(metric_series),
                          position + limits.MAX_METRIC_BATCH - count)
                rows = by_key.setdefault(metric_series.key, [])
                rows += map(_Row.plain, metric_series.steps[position:end],
                            metric_series.stamps[position:end],
                            metric_series.seqs[position:end],
                            metric_series.values[position:end])
                count += end - position
                position = end
        if count:
            self._append_rows(run_id, by_key)

    def _append_rows(self, run_id: str, by_key: dict[str, list[_Row]]) -> None:
        chunks = []
        for key, rows in by_key.items():
            rows.sort(key=lambda row: row.order)
            chunks += [_chunk_document(run_id, key, chunk)
                       for chunk in _chunked_rows(rows)]
        if not chunks:
            return
        with self.db.errors():
            duplicates = self.chunks.insert_all(chunks)
            if duplicates:
                # A retried batch: its chunks are rewritten with the same content.
                self.chunks.upsert_all([chunk for chunk in chunks
                                        if chunk["_id"] in duplicates])
            self.candidates.add(run_id, {key: rows[-1] for key, rows in by_key.items()})

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        query: dict[str, Any] = {"run_id": run_id, "key": key}
        low_micros = None if start is None else to_micros(start)
        high_micros = None if end is None else to_micros(end)
        bounds = (("hi_step", "$gte", min_step), ("lo_step", "$lte", max_step),
                  ("max_ts", "$gte", low_micros), ("min_ts", "$lte", high_micros))
        for field, op, bound in bounds:
            if bound is not None:
                query[field] = {op: bound}
        cursor = self.chunks.find(
            query, sort=[("lo_step", 1), ("lo_ts", 1), ("lo_seq", 1), ("_id", 1)],
            batch_size=HISTORY_BATCH)
        chunks = (_read_chunk(document) for document in self.db.stream(cursor))
        previous = None
        for chunk, index in _merged(chunks):
            order = chunk.order(index)
            step, stamp = order[0], order[1]
            if order == previous:
                continue  # the same point written twice by differently cut retries
            previous = order
            if (min_step is not None and step < min_step) or \
                    (max_step is not None and step > max_step) or \
                    (low_micros is not None and stamp < low_micros) or \
                    (high_micros is not None and stamp > high_micros):
                continue
            yield chunk.point(index)

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        best: dict[tuple[str, str], dict[str, Any]] = {}
        ids = list(dict.fromkeys(run_ids))
        for start in range(0, len(ids), ID_CHUNK):
            query: dict[str, Any] = {"run_id": {"$in": ids[start:start + ID_CHUNK]}}
            if keys is not None:
                query["key"] = {"$in": list(keys)}
            for document in self.db.stream(self.latest_points.find(query)):
                identity = (document["run_id"], document["key"])
                current = best.get(identity)
                if current is None or _latest_order(document) > _latest_order(current):
                    best[identity] = document
        result: dict[str, dict[str, MetricPoint]] = {}
        for (run_id, key), document in best.items():
            result.setdefault(run_id, {})[key] = _latest_point(document)
        return result

    def keys(self, run_id: str) -> list[str]:
        cursor = self.latest_points.find({"run_id": run_id}, {"key": 1})
        return sorted({document["key"] for document in self.db.stream(cursor)})

    def delete_run(self, run_id: str) -> None:
        self.candidates.forget_run(run_id)
        with self.db.errors():
            self.latest_points.delete_many({"run_id": run_id})
            self.chunks.delete_many({"run_id": run_id})

    def runs_with_metrics(self) -> Iterator[str]:
        cursor = self.latest_points.find({}, {"run_id": 1}, sort=[("run_id", 1)])
        previous = None
        for document in self.db.stream(cursor):
            if document["run_id"] != previous:
                previous = document["run_id"]
                yield previous


def _chunk_document(run_id: str, key: str, rows: list[_Row]) -> dict[str, Any]:
    first, last = rows[0].order, rows[-1].order
    stamps = [row.order[1] for row in rows]
    return {
        "_id": f"{run_id}|{_escape_id_part(key)}|{first[2]}",
        "run_id": run_id, "key": key, "format": CHUNK_FORMAT, "n": len(rows),
        "lo_step": first[0], "lo_ts": first[1], "lo_seq": first[2], "hi_step": last[0],
        "min_ts": min(stamps), "max_ts": max(stamps),
        "points": bson.Binary(pack_rows(rows)),
    }


def _read_chunk(document: dict[str, Any]) -> PackedChunk:
    if document.get("format") != CHUNK_FORMAT:
        raise MltrailError(
            f"metric chunk {document['_id']!r} has format {document.get('format')!r}, "
            f"not {CHUNK_FORMAT}; it was written by another mltrail version",
            document["_id"])
    return PackedChunk(document["run_id"], document["key"], document["n"],
                       bytes(document["points"]))


def _latest_document(run_id: str, key: str, row: _Row) -> dict[str, Any]:
    step, stamp, seq = row.order
    document = {
        "_id": f"{run_id}|{_escape_id_part(key)}|{seq}",
        "run_id": run_id, "key": key, "step": step, "ts": stamp, "seq": seq,
        "bits": float_bits(row.value),
        # Informational: a plain double for people reading the collection.
        "value": _plain_double(row.value),
    }
    if row.extra:
        document["extra"] = row.extra.decode("utf-8")
    return document


def _first_latest_document(run_id: str, key: str, row: _Row) -> dict[str, Any]:
    """Return the first candidate of (run, key), whose `_id` is fixed per pair.

    Both id parts are escaped, so the `_id` has one `|`, while other candidates'
    ids have at least two.
    """
    document = _latest_document(run_id, key, row)
    document["_id"] = f"{_escape_id_part(run_id)}|{_escape_id_part(key)}"
    document["first"] = True
    return document


def _latest_order(document: dict[str, Any]) -> tuple[int, int, str]:
    return (document["step"], document["ts"], document["seq"])


def _latest_point(document: dict[str, Any]) -> MetricPoint:
    point = MetricPoint(run_id=document["run_id"], key=document["key"],
                        value=bits_float(document["bits"]), step=document["step"],
                        timestamp=from_micros(document["ts"]), seq=document["seq"])
    extra = document.get("extra")
    return point.with_extras(json.loads(extra)) if extra else point


# A remembered candidate: its `_id`, its order and whether it may be deleted.
_Candidate = tuple[str, tuple[int, int, str], bool]


class _LatestCandidates:
    """The latest point per (run, key), kept as candidates in `metric_latest`.

    Candidates are immutable: each is inserted once (a retry inserts the same
    content) and deleted only when a candidate with a greater (step, timestamp,
    seq) is stored. So the greatest candidate of a pair is never deleted,
    whatever the interleaving of concurrent appends, and `latest` returns the
    greatest candidate of each pair.

    The first candidate of a pair has the fixed `_id` `run|key`, and only
    `delete_run` removes it. Its insert succeeds for exactly one writer, and
    until then the pair has no other candidate, apart from ones written before
    first candidates existed or after a `delete_run`. That writer then replaces
    its own candidate on each append that brings a later point: it inserts the
    new candidate and deletes its previous one by `_id`. A writer whose insert
    of the first candidate is rejected as a duplicate reads the pair's
    candidates, inserts an ordinary candidate (`_id` `run|key|seq`) only when
    its row is later than all of them, and deletes the outranked ones. That
    keeps the number of candidates per pair bounded by the number of writers
    since the last such read, plus the first candidate. The bound depends on
    the first insert, but `latest` is right in any case, because it takes the
    greatest of all candidates.

    Reading a pair's candidates scans the whole collection on FerretDB 1.24,
    which uses an index only for a filter of exactly `{"_id": <string>}` (see
    `Query` in its `internal/backends/sqlite/collection.go`). So a writer
    appending to pairs it started sends no such read. A repository object
    remembers its own candidates of up to LATEST_MEMORY pairs, and a forgotten
    pair goes through the duplicate path at its next append.

    NOTE: backend versions without first candidates delete any outranked
    candidate, first ones included. While such a version and this one append
    to the same store at once, a first `_id` can be inserted again, and a
    deletion that read the earlier document could remove the new one.
    """

    def __init__(self, db: _MongoDatabase, collection: _CountedCollection) -> None:
        self.db = db
        self.collection = collection
        # (run id, key) -> the candidate this object stored last for the pair,
        # least recently used first.
        self._own: OrderedDict[tuple[str, str], _Candidate] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, run_id: str, greatest: dict[str, _Row]) -> None:
        """Store each key's greatest row of one append unless a later one is stored.

        A call sends one insert, plus one bulk delete when it replaces earlier
        candidates of this object. Pairs this object has not written cost a
        second insert and a read of their candidates when another writer started
        them. Must run inside `db.errors()`.
        """
        owned, unknown = self._recall(run_id, greatest)
        later = {}
        for key, own in owned.items():
            if greatest[key].order > own[1]:
                later[key] = own
            elif self.collection.find_one({"_id": own[0]}, {"_id": 1}) is None:
                # Only `delete_run` or a greater candidate removes it. After
                # `delete_run` the row may be the latest point again.
                unknown.append(key)
        firsts = [_first_latest_document(run_id, key, greatest[key]) for key in unknown]
        ordinary = [_latest_document(run_id, key, greatest[key]) for key in later]
        existing = self.collection.insert_all(firsts + ordinary) \
            if firsts or ordinary else set()
        stored: dict[str, _Candidate] = {}
        contested = []
        for document in firsts:
            if document["_id"] in existing:
                contested.append(document["key"])
            else:
                stored[document["key"]] = (document["_id"],
                                           greatest[document["key"]].order, False)
        # An ordinary `_id` that exists already is a retried point with the
        # same content.
        stored.update((document["key"], (document["_id"],
                                         greatest[document["key"]].order, True))
                      for document in ordinary)
        outranked = [own[0] for key, own in later.items()
                     if own[2] and own[0] != stored[key][0]]
        if contested:
            outranked += self._add_contested(run_id, contested, greatest, stored)
        outranked += self._remember(run_id, stored, owned)
        self.collection.delete_ids(outranked)

    def _add_contested(self, run_id: str, keys: list[str], greatest: dict[str, _Row],
                       stored: dict[str, _Candidate]) -> list[str]:
        """Store rows of pairs that another writer started; return outranked ids.

        Reads the pairs' candidates, inserts a row only when it is later than the
        greatest of them, and returns the ids of the candidates that the greatest
        one (stored before or inserted now) outranks. First candidates are never
        returned, so that their `_id` is never inserted twice. Adds to `stored`
        the greatest candidate of each pair, which the next append compares
        its rows with.
        """
        candidates: dict[str, list[tuple[tuple, str, bool]]] = {key: [] for key in keys}
        cursor = self.collection.find({"run_id": run_id, "key": {"$in": keys}},
                                      {"key": 1, "step": 1, "ts": 1, "seq": 1,
                                       "first": 1})
        for document in self.db.stream(cursor):
            candidates[document["key"]].append(
                (_latest_order(document), document["_id"],
                 not document.get("first", False)))
        inserts = []
        outranked = []
        for key, found in candidates.items():
            best = max(found, default=None)
            row = greatest[key]
            if best is None or row.order > best[0]:
                document = _latest_document(run_id, key, row)
                inserts.append(document)
                stored[key] = (document["_id"], row.order, True)
                outranked += [item[1] for item in found if item[2]]
            else:
                stored[key] = (best[1], best[0], best[2])
                outranked += [item[1] for item in found if item[2] and item is not best]
        if inserts:
            self.collection.insert_all(inserts)
        return outranked

    def _recall(self, run_id: str, greatest: dict[str, _Row]
                ) -> tuple[dict[str, _Candidate], list[str]]:
        """Split the keys into those with a remembered own candidate and the rest."""
        owned = {}
        unknown = []
        with self._lock:
            for key in greatest:
                own = self._own.get((run_id, key))
                if own is None:
                    unknown.append(key)
                else:
                    self._own.move_to_end((run_id, key))
                    owned[key] = own
        return owned, unknown

    def _remember(self, run_id: str, stored: dict[str, _Candidate],
                  recalled: dict[str, _Candidate]) -> list[str]:
        """Remember the stored candidates; return ids of own outranked ones.

        When another thread stored a candidate of the same pair since
        `_recall`, both candidates exist, so the lesser one may be deleted.
        """
        outranked = []
        with self._lock:
            for key, candidate in stored.items():
                current = self._own.get((run_id, key))
                if current is not None and current != recalled.get(key) and \
                        current[0] != candidate[0]:
                    lesser, candidate = sorted((current, candidate),
                                               key=lambda item: (item[1], item[0]))
                    if lesser[2]:
                        outranked.append(lesser[0])
                self._own[(run_id, key)] = candidate
                self._own.move_to_end((run_id, key))
            while len(self._own) > LATEST_MEMORY:
                self._own.popitem(last=False)
        return outranked

    def forget_run(self, run_id: str) -> None:
        with self._lock:
            for pair in [pair for pair in self._own if pair[0] == run_id]:
                del self._own[pair]


# ---------------------------------------------------------------------------
# Lineage, audit, blobs
# ---------------------------------------------------------------------------


class MongoLineageRepository(LineageRepository):
    def __init__(self, db: _MongoDatabase) -> None:
        self.db = db
        self.nodes = db.collection("lineage_nodes")
        self.edge_documents = db.collection("lineage_edges")

    def put_node(self, node: LineageNode) -> None:
        record = node.to_record()
        with self.db.errors():
            try:
                self.nodes.insert_one({"_id": node.id, "kind": record["kind"],
                                       "label": record["label"]})
                return
            except DuplicateKeyError as error:
                existing = self.nodes.find_one({"_id": node.id}, {"kind": 1})
                if existing is not None and existing["kind"] != record["kind"]:
                    raise AlreadyExistsError(
                        f"lineage node {node.id!r} exists as a {existing['kind']}, not "
                        f"a {record['kind']}", node.id) from error

    def get_node(self, node_id: str) -> LineageNode:
        with self.db.errors():
            document = self.nodes.find_one({"_id": node_id})
        if document is None:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return _node(document)

    def add_edge(self, edge: LineageEdge) -> None:
        with self.db.errors():
            try:
                self.edge_documents.insert_one({"_id": edge.key, **edge.to_record()})
            except DuplicateKeyError:
                return  # edges are immutable: the stored one stays

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        field = "downstream" if direction == "upstream" else "upstream"
        cursor = self.edge_documents.find({field: node_id})
        found = [LineageEdge.from_record(d) for d in self.db.stream(cursor)]
        return sorted(found, key=lambda e: (e.source, e.type.value, e.target))

    def scan_nodes(self) -> Iterator[LineageNode]:
        cursor = self.nodes.find({}, sort=[("_id", 1)], batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield _node(document)

    def scan_edges(self) -> Iterator[LineageEdge]:
        cursor = self.edge_documents.find({}, sort=[("_id", 1)], batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield LineageEdge.from_record(document)

    def delete_node(self, node_id: str) -> None:
        with self.db.errors():
            self.edge_documents.delete_many({"$or": [{"source": node_id},
                                                     {"target": node_id}]})
            self.nodes.delete_one({"_id": node_id})


def _node(document: dict[str, Any]) -> LineageNode:
    return LineageNode.from_record({"id": document["_id"], "kind": document["kind"],
                                    "label": document.get("label")})


def audit_document(record: dict[str, Any]) -> dict[str, Any]:
    """Return the stored document of an audit event record."""
    document = {key: value for key, value in record.items() if key != "seq"}
    document["_id"] = record["seq"]
    document["details"] = _dumps(record["details"])
    return document


def _audit_event(document: dict[str, Any]) -> AuditEvent:
    record = {key: value for key, value in document.items() if key != "_id"}
    record["seq"] = document["_id"]
    record["details"] = json.loads(document["details"])
    return AuditEvent.from_record(record)


class MongoAuditRepository(AuditRepository):
    def __init__(self, db: _MongoDatabase) -> None:
        self.db = db
        self.events = db.collection("audit_events")

    def append(self, event: AuditEvent) -> None:
        with self.db.errors():
            try:
                self.events.insert_one(audit_document(event.to_record()))
            except DuplicateKeyError as error:
                raise AlreadyExistsError(f"audit event seq {event.seq} is taken",
                                         event.seq) from error

    def last(self) -> AuditEvent | None:
        with self.db.errors():
            document = self.events.find_one({}, sort=[("_id", -1)])
        return None if document is None else _audit_event(document)

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        cursor = self.events.find({"_id": {"$gt": after_seq}}, sort=[("_id", 1)],
                                  batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield _audit_event(document)

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        cursor = self.events.find({"entity_id": entity_id}, sort=[("_id", 1)],
                                  batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield _audit_event(document)


class MongoBlobRepository(BlobRepository):
    def __init__(self, db: _MongoDatabase) -> None:
        self.db = db
        self.blobs = db.collection("blobs")

    @staticmethod
    def _id(namespace: str, key: str) -> str:
        return f"{_escape_id_part(namespace)}|{key}"

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        document = {"namespace": namespace, "key": key, "doc": _dumps(record)}
        with self.db.errors():
            self.blobs.replace_one({"_id": self._id(namespace, key)}, document,
                                   upsert=True)

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        with self.db.errors():
            document = self.blobs.find_one({"_id": self._id(namespace, key)})
        if document is None:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return json.loads(document["doc"])

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        cursor = self.blobs.find({"namespace": namespace}, sort=[("key", 1)],
                                 batch_size=SCAN_BATCH)
        for document in self.db.stream(cursor):
            yield document["key"], json.loads(document["doc"])

    def delete(self, namespace: str, key: str) -> None:
        with self.db.errors():
            self.blobs.delete_one({"_id": self._id(namespace, key)})


# ---------------------------------------------------------------------------
# Indexes
# ---------------------------------------------------------------------------


def _entity_indexes(kind: str) -> list[IndexModel]:
    indexes = []
    unique = UNIQUE_KEYS[kind]
    if unique:
        indexes.append(IndexModel([(name, 1) for name in unique], unique=True))
    for name in INDEXED_FIELDS[kind]:
        # A unique index that starts with the field already serves it.
        if not unique or unique[0] != name:
            indexes.append(IndexModel([(name, 1), ("_id", 1)]))
    order_fields = ["created_at", "updated_at"]
    if "name" in STRING_FIELDS[kind] and "name" not in INDEXED_FIELDS[kind]:
        order_fields.append("name")
    for name in order_fields:
        indexes.append(IndexModel([(name, 1), ("_id", 1)]))
    return indexes


def index_plan() -> dict[str, list[IndexModel]]:
    """Return the required indexes per collection; `_id` is always indexed."""
    plan = {name: _entity_indexes(cls.kind) for name, cls in COLLECTIONS.items()}
    plan["metric_chunks"] = [IndexModel([("run_id", 1), ("key", 1), ("lo_step", 1),
                                         ("lo_ts", 1), ("lo_seq", 1)])]
    plan["metric_latest"] = [IndexModel([("run_id", 1), ("key", 1)])]
    plan["lineage_edges"] = [IndexModel([(name, 1)]) for name in
                             ("upstream", "downstream", "source", "target")]
    plan["audit_events"] = [IndexModel([("entity_id", 1), ("_id", 1)])]
    plan["blobs"] = [IndexModel([("namespace", 1), ("key", 1)])]
    return plan


def optional_index_plan() -> dict[str, list[IndexModel]]:
    """Return indexes that speed things up where the server supports them.

    A wildcard index covers filters on any `_view` path; a TTL index removes
    revision claims after CLAIM_RETENTION_SECONDS. FerretDB 1.24 has neither, and
    other servers without them are tolerated.
    """
    plan: dict[str, list[IndexModel]] = {
        name: [IndexModel([("_view.$**", 1)])] for name in COLLECTIONS}
    plan["revisions"] = [IndexModel([("at", 1)],
                                    expireAfterSeconds=CLAIM_RETENTION_SECONDS)]
    return plan


# ---------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------


def _new_client(location: MongoLocation) -> Any:
    options: dict[str, Any] = {"connect": False, "tz_aware": True}
    if location.option("appname") is None:
        options["appname"] = "mltrail"
    try:
        if location.scheme == "mongodb":
            # The client only warns about a bad option value and then ignores it;
            # parsing strictly rejects it. A mongodb+srv URL would need DNS here.
            uri_parser.parse_uri(location.uri, warn=False)
        return pymongo.MongoClient(location.uri, **options)
    except (ConfigurationError, ValueError, TypeError) as error:
        raise InvalidInputError(f"MongoDB URL {location.url!r} is invalid: {error}",
                                location.url) from error


class MongoBackend(Backend):
    """A MongoDB database; see the module docstring for the layout."""

    schemes = SCHEMES

    def __init__(self, location: MongoLocation, client: Any = None) -> None:
        self.location = location
        self._owns_client = client is None
        self.client = _new_client(location) if client is None else client
        self.db = _MongoDatabase(self.client[location.database], location.url)
        claims = _RevisionClaims(self.db)
        self.experiments = MongoEntityRepository(self.db, "experiments", Experiment,
                                                 claims)
        self.runs = MongoEntityRepository(self.db, "runs", Run, claims)
        self.datasets = MongoEntityRepository(self.db, "datasets", Dataset, claims)
        self.models = MongoEntityRepository(self.db, "models", Model, claims)
        self.model_versions = MongoEntityRepository(self.db, "model_versions",
                                                    ModelVersion, claims)
        self.metrics = MongoMetricRepository(self.db)
        self.lineage = MongoLineageRepository(self.db)
        self.audit = MongoAuditRepository(self.db)
        self.blobs = MongoBlobRepository(self.db)
        self._initialized = False

    @classmethod
    def from_url(cls, url: str) -> MongoBackend:
        return cls(MongoLocation.parse(url))

    @classmethod
    def conformance_harness(cls, url: str) -> MongoConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return MongoConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="mongodb",
            pushdown_operators=PUSHDOWN_OPERATORS,
            native_order_fields=NATIVE_ORDER_FIELDS,
            # Single-document atomicity and unique indexes only; see the module
            # docstring for how updates stay compare-and-set without transactions.
            transactions=False,
            conditional_writes=True,
            max_item_bytes=MAX_DOCUMENT_BYTES,
            max_batch_size=limits.MAX_METRIC_BATCH,
            persistent=True,
            multi_process=True,
        )

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def database_name(self) -> str:
        return self.location.database

    def initialize(self) -> None:
        """Create missing indexes; existing ones are left untouched.

        Only missing indexes are requested because FerretDB 1.24 drops the
        connection when one createIndexes command names two or more existing ones.
        """
        if self._initialized:
            return
        with self.db.errors():
            collections = set(self.db.database.list_collection_names())
            for name, indexes in index_plan().items():
                missing = self._missing_indexes(name, indexes, collections)
                if missing:
                    self.db.collection(name).create_indexes(missing)
            if "ferretdbVersion" not in self.db.database.command("buildInfo"):
                # FerretDB 1.24 records a wildcard index that it cannot build, after
                # which every insert into the collection fails.
                self._create_optional_indexes(collections)
        self._initialized = True

    def _missing_indexes(self, name: str, indexes: list[IndexModel],
                         collections: set[str]) -> list[IndexModel]:
        if name not in collections:
            return list(indexes)
        existing = {index["name"] for index in self.db.collection(name).list_indexes()}
        return [index for index in indexes if index.document["name"] not in existing]

    def _create_optional_indexes(self, collections: set[str]) -> None:
        unsupported: set[str] = set()
        for name, indexes in optional_index_plan().items():
            collection = self.db.collection(name)
            for index in self._missing_indexes(name, indexes, collections):
                kind = "ttl" if "expireAfterSeconds" in index.document else "wildcard"
                if kind in unsupported:
                    continue
                try:
                    collection.create_indexes([index])
                except OperationFailure as error:
                    unsupported.add(kind)
                    _log_unsupported(kind, self.url, error)

    def telemetry_counters(self) -> dict[str, int]:
        """Return the documents written through this backend object since it was
        opened, and their BSON bytes. See `_CountedCollection` for what counts."""
        return self.db.counters.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Return bytes stored per collection of the store's database.

        The figures come from the `$collStats` stage's `storageStats`, summed
        over shards: `bytes` is `storageSize` (data as allocated on disk),
        `index_bytes` is `totalIndexSize`, and `documents` is `count`.
        `total_bytes` is the sum of `bytes` and `index_bytes` over the
        collections. Raise BackendUnavailableError naming the collection or
        database when the server fails, and UnsupportedCapabilityError when it
        lacks `$collStats`.
        """
        collections = {name: self._collection_stats(name)
                       for name in self._collection_names()}
        total = sum(figures["bytes"] + figures["index_bytes"]
                    for figures in collections.values())
        return {"collections": collections, "total_bytes": total,
                "method": "$collStats", "database": self.database_name}

    def _collection_names(self) -> list[str]:
        try:
            names = self.db.database.list_collection_names(
                filter={"type": "collection"})
        except PyMongoError as error:
            raise self._storage_error(error, f"database {self.database_name!r}",
                                      self.database_name) from error
        return sorted(name for name in names if not name.startswith("system."))

    def _collection_stats(self, name: str) -> dict[str, int]:
        stage = {"$collStats": {"storageStats": {}}}
        try:
            documents = list(self.db.database[name].aggregate([stage]))
        except PyMongoError as error:
            raise self._storage_error(error, f"collection {name!r}", name) from error
        figures = {"bytes": 0, "index_bytes": 0, "documents": 0}
        for document in documents:
            stats = document.get("storageStats", {})
            figures["bytes"] += int(stats.get("storageSize", 0))
            figures["index_bytes"] += int(stats.get("totalIndexSize", 0))
            figures["documents"] += int(stats.get("count", 0))
        return figures

    def _storage_error(self, error: PyMongoError, what: str,
                       value: str) -> MltrailError:
        where = f"{what} of the MongoDB store {self.url!r}"
        if isinstance(error, OperationFailure) and \
                error.code in UNSUPPORTED_ERROR_CODES:
            return UnsupportedCapabilityError(
                f"the server of {where} does not support $collStats, so its storage "
                f"sizes are unavailable: {error}", value)
        return BackendUnavailableError(
            f"reading the storage sizes of {where} failed: {error}; check that the "
            "server runs and that the user may run collStats", value)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _log_unsupported(kind: str, url: str, error: OperationFailure) -> None:
    if kind in _logged_unsupported:
        return
    _logged_unsupported.add(kind)
    logger.warning("the MongoDB server of %s cannot create a %s index (%s); the "
                   "backend stays correct without it", url, kind,
                   error.details.get("codeName") if error.details else error.code)


class MongoConformanceHarness:
    """Conformance harness for MongoDB: one database per case.

    All stores share one client. `destroy` empties a case's database and keeps a
    few for reuse, because creating the indexes of a new database is most of the
    cost of a case on FerretDB. Raw hooks read and write documents with the
    driver directly.
    """

    spare_databases = 4

    def __init__(self, url: str) -> None:
        self.location = MongoLocation.parse(url)
        self.client = _new_client(self.location)
        self._count = 0
        self._spare: list[MongoLocation] = []
        # A random part keeps databases of earlier, interrupted runs out of the way.
        self._prefix = f"{self.location.database[:24]}_{secrets.token_hex(4)}"

    def create(self) -> MongoBackend:
        if self._spare:
            backend = MongoBackend(self._spare.pop(), client=self.client)
            # Emptied by destroy(); its indexes were created by an earlier backend.
            backend._initialized = True
            return backend
        self._count += 1
        name = f"{self._prefix}_{self._count}"
        backend = MongoBackend(self.location.with_database(name), client=self.client)
        backend.initialize()
        return backend

    def destroy(self, backend: MongoBackend) -> None:
        backend.close()
        database = self.client[backend.database_name]
        if len(self._spare) >= self.spare_databases:
            self.client.drop_database(database)
            return
        for name in database.list_collection_names():
            database[name].delete_many({})
        self._spare.append(backend.location)

    def store_url(self, backend: MongoBackend) -> str:
        location = backend.location
        if location.userinfo and location.option("authSource") is None:
            # The path also names the authentication database unless authSource
            # is given, and the user lives in the database of the harness's URL.
            location = location.with_option("authSource", self.location.database)
        return location.uri

    def close(self) -> None:
        """Drop the databases kept for reuse and close the client."""
        for location in self._spare:
            self.client.drop_database(location.database)
        self._spare.clear()
        self.client.close()

    def _collection(self, backend: MongoBackend, kind: str) -> Any:
        if kind == "audit":
            return self.client[backend.database_name]["audit_events"]
        names = {cls.kind: name for name, cls in COLLECTIONS.items()}
        return self.client[backend.database_name][names[kind]]

    def raw_read(self, backend: MongoBackend, kind: str, key: Any) -> dict | None:
        document = self._collection(backend, kind).find_one({"_id": key})
        if document is None:
            return None
        if kind == "audit":
            record = {k: v for k, v in document.items() if k != "_id"}
            return {**record, "seq": document["_id"],
                    "details": json.loads(document["details"])}
        record = {k: v for k, v in document.items() if not k.startswith("_")}
        record.update((k, json.loads(v)) for k, v in document["_json"].items())
        return {"id": document["_id"], **record}

    def raw_write(self, backend: MongoBackend, kind: str, record: dict) -> None:
        if kind == "audit":
            document = audit_document(record)
        else:
            document = entity_document(record, kind)
            document["_incarnation"] = new_id()
        self._collection(backend, kind).replace_one({"_id": document["_id"]}, document,
                                                    upsert=True)
