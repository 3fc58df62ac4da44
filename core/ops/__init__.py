"""Operations on a whole store: backup and migration, archival, checks, upgrades.

    from mltrail import ops

    ops.export_store(store, "backup.mltrail")           # portable archive file
    ops.import_archive(other_store, "backup.mltrail")   # restore into any backend
    ops.migrate(source_store, target_store)             # copy without a file
    ops.archive_metrics(store, older_than=timedelta(days=30))
    ops.fsck(store, repair=True)
    ops.upgrade(store)

Every long operation takes `progress`, a callable `progress(phase, done, total)`
where `total` is None while unknown.

The names are imported on first use: `mltrail.store` imports the metric reader
from this package, so importing the package itself must stay cheap and must not
import the Store.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_store": "mltrail.ops.backup",
    "import_archive": "mltrail.ops.backup",
    "migrate": "mltrail.ops.backup",
    "read_manifest": "mltrail.ops.backup",
    "ImportReport": "mltrail.ops.backup",
    "ExportReport": "mltrail.ops.backup",
    "ArchiveFormatError": "mltrail.ops.backup",
    "diff_stores": "mltrail.ops.compare",
    "archive_metrics": "mltrail.ops.archive",
    "ArchiveReport": "mltrail.ops.archive",
    "fsck": "mltrail.ops.consistency",
    "FsckReport": "mltrail.ops.consistency",
    "upgrade": "mltrail.ops.schema",
    "UpgradeReport": "mltrail.ops.schema",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mltrail.ops' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
