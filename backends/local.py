"""The embedded default backend: one SQLite file used as a document store.

Entities are JSON documents in one table per kind, next to the few columns
that queries need (namespace, the unique key, indexed fields, timestamps).
Metric points are packed into compressed chunks of up to 4,096 points of one
run and metric (see `mltrail.backends.local_metrics`), and a separate table
keeps the latest point per metric, so that lookup costs the same for ten points
or a million. The leaves of each run's params and tags are
also rows of `run_fields`, indexed by field and value, so a search narrows the
runs in SQL before the core decodes and filters them. Everything goes through
the standard library's sqlite3, with WAL journaling so several processes can
write at once.

URL: `local:///absolute/path/store.db`, or `local://relative/path.db`
relative to the working directory; `~` is expanded.

Floats: SQLite cannot store NaN (it becomes NULL) and a REAL column turns -0.0
into 0, so latest values that are non-finite or negative zero are kept as
their IEEE 754 bits in a separate column and restored exactly. Chunks store
every value as its IEEE 754 bits.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from mltrail import codec, limits
from mltrail.backend import (
    INDEXED_FIELDS, AuditRepository, Backend, BlobRepository, Capabilities,
    EntityRepository, LineageRepository, ScanRequest,
)
from mltrail.clock import isoformat
from mltrail.domain import (
    AuditEvent, Dataset, Entity, Experiment, LineageEdge, LineageNode,
    Model, ModelVersion, Run,
)
from mltrail.errors import (
    AlreadyExistsError, BackendUnavailableError, ConflictError, InvalidInputError,
    MltrailError, NotFoundError,
)
from mltrail.query.ast import Compare, Exists, In, conjuncts

from mltrail.backends.local_metrics import (
    METRICS_SCHEMA, LocalMetricRepository, migrate_point_rows,
)

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 60.0
SCAN_CHUNK = 1_000
NATIVE_ORDER_FIELDS = frozenset({"id", "created_at", "updated_at"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_nodes (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_edges (
    key TEXT PRIMARY KEY, source TEXT NOT NULL, target TEXT NOT NULL,
    type TEXT NOT NULL, upstream TEXT NOT NULL, downstream TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_edges_upstream ON lineage_edges (upstream);
CREATE INDEX IF NOT EXISTS lineage_edges_downstream ON lineage_edges (downstream);
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY, entity_id TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_entity ON audit_events (entity_id, seq);
CREATE TABLE IF NOT EXISTS run_fields (
    run_id TEXT NOT NULL, field TEXT NOT NULL, value
);
CREATE INDEX IF NOT EXISTS run_fields_lookup ON run_fields (field, value, run_id);
CREATE INDEX IF NOT EXISTS run_fields_run ON run_fields (run_id);
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY, value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    namespace TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""

_ENTITY_TYPES: dict[str, type[Entity]] = {
    "experiments": Experiment,
    "runs": Run,
    "datasets": Dataset,
    "models": Model,
    "model_versions": ModelVersion,
}


def _entity_schema(table: str, kind: str) -> str:
    indexed = INDEXED_FIELDS[kind]
    columns = "".join(f", f_{name} TEXT" for name in indexed)
    indexes = "".join(
        f"CREATE INDEX IF NOT EXISTS {table}_{name} ON {table} (f_{name}, id);\n"
        for name in indexed
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, revision INTEGER "
        f"NOT NULL, uniq TEXT UNIQUE, created_at TEXT NOT NULL, updated_at TEXT NOT "
        f"NULL{columns}, doc TEXT NOT NULL) WITHOUT ROWID;\n"
        f"CREATE INDEX IF NOT EXISTS {table}_created ON {table} (created_at, id);\n"
        f"CREATE INDEX IF NOT EXISTS {table}_updated ON {table} (updated_at, id);\n"
        + indexes
    )


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Database:
    """Per-thread connections to one SQLite file, with translated errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            except sqlite3.Error as error:
                raise BackendUnavailableError(
                    f"cannot open the local store {str(self.path)!r}: {error}",
                    str(self.path)) from error
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one IMMEDIATE transaction, retrying when the file is busy."""
        conn = self.connection()
        for attempt in range(20):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise _translate(error, self.path) from error
                logger.debug("local store busy, retrying (attempt %d)", attempt + 1)
                time.sleep(0.05 * (attempt + 1))
        else:
            raise BackendUnavailableError(
                f"the local store {str(self.path)!r} stayed locked; another process "
                "holds a long write transaction", str(self.path))
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            conn.execute("ROLLBACK")
            raise _translate(error, self.path) from error

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise _translate(error, self.path) from error

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    continue
            self._connections.clear()
        self._local = threading.local()


def _translate(error: sqlite3.Error, path: Path) -> MltrailError:
    if isinstance(error, sqlite3.IntegrityError):
        return AlreadyExistsError(str(error), None)
    return BackendUnavailableError(f"local store {str(path)!r} failed: {error}",
                                   str(path))


class LocalEntityRepository(EntityRepository):
    def __init__(self, db: _Database, table: str, entity_type: type[Entity]) -> None:
        self.db = db
        self.table = table
        self.entity_type = entity_type
        self.indexed = INDEXED_FIELDS[entity_type.kind]

    def _unique_text(self, record: dict[str, Any]) -> str | None:
        if not self.unique_key:
            return None
        return json.dumps([record[name] for name in self.unique_key], ensure_ascii=False)

    def _row(self, entity: Entity) -> tuple[dict[str, Any], list[Any]]:
        record = entity.to_record()
        values = [record["id"], record["revision"], self._unique_text(record),
                  record["created_at"], record["updated_at"]]
        values += [_text(record.get(name)) for name in self.indexed]
        values.append(_dumps(record))
        return record, values

    def insert(self, entity: Entity) -> None:
        record, values = self._row(entity)
        columns = ["id", "revision", "uniq", "created_at", "updated_at",
                   *(f"f_{n}" for n in self.indexed), "doc"]
        sql = (f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES "
               f"({', '.join('?' * len(columns))})")
        try:
            with self.db.write() as conn:
                conn.execute(sql, values)
                self._write_fields(conn, entity)
        except sqlite3.IntegrityError as error:
            if self.db.query(f"SELECT 1 FROM {self.table} WHERE id = ?", [entity.id]):
                raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                         entity.id) from error
            unique = tuple(record[name] for name in self.unique_key)
            raise AlreadyExistsError(
                f"{self.kind} with {dict(zip(self.unique_key, unique))} already exists",
                unique) from error

    def get(self, entity_id: str) -> Entity:
        rows = self.db.query(f"SELECT doc FROM {self.table} WHERE id = ?", [entity_id])
        if not rows:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self.entity_type.from_record(json.loads(rows[0][0]))

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, Entity]:
        found: dict[str, Entity] = {}
        ids = list(dict.fromkeys(entity_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.db.query(
                f"SELECT doc FROM {self.table} WHERE id IN ({','.join('?' * len(chunk))})",
                chunk)
            for (doc,) in rows:
                entity = self.entity_type.from_record(json.loads(doc))
                found[entity.id] = entity
        return found

    def find_unique(self, key: tuple) -> Entity | None:
        text = json.dumps(list(key), ensure_ascii=False)
        rows = self.db.query(f"SELECT doc FROM {self.table} WHERE uniq = ?", [text])
        return self.entity_type.from_record(json.loads(rows[0][0])) if rows else None

    def update(self, entity: Entity) -> None:
        record, values = self._row(entity)
        assignments = ", ".join(
            ["revision = ?", "updated_at = ?", *(f"f_{n} = ?" for n in self.indexed),
             "doc = ?"])
        params = [record["revision"], record["updated_at"],
                  *values[5:5 + len(self.indexed)], values[-1], entity.id,
                  entity.revision - 1, values[2]]
        with self.db.write() as conn:
            cursor = conn.execute(
                f"UPDATE {self.table} SET {assignments} WHERE id = ? AND revision = ? "
                "AND uniq IS ?", params)
            if cursor.rowcount == 1:
                self._write_fields(conn, entity, replace=True)
                return
            row = conn.execute(f"SELECT revision, uniq FROM {self.table} WHERE id = ?",
                               [entity.id]).fetchone()
        if row is None:
            raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
        if row[1] != values[2]:
            raise InvalidInputError(
                f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot change",
                entity.id)
        raise ConflictError(
            f"{self.kind} {entity.id!r} was changed concurrently (stored revision "
            f"{row[0]}, expected {entity.revision - 1})", entity.id)

    def delete(self, entity_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(f"DELETE FROM {self.table} WHERE id = ?", [entity_id])
            if self.table == "runs":
                conn.execute("DELETE FROM run_fields WHERE run_id = ?", [entity_id])

    def _write_fields(self, conn: sqlite3.Connection, entity: Entity,
                      replace: bool = False) -> None:
        """Index a run's params and tags in `run_fields` within the open transaction."""
        if self.table != "runs":
            return
        if replace:
            conn.execute("DELETE FROM run_fields WHERE run_id = ?", [entity.id])
        conn.executemany(
            "INSERT INTO run_fields (run_id, field, value) VALUES (?, ?, ?)",
            _field_rows(entity))

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        where, params = self._pushdown(request)
        order = [(k.field[0], k.descending) for k in request.order]
        if not order:
            order = [("id", False)]
        after = request.after
        while True:
            clauses = list(where)
            values = list(params)
            if after is not None:
                clause, extra = _keyset(order, after)
                clauses.append(clause)
                values += extra
            sql = f"SELECT doc FROM {self.table}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY " + ", ".join(
                f"{_column(f)} {'DESC' if d else 'ASC'}" for f, d in order)
            if order[-1][0] != "id":
                sql += ", id ASC"
            sql += f" LIMIT {SCAN_CHUNK}"
            rows = self.db.query(sql, values)
            for (doc,) in rows:
                yield self.entity_type.from_record(json.loads(doc))
            if len(rows) < SCAN_CHUNK:
                return
            last = json.loads(rows[-1][0])
            after = (*(_order_value(last, f) for f, _ in order), last["id"])

    def _pushdown(self, request: ScanRequest) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if request.namespace is not None and "namespace" in self.indexed:
            clauses.append("f_namespace = ?")
            params.append(request.namespace)
        for part in conjuncts(request.filter):
            if len(getattr(part, "field", ())) != 1 or part.field[0] not in self.indexed:
                continue
            column = f"f_{part.field[0]}"
            if isinstance(part, Compare) and part.op == "=" and isinstance(part.value, str):
                clauses.append(f"{column} = ?")
                params.append(part.value)
            elif isinstance(part, In) and not part.negated and \
                    all(isinstance(v, str) for v in part.values):
                clauses.append(f"{column} IN ({','.join('?' * len(part.values))})")
                params.extend(part.values)
        pushed = _run_ids_clause(conjuncts(request.filter)) if self.table == "runs" \
            else None
        if pushed is not None:
            clauses.append(pushed[0])
            params.extend(pushed[1])
        return clauses, params


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _column(field: str) -> str:
    if field not in NATIVE_ORDER_FIELDS:
        raise InvalidInputError(f"the local backend cannot order by {field!r}", field)
    return field


