"""The DynamoDB backend: one table per store, read by key or Query, never by Scan.

URL: `dynamodb://HOST:PORT/PREFIX?region=REGION&tls=false` for an emulator or a
private endpoint, `dynamodb:///PREFIX?region=REGION` for AWS's regional endpoint.
The store lives in the table `PREFIX-records`, created on first use. Credentials
come from the usual AWS sources (environment, shared files, `profile=NAME`,
instance roles) and never from the URL; against an endpoint on loopback without
any configured credentials, the client signs with dummy ones as emulators expect.
`serialize=true` makes requests to an emulator on loopback take turns (see
`_RequestLock`).

Every item has a string partition key `pk` and sort key `sk`; the DynamoDB
section of docs/backends.md draws the whole layout. In short:

- entities: one item each, with the record as JSON in `doc`. A second item
  claims the unique key (`UNIQUE_KEYS`). Both are written in one transaction,
  so two writers can never both claim a key. Five global secondary indexes list
  a kind (by a sharded `list_key`) and find entities by the fields of
  `INDEXED_FIELDS`, all sorted by `created_at` then id.
- metric points: packed many to an item (bit-exact IEEE 754 values, zlib), in
  partitions per run, metric and bucket of `STEP_BUCKET_WIDTH` steps. A small
  item per bucket lists the buckets. One item per metric keeps its latest
  point, which a conditional write replaces only with a later point.
- lineage: one item per node, each edge stored twice (under both ends).
- audit: events in partitions of `AUDIT_BUCKET_SIZE` consecutive seqs, each
  appended by one conditional put.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import ipaddress
import json
import logging
import os
import random
import secrets
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from itertools import repeat
from operator import itemgetter
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, quote, urlsplit

from mltrail.backend import (
    INDEXED_FIELDS, UNIQUE_KEYS, AuditRepository, Backend, BlobRepository,
    Capabilities, EntityRepository, LineageRepository, MetricRepository, ScanRequest,
    chunked,
)
from mltrail.clock import isoformat, to_micros
from mltrail.domain import (
    AuditEvent, Dataset, Entity, Experiment, LineageEdge, LineageNode, MetricPoint,
    MetricSeries, Model, ModelVersion, Run,
)
from mltrail.errors import (
    AlreadyExistsError, BackendUnavailableError, ConflictError, InvalidInputError,
    MltrailError, NotFoundError,
)
from mltrail.query.ast import Compare, In, conjuncts

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mltrail[dynamodb]'"
TABLE_SUFFIX = "-records"
LAYOUT_VERSION = 1

# Limits of DynamoDB itself.
MAX_ITEM_BYTES = 400 * 1024
MAX_SORT_KEY_BYTES = 1024
BATCH_WRITE_ITEMS = 25
BATCH_GET_KEYS = 100
TRANSACTION_ITEMS = 100

# An entity's JSON leaves room for the audit event that repeats the whole record
# on create, so an entity that fits never produces an audit event that does not.
MAX_RECORD_BYTES = MAX_ITEM_BYTES - 4_096

# Parameters of layout version 1 (see DEFAULT_LAYOUT).
SHARDS = 4
STEP_BUCKET_WIDTH = 10_000
AUDIT_BUCKET_SIZE = 1_000

# Index partitions of these fields would hold most entities of a kind, so their
# keys end in a shard number derived from the entity id.
SHARDED_FIELDS = frozenset({"namespace", "status"})

MAX_CHUNK_POINTS = 5_000
MAX_CHUNK_BYTES = 350_000
"""Uncompressed bytes of one metric chunk; zlib never grows it past the item limit."""

TIME_OFFSET = 2**63
"""Added to signed microseconds so that timestamps sort as fixed-width hex."""

SINGLE = "#"
"""Sort key of every partition that contains a single item."""

LAYOUT_PK = "layout"
AUDIT_HINT_PK = "audit-bucket"

LIST_INDEX = "list-index"
LIST_KEY = "list_key"
FIELD_INDEXES = ("field1-index", "field2-index", "field3-index", "field4-index")
FIELD_KEYS = ("field1_key", "field2_key", "field3_key", "field4_key")
INDEX_SORT = "index_sort"

# Kind -> indexed field -> (index name, partition attribute).
FIELD_SLOTS: dict[str, dict[str, tuple[str, str]]] = {
    kind: dict(zip(fields, zip(FIELD_INDEXES, FIELD_KEYS)))
    for kind, fields in INDEXED_FIELDS.items()
}
AUDIT_SLOT = (FIELD_INDEXES[0], FIELD_KEYS[0])

NATIVE_ORDER_FIELDS = frozenset({"created_at"})
UNKNOWN = "unknown"
TABLE_WAIT_SECONDS = 300.0
RETRY_ATTEMPTS = 10
PARALLEL_REQUESTS = 8
"""Threads that send independent writes at once, within the client's 16 connections."""

# Item: attribute name -> typed DynamoDB value ({"S": ...}, {"N": ...}, {"B": ...}).
Item = dict[str, dict[str, Any]]

# A metric point as stored: step, microseconds since the epoch, seq, value, extras.
Row = tuple[int, int, str, float, "dict[str, Any] | None"]


# ----------------------------------------------------------------------
# URL and configuration
# ----------------------------------------------------------------------


@dataclass(frozen=True)
class DynamoDBConfig:
    """The location of a store, parsed from its URL; it contains no credentials."""

    prefix: str
    region: str | None = None
    endpoint: str | None = None
    tls: bool = True
    profile: str | None = None
    serialize: bool = False

    QUERY_OPTIONS = ("region", "tls", "profile", "serialize")

    @classmethod
    def from_url(cls, url: str) -> DynamoDBConfig:
        """Parse a `dynamodb://` URL; raise InvalidInputError naming what is wrong."""
        if not isinstance(url, str):
            raise InvalidInputError(f"store URL must be a string, got {url!r}", url)
        parts = urlsplit(url)
        if parts.scheme != "dynamodb":
            raise InvalidInputError(
                f"not a DynamoDB store URL: {_redact(url)!r}; expected "
                "dynamodb://HOST:PORT/PREFIX?region=REGION or "
                "dynamodb:///PREFIX?region=REGION", _redact(url))
        if parts.username is not None or parts.password is not None:
            raise InvalidInputError(
                f"DynamoDB store URL {_redact(url)!r} contains credentials; remove "
                "them and use the AWS environment variables, shared credentials "
                "file or profile=NAME instead", _redact(url))
        options = _query_options(url, parts.query)
        config = cls(
            prefix=_prefix(url, parts.path),
            region=options.get("region") or None,
            endpoint=_endpoint(url, parts),
            tls=_flag(url, "tls", options.get("tls", "true")),
            profile=options.get("profile") or None,
            serialize=_flag(url, "serialize", options.get("serialize", "false")),
        )
        if config.serialize and not config.loopback:
            raise InvalidInputError(
                f"DynamoDB store URL {_redact(url)!r} sets serialize=true, which only "
                "works for an endpoint on this machine (127.0.0.1, ::1 or localhost); "
                "remove it", _redact(url))
        return config

    @property
    def table_name(self) -> str:
        return self.prefix + TABLE_SUFFIX

    @property
    def endpoint_url(self) -> str | None:
        if self.endpoint is None:
            return None
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def loopback(self) -> bool:
        """Whether the endpoint is this machine, such as an emulator."""
        if self.endpoint is None:
            return False
        host = urlsplit(f"//{self.endpoint}").hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def to_url(self) -> str:
        options = []
        if self.region:
            options.append(f"region={quote(self.region, safe='')}")
        if not self.tls:
            options.append("tls=false")
        if self.profile:
            options.append(f"profile={quote(self.profile, safe='')}")
        if self.serialize:
            options.append("serialize=true")
        query = "?" + "&".join(options) if options else ""
        return f"dynamodb://{self.endpoint or ''}/{self.prefix}{query}"


