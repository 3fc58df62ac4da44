"""Each store's own driver writing the benchmark's points in its best batched form.

These writers give the ceiling for a store: no validation, no ids, no model
objects, only the driver call. Rows are converted to the driver's format
before the clock starts, and only the write calls are timed.

Layouts: `local` writes one row per point into a `raw_points` table, keyed by
(run, metric, step, timestamp, seq) like the row-per-point layout the local
backend used before it packed points into chunks, in a file the local backend
created (same pragmas), plus one `metric_latest` row per metric. The NoSQL writers store one item or document per point, keyed by
run, metric, step, timestamp and seq, in a table or collection of their own.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

from benchmarks.measure import Stopwatch

# A neutral point row: (run_id, key, step, ts_micros, seq, value).
Row = tuple[str, str, int, int, str, float]

BATCH_ROWS = 10_000


class RawWriter:
    """A writer of neutral rows through one store's driver, which subclasses pick."""

    batch_rows = BATCH_ROWS

    def convert(self, rows: list[Row]) -> Any:
        return rows

    def write(self, batch: Any) -> None:
        raise NotImplementedError

    def finish(self, latest: list[Row]) -> None:
        """Write the latest point of each (run, metric), which the default skips."""

    def close(self) -> None:
        """Release the connection and drop what was written."""

    def ingest(self, rows: Iterable[Row]) -> float:
        """Write every row in batches and return the seconds spent in the driver."""
        watch = Stopwatch()
        latest: dict[tuple[str, str], Row] = {}
        for chunk in _chunks(rows, self.batch_rows):
            for row in chunk:
                latest[row[0], row[1]] = row
            batch = self.convert(chunk)
            with watch:
                self.write(batch)
        final = list(latest.values())
        with watch:
            self.finish(final)
        return watch.seconds


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ----------------------------------------------------------------------
# local: sqlite3
# ----------------------------------------------------------------------