def _order_value(record: dict[str, Any], field: str) -> Any:
    return record[field]


def _keyset(order: list[tuple[str, bool]], after: tuple) -> tuple[str, list[Any]]:
    """Build `(f1, f2, ..., id) > after` for mixed directions; id is always ascending."""
    *values, last_id = after
    bounds = [isoformat(v) if isinstance(v, datetime) else v for v in values]
    keys = list(order)
    if keys[-1][0] != "id":
        keys.append(("id", False))
        bounds.append(last_id)
    alternatives = []
    params: list[Any] = []
    for index, (field, descending) in enumerate(keys):
        clause = [f"{_column(f)} = ?" for f, _ in keys[:index]]
        params += bounds[:index]
        clause.append(f"{_column(field)} {'<' if descending else '>'} ?")
        params.append(bounds[index])
        alternatives.append("(" + " AND ".join(clause) + ")")
    return "(" + " OR ".join(alternatives) + ")", params


# ----------------------------------------------------------------------
# run_fields: params and tags of runs, indexed for search pushdown
# ----------------------------------------------------------------------

# Each leaf of a run's params and tags is a row (run id, field, value). `field`
# is the parent name and the leaf's key path joined by dots, such as
# `params.optimizer.lr`. Keys that contain dots make some paths ambiguous, which
# only adds candidates. `value` has no column affinity, so SQLite keeps each
# value's own type: ints within int64 as INTEGER, other numbers as REAL, text as
# TEXT, and booleans as a one-byte BLOB that equals no number or string. It is
# NULL for values that no comparison with a number or string matches in the
# core (None, lists, empty dicts, NaN) and for ints beyond int64, which SQLite
# cannot hold exactly.
FIELD_PARENTS = ("params", "tags")
_FIELD_OPERATORS = frozenset({"=", "<", "<=", ">", ">="})
_INT64 = (-2**63, 2**63 - 1)


