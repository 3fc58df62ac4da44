"""The conformance harness: fresh stores for the suite, and raw hooks.

The suite finds this class through `JsonDirBackend.conformance_harness(url)`,
so the package never imports `mltrail.conformance`. Each case gets a new
folder under the URL's folder, which `destroy` removes again.

The raw hooks read and write the documents with plain `json` and `os.replace`
at the paths of `mltrail_jsondir.layout`, never through the repositories, so
the suite can check what the repositories store against data written
independently of them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from mltrail.backend import UNIQUE_KEYS

from mltrail_jsondir.backend import JsonDirBackend
from mltrail_jsondir.layout import Layout


class JsonDirConformanceHarness:
    """Conformance harness that creates each jsondir store in a new subfolder."""

    def __init__(self, url: str) -> None:
        self.folder = JsonDirBackend.from_url(url).root
        self._created: set[Path] = set()

    def create(self) -> JsonDirBackend:
        name = f"case-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        backend = JsonDirBackend(self.folder / name)
        backend.initialize()
        self._created.add(backend.root)
        return backend

    def destroy(self, backend: JsonDirBackend) -> None:
        backend.close()
        # Only folders made by `create` are removed, never a folder a user named.
        if backend.root in self._created:
            self._created.discard(backend.root)
            shutil.rmtree(backend.root, ignore_errors=True)

    def store_url(self, backend: JsonDirBackend) -> str:
        return backend.url

    def raw_read(self, backend: JsonDirBackend, kind: str, key: Any) -> dict | None:
        path = self._path(backend, kind, key)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def raw_write(self, backend: JsonDirBackend, kind: str, record: dict) -> None:
        if kind == "audit":
            _write(self._path(backend, kind, record["seq"]), record)
            return
        unique_key = UNIQUE_KEYS[kind]
        if unique_key:
            values = [record[name] for name in unique_key]
            _write(Layout(backend.root).claim(kind, values),
                   {"key": values, "id": record["id"]})
        _write(self._path(backend, kind, record["id"]), record)

    def _path(self, backend: JsonDirBackend, kind: str, key: Any) -> Path:
        layout = Layout(backend.root)
        if kind == "audit":
            return layout.audit_event(key)
        if kind not in UNIQUE_KEYS:
            known = ", ".join([*UNIQUE_KEYS, "audit"])
            raise ValueError(
                f"raw record kind {kind!r} is unknown; expected one of {known}")
        return layout.entity(kind, key)


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".raw-{uuid.uuid4().hex}")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, allow_nan=False)
    os.replace(temp, path)
