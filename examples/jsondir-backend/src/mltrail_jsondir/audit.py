"""The audit chain: one file per event, in folders of AUDIT_BUCKET_SIZE events.

File names are zero-padded seqs, so name order is seq order. The folders keep
`last`, which the core calls before every append, from listing the whole
chain: it lists the folder names and then only the newest folder.
"""

from __future__ import annotations

from typing import Iterator

from mltrail.backend import AuditRepository
from mltrail.domain import AuditEvent
from mltrail.errors import AlreadyExistsError

from mltrail_jsondir.files import JsonFiles
from mltrail_jsondir.layout import Layout


class JsonDirAuditRepository(AuditRepository):
    def __init__(self, files: JsonFiles, layout: Layout) -> None:
        self.files = files
        self.layout = layout

    def append(self, event: AuditEvent) -> None:
        path = self.layout.audit_event(event.seq)
        with self.files.lock("audit"):
            if self.files.read(path) is not None:
                raise AlreadyExistsError(f"audit event seq {event.seq} is taken",
                                         event.seq)
            self.files.write(path, event.to_record())

    def last(self) -> AuditEvent | None:
        root = self.layout.audit_folder
        for bucket in reversed(self.files.names(root)):
            for name in reversed(self.files.names(root / bucket, ".json")):
                record = self.files.read(root / bucket / name)
                if record is not None:
                    return AuditEvent.from_record(record)
        return None

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        root = self.layout.audit_folder
        first_bucket = self.layout.audit_bucket(after_seq + 1).name
        for bucket in self.files.names(root):
            if bucket < first_bucket:
                continue
            for name in self.files.names(root / bucket, ".json"):
                if int(name.removesuffix(".json")) <= after_seq:
                    continue
                record = self.files.read(root / bucket / name)
                if record is not None:
                    yield AuditEvent.from_record(record)

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        # NOTE: there is no index by entity, so this reads the whole chain.
        for event in self.scan():
            if event.entity_id == entity_id:
                yield event