def _field_rows(run: Entity) -> list[tuple[str, str, Any]]:
    rows = []
    for parent in FIELD_PARENTS:
        for path, leaf in codec.flatten(getattr(run, parent)):
            rows.append((run.id, parent + "." + ".".join(path), _field_value(leaf)))
    return rows


def _field_value(leaf: Any) -> Any:
    if isinstance(leaf, bool):
        return b"\x01" if leaf else b"\x00"
    if isinstance(leaf, int):
        return leaf if _INT64[0] <= leaf <= _INT64[1] else None
    if isinstance(leaf, float):
        return None if leaf != leaf else leaf
    if isinstance(leaf, str):
        return leaf
    return None


def _decodable_field_rows(record: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Return the `run_fields` rows of a stored run record, upgraded as on read.

    A record that cannot be decoded gets none; reading it fails anyway.
    """
    try:
        return _field_rows(Run.from_record(record))
    except (MltrailError, KeyError, TypeError, ValueError):
        logger.warning("run record %r cannot be decoded; its params and tags are not "
                       "indexed for search", record.get("id"))
        return []


def _sql_literal(value: Any) -> Any:
    """Return a filter literal as SQLite compares it, or None when not pushed down."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, float):
        return None if value != value else value
    return value if isinstance(value, str) else None


def _field_condition(part: Any) -> tuple[str, list[Any]] | None:
    """Translate one conjunct on params or tags into a query for candidate run ids.

    The query returns every run the core's evaluator could accept: a number
    literal also returns runs whose value is NULL (ints beyond int64 are stored
    so), and `exists` returns runs with the field itself or any field below it.
    Negations, `like`, booleans and NaN are left to the core.
    """
    field = getattr(part, "field", ())
    if len(field) < 2 or field[0] not in FIELD_PARENTS:
        return None
    name = field[0] + "." + ".".join(field[1:])
    select = "SELECT run_id FROM run_fields WHERE field = ?"
    null = f"{select} AND value IS NULL"
    if isinstance(part, Compare) and part.op in _FIELD_OPERATORS:
        literal = _sql_literal(part.value)
        if literal is None:
            return None
        if isinstance(literal, str):
            return f"{select} AND value {part.op} ?", [name, literal]
        return _union(f"{select} AND value {part.op} ?", null), [name, literal, name]
    if isinstance(part, In) and not part.negated and part.values:
        literals = [_sql_literal(value) for value in part.values]
        if any(literal is None for literal in literals):
            return None
        listed = f"{select} AND value IN ({', '.join('?' * len(literals))})"
        if all(isinstance(literal, str) for literal in literals):
            return listed, [name, *literals]
        return _union(listed, null), [name, *literals, name]
    if isinstance(part, Exists) and not part.negated:
        # Children of `a.b` sort between `a.b.` and `a.b/`, since '/' follows '.'.
        below = "SELECT run_id FROM run_fields WHERE field > ? AND field < ?"
        return _union(select, below), [name, name + ".", name + "/"]
    return None


def _union(first: str, second: str) -> str:
    return f"SELECT run_id FROM ({first} UNION ALL {second})"


def _run_ids_clause(parts: list[Any]) -> tuple[str, list[Any]] | None:
    """Return `id IN (...)` over the intersection of each pushed-down conjunct's runs.

    Intersecting the id lists first means only matching runs are read from the
    runs table, whatever order SQLite picks for the lists.
    """
    queries: list[str] = []
    params: list[Any] = []
    for part in parts:
        pushed = _field_condition(part)
        if pushed is not None:
            queries.append(pushed[0])
            params.extend(pushed[1])
    if not queries:
        return None
    return f"id IN ({' INTERSECT '.join(queries)})", params

class LocalLineageRepository(LineageRepository):
    def __init__(self, db: _Database) -> None:
        self.db = db

    def put_node(self, node: LineageNode) -> None:
        record = node.to_record()
        with self.db.write() as conn:
            row = conn.execute("SELECT kind FROM lineage_nodes WHERE id = ?",
                               [node.id]).fetchone()
            if row is None:
                conn.execute("INSERT INTO lineage_nodes (id, kind, label) VALUES (?, ?, ?)",
                             [record["id"], record["kind"], record["label"]])
                return
        if row[0] != record["kind"]:
            raise AlreadyExistsError(
                f"lineage node {node.id!r} exists as a {row[0]}, not a {record['kind']}",
                node.id)

    def get_node(self, node_id: str) -> LineageNode:
        rows = self.db.query("SELECT id, kind, label FROM lineage_nodes WHERE id = ?",
                             [node_id])
        if not rows:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return LineageNode.from_record(dict(zip(("id", "kind", "label"), rows[0])))

    def add_edge(self, edge: LineageEdge) -> None:
        record = edge.to_record()
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO lineage_edges (key, source, target, type, upstream, "
                "downstream, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [edge.key, record["source"], record["target"], record["type"],
                 record["upstream"], record["downstream"], record["created_at"]])

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        column = "downstream" if direction == "upstream" else "upstream"
        rows = self.db.query(
            f"SELECT source, target, type, created_at FROM lineage_edges WHERE {column} = ? "
            "ORDER BY source, type, target", [node_id])
        return [_edge(row) for row in rows]

    def scan_nodes(self) -> Iterator[LineageNode]:
        for row in self.db.query("SELECT id, kind, label FROM lineage_nodes ORDER BY id"):
            yield LineageNode.from_record(dict(zip(("id", "kind", "label"), row)))

    def scan_edges(self) -> Iterator[LineageEdge]:
        rows = self.db.query(
            "SELECT source, target, type, created_at FROM lineage_edges ORDER BY key")
        for row in rows:
            yield _edge(row)

    def delete_node(self, node_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM lineage_edges WHERE source = ? OR target = ?",
                         [node_id, node_id])
            conn.execute("DELETE FROM lineage_nodes WHERE id = ?", [node_id])


