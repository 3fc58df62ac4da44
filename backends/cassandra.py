"""The Apache Cassandra backend: one table per query, lightweight transactions for
everything that must be unique or compare-and-set.

URL::

    cassandra://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...]/KEYSPACE?OPTIONS

Options: `store` (the tenant inside the keyspace, default `default`),
`replication_factor`, `replication_class` (`SimpleStrategy` or
`NetworkTopologyStrategy`), `datacenters` (`dc1:3,dc2:3`), `consistency`
(default `LOCAL_QUORUM`), `serial_consistency` (default `LOCAL_SERIAL`),
`local_dc`, `connect_timeout` and `request_timeout` (seconds),
`protocol_version`, `ssl`, `ssl_ca_file` and `create_schema` (default true).
The user name and password come from the URL or from $MLTRAIL_CASSANDRA_USERNAME
and $MLTRAIL_CASSANDRA_PASSWORD, and `CassandraBackend.url` never contains them.

Every partition key starts with the store name, so many stores share one
keyspace and one schema, and a new store costs no DDL. The tables:

- `entities` ((store, kind, id)): the JSON record, its revision, its unique key
  and its index entries. Inserts use IF NOT EXISTS, updates IF revision = ?.
- `entity_unique` ((store, kind, unique key)) -> id, claimed with IF NOT EXISTS.
- `entity_index` ((store, kind, field, value, month), created_us, id) serves
  equality lookups on the fields of `INDEXED_FIELDS`. With field `*` it lists
  every entity of a kind. Its partitions hold one month of creation each, in
  created_at order, and `entity_index_months` ((store, kind, field, value),
  month) lists the months.
- `metric_points` ((store, run, key, step bucket, day), step, ts_us, seq): one
  row per point in history order. `metric_partitions` lists the point
  partitions of a run, `metric_latest` ((store, run), key) keeps the latest
  point of each metric, raised with conditional batches, and `metric_runs`
  lists the runs with points in 32 shards.
- `lineage_nodes`, `lineage_node_list`, `lineage_adjacency` (one partition per
  node, with the edges of both directions) and `lineage_edges` (32 shards).
- `audit_events` ((store, seq // 1000), seq) appended with IF NOT EXISTS,
  `audit_buckets` ((store), bucket) listing its partitions, and
  `audit_by_entity` ((store, entity id), seq).
- `blobs` ((store, namespace, key)) and `blob_keys` ((store, namespace, shard),
  key).

No statement uses ALLOW FILTERING or a secondary index: each reads one
partition or a list of partitions that another table names.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import re
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from itertools import groupby
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from mltrail import limits
from mltrail.backend import (
    INDEXED_FIELDS,
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
from mltrail.clock import EPOCH, to_micros, to_utc, utcnow
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
    PermissionDeniedError,
)
from mltrail.query.ast import Compare, In, conjuncts

try:
    import cassandra
    from cassandra import ConsistencyLevel, WriteType
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import (
        EXEC_PROFILE_DEFAULT,
        Cluster,
        ExecutionProfile,
        NoHostAvailable,
    )
    from cassandra.concurrent import execute_concurrent
    from cassandra.connection import ConnectionException, DefaultEndPoint
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.protocol import ErrorMessage
    from cassandra.query import (
        UNSET_VALUE,
        BatchStatement,
        BatchType,
        BoundStatement,
        dict_factory,
        tuple_factory,
    )
except ImportError as error:  # the driver is the optional extra `cassandra`
    cassandra = None
    _DRIVER_IMPORT_ERROR: ImportError | None = error
else:
    _DRIVER_IMPORT_ERROR = None

logger = logging.getLogger(__name__)

SCHEME = "cassandra"
DEFAULT_PORT = 9042
DEFAULT_STORE = "default"
USERNAME_ENV = "MLTRAIL_CASSANDRA_USERNAME"
PASSWORD_ENV = "MLTRAIL_CASSANDRA_PASSWORD"

# Metric points of one key are partitioned by step bucket and by the UTC day of
# their timestamp. A training loop that logs one point per step fills a
# partition with at most STEP_BUCKET rows (about 100 KB). The day keeps a
# partition bounded even when every point has the same step. At one point per
# second a day contains 86,400 rows, about 9 MB, below the 100 MB per partition
# that DataStax's sizing guidance gives as the limit (an estimate of row sizes).
STEP_BUCKET = 1_000
DAY_MICROS = 86_400_000_000
# Audit events per partition. An event contains at most one entity record,
# under 600 KB within the core's limits and usually about 1 KB.
AUDIT_BUCKET = 1_000
# Fixed shards for the lists that only exports and checks read in full (lineage
# nodes and edges, runs with metrics, blob keys): 10 million entries make about
# 300,000 rows of under 100 bytes per shard.
LIST_SHARDS = 32

# Rows per single-partition batch. Cassandra applies batch_size_fail_threshold
# (50 KiB by default) only to batches that span partitions, so these limits
# keep each mutation and request small rather than avoid that check.
MAX_BATCH_ROWS = 500
MAX_BATCH_BYTES = 512 * 1024
CONCURRENCY = 32
PAGE_SIZE = 1_000
DOC_CHUNK = 200
MAX_CAS_ATTEMPTS = 50
# A unique-key claim whose entity is still missing after this long is left over
# from a writer that failed between claiming and inserting, so it may be taken
# over.
CLAIM_GRACE_SECONDS = 60.0
# Index entries of recently read records kept per repository, see
# CassandraEntityRepository._seen.
SEEN_RECORDS = 4_096
# The maximum runs, and keys per run, whose latest metric points each metric
# repository remembers (see CassandraMetricRepository._known_latest).
KNOWN_LATEST_RUNS = 1_024
KNOWN_LATEST_KEYS = 10_000

# Statements whose CQL starts with one of these change rows (see _written).
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")
# Token-range size estimates of each node's primary ranges. Cassandra
# refreshes them from SSTables every 5 minutes by default.
SELECT_SIZE_ESTIMATES = (
    "SELECT table_name, mean_partition_size, partitions_count "
    "FROM system.size_estimates WHERE keyspace_name = %s")
UNKNOWN = "unknown"

# CAS_WRITE_UNKNOWN of native protocol v5: the outcome of a lightweight
# transaction is unknown. cassandra-driver 3.30 has no exception class for it.
CAS_WRITE_UNKNOWN = 0x1700
MIN_BIGINT = -(2**63)
MAX_BIGINT = 2**63 - 1
MIN_INT = -(2**31)
MAX_INT = 2**31 - 1

CONSISTENCY_LEVELS = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM",
                      "EACH_QUORUM", "LOCAL_ONE")
SERIAL_LEVELS = ("SERIAL", "LOCAL_SERIAL")
REPLICATION_CLASSES = ("SimpleStrategy", "NetworkTopologyStrategy")
URL_OPTIONS = ("store", "replication_factor", "replication_class", "datacenters",
               "consistency", "serial_consistency", "local_dc", "connect_timeout",
               "request_timeout", "protocol_version", "ssl", "ssl_ca_file",
               "create_schema")

_KEYSPACE_RE = re.compile(r"^[A-Za-z0-9_]{1,48}$")
_STORE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.:-]{0,127}$")
_DATACENTER_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

LIST_FIELD = "*"
# When several equalities are pushed down, a scan reads through the first of
# these fields that it finds, because the earlier ones usually match fewer
# entities.
ACCESS_PRIORITY = ("id", "model_id", "experiment_id", "parent_run_id", "run_id",
                   "name", "status", "namespace")


# ---------------------------------------------------------------------------
# Schema and statements
# ---------------------------------------------------------------------------

TABLES: dict[str, str] = {
    "entities": """
        store text, kind text, id text, revision bigint, uniq text,
        indexed text, doc text, PRIMARY KEY ((store, kind, id))""",
    "entity_unique": """
        store text, kind text, uniq text, id text, claimed_at timestamp,
        PRIMARY KEY ((store, kind, uniq))""",
    "entity_index": """
        store text, kind text, field text, value text, month int,
        created_us bigint, id text,
        PRIMARY KEY ((store, kind, field, value, month), created_us, id)""",
    "entity_index_months": """
        store text, kind text, field text, value text, month int,
        PRIMARY KEY ((store, kind, field, value), month)""",
    "metric_points": """
        store text, run_id text, key text, step_bucket bigint, day bigint,
        step bigint, ts_us bigint, seq text, value double, extra text,
        PRIMARY KEY ((store, run_id, key, step_bucket, day), step, ts_us, seq)""",
    "metric_partitions": """
        store text, run_id text, key text, step_bucket bigint, day bigint,
        PRIMARY KEY ((store, run_id), key, step_bucket, day)""",
    "metric_latest": """
        store text, run_id text, key text, step bigint, ts_us bigint, seq text,
        value double, extra text, PRIMARY KEY ((store, run_id), key)""",
    "metric_runs": """
        store text, shard int, run_id text,
        PRIMARY KEY ((store, shard), run_id)""",
    "lineage_nodes": """
        store text, id text, kind text, label text,
        PRIMARY KEY ((store, id))""",
    "lineage_node_list": """
        store text, shard int, id text, kind text, label text,
        PRIMARY KEY ((store, shard), id)""",
    "lineage_adjacency": """
        store text, node_id text, direction text, source text, type text,
        target text, created_at text,
        PRIMARY KEY ((store, node_id), direction, source, type, target)""",
    "lineage_edges": """
        store text, shard int, edge_key text, source text, target text,
        type text, created_at text, PRIMARY KEY ((store, shard), edge_key)""",
    "audit_events": """
        store text, bucket bigint, seq bigint, entity_id text, doc text,
        PRIMARY KEY ((store, bucket), seq)""",
    "audit_buckets": """
        store text, bucket bigint, PRIMARY KEY ((store), bucket)""",
    "audit_by_entity": """
        store text, entity_id text, seq bigint,
        PRIMARY KEY ((store, entity_id), seq)""",
    "blobs": """
        store text, namespace text, key text, doc text,
        PRIMARY KEY ((store, namespace, key))""",
    "blob_keys": """
        store text, namespace text, shard int, key text,
        PRIMARY KEY ((store, namespace, shard), key)""",
}

# Every statement is prepared once per session, with `{ks}` replaced by the
# quoted keyspace. The first bound values are the partition key, store first.
ENTITY_KEY = "store = ? AND kind = ? AND id = ?"
INSERT_ENTITY = (
    "INSERT INTO {ks}.entities (store, kind, id, revision, uniq, indexed, doc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
RAW_INSERT_ENTITY = (
    "INSERT INTO {ks}.entities (store, kind, id, revision, uniq, indexed, doc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)")
UPDATE_ENTITY = (
    "UPDATE {ks}.entities SET revision = ?, indexed = ?, doc = ? WHERE "
    f"{ENTITY_KEY} IF revision = ? AND uniq = ? AND indexed = ?")
DELETE_ENTITY = f"DELETE FROM {{ks}}.entities WHERE {ENTITY_KEY} IF revision = ?"
SELECT_ENTITY_DOC = f"SELECT doc FROM {{ks}}.entities WHERE {ENTITY_KEY}"
SELECT_ENTITY_UNIQ = f"SELECT uniq FROM {{ks}}.entities WHERE {ENTITY_KEY}"
SELECT_ENTITY_INDEXED = f"SELECT indexed FROM {{ks}}.entities WHERE {ENTITY_KEY}"
SELECT_ENTITY_STATE = (
    f"SELECT revision, uniq, indexed, doc FROM {{ks}}.entities WHERE {ENTITY_KEY}")

UNIQUE_KEY = "store = ? AND kind = ? AND uniq = ?"
INSERT_CLAIM = (
    "INSERT INTO {ks}.entity_unique (store, kind, uniq, id, claimed_at) "
    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
RAW_INSERT_CLAIM = (
    "INSERT INTO {ks}.entity_unique (store, kind, uniq, id, claimed_at) "
    "VALUES (?, ?, ?, ?, ?)")
TAKE_OVER_CLAIM = (
    "UPDATE {ks}.entity_unique SET id = ?, claimed_at = ? "
    f"WHERE {UNIQUE_KEY} IF id = ?")
DELETE_CLAIM = f"DELETE FROM {{ks}}.entity_unique WHERE {UNIQUE_KEY} IF id = ?"
SELECT_CLAIM = f"SELECT id, claimed_at FROM {{ks}}.entity_unique WHERE {UNIQUE_KEY}"

INDEX_KEY = "store = ? AND kind = ? AND field = ? AND value = ?"
INSERT_INDEX = (
    "INSERT INTO {ks}.entity_index (store, kind, field, value, month, created_us, "
    "id) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
DELETE_INDEX = (
    "DELETE FROM {ks}.entity_index USING TIMESTAMP ? WHERE "
    f"{INDEX_KEY} AND month = ? AND created_us = ? AND id = ?")
INSERT_INDEX_MONTH = (
    "INSERT INTO {ks}.entity_index_months (store, kind, field, value, month) "
    "VALUES (?, ?, ?, ?, ?)")
SELECT_MONTHS_UP = (
    f"SELECT month FROM {{ks}}.entity_index_months WHERE {INDEX_KEY} "
    "AND month >= ?")
SELECT_MONTHS_DOWN = (
    f"SELECT month FROM {{ks}}.entity_index_months WHERE {INDEX_KEY} "
    "AND month <= ? ORDER BY month DESC")
SELECT_INDEX_AFTER = (
    f"SELECT created_us, id FROM {{ks}}.entity_index WHERE {INDEX_KEY} "
    "AND month = ? AND (created_us, id) > (?, ?)")
SELECT_INDEX_TIES = (
    f"SELECT created_us, id FROM {{ks}}.entity_index WHERE {INDEX_KEY} "
    "AND month = ? AND created_us = ? AND id > ?")
SELECT_INDEX_BEFORE = (
    f"SELECT created_us, id FROM {{ks}}.entity_index WHERE {INDEX_KEY} "
    "AND month = ? AND created_us < ? ORDER BY created_us DESC, id DESC")

POINTS_KEY = "store = ? AND run_id = ? AND key = ? AND step_bucket = ? AND day = ?"
INSERT_POINT = (
    "INSERT INTO {ks}.metric_points (store, run_id, key, step_bucket, day, step, "
    "ts_us, seq, value, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
SELECT_POINTS = (
    "SELECT step, ts_us, seq, value, extra FROM {ks}.metric_points WHERE "
    f"{POINTS_KEY} AND step >= ? AND step <= ?")
DELETE_POINTS = f"DELETE FROM {{ks}}.metric_points WHERE {POINTS_KEY}"
INSERT_PARTITION = (
    "INSERT INTO {ks}.metric_partitions (store, run_id, key, step_bucket, day) "
    "VALUES (?, ?, ?, ?, ?)")
SELECT_PARTITIONS = (
    "SELECT step_bucket, day FROM {ks}.metric_partitions WHERE store = ? AND "
    "run_id = ? AND key = ? AND step_bucket >= ? AND step_bucket <= ?")
SELECT_RUN_PARTITIONS = (
    "SELECT key, step_bucket, day FROM {ks}.metric_partitions WHERE store = ? "
    "AND run_id = ?")
DELETE_RUN_PARTITIONS = (
    "DELETE FROM {ks}.metric_partitions WHERE store = ? AND run_id = ?")
LATEST_COLUMNS = "key, step, ts_us, seq, value, extra"
SELECT_LATEST = (
    f"SELECT {LATEST_COLUMNS} FROM {{ks}}.metric_latest WHERE store = ? AND "
    "run_id = ?")
SELECT_LATEST_KEYS = f"{SELECT_LATEST} AND key IN ?"
SELECT_LATEST_ORDER = (
    "SELECT key, step, ts_us, seq FROM {ks}.metric_latest WHERE store = ? AND "
    "run_id = ? AND key IN ?")
SELECT_METRIC_KEYS = (
    "SELECT key FROM {ks}.metric_latest WHERE store = ? AND run_id = ?")
INSERT_LATEST = (
    "INSERT INTO {ks}.metric_latest (store, run_id, key, step, ts_us, seq, value, "
    "extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
RAISE_LATEST = (
    "UPDATE {ks}.metric_latest SET step = ?, ts_us = ?, seq = ?, value = ?, "
    "extra = ? WHERE store = ? AND run_id = ? AND key = ? "
    "IF step = ? AND ts_us = ? AND seq = ?")
DELETE_LATEST = "DELETE FROM {ks}.metric_latest WHERE store = ? AND run_id = ?"
INSERT_METRIC_RUN = (
    "INSERT INTO {ks}.metric_runs (store, shard, run_id) VALUES (?, ?, ?)")
SELECT_METRIC_RUNS = (
    "SELECT run_id FROM {ks}.metric_runs WHERE store = ? AND shard = ?")
DELETE_METRIC_RUN = (
    "DELETE FROM {ks}.metric_runs WHERE store = ? AND shard = ? AND run_id = ?")

INSERT_NODE = (
    "INSERT INTO {ks}.lineage_nodes (store, id, kind, label) VALUES (?, ?, ?, ?) "
    "IF NOT EXISTS")
SELECT_NODE = "SELECT kind, label FROM {ks}.lineage_nodes WHERE store = ? AND id = ?"
DELETE_NODE = "DELETE FROM {ks}.lineage_nodes WHERE store = ? AND id = ? IF EXISTS"
INSERT_NODE_ITEM = (
    "INSERT INTO {ks}.lineage_node_list (store, shard, id, kind, label) "
    "VALUES (?, ?, ?, ?, ?)")
SELECT_NODE_ITEMS = (
    "SELECT id, kind, label FROM {ks}.lineage_node_list WHERE store = ? AND "
    "shard = ?")
DELETE_NODE_ITEM = (
    "DELETE FROM {ks}.lineage_node_list WHERE store = ? AND shard = ? AND id = ?")
ADJACENCY_COLUMNS = "store, node_id, direction, source, type, target, created_at"
ADJACENCY_ROW = (
    "store = ? AND node_id = ? AND direction = ? AND source = ? AND type = ? AND "
    "target = ?")
INSERT_ADJACENCY = (
    f"INSERT INTO {{ks}}.lineage_adjacency ({ADJACENCY_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_ADJACENCY_ONCE = f"{INSERT_ADJACENCY} IF NOT EXISTS"
SELECT_ADJACENCY_TIME = (
    f"SELECT created_at FROM {{ks}}.lineage_adjacency WHERE {ADJACENCY_ROW}")
SELECT_ADJACENCY = (
    "SELECT source, type, target, created_at FROM {ks}.lineage_adjacency WHERE "
    "store = ? AND node_id = ? AND direction = ?")
SELECT_NODE_ADJACENCY = (
    "SELECT direction, source, type, target FROM {ks}.lineage_adjacency WHERE "
    "store = ? AND node_id = ?")
DELETE_ADJACENCY = f"DELETE FROM {{ks}}.lineage_adjacency WHERE {ADJACENCY_ROW}"
DELETE_NODE_ADJACENCY = (
    "DELETE FROM {ks}.lineage_adjacency WHERE store = ? AND node_id = ?")
INSERT_EDGE_ITEM = (
    "INSERT INTO {ks}.lineage_edges (store, shard, edge_key, source, target, type, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
SELECT_EDGE_ITEMS = (
    "SELECT edge_key, source, target, type, created_at FROM {ks}.lineage_edges "
    "WHERE store = ? AND shard = ?")
DELETE_EDGE_ITEM = (
    "DELETE FROM {ks}.lineage_edges WHERE store = ? AND shard = ? AND edge_key = ?")

EVENT_KEY = "store = ? AND bucket = ? AND seq = ?"
INSERT_EVENT = (
    "INSERT INTO {ks}.audit_events (store, bucket, seq, entity_id, doc) "
    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
RAW_INSERT_EVENT = (
    "INSERT INTO {ks}.audit_events (store, bucket, seq, entity_id, doc) "
    "VALUES (?, ?, ?, ?, ?)")
SELECT_EVENT = f"SELECT doc FROM {{ks}}.audit_events WHERE {EVENT_KEY}"
SELECT_TAIL = (
    "SELECT seq, doc FROM {ks}.audit_events WHERE store = ? AND bucket = ? "
    "ORDER BY seq DESC LIMIT 1")
SELECT_EVENTS = (
    "SELECT seq, doc FROM {ks}.audit_events WHERE store = ? AND bucket = ? AND "
    "seq > ?")
INSERT_AUDIT_BUCKET = "INSERT INTO {ks}.audit_buckets (store, bucket) VALUES (?, ?)"
SELECT_AUDIT_BUCKETS = (
    "SELECT bucket FROM {ks}.audit_buckets WHERE store = ? AND bucket >= ?")
SELECT_AUDIT_BUCKETS_DOWN = (
    "SELECT bucket FROM {ks}.audit_buckets WHERE store = ? AND bucket < ? "
    "ORDER BY bucket DESC")
INSERT_EVENT_ITEM = (
    "INSERT INTO {ks}.audit_by_entity (store, entity_id, seq) VALUES (?, ?, ?)")
SELECT_EVENT_ITEMS = (
    "SELECT seq FROM {ks}.audit_by_entity WHERE store = ? AND entity_id = ?")

BLOB_KEY = "store = ? AND namespace = ? AND key = ?"
INSERT_BLOB = (
    "INSERT INTO {ks}.blobs (store, namespace, key, doc) VALUES (?, ?, ?, ?)")
SELECT_BLOB = f"SELECT doc FROM {{ks}}.blobs WHERE {BLOB_KEY}"
DELETE_BLOB = f"DELETE FROM {{ks}}.blobs WHERE {BLOB_KEY}"
INSERT_BLOB_ITEM = (
    "INSERT INTO {ks}.blob_keys (store, namespace, shard, key) VALUES (?, ?, ?, ?)")
SELECT_BLOB_ITEMS = (
    "SELECT key FROM {ks}.blob_keys WHERE store = ? AND namespace = ? AND "
    "shard = ?")
DELETE_BLOB_ITEM = (
    "DELETE FROM {ks}.blob_keys WHERE store = ? AND namespace = ? AND shard = ? "
    "AND key = ?")


# ---------------------------------------------------------------------------
# URL and configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CassandraConfig:
    """Connection and layout settings parsed from a `cassandra://` URL."""

    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    store: str = DEFAULT_STORE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    replication: tuple[tuple[str, str], ...] = (("class", "SimpleStrategy"),
                                                ("replication_factor", "1"))
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    local_dc: str | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 20.0
    protocol_version: int | None = None
    ssl: bool = False
    ssl_ca_file: str | None = None
    create_schema: bool = True
    options: tuple[tuple[str, str], ...] = ()

    def with_store(self, store: str) -> CassandraConfig:
        """Return the same settings for another store in the same keyspace."""
        _check_store(store)
        options = tuple((k, v) for k, v in self.options if k != "store")
        return replace(self, store=store, options=(*options, ("store", store)))

    def server(self) -> str:
        """Return the hosts and keyspace as a URL, for messages about the cluster."""
        hosts = ",".join(_format_host(host, port) for host, port in self.hosts)
        return f"{SCHEME}://{hosts}/{self.keyspace}"

    def url(self, with_credentials: bool = False) -> str:
        """Return the URL of these settings, with credentials only when asked."""
        base = self.server()
        if with_credentials and self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            base = base.replace("://", f"://{userinfo}@", 1)
        return f"{base}?{urlencode(self.options)}" if self.options else base

    def connection_key(self) -> tuple:
        """Return the settings that select a driver session, which omit the store."""
        return (self.hosts, self.keyspace, self.username, self.password,
                self.consistency, self.serial_consistency, self.local_dc,
                self.connect_timeout, self.request_timeout, self.protocol_version,
                self.ssl, self.ssl_ca_file, self.replication, self.create_schema)


def _format_host(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORT else f"{shown}:{port}"


def parse_url(url: str) -> CassandraConfig:
    """Parse a `cassandra://` URL, raising InvalidInputError that names the fault."""
    shown = _redact(url)
    if not isinstance(url, str) or not url.startswith(f"{SCHEME}://"):
        raise InvalidInputError(
            f"not a Cassandra store URL: {shown!r}; expected "
            "cassandra://HOST[:PORT][,HOST...]/KEYSPACE", shown)
    rest, _, query = url[len(SCHEME) + 3:].partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        name, has_password, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if has_password else None
    hosts = _parse_hosts(netloc, shown)
    keyspace = path.strip("/")
    if not _KEYSPACE_RE.match(keyspace):
        raise InvalidInputError(
            f"Cassandra URL {shown!r} names keyspace {keyspace!r}; expected 1-48 "
            "letters, digits or '_' after the hosts, e.g. cassandra://HOST/mltrail",
            keyspace)
    username = username or os.environ.get(USERNAME_ENV) or None
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    options = _parse_options(query, shown)
    return _config_from_options(hosts, keyspace, username, password, options)


def _redact(url: Any) -> Any:
    """Return `url` with any password replaced by '***', for messages."""
    if not isinstance(url, str):
        return url
    return re.sub(r"^(\w+://[^/@:]*:)[^/]*@", r"\1***@", url)


def _parse_hosts(netloc: str, shown: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in netloc.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, after = item[1:].partition("]")
            port_text = after.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not host:
            raise InvalidInputError(
                f"Cassandra URL {shown!r} has an empty host; expected "
                "cassandra://HOST[:PORT][,HOST[:PORT]...]/KEYSPACE", shown)
        hosts.append((host, _port(port_text, shown)))
    return tuple(hosts)


def _port(text: str, shown: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidInputError(
            f"Cassandra URL {shown!r} has port {text!r}; expected a number from 1 "
            "to 65535", text)
    return int(text)


def _parse_options(query: str, shown: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            raise InvalidInputError(
                f"Cassandra URL {shown!r} has unknown option {name!r}; known "
                f"options: {', '.join(URL_OPTIONS)}", name)
        options[name] = value
    return options


def _config_from_options(hosts, keyspace, username, password,
                         options: dict[str, str]) -> CassandraConfig:
    store = _check_store(options.get("store", DEFAULT_STORE))
    consistency = options.get("consistency", "LOCAL_QUORUM").upper()
    if consistency not in CONSISTENCY_LEVELS:
        raise InvalidInputError(
            f"consistency {consistency!r} is invalid; expected one of "
            f"{', '.join(CONSISTENCY_LEVELS)}", consistency)
    serial = options.get("serial_consistency", "LOCAL_SERIAL").upper()
    if serial not in SERIAL_LEVELS:
        raise InvalidInputError(
            f"serial_consistency {serial!r} is invalid; expected SERIAL or "
            "LOCAL_SERIAL", serial)
    protocol = options.get("protocol_version")
    if protocol is not None:
        protocol = _positive_int("protocol_version", protocol)
    return CassandraConfig(
        hosts=hosts, keyspace=keyspace, store=store, username=username,
        password=password, replication=_replication(options),
        consistency=consistency, serial_consistency=serial,
        local_dc=options.get("local_dc") or None,
        connect_timeout=_seconds(options, "connect_timeout", 10.0),
        request_timeout=_seconds(options, "request_timeout", 20.0),
        protocol_version=protocol, ssl=_flag(options, "ssl", False),
        ssl_ca_file=options.get("ssl_ca_file") or None,
        create_schema=_flag(options, "create_schema", True),
        options=tuple(options.items()),
    )


def _check_store(store: Any) -> str:
    if not isinstance(store, str) or not _STORE_RE.match(store):
        raise InvalidInputError(
            f"store name {store!r} is invalid; expected 1-128 letters, digits or "
            "'_.:-' starting with a letter or digit", store)
    return store


def _replication(options: dict[str, str]) -> tuple[tuple[str, str], ...]:
    strategy = options.get("replication_class", "SimpleStrategy")
    if strategy not in REPLICATION_CLASSES:
        raise InvalidInputError(
            f"replication_class {strategy!r} is invalid; expected SimpleStrategy or "
            "NetworkTopologyStrategy", strategy)
    factor = _positive_int("replication_factor",
                           options.get("replication_factor", "1"))
    datacenters = options.get("datacenters")
    if datacenters is None:
        return (("class", strategy), ("replication_factor", str(factor)))
    if strategy != "NetworkTopologyStrategy":
        raise InvalidInputError(
            "datacenters needs replication_class=NetworkTopologyStrategy", datacenters)
    pairs = [("class", strategy)]
    for item in datacenters.split(","):
        name, _, count = item.strip().partition(":")
        if not _DATACENTER_RE.match(name):
            raise InvalidInputError(
                f"datacenters entry {item!r} is invalid; expected NAME:FACTOR, e.g. "
                "dc1:3,dc2:3", item)
        pairs.append((name, str(_positive_int(f"replication factor of {name}",
                                              count))))
    return tuple(pairs)


def _positive_int(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidInputError(
            f"{name} {text!r} is invalid; expected a positive integer", text)
    return int(text)


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise InvalidInputError(
            f"{name} {text!r} is invalid; expected seconds from 0 to 3600", text)
    return value


def _flag(options: dict[str, str], name: str, default: bool) -> bool:
    text = options.get(name)
    if text is None:
        return default
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidInputError(f"{name} {text!r} is invalid; expected true or false",
                            text)


# ---------------------------------------------------------------------------
# Driver errors: translated here and nowhere else
# ---------------------------------------------------------------------------


def _driver_errors() -> tuple[type[BaseException], ...]:
    if cassandra is None:
        return ()
    return (cassandra.DriverException, NoHostAvailable, ConnectionException,
            ErrorMessage, OSError)


def _is_cas_unknown(error: BaseException) -> bool:
    if isinstance(error, cassandra.WriteTimeout):
        return error.write_type == WriteType.CAS
    code = getattr(error, "code", None)
    return isinstance(error, ErrorMessage) and code == CAS_WRITE_UNKNOWN


def translate_error(error: BaseException, where: str) -> MltrailError:
    """Map a driver error to the mltrail error a caller can act on."""
    text = str(error)
    if isinstance(error, cassandra.AuthenticationFailed) \
            or "AuthenticationFailed" in text:
        return BackendUnavailableError(
            f"Cassandra at {where} rejected the credentials: {text}; check the user "
            f"name and password in the URL or ${USERNAME_ENV} and ${PASSWORD_ENV}",
            where)
    if isinstance(error, cassandra.UnresolvableContactPoints):
        return BackendUnavailableError(
            f"none of the hosts of {where} resolves to an address; check the host "
            "names in the URL", where)
    if isinstance(error, cassandra.Unauthorized):
        return PermissionDeniedError(
            f"the Cassandra user lacks a permission at {where}: {text}; grant it "
            "SELECT and MODIFY on the keyspace, and CREATE for create_schema", where)
    if isinstance(error, cassandra.InvalidRequest):
        if "unconfigured table" in text or "does not exist" in text:
            return BackendUnavailableError(
                f"the mltrail tables are missing at {where} ({text}); open the store "
                "once with create_schema=true to create them", where)
        return InvalidInputError(f"Cassandra rejected a request at {where}: {text}",
                                 where)
    if isinstance(error, (cassandra.Timeout, cassandra.Unavailable,
                          cassandra.OperationTimedOut, cassandra.CoordinationFailure)):
        return BackendUnavailableError(
            f"Cassandra at {where} did not complete a request in time or lacks live "
            f"replicas: {text}; retry, or check the cluster's health", where)
    return BackendUnavailableError(f"Cassandra at {where} failed: {text}", where)


def _require_driver() -> None:
    if _DRIVER_IMPORT_ERROR is not None:
        raise BackendUnavailableError(
            f"the Cassandra backend needs cassandra-driver ({_DRIVER_IMPORT_ERROR}); "
            "install it with: pip install 'mltrail[cassandra]'", "cassandra-driver"
        ) from _DRIVER_IMPORT_ERROR


# ---------------------------------------------------------------------------
# Shared driver sessions
# ---------------------------------------------------------------------------


class _Connection:
    """One driver Cluster and Session, shared by every backend with the same settings.

    Stores differ only in a key column, so the harness and users that open many
    stores of one keyspace reuse one set of connections and prepared statements.
    """

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self.where = config.server()
        self.references = 0
        self.cluster: Any = None
        self.session: Any = None
        self.schema_ready = False
        self._prepared: dict[str, Any] = {}
        self._lock = threading.RLock()

    def connect(self) -> Any:
        """Return the session, connecting and creating the schema on first use."""
        session = self.session
        if session is not None and (self.schema_ready or not self.config.create_schema):
            return session
        with self._lock:
            if self.session is None:
                self._open()
            if self.config.create_schema and not self.schema_ready:
                self._create_schema()
            return self.session

    def _open(self) -> None:
        try:
            # Options can fail too: an unreadable ssl_ca_file, a host name
            # that does not resolve.
            cluster = Cluster(**self._cluster_options())
        except _driver_errors() as error:
            raise translate_error(error, self.where) from error
        try:
            session = cluster.connect()
        except _driver_errors() as error:
            cluster.shutdown()
            raise translate_error(error, self.where) from error
        self.cluster, self.session = cluster, session
        logger.info("connected to Cassandra at %s", self.where)

    def _cluster_options(self) -> dict[str, Any]:
        config = self.config
        policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc))
        level = ConsistencyLevel.name_to_value[config.consistency]
        serial = ConsistencyLevel.name_to_value[config.serial_consistency]

        def profile(consistency: int, row_factory: Callable) -> Any:
            return ExecutionProfile(
                load_balancing_policy=policy, consistency_level=consistency,
                serial_consistency_level=serial,
                request_timeout=config.request_timeout, row_factory=row_factory)

        options: dict[str, Any] = {
            "execution_profiles": {
                EXEC_PROFILE_DEFAULT: profile(level, tuple_factory),
                "conditional": profile(level, dict_factory),
                "serial": profile(serial, dict_factory),
            },
            "connect_timeout": config.connect_timeout,
            "connection_class": _connection_class(),
        }
        ports = {port for _, port in config.hosts}
        if len(ports) == 1:
            options["contact_points"] = [host for host, _ in config.hosts]
            options["port"] = ports.pop()
        else:
            options["contact_points"] = [DefaultEndPoint(host, port)
                                         for host, port in config.hosts]
        if config.username is not None:
            options["auth_provider"] = PlainTextAuthProvider(
                username=config.username, password=config.password or "")
        if config.protocol_version is not None:
            options["protocol_version"] = config.protocol_version
        if config.ssl:
            if config.ssl_ca_file and not os.path.isfile(config.ssl_ca_file):
                raise InvalidInputError(
                    f"ssl_ca_file {config.ssl_ca_file!r} is not a file; give the path "
                    "of a PEM file of trusted certificates", config.ssl_ca_file)
            options["ssl_context"] = ssl.create_default_context(
                cafile=config.ssl_ca_file)
        return options

    def _create_schema(self) -> None:
        """Create the keyspace and the missing tables, and no DDL when none is missing.

        Each DDL statement waits for schema agreement, which takes long enough
        that an existing store must not pay for it.
        """
        keyspace = self.config.keyspace
        metadata = self.cluster.metadata.keyspaces.get(keyspace)
        try:
            if metadata is None:
                replication = ", ".join(f"'{name}': '{value}'"
                                        for name, value in self.config.replication)
                self.session.execute(
                    f'CREATE KEYSPACE IF NOT EXISTS "{keyspace}" WITH replication = '
                    f"{{{replication}}}")
                logger.info("created keyspace %s", keyspace)
                metadata = self.cluster.metadata.keyspaces.get(keyspace)
            existing = set(metadata.tables) if metadata is not None else set()
            for table, columns in TABLES.items():
                if table not in existing:
                    self.session.execute(
                        f'CREATE TABLE IF NOT EXISTS "{keyspace}".{table} ({columns})')
                    logger.info("created table %s.%s", keyspace, table)
        except _driver_errors() as error:
            raise translate_error(error, self.where) from error
        self.schema_ready = True

    def prepare(self, cql: str) -> Any:
        statement = self._prepared.get(cql)
        if statement is not None:
            return statement
        session = self.connect()
        with self._lock:
            statement = self._prepared.get(cql)
            if statement is None:
                text = cql.replace("{ks}", f'"{self.config.keyspace}"')
                try:
                    statement = session.prepare(text)
                except _driver_errors() as error:
                    raise translate_error(error, self.where) from error
                self._prepared[cql] = statement
        return statement

    def shutdown(self) -> None:
        with self._lock:
            if self.cluster is not None:
                self.cluster.shutdown()
                logger.info("closed the connections to Cassandra at %s", self.where)
            self.cluster = self.session = None
            self._prepared.clear()
            self.schema_ready = False


def _connection_class() -> Any:
    """Return libev's connection class, or asyncio's where libev was not built."""
    try:
        from cassandra.io.libevreactor import LibevConnection
    except ImportError:
        from cassandra.io.asyncioreactor import AsyncioConnection

        return AsyncioConnection
    return LibevConnection


_CONNECTIONS: dict[tuple, _Connection] = {}
_CONNECTIONS_LOCK = threading.Lock()


def _acquire(config: CassandraConfig) -> _Connection:
    with _CONNECTIONS_LOCK:
        connection = _CONNECTIONS.get(config.connection_key())
        if connection is None:
            connection = _Connection(config)
            _CONNECTIONS[config.connection_key()] = connection
        connection.references += 1
        return connection


def _release(connection: _Connection) -> None:
    with _CONNECTIONS_LOCK:
        connection.references -= 1
        if connection.references > 0:
            return
        _CONNECTIONS.pop(connection.config.connection_key(), None)
    connection.shutdown()


# ---------------------------------------------------------------------------
# Statement execution
# ---------------------------------------------------------------------------


def _written_all(statements: Iterable[Any]) -> tuple[int, int]:
    """Return the rows and bytes that executed statements wrote, for `WriteCounters`.

    Each INSERT, UPDATE or DELETE statement that ran counts one row, a batch
    one row per statement, and the callers pass a lightweight transaction only
    when it was applied. A DELETE of a whole partition counts as one row,
    because Cassandra writes one partition tombstone for it. Bytes are an
    estimate of what was sent: the serialized bound values, keys and IF
    conditions included.
    """
    rows = size = 0
    for statement in statements:
        statement_rows, statement_bytes = _written(statement)
        rows += statement_rows
        size += statement_bytes
    return rows, size


def _written(statement: Any) -> tuple[int, int]:
    """Return (rows, bytes of bound values) that a statement writes, (0, 0) for a read."""
    if isinstance(statement, _CountedBatch):
        return len(statement), statement.bound_bytes
    if isinstance(statement, BatchStatement):
        # NOTE: cassandra-driver 3.30 keeps a batch's serialized values only in
        # this private attribute. A driver without it makes batches count 0 bytes.
        entries = getattr(statement, "_statements_and_parameters", ())
        return len(statement), sum(_bound_bytes(values) for _, _, values in entries)
    query = statement.prepared_statement.query_string
    if not query.lstrip().upper().startswith(WRITE_VERBS):
        return 0, 0
    return 1, _bound_bytes(statement.values)


def _bound_bytes(values: Iterable[Any]) -> int:
    return sum(len(value) for value in values if isinstance(value, bytes))


if cassandra is not None:
    class _CountedBatch(BatchStatement):
        """An unlogged batch that carries the byte count of its bound values.

        Counting while the rows are serialized costs less than the pass over
        every value that `_written` makes otherwise.
        """

        def __init__(self) -> None:
            super().__init__(batch_type=BatchType.UNLOGGED)
            self.bound_bytes = 0
else:
    _CountedBatch = None  # type: ignore[assignment,misc]


class _Cql:
    """Runs prepared CQL for one store, translating every driver error."""

    def __init__(self, connection: _Connection, store: str) -> None:
        self.connection = connection
        self.store = store
        self.counters = WriteCounters()

    def _fail(self, error: BaseException) -> MltrailError:
        return translate_error(error, self.connection.where)

    def bind(self, cql: str, params: Sequence[Any]) -> Any:
        return self.connection.prepare(cql).bind(params)

    def rows(self, cql: str, params: Sequence[Any], profile: Any = None) -> list:
        """Run one statement and return all its rows (for small, bounded results)."""
        return list(self.stream(cql, params, profile=profile))

    def one(self, cql: str, params: Sequence[Any], profile: Any = None) -> Any:
        found = self.rows(cql, params, profile)
        return found[0] if found else None

    def serial_one(self, cql: str, params: Sequence[Any]) -> dict | None:
        """Read one row at serial consistency, completing any pending Paxos round."""
        return self.one(cql, params, profile="serial")

    def stream(self, cql: str, params: Sequence[Any], fetch_size: int = PAGE_SIZE,
               profile: Any = None) -> Iterator[Any]:
        """Yield rows page by page, so memory keeps one page at a time."""
        return self.rows_of(self.start(cql, params, fetch_size, profile))

    def start(self, cql: str, params: Sequence[Any], fetch_size: int = PAGE_SIZE,
              profile: Any = None) -> Any:
        """Send a query and return its future, so its first page arrives meanwhile."""
        statement = self.bind(cql, params)
        statement.fetch_size = fetch_size
        session = self.connection.connect()
        try:
            return session.execute_async(
                statement, execution_profile=profile or EXEC_PROFILE_DEFAULT)
        except _driver_errors() as error:
            raise self._fail(error) from error

    def rows_of(self, future: Any) -> Iterator[Any]:
        """Yield the rows of a started query, fetching later pages as needed."""
        try:
            rows = iter(future.result())
        except _driver_errors() as error:
            raise self._fail(error) from error
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except _driver_errors() as error:
                raise self._fail(error) from error
            yield row

    def run(self, cql: str, params: Sequence[Any]) -> None:
        self.run_all([(cql, params)])

    def run_all(self, statements: Iterable[tuple[Any, Sequence[Any] | None]]) -> list:
        """Run statements concurrently, each a (CQL or batch, params) pair.

        Returns the result of each in input order and raises the first error.
        """
        bound = [(self.bind(cql, params) if isinstance(cql, str) else cql, None)
                 for cql, params in statements]
        if not bound:
            return []
        session = self.connection.connect()
        try:
            results = execute_concurrent(session, bound, concurrency=CONCURRENCY,
                                         raise_on_first_error=True)
        except _driver_errors() as error:
            # NOTE: statements that completed before the error are not counted.
            raise self._fail(error) from error
        self.counters.add(*_written_all(statement for statement, _ in bound))
        return [result for _, result in results]

    def read_many(self, cql: str, params_list: Sequence[Sequence[Any]]) -> list[list]:
        """Run one query per parameter set concurrently and return the rows of each."""
        results = self.run_all([(cql, params) for params in params_list])
        try:
            return [list(result) for result in results]
        except _driver_errors() as error:
            raise self._fail(error) from error

    def batch(self, cql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """Return an unlogged batch of `cql` for rows that share one partition."""
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        prepared = self.connection.prepare(cql)
        for params in rows:
            statement.add(prepared, params)
        return statement

    def conditional(self, statement: Any, params: Sequence[Any] | None,
                    resolve: Callable[[], tuple[bool, dict] | None],
                    ) -> tuple[bool, dict]:
        """Run a lightweight transaction and return (applied, current row values).

        When the outcome is unknown (a Paxos timeout), `resolve` reads the row at
        serial consistency and returns the outcome, or None to send the
        transaction again. The write counters count the statement only when the
        returned outcome is applied.
        """
        if isinstance(statement, str):
            statement = self.bind(statement, params)
        session = self.connection.connect()
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                result = session.execute(statement, execution_profile="conditional")
                if result.was_applied:
                    self.counters.add(*_written_all([statement]))
                return result.was_applied, (result.one() or {})
            except _driver_errors() as error:
                if not _is_cas_unknown(error):
                    raise self._fail(error) from error
                logger.info("lightweight transaction outcome unknown at %s, reading "
                            "it back (attempt %d)", self.connection.where, attempt + 1)
            outcome = resolve()
            if outcome is not None:
                if outcome[0]:
                    self.counters.add(*_written_all([statement]))
                return outcome
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise BackendUnavailableError(
            f"Cassandra at {self.connection.where} left a lightweight transaction "
            f"undecided {MAX_CAS_ATTEMPTS} times; the partition is under heavy "
            "contention", self.connection.where)


def _shard(text: str) -> int:
    # crc32 rather than hash(), because the shard must be equal in every process.
    return zlib.crc32(text.encode("utf-8")) % LIST_SHARDS


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _month(created_us: int) -> int:
    """Months since January 1970 of a time in microseconds since the epoch."""
    when = EPOCH + timedelta(microseconds=created_us)
    return (when.year - 1970) * 12 + when.month - 1


def _micros(value: Any) -> int:
    return to_micros(to_utc(value))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _slices(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _rows_per_batch(row_bytes: int) -> int:
    return max(1, min(MAX_BATCH_ROWS, MAX_BATCH_BYTES // max(row_bytes, 1)))


def _row_order(row: tuple) -> tuple:
    return row[:3]


def _distinct(rows: Iterable[tuple]) -> Iterator[tuple]:
    """Drop adjacent repeats, which a merge of two index values can produce."""
    previous = None
    for row in rows:
        if row != previous:
            yield row
        previous = row


# ---------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _IndexState:
    """The index rows of one stored record: its created_us and (field, value) pairs."""

    created_us: int
    entries: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, kind: str, record: dict[str, Any]) -> _IndexState:
        entries = [(LIST_FIELD, "")]
        for name in INDEXED_FIELDS[kind]:
            value = record.get(name)
            if isinstance(value, str):
                entries.append((name, value))
        return cls(_micros(record["created_at"]), tuple(entries))

    @classmethod
    def parse(cls, text: str | None) -> _IndexState | None:
        if not text:
            return None
        created_us, entries = json.loads(text)
        return cls(created_us, tuple((name, value) for name, value in entries))

    def text(self) -> str:
        return _dumps([self.created_us, [list(entry) for entry in self.entries]])

    def rows(self) -> set[tuple[str, str, int]]:
        return {(name, value, self.created_us) for name, value in self.entries}


def _write_timestamp(revision: int) -> int:
    """Return the write time of the index rows of `revision`.

    Index rows carry write times derived from the entity's revision instead of
    the clock, so in whatever order the requests of concurrent writers arrive,
    the rows end as the newest revision wants them. An update writes its new
    rows and deletes its old ones at its own revision's time, and a hard delete
    removes rows just above the time of the revision it removed.
    """
    return 2 * revision + 2


class CassandraEntityRepository(EntityRepository):
    """Entities of one kind, in the tables that the module docstring lists."""

    def __init__(self, cql: _Cql, entity_type: type[Entity]) -> None:
        self._cql = cql
        self.entity_type = entity_type
        # (id, revision) -> index entries of records read lately. An update
        # usually follows a get of the revision it replaces, so this saves the
        # transaction that would otherwise fetch the old entries.
        self._seen: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._seen_lock = threading.Lock()

    def _remember(self, record: dict[str, Any]) -> None:
        entries = _IndexState.of(self.kind, record).text()
        with self._seen_lock:
            self._seen[(record["id"], record["revision"])] = entries
            while len(self._seen) > SEEN_RECORDS:
                self._seen.popitem(last=False)

    def _seen_entries(self, entity_id: str, revision: int) -> str | None:
        with self._seen_lock:
            return self._seen.get((entity_id, revision))

    @property
    def _key(self) -> tuple[str, str]:
        return (self._cql.store, self.kind)

    def _unique_text(self, values: Sequence[Any]) -> str:
        return _dumps(list(values)) if self.unique_key else ""

    def _record_unique(self, record: dict[str, Any]) -> str:
        return self._unique_text([record[name] for name in self.unique_key])

    # -- insert -----------------------------------------------------------

    def insert(self, entity: Entity) -> None:
        record = entity.to_record()
        uniq = self._record_unique(record)
        state = _IndexState.of(self.kind, record)
        doc = _dumps(record)
        claimed = bool(uniq) and self._claim(uniq, entity.id)
        try:
            # Index rows go first, so an entity that readers can get is always in
            # the scans that should find it. The rows of a failed insert are
            # skipped on read because no stored record matches them.
            self._cql.run_all(self.index_writes(entity.id, state.rows(),
                                                _write_timestamp(entity.revision)))
            applied, _ = self._cql.conditional(
                INSERT_ENTITY,
                (*self._key, entity.id, entity.revision, uniq, state.text(), doc),
                lambda: self._resolve_insert(entity.id, doc))
        except BaseException:
            if claimed:
                self._unclaim(uniq, entity.id)
            raise
        if not applied:
            if claimed:
                self._unclaim(uniq, entity.id)
            raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                     entity.id)
        self._remember(record)

    def _resolve_insert(self, entity_id: str, doc: str) -> tuple[bool, dict] | None:
        row = self._cql.serial_one(SELECT_ENTITY_DOC, (*self._key, entity_id))
        return None if row is None else (row["doc"] == doc, row)

    def _claim(self, uniq: str, entity_id: str) -> bool:
        """Claim a unique key for `entity_id` and return whether this call did."""
        def resolve() -> tuple[bool, dict] | None:
            return self._resolve_claim(uniq, entity_id)

        for _ in range(3):
            applied, row = self._cql.conditional(
                INSERT_CLAIM, (*self._key, uniq, entity_id, utcnow()), resolve)
            if applied:
                return True
            holder = row.get("id")
            if holder == entity_id:
                return False
            if holder is not None and not self._stale_claim(uniq, holder, row):
                raise self._taken(uniq, holder)
            applied, _ = self._cql.conditional(
                TAKE_OVER_CLAIM, (entity_id, utcnow(), *self._key, uniq, holder),
                resolve)
            if applied:
                logger.warning("took over the %s unique key %s from %r, whose entity "
                               "is missing", self.kind, uniq, holder)
                return True
        raise self._taken(uniq, None)

    def _resolve_claim(self, uniq: str, entity_id: str) -> tuple[bool, dict] | None:
        row = self._cql.serial_one(SELECT_CLAIM, (*self._key, uniq))
        return None if row is None else (row["id"] == entity_id, row)

    def _stale_claim(self, uniq: str, holder: str, row: dict) -> bool:
        """Return whether a claim's entity is missing and the claim is too old to
        belong to an insert in progress."""
        stored = self._cql.one(SELECT_ENTITY_UNIQ, (*self._key, holder))
        if stored is not None and stored[0] == uniq:
            return False
        claimed_at = row.get("claimed_at")
        if claimed_at is None:
            return True
        return (utcnow() - to_utc(claimed_at)).total_seconds() > CLAIM_GRACE_SECONDS

    def _taken(self, uniq: str, holder: str | None) -> AlreadyExistsError:
        values = tuple(json.loads(uniq))
        owner = f" by {self.kind} {holder!r}" if holder else ""
        return AlreadyExistsError(
            f"{self.kind} with {dict(zip(self.unique_key, values))} is already taken"
            f"{owner}", values)

    def _unclaim(self, uniq: str, entity_id: str) -> None:
        # An unknown outcome needs no check, because a claim left behind is taken
        # over once CLAIM_GRACE_SECONDS have passed.
        self._cql.conditional(DELETE_CLAIM, (*self._key, uniq, entity_id),
                              lambda: (True, {}))

    def index_writes(self, entity_id: str, rows: Iterable[tuple[str, str, int]],
                     timestamp: int) -> list[tuple[str, tuple]]:
        """Return the statements that add index rows for an entity."""
        statements = []
        for name, value, created_us in rows:
            month = _month(created_us)
            statements.append((INSERT_INDEX, (*self._key, name, value, month,
                                              created_us, entity_id, timestamp)))
            statements.append((INSERT_INDEX_MONTH, (*self._key, name, value, month)))
        return statements

    def index_deletes(self, entity_id: str, rows: Iterable[tuple[str, str, int]],
                      timestamp: int) -> list[tuple[str, tuple]]:
        """Return the statements that remove index rows of an entity."""
        return [(DELETE_INDEX, (timestamp, *self._key, name, value, _month(created_us),
                                created_us, entity_id))
                for name, value, created_us in rows]

    # -- reads ------------------------------------------------------------

    def get(self, entity_id: str) -> Entity:
        row = self._cql.one(SELECT_ENTITY_DOC, (*self._key, entity_id))
        if row is None:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        record = json.loads(row[0])
        self._remember(record)
        return self.entity_type.from_record(record)

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, Entity]:
        records = self._records(list(dict.fromkeys(entity_ids)))
        return {entity_id: self.entity_type.from_record(record)
                for entity_id, record in records if record is not None}

    def _records(self, entity_ids: Sequence[str]) -> list[tuple[str, dict | None]]:
        results = self._cql.read_many(
            SELECT_ENTITY_DOC, [(*self._key, entity_id) for entity_id in entity_ids])
        return [(entity_id, json.loads(rows[0][0]) if rows else None)
                for entity_id, rows in zip(entity_ids, results)]

    def find_unique(self, key: tuple) -> Entity | None:
        uniq = self._unique_text(list(key))
        row = self._cql.one(SELECT_CLAIM, (*self._key, uniq))
        if row is None:
            return None
        try:
            entity = self.get(row[0])
        except NotFoundError:
            return None
        # A claim left behind by a failed insert or delete names an entity that
        # is missing or has another key.
        return entity if self._record_unique(entity.to_record()) == uniq else None

    # -- update and delete ------------------------------------------------

    def update(self, entity: Entity) -> None:
        record = entity.to_record()
        uniq = self._record_unique(record)
        state = _IndexState.of(self.kind, record)
        doc = _dumps(record)
        new_rows = state.rows()
        # Most updates leave the indexed fields alone, and the others usually
        # follow a get of the stored revision, so one transaction is the rule.
        expected = self._seen_entries(entity.id, entity.revision - 1) or state.text()
        for _ in range(3):
            old = _IndexState.parse(expected)
            old_rows = old.rows() if old is not None else set()
            timestamp = _write_timestamp(entity.revision)
            # Changed index rows are written before the record and the old ones
            # deleted after it, so a scan never misses the entity.
            self._cql.run_all(self.index_writes(entity.id, new_rows - old_rows,
                                                timestamp))
            applied, current = self._cas_update(entity, uniq, expected, state, doc)
            if applied:
                self._cql.run_all(self.index_deletes(entity.id, old_rows - new_rows,
                                                     timestamp))
                self._remember(record)
                return
            self._check_current(entity, uniq, current)
            # Only the stored index entries differ from the expected ones.
            expected = current.get("indexed")
        raise self._conflict(entity, current)

    def _cas_update(self, entity: Entity, uniq: str, expected_indexed: str | None,
                    state: _IndexState, doc: str) -> tuple[bool, dict]:
        return self._cql.conditional(
            UPDATE_ENTITY,
            (entity.revision, state.text(), doc, *self._key, entity.id,
             entity.revision - 1, uniq, expected_indexed),
            lambda: self._resolve_update(entity.id, doc))

    def _resolve_update(self, entity_id: str, doc: str) -> tuple[bool, dict]:
        row = self._cql.serial_one(SELECT_ENTITY_STATE, (*self._key, entity_id))
        return (False, {}) if row is None else (row["doc"] == doc, row)

    def _check_current(self, entity: Entity, uniq: str, current: dict) -> None:
        """Raise the error a failed update earns, unless only the index rows differ."""
        if current.get("revision") is None:
            raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
        if current.get("uniq") != uniq:
            raise InvalidInputError(
                f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot "
                "change", entity.id)
        if current["revision"] != entity.revision - 1:
            raise self._conflict(entity, current)

    def _conflict(self, entity: Entity, current: dict) -> ConflictError:
        return ConflictError(
            f"{self.kind} {entity.id!r} was changed concurrently (stored revision "
            f"{current.get('revision')}, expected {entity.revision - 1})", entity.id)

    def delete(self, entity_id: str) -> None:
        for _ in range(MAX_CAS_ATTEMPTS):
            row = self._cql.serial_one(SELECT_ENTITY_STATE, (*self._key, entity_id))
            if row is None:
                return
            revision = row["revision"]
            applied, _ = self._cql.conditional(
                DELETE_ENTITY, (*self._key, entity_id, revision),
                lambda revision=revision: self._resolve_delete(entity_id, revision))
            if applied:
                self._after_delete(entity_id, row)
                return
        raise ConflictError(
            f"{self.kind} {entity_id!r} kept changing while being deleted; retry",
            entity_id)

    def _resolve_delete(self, entity_id: str,
                        revision: int) -> tuple[bool, dict] | None:
        row = self._cql.serial_one(SELECT_ENTITY_STATE, (*self._key, entity_id))
        if row is None:
            return True, {}
        return None if row["revision"] == revision else (False, row)

    def _after_delete(self, entity_id: str, row: dict) -> None:
        state = _IndexState.parse(row["indexed"])
        if state is not None:
            timestamp = _write_timestamp(row["revision"]) + 1
            self._cql.run_all(self.index_deletes(entity_id, state.rows(), timestamp))
        if row["uniq"]:
            self._unclaim(row["uniq"], entity_id)

    # -- scans ------------------------------------------------------------

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        descending, after = self._native_order(request)
        path = self._access_path(request)
        if path is None:
            return
        name, values = path
        if name == "id":
            candidates = self._id_candidates(values, descending, after)
        else:
            streams = [self._index_stream(name, value, descending, after)
                       for value in values]
            order = (lambda row: (-row[0], row[1])) if descending else None
            candidates = _distinct(heapq.merge(*streams, key=order))
        for chunk in _chunks(candidates, DOC_CHUNK):
            records = self._records([entity_id for _, entity_id in chunk])
            for (created_us, _), (_, record) in zip(chunk, records):
                if self._matches(record, created_us, name, values, request.namespace):
                    yield self.entity_type.from_record(record)

    def _native_order(self, request: ScanRequest,
                      ) -> tuple[bool, tuple[int, str] | None]:
        """Return (descending, cursor) when the scan must follow created_at order."""
        order = request.order
        if not order or any(key.field != ("created_at",) for key in order):
            return False, None
        if request.after is None:
            return order[0].descending, None
        value, last_id = request.after[0], request.after[-1]
        try:
            return order[0].descending, (_micros(value), str(last_id))
        except (InvalidInputError, TypeError):
            raise InvalidInputError(
                f"scan cursor {request.after!r} does not start with a created_at time",
                request.after) from None

    def _access_path(self, request: ScanRequest,
                     ) -> tuple[str, tuple[str, ...]] | None:
        """Choose the pushed-down equality to read through, or None if none matches."""
        indexed = set(INDEXED_FIELDS[self.kind]) | {"id"}
        found: dict[str, set[str]] = {}

        def narrow(name: str, values: Iterable[str]) -> None:
            found[name] = found[name] & set(values) if name in found else set(values)

        for part in conjuncts(request.filter):
            path = getattr(part, "field", ())
            if len(path) != 1 or path[0] not in indexed:
                continue
            if isinstance(part, Compare) and part.op == "=" \
                    and isinstance(part.value, str):
                narrow(path[0], [part.value])
            elif isinstance(part, In) and not part.negated \
                    and all(isinstance(value, str) for value in part.values):
                narrow(path[0], part.values)
        if request.namespace is not None and "namespace" in indexed:
            narrow("namespace", [request.namespace])
        for name in ACCESS_PRIORITY:
            if name in found:
                values = tuple(sorted(found[name]))
                return (name, values) if values else None
        return LIST_FIELD, ("",)

    def _index_stream(self, name: str, value: str, descending: bool,
                      after: tuple[int, str] | None) -> Iterator[tuple[int, str]]:
        """Yield (created_us, id) rows of one index value in created_at order.

        Ties in created_at come in ascending id order in both directions.
        """
        key = (*self._key, name, value)
        if descending:
            top = MAX_INT if after is None else _month(after[0])
            months = self._cql.stream(SELECT_MONTHS_DOWN, (*key, top))
        else:
            bottom = MIN_INT if after is None else _month(after[0])
            months = self._cql.stream(SELECT_MONTHS_UP, (*key, bottom))
        for (month,) in months:
            if descending:
                yield from self._month_descending(key, month, after)
            else:
                low = (MIN_BIGINT, "") if after is None else after
                yield from self._cql.stream(SELECT_INDEX_AFTER, (*key, month, *low))

    def _month_descending(self, key: tuple, month: int,
                          after: tuple[int, str] | None) -> Iterator[tuple[int, str]]:
        if after is not None and _month(after[0]) == month:
            # Entities created at the cursor's own time come first, by id.
            yield from self._cql.stream(SELECT_INDEX_TIES, (*key, month, *after))
        below = MAX_BIGINT if after is None else after[0]
        rows = self._cql.stream(SELECT_INDEX_BEFORE, (*key, month, below))
        # The table yields equal times with ids descending, but the scan contract
        # wants the id ascending as the tie-break in both directions.
        for _, group in groupby(rows, key=lambda row: row[0]):
            yield from reversed(list(group))

    def _id_candidates(self, ids: Sequence[str], descending: bool,
                       after: tuple[int, str] | None) -> Iterator[tuple[int, str]]:
        """Order the entities a filter names by id, read directly."""
        rows = [(_micros(record["created_at"]), entity_id)
                for entity_id, record in self._records(ids) if record is not None]

        def position(row: tuple[int, str]) -> tuple[int, str]:
            return (-row[0], row[1]) if descending else row

        rows.sort(key=position)
        if after is not None:
            rows = [row for row in rows if position(row) > position(after)]
        return iter(rows)

    def _matches(self, record: dict | None, created_us: int, name: str,
                 values: tuple[str, ...], namespace: str | None) -> bool:
        """Return whether an index row still describes the stored record.

        Rows left by failed or superseded writes point at a record that is gone
        or has another creation time or field value, so they are skipped.
        """
        if record is None or _micros(record["created_at"]) != created_us:
            return False
        if name not in (LIST_FIELD, "id") and record.get(name) not in values:
            return False
        return namespace is None or record.get("namespace") == namespace


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


# A point row as the metric code passes it around: (step, ts_us, seq, value,
# extra), the clustering columns first, so rows compare in history order.
PointRow = tuple[int, int, str, float, str | None]
# A point partition of one append: (key, step bucket, day).
Partition = tuple[str, int, int]


def _point_row(point: MetricPoint) -> PointRow:
    ts_us = to_micros(point.timestamp)
    extra = point.extras()
    return (point.step, ts_us, point.seq, point.value,
            None if extra is None else _dumps(extra))


def _partition_rows(points: Iterable[MetricPoint]) -> dict[Partition, list[PointRow]]:
    partitions: dict[Partition, list[PointRow]] = {}
    for point in points:
        row = _point_row(point)
        partition = (point.key, row[0] // STEP_BUCKET, row[1] // DAY_MICROS)
        rows = partitions.get(partition)
        if rows is None:
            rows = partitions[partition] = []
        rows.append(row)
    return partitions


def _series_rows(series: Iterable[MetricSeries]) -> dict[Partition, list[PointRow]]:
    partitions: dict[Partition, list[PointRow]] = {}
    for metric in series:
        key = metric.key
        current: tuple[int, int] | None = None
        rows: list[PointRow] = []
        for value, step, ts_us, seq in zip(metric.values, metric.steps, metric.stamps,
                                           metric.seqs):
            where = (step // STEP_BUCKET, ts_us // DAY_MICROS)
            if where != current:
                current = where
                rows = partitions.setdefault((key, *where), [])
            rows.append((step, ts_us, seq, value, None))
    return partitions


def _series_chunks(series: Sequence[MetricSeries],
                   size: int) -> Iterator[list[MetricSeries]]:
    """Split series into lists of at most `size` points, slicing long series."""
    chunk: list[MetricSeries] = []
    room = size
    for metric in series:
        start = 0
        while start < len(metric):
            end = min(len(metric), start + room)
            if (start, end) == (0, len(metric)):
                chunk.append(metric)
            else:
                chunk.append(replace(
                    metric, values=metric.values[start:end],
                    steps=metric.steps[start:end], stamps=metric.stamps[start:end],
                    seqs=metric.seqs[start:end]))
            room -= end - start
            start = end
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _point(run_id: str, key: str, step: int, ts_us: int, seq: str, value: float,
           extra: str | None) -> MetricPoint:
    # Adding to the epoch is exact, and quicker than clock.from_micros.
    point = MetricPoint(run_id=run_id, key=key, value=value, step=step,
                        timestamp=EPOCH + timedelta(microseconds=ts_us), seq=seq)
    return point.with_extras(json.loads(extra)) if extra else point


class _PointBinder:
    """A builder of INSERT_POINT batches of one partition, with little work per row.

    Adding a row through `PreparedStatement.bind` took about 30 microseconds
    with cassandra-driver 3.30.1 on the benchmark machine, and adding it here
    about 3. Only the first row of a batch goes through `bind`, which also
    gives the batch its routing key. The other rows reuse its serialized
    partition key and serialize their five other columns with the column types
    of the prepared statement, as `bind` does.

    A point without optional fields leaves `extra` unset rather than null,
    because a null makes Cassandra write a tombstone into every row. Points
    with one identity have one content, so no stored `extra` needs clearing.
    """

    def __init__(self, prepared: Any) -> None:
        self.prepared = prepared
        version = prepared.protocol_version
        types = [column.type for column in prepared.column_metadata]
        # INSERT_POINT binds the five partition key columns, then step, ts_us,
        # seq, value and extra.
        serializers = [column_type.serialize for column_type in types[5:]]
        self._step, self._ts_us, self._seq, self._value, self._extra = serializers
        self._version = version
        # Protocol versions before 4 have no unset values.
        self._no_extra = UNSET_VALUE if version >= 4 else None

    def batch(self, partition_key: tuple, rows: Sequence[PointRow]) -> Any:
        prepared, version = self.prepared, self._version
        step_of, ts_of, seq_of = self._step, self._ts_us, self._seq
        value_of, extra_of = self._value, self._extra
        no_extra = self._no_extra
        batch = _CountedBatch()
        step, ts_us, seq, value, extra = rows[0]
        first = prepared.bind((*partition_key, step, ts_us, seq, value,
                               no_extra if extra is None else extra))
        batch.add(first)
        head = first.values[:5]
        size = _bound_bytes(first.values)
        # Each later row has its head, three 8-byte numbers, its seq and extra.
        row_size = _bound_bytes(head) + 24
        for row in rows[1:]:
            step, ts_us, seq, value, extra = row
            seq_bytes = seq_of(seq, version)
            extra_bytes = no_extra if extra is None else extra_of(extra, version)
            size += row_size + len(seq_bytes)
            if extra_bytes is not no_extra:
                size += len(extra_bytes)
            bound = BoundStatement(prepared)
            bound.raw_values = row
            bound.values = [*head, step_of(step, version), ts_of(ts_us, version),
                            seq_bytes, value_of(value, version), extra_bytes]
            batch.add(bound)
        batch.bound_bytes = size
        return batch


class CassandraMetricRepository(MetricRepository):
    """Metric histories by step bucket and day, and the latest point per metric."""

    def __init__(self, cql: _Cql) -> None:
        self._cql = cql
        # run id -> key -> (step, ts_us, seq) of the latest point as this
        # repository last wrote or read it, for the runs used last. Other
        # processes may have raised the stored point since, or deleted it, so
        # it only serves as the expected value of the next conditional update,
        # and a failed condition reads the stored point again.
        self._known_latest: OrderedDict[str, dict[str, tuple]] = OrderedDict()
        self._known_lock = threading.Lock()

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        self._store_rows(run_id, _partition_rows(points))

    def append_series(self, run_id: str, series: Sequence[MetricSeries]) -> None:
        """Store series from their columns, without a MetricPoint per value."""
        for chunk in _series_chunks(series, limits.MAX_METRIC_BATCH):
            self._store_rows(run_id, _series_rows(chunk))

    def _store_rows(self, run_id: str,
                    partitions: dict[Partition, list[PointRow]]) -> None:
        """Write the rows and partition markers, then raise the latest points."""
        if not partitions:
            return
        store = self._cql.store
        best: dict[str, PointRow] = {}
        for (key, _, _), rows in partitions.items():
            top = max(rows, key=_row_order)
            if key not in best or top[:3] > best[key][:3]:
                best[key] = top
        statements: list[tuple[Any, Any]] = [
            (INSERT_METRIC_RUN, (store, _shard(run_id), run_id))]
        markers = [(store, run_id, *partition) for partition in partitions]
        statements += [(self._cql.batch(INSERT_PARTITION, chunk), None)
                       for chunk in _slices(markers, _rows_per_batch(64))]
        binder = _PointBinder(self._cql.connection.prepare(INSERT_POINT))
        for (key, bucket, day), rows in partitions.items():
            row_bytes = 64 + sum(len(row[4] or "") for row in rows) // len(rows)
            partition_key = (store, run_id, key, bucket, day)
            statements += [(binder.batch(partition_key, chunk), None)
                           for chunk in _slices(rows, _rows_per_batch(row_bytes))]
        orders = {key: row[:3] for key, row in best.items()}
        keys = sorted(best)
        # The stored latest points are read only when a key has no remembered
        # point, or when the remembered points leave nothing to raise, because
        # a delete in another process may have removed them. The read runs
        # alongside the point writes.
        current = self._known(run_id, keys)
        read = None
        if current is None or not self._pending(orders, current):
            read = self._cql.start(SELECT_LATEST_ORDER, (store, run_id, keys))
        self._cql.run_all(statements)
        if read is not None:
            current = {key: tuple(rest) for key, *rest in self._cql.rows_of(read)}
        # The latest values change only after the points they describe are stored.
        self._raise_latest(run_id, orders, {key: row[3:] for key, row in best.items()},
                           current)

    def _raise_latest(self, run_id: str, best: dict[str, tuple],
                      contents: dict[str, tuple], current: dict[str, tuple]) -> None:
        """Make each key's latest point at least `best`, with conditional batches.

        `best` maps keys to (step, ts_us, seq), `contents` to (value, extra),
        and `current` to the (step, ts_us, seq) that the latest points had when
        this repository last wrote or read them. The batch conditions name
        `current`, so a writer that raced ahead makes the batch fail, and the
        loop reads, compares and tries again.
        """
        keys = sorted(best)
        for attempt in range(MAX_CAS_ATTEMPTS):
            pending = self._pending(best, current)
            if not pending:
                self._remember(run_id, current)
                return
            applied, _ = self._cql.conditional(
                self._latest_batch(run_id, pending, contents, current), None,
                lambda: (False, {}))
            if applied:
                self._remember(run_id, {**current, **pending})
                return
            logger.debug("latest metrics of run %s changed concurrently, retrying "
                         "(attempt %d)", run_id, attempt + 1)
            if attempt:
                time.sleep(random.uniform(0, 0.002 * attempt))
            current = self._latest_order(run_id, keys)
        raise ConflictError(
            f"the latest metric values of run {run_id!r} kept changing concurrently; "
            f"gave up after {MAX_CAS_ATTEMPTS} attempts", run_id)

    @staticmethod
    def _pending(best: dict[str, tuple], current: dict[str, tuple]) -> dict[str, tuple]:
        return {key: order for key, order in best.items()
                if key not in current or order > current[key]}

    def _known(self, run_id: str, keys: list[str]) -> dict[str, tuple] | None:
        """Return the remembered latest order of every key, or None if one is missing."""
        with self._known_lock:
            known = self._known_latest.get(run_id)
            if known is None:
                return None
            self._known_latest.move_to_end(run_id)
            try:
                return {key: known[key] for key in keys}
            except KeyError:
                return None

    def _remember(self, run_id: str, orders: dict[str, tuple]) -> None:
        with self._known_lock:
            known = self._known_latest.get(run_id)
            if known is None or len(known) + len(orders) > KNOWN_LATEST_KEYS:
                known = self._known_latest[run_id] = {}
            self._known_latest.move_to_end(run_id)
            known.update(orders)
            while len(self._known_latest) > KNOWN_LATEST_RUNS:
                self._known_latest.popitem(last=False)

    def _forget(self, run_id: str) -> None:
        with self._known_lock:
            self._known_latest.pop(run_id, None)

    def _latest_batch(self, run_id: str, pending: dict[str, tuple],
                      contents: dict[str, tuple], current: dict[str, tuple]) -> Any:
        store = self._cql.store
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for key, order in pending.items():
            values = (*order, *contents[key])
            if key in current:
                batch.add(self._cql.connection.prepare(RAISE_LATEST),
                          (*values, store, run_id, key, *current[key]))
            else:
                batch.add(self._cql.connection.prepare(INSERT_LATEST),
                          (store, run_id, key, *values))
        return batch

    def _latest_order(self, run_id: str, keys: list[str]) -> dict[str, tuple]:
        """Return key -> (step, ts_us, seq) of the stored latest points, read at
        serial consistency."""
        params = (self._cql.store, run_id, keys)
        rows = self._cql.rows(SELECT_LATEST_ORDER, params, profile="serial")
        return {row["key"]: (row["step"], row["ts_us"], row["seq"]) for row in rows}

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        low = 0 if min_step is None else max(min_step, 0)
        high = limits.MAX_STEP if max_step is None else min(max_step, limits.MAX_STEP)
        if low > high:
            return
        start_us = None if start is None else to_micros(start)
        end_us = None if end is None else to_micros(end)
        groups = self._partition_groups(run_id, key, low, high, start_us, end_us)
        # The next step bucket's queries are sent before this bucket's rows are
        # used, so the server reads one bucket while the caller consumes another.
        upcoming = self._start_bucket(run_id, key, next(groups, None), low, high)
        while upcoming is not None:
            current = upcoming
            upcoming = self._start_bucket(run_id, key, next(groups, None), low, high)
            for row in self._merged(current):
                if start_us is not None and row[1] < start_us:
                    continue
                if end_us is not None and row[1] > end_us:
                    continue
                yield _point(run_id, key, *row)

    def _partition_groups(self, run_id: str, key: str, low: int, high: int,
                          start_us: int | None,
                          end_us: int | None) -> Iterator[tuple[int, list[int]]]:
        """Yield (step bucket, days) of the partitions that may hold matching points."""
        partitions = self._cql.stream(
            SELECT_PARTITIONS, (self._cql.store, run_id, key, low // STEP_BUCKET,
                                high // STEP_BUCKET))
        first_day = None if start_us is None else start_us // DAY_MICROS
        last_day = None if end_us is None else end_us // DAY_MICROS
        for bucket, group in groupby(partitions, key=lambda row: row[0]):
            yield bucket, [day for _, day in group
                           if (first_day is None or day >= first_day)
                           and (last_day is None or day <= last_day)]

    def _start_bucket(self, run_id: str, key: str,
                      group: tuple[int, list[int]] | None, low: int,
                      high: int) -> list | None:
        if group is None:
            return None
        bucket, days = group
        fetch_size = max(100, PAGE_SIZE // max(len(days), 1))
        return [self._cql.start(SELECT_POINTS, (self._cql.store, run_id, key, bucket,
                                                day, low, high), fetch_size)
                for day in days]

    def _merged(self, futures: list) -> Iterator[tuple]:
        """Yield one step bucket's rows in history order, merging its day partitions."""
        streams = [self._cql.rows_of(future) for future in futures]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda row: row[:3])

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        ids = list(dict.fromkeys(run_ids))
        store = self._cql.store
        if keys is None:
            rows = self._cql.read_many(SELECT_LATEST,
                                       [(store, run_id) for run_id in ids])
        else:
            wanted = list(dict.fromkeys(keys))
            if not wanted:
                return {}
            rows = self._cql.read_many(SELECT_LATEST_KEYS,
                                       [(store, run_id, wanted) for run_id in ids])
        result: dict[str, dict[str, MetricPoint]] = {}
        for run_id, found in zip(ids, rows):
            for key, *rest in found:
                result.setdefault(run_id, {})[key] = _point(run_id, key, *rest)
        return result

    def keys(self, run_id: str) -> list[str]:
        rows = self._cql.rows(SELECT_METRIC_KEYS, (self._cql.store, run_id))
        return sorted(row[0] for row in rows)

    def delete_run(self, run_id: str) -> None:
        self._forget(run_id)
        store = self._cql.store
        partitions = self._cql.stream(SELECT_RUN_PARTITIONS, (store, run_id))
        for chunk in _chunks(partitions, DOC_CHUNK):
            self._cql.run_all([(DELETE_POINTS, (store, run_id, *row)) for row in chunk])
        self._cql.run_all([
            (DELETE_LATEST, (store, run_id)),
            (DELETE_RUN_PARTITIONS, (store, run_id)),
            (DELETE_METRIC_RUN, (store, _shard(run_id), run_id)),
        ])

    def runs_with_metrics(self) -> Iterator[str]:
        streams = [self._cql.stream(SELECT_METRIC_RUNS, (self._cql.store, shard))
                   for shard in range(LIST_SHARDS)]
        for (run_id,) in heapq.merge(*streams):
            yield run_id


