"""Backup files: export a store to a portable archive, restore it into any backend.

An archive is an uncompressed tar file whose first member is `manifest.json`
and whose other members are gzip-compressed JSON Lines, one per kind of
content (`runs.jsonl.gz`, `metrics.jsonl.gz`, ...; see
`mltrail.ops.portable.MEMBERS`). The manifest names the format version, the
mltrail version that wrote it, the source store URL without credentials, and
for each member its record count, size and SHA-256.

Each member is spooled to a temporary file before it enters the tar, so
memory stays bounded however large the store. The tar is written under a
temporary name and renamed when complete.

`import_archive` checks the format version, every checksum and every record
before it writes anything, then restores through `mltrail.ops.portable`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

from mltrail.access import Role
from mltrail.clock import isoformat, utcnow
from mltrail.errors import InvalidInputError, MltrailError
from mltrail.ops.portable import (
    BLOB_NAMESPACES, MEMBERS, ImportReport, Restorer, Selection, parse_record, select,
    source_members,
)
from mltrail.ops.records import Progress, dumps, no_progress, redact_url

logger = logging.getLogger(__name__)

FORMAT_NAME = "mltrail-archive"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
PROGRESS_EVERY = 1_000

__all__ = [
    "ArchiveFormatError", "ExportReport", "ImportReport", "export_store",
    "import_archive", "migrate", "read_manifest",
]


class ArchiveFormatError(InvalidInputError):
    """A backup file is damaged, incomplete, or of a format this mltrail cannot read."""


@dataclass
class ExportReport:
    """Record counts per member and the file size of one `export_store` call."""

    path: str
    counts: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    full: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "counts": dict(self.counts), "bytes": self.bytes,
                "full": self.full}


# ----------------------------------------------------------------------
# export
# ----------------------------------------------------------------------


def export_store(
    store: Any,
    path: str | os.PathLike,
    *,
    filter: str | None = None,
    experiments: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the store, or the runs matching `filter` within `experiments`, to `path`.

    A partial export (`filter` or `experiments` given) holds the matching runs
    with everything they reference (see `mltrail.ops.portable.select`) and no
    audit chain, because a part of a hash chain cannot be verified on its own.
    Needs the admin role in every namespace.
    """
    store._authorize(Role.ADMIN, "export", "*")
    progress = progress or no_progress
    full = filter is None and not experiments
    chosen = Selection() if full else select(store, filter, experiments)
    target = Path(path)
    report = ExportReport(path=str(target), full=full)
    with tempfile.TemporaryDirectory(prefix=".mltrail-export-",
                                     dir=target.parent if target.parent.exists()
                                     else None) as spool:
        entries = []
        for member, records in source_members(store, chosen):
            entry = _spool_member(Path(spool), member, records, progress)
            entries.append(entry)
            report.counts[member] = entry["count"]
        manifest = _manifest(store, entries, full, filter, experiments)
        _write_tar(target, Path(spool), manifest)
    report.bytes = target.stat().st_size
    logger.info("exported %s to %s (%d bytes)", redact_url(store.url), target,
                report.bytes)
    return report


def _spool_member(folder: Path, member: str, records: Iterable[dict],
                  progress: Progress) -> dict[str, Any]:
    file_name = f"{member}.jsonl.gz"
    count = 0
    with open(folder / file_name, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        for record in records:
            packed.write(dumps(record).encode("utf-8") + b"\n")
            count += 1
            if count % PROGRESS_EVERY == 0:
                progress(f"export {member}", count, None)
    progress(f"export {member}", count, count)
    digest, size = _digest_file(folder / file_name)
    return {"name": member, "file": file_name, "count": count, "bytes": size,
            "sha256": digest}


def _digest_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _manifest(store: Any, entries: list[dict], full: bool, filter: str | None,
              experiments: Sequence[str] | None) -> dict[str, Any]:
    from mltrail import __version__

    last = store.backend.audit.last() if full else None
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mltrail_version": __version__,
        "created_at": isoformat(utcnow()),
        "source": {"url": redact_url(store.url),
                   "backend": store.backend.capabilities.name},
        "scope": {"full": full, "filter": filter,
                  "experiments": list(experiments or ())},
        "members": entries,
        "blob_namespaces": list(BLOB_NAMESPACES),
        "audit": {"included": full, "events": 0 if last is None else last.seq,
                  "head_hash": None if last is None else last.hash},
    }


