"""The jsondir backend: an mltrail store kept as JSON files in one folder.

URL: `jsondir:///absolute/path/to/folder`, or `jsondir://relative/path`
relative to the working directory. `~` is expanded and percent-escapes are
decoded. The folder is created on first use. See `mltrail_jsondir.layout` for
what goes where.

Several processes on one machine may use a store at once: uniqueness checks,
compare-and-set updates, audit appends and latest-value updates run under
`fcntl.flock` locks, and every document is replaced atomically. `flock` is not
reliable on network filesystems such as NFS, so keep the folder on a local disk.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from mltrail import limits
from mltrail.backend import Backend, Capabilities
from mltrail.domain import Dataset, Experiment, Model, ModelVersion, Run
from mltrail.errors import InvalidInputError

from mltrail_jsondir.audit import JsonDirAuditRepository
from mltrail_jsondir.blobs import JsonDirBlobRepository
from mltrail_jsondir.entities import JsonDirEntityRepository
from mltrail_jsondir.files import JsonFiles, translated
from mltrail_jsondir.layout import FORMAT_NAME, LAYOUT_VERSION, Layout
from mltrail_jsondir.lineage import JsonDirLineageRepository
from mltrail_jsondir.metrics import JsonDirMetricRepository

if TYPE_CHECKING:
    from mltrail_jsondir.harness import JsonDirConformanceHarness

SCHEME = "jsondir"

# Top-level names that this backend creates. A folder that contains only these
# (and hidden temporary files) is a store that another process is creating.
_LAYOUT_NAMES = {"jsondir.json", "entities", "unique", "metrics", "lineage", "audit",
                 "blobs", "locks"}


class JsonDirBackend(Backend):
    """An mltrail store kept as a folder of JSON documents."""

    schemes = (SCHEME,)

    def __init__(self, folder: str | os.PathLike) -> None:
        self.root = Path(folder).expanduser().resolve()
        self.layout = Layout(self.root)
        self.files = JsonFiles(self.root)
        self.experiments = JsonDirEntityRepository(self.files, self.layout, Experiment)
        self.runs = JsonDirEntityRepository(self.files, self.layout, Run)
        self.datasets = JsonDirEntityRepository(self.files, self.layout, Dataset)
        self.models = JsonDirEntityRepository(self.files, self.layout, Model)
        self.model_versions = JsonDirEntityRepository(self.files, self.layout,
                                                      ModelVersion)
        self.metrics = JsonDirMetricRepository(self.files, self.layout)
        self.lineage = JsonDirLineageRepository(self.files, self.layout)
        self.audit = JsonDirAuditRepository(self.files, self.layout)
        self.blobs = JsonDirBlobRepository(self.files, self.layout)

    @classmethod
    def from_url(cls, url: str) -> JsonDirBackend:
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            raise InvalidInputError(
                f"not a jsondir store URL: {url!r}; expected jsondir:///path/to/folder",
                url)
        if parts.query or parts.fragment:
            raise InvalidInputError(
                f"jsondir store URL {url!r} has a query or fragment, but the backend "
                "takes no options; remove the part from '?' or '#' on", url)
        folder = unquote(parts.netloc + parts.path)
        if not folder:
            raise InvalidInputError(
                f"jsondir store URL {url!r} names no folder; expected "
                "jsondir:///path/to/folder", url)
        return cls(folder)

    @classmethod
    def conformance_harness(cls, url: str) -> JsonDirConformanceHarness:
        """Return the harness that runs the conformance suite on stores under `url`."""
        from mltrail_jsondir.harness import JsonDirConformanceHarness

        return JsonDirConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=SCHEME,
            # Scans read every document of a kind, and the core filters and sorts.
            pushdown_operators=frozenset(),
            native_order_fields=frozenset(),
            # No write spans several documents atomically, but each document
            # supports compare-and-set on its revision.
            transactions=False,
            conditional_writes=True,
            # A document is one file, so only the filesystem limits its size.
            max_item_bytes=sys.maxsize,
            max_batch_size=limits.MAX_METRIC_BATCH,
            persistent=True,
            multi_process=True,
            extra={"layout_version": LAYOUT_VERSION},
        )

    @property
    def url(self) -> str:
        return f"{SCHEME}://{quote(str(self.root))}"

    def telemetry_counters(self) -> dict[str, int]:
        """Return files written or removed, and bytes written, since this backend opened.

        `mltrail stats` reports them as items and bytes per logical write.
        """
        return self.files.counters.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Return the bytes on disk under each top-level folder of the store.

        Lock files count under `locks`; the store keeps no separate indexes, so
        the unique-key documents count as the `unique` collection.
        """
        collections = self.files.usage()
        return {"collections": collections,
                "total_bytes": sum(f["bytes"] for f in collections.values()),
                "method": "file_sizes"}

    def initialize(self) -> None:
        """Create the store folder and its marker file, or check an existing store."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(
                f"jsondir store path {str(self.root)!r} is a file; give a folder",
                str(self.root))
        with translated("create", self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        marker = self.files.read(self.layout.marker)
        if marker is not None:
            self._check_marker(marker)
            return
        foreign = set(self.files.names(self.root)) - _LAYOUT_NAMES
        if foreign:
            raise InvalidInputError(
                f"folder {str(self.root)!r} is not empty and is not a jsondir store: "
                f"it has no jsondir.json but contains {sorted(foreign)[:3]}; choose a "
                "new or empty folder", str(self.root))
        self._check_case_sensitive()
        self.files.write(self.layout.marker,
                         {"format": FORMAT_NAME, "layout_version": LAYOUT_VERSION})

    def _check_marker(self, marker: object) -> None:
        found = marker.get("format") if isinstance(marker, dict) else None
        if found != FORMAT_NAME:
            raise InvalidInputError(
                f"{str(self.layout.marker)!r} names format {found!r}, not "
                f"{FORMAT_NAME!r}, so the folder belongs to another program; choose "
                "another folder", str(self.root))
        version = marker.get("layout_version")
        if not isinstance(version, int) or version > LAYOUT_VERSION:
            raise InvalidInputError(
                f"jsondir store {str(self.root)!r} has layout version {version!r}, but "
                f"this mltrail-jsondir reads up to {LAYOUT_VERSION}; upgrade "
                "mltrail-jsondir", version)

    def _check_case_sensitive(self) -> None:
        """Reject folders where `a.json` and `A.json` are the same file.

        Ids are used as file names and may differ only in case.
        """
        probe = self.root / f".case-probe-{uuid.uuid4().hex}-a"
        with translated("create", probe):
            probe.touch()
            try:
                folded = probe.with_name(probe.name[:-1] + "A").exists()
            finally:
                probe.unlink()
        if folded:
            raise InvalidInputError(
                f"folder {str(self.root)!r} is on a case-insensitive filesystem, where "
                "ids that differ only in case would share a file; choose a folder on a "
                "case-sensitive filesystem", str(self.root))