def _redact(url: str) -> str:
    """Return `url` with any user name and password replaced by `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def _query_options(url: str, query: str) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(DynamoDBConfig.QUERY_OPTIONS))
    if unknown:
        raise InvalidInputError(
            f"DynamoDB store URL {_redact(url)!r} has unknown options {unknown}; "
            f"known options: {', '.join(DynamoDBConfig.QUERY_OPTIONS)}", unknown)
    return options


def _prefix(url: str, path: str) -> str:
    prefix = path.strip("/")
    valid = prefix and all(c.isascii() and (c.isalnum() or c in "_.-") for c in prefix)
    if not valid or len(prefix) + len(TABLE_SUFFIX) > 255:
        raise InvalidInputError(
            f"DynamoDB store URL {_redact(url)!r} needs a table prefix as its path: "
            f"1 to {255 - len(TABLE_SUFFIX)} letters, digits, '_', '.' or '-', "
            f"got {prefix!r}", prefix)
    return prefix


def _endpoint(url: str, parts: Any) -> str | None:
    if not parts.netloc:
        return None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:
        raise InvalidInputError(
            f"DynamoDB store URL {_redact(url)!r} has an invalid endpoint "
            f"{parts.netloc!r}; expected HOST or HOST:PORT", parts.netloc)
    return parts.netloc


def _flag(url: str, name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidInputError(
        f"DynamoDB store URL {_redact(url)!r} has {name}={text!r}; expected true or "
        "false", text)


# ----------------------------------------------------------------------
# The table: client, error translation, retries, creation
# ----------------------------------------------------------------------


class _ConditionFailed(ConflictError):
    """A condition of a write or transaction failed; repositories translate it further.

    `old_item` is the stored item when DynamoDB returned it, and `reasons` lists
    one cancellation code per item of a cancelled transaction.
    """

    def __init__(self, message: str, value: Any = None, old_item: Item | None = None,
                 reasons: Sequence[str] = ()) -> None:
        super().__init__(message, value)
        self.old_item = old_item
        self.reasons = list(reasons)


class _TransientConflict(ConflictError):
    """A write met a transaction in flight on the same item; retrying usually works."""


@dataclass(frozen=True)
class _Layout:
    """Parameters fixed when the table was created."""

    version: int
    shards: int
    step_bucket_width: int
    audit_bucket_size: int


# A table without a layout item has this layout, so creating a table writes
# nothing else. Never change it: a later layout writes its own item, which this
# version then rejects.
DEFAULT_LAYOUT = _Layout(LAYOUT_VERSION, SHARDS, STEP_BUCKET_WIDTH, AUDIT_BUCKET_SIZE)


def _import_driver() -> Any:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError as error:
        raise BackendUnavailableError(
            f"the DynamoDB backend needs boto3, which cannot be imported ({error}); "
            f"install it with: {INSTALL_HINT}", "boto3") from error
    return boto3


def _make_client(config: DynamoDBConfig) -> Any:
    """Build a boto3 DynamoDB client; credentials follow the usual AWS chain."""
    boto3 = _import_driver()
    import botocore.config
    import botocore.session

    session = botocore.session.Session(profile=config.profile)
    if config.loopback:
        # An emulator never needs instance or container credentials, and asking
        # for them would send requests to the metadata service off this machine.
        resolver = session.get_component("credential_provider")
        for method in ("container-role", "iam-role"):
            resolver.remove(method)
        if session.get_credentials() is None:
            session.set_credentials("mltrail-emulator", "mltrail-emulator")
    region = config.region or session.get_config_variable("region")
    if not region:
        raise InvalidInputError(
            f"no AWS region for DynamoDB store {config.to_url()!r}; add "
            "?region=NAME to the URL or set AWS_REGION", config.to_url())
    client_config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5, read_timeout=60, max_pool_connections=16)
    return boto3.Session(botocore_session=session).client(
        "dynamodb", region_name=region, endpoint_url=config.endpoint_url,
        config=client_config)


_CREDENTIAL_CODES = frozenset({
    "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
    "ExpiredTokenException", "MissingAuthenticationTokenException",
})


_THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException",
    "RequestLimitExceeded",
})


def _translate(error: Exception, operation: str, table: str) -> MltrailError:
    """Map a boto3 or botocore error to mltrail's errors; the only place that does."""
    import botocore.exceptions as aws

    if isinstance(error, UnicodeEncodeError):
        return InvalidInputError(
            f"DynamoDB {operation} on table {table!r} got text that is not valid "
            f"UTF-8, such as a lone surrogate: {error}", table)
    if isinstance(error, aws.ClientError):
        return _translate_client_error(error, operation, table)
    if isinstance(error, (aws.NoCredentialsError, aws.PartialCredentialsError)):
        return BackendUnavailableError(
            f"no usable AWS credentials for DynamoDB table {table!r} ({error}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared credentials file "
            "or profile=NAME in the store URL", table)
    if isinstance(error, aws.ParamValidationError):
        return InvalidInputError(
            f"DynamoDB {operation} on table {table!r} rejected a parameter: {error}",
            table)
    return BackendUnavailableError(
        f"cannot reach DynamoDB for {operation} on table {table!r}: {error}", table)


def _translate_client_error(error: Any, operation: str, table: str) -> MltrailError:
    details = error.response.get("Error", {})
    code = details.get("Code", "")
    message = details.get("Message", "")
    translated: MltrailError
    if code == "ConditionalCheckFailedException":
        translated = _ConditionFailed(
            f"a condition of {operation} on table {table!r} failed", table,
            old_item=error.response.get("Item"))
    elif code == "TransactionCanceledException":
        reasons = [r.get("Code") or "None"
                   for r in error.response.get("CancellationReasons", [])]
        if "ValidationError" in reasons:
            translated = InvalidInputError(
                f"DynamoDB rejected a transaction on table {table!r}: {message}", table)
        else:
            translated = _ConditionFailed(
                f"transaction on table {table!r} was cancelled ({', '.join(reasons)})",
                table, reasons=reasons)
    elif code == "TransactionConflictException":
        translated = _TransientConflict(
            f"{operation} on table {table!r} met a concurrent transaction", table)
    elif code in ("ValidationException", "SerializationException",
                  "ItemCollectionSizeLimitExceededException"):
        translated = InvalidInputError(
            f"DynamoDB rejected {operation} on table {table!r}: {message}", table)
    elif code == "ResourceNotFoundException":
        translated = BackendUnavailableError(
            f"DynamoDB table {table!r} does not exist ({operation}); it is created "
            "on first use, so it was deleted while in use", table)
    elif code in _THROTTLING_CODES:
        translated = BackendUnavailableError(
            f"DynamoDB kept throttling {operation} on table {table!r} after retries "
            f"({code}); retry later or raise the table's capacity", table)
    elif code in _CREDENTIAL_CODES:
        translated = BackendUnavailableError(
            f"DynamoDB rejected the AWS credentials for {operation} on table "
            f"{table!r} ({code}: {message}); check the credentials, the region "
            "and the permissions of the principal", table)
    else:
        translated = BackendUnavailableError(
            f"DynamoDB {operation} on table {table!r} failed with {code}: {message}",
            table)
    translated.aws_code = code  # type: ignore[attr-defined]
    return translated


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(2.0, 0.02 * 2**attempt)))


class _RequestLock:
    """An exclusive lock shared by every process on this machine that uses it.

    moto's server applies a transaction without isolation: it copies the
    table, writes item by item, and restores the copy when a condition fails,
    which undoes other clients' writes. With `serialize=true`, each request
    takes this lock, so the emulator applies requests one at a time, as
    DynamoDB applies each one atomically.
    """

    def __init__(self, endpoint: str) -> None:
        try:
            import fcntl  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                "serialize=true needs POSIX file locks, which this system lacks; "
                "remove it from the store URL", "serialize") from None
        digest = hashlib.sha256(endpoint.encode("utf-8")).hexdigest()[:16]
        name = f"mltrail-dynamodb-{digest}.lock"
        self.path = os.path.join(tempfile.gettempdir(), name)
        self._threads = threading.Lock()
        self._file: Any = None

    @contextmanager
    def held(self) -> Iterator[None]:
        import fcntl

        with self._threads:
            if self._file is None:
                self._file = open(self.path, "a+b")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        with self._threads:
            if self._file is not None:
                self._file.close()
                self._file = None


# Requests that write items. `_Table.call` counts what each one applied.
WRITE_OPERATIONS = frozenset({"put_item", "delete_item", "batch_write_item",
                              "transact_write_items"})


