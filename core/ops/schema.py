"""Rewrite records stored with an older schema version in the current layout.

Reads already upgrade older records in memory (`Entity.upgrade_record`).
`upgrade` makes the change permanent, so that backend indexes on new fields
such as `namespace` see every record. Each record is rewritten with a
compare-and-set update that keeps its content and `updated_at` and bumps its
revision. A record that is already current is skipped, so after a failure the
same call continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from mltrail.access import Role
from mltrail.backend import EntityRepository, ScanRequest
from mltrail.domain import ENTITY_TYPES, SCHEMA_VERSION, Entity
from mltrail.errors import ConflictError, NotFoundError
from mltrail.ops.records import Progress, no_progress

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
PROGRESS_EVERY = 500


@dataclass
class UpgradeReport:
    """Records read and rewritten per entity kind."""

    schema_version: int = SCHEMA_VERSION
    checked: dict[str, int] = field(default_factory=dict)
    upgraded: dict[str, int] = field(default_factory=dict)

    @property
    def total_upgraded(self) -> int:
        return sum(self.upgraded.values())

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def upgrade(store: Any, *, progress: Progress | None = None) -> UpgradeReport:
    """Rewrite every entity stored with an older schema version (see the module).

    Needs the admin role in every namespace. Appends one `upgrade` audit event
    when anything was rewritten.
    """
    store._authorize(Role.ADMIN, "upgrade", "*")
    progress = progress or no_progress
    report = UpgradeReport()
    for kind in ENTITY_TYPES:
        repository = store.backend.entity_repository(kind)
        checked = upgraded = 0
        for entity in repository.scan(ScanRequest()):
            checked += 1
            if entity.schema_version < SCHEMA_VERSION and _rewrite(repository, entity):
                upgraded += 1
            if checked % PROGRESS_EVERY == 0:
                progress(f"upgrade {kind}", checked, None)
        progress(f"upgrade {kind}", checked, checked)
        report.checked[kind] = checked
        report.upgraded[kind] = upgraded
    if report.total_upgraded:
        logger.info("upgraded %d records to schema version %d", report.total_upgraded,
                    SCHEMA_VERSION)
        store._audit("upgrade", "store", "-", {"schema_version": SCHEMA_VERSION,
                                               "upgraded": dict(report.upgraded)})
    return report


def _rewrite(repository: EntityRepository, entity: Entity) -> bool:
    """Store `entity` in the current layout; return False when another writer did."""
    for _ in range(MAX_ATTEMPTS):
        try:
            repository.update(dataclasses.replace(entity, revision=entity.revision + 1))
            return True
        except ConflictError:
            try:
                entity = repository.get(entity.id)
            except NotFoundError:
                return False
            if entity.schema_version >= SCHEMA_VERSION:
                return False
        except NotFoundError:
            return False
    raise ConflictError(
        f"{entity.kind} {entity.id!r} kept changing while being upgraded; run the "
        "upgrade again", entity.id)
