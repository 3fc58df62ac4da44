"""Import MLflow's file-based model registry (`mlruns/models/`).

A registered model becomes a Model and each `version-<n>` a ModelVersion. The
store numbers versions itself, in the source's order; soft-deleted versions
(stage `Deleted_Internal`) are registered and then deleted, so numbers keep
their places. MLflow aliases become aliases. A stage is kept as the
`mlflow.stage` tag, and each stage other than None also becomes an alias named
after it in lower case (`production`) that points at the newest version in
that stage, as `models:/<name>/Production` resolves in MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrail.errors import InvalidInputError
from mltrail.importers import mlflow_layout as layout
from mltrail.importers.source import SourceTree
from mltrail.importers.values import derive_id, from_millis
from mltrail.importers.writer import ImportWriter


@dataclass
class VersionSource:
    number: int
    folder: Path
    meta: dict[str, Any]
    reference: str

    @property
    def stage(self) -> str:
        return str(self.meta.get("current_stage") or "None")

    @property
    def deleted(self) -> bool:
        return self.stage == layout.DELETED_VERSION_STAGE


def import_registry(tree: SourceTree, writer: ImportWriter, registry: Path) -> None:
    folders = [
        p for p in tree.subdirectories(registry) if tree.is_file(p / layout.META_FILE)
    ]
    writer.progress.start("registered models", len(folders))
    for folder in folders:
        reference = tree.relative(folder)
        with writer.guard("model", reference):
            _import_model(tree, writer, folder, reference)
        writer.progress.advance(reference)


def _import_model(
    tree: SourceTree, writer: ImportWriter, folder: Path, reference: str
) -> None:
    meta = layout.read_meta(tree, folder)
    name = meta.get("name") or folder.name
    tags = layout.read_values(tree, folder / "tags")
    model_id = writer.model(
        id=derive_id("mlflow-registered-model", name),
        name=name,
        reference=reference,
        description=meta.get("description"),
        tags={**tags, **writer.source_tags(name)},
        created_at=_optional_millis(meta.get("creation_timestamp")),
    )
    if model_id is None:
        return
    numbers: dict[int, int] = {}
    versions = _read_versions(tree, writer, folder)
    for version in versions:
        with writer.guard("model_version", version.reference):
            stored = _import_version(tree, writer, model_id, name, version)
            if stored is not None:
                numbers[version.number] = stored
    _import_aliases(tree, writer, folder, meta, model_id, versions, numbers)


def _read_versions(
    tree: SourceTree, writer: ImportWriter, folder: Path
) -> list[VersionSource]:
    versions = []
    for version_folder in tree.subdirectories(folder):
        if not version_folder.name.startswith("version-"):
            continue
        reference = tree.relative(version_folder)
        with writer.guard("model_version", reference):
            meta = layout.read_meta(tree, version_folder)
            number = meta.get("version", version_folder.name[len("version-") :])
            try:
                number = int(number)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"version {number!r} is not a number", reference
                ) from None
            versions.append(VersionSource(number, version_folder, meta, reference))
    return sorted(versions, key=lambda v: v.number)


def _import_version(
    tree: SourceTree,
    writer: ImportWriter,
    model_id: str,
    name: str,
    version: VersionSource,
) -> int | None:
    meta = version.meta
    tags = layout.read_values(tree, version.folder / "tags")
    extra = {
        "mlflow.stage": version.stage,
        "mlflow.status": meta.get("status"),
        "mlflow.source": meta.get("source"),
        "mlflow.model_id": meta.get("model_id"),
        "mlflow.user": meta.get("user_id"),
        "mlflow.run_link": meta.get("run_link"),
    }
    tags.update({k: str(v) for k, v in extra.items() if v not in (None, "")})
    source_run = layout.text_id(meta.get("run_id"))
    return writer.model_version(
        id=derive_id("mlflow-model-version", name, str(version.number)),
        model_id=model_id,
        source_version=version.number,
        reference=version.reference,
        run_id=layout.run_id_for(source_run) if source_run else None,
        artifact_uri=meta.get("storage_location") or meta.get("source"),
        description=meta.get("description"),
        tags={**tags, **writer.source_tags(f"{name}/{version.number}")},
        created_at=_optional_millis(meta.get("creation_timestamp")),
        deleted=version.deleted,
    )


def _import_aliases(
    tree: SourceTree,
    writer: ImportWriter,
    folder: Path,
    meta: dict[str, Any],
    model_id: str,
    versions: list[VersionSource],
    numbers: dict[int, int],
) -> None:
    reference = tree.relative(folder)
    aliases = {str(k): str(v) for k, v in (meta.get("aliases") or {}).items()}
    aliases.update(
        {k: v.strip() for k, v in layout.read_values(tree, folder / "aliases").items()}
    )
    deleted = {v.number for v in versions if v.deleted}
    for stage in layout.REGISTRY_STAGES[1:]:
        in_stage = [v.number for v in versions if v.stage == stage]
        if not in_stage:
            continue
        if stage.lower() in aliases:
            writer.summary.note(
                "alias",
                f"{reference} {stage.lower()}",
                "an MLflow alias has the stage's name; the alias wins",
            )
            continue
        aliases[stage.lower()] = str(max(in_stage))
    for alias, target in sorted(aliases.items()):
        with writer.guard("alias", f"{reference} {alias}"):
            number = int(target)
            if number in deleted or number not in numbers:
                raise InvalidInputError(
                    f"alias points at version {number}, which is "
                    "deleted or was not imported",
                    number,
                )
            writer.alias(model_id, alias, numbers[number], f"{reference} {alias}")


def _optional_millis(value: Any) -> datetime | None:
    return None if value is None else from_millis(value, "creation_timestamp")
