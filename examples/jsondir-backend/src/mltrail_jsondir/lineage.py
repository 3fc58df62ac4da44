"""Lineage nodes and edges: a folder per node, with each edge stored at both ends.

An edge is written into the `downstream` folder of its upstream node and into
the `upstream` folder of its downstream node, so a one-hop lookup in either
direction lists one folder. All writes take the lineage lock.
"""

from __future__ import annotations

from typing import Iterator

from mltrail.backend import LineageRepository
from mltrail.domain import LineageEdge, LineageNode
from mltrail.errors import AlreadyExistsError, NotFoundError

from mltrail_jsondir.files import JsonFiles
from mltrail_jsondir.layout import Layout

DIRECTIONS = ("upstream", "downstream")


def _sort_key(edge: LineageEdge) -> tuple[str, str, str]:
    return (edge.source, edge.type.value, edge.target)


class JsonDirLineageRepository(LineageRepository):
    def __init__(self, files: JsonFiles, layout: Layout) -> None:
        self.files = files
        self.layout = layout

    def _lock(self):
        return self.files.lock("lineage")

    def put_node(self, node: LineageNode) -> None:
        path = self.layout.node(node.id)
        with self._lock():
            stored = self.files.read(path)
            if stored is None:
                self.files.write(path, node.to_record())
                return
        if stored["kind"] != node.to_record()["kind"]:
            raise AlreadyExistsError(
                f"lineage node {node.id!r} exists as a {stored['kind']}, not a "
                f"{node.to_record()['kind']}; use another id", node.id)

    def get_node(self, node_id: str) -> LineageNode:
        record = self.files.read(self.layout.node(node_id))
        if record is None:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return LineageNode.from_record(record)

    def add_edge(self, edge: LineageEdge) -> None:
        # The copy at the downstream end is the one `edges(..., "upstream")`
        # returns and the core checks before adding an edge. Writing it last
        # means a retry after a crash still writes the copy at the upstream end.
        at_upstream = self.layout.edge(edge.upstream, "downstream", edge)
        at_downstream = self.layout.edge(edge.downstream, "upstream", edge)
        with self._lock():
            if self.files.read(at_downstream) is not None:
                return
            self.files.write(at_upstream, edge.to_record())
            self.files.write(at_downstream, edge.to_record())

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'upstream' or 'downstream', got "
                             f"{direction!r}")
        folder = self.layout.node_folder(node_id) / direction
        found = []
        for name in self.files.names(folder, ".json"):
            record = self.files.read(folder / name)
            if record is not None:
                found.append(LineageEdge.from_record(record))
        return sorted(found, key=_sort_key)

    def scan_nodes(self) -> Iterator[LineageNode]:
        folder = self.layout.root / "lineage"
        for name in self.files.names(folder):
            record = self.files.read(folder / name / "node.json")
            if record is not None:
                yield LineageNode.from_record(record)

    def scan_edges(self) -> Iterator[LineageEdge]:
        """Stream each edge once, from its upstream node's `downstream` folder."""
        folder = self.layout.root / "lineage"
        for name in self.files.names(folder):
            edge_folder = folder / name / "downstream"
            for edge_name in self.files.names(edge_folder, ".json"):
                record = self.files.read(edge_folder / edge_name)
                if record is not None:
                    yield LineageEdge.from_record(record)

    def delete_node(self, node_id: str) -> None:
        with self._lock():
            for direction in DIRECTIONS:
                for edge in self.edges(node_id, direction):
                    self._remove_far_copy(node_id, edge)
            self.files.remove_tree(self.layout.node_folder(node_id))

    def _remove_far_copy(self, node_id: str, edge: LineageEdge) -> None:
        """Remove the copy of `edge` kept at its end other than `node_id`."""
        if edge.upstream == node_id:
            self.files.remove(self.layout.edge(edge.downstream, "upstream", edge))
        else:
            self.files.remove(self.layout.edge(edge.upstream, "downstream", edge))