def _write_tar(target: Path, spool: Path, manifest: dict[str, Any]) -> None:
    partial = target.with_name(target.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size = len(data)
            info.mtime = int(utcnow().timestamp())
            tar.addfile(info, io.BytesIO(data))
            for entry in manifest["members"]:
                tar.add(spool / entry["file"], arcname=entry["file"], recursive=False)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise MltrailError(f"cannot write the archive {str(target)!r}: {error}",
                           str(target)) from error


# ----------------------------------------------------------------------
# reading archives
# ----------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest of an archive after checking its format and version."""
    with _open_tar(path) as tar:
        return _manifest_of(tar, path)


def _open_tar(path: str | os.PathLike) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except FileNotFoundError:
        raise ArchiveFormatError(f"archive {str(path)!r} not found",
                                 str(path)) from None
    except (tarfile.TarError, OSError) as error:
        raise ArchiveFormatError(
            f"{str(path)!r} is not an mltrail archive (not a readable tar file: "
            f"{error})", str(path)) from None


def _manifest_of(tar: tarfile.TarFile, path: str | os.PathLike) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise ArchiveFormatError(
            f"{str(path)!r} is not an mltrail archive: its first member is "
            f"{getattr(first, 'name', None)!r}, not {MANIFEST_NAME!r}", str(path))
    if first.size > MAX_MANIFEST_BYTES:
        raise ArchiveFormatError(
            f"the manifest of {str(path)!r} has {first.size} bytes; the maximum is "
            f"{MAX_MANIFEST_BYTES}", first.size)
    try:
        manifest = json.load(tar.extractfile(first))
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveFormatError(f"the manifest of {str(path)!r} is not valid JSON: "
                                 f"{error}", str(path)) from None
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: Any, path: str | os.PathLike) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArchiveFormatError(
            f"{str(path)!r} is not an mltrail archive: the manifest's format is "
            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}",
            str(path))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArchiveFormatError(
            f"archive {str(path)!r} has format version {version!r}, written by mltrail "
            f"{manifest.get('mltrail_version')!r}; this mltrail reads version "
            f"{FORMAT_VERSION}. Restore it with the mltrail version that wrote it",
            version)
    entries = manifest.get("members")
    if not isinstance(entries, list):
        raise ArchiveFormatError(f"the manifest of {str(path)!r} lists no members",
                                 str(path))
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("name") not in MEMBERS or \
                entry.get("file") != f"{entry.get('name')}.jsonl.gz":
            raise ArchiveFormatError(
                f"the manifest of {str(path)!r} lists an unknown member {entry!r}; "
                f"expected members among {', '.join(MEMBERS)}", entry)


def _member_lines(tar: tarfile.TarFile, entry: dict[str, Any],
                  path: str | os.PathLike) -> Iterator[bytes]:
    try:
        info = tar.getmember(entry["file"])
    except KeyError:
        raise ArchiveFormatError(
            f"archive {str(path)!r} lacks member {entry['file']!r} that its manifest "
            "lists", entry["file"]) from None
    if not info.isfile():
        raise ArchiveFormatError(f"member {entry['file']!r} of {str(path)!r} is not a "
                                 "regular file", entry["file"])
    with gzip.GzipFile(fileobj=tar.extractfile(info), mode="rb") as packed:
        yield from packed


def _records(tar: tarfile.TarFile, entry: dict[str, Any],
             path: str | os.PathLike) -> Iterator[dict]:
    for line in _member_lines(tar, entry, path):
        yield json.loads(line)


def _verify(tar: tarfile.TarFile, manifest: dict[str, Any], path: str | os.PathLike,
            progress: Progress) -> None:
    """Check every member's SHA-256 and count and parse every record; write nothing."""
    listed = {MANIFEST_NAME} | {entry["file"] for entry in manifest["members"]}
    extra = sorted(name for name in tar.getnames() if name not in listed)
    if extra:
        raise ArchiveFormatError(
            f"archive {str(path)!r} contains members its manifest does not list: "
            f"{extra}", extra)
    for entry in manifest["members"]:
        _verify_digest(tar, entry, path)
        _verify_records(tar, entry, path, progress)


