"""Read access to the folder being imported that never leaves it.

Every path is resolved, symbolic links included, before it is opened. A path
whose target lies outside the import root is rejected, and the importer skips
and reports it. So a symlink planted in a source tree cannot make an import read
files elsewhere on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from mltrail.errors import InvalidInputError, NotFoundError
from mltrail.importers.summary import ImportSummary

# Largest single file read into memory (YAML, JSON, params, tags). Histories
# are streamed line by line and have no such limit.
MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024


class PathEscapeError(InvalidInputError):
    """A path inside the import folder resolves to a location outside it."""


class SourceTree:
    """The import root and safe ways to list and read what lies under it.

    The root may be a folder or a single file. Listing methods leave out and
    report entries that escape the root; reading methods raise PathEscapeError.
    """

    def __init__(self, root: str | os.PathLike, summary: ImportSummary) -> None:
        given = Path(root).expanduser()
        if not given.exists():
            raise NotFoundError(
                f"import path {str(given)!r} does not exist; pass an "
                "existing folder or file",
                str(given),
            )
        self.root = given.resolve(strict=True)
        self.summary = summary
        # Escaping links already reported; folders may be listed more than once.
        self._reported: set[Path] = set()

    def relative(self, path: Path) -> str:
        """Return `path` relative to the root, in POSIX form, for messages and ids."""
        try:
            text = path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)
        return text if text != "." else self.root.name

    def check(self, path: Path) -> Path:
        """Return the resolved `path`; raise PathEscapeError when it leaves the root."""
        resolved = path.resolve(strict=False)
        if resolved != self.root and self.root not in resolved.parents:
            raise PathEscapeError(
                f"{self.relative(path)!r} resolves to {str(resolved)!r}, outside the "
                f"import folder {str(self.root)!r}; remove the link or import the "
                "target folder itself",
                str(path),
            )
        return resolved

    def _admit(self, path: Path) -> Path | None:
        try:
            return self.check(path)
        except PathEscapeError:
            if path not in self._reported:
                self._reported.add(path)
                target = path.resolve(strict=False)
                self.summary.skip(
                    "path",
                    f"{self.relative(path)} -> {target}",
                    "symbolic link leads outside the import folder",
                )
            return None

    def children(self, directory: Path) -> list[Path]:
        """Return the entries of `directory` that stay inside the root, sorted by name.

        Entries are listed under the resolved `directory`; a link whose target is
        inside the root is kept and followed when read.
        """
        resolved = self.check(directory)
        if not resolved.is_dir():
            return []
        kept = []
        for entry in sorted(resolved.iterdir(), key=lambda p: p.name):
            if entry.is_symlink() and self._admit(entry) is None:
                continue
            kept.append(entry)
        return kept

    def subdirectories(self, directory: Path) -> list[Path]:
        return [p for p in self.children(directory) if self.check(p).is_dir()]

    def files(self, directory: Path) -> Iterator[tuple[str, Path]]:
        """Yield (key, path) for every file under `directory`, recursively, sorted.

        The key is the POSIX path relative to `directory`, so a file
        `params/opt/lr` yields key `opt/lr`. Linked folders are followed once
        inside the root, which stops link loops.
        """
        start = self.check(directory)
        if not start.is_dir():
            return
        yield from self._walk(directory, "", {start})

    def _walk(
        self, directory: Path, prefix: str, seen: set[Path]
    ) -> Iterator[tuple[str, Path]]:
        for entry in self.children(directory):
            resolved = self.check(entry)
            key = f"{prefix}{entry.name}"
            if resolved.is_dir():
                if resolved in seen:
                    self.summary.skip(
                        "path",
                        self.relative(entry),
                        "folder link loops back to a folder already read",
                    )
                    continue
                yield from self._walk(entry, key + "/", seen | {resolved})
            elif resolved.is_file():
                yield key, entry

    def is_file(self, path: Path) -> bool:
        try:
            return self.check(path).is_file()
        except PathEscapeError:
            return False

    def is_dir(self, path: Path) -> bool:
        try:
            return self.check(path).is_dir()
        except PathEscapeError:
            return False

    def read_bytes(self, path: Path) -> bytes:
        resolved = self.check(path)
        if not resolved.is_file():
            raise InvalidInputError(
                f"{self.relative(path)!r} is not a regular file", str(path)
            )
        size = resolved.stat().st_size
        if size > MAX_TEXT_FILE_BYTES:
            raise InvalidInputError(
                f"{self.relative(path)!r} has {size} bytes; a file read whole may have "
                f"at most {MAX_TEXT_FILE_BYTES}",
                size,
            )
        return resolved.read_bytes()

    def read_text(self, path: Path) -> str:
        """Return a file's text, decoded as UTF-8 with newlines kept exactly."""
        return self.read_bytes(path).decode("utf-8")

    def open_text(self, path: Path) -> IO[str]:
        """Open a file for streaming, as UTF-8 text with newlines kept exactly."""
        resolved = self.check(path)
        if not resolved.is_file():
            raise InvalidInputError(
                f"{self.relative(path)!r} is not a regular file", str(path)
            )
        return open(resolved, encoding="utf-8", newline="")

    def modified_at(self, path: Path) -> datetime:
        """Return the file's modification time in UTC."""
        return datetime.fromtimestamp(self.check(path).stat().st_mtime, timezone.utc)