# ---------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------


class CassandraLineageRepository(LineageRepository):
    """Nodes by id, edges stored at both ends, and sharded lists for full scans."""

    def __init__(self, cql: _Cql) -> None:
        self._cql = cql

    def put_node(self, node: LineageNode) -> None:
        record = node.to_record()
        store = self._cql.store
        applied, row = self._cql.conditional(
            INSERT_NODE, (store, node.id, record["kind"], record["label"]),
            lambda: self._resolve_node(node.id, record))
        if not applied and row.get("kind") != record["kind"]:
            raise AlreadyExistsError(
                f"lineage node {node.id!r} exists as a {row.get('kind')}, not a "
                f"{record['kind']}", node.id)
        stored = record if applied else row
        # Written on every call, so a retry repairs a list row that a failed
        # call did not write.
        self._cql.run(INSERT_NODE_ITEM, (store, _shard(node.id), node.id,
                                         stored["kind"], stored.get("label")))

    def _resolve_node(self, node_id: str, record: dict) -> tuple[bool, dict] | None:
        row = self._cql.serial_one(SELECT_NODE, (self._cql.store, node_id))
        if row is None:
            return None
        return (row["kind"], row["label"]) == (record["kind"], record["label"]), row

    def get_node(self, node_id: str) -> LineageNode:
        row = self._cql.one(SELECT_NODE, (self._cql.store, node_id))
        if row is None:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return LineageNode.from_record({"id": node_id, "kind": row[0],
                                        "label": row[1]})

    def add_edge(self, edge: LineageEdge) -> None:
        record = edge.to_record()
        store = self._cql.store
        ends = (record["source"], record["type"], record["target"])
        # The row at the downstream end decides the edge's creation time, so
        # concurrent writers of one edge store the same time at both ends.
        applied, row = self._cql.conditional(
            INSERT_ADJACENCY_ONCE,
            (store, edge.downstream, "upstream", *ends, record["created_at"]),
            lambda: self._resolve_edge(edge, record["created_at"]))
        created_at = row.get("created_at") or record["created_at"]
        if applied:
            created_at = record["created_at"]
        self._cql.run_all([
            (INSERT_ADJACENCY, (store, edge.upstream, "downstream", *ends, created_at)),
            (INSERT_EDGE_ITEM, (store, _shard(edge.key), edge.key, record["source"],
                                record["target"], record["type"], created_at)),
        ])

    def _resolve_edge(self, edge: LineageEdge,
                      created_at: str) -> tuple[bool, dict] | None:
        record = edge.to_record()
        row = self._cql.serial_one(
            SELECT_ADJACENCY_TIME,
            (self._cql.store, edge.downstream, "upstream", record["source"],
             record["type"], record["target"]))
        return None if row is None else (row["created_at"] == created_at, row)

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        rows = self._cql.rows(SELECT_ADJACENCY, (self._cql.store, node_id, direction))
        edges = [LineageEdge.from_record({"source": source, "type": kind,
                                          "target": target, "created_at": created})
                 for source, kind, target, created in rows]
        return sorted(edges, key=lambda e: (e.source, e.type.value, e.target))

    def scan_nodes(self) -> Iterator[LineageNode]:
        streams = [self._cql.stream(SELECT_NODE_ITEMS, (self._cql.store, shard))
                   for shard in range(LIST_SHARDS)]
        for node_id, kind, label in heapq.merge(*streams):
            yield LineageNode.from_record({"id": node_id, "kind": kind,
                                           "label": label})

    def scan_edges(self) -> Iterator[LineageEdge]:
        streams = [self._cql.stream(SELECT_EDGE_ITEMS, (self._cql.store, shard))
                   for shard in range(LIST_SHARDS)]
        for _, source, target, kind, created_at in heapq.merge(*streams):
            yield LineageEdge.from_record({"source": source, "target": target,
                                           "type": kind, "created_at": created_at})

    def delete_node(self, node_id: str) -> None:
        store = self._cql.store
        rows = self._cql.rows(SELECT_NODE_ADJACENCY, (store, node_id))
        statements: list[tuple[str, tuple]] = []
        for _, source, kind, target in rows:
            edge = LineageEdge.from_record({"source": source, "target": target,
                                            "type": kind, "created_at": EPOCH})
            other = edge.upstream if edge.downstream == node_id else edge.downstream
            # Rows at an edge's upstream end face downstream, and the reverse.
            facing = "downstream" if other == edge.upstream else "upstream"
            statements.append((DELETE_ADJACENCY, (store, other, facing, source, kind,
                                                  target)))
            statements.append((DELETE_EDGE_ITEM, (store, _shard(edge.key), edge.key)))
        self._cql.run_all(statements)
        self._cql.run_all([
            (DELETE_NODE_ADJACENCY, (store, node_id)),
            (DELETE_NODE_ITEM, (store, _shard(node_id), node_id)),
        ])
        self._cql.conditional(DELETE_NODE, (store, node_id), lambda: (True, {}))


