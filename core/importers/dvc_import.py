"""Import a DVC project: dvc.lock, params and DVCLive output.

The project's current state is one run, because DVC keeps other experiments in
git, which is not read. Its params come from `params.yaml` with the values that
`dvc.lock` recorded for each stage. Its metrics come from DVCLive's per-metric
`.tsv` histories and `metrics.json` summary, and its lineage from the lock's
stages.
A folder without a project marker is searched one level down, so a folder of
checked-out experiment workspaces imports as one run each.

`dvc.lock` comes in two schemas: DVC 1.x writes the stages at the top level,
DVC 2.0 and later write `schema: '2.0'` and a `stages` mapping. Both are read
with YAML 1.2 rules, as DVC reads them. Each stage becomes a pipeline lineage
node; each dep and out becomes a dataset versioned by its hash, which the
pipeline consumed or produced. A change of `dvc.lock` or of a params file makes
a new run; a growing metric history updates the same run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrail.domain import EdgeType, MetricPoint, NodeKind, RunStatus
from mltrail.errors import InvalidInputError
from mltrail.importers.source import SourceTree
from mltrail.importers.values import (
    derive_id,
    digest,
    from_millis,
    parse_float,
    parse_step,
)
from mltrail.importers.writer import ImportWriter
from mltrail.importers.yamlsafe import load_yaml

FORMAT = "dvc"
MARKERS = ("dvc.lock", "dvc.yaml", "params.yaml", ".dvc")
# Folders never searched for DVCLive output.
IGNORED_FOLDERS = frozenset(
    {".git", ".dvc", "node_modules", ".venv", "venv", "__pycache__"}
)
MAX_SEARCH_DEPTH = 4
# Hash fields of a lock entry, by precedence. An `md5` without `hash: md5`
# beside it is DVC 2's MD5 of the text with Windows line endings made Unix ones.
HASH_FIELDS = ("md5", "etag", "checksum")


def import_dvc(tree: SourceTree, writer: ImportWriter) -> None:
    projects = _projects(tree)
    if not projects:
        raise InvalidInputError(
            f"{str(tree.root)!r} contains no DVC project: expected dvc.lock, dvc.yaml, "
            "params.yaml or DVCLive output in it or in a folder directly below it",
            str(tree.root),
        )
    writer.progress.start("projects", len(projects))
    for folder in projects:
        reference = tree.relative(folder)
        with writer.guard("run", reference):
            DvcProject(tree, writer, folder, reference).write()
        writer.progress.advance(reference)


def _is_project(tree: SourceTree, folder: Path) -> bool:
    """Tell whether `folder` contains a DVC marker or DVCLive output directly."""
    return any(
        tree.is_file(folder / m) or tree.is_dir(folder / m) for m in MARKERS
    ) or any(_is_live_folder(tree, child) for child in tree.subdirectories(folder))


def _projects(tree: SourceTree) -> list[Path]:
    if _is_project(tree, tree.root):
        return [tree.root]
    return [
        p
        for p in tree.subdirectories(tree.root)
        if p.name not in IGNORED_FOLDERS and _is_project(tree, p)
    ]


def _live_folders(tree: SourceTree, project: Path) -> list[Path]:
    """Return the DVCLive output folders under `project`, nearest first."""
    found: list[Path] = []

    def search(folder: Path, depth: int) -> None:
        for child in tree.subdirectories(folder):
            if child.name in IGNORED_FOLDERS:
                continue
            if _is_live_folder(tree, child):
                found.append(child)
            elif depth < MAX_SEARCH_DEPTH:
                search(child, depth + 1)

    search(project, 1)
    return found


def _is_live_folder(tree: SourceTree, folder: Path) -> bool:
    return (
        tree.is_dir(folder / "plots" / "metrics")
        or tree.is_dir(folder / "scalars")
        or (
            folder.name == "dvclive"
            and (
                tree.is_file(folder / "metrics.json")
                or any(p.suffix == ".tsv" for p in tree.children(folder))
            )
        )
    )


@dataclass
class Stage:
    name: str
    cmd: Any
    deps: list[dict[str, Any]] = field(default_factory=list)
    outs: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


class DvcProject:
    """One project folder, read and written as one run with its lineage."""

    def __init__(
        self, tree: SourceTree, writer: ImportWriter, folder: Path, reference: str
    ) -> None:
        self.tree, self.writer, self.folder, self.reference = (
            tree,
            writer,
            folder,
            reference,
        )
        self.summary = writer.summary
        self.name = folder.name
        self.lock_schema, self.stages = self._read_lock()
        self.live_folders = _live_folders(tree, folder)

    def _read_text(self, relative: str | Path) -> str | None:
        path = self.folder / relative
        return self.tree.read_text(path) if self.tree.is_file(path) else None

    def _read_yaml(self, relative: str | Path) -> Any:
        text = self._read_text(relative)
        return None if text is None else load_yaml(text, yaml12=True)

    # ------------------------------------------------------------------
    # dvc.lock
    # ------------------------------------------------------------------

    def _read_lock(self) -> tuple[str | None, list[Stage]]:
        data = self._read_yaml("dvc.lock")
        if data is None:
            return None, []
        if not isinstance(data, dict):
            raise InvalidInputError("dvc.lock does not hold a mapping", self.reference)
        if "schema" in data or isinstance(data.get("stages"), dict):
            schema = str(data.get("schema", "2.0"))
            if schema != "2.0":
                self.summary.note(
                    "run",
                    self.reference,
                    f"dvc.lock schema {schema!r} is not 2.0; read as 2.0",
                )
            raw_stages = data.get("stages") or {}
            if data.get("datasets"):
                self.summary.skip(
                    "dataset",
                    f"{self.reference}/dvc.lock datasets",
                    "DVC dataset entries of dvc.lock are not carried",
                )
        else:
            schema, raw_stages = "1.0", data
        stages = []
        for name, body in raw_stages.items():
            if not isinstance(body, dict):
                self.summary.skip(
                    "stage", f"{self.reference} {name}", "stage entry is not a mapping"
                )
                continue
            stages.append(
                Stage(
                    str(name),
                    body.get("cmd"),
                    _entries(body.get("deps")),
                    _entries(body.get("outs")),
                    body.get("params") or {},
                )
            )
        return schema, stages

    # ------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------

    def write(self) -> None:
        lock_text = self._read_text("dvc.lock") or ""
        params_text = self._read_text("params.yaml") or ""
        live_params = [
            self._read_text(p / "params.yaml") or "" for p in self.live_folders
        ]
        fingerprint = digest(lock_text, params_text, *live_params)
        times = self._times()

        experiment_id = self.writer.experiment(
            id=derive_id("dvc-exp", self.name),
            name=self.name,
            reference=self.reference,
            tags=self.writer.source_tags(self.name),
            created_at=times[0],
        )
        if experiment_id is None:
            return

        datasets = self._write_datasets()
        tags = {**self.writer.source_tags(f"{self.name}@{fingerprint}")}
        if self.lock_schema:
            tags["dvc.lock.schema"] = self.lock_schema
        result = self.writer.run(
            id=derive_id("dvc-run", self.name, fingerprint),
            experiment_id=experiment_id,
            name=f"{self.name}-{fingerprint[:7]}",
            status=RunStatus.COMPLETED,
            reference=self.reference,
            created_at=times[0],
            start_time=times[0],
            end_time=times[1],
            params=self._params(),
            tags=tags,
            code_version=self._git(),
            dataset_ids=self._external_inputs(datasets),
            artifact_uris={"workspace": self.folder.as_uri()},
        )
        if result is None:
            return

        run_id, created = result
        self._write_lineage(run_id, datasets)
        self._write_metrics(run_id, created)

    def _external_inputs(self, datasets: dict[tuple[str, str], str]) -> list[str]:
        """Return the deps no stage produces: what the whole run consumed."""
        produced = {out["path"] for stage in self.stages for out in stage.outs}
        keys = [
            (dep["path"], _hash(dep)[1])
            for stage in self.stages
            for dep in stage.deps
            if dep["path"] not in produced
        ]
        return [datasets[key] for key in dict.fromkeys(keys) if key in datasets]

    def _times(self) -> tuple[datetime, datetime]:
        """Return (start, end): DVCLive's metric timestamps, else file times."""
        stamps: list[datetime] = []
        for live in self.live_folders:
            for name, path in self._histories(live):
                times = [
                    p.timestamp
                    for p in TsvMetricReader(self.tree, path, "times", name)()
                ]
                stamps += [min(times), max(times)] if times else []
        files = [self.folder / n for n in ("params.yaml", "dvc.lock", "dvc.yaml")]
        stamps += [self.tree.modified_at(p) for p in files if self.tree.is_file(p)]
        if not stamps:
            stamps = [self.tree.modified_at(self.folder)]
        return min(stamps), max(stamps)

    def _params(self) -> dict[str, Any]:
        params = self._read_yaml("params.yaml") or {}
        if not isinstance(params, dict):
            params = {"params.yaml": params}
        params = self.writer.plain(params, "params", self.reference)
        for stage in self.stages:
            for file_name, values in stage.params.items():
                for key, value in (values or {}).items():
                    self._set_locked_param(
                        params, str(file_name), str(key), value, stage
                    )
        for live in self.live_folders:
            logged = self._read_yaml(live / "params.yaml")
            if logged is None:
                continue
            name = (
                "dvclive"
                if len(self.live_folders) == 1
                else f"dvclive:{live.relative_to(self.folder).as_posix()}"
            )
            if name in params:
                self.summary.skip(
                    "params",
                    f"{self.reference} {name}",
                    "params.yaml already has a key named like the DVCLive params",
                )
                continue
            params[name] = self.writer.plain(logged, "params", self.reference)
        return params

    def _set_locked_param(
        self, params: dict[str, Any], file_name: str, key: str, value: Any, stage: Stage
    ) -> None:
        """Put a value dvc.lock recorded at its dotted key; the lock's value wins."""
        node = (
            params if file_name == "params.yaml" else params.setdefault(file_name, {})
        )
        path = key.split(".")
        for segment in path[:-1]:
            child = node.get(segment)
            if not isinstance(child, dict):
                child = node[segment] = {}
            node = child
        value = self.writer.plain(value, "params", self.reference)
        if path[-1] in node and node[path[-1]] != value:
            self.summary.note(
                "params",
                f"{self.reference} {file_name}:{key}",
                "params file differs from the value dvc.lock recorded for "
                f"stage {stage.name!r}; the recorded value is used",
            )
        node[path[-1]] = value

    def _git(self) -> dict[str, Any]:
        """Return the checked-out commit and branch from .git inside the project."""
        head = self._read_text(".git/HEAD")
        if head is None:
            return {}
        head = head.strip()
        if not head.startswith("ref: "):
            return {"git_commit": head}
        ref = head[len("ref: ") :]
        commit = self._read_text(f".git/{ref}")
        if commit is None:
            packed = self._read_text(".git/packed-refs") or ""
            commit = next(
                (
                    line.split()[0]
                    for line in packed.splitlines()
                    if line.endswith(" " + ref)
                ),
                None,
            )
        branch = ref.removeprefix("refs/heads/")
        return (
            {"git_commit": commit.strip(), "branch": branch}
            if commit
            else {"branch": branch}
        )

    # ------------------------------------------------------------------
    # lineage
    # ------------------------------------------------------------------

    def _write_datasets(self) -> dict[tuple[str, str], str]:
        """Register every dep and out; return (path, hash) -> dataset id."""
        ids: dict[tuple[str, str], str] = {}
        for stage in self.stages:
            for entry in stage.deps + stage.outs:
                algorithm, value = _hash(entry)
                key = (entry["path"], value)
                if key in ids:
                    continue
                reference = f"{self.reference} {stage.name} {entry['path']}"
                with self.writer.guard("dataset", reference):
                    provenance = {
                        k: entry[k]
                        for k in ("size", "nfiles", "version_id")
                        if k in entry
                    }
                    provenance["source"] = entry["path"]
                    stored = self.writer.dataset(
                        id=derive_id("dvc-data", entry["path"], value),
                        name=entry["path"],
                        version=value,
                        reference=reference,
                        source_uri=entry["path"],
                        content_hash=f"{algorithm}:{value}" if algorithm else None,
                        provenance=provenance,
                        tags=self.writer.source_tags(f"{entry['path']}@{value}"),
                    )
                    if stored is not None:
                        ids[key] = stored
        return ids

    def _write_lineage(self, run_id: str, datasets: dict[tuple[str, str], str]) -> None:
        for stage in self.stages:
            reference = f"{self.reference} {stage.name}"
            node_id = derive_id("dvc-stage", self.name, stage.name)
            with self.writer.guard("lineage_node", reference):
                self.writer.node(
                    node_id, NodeKind.PIPELINE, f"{self.name}:{stage.name}", reference
                )
            for entry, edge_type in [(d, EdgeType.CONSUMED) for d in stage.deps] + [
                (o, EdgeType.PRODUCED) for o in stage.outs
            ]:
                dataset_id = datasets.get((entry["path"], _hash(entry)[1]))
                if dataset_id is None:
                    continue
                with self.writer.guard("lineage_edge", reference):
                    self.writer.edge(node_id, edge_type, dataset_id, reference)
                    if edge_type == EdgeType.PRODUCED:
                        self.writer.edge(
                            run_id, EdgeType.PRODUCED, dataset_id, reference
                        )

    # ------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------

    def _histories(self, live: Path) -> Iterator[tuple[str, Path]]:
        """Yield (metric name, .tsv path) in the layouts DVCLive releases wrote."""
        for subfolder in ("plots/metrics", "scalars"):
            base = live / subfolder
            if self.tree.is_dir(base):
                for key, path in self.tree.files(base):
                    if key.endswith(".tsv"):
                        yield key[: -len(".tsv")], path
                return
        for path in self.tree.children(live):
            if path.suffix == ".tsv" and self.tree.is_file(path):
                yield path.stem, path

    def _write_metrics(self, run_id: str, created: bool) -> None:
        for live in self.live_folders:
            prefix = (
                ""
                if len(self.live_folders) == 1
                else f"{live.relative_to(self.folder).as_posix()}/"
            )
            with_history = set()
            for name, path in self._histories(live):
                reference = self.tree.relative(path)
                reader = TsvMetricReader(self.tree, path, run_id, prefix + name)
                with self.writer.guard("metric", reference):
                    self.writer.metric_points(
                        run_id, self.tree.relative(path), reader, run_created=created
                    )
                reader.report(self.summary, reference)
                with_history.add(name)
            self._write_summary(live, run_id, created, prefix, with_history)

    def _write_summary(
        self,
        live: Path,
        run_id: str,
        created: bool,
        prefix: str,
        with_history: set[str],
    ) -> None:
        """Log summary values that have no history as one point each."""
        path = live / "metrics.json"
        if not self.tree.is_file(path):
            # Older DVCLive releases wrote the summary beside the folder.
            path = live.parent / f"{live.name}.json"
            if not self.tree.is_file(path):
                return
        try:
            summary = json.loads(self.tree.read_text(path))
        except ValueError as error:
            self.summary.skip(
                "metric", self.tree.relative(path), f"invalid JSON: {error}"
            )
            return
        if not isinstance(summary, dict):
            return
        step = summary.get("step", 0)
        when = self.tree.modified_at(path)
        points = []
        for name, value in _leaves(summary):
            if name == "step" or name in with_history:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.summary.skip(
                    "metric_point",
                    f"{self.tree.relative(path)} {name}",
                    "summary value is not a number",
                )
                continue
            with self.writer.guard(
                "metric_point", f"{self.tree.relative(path)} {name}"
            ):
                points.append(
                    MetricPoint(
                        run_id=run_id,
                        key=prefix + name,
                        value=value,
                        step=step,
                        timestamp=when,
                    ).validate()
                )
        if points:
            self.writer.metric_points(
                run_id,
                self.tree.relative(path),
                lambda: iter(points),
                run_created=created,
            )


