"""Bring experiment histories in from other tools, and write a store out for MLflow.

    import mltrail
    from mltrail.importers import import_path, export_mlflow

    store = mltrail.connect("local:///tmp/store.db")
    summary = import_path(store, "mlflow", "mlruns/", dry_run=True)
    print(summary.render())

Formats: `mlflow` (an MLflow file store), `sacred` (a Sacred FileStorageObserver
folder), `lightning` (PyTorch Lightning CSVLogger logs), `dvc` (a DVC project
with dvc.lock, params and DVCLive output) and `openlineage` (run events as a
JSON array or JSON lines). Importing is idempotent: ids derive from the source's
own ids, so a second import of the same data adds nothing. docs/importing.md
lists what each format maps to and what is not carried.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable

from mltrail.access import Role
from mltrail.domain import DEFAULT_NAMESPACE, check_namespace
from mltrail.errors import InvalidInputError
from mltrail.importers.summary import (
    ExportSummary,
    ImportSummary,
    Progress,
    ProgressCallback,
    ProgressReporter,
)
from mltrail.store import Store

logger = logging.getLogger(__name__)

# Format name -> "module:function" taking (SourceTree, ImportWriter); imported
# on first use so that one format's parsing code never loads for another.
IMPORTERS: dict[str, str] = {
    "mlflow": "mltrail.importers.mlflow_import:import_mlflow",
    "sacred": "mltrail.importers.sacred_import:import_sacred",
    "lightning": "mltrail.importers.lightning_import:import_lightning",
    "dvc": "mltrail.importers.dvc_import:import_dvc",
    "openlineage": "mltrail.importers.openlineage_import:import_openlineage",
}
FORMATS = tuple(IMPORTERS)


def import_path(
    store: Store,
    format: str,
    path: str | os.PathLike,
    *,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> ImportSummary:
    """Import the `format` data under `path` into `store`; return what was done.

    With `dry_run`, nothing is written and the summary shows what would be.
    `progress` receives a `Progress` report as each item is handled. Nothing
    outside `path` is read: links that lead out of it are skipped and reported.
    """
    run_import = _importer(format)
    check_namespace(namespace)
    from mltrail.importers.source import SourceTree
    from mltrail.importers.writer import ImportWriter

    summary = ImportSummary(format=format, source=os.fspath(path), dry_run=dry_run)
    tree = SourceTree(path, summary)
    summary.source = str(tree.root)
    writer = ImportWriter(
        store,
        format,
        summary,
        dry_run=dry_run,
        namespace=namespace,
        progress=ProgressReporter(progress),
    )
    # Importing is an admin operation (see mltrail.access); a dry run only reads.
    required = Role.READER if dry_run else Role.ADMIN
    writer.authorize(required, "import", namespace, "store", format)
    logger.info(
        "importing %s data from %s into %s%s",
        format,
        tree.root,
        store.url,
        " (dry run)" if dry_run else "",
    )
    run_import(tree, writer)
    logger.info(
        "import of %s finished: %d skipped", tree.root, sum(summary.skipped.values())
    )
    return summary


def export_mlflow(
    store: Store,
    path: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    namespace: str | None = None,
) -> ExportSummary:
    """Write the store's experiments, runs and models out as an MLflow file store.

    `path` must be missing or an empty folder. MLflow opens the result with
    `MlflowClient(tracking_uri="file://<path>")`; recent MLflow 3 releases
    (3.18 was checked) open file stores only with MLFLOW_ALLOW_FILE_STORE=true.
    """
    from mltrail.importers.mlflow_export import MlflowExporter

    # Store reads check access per namespace too; this fails before any file exists.
    store.policy.check(store.actor, Role.READER, "export", namespace)
    return MlflowExporter(store, path, ProgressReporter(progress), namespace).run()


def _importer(format: str) -> Callable:
    if format not in IMPORTERS:
        raise InvalidInputError(
            f"import format {format!r} is unknown; expected one of "
            f"{', '.join(FORMATS)}",
            format,
        )
    module_name, _, function = IMPORTERS[format].partition(":")
    return getattr(importlib.import_module(module_name), function)


__all__ = [
    "FORMATS",
    "ExportSummary",
    "ImportSummary",
    "Progress",
    "ProgressCallback",
    "export_mlflow",
    "import_path",
]