# ---------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------


class CassandraAuditRepository(AuditRepository):
    """The audit chain in partitions of AUDIT_BUCKET events, appended once per seq."""

    def __init__(self, cql: _Cql) -> None:
        self._cql = cql
        # The partition of the tail at the last look. The tail only moves up.
        self._tail_bucket = 0

    def append(self, event: AuditEvent) -> None:
        store = self._cql.store
        doc = _dumps(event.to_record())
        bucket = event.seq // AUDIT_BUCKET
        # The entity's index row and the partition's entry in audit_buckets go
        # first. A row whose seq ends up holding another entity's event is
        # skipped on read.
        self._cql.run_all([(INSERT_EVENT_ITEM, (store, event.entity_id, event.seq)),
                           (INSERT_AUDIT_BUCKET, (store, bucket))])
        applied, _ = self._cql.conditional(
            INSERT_EVENT, (store, bucket, event.seq, event.entity_id, doc),
            lambda: self._resolve_append(event.seq, doc))
        if not applied:
            raise AlreadyExistsError(f"audit event seq {event.seq} is taken",
                                     event.seq)

    def _resolve_append(self, seq: int, doc: str) -> tuple[bool, dict] | None:
        row = self._cql.serial_one(SELECT_EVENT,
                                   (self._cql.store, seq // AUDIT_BUCKET, seq))
        return None if row is None else (row["doc"] == doc, row)

    def _tail_of(self, bucket: int) -> tuple[int, str] | None:
        return self._cql.one(SELECT_TAIL, (self._cql.store, bucket))

    def last(self) -> AuditEvent | None:
        bucket = self._tail_bucket
        found = self._tail_of(bucket)
        if found is None:
            # Only a partition emptied by hand leaves the remembered one empty.
            bucket, found = self._tail_below(MAX_BIGINT)
        if found is None:
            return None
        # A full partition means that the tail may have moved on to the next one.
        while found[0] == (bucket + 1) * AUDIT_BUCKET - 1:
            following = self._tail_of(bucket + 1)
            if following is None:
                break
            bucket, found = bucket + 1, following
        self._tail_bucket = bucket
        return AuditEvent.from_record(json.loads(found[1]))

    def _tail_below(self, limit: int) -> tuple[int, tuple[int, str] | None]:
        """Return the last non-empty partition below `limit` and its newest row."""
        for (bucket,) in self._cql.stream(SELECT_AUDIT_BUCKETS_DOWN,
                                          (self._cql.store, limit)):
            found = self._tail_of(bucket)
            if found is not None:
                return bucket, found
        return 0, None

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        store = self._cql.store
        first = max(after_seq + 1, 0) // AUDIT_BUCKET
        # Every partition the chain ever used is read, so events removed from
        # the middle show up as a gap in verification instead of ending the scan.
        for (bucket,) in self._cql.stream(SELECT_AUDIT_BUCKETS, (store, first)):
            rows = self._cql.stream(SELECT_EVENTS, (store, bucket, after_seq))
            for _, doc in rows:
                yield AuditEvent.from_record(json.loads(doc))

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        store = self._cql.store
        seqs = self._cql.stream(SELECT_EVENT_ITEMS, (store, entity_id))
        for chunk in _chunks(seqs, DOC_CHUNK):
            results = self._cql.read_many(
                SELECT_EVENT, [(store, seq // AUDIT_BUCKET, seq) for (seq,) in chunk])
            for rows in results:
                if not rows:
                    continue
                record = json.loads(rows[0][0])
                if record["entity_id"] == entity_id:
                    yield AuditEvent.from_record(record)


# ---------------------------------------------------------------------------
# Blobs
# ---------------------------------------------------------------------------


class CassandraBlobRepository(BlobRepository):
    """One partition per record, and a sharded key list for sorted scans."""

    def __init__(self, cql: _Cql) -> None:
        self._cql = cql

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        store = self._cql.store
        self._cql.run_all([
            (INSERT_BLOB, (store, namespace, key, _dumps(record))),
            (INSERT_BLOB_ITEM, (store, namespace, _shard(key), key)),
        ])

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        row = self._cql.one(SELECT_BLOB, (self._cql.store, namespace, key))
        if row is None:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return json.loads(row[0])

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        store = self._cql.store
        streams = [self._cql.stream(SELECT_BLOB_ITEMS, (store, namespace, shard))
                   for shard in range(LIST_SHARDS)]
        keys = (row[0] for row in heapq.merge(*streams))
        for chunk in _chunks(keys, DOC_CHUNK):
            results = self._cql.read_many(
                SELECT_BLOB, [(store, namespace, key) for key in chunk])
            for key, rows in zip(chunk, results):
                if rows:
                    yield key, json.loads(rows[0][0])

    def delete(self, namespace: str, key: str) -> None:
        store = self._cql.store
        self._cql.run_all([
            (DELETE_BLOB, (store, namespace, key)),
            (DELETE_BLOB_ITEM, (store, namespace, _shard(key), key)),
        ])


# ---------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------


class CassandraBackend(Backend):
    """A store inside a Cassandra keyspace, laid out as the module docstring says."""

    schemes = (SCHEME,)

    def __init__(self, config: CassandraConfig) -> None:
        _require_driver()
        self.config = config
        self._connection: _Connection | None = _acquire(config)
        cql = _Cql(self._connection, config.store)
        self.experiments = CassandraEntityRepository(cql, Experiment)
        self.runs = CassandraEntityRepository(cql, Run)
        self.datasets = CassandraEntityRepository(cql, Dataset)
        self.models = CassandraEntityRepository(cql, Model)
        self.model_versions = CassandraEntityRepository(cql, ModelVersion)
        self.metrics = CassandraMetricRepository(cql)
        self.lineage = CassandraLineageRepository(cql)
        self.audit = CassandraAuditRepository(cql)
        self.blobs = CassandraBlobRepository(cql)
        self.cql = cql

    @classmethod
    def from_url(cls, url: str) -> CassandraBackend:
        return cls(parse_url(url))

    @classmethod
    def conformance_harness(cls, url: str) -> CassandraConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return CassandraConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="cassandra",
            pushdown_operators=frozenset({"=", "in", "and"}),
            native_order_fields=frozenset({"created_at"}),
            transactions=False,
            conditional_writes=True,
            # Cassandra rejects a mutation larger than half of
            # commitlog_segment_size, which is 32 MiB by default.
            max_item_bytes=16 * 1024 * 1024,
            max_batch_size=MAX_BATCH_ROWS,
            persistent=True,
            multi_process=True,
            extra={"metric_step_bucket": STEP_BUCKET,
                   "metric_time_bucket_seconds": DAY_MICROS // 1_000_000},
        )

    @property
    def url(self) -> str:
        return self.config.url()

    def initialize(self) -> None:
        if self._connection is None:
            raise BackendUnavailableError(
                f"the store {self.url!r} is closed; open it again with "
                "mltrail.connect", self.url)
        self._connection.connect()

    def telemetry_counters(self) -> dict[str, int]:
        """Return the rows written through this backend object since it was
        opened, and an estimate of their bytes. See `_written_all` for what
        counts."""
        return self.cql.counters.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Return estimated bytes per table of the keyspace, from system.size_estimates.

        A table's `bytes` is the sum of mean_partition_size * partitions_count
        over the primary token ranges of every node, so it counts one replica.
        These are estimates that each node refreshes from its SSTables
        periodically (every 5 minutes by default): data still in memtables is
        missing, so a table may show 0 right after writes, and a table that no
        refresh has covered yet shows "unknown", as does `total_bytes` then.
        The keyspace is shared by every store in it, so the figures cover all
        of them. `index_bytes` is 0 because the schema has no secondary
        indexes. Raise BackendUnavailableError naming the node that fails.
        """
        self.initialize()
        session = self._connection.connect()
        keyspace = self.config.keyspace
        rows: list[tuple] = []
        hosts = session.cluster.metadata.all_hosts()
        for host in hosts:
            try:
                rows += session.execute(SELECT_SIZE_ESTIMATES, (keyspace,), host=host)
            except _driver_errors() as error:
                raise translate_error(
                    error, f"{host.endpoint} (reading system.size_estimates of "
                    f"keyspace {keyspace!r})") from error
        stats = size_estimate_stats(rows, list(TABLES))
        stats.update(method="system.size_estimates", keyspace=keyspace,
                     scope="keyspace", nodes=len(hosts))
        return stats

    def close(self) -> None:
        if self._connection is not None:
            _release(self._connection)
            self._connection = None


def size_estimate_stats(rows: Iterable[tuple], tables: Sequence[str]) -> dict[str, Any]:
    """Sum (table, mean_partition_size, partitions_count) rows into storage figures.

    A table without any row gets "unknown" bytes, and then so does the total.
    """
    found: dict[str, dict[str, int]] = {}
    for table, mean_size, partitions in rows:
        figures = found.setdefault(table, {"bytes": 0, "partitions": 0})
        figures["bytes"] += (mean_size or 0) * (partitions or 0)
        figures["partitions"] += partitions or 0
    collections: dict[str, dict[str, Any]] = {}
    for table in tables:
        figures = found.get(table, {"bytes": UNKNOWN, "partitions": UNKNOWN})
        collections[table] = {**figures, "index_bytes": 0}
    sizes = [figures["bytes"] for figures in collections.values()]
    total = UNKNOWN if UNKNOWN in sizes else sum(sizes)
    return {"collections": collections, "total_bytes": total}


# ---------------------------------------------------------------------------
# Conformance harness
# ---------------------------------------------------------------------------


class CassandraConformanceHarness:
    """Conformance harness: every case gets a new store name in one shared keyspace.

    A new store costs no DDL. `destroy` closes the backend and leaves the rows
    of the store in place, which the test server deletes with its data folder
    when it stops. The raw hooks read and write `entities` and `audit_events` rows, and
    the index rows that belong with them, with their own statements.
    """

    def __init__(self, url: str) -> None:
        self._config = parse_url(url)
        self._prefix = f"t{os.getpid():x}{random.getrandbits(24):06x}"
        self._count = 0
        # Keeps the shared driver session open between cases.
        self._keeper: CassandraBackend | None = None

    def create(self) -> CassandraBackend:
        self._count += 1
        name = f"{self._prefix}-{self._count}"
        backend = CassandraBackend(self._config.with_store(name))
        backend.initialize()
        if self._keeper is None:
            self._keeper = CassandraBackend(self._config)
        return backend

    def destroy(self, backend: CassandraBackend) -> None:
        # NOTE: the rows of the store stay in the keyspace. Finding every
        # partition of one store would need a pass over the lists of every
        # table, which costs more time per case than the rows cost space.
        backend.close()

    def store_url(self, backend: CassandraBackend) -> str:
        return backend.config.url(with_credentials=True)

    def raw_read(self, backend: CassandraBackend, kind: str, key: Any) -> dict | None:
        cql = backend.cql
        if kind == "audit":
            row = cql.one(SELECT_EVENT, (cql.store, key // AUDIT_BUCKET, key))
        else:
            row = cql.one(SELECT_ENTITY_DOC, (cql.store, kind, key))
        return None if row is None else json.loads(row[0])

    def raw_write(self, backend: CassandraBackend, kind: str, record: dict) -> None:
        cql = backend.cql
        if kind == "audit":
            seq = record["seq"]
            cql.run_all([
                (RAW_INSERT_EVENT, (cql.store, seq // AUDIT_BUCKET, seq,
                                    record["entity_id"], _dumps(record))),
                (INSERT_EVENT_ITEM, (cql.store, record["entity_id"], seq)),
                (INSERT_AUDIT_BUCKET, (cql.store, seq // AUDIT_BUCKET)),
            ])
            return
        repository = backend.entity_repository(kind)
        state = _IndexState.of(kind, record)
        old = cql.one(SELECT_ENTITY_INDEXED, (cql.store, kind, record["id"]))
        old_state = _IndexState.parse(old[0]) if old is not None else None
        timestamp = _write_timestamp(record["revision"])
        statements = repository.index_writes(record["id"], state.rows(), timestamp)
        if old_state is not None:
            statements += repository.index_deletes(
                record["id"], old_state.rows() - state.rows(), timestamp)
        uniq = repository._record_unique(record)
        statements.append((RAW_INSERT_ENTITY, (
            cql.store, kind, record["id"], record["revision"], uniq, state.text(),
            _dumps(record))))
        if uniq:
            statements.append((RAW_INSERT_CLAIM, (cql.store, kind, uniq, record["id"],
                                                  utcnow())))
        cql.run_all(statements)