class _WriteCounters:
    """Items, bytes and write capacity applied by one table's successful writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items = 0
        self.bytes = 0
        self.capacity_units = 0.0

    def add(self, operation: str, request: dict[str, Any],
            response: dict[str, Any], table: str) -> None:
        items, size = _applied_writes(operation, request, response, table)
        units = _capacity_units(response.get("ConsumedCapacity"))
        with self._lock:
            self.items += items
            self.bytes += size
            self.capacity_units += units

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            # DynamoDB charges writes in whole units, so rounding loses nothing.
            return {"items_written": self.items, "bytes_written": self.bytes,
                    "write_capacity_units": round(self.capacity_units)}


def _applied_writes(operation: str, request: dict[str, Any],
                    response: dict[str, Any], table: str) -> tuple[int, int]:
    """Return (items, bytes) that a successful write request applied.

    Only puts add bytes, the size of the item put. A delete adds an item
    whether or not the key existed, as DynamoDB charges a write for both.
    """
    if operation == "put_item":
        return 1, item_bytes(request["Item"])
    if operation == "delete_item":
        return 1, 0
    if operation == "batch_write_item":
        sent = request["RequestItems"][table]
        unprocessed = response.get("UnprocessedItems", {}).get(table, [])
        return len(sent) - len(unprocessed), _put_bytes(sent) - _put_bytes(unprocessed)
    actions = [a for a in request["TransactItems"] if "ConditionCheck" not in a]
    size = sum(item_bytes(a["Put"]["Item"]) for a in actions if "Put" in a)
    return len(actions), size


def _put_bytes(writes: list[dict[str, Any]]) -> int:
    """Sum the item sizes of the PutRequests among BatchWriteItem writes."""
    return sum(item_bytes(w["PutRequest"]["Item"]) for w in writes if "PutRequest" in w)


def _capacity_units(consumed: Any) -> float:
    """Sum `CapacityUnits` of a ConsumedCapacity entry or a list of them."""
    if isinstance(consumed, dict):
        consumed = [consumed]
    return sum(float(entry.get("CapacityUnits", 0)) for entry in consumed or [])


def item_bytes(item: Item) -> int:
    """Return the size of a low-level item as DynamoDB counts it for capacity.

    The rules are those of "DynamoDB item sizes and formats" in the DynamoDB
    Developer Guide: attribute name bytes plus value bytes. The size of a
    number is approximate there too. The 100 bytes of storage overhead per
    item are not included.
    """
    return sum(len(name.encode("utf-8")) + _value_bytes(value)
               for name, value in item.items())


def _value_bytes(value: dict[str, Any]) -> int:
    (kind, data), = value.items()
    if kind == "S":
        return len(data.encode("utf-8"))
    if kind == "N":
        return _number_bytes(data)
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_bytes(element) for element in data)
    if kind == "M":
        return 3 + sum(1 + len(name.encode("utf-8")) + _value_bytes(element)
                       for name, element in data.items())
    if kind == "SS":
        return sum(len(text.encode("utf-8")) for text in data)
    if kind == "NS":
        return sum(_number_bytes(text) for text in data)
    return sum(len(blob) for blob in data)  # BS


def _number_bytes(text: str) -> int:
    """Return about one byte per two significant digits, plus one byte."""
    mantissa = text.lstrip("+-").lower().split("e")[0].replace(".", "")
    digits = len(mantissa.strip("0")) or 1
    return (digits + 1) // 2 + 1


class _Table:
    """One DynamoDB table: its client, translated errors, retries and creation.

    The table is created, and its layout read, on the first call that needs
    them, so a backend works whether or not `initialize` ran first.
    """

    def __init__(self, config: DynamoDBConfig, client: Any = None) -> None:
        self.config = config
        self.name = config.table_name
        self._client: Any = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._ready_lock = threading.RLock()
        self._layout: _Layout | None = None
        self._request_lock = _RequestLock(config.endpoint) \
            if config.serialize and config.endpoint else None
        self._pool: ThreadPoolExecutor | None = None
        self.counters = _WriteCounters()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self) -> Any:
        _import_driver()
        import botocore.exceptions as aws

        try:
            return _make_client(self.config)
        except aws.BotoCoreError as error:
            raise _translate(error, "connect", self.name) from error

    @property
    def layout(self) -> _Layout:
        if self._layout is None:
            self.ensure_ready()
        return self._layout  # type: ignore[return-value]

    # -- requests --------------------------------------------------------

    def request(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request without creating the table first; translate errors."""
        client = self.client
        import botocore.exceptions as aws

        try:
            if self._request_lock is None:
                return getattr(client, operation)(**kwargs)
            with self._request_lock.held():
                return getattr(client, operation)(**kwargs)
        except (aws.ClientError, aws.BotoCoreError, UnicodeEncodeError) as error:
            raise _translate(error, operation, self.name) from error

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request once the table is ready, retrying transient conflicts.

        Every write of the repositories goes through here, so the table's
        counters add what each successful write applied.
        """
        self.ensure_ready()
        writes = operation in WRITE_OPERATIONS
        if writes:
            kwargs.setdefault("ReturnConsumedCapacity", "TOTAL")
        for attempt in range(RETRY_ATTEMPTS):
            try:
                response = self.request(operation, **kwargs)
            except _TransientConflict:
                if attempt == RETRY_ATTEMPTS - 1:
                    raise
                logger.debug("%s on %s met a transaction, retrying (attempt %d)",
                             operation, self.name, attempt + 1)
                _backoff(attempt)
                continue
            if writes:
                self.counters.add(operation, kwargs, response, self.name)
            return response
        raise AssertionError("unreachable")

    def call_each(self, operation: str, requests: Sequence[dict[str, Any]]
                  ) -> list[MltrailError | None]:
        """Send independent requests through `call` and return each one's error or None.

        They go on up to PARALLEL_REQUESTS threads at once, unless a request
        lock makes the threads wait for each other anyway.
        """

        def send(request: dict[str, Any]) -> MltrailError | None:
            try:
                self.call(operation, **request)
            except MltrailError as error:
                return error
            return None

        if self._request_lock is not None or len(requests) < 2:
            return [send(request) for request in requests]
        with self._client_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS,
                                                thread_name_prefix="mltrail-dynamodb")
            pool = self._pool
        return list(pool.map(send, requests))

    def get(self, key: Item, attributes: Sequence[str]) -> Item | None:
        names, projection = _projection(attributes)
        response = self.call("get_item", TableName=self.name, Key=key,
                             ConsistentRead=True, ProjectionExpression=projection,
                             ExpressionAttributeNames=names)
        return response.get("Item")

    def put(self, item: Item, condition: str | None = None,
            values: Item | None = None, return_old: bool = False) -> None:
        request = _put_request(self.name, item, condition, values)
        if return_old:
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        self.call("put_item", **request)

    def delete(self, key: Item) -> None:
        self.call("delete_item", TableName=self.name, Key=key)

    def query(self, partition: str, attributes: Sequence[str], *,
              index: str | None = None, key_attribute: str = "pk",
              sort: tuple[str, ...] | None = None, descending: bool = False,
              limit: int | None = None) -> Iterator[Item]:
        """Stream the items of one partition of the table or of an index, page by page.

        `sort` is an optional condition on the sort key: (operator, value) such
        as ("<", "00ff"), or ("between", low, high). `limit` caps each page.
        """
        sort_attribute = INDEX_SORT if index else "sk"
        names, projection = _projection(attributes)
        names["#pk_"] = key_attribute
        values: Item = {":pk_": _s(partition)}
        condition = "#pk_ = :pk_"
        if sort is not None:
            names["#sk_"] = sort_attribute
            operator, *bounds = sort
            if operator == "between":
                condition += " AND #sk_ BETWEEN :low_ AND :high_"
                values.update({":low_": _s(bounds[0]), ":high_": _s(bounds[1])})
            else:
                condition += f" AND #sk_ {operator} :sk_"
                values[":sk_"] = _s(bounds[0])
        request: dict[str, Any] = {
            "TableName": self.name, "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
            "ProjectionExpression": projection, "ScanIndexForward": not descending,
        }
        if index is None:
            request["ConsistentRead"] = True
        else:
            request["IndexName"] = index
        if limit is not None:
            request["Limit"] = limit
        while True:
            response = self.call("query", **request)
            yield from response.get("Items", [])
            start = response.get("LastEvaluatedKey")
            if not start:
                return
            request["ExclusiveStartKey"] = start

    def batch_write(self, requests: Iterable[dict[str, Any]]) -> None:
        """Apply put and delete requests 25 at a time, retrying unprocessed ones."""
        for batch in chunked(requests, BATCH_WRITE_ITEMS):
            pending = batch
            for attempt in range(RETRY_ATTEMPTS):
                response = self.call("batch_write_item",
                                     RequestItems={self.name: pending})
                pending = response.get("UnprocessedItems", {}).get(self.name, [])
                if not pending:
                    break
                logger.debug("%d writes to %s unprocessed, retrying (attempt %d)",
                             len(pending), self.name, attempt + 1)
                _backoff(attempt)
            else:
                raise BackendUnavailableError(
                    f"DynamoDB left {len(pending)} writes to table {self.name!r} "
                    f"unprocessed after {RETRY_ATTEMPTS} attempts; the table is "
                    "throttled, so retry later or raise its capacity", self.name)

    def batch_get(self, keys: Iterable[Item], attributes: Sequence[str]
                  ) -> Iterator[Item]:
        """Read items by key 100 at a time with strong consistency, in any order."""
        names, projection = _projection(attributes)
        for batch in chunked(keys, BATCH_GET_KEYS):
            pending: Any = {self.name: {
                "Keys": batch, "ConsistentRead": True,
                "ProjectionExpression": projection, "ExpressionAttributeNames": names}}
            for attempt in range(RETRY_ATTEMPTS):
                response = self.call("batch_get_item", RequestItems=pending)
                yield from response.get("Responses", {}).get(self.name, [])
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                _backoff(attempt)
            else:
                raise BackendUnavailableError(
                    f"DynamoDB left reads from table {self.name!r} unprocessed after "
                    f"{RETRY_ATTEMPTS} attempts; the table is throttled", self.name)

    def transact(self, actions: list[dict[str, Any]]) -> None:
        """Apply up to 100 actions atomically, retrying cancellations by conflicts.

        Raise _ConditionFailed when a condition of any action failed.
        """
        for attempt in range(RETRY_ATTEMPTS):
            try:
                self.call("transact_write_items", TransactItems=actions)
                return
            except _ConditionFailed as error:
                if "ConditionalCheckFailed" in error.reasons or \
                        attempt == RETRY_ATTEMPTS - 1:
                    raise
                logger.debug("transaction on %s cancelled (%s), retrying (attempt %d)",
                             self.name, ", ".join(error.reasons), attempt + 1)
                _backoff(attempt)

    # -- creation --------------------------------------------------------

    def ensure_ready(self, new: bool = False) -> None:
        """Create the table if missing, wait until it is active, and read its layout.

        With `new`, the caller knows that no table of this name exists, which
        saves the first DescribeTable.
        """
        if self._layout is not None:
            return
        with self._ready_lock:
            if self._layout is not None:
                return
            description, created = self._describe_or_create(new)
            self._check_schema(description)
            self._wait_active(description)
            self._layout = DEFAULT_LAYOUT if created else self._read_layout()

    def _describe_or_create(self, new: bool) -> tuple[dict[str, Any], bool]:
        if not new:
            try:
                response = self.request("describe_table", TableName=self.name)
                return response["Table"], False
            except BackendUnavailableError as error:
                if getattr(error, "aws_code", None) != "ResourceNotFoundException":
                    raise
        logger.info("creating DynamoDB table %s", self.name)
        try:
            response = self.request("create_table", **_table_definition(self.name))
            return response["TableDescription"], True
        except BackendUnavailableError as error:
            if getattr(error, "aws_code", None) != "ResourceInUseException":
                raise
        return self.request("describe_table", TableName=self.name)["Table"], False

    def _check_schema(self, description: dict[str, Any]) -> None:
        keys = {(k["AttributeName"], k["KeyType"]) for k in description["KeySchema"]}
        indexes = {index["IndexName"]
                   for index in description.get("GlobalSecondaryIndexes", [])}
        expected = {LIST_INDEX, *FIELD_INDEXES}
        if keys != {("pk", "HASH"), ("sk", "RANGE")} or not expected <= indexes:
            raise InvalidInputError(
                f"DynamoDB table {self.name!r} exists but was not created by mltrail "
                f"(keys {sorted(keys)}, indexes {sorted(indexes)}); choose another "
                "table prefix in the store URL", self.name)

    def _wait_active(self, description: dict[str, Any]) -> None:
        deadline = time.monotonic() + TABLE_WAIT_SECONDS
        attempt = 0
        while not _active(description):
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"DynamoDB table {self.name!r} did not become active within "
                    f"{TABLE_WAIT_SECONDS:.0f} s", self.name)
            time.sleep(min(5.0, 0.1 * 2**attempt))
            attempt += 1
            description = self.request("describe_table", TableName=self.name)["Table"]

    def _read_layout(self) -> _Layout:
        item = self.request("get_item", TableName=self.name, Key=_key(LAYOUT_PK),
                            ConsistentRead=True).get("Item")
        return DEFAULT_LAYOUT if item is None else _layout_of(item, self.name)

    def drop(self) -> None:
        """Delete the table and everything in it; a missing table is not an error."""
        try:
            self.request("delete_table", TableName=self.name)
        except BackendUnavailableError as error:
            if getattr(error, "aws_code", None) != "ResourceNotFoundException":
                raise
        self._layout = None

    def close(self) -> None:
        with self._client_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        if self._request_lock is not None:
            self._request_lock.close()
        if not self._owns_client:
            return
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()


def _layout_of(item: Item, table: str) -> _Layout:
    layout = _Layout(*(int(item[name]["N"]) for name in (
        "version", "shards", "step_bucket_width", "audit_bucket_size")))
    if layout.version != LAYOUT_VERSION:
        raise BackendUnavailableError(
            f"DynamoDB table {table!r} has mltrail layout version {layout.version}, "
            f"and this mltrail reads version {LAYOUT_VERSION}; install the mltrail "
            "version that created it", table)
    return layout


def _active(description: dict[str, Any]) -> bool:
    indexes = description.get("GlobalSecondaryIndexes", [])
    return description.get("TableStatus") == "ACTIVE" and \
        all(index.get("IndexStatus") == "ACTIVE" for index in indexes)


def _table_definition(name: str) -> dict[str, Any]:
    key_attributes = ["pk", "sk", LIST_KEY, *FIELD_KEYS, INDEX_SORT]
    indexes = [(LIST_INDEX, LIST_KEY), *zip(FIELD_INDEXES, FIELD_KEYS)]
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"}
                                 for a in key_attributes],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                      {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [{
            "IndexName": index,
            "KeySchema": [{"AttributeName": attribute, "KeyType": "HASH"},
                          {"AttributeName": INDEX_SORT, "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["doc"]},
        } for index, attribute in indexes],
    }


# ----------------------------------------------------------------------
# Items and their encodings
# ----------------------------------------------------------------------


def _s(text: str) -> dict[str, str]:
    return {"S": text}


def _n(number: int) -> dict[str, str]:
    return {"N": str(number)}


def _key(pk: str, sk: str = SINGLE) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}


def _projection(attributes: Sequence[str]) -> tuple[dict[str, str], str]:
    """Return placeholder names and a projection; placeholders dodge reserved words."""
    names = {f"#a{i}": name for i, name in enumerate(attributes)}
    return names, ", ".join(names)


def _put_request(table: str, item: Item, condition: str | None = None,
                 values: Item | None = None) -> dict[str, Any]:
    """Return PutItem parameters; a condition names attributes as `#name`."""
    request: dict[str, Any] = {"TableName": table, "Item": item}
    if condition:
        request["ConditionExpression"] = condition
        request["ExpressionAttributeNames"] = {
            f"#{name}": name for name in _placeholders(condition)}
        if values:
            request["ExpressionAttributeValues"] = values
    return request


def _placeholders(condition: str) -> set[str]:
    names = set()
    for token in condition.replace("(", " ").replace(")", " ").split():
        if token.startswith("#"):
            names.add(token[1:])
    return names


def _put_write(item: Item) -> dict[str, Any]:
    return {"PutRequest": {"Item": item}}


def _delete_write(key: Item) -> dict[str, Any]:
    return {"DeleteRequest": {"Key": key}}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _doc(item: Item) -> dict[str, Any]:
    return json.loads(item["doc"]["S"])


def _record_json(record: dict[str, Any], description: str) -> str:
    """Serialise a record, rejecting one that cannot fit in a DynamoDB item."""
    text = _dumps(record)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # DynamoDB stores UTF-8 only; JSON's \u escapes keep lone surrogates.
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        size = len(text)
    if size > MAX_RECORD_BYTES:
        raise InvalidInputError(
            f"{description} takes {size} bytes as JSON; the DynamoDB backend stores "
            f"at most {MAX_RECORD_BYTES} bytes per record (items are limited to "
            f"{MAX_ITEM_BYTES} bytes), so store large values elsewhere and keep "
            "their URIs", size)
    return text


def _storable(text: Any, max_bytes: int = MAX_SORT_KEY_BYTES) -> bool:
    """Return whether `text` fits in a key: 1 to `max_bytes` bytes of UTF-8.

    Nothing else was ever stored, so a read of it finds nothing.
    """
    if not isinstance(text, str) or not text or len(text) > max_bytes:
        return False
    try:
        return len(text.encode("utf-8")) <= max_bytes
    except UnicodeEncodeError:
        return False


def _check_sort_key(text: str, description: str) -> str:
    size = len(text.encode("utf-8", "surrogatepass"))
    if not text or size > MAX_SORT_KEY_BYTES:
        raise InvalidInputError(
            f"{description} {text[:40]!r} takes {size} bytes; DynamoDB sort keys "
            f"take 1 to {MAX_SORT_KEY_BYTES} bytes of UTF-8", text)
    return text


def _shard(identifier: str, shards: int) -> int:
    return zlib.crc32(identifier.encode("utf-8")) % shards


def _field_partitions(kind: str, field: str, value: str, layout: _Layout) -> list[str]:
    """Return every index partition key that can hold entities with this field value."""
    base = f"{kind}|{field}|{value}"
    if field not in SHARDED_FIELDS:
        return [base]
    return [f"{base}|{shard}" for shard in range(layout.shards)]


def _list_partitions(name: str, layout: _Layout) -> list[str]:
    return [f"{name}|{shard}" for shard in range(layout.shards)]


def _entity_pk(kind: str, entity_id: str) -> str:
    return f"entity|{kind}|{entity_id}"


def _unique_pk(kind: str, values: Sequence[Any]) -> str:
    # Hashed because names and versions may hold any characters and would
    # overflow the 2,048-byte partition key as JSON.
    text = json.dumps([kind, *values], ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"unique|{kind}|{digest}"


def _entity_item(kind: str, record: dict[str, Any], layout: _Layout) -> Item:
    """Build the stored item of an entity record, with its index attributes."""
    entity_id = record["id"]
    shard = _shard(entity_id, layout.shards)
    item: Item = {
        **_key(_entity_pk(kind, entity_id)),
        "doc": _s(_record_json(record, f"{kind} {entity_id!r}")),
        "revision": _n(record["revision"]),
        LIST_KEY: _s(f"{kind}|{shard}"),
        INDEX_SORT: _s(f"{record['created_at']}#{entity_id}"),
    }
    if UNIQUE_KEYS[kind]:
        values = [record[name] for name in UNIQUE_KEYS[kind]]
        item["unique_pk"] = _s(_unique_pk(kind, values))
    for field, (_, attribute) in FIELD_SLOTS[kind].items():
        value = record.get(field)
        if isinstance(value, str):
            base = f"{kind}|{field}|{value}"
            item[attribute] = _s(f"{base}|{shard}" if field in SHARDED_FIELDS else base)
    return item


def _claim_item(kind: str, record: dict[str, Any]) -> Item:
    values = [record[name] for name in UNIQUE_KEYS[kind]]
    return {**_key(_unique_pk(kind, values)), "entity_id": _s(record["id"]),
            "unique_key": _s(json.dumps(values, ensure_ascii=False))}


def _audit_item(record: dict[str, Any], layout: _Layout) -> Item:
    seq = record["seq"]
    _, attribute = AUDIT_SLOT
    return {
        **_key(f"audit|{seq // layout.audit_bucket_size}", f"{seq:020d}"),
        "doc": _s(_record_json(record, f"audit event {seq}")),
        attribute: _s(_audit_partition(record["entity_id"])),
        INDEX_SORT: _s(f"{seq:020d}"),
    }


def _audit_partition(entity_id: str) -> str:
    # Events name whatever a user asked about, such as a denied lookup of a
    # long path, so ids that do not fit in an index key are hashed.
    if _storable(entity_id):
        return f"audit|entity_id|{entity_id}"
    digest = hashlib.sha256(str(entity_id).encode("utf-8", "surrogatepass"))
    return f"audit|entity_hash|{digest.hexdigest()}"


# -- metric points -------------------------------------------------------


def _order_prefix(step: int, micros: int) -> str:
    """Return (step, time) as fixed-width hex, whose string order is numeric order."""
    return f"{step:016x}{micros + TIME_OFFSET:016x}"


def _order_key(row: Row) -> str:
    return _order_prefix(row[0], row[1]) + row[2]


# Sorts rows by (step, time, seq) without comparing values or extras.
_ORDER = itemgetter(0, 1, 2)
_STEP = itemgetter(0)


def _row_bytes(row: Row) -> int:
    seq = row[2]
    size = 28 + (len(seq) if seq.isascii()
                 else len(seq.encode("utf-8", "surrogatepass")))
    return size + (4 if row[4] is None else len(_dumps(row[4]).encode("utf-8")))


def _pack_rows(rows: Sequence[Row]) -> bytes:
    """Encode points compactly: IEEE 754 bits keep NaN payloads and -0.0 exact."""
    count = len(rows)
    numbers = struct.pack(
        f">I{count}q{count}q{count}d", count, *(r[0] for r in rows),
        *(r[1] for r in rows), *(r[3] for r in rows))
    text = _dumps([[r[2] for r in rows], [r[4] for r in rows]]).encode("utf-8")
    return zlib.compress(numbers + text, 1)


def _unpack_rows(data: bytes) -> list[Row]:
    raw = zlib.decompress(data)
    (count,) = struct.unpack_from(">I", raw)
    numbers = struct.unpack_from(f">{count}q{count}q{count}d", raw, 4)
    seqs, extras = json.loads(raw[4 + 24 * count:])
    steps, micros, values = (numbers[:count], numbers[count:2 * count],
                             numbers[2 * count:])
    return list(zip(steps, micros, seqs, values, extras))


def _split_chunks(key: str, rows: Sequence[Row]) -> Iterator[list[Row]]:
    """Cut sorted rows into runs that each fit in one item."""
    chunk: list[Row] = []
    size = 0
    for row in rows:
        row_size = _row_bytes(row)
        if row_size > MAX_CHUNK_BYTES:
            raise InvalidInputError(
                f"metric {key!r} point {row[2]!r} takes {row_size} bytes; the DynamoDB "
                f"backend stores points of at most {MAX_CHUNK_BYTES} bytes, so "
                "shorten its drift indicators or labels", row[2])
        full = len(chunk) >= MAX_CHUNK_POINTS or size + row_size > MAX_CHUNK_BYTES
        if chunk and full:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


def _points_pk(run_id: str, key: str, bucket: int) -> str:
    return f"points|{run_id}|{key}|{bucket:016x}"


def _chunk_item(run_id: str, key: str, bucket: int, rows: Sequence[Row],
                written: int) -> Item:
    # The sort key is the chunk's smallest step, which history relies on, and a
    # digest of its seqs: a point's identity is (run, key, seq), so a retried
    # batch overwrites its chunks even when its points got new timestamps.
    digest = hashlib.sha256(_dumps([r[2] for r in rows]).encode("utf-8")).hexdigest()
    return {**_key(_points_pk(run_id, key, bucket), f"{rows[0][0]:016x}{digest[:24]}"),
            "points": {"B": _pack_rows(rows)}, "written": _n(written)}


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _point(run_id: str, key: str, row: Row) -> MetricPoint:
    step, micros, seq, value, extra = row
    # One addition instead of clock.from_micros's two calls: long histories
    # build a datetime per point.
    stamp = _EPOCH + timedelta(0, 0, micros)
    point = MetricPoint(run_id=run_id, key=key, value=value, step=step,
                        timestamp=stamp, seq=seq)
    return point.with_extras(extra) if extra else point


# ----------------------------------------------------------------------
# Repositories
# ----------------------------------------------------------------------


class DynamoDBEntityRepository(EntityRepository):
    """One kind of entity: an item per entity plus an item claiming its unique key."""

    def __init__(self, table: _Table, entity_type: type[Entity]) -> None:
        self._table = table
        self.entity_type = entity_type

    def _key(self, entity_id: str) -> Item:
        return _key(_entity_pk(self.kind, entity_id))

    def _entity(self, item: Item) -> Entity:
        return self.entity_type.from_record(_doc(item))

    def insert(self, entity: Entity) -> None:
        record = entity.to_record()
        item = _entity_item(self.kind, record, self._table.layout)
        absent = "attribute_not_exists(#pk)"
        if not self.unique_key:
            try:
                self._table.put(item, absent)
            except _ConditionFailed as error:
                raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                         entity.id) from error
            return
        claim = _claim_item(self.kind, record)
        name = self._table.name
        try:
            self._table.transact([{"Put": _put_request(name, item, absent)},
                                  {"Put": _put_request(name, claim, absent)}])
        except _ConditionFailed as error:
            if error.reasons[:1] == ["ConditionalCheckFailed"]:
                raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                         entity.id) from error
            unique = tuple(record[field] for field in self.unique_key)
            raise AlreadyExistsError(
                f"{self.kind} with {dict(zip(self.unique_key, unique))} already exists",
                unique) from error

    def get(self, entity_id: str) -> Entity:
        item = None
        if _storable(entity_id):
            item = self._table.get(self._key(entity_id), ["doc"])
        if item is None:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self._entity(item)

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, Entity]:
        keys = [self._key(entity_id) for entity_id in dict.fromkeys(entity_ids)
                if _storable(entity_id)]
        found = {}
        for item in self._table.batch_get(keys, ["doc"]):
            entity = self._entity(item)
            found[entity.id] = entity
        return found

    def find_unique(self, key: tuple) -> Entity | None:
        claim = self._table.get(_key(_unique_pk(self.kind, list(key))), ["entity_id"])
        if claim is None:
            return None
        try:
            entity = self.get(claim["entity_id"]["S"])
        except NotFoundError:
            return None
        stored = tuple(getattr(entity, name) for name in self.unique_key)
        return entity if stored == tuple(key) else None

    def update(self, entity: Entity) -> None:
        item = _entity_item(self.kind, entity.to_record(), self._table.layout)
        condition = "attribute_exists(#pk) AND #revision = :previous"
        values: Item = {":previous": _n(entity.revision - 1)}
        if self.unique_key:
            condition += " AND #unique_pk = :unique"
            values[":unique"] = item["unique_pk"]
        try:
            self._table.put(item, condition, values, return_old=True)
        except _ConditionFailed as error:
            raise self._update_error(entity, item, error.old_item) from error

    def _update_error(self, entity: Entity, item: Item,
                      stored: Item | None) -> MltrailError:
        if stored is None:
            return NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
        if self.unique_key and stored.get("unique_pk") != item["unique_pk"]:
            return InvalidInputError(
                f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot "
                "change", entity.id)
        return ConflictError(
            f"{self.kind} {entity.id!r} was changed concurrently (stored revision "
            f"{stored['revision']['N']}, expected {entity.revision - 1})", entity.id)

    def delete(self, entity_id: str) -> None:
        if not _storable(entity_id):
            return
        key = self._key(entity_id)
        if not self.unique_key:
            self._table.delete(key)
            return
        stored = self._table.get(key, ["unique_pk"])
        if stored is None:
            return
        name = self._table.name
        claim = {
            "TableName": name, "Key": _key(stored["unique_pk"]["S"]),
            "ConditionExpression": "attribute_not_exists(#pk) OR #entity_id = :id",
            "ExpressionAttributeNames": {"#pk": "pk", "#entity_id": "entity_id"},
            "ExpressionAttributeValues": {":id": _s(entity_id)},
        }
        try:
            self._table.transact([{"Delete": {"TableName": name, "Key": key}},
                                  {"Delete": claim}])
        except _ConditionFailed:
            # The claim names another entity (only raw writes make that happen),
            # so it is left alone.
            self._table.delete(key)

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        partitions = self._partitions(request)
        if not partitions:
            return
        descending, after = self._native_order(request)
        streams = [self._stream(index, attribute, value, descending, after)
                   for index, attribute, value in partitions]
        merged = streams[0] if len(streams) == 1 else \
            heapq.merge(*streams, key=lambda pair: pair[0])
        for _, record in merged:
            if request.namespace is not None and \
                    record.get("namespace") != request.namespace:
                continue
            yield self.entity_type.from_record(record)

    def _partitions(self, request: ScanRequest) -> list[tuple[str, str, str]]:
        """Return (index, attribute, partition) triples that cover every match.

        Equality and `in` on indexed string fields, and the namespace, pick an
        index; the triples of the candidate with the fewest partitions win.
        """
        layout = self._table.layout
        slots = FIELD_SLOTS[self.kind]
        if request.namespace is not None and "namespace" not in slots:
            return []
        candidates = []
        if request.namespace is not None:
            candidates.append(("namespace", [request.namespace]))
        for part in conjuncts(request.filter):
            field = getattr(part, "field", ())
            if len(field) != 1 or field[0] not in slots:
                continue
            if isinstance(part, Compare) and part.op == "=" and \
                    isinstance(part.value, str):
                candidates.append((field[0], [part.value]))
            elif isinstance(part, In) and not part.negated and \
                    all(isinstance(v, str) for v in part.values):
                candidates.append((field[0], list(dict.fromkeys(part.values))))
        options = [[(LIST_INDEX, LIST_KEY, p)
                    for p in _list_partitions(self.kind, layout)]]
        for field, values in candidates:
            index, attribute = slots[field]
            options.append([
                (index, attribute, partition) for value in values
                for partition in _field_partitions(self.kind, field, value, layout)])
        return min(reversed(options), key=len)

    @staticmethod
    def _native_order(request: ScanRequest) -> tuple[bool, tuple[str, str] | None]:
        """Return (descending, (created_at, id) to start after) for a native order."""
        order = request.order
        if not order or any(k.field != ("created_at",) for k in order):
            return False, None
        if request.after is None:
            return order[0].descending, None
        value, last_id = request.after[0], request.after[-1]
        stamp = isoformat(value) if hasattr(value, "astimezone") else str(value)
        return order[0].descending, (stamp, last_id)

    def _stream(self, index: str, attribute: str, partition: str, descending: bool,
                after: tuple[str, str] | None) -> Iterator[tuple[tuple, dict]]:
        """Yield (sort key, record) of one index partition by created_at, then id.

        The index sorts by `created_at#id`, so a descending read has ids
        descending among equal times. Those groups are reversed, because
        ScanRequest keeps the id ascending.
        """
        sort = None
        if after is not None:
            stamp, last_id = after
            # "$" follows "#", so the descending bound keeps every item of `stamp`.
            sort = ("<", f"{stamp}$") if descending else (">", f"{stamp}#{last_id}")
        items = self._table.query(partition, ["doc"], index=index,
                                  key_attribute=attribute, sort=sort,
                                  descending=descending)
        records = (_doc(item) for item in items)
        if not descending:
            for record in records:
                yield (record["created_at"], record["id"]), record
            return
        for stamp, group in _groups_by_time(records):
            inverted = stamp.translate(_INVERT)
            for record in sorted(group, key=lambda r: r["id"]):
                if after is not None and stamp == after[0] and record["id"] <= after[1]:
                    continue
                yield (inverted, record["id"]), record


# Maps each ASCII character to one that sorts in reverse, for fixed-width times.
_INVERT = {code: 255 - code for code in range(128)}


def _final_rows(entries: list[tuple], overlapped: bool) -> Iterator[Row]:
    """Yield rows of complete steps, keeping the latest write of each seq.

    An entry is a row followed by its chunk's write time in nanoseconds.
    """
    if overlapped:
        newest: dict[str, tuple] = {}
        for entry in entries:
            known = newest.get(entry[2])
            if known is None or entry[5] >= known[5]:
                newest[entry[2]] = entry
        if len(newest) < len(entries):
            entries = sorted(newest.values(), key=_ORDER)
    for entry in entries:
        yield entry[:5]


def _groups_by_time(records: Iterator[dict]) -> Iterator[tuple[str, list[dict]]]:
    group: list[dict] = []
    for record in records:
        if group and record["created_at"] != group[0]["created_at"]:
            yield group[0]["created_at"], group
            group = []
        group.append(record)
    if group:
        yield group[0]["created_at"], group


class DynamoDBMetricRepository(MetricRepository):
    """Metric histories in packed chunks, and the latest point of each metric."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        width = self._table.layout.step_bucket_width
        groups: dict[tuple[str, int], dict[str, Row]] = {}
        last_stamp = None
        micros = 0
        for point in points:
            # Points of one call often share a timestamp object; convert it once.
            stamp = point.timestamp
            if stamp is not last_stamp:
                micros = to_micros(stamp)
                last_stamp = stamp
            row = (point.step, micros, point.seq, point.value, point.extras())
            groups.setdefault((point.key, point.step // width), {})[point.seq] = row
        self._write(run_id, groups)

    def append_series(self, run_id: str, series: Sequence[MetricSeries]) -> None:
        """Store series like `append`, building row tuples from the columns directly."""
        width = self._table.layout.step_bucket_width
        groups: dict[tuple[str, int], dict[str, Row]] = {}
        for one in series:
            if not len(one):
                continue
            rows = zip(one.steps, one.stamps, one.seqs, one.values, repeat(None))
            low, high = min(one.steps) // width, max(one.steps) // width
            if low == high:
                groups.setdefault((one.key, low), {}).update(zip(one.seqs, rows))
                continue
            for row in rows:
                groups.setdefault((one.key, row[0] // width), {})[row[2]] = row
        if groups:
            self._write(run_id, groups)

    def _write(self, run_id: str, groups: dict[tuple[str, int], dict[str, Row]]
               ) -> None:
        """Write rows grouped by (key, bucket) and seq, then each key's latest point.

        Chunks, bucket-list items and the run's list item go by BatchWriteItem.
        Each of them is a put of a fixed key, so a retry overwrites it. History goes
        first, so a latest item never names a point that history lacks. A
        write that stops part-way can leave some of the batch's points in
        history and the latest points as they were, until the batch is sent
        again.
        """
        layout = self._table.layout
        writes = []
        latest: dict[str, Row] = {}
        written = time.time_ns()
        for (key, bucket), rows in groups.items():
            _check_sort_key(key, "metric key")
            ordered = sorted(rows.values(), key=_ORDER)
            for chunk in _split_chunks(key, ordered):
                item = _chunk_item(run_id, key, bucket, chunk, written)
                writes.append(_put_write(item))
            writes.append(_put_write(_key(f"buckets|{run_id}|{key}", f"{bucket:016x}")))
            last = ordered[-1]
            best = latest.get(key)
            if best is None or _ORDER(last) > _ORDER(best):
                latest[key] = last

        writes.append(_put_write({
            **_key(f"metrics|{run_id}"),
            LIST_KEY: _s(f"metrics|{_shard(run_id, layout.shards)}"),
            INDEX_SORT: _s(run_id)}))
        self._table.batch_write(writes)
        self._write_latest(run_id, latest)

    def _write_latest(self, run_id: str, latest: dict[str, Row]) -> None:
        """Store each metric's newest point unless a later point is stored already.

        Each metric gets one conditional PutItem, sent in parallel unless
        requests are serialized. The condition makes every put atomic against
        other writers on its own, so a transaction over the metrics would only
        add cost. DynamoDB charges two write units per transactional item, and
        moto 5.2.5 deep-copies the whole table for every item of a
        TransactWriteItems request.
        """
        condition = "attribute_not_exists(#pk) OR #order_key <= :order"
        puts = []
        for key, row in latest.items():
            order = _order_key(row)
            item = {**_key(f"latest|{run_id}", key), "order_key": _s(order),
                    "points": {"B": _pack_rows([row])}}
            puts.append(_put_request(self._table.name, item, condition,
                                     {":order": _s(order)}))
        # A failed condition means a later point of that metric is stored.
        errors = [error for error in self._table.call_each("put_item", puts)
                  if error is not None and not isinstance(error, _ConditionFailed)]
        if errors:
            raise errors[0]

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        if not (_storable(run_id) and _storable(key)):
            return
        low = None if start is None else to_micros(start)
        high = None if end is None else to_micros(end)
        for bucket in self._buckets(run_id, key, min_step, max_step):
            for row in self._bucket_rows(run_id, key, bucket, max_step):
                step, micros = row[0], row[1]
                if min_step is not None and step < min_step or \
                        max_step is not None and step > max_step or \
                        low is not None and micros < low or \
                        high is not None and micros > high:
                    continue
                yield _point(run_id, key, row)

    def _buckets(self, run_id: str, key: str, min_step: int | None = None,
                 max_step: int | None = None) -> Iterator[int]:
        width = self._table.layout.step_bucket_width
        low = 0 if min_step is None else max(0, min_step) // width
        high = (2**63 - 1) // width if max_step is None else max(0, max_step) // width
        if low > high:
            return
        items = self._table.query(f"buckets|{run_id}|{key}", ["sk"],
                                  sort=("between", f"{low:016x}", f"{high:016x}"))
        for item in items:
            yield int(item["sk"]["S"], 16)

    def _bucket_rows(self, run_id: str, key: str, bucket: int,
                     max_step: int | None) -> Iterator[Row]:
        """Yield one bucket's points in (step, time, seq) order, each seq once.

        Chunks arrive sorted by their smallest step, so every buffered point of
        a lower step than the next chunk's is final. Memory keeps only the
        chunks whose step ranges overlap. Only overlapping chunks can repeat a
        seq (a batch sent again in other chunks), and then the latest write
        wins.
        """
        sort = None
        if max_step is not None and max_step < 2**63 - 1:
            sort = ("<", f"{max_step + 1:016x}")
        chunks = self._table.query(_points_pk(run_id, key, bucket),
                                   ["sk", "points", "written"], sort=sort, limit=8)
        pending: list[tuple] = []
        overlapped = False
        for item in chunks:
            bound = int(item["sk"]["S"][:16], 16)
            cut = bisect.bisect_left(pending, bound, key=_STEP)
            yield from _final_rows(pending[:cut], overlapped)
            pending = pending[cut:]
            overlapped = overlapped and bool(pending)
            written = int(item.get("written", {"N": "0"})["N"])
            rows = [(*row, written) for row in _unpack_rows(item["points"]["B"])]
            if pending and rows[0][0] <= pending[-1][0]:
                # Sorting two sorted runs takes linear time.
                pending = sorted(pending + rows, key=_ORDER)
                overlapped = True
            else:
                pending += rows
        yield from _final_rows(pending, overlapped)

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        result: dict[str, dict[str, MetricPoint]] = {}
        run_ids = [r for r in dict.fromkeys(run_ids) if _storable(r)]
        if keys is not None:
            wanted = [k for k in dict.fromkeys(keys) if _storable(k)]
            table_keys = (_key(f"latest|{run_id}", key)
                          for run_id in run_ids for key in wanted)
            items: Iterable[Item] = self._table.batch_get(table_keys,
                                                          ["pk", "sk", "points"])
        else:
            items = (item for run_id in run_ids
                     for item in self._table.query(f"latest|{run_id}",
                                                   ["pk", "sk", "points"]))
        for item in items:
            run_id = item["pk"]["S"][len("latest|"):]
            key = item["sk"]["S"]
            (row,) = _unpack_rows(item["points"]["B"])
            result.setdefault(run_id, {})[key] = _point(run_id, key, row)
        return result

    def keys(self, run_id: str) -> list[str]:
        if not _storable(run_id):
            return []
        items = self._table.query(f"latest|{run_id}", ["sk"])
        return sorted(item["sk"]["S"] for item in items)

    def delete_run(self, run_id: str) -> None:
        if _storable(run_id):
            self._table.batch_write(self._run_deletes(run_id))

    def _run_deletes(self, run_id: str) -> Iterator[dict[str, Any]]:
        # Latest items go last, so a delete that stops half-way can be repeated:
        # the metric keys it needs are still listed.
        keys = self.keys(run_id)
        for key in keys:
            for bucket in list(self._buckets(run_id, key)):
                partition = _points_pk(run_id, key, bucket)
                for item in list(self._table.query(partition, ["pk", "sk"])):
                    yield _delete_write({"pk": item["pk"], "sk": item["sk"]})
                yield _delete_write(_key(f"buckets|{run_id}|{key}", f"{bucket:016x}"))
        for key in keys:
            yield _delete_write(_key(f"latest|{run_id}", key))
        yield _delete_write(_key(f"metrics|{run_id}"))

    def runs_with_metrics(self) -> Iterator[str]:
        for sort_key, _ in _merged_list(self._table, "metrics"):
            yield sort_key


def _merged_list(table: _Table, name: str) -> Iterator[tuple[str, Item]]:
    """Yield (index sort key, item) of a sharded list, merged into one sorted stream."""

    def stream(partition: str) -> Iterator[tuple[str, Item]]:
        items = table.query(partition, [INDEX_SORT, "doc"], index=LIST_INDEX,
                            key_attribute=LIST_KEY)
        for item in items:
            yield item[INDEX_SORT]["S"], item

    streams = [stream(p) for p in _list_partitions(name, table.layout)]
    yield from heapq.merge(*streams, key=lambda pair: pair[0])


class DynamoDBLineageRepository(LineageRepository):
    """Nodes as single items; each edge stored under both of its ends."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def put_node(self, node: LineageNode) -> None:
        record = node.to_record()
        shards = self._table.layout.shards
        doc = _record_json(record, f"lineage node {node.id!r}")
        item = {**_key(f"node|{node.id}"), "doc": _s(doc),
                LIST_KEY: _s(f"lineage_node|{_shard(node.id, shards)}"),
                INDEX_SORT: _s(node.id)}
        try:
            self._table.put(item, "attribute_not_exists(#pk)")
            return
        except _ConditionFailed:
            existing = self.get_node(node.id)
        if existing.kind != node.kind:
            raise AlreadyExistsError(
                f"lineage node {node.id!r} exists as a {existing.kind.value}, not a "
                f"{node.kind.value}", node.id)

    def get_node(self, node_id: str) -> LineageNode:
        item = None
        if _storable(node_id):
            item = self._table.get(_key(f"node|{node_id}"), ["doc"])
        if item is None:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return LineageNode.from_record(_doc(item))

    def add_edge(self, edge: LineageEdge) -> None:
        doc = _s(_record_json(edge.to_record(), f"lineage edge {edge.key!r}"))
        shard = _shard(edge.key, self._table.layout.shards)
        upstream_copy = {**_key(f"lineage-up|{edge.downstream}", edge.key), "doc": doc}
        downstream_copy = {**_key(f"lineage-down|{edge.upstream}", edge.key),
                           "doc": doc, LIST_KEY: _s(f"lineage_edge|{shard}"),
                           INDEX_SORT: _s(edge.key)}
        absent = "attribute_not_exists(#pk)"
        name = self._table.name
        try:
            self._table.transact([{"Put": _put_request(name, upstream_copy, absent)},
                                  {"Put": _put_request(name, downstream_copy, absent)}])
        except _ConditionFailed:
            return  # the edge exists and is kept as first stored

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        if not _storable(node_id):
            return []
        side = "lineage-up" if direction == "upstream" else "lineage-down"
        items = self._table.query(f"{side}|{node_id}", ["doc"])
        found = [LineageEdge.from_record(_doc(item)) for item in items]
        return sorted(found, key=lambda e: (e.source, e.type.value, e.target))

    def scan_nodes(self) -> Iterator[LineageNode]:
        for _, item in _merged_list(self._table, "lineage_node"):
            yield LineageNode.from_record(_doc(item))

    def scan_edges(self) -> Iterator[LineageEdge]:
        for _, item in _merged_list(self._table, "lineage_edge"):
            yield LineageEdge.from_record(_doc(item))

    def delete_node(self, node_id: str) -> None:
        if not _storable(node_id):
            return
        deletes: dict[tuple[str, str], Item] = {}
        for side in ("lineage-up", "lineage-down"):
            for item in self._table.query(f"{side}|{node_id}", ["doc"]):
                edge = LineageEdge.from_record(_doc(item))
                for pk in (f"lineage-up|{edge.downstream}",
                           f"lineage-down|{edge.upstream}"):
                    deletes[(pk, edge.key)] = _key(pk, edge.key)
        deletes[(f"node|{node_id}", SINGLE)] = _key(f"node|{node_id}")
        self._table.batch_write(_delete_write(key) for key in deletes.values())


class DynamoDBAuditRepository(AuditRepository):
    """Audit events by seq in partitions of `audit_bucket_size` consecutive seqs.

    Each append is one conditional put, so no transaction is needed: seqs are
    contiguous because the core always appends at `last().seq + 1`, and the
    tail is the newest event of the first bucket that is not full. A hint item
    names the newest bucket, so a process that finds the first bucket full
    jumps there instead of reading every bucket.
    """

    def __init__(self, table: _Table) -> None:
        self._table = table
        self._bucket: int | None = None
        self._tail: int | None = None

    def append(self, event: AuditEvent) -> None:
        layout = self._table.layout
        item = _audit_item(event.to_record(), layout)
        try:
            self._table.put(item, "attribute_not_exists(#pk)")
        except _ConditionFailed as error:
            raise AlreadyExistsError(f"audit event seq {event.seq} is taken",
                                     event.seq) from error
        self._tail = event.seq
        bucket, offset = divmod(event.seq, layout.audit_bucket_size)
        if offset == 0:
            # Written after the event, so the hint never names an empty bucket.
            hint = {**_key(AUDIT_HINT_PK), "bucket": _n(bucket)}
            try:
                self._table.put(hint, "attribute_not_exists(#pk) OR #bucket < :bucket",
                                {":bucket": _n(bucket)})
            except _ConditionFailed:
                pass

    def last(self) -> AuditEvent | None:
        size = self._table.layout.audit_bucket_size
        if self._tail is not None:
            # One read checks the tail seen last and the seq after it: when only
            # the tail exists, no other writer has appended since.
            keys = [self._event_key(self._tail), self._event_key(self._tail + 1)]
            found = {int(i["sk"]["S"]): i
                     for i in self._table.batch_get(keys, ["sk", "doc"])}
            if set(found) == {self._tail}:
                return AuditEvent.from_record(_doc(found[self._tail]))
        hinted = self._bucket is not None
        bucket = self._bucket or 0
        newest = None
        while True:
            items = self._table.query(f"audit|{bucket}", ["sk", "doc"],
                                      descending=True, limit=1)
            item = next(items, None)
            if item is None:
                break
            newest = AuditEvent.from_record(_doc(item))
            self._bucket = bucket
            self._tail = int(item["sk"]["S"])
            if self._tail % size != size - 1:
                break
            bucket = bucket + 1 if hinted else max(bucket + 1, self._hinted_bucket())
            hinted = True
        return newest

    def _event_key(self, seq: int) -> Item:
        bucket = seq // self._table.layout.audit_bucket_size
        return _key(f"audit|{bucket}", f"{seq:020d}")

    def _hinted_bucket(self) -> int:
        hint = self._table.get(_key(AUDIT_HINT_PK), ["bucket"])
        return 0 if hint is None else int(hint["bucket"]["N"])

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        size = self._table.layout.audit_bucket_size
        after_seq = max(0, after_seq)
        bucket = (after_seq + 1) // size
        while True:
            last_seq = None
            items = self._table.query(f"audit|{bucket}", ["sk", "doc"],
                                      sort=(">", f"{after_seq:020d}"))
            for item in items:
                last_seq = int(item["sk"]["S"])
                yield AuditEvent.from_record(_doc(item))
            if last_seq is None or last_seq % size != size - 1:
                return
            bucket += 1

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        index, attribute = AUDIT_SLOT
        items = self._table.query(_audit_partition(entity_id), ["doc"], index=index,
                                  key_attribute=attribute)
        for item in items:
            event = AuditEvent.from_record(_doc(item))
            if event.entity_id == entity_id:
                yield event


class DynamoDBBlobRepository(BlobRepository):
    """Records under (namespace, key): one partition per namespace, sorted by key."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        _check_sort_key(key, "blob key")
        doc = _record_json(record, f"{namespace} record {key!r}")
        self._table.put({**_key(f"blob|{namespace}", key), "doc": _s(doc)})

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        item = None
        if _storable(key) and _storable(namespace):
            item = self._table.get(_key(f"blob|{namespace}", key), ["doc"])
        if item is None:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return _doc(item)

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if not _storable(namespace):
            return
        for item in self._table.query(f"blob|{namespace}", ["sk", "doc"]):
            yield item["sk"]["S"], _doc(item)

    def delete(self, namespace: str, key: str) -> None:
        if _storable(key) and _storable(namespace):
            self._table.delete(_key(f"blob|{namespace}", key))


# ----------------------------------------------------------------------
# Backend and conformance harness
# ----------------------------------------------------------------------


class DynamoDBBackend(Backend):
    """A store in one DynamoDB table; see the module docstring."""

    schemes = ("dynamodb",)

    def __init__(self, config: DynamoDBConfig, client: Any = None) -> None:
        """Open the store that `config` names.

        `client`, a boto3 DynamoDB client, is shared instead of building one;
        `close` then leaves it open.
        """
        self.config = config
        self._table = _Table(config, client)
        self.experiments = DynamoDBEntityRepository(self._table, Experiment)
        self.runs = DynamoDBEntityRepository(self._table, Run)
        self.datasets = DynamoDBEntityRepository(self._table, Dataset)
        self.models = DynamoDBEntityRepository(self._table, Model)
        self.model_versions = DynamoDBEntityRepository(self._table, ModelVersion)
        self.metrics = DynamoDBMetricRepository(self._table)
        self.lineage = DynamoDBLineageRepository(self._table)
        self.audit = DynamoDBAuditRepository(self._table)
        self.blobs = DynamoDBBlobRepository(self._table)

    @classmethod
    def from_url(cls, url: str) -> DynamoDBBackend:
        return cls(DynamoDBConfig.from_url(url))

    @classmethod
    def conformance_harness(cls, url: str) -> DynamoDBConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return DynamoDBConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="dynamodb",
            pushdown_operators=frozenset({"=", "in", "and"}),
            native_order_fields=NATIVE_ORDER_FIELDS,
            transactions=True,
            conditional_writes=True,
            max_item_bytes=MAX_ITEM_BYTES,
            max_batch_size=BATCH_WRITE_ITEMS,
            persistent=True,
            multi_process=True,
            extra={"max_transaction_items": TRANSACTION_ITEMS,
                   "max_record_bytes": MAX_RECORD_BYTES,
                   "max_points_per_item": MAX_CHUNK_POINTS},
        )

    @property
    def url(self) -> str:
        return self.config.to_url()

    @property
    def table_name(self) -> str:
        return self._table.name

    def initialize(self) -> None:
        self._table.ensure_ready()

    def telemetry_counters(self) -> dict[str, int]:
        """Return what this backend's successful writes applied since it was opened.

        `items_written` counts the items put or deleted, audit, blob and
        lineage items included. A delete counts whether or not the item
        existed. A write whose condition failed counts nothing. `bytes_written`
        sums `item_bytes` of the items put. `write_capacity_units` sums the
        ConsumedCapacity that DynamoDB returned for the writes.

        NOTE: moto 5.2 returns no real capacity: 1 unit per PutItem or
        DeleteItem and per BatchWriteItem request whatever their size, and
        none for TransactWriteItems.
        """
        return self._table.counters.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Return the table's size and item count from DescribeTable.

        The store is one table, so `collections` has one entry. Its `bytes` is
        TableSizeBytes, `index_bytes` the sum of the global secondary indexes'
        IndexSizeBytes, and `indexes` has each index's figures. AWS refreshes
        these figures about every six hours, so recent writes may be missing.
        A figure the server leaves out is "unknown", and so is `total_bytes`
        then. moto 5.2 reports TableSizeBytes as 0, the current ItemCount, and
        no index figures.
        """
        table = self._table.name
        try:
            response = self._table.request("describe_table", TableName=table)
        except BackendUnavailableError as error:
            if getattr(error, "aws_code", None) != "ResourceNotFoundException":
                raise
            raise NotFoundError(f"DynamoDB table {table!r} not found; open the store "
                                "once to create it", table) from error
        return _table_storage(response["Table"])

    def close(self) -> None:
        self._table.close()


def _table_storage(description: dict[str, Any]) -> dict[str, Any]:
    """Turn a DescribeTable description into the `storage_stats` result."""
    indexes = {
        index["IndexName"]: {"bytes": index.get("IndexSizeBytes", UNKNOWN),
                             "items": index.get("ItemCount", UNKNOWN)}
        for index in description.get("GlobalSecondaryIndexes", [])}
    sizes = [figures["bytes"] for figures in indexes.values()]
    index_bytes = UNKNOWN if UNKNOWN in sizes else sum(sizes)
    table_bytes = description.get("TableSizeBytes", UNKNOWN)
    known = UNKNOWN not in (table_bytes, index_bytes)
    items = description.get("ItemCount", UNKNOWN)
    return {
        "collections": {description["TableName"]: {
            "bytes": table_bytes, "index_bytes": index_bytes, "items": items,
            "indexes": indexes}},
        "total_bytes": table_bytes + index_bytes if known else UNKNOWN,
        "total_items": items,
        "method": "describe_table",
    }


class DynamoDBConformanceHarness:
    """Conformance harness for `dynamodb://` stores: one new table per case.

    Each store gets a table prefix of its own, so cases never share data and
    another process opens the same store from `store_url`. The raw hooks read
    and write items with the boto3 client, bypassing the repositories.
    """

    def __init__(self, url: str) -> None:
        config = DynamoDBConfig.from_url(url)
        # A server on loopback is an emulator; moto needs its requests serialized
        # for the concurrency cases to see DynamoDB's atomic transactions (see
        # _RequestLock). Another process opens the store with the same option.
        self.config = replace(config, serialize=config.serialize or config.loopback)
        self._token = secrets.token_hex(3)
        self._count = 0
        # Building a boto3 client takes about half a second, longer than most
        # cases, so every store of this harness shares one.
        self._client: Any = None

    def create(self) -> DynamoDBBackend:
        self._count += 1
        prefix = f"{self.config.prefix}-{self._token}{os.getpid():x}-{self._count}"
        if self._client is None:
            self._client = _Table(self.config).client
        backend = DynamoDBBackend(replace(self.config, prefix=prefix), self._client)
        backend._table.ensure_ready(new=True)
        return backend

    def destroy(self, backend: DynamoDBBackend) -> None:
        backend._table.drop()
        backend.close()

    def store_url(self, backend: DynamoDBBackend) -> str:
        return backend.url

    def raw_read(self, backend: DynamoDBBackend, kind: str, key: Any) -> dict | None:
        table = backend._table
        if kind == "audit":
            bucket = key // table.layout.audit_bucket_size
            item_key = _key(f"audit|{bucket}", f"{key:020d}")
        else:
            item_key = _key(_entity_pk(kind, key))
        item = table.client.get_item(TableName=table.name, Key=item_key,
                                     ConsistentRead=True).get("Item")
        return None if item is None else _doc(item)

    def raw_write(self, backend: DynamoDBBackend, kind: str, record: dict) -> None:
        table = backend._table
        client = table.client
        if kind == "audit":
            item = _audit_item(record, table.layout)
            client.put_item(TableName=table.name, Item=item)
            return
        client.put_item(TableName=table.name,
                        Item=_entity_item(kind, record, table.layout))
        if UNIQUE_KEYS[kind]:
            client.put_item(TableName=table.name, Item=_claim_item(kind, record))
