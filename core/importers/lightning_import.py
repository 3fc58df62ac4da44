"""Import PyTorch Lightning CSVLogger output: `<name>/version_<n>/metrics.csv`.

Every folder that contains `metrics.csv` or `hparams.yaml` is one run. Its
parent folder names the experiment (Lightning's logger `name`), unless versions
sit directly in the import folder, which then names it. Version numbers may
have gaps, and a version may be any folder name.

`metrics.csv` has one row per logging call, with a `step` column and one column
per metric. A row leaves the metrics it did not log empty. Releases differ in
column order (insertion order before 2.x, sorted since), so columns are read by
name. Values are read with float(), as written by csv.DictWriter from Python
floats, so every digit, `nan` and `inf` survive.

The logger records no times or status: points take the file's modification time,
the run's times come from file modification times, and the run is completed.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrail.domain import MetricPoint, RunStatus
from mltrail.errors import InvalidInputError
from mltrail.importers.source import SourceTree
from mltrail.importers.values import derive_id, parse_float, parse_step
from mltrail.importers.writer import ImportWriter
from mltrail.importers.yamlsafe import load_yaml

FORMAT = "lightning"
METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
STEP_COLUMN = "step"


def import_lightning(tree: SourceTree, writer: ImportWriter) -> None:
    folders = _version_folders(tree)
    writer.progress.start("runs", len(folders))
    for folder in folders:
        reference = tree.relative(folder)
        with writer.guard("run", reference):
            _import_version(tree, writer, folder, reference)
        writer.progress.advance(reference)


def _version_folders(tree: SourceTree) -> list[Path]:
    names = (METRICS_FILE, HPARAMS_FILE)
    found = {tree.root} if any(tree.is_file(tree.root / n) for n in names) else set()
    for key, path in tree.files(tree.root):
        if path.name in names:
            found.add(path.parent)
    return sorted(found, key=_version_order)


def _version_order(folder: Path) -> tuple:
    suffix = folder.name.removeprefix("version_")
    number = int(suffix) if suffix.isdigit() else -1
    return (str(folder.parent), number, folder.name)


def _import_version(
    tree: SourceTree, writer: ImportWriter, folder: Path, reference: str
) -> None:
    experiment_name = _experiment_name(tree, folder)
    metrics_path = folder / METRICS_FILE
    hparams_path = folder / HPARAMS_FILE
    has_metrics = tree.is_file(metrics_path)
    fingerprint = _first_row(tree, metrics_path) if has_metrics else ""
    times = [
        tree.modified_at(p) for p in (hparams_path, metrics_path) if tree.is_file(p)
    ]

    experiment_id = writer.experiment(
        id=derive_id("lightning-exp", experiment_name),
        name=experiment_name,
        reference=reference,
        tags=writer.source_tags(experiment_name),
        created_at=min(times),
    )
    if experiment_id is None:
        return

    result = writer.run(
        id=derive_id("lightning-run", experiment_name, folder.name, fingerprint),
        experiment_id=experiment_id,
        name=folder.name,
        status=RunStatus.COMPLETED,
        reference=reference,
        created_at=min(times),
        start_time=min(times),
        end_time=max(times),
        params=_hparams(tree, writer, hparams_path, reference),
        tags={
            **writer.source_tags(f"{experiment_name}/{folder.name}"),
            "lightning.version": folder.name,
        },
        artifact_uris={"log_dir": folder.as_uri()},
    )
    if result is None or not has_metrics:
        return

    run_id, created = result
    reader = CsvMetricReader(tree, metrics_path, run_id, tree.modified_at(metrics_path))
    writer.metric_points(run_id, METRICS_FILE, reader, run_created=created)
    reader.report(writer.summary, f"{reference}/{METRICS_FILE}")


def _experiment_name(tree: SourceTree, folder: Path) -> str:
    """Return the logger name: the folder above the version folder."""
    if folder == tree.root:
        return folder.parent.name or folder.name
    if folder.parent == tree.root:
        return tree.root.name
    return folder.parent.name


def _first_row(tree: SourceTree, path: Path) -> str:
    """Return the first row's logged cells, which identify a run across imports.

    Lightning rewrites the whole file with a wider header when a new metric
    appears, so the header and the row's empty cells are left out.
    """
    with tree.open_text(path) as handle:
        row = next(csv.DictReader(handle), None)
    if row is None:
        return ""
    cells = sorted((str(k), str(v)) for k, v in row.items() if v not in (None, ""))
    return ";".join(f"{k}={v}" for k, v in cells)


def _hparams(
    tree: SourceTree, writer: ImportWriter, path: Path, reference: str
) -> dict[str, Any]:
    if not tree.is_file(path):
        return {}
    data = load_yaml(tree.read_text(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        return {"hparams": writer.plain(data, "params", reference)}
    return writer.plain(data, "params", reference)


class CsvMetricReader:
    """Reads metrics.csv into points; callable again for a fresh pass."""

    def __init__(
        self, tree: SourceTree, path: Path, run_id: str, timestamp: datetime
    ) -> None:
        self.tree, self.path, self.run_id, self.timestamp = (
            tree,
            path,
            run_id,
            timestamp,
        )
        self.problems: list[tuple[str, str]] = []

    def __call__(self) -> Iterator[MetricPoint]:
        self.problems = []
        return self._points()

    def _points(self) -> Iterator[MetricPoint]:
        with self.tree.open_text(self.path) as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                return
            keys = [name for name in reader.fieldnames if name and name != STEP_COLUMN]
            for number, row in enumerate(reader, 2):
                yield from self._row(row, keys, number, number - 2)

    def _row(
        self, row: dict[str, Any], keys: list[str], line: int, index: int
    ) -> Iterator[MetricPoint]:
        if None in row:
            self.problems.append((f"line {line}", "row has more cells than the header"))
        try:
            cell = row.get(STEP_COLUMN)
            step = parse_step(cell, "step") if cell else index
        except InvalidInputError as problem:
            self.problems.append((f"line {line}", " ".join(str(problem).split())))
            return
        for key in keys:
            text = row.get(key)
            if text is None or text == "":
                continue  # a sparse row: this metric was not logged at this step
            try:
                yield MetricPoint(
                    run_id=self.run_id,
                    key=key,
                    value=parse_float(text, f"{key} value"),
                    step=step,
                    timestamp=self.timestamp,
                ).validate()
            except InvalidInputError as problem:
                self.problems.append((f"line {line}", " ".join(str(problem).split())))

    def report(self, summary: Any, reference: str) -> None:
        for where, problem in self.problems:
            summary.skip("metric_point", f"{reference} {where}", problem)
