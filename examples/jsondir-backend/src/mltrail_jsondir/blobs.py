"""Content-addressed records: one file per (namespace, key).

A file contains its key next to the record, because a key that is not a safe
file name is stored under its digest and cannot be read back from the name.
Writes replace whole files, so they need no lock.
"""

from __future__ import annotations

from typing import Any, Iterator

from mltrail.backend import BlobRepository
from mltrail.errors import NotFoundError

from mltrail_jsondir.files import JsonFiles
from mltrail_jsondir.layout import Layout


class JsonDirBlobRepository(BlobRepository):
    def __init__(self, files: JsonFiles, layout: Layout) -> None:
        self.files = files
        self.layout = layout

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        document = {"key": key, "record": record}
        self.files.write(self.layout.blob(namespace, key), document)

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        document = self.files.read(self.layout.blob(namespace, key))
        if document is None:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return document["record"]

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stream a namespace's records sorted by key.

        Sorting needs every key first, so this reads each file twice, which
        keeps only the keys, not the records, in memory.
        """
        folder = self.layout.blob_folder(namespace)
        keys = []
        for name in self.files.names(folder, ".json"):
            document = self.files.read(folder / name)
            if document is not None:
                keys.append(document["key"])
        for key in sorted(keys):
            document = self.files.read(self.layout.blob(namespace, key))
            if document is not None:
                yield key, document["record"]

    def delete(self, namespace: str, key: str) -> None:
        self.files.remove(self.layout.blob(namespace, key))