def _edge(row: Sequence[Any]) -> LineageEdge:
    return LineageEdge.from_record(dict(zip(("source", "target", "type", "created_at"), row)))


class LocalAuditRepository(AuditRepository):
    def __init__(self, db: _Database) -> None:
        self.db = db

    def append(self, event: AuditEvent) -> None:
        try:
            with self.db.write() as conn:
                conn.execute("INSERT INTO audit_events (seq, entity_id, doc) VALUES (?, ?, ?)",
                             [event.seq, event.entity_id, _dumps(event.to_record())])
        except sqlite3.IntegrityError as error:
            raise AlreadyExistsError(f"audit event seq {event.seq} is taken",
                                     event.seq) from error

    def last(self) -> AuditEvent | None:
        rows = self.db.query("SELECT doc FROM audit_events ORDER BY seq DESC LIMIT 1")
        return AuditEvent.from_record(json.loads(rows[0][0])) if rows else None

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        while True:
            rows = self.db.query(
                "SELECT seq, doc FROM audit_events WHERE seq > ? ORDER BY seq LIMIT 1000",
                [after_seq])
            for _, doc in rows:
                yield AuditEvent.from_record(json.loads(doc))
            if len(rows) < 1000:
                return
            after_seq = rows[-1][0]

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        rows = self.db.query(
            "SELECT doc FROM audit_events WHERE entity_id = ? ORDER BY seq", [entity_id])
        for (doc,) in rows:
            yield AuditEvent.from_record(json.loads(doc))