def _verify_digest(tar: tarfile.TarFile, entry: dict[str, Any],
                   path: str | os.PathLike) -> None:
    try:
        handle: BinaryIO = tar.extractfile(tar.getmember(entry["file"]))
    except KeyError:
        raise ArchiveFormatError(
            f"archive {str(path)!r} lacks member {entry['file']!r} that its manifest "
            "lists", entry["file"]) from None
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    if digest.hexdigest() != entry.get("sha256"):
        raise ArchiveFormatError(
            f"member {entry['file']!r} of archive {str(path)!r} is corrupted: its "
            f"SHA-256 is {digest.hexdigest()}, the manifest says "
            f"{entry.get('sha256')}; nothing was imported", entry["file"])


def _verify_records(tar: tarfile.TarFile, entry: dict[str, Any],
                    path: str | os.PathLike, progress: Progress) -> None:
    count = 0
    try:
        for line in _member_lines(tar, entry, path):
            count += 1
            parse_record(entry["name"], json.loads(line))
            if count % PROGRESS_EVERY == 0:
                progress(f"verify {entry['name']}", count, entry.get("count"))
    except (OSError, EOFError, ValueError, TypeError, KeyError) as error:
        raise ArchiveFormatError(
            f"record {count} of member {entry['file']!r} in {str(path)!r} is invalid: "
            f"{error}; nothing was imported", entry["file"]) from None
    if count != entry.get("count"):
        raise ArchiveFormatError(
            f"member {entry['file']!r} of {str(path)!r} contains {count} records; the "
            f"manifest says {entry.get('count')}", entry["file"])
    progress(f"verify {entry['name']}", count, count)


# ----------------------------------------------------------------------
# import and migration
# ----------------------------------------------------------------------


def import_archive(store: Any, path: str | os.PathLike, *,
                   progress: Progress | None = None) -> ImportReport:
    """Restore an archive into `store`, whatever its backend; idempotent.

    The whole archive is checked first, so a corrupted file or an unknown
    format version is rejected before anything is written. Entities, lineage,
    metric points and blobs keep their ids, timestamps, revisions and seqs.
    The audit chain is copied verbatim only into an empty chain, so that
    `verify_audit` still passes; one `import` event is appended at the end.
    Importing the same archive again adds no data. Needs the admin role in
    every namespace.
    """
    store._authorize(Role.ADMIN, "import", "*")
    progress = progress or no_progress
    with _open_tar(path) as tar:
        manifest = _manifest_of(tar, path)
        _verify(tar, manifest, path, progress)
        restorer = Restorer(store, progress)
        for entry in manifest["members"]:
            restorer.restore(entry["name"], _records(tar, entry, path), entry["count"])
    logger.info("imported archive %s into %s", path, redact_url(store.url))
    return restorer.finish({
        "archive": os.path.basename(os.fspath(path)),
        "source": manifest["source"]["url"],
        "format_version": manifest["format_version"],
        "source_audit": manifest["audit"],
    })


def migrate(source_store: Any, target_store: Any, *,
            progress: Progress | None = None) -> ImportReport:
    """Copy everything from one store to another, of any two backends, without a file.

    The rules are those of `import_archive`: nothing stored is overwritten, the
    audit chain is copied only into an empty chain, and running it again adds
    no data. Needs the admin role in every namespace of both stores.
    """
    source_store._authorize(Role.ADMIN, "export", "*")
    target_store._authorize(Role.ADMIN, "import", "*")
    last = source_store.backend.audit.last()
    restorer = Restorer(target_store, progress)
    for member, records in source_members(source_store, Selection()):
        restorer.restore(member, records)
    logger.info("migrated %s to %s", redact_url(source_store.url),
                redact_url(target_store.url))
    return restorer.finish({
        "source": redact_url(source_store.url),
        "source_audit": {"events": 0 if last is None else last.seq,
                         "head_hash": None if last is None else last.hash},
    })