class TsvMetricReader:
    """Reads one DVCLive history: tab-separated `[timestamp] step <name>` rows."""

    def __init__(self, tree: SourceTree, path: Path, run_id: str, key: str) -> None:
        self.tree, self.path, self.run_id, self.key = tree, path, run_id, key
        self.problems: list[tuple[str, str]] = []

    def __call__(self) -> Iterator[MetricPoint]:
        self.problems = []
        return self._points()

    def _points(self) -> Iterator[MetricPoint]:
        modified = self.tree.modified_at(self.path)
        with self.tree.open_text(self.path) as handle:
            rows = csv.reader(handle, delimiter="\t")
            header = next(rows, None)
            if not header:
                return
            value_column = next(
                (
                    i
                    for i in range(len(header) - 1, -1, -1)
                    if header[i] not in ("timestamp", "step")
                ),
                None,
            )
            if value_column is None or "step" not in header:
                self.problems.append(("header", "header lacks a step or value column"))
                return
            step_column = header.index("step")
            time_column = header.index("timestamp") if "timestamp" in header else None
            for number, row in enumerate(rows, 2):
                if not row:
                    continue
                try:
                    yield self._point(
                        row, step_column, time_column, value_column, modified
                    )
                except (InvalidInputError, IndexError) as problem:
                    self.problems.append(
                        (f"line {number}", " ".join(str(problem).split()))
                    )

    def _point(
        self,
        row: list[str],
        step_column: int,
        time_column: int | None,
        value_column: int,
        modified: datetime,
    ) -> MetricPoint:
        when = (
            modified
            if time_column is None
            else from_millis(parse_step(row[time_column], "timestamp"), "timestamp")
        )
        return MetricPoint(
            run_id=self.run_id,
            key=self.key,
            value=parse_float(row[value_column], "value"),
            step=parse_step(row[step_column], "step"),
            timestamp=when,
        ).validate()

    def report(self, summary: Any, reference: str) -> None:
        for where, problem in self.problems:
            summary.skip("metric_point", f"{reference} {where}", problem)


def _entries(value: Any) -> list[dict[str, Any]]:
    """Return lock entries that name a path; DVC 1.x may list bare path strings."""
    entries = []
    for item in value or []:
        if isinstance(item, str):
            entries.append({"path": item})
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            entries.append(item)
    return entries


def _hash(entry: dict[str, Any]) -> tuple[str | None, str]:
    """Return (algorithm, value) of a lock entry; ("", "unhashed") when it has none."""
    for name in HASH_FIELDS:
        if entry.get(name):
            if name == "md5" and entry.get("hash") != "md5":
                return "md5-dos2unix", str(entry[name])
            return name, str(entry[name])
    return None, "unhashed"


def _leaves(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (name, value) of a summary; DVCLive nests `a/b` as {"a": {"b": ..}}."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, name + "/")
        else:
            yield name, value