class LocalBlobRepository(BlobRepository):
    def __init__(self, db: _Database) -> None:
        self.db = db

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO blobs (namespace, key, doc) VALUES (?, ?, ?)",
                         [namespace, key, _dumps(record)])

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        rows = self.db.query("SELECT doc FROM blobs WHERE namespace = ? AND key = ?",
                             [namespace, key])
        if not rows:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return json.loads(rows[0][0])

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        rows = self.db.query("SELECT key, doc FROM blobs WHERE namespace = ? ORDER BY key",
                             [namespace])
        for key, doc in rows:
            yield key, json.loads(doc)

    def delete(self, namespace: str, key: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM blobs WHERE namespace = ? AND key = ?",
                         [namespace, key])


class LocalBackend(Backend):
    """A SQLite file on local disk; see the module docstring."""

    schemes = ("local",)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser().resolve()
        self.db = _Database(self.path)
        self.experiments = LocalEntityRepository(self.db, "experiments", Experiment)
        self.runs = LocalEntityRepository(self.db, "runs", Run)
        self.datasets = LocalEntityRepository(self.db, "datasets", Dataset)
        self.models = LocalEntityRepository(self.db, "models", Model)
        self.model_versions = LocalEntityRepository(self.db, "model_versions", ModelVersion)
        self.metrics = LocalMetricRepository(self.db)
        self.lineage = LocalLineageRepository(self.db)
        self.audit = LocalAuditRepository(self.db)
        self.blobs = LocalBlobRepository(self.db)
        self._initialized = False

    @classmethod
    def from_url(cls, url: str) -> LocalBackend:
        if not url.startswith("local://"):
            raise InvalidInputError(f"not a local store URL: {url!r}; expected "
                                    "local:///path/to/store.db", url)
        path = url[len("local://"):].split("?", 1)[0]
        if not path:
            raise InvalidInputError(
                f"local store URL {url!r} has no path; expected local:///path/to/store.db",
                url)
        return cls(path)

    @classmethod
    def conformance_harness(cls, url: str) -> LocalConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return LocalConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="local",
            # `=` and `in` on indexed fields; these and the order comparisons and
            # `exists` on params and tags of runs (see `run_fields`).
            pushdown_operators=frozenset({"=", "in", "and", "<", "<=", ">", ">=",
                                          "exists"}),
            native_order_fields=NATIVE_ORDER_FIELDS,
            transactions=True,
            conditional_writes=True,
            max_item_bytes=1_000_000_000,
            max_batch_size=limits.MAX_METRIC_BATCH,
            persistent=True,
            multi_process=True,
        )

    @property
    def url(self) -> str:
        return f"local://{self.path}"

    def initialize(self) -> None:
        if self._initialized:
            return
        if self.path.is_dir():
            raise InvalidInputError(f"local store path {str(self.path)!r} is a directory; "
                                    "give a file name such as store.db", str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendUnavailableError(
                f"cannot create the folder for the local store {str(self.path)!r}: {error}",
                str(self.path)) from error
        script = METRICS_SCHEMA + _SCHEMA + "".join(_entity_schema(table, cls.kind)
                                   for table, cls in _ENTITY_TYPES.items())
        try:
            self.db.connection().executescript(script)
        except sqlite3.DatabaseError as error:
            raise BackendUnavailableError(
                f"{str(self.path)!r} is not a usable mltrail store: {error}",
                str(self.path)) from error
        self._index_run_fields()
        self._pack_point_rows()
        self._initialized = True

    def _pack_point_rows(self) -> None:
        """Move the points of a store written before chunks into `metric_chunks`, once."""
        exists = ("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND "
                  "name = 'metric_points'")
        if not self.db.query(exists):
            return
        with self.db.write() as conn:
            if conn.execute(exists).fetchone():
                moved = migrate_point_rows(conn)
                logger.info("packed %d metric points of %s into chunks", moved, self.path)

    def _index_run_fields(self) -> None:
        """Fill `run_fields` once for a store written before that table existed.

        NOTE: runs that an older mltrail writes into this file later get no
        `run_fields` rows, so searches that filter on their params or tags miss
        them until `run_fields` is rebuilt (delete its `store_meta` row).
        """
        done = "SELECT 1 FROM store_meta WHERE key = 'run_fields'"
        if self.db.query(done):
            return
        with self.db.write() as conn:
            if conn.execute(done).fetchone():
                return
            conn.execute("DELETE FROM run_fields")
            for (doc,) in conn.execute("SELECT doc FROM runs"):
                conn.executemany(
                    "INSERT INTO run_fields (run_id, field, value) VALUES (?, ?, ?)",
                    _decodable_field_rows(json.loads(doc)))
            conn.execute(
                "INSERT INTO store_meta (key, value) VALUES ('run_fields', '1')")

    def storage_stats(self) -> dict[str, Any]:
        """Return bytes stored per table, for `mltrail stats` and telemetry."""
        from mltrail.discovery.storage import sqlite_storage_stats

        return sqlite_storage_stats(self.path)

    def telemetry_counters(self) -> dict[str, int]:
        """Return rows written so far through this backend's connections."""
        from mltrail.discovery.storage import sqlite_write_counters

        return sqlite_write_counters(self.db._connections)

    def close(self) -> None:
        self.db.close()


class LocalConformanceHarness:
    """Conformance harness for `local://` stores: one new file per case.

    Raw hooks open their own sqlite3 connection and read or write documents
    without the repositories.
    """

    def __init__(self, url: str) -> None:
        base = LocalBackend.from_url(url).path
        self.folder = base.parent
        self.stem = base.stem
        self._count = 0

    def create(self) -> LocalBackend:
        self._count += 1
        path = self.folder / f"{self.stem}-{os.getpid()}-{id(self):x}-{self._count}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        backend = LocalBackend(path)
        backend.initialize()
        return backend

    def destroy(self, backend: LocalBackend) -> None:
        backend.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{backend.path}{suffix}").unlink(missing_ok=True)

    def store_url(self, backend: LocalBackend) -> str:
        return backend.url

    def _table(self, kind: str) -> str:
        return {cls.kind: table for table, cls in _ENTITY_TYPES.items()}[kind]

    def raw_read(self, backend: LocalBackend, kind: str, key: Any) -> dict | None:
        with sqlite3.connect(backend.path) as conn:
            if kind == "audit":
                row = conn.execute("SELECT doc FROM audit_events WHERE seq = ?",
                                   [key]).fetchone()
            else:
                row = conn.execute(f"SELECT doc FROM {self._table(kind)} WHERE id = ?",
                                   [key]).fetchone()
        return None if row is None else json.loads(row[0])

    def raw_write(self, backend: LocalBackend, kind: str, record: dict) -> None:
        conn = sqlite3.connect(backend.path, isolation_level=None)
        try:
            if kind == "audit":
                conn.execute("INSERT OR REPLACE INTO audit_events (seq, entity_id, doc) "
                             "VALUES (?, ?, ?)",
                             [record["seq"], record["entity_id"], _dumps(record)])
                return
            repository = backend.entity_repository(kind)
            indexed = INDEXED_FIELDS[kind]
            columns = ["id", "revision", "uniq", "created_at", "updated_at",
                       *(f"f_{n}" for n in indexed), "doc"]
            unique = None
            if repository.unique_key:
                unique = json.dumps([record[n] for n in repository.unique_key],
                                    ensure_ascii=False)
            values = [record["id"], record["revision"], unique, record["created_at"],
                      record["updated_at"], *(_text(record.get(n)) for n in indexed),
                      _dumps(record)]
            conn.execute(
                f"INSERT OR REPLACE INTO {self._table(kind)} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})", values)
            if kind == "run":
                conn.execute("DELETE FROM run_fields WHERE run_id = ?", [record["id"]])
                conn.executemany(
                    "INSERT INTO run_fields (run_id, field, value) VALUES (?, ?, ?)",
                    _decodable_field_rows(record))
        finally:
            conn.close()
