"""Paths of the documents in a store folder.

    jsondir.json                                marker: format name and layout version
    entities/<kind>/<id>.json                   one entity, as Entity.to_record()
    unique/<kind>/<sha256 of unique key>.json   claim: {"key": [...], "id": ...}
    metrics/<run>/latest.json                   latest point per metric key
    metrics/<run>/series/<key>/<chunk>.jsonl    sorted points of one batch chunk
    lineage/<node>/node.json                    one lineage node
    lineage/<node>/upstream/<edge>.json         edges whose downstream end is <node>
    lineage/<node>/downstream/<edge>.json       edges whose upstream end is <node>
    audit/<seq // 1000>/<seq>.json              one event, as AuditEvent.to_record()
    blobs/<namespace>/<key>.json                {"key": ..., "record": ...}
    locks/<name>.lock                           empty files for fcntl.flock

Names in angle brackets pass through `file_stem`, so any string, including
one with a slash or one that is too long, becomes a safe file name. This
module and the backend's code read and write these paths, and so does the
conformance harness, whose raw hooks bypass the repositories.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

from mltrail.domain import LineageEdge

FORMAT_NAME = "mltrail-jsondir"
LAYOUT_VERSION = 1

# The characters and length the core allows in an id. A string of this shape
# is a valid file name on POSIX systems, and it cannot be "." or "..".
_SAFE_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.:-]{0,127}$")

AUDIT_BUCKET_SIZE = 1_000
METRIC_LOCK_STRIPES = 64


def file_stem(text: str) -> str:
    """Return a file name for `text`: `text` itself when it is safe, else a digest.

    Digests start with `~`, which a safe name never does, so two different
    strings never share a file name. Ids, which make up most names, stay
    readable in a directory listing.
    """
    if _SAFE_NAME.match(text):
        return text
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def key_digest(values: Sequence[Any]) -> str:
    """Return the SHA-256 of a unique key's values as canonical JSON."""
    text = json.dumps(list(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Layout:
    """The paths of one store folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def marker(self) -> Path:
        return self.root / "jsondir.json"

    def entity_folder(self, kind: str) -> Path:
        return self.root / "entities" / kind

    def entity(self, kind: str, entity_id: str) -> Path:
        return self.entity_folder(kind) / f"{file_stem(entity_id)}.json"

    def claim(self, kind: str, unique_values: Sequence[Any]) -> Path:
        return self.root / "unique" / kind / f"{key_digest(unique_values)}.json"

    def run_metrics(self, run_id: str) -> Path:
        return self.root / "metrics" / file_stem(run_id)

    def latest(self, run_id: str) -> Path:
        return self.run_metrics(run_id) / "latest.json"

    def series(self, run_id: str, key: str) -> Path:
        return self.run_metrics(run_id) / "series" / file_stem(key)

    def metric_lock(self, run_id: str) -> str:
        """Return the lock name for a run's metrics, one of a fixed set of stripes.

        A fixed set keeps the lock files from piling up with every run, and a
        lock file is never deleted, which `flock` needs to stay correct.
        """
        digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).digest()
        return f"metrics-{int.from_bytes(digest[:4], 'big') % METRIC_LOCK_STRIPES:02d}"

    def node_folder(self, node_id: str) -> Path:
        return self.root / "lineage" / file_stem(node_id)

    def node(self, node_id: str) -> Path:
        return self.node_folder(node_id) / "node.json"

    def edge(self, node_id: str, direction: str, edge: LineageEdge) -> Path:
        """Return the copy of `edge` kept in the `direction` folder of `node_id`.

        Within one node's folder, the edge type and the far end identify an
        edge, so they make up the file name.
        """
        far = edge.upstream if direction == "upstream" else edge.downstream
        name = file_stem(f"{edge.type.value}.{far}")
        return self.node_folder(node_id) / direction / f"{name}.json"

    @property
    def audit_folder(self) -> Path:
        return self.root / "audit"

    def audit_bucket(self, seq: int) -> Path:
        return self.audit_folder / f"{seq // AUDIT_BUCKET_SIZE:012d}"

    def audit_event(self, seq: int) -> Path:
        return self.audit_bucket(seq) / f"{seq:020d}.json"

    def blob_folder(self, namespace: str) -> Path:
        return self.root / "blobs" / file_stem(namespace)

    def blob(self, namespace: str, key: str) -> Path:
        return self.blob_folder(namespace) / f"{file_stem(key)}.json"
