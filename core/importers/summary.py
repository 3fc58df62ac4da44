"""Import and export summaries: counts per outcome and kind, skips and notes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Examples kept per (kind, reason) so a source with a million bad lines still
# yields a short summary; the count stays exact.
MAX_EXAMPLES = 5

OUTCOMES = ("created", "updated", "unchanged")


@dataclass(frozen=True)
class Progress:
    """One progress report: `done` of `total` items of `phase` (None: unknown)."""

    phase: str
    done: int
    total: int | None
    item: str | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass
class Occurrence:
    """A skip or note that happened `count` times, with a few source references."""

    kind: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, reference: str | None, count: int = 1) -> None:
        self.count += count
        if reference is not None and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(reference)


@dataclass
class ImportSummary:
    """Counts of what was created, updated, left unchanged and skipped, and why.

    `created`, `updated` and `unchanged` map a kind (experiment, run,
    metric_point, dataset, model, model_version, alias, lineage_node,
    lineage_edge) to a count. A skip leaves something out of the store; a note
    records an adjustment that kept the data, such as a renumbered version.
    With `dry_run`, the counts show what a real import would do.
    """

    format: str
    source: str
    dry_run: bool = False
    created: Counter = field(default_factory=Counter)
    updated: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)
    skips: dict[tuple[str, str], Occurrence] = field(default_factory=dict)
    notes: dict[tuple[str, str], Occurrence] = field(default_factory=dict)

    direction = "import"

    def count(self, outcome: str, kind: str, number: int = 1) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(
                f"outcome {outcome!r} is invalid; expected one of {OUTCOMES}"
            )
        if number:
            getattr(self, outcome)[kind] += number

    def skip(
        self, kind: str, reference: str | None, reason: str, count: int = 1
    ) -> None:
        """Record that `count` items of `kind`, named by `reference`, were left out."""
        self._record(self.skips, kind, reference, reason, count)

    def note(
        self, kind: str, reference: str | None, message: str, count: int = 1
    ) -> None:
        """Record an adjustment made while keeping the item."""
        self._record(self.notes, kind, reference, message, count)

    @staticmethod
    def _record(
        table: dict, kind: str, reference: str | None, message: str, count: int
    ) -> None:
        key = (kind, message)
        if key not in table:
            table[key] = Occurrence(kind, message)
        table[key].add(reference, count)

    @property
    def skipped(self) -> Counter:
        """Kind -> number of items skipped."""
        totals: Counter = Counter()
        for occurrence in self.skips.values():
            totals[occurrence.kind] += occurrence.count
        return totals

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-safe data."""

        def occurrences(table: dict) -> list[dict[str, Any]]:
            return [
                {
                    "kind": o.kind,
                    "message": o.message,
                    "count": o.count,
                    "examples": list(o.examples),
                }
                for o in table.values()
            ]

        return {
            "direction": self.direction,
            "format": self.format,
            "source": self.source,
            "dry_run": self.dry_run,
            "created": dict(self.created),
            "updated": dict(self.updated),
            "unchanged": dict(self.unchanged),
            "skipped": dict(self.skipped),
            "skips": occurrences(self.skips),
            "notes": occurrences(self.notes),
        }

    def render(self) -> str:
        """Return the summary as text for people, one fact per line."""
        verb = "would be" if self.dry_run else "were"
        title = f"{self.direction} of {self.format} data at {self.source}"
        lines = [("dry run: " if self.dry_run else "") + title]
        kinds = sorted({*self.created, *self.updated, *self.unchanged, *self.skipped})
        for kind in kinds:
            parts = [
                f"{self.created[kind]} created",
                f"{self.updated[kind]} updated",
                f"{self.unchanged[kind]} unchanged",
                f"{self.skipped[kind]} skipped",
            ]
            lines.append(f"  {kind}: " + ", ".join(parts))
        if not kinds:
            lines.append(f"  nothing {verb} found to {self.direction}")
        lines.extend(self._render_table("skipped", self.skips))
        lines.extend(self._render_table("notes", self.notes))
        return "\n".join(lines)

    @staticmethod
    def _render_table(title: str, table: dict) -> list[str]:
        if not table:
            return []
        lines = [f"{title}:"]
        for occurrence in table.values():
            examples = ", ".join(occurrence.examples)
            more = occurrence.count - len(occurrence.examples)
            if more > 0 and examples:
                examples += f" and {more} more"
            suffix = f" ({examples})" if examples else ""
            lines.append(
                f"  {occurrence.kind} x{occurrence.count}: {occurrence.message}{suffix}"
            )
        return lines

    def __str__(self) -> str:
        return self.render()


@dataclass
class ExportSummary(ImportSummary):
    """The summary of an export, with the same counts as an import's."""

    direction = "export"


class ProgressReporter:
    """Sends `Progress` reports to an optional callback, phase by phase."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._phase = ""
        self._done = 0
        self._total: int | None = None

    def start(self, phase: str, total: int | None) -> None:
        self._phase, self._done, self._total = phase, 0, total
        self._send(None)

    def advance(self, item: str | None = None) -> None:
        self._done += 1
        self._send(item)

    def _send(self, item: str | None) -> None:
        if self._callback is not None:
            self._callback(Progress(self._phase, self._done, self._total, item))
