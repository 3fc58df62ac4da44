"""Experiments, runs, datasets, models and model versions: one JSON file each.

Every write of a kind happens under that kind's lock, which makes the
existence checks of `insert` and the revision check of `update` atomic across
processes. Reads take no lock: each file is replaced in one `os.replace`, so a
reader sees a whole document.

Unique keys are claim files named by the key's digest. A claim counts only
while the entity it names exists and still has that key, so a claim left
behind by a crash between two file operations never blocks a later insert.
"""

from __future__ import annotations

from typing import Any, Iterator

from mltrail.backend import EntityRepository, ScanRequest
from mltrail.domain import Entity
from mltrail.errors import (
    AlreadyExistsError, ConflictError, InvalidInputError, NotFoundError,
)

from mltrail_jsondir.files import JsonFiles
from mltrail_jsondir.layout import Layout


class JsonDirEntityRepository(EntityRepository):
    def __init__(self, files: JsonFiles, layout: Layout,
                 entity_type: type[Entity]) -> None:
        self.files = files
        self.layout = layout
        self.entity_type = entity_type

    def _lock(self):
        return self.files.lock(f"entities-{self.kind}")

    def _unique_values(self, record: dict[str, Any]) -> list[Any] | None:
        if not self.unique_key:
            return None
        return [record[name] for name in self.unique_key]

    def _claim_holder(self, unique_values: list[Any]) -> dict[str, Any] | None:
        """Return the stored record whose unique key is `unique_values`, or None."""
        claim = self.files.read(self.layout.claim(self.kind, unique_values))
        if claim is None:
            return None
        record = self.files.read(self.layout.entity(self.kind, claim["id"]))
        if record is None or self._unique_values(record) != unique_values:
            return None
        return record

    def insert(self, entity: Entity) -> None:
        record = entity.to_record()
        unique_values = self._unique_values(record)
        path = self.layout.entity(self.kind, entity.id)
        with self._lock():
            if self.files.read(path) is not None:
                raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                         entity.id)
            if unique_values is not None:
                holder = self._claim_holder(unique_values)
                if holder is not None:
                    key = dict(zip(self.unique_key, unique_values, strict=True))
                    raise AlreadyExistsError(
                        f"{self.kind} with {key} already exists as {holder['id']!r}",
                        tuple(unique_values))
                # The claim goes first: a crash before the entity is written
                # leaves a claim that `_claim_holder` ignores, never an entity
                # whose key is unguarded.
                self.files.write(self.layout.claim(self.kind, unique_values),
                                 {"key": unique_values, "id": entity.id})
            self.files.write(path, record)

    def get(self, entity_id: str) -> Entity:
        record = self.files.read(self.layout.entity(self.kind, entity_id))
        if record is None:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self.entity_type.from_record(record)

    def find_unique(self, key: tuple) -> Entity | None:
        record = self._claim_holder(list(key))
        return None if record is None else self.entity_type.from_record(record)

    def update(self, entity: Entity) -> None:
        record = entity.to_record()
        path = self.layout.entity(self.kind, entity.id)
        with self._lock():
            stored = self.files.read(path)
            if stored is None:
                raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
            if stored["revision"] != entity.revision - 1:
                raise ConflictError(
                    f"{self.kind} {entity.id!r} was changed concurrently (stored "
                    f"revision {stored['revision']}, expected {entity.revision - 1}); "
                    "read it again and retry", entity.id)
            if self._unique_values(stored) != self._unique_values(record):
                raise InvalidInputError(
                    f"{self.kind} {entity.id!r}: the unique fields {self.unique_key} "
                    "cannot change; create a new entity instead", entity.id)
            self.files.write(path, record)

    def delete(self, entity_id: str) -> None:
        path = self.layout.entity(self.kind, entity_id)
        with self._lock():
            stored = self.files.read(path)
            if stored is None:
                return
            # The entity goes first, so its claim turns stale at once even if
            # this process dies before removing the claim file.
            self.files.remove(path)
            unique_values = self._unique_values(stored)
            if unique_values is not None:
                claim_path = self.layout.claim(self.kind, unique_values)
                claim = self.files.read(claim_path)
                if claim is not None and claim["id"] == entity_id:
                    self.files.remove(claim_path)

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        """Stream every entity of the kind in file name order, one file at a time.

        Nothing is pushed down: the core applies the filter and the order.
        """
        folder = self.layout.entity_folder(self.kind)
        for name in self.files.names(folder, ".json"):
            record = self.files.read(folder / name)
            if record is None:
                continue  # deleted since the folder was listed
            namespace = record.get("namespace")
            if request.namespace is not None and namespace != request.namespace:
                continue
            yield self.entity_type.from_record(record)