RAW_POINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_points (
    run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL,
    ts INTEGER NOT NULL, seq TEXT NOT NULL, value REAL, bits TEXT, extra TEXT,
    PRIMARY KEY (run_id, key, step, ts, seq)
) WITHOUT ROWID
"""


class SqliteRawWriter(RawWriter):
    """sqlite3 `executemany` of one row per point into a `raw_points` table.

    The file is created by the local backend, so the pragmas (WAL journal,
    synchronous NORMAL) are the ones mltrail uses, and `metric_latest` is the
    backend's own table. Each batch of BATCH_ROWS rows is one transaction.
    """

    def __init__(self, path: str, on_close: Callable[[], None] | None = None) -> None:
        self.on_close = on_close
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(RAW_POINTS_SCHEMA)

    def convert(self, rows: list[Row]) -> list[tuple]:
        return [(*row, None, None) for row in rows]

    def write(self, batch: list[tuple]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT OR REPLACE INTO raw_points (run_id, key, step, ts, seq, value, "
            "bits, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            batch,
        )
        self.conn.execute("COMMIT")

    def finish(self, latest: list[Row]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT OR REPLACE INTO metric_latest (run_id, key, step, ts, seq, value, "
            "bits, extra) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            latest,
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
        if self.on_close is not None:
            self.on_close()


# ----------------------------------------------------------------------
# NoSQL stores, on the emulators' loopback URLs
# ----------------------------------------------------------------------


def _url_parts(url: str) -> tuple[Any, dict[str, str]]:
    parts = urlsplit(url)
    return parts, dict(parse_qsl(parts.query))


class MongoRawWriter(RawWriter):
    """pymongo `insert_many(ordered=False)` of one document per point."""

    def __init__(self, url: str) -> None:
        import pymongo

        self.client = pymongo.MongoClient(
            url.split("?", 1)[0], serverSelectionTimeoutMS=10_000
        )
        name = urlsplit(url).path.strip("/") or "mltrail"
        self.collection = self.client[name]["bench_raw_points"]
        self.collection.drop()

    def convert(self, rows: list[Row]) -> list[dict]:
        return [
            {
                "_id": f"{r[0]}|{r[1]}|{r[4]}",
                "run": r[0],
                "key": r[1],
                "step": r[2],
                "ts": r[3],
                "value": r[5],
            }
            for r in rows
        ]

    def write(self, batch: list[dict]) -> None:
        self.collection.insert_many(batch, ordered=False)

    def close(self) -> None:
        self.collection.drop()
        self.client.close()


class DynamoRawWriter(RawWriter):
    """boto3 `batch_write_item` of 25 items per request, one item per point."""

    batch_rows = 25 * 40
    table = "bench-raw-points"

    def __init__(self, url: str) -> None:
        import boto3

        parts, query = _url_parts(url)
        self.client = boto3.client(
            "dynamodb",
            endpoint_url=f"http://{parts.netloc}",
            region_name=query.get("region", "us-east-1"),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self._drop()
        self.client.create_table(
            TableName=self.table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )

    def _drop(self) -> None:
        try:
            self.client.delete_table(TableName=self.table)
        except self.client.exceptions.ResourceNotFoundException:
            pass

    def convert(self, rows: list[Row]) -> list[list[dict]]:
        items = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": f"{r[0]}|{r[1]}"},
                        "sk": {"S": f"{r[2]:020d}|{r[3]}|{r[4]}"},
                        "value": {"N": str(Decimal(repr(r[5])))},
                        "bits": {"B": struct.pack(">d", r[5])},
                    }
                }
            }
            for r in rows
        ]
        return [items[i : i + 25] for i in range(0, len(items), 25)]

    def write(self, batch: list[list[dict]]) -> None:
        for requests in batch:
            pending = {self.table: requests}
            while pending:
                answer = self.client.batch_write_item(RequestItems=pending)
                pending = answer.get("UnprocessedItems") or {}

    def close(self) -> None:
        self._drop()


class FirestoreRawWriter(RawWriter):
    """google-cloud-firestore `WriteBatch` commits of 500 documents, one per point."""

    batch_rows = 500 * 10

    def __init__(self, url: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import firestore

        parts, query = _url_parts(url)
        if "emulator_host" in query:
            os.environ["FIRESTORE_EMULATOR_HOST"] = query["emulator_host"]
        self.client = firestore.Client(
            project=parts.netloc or "mltrail-bench", credentials=AnonymousCredentials()
        )
        self.collection = self.client.collection("bench_raw_points")

    def convert(self, rows: list[Row]) -> list[list[tuple[str, dict]]]:
        docs = [
            (
                f"{r[0]}|{r[1]}|{r[4]}",
                {"run": r[0], "key": r[1], "step": r[2], "ts": r[3], "value": r[5]},
            )
            for r in rows
        ]
        return [docs[i : i + 500] for i in range(0, len(docs), 500)]

    def write(self, batch: list[list[tuple[str, dict]]]) -> None:
        for docs in batch:
            writer = self.client.batch()
            for doc_id, doc in docs:
                writer.set(self.collection.document(doc_id), doc)
            writer.commit()

    def close(self) -> None:
        self.client.close()


class CassandraRawWriter(RawWriter):
    """cassandra-driver: unlogged batches of up to 100 rows of one partition each,
    sent with `execute_concurrent` (a prepared INSERT per row)."""

    keyspace = "bench_raw"
    rows_per_batch = 100

    def __init__(self, url: str) -> None:
        from cassandra.cluster import Cluster

        parts, _ = _url_parts(url)
        self.cluster = Cluster(
            [parts.hostname], port=parts.port or 9042, protocol_version=5
        )
        self.session = self.cluster.connect()
        self.session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        self.session.execute(f"DROP TABLE IF EXISTS {self.keyspace}.points")
        self.session.execute(
            f"CREATE TABLE {self.keyspace}.points (run_id text, key text, step bigint, "
            "ts bigint, seq text, value double, "
            "PRIMARY KEY ((run_id, key), step, ts, seq))"
        )
        self.insert = self.session.prepare(
            f"INSERT INTO {self.keyspace}.points (run_id, key, step, ts, seq, value) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )

    def convert(self, rows: list[Row]) -> list[Any]:
        from cassandra.query import BatchStatement, BatchType

        partitions: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            partitions.setdefault((row[0], row[1]), []).append(row)
        batches = []
        for members in partitions.values():
            for start in range(0, len(members), self.rows_per_batch):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for row in members[start : start + self.rows_per_batch]:
                    batch.add(self.insert, row)
                batches.append((batch, ()))
        return batches

    def write(self, batch: list[Any]) -> None:
        from cassandra.concurrent import execute_concurrent

        execute_concurrent(
            self.session, batch, concurrency=16, raise_on_first_error=True
        )

    def close(self) -> None:
        self.session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}")
        self.cluster.shutdown()


NOSQL_WRITERS: dict[str, type[RawWriter]] = {
    "cassandra": CassandraRawWriter,
    "dynamodb": DynamoRawWriter,
    "firestore": FirestoreRawWriter,
    "mongodb": MongoRawWriter,
}
