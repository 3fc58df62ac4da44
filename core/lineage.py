"""Lineage traversal over the backend's one-hop edge lookups."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mltrail.backend import LineageRepository
from mltrail.domain import LineageEdge, LineageNode
from mltrail.errors import NotFoundError


@dataclass
class LineageGraph:
    """The nodes reached from `root` with their distance in hops, and the edges used."""

    root: str
    direction: str
    nodes: dict[str, int] = field(default_factory=dict)
    edges: list[LineageEdge] = field(default_factory=list)
    details: dict[str, LineageNode] = field(default_factory=dict)

    def paths_to(self, node_id: str) -> list[list[LineageEdge]]:
        """Return the edge paths from the root to `node_id` found by the traversal."""
        incoming: dict[str, list[LineageEdge]] = {}
        for edge in self.edges:
            far = edge.upstream if self.direction == "upstream" else edge.downstream
            incoming.setdefault(far, []).append(edge)

        def walk(current: str, seen: frozenset[str]) -> list[list[LineageEdge]]:
            if current == self.root:
                return [[]]
            found = []
            for edge in incoming.get(current, []):
                near = edge.downstream if self.direction == "upstream" else edge.upstream
                if near in seen:
                    continue
                for path in walk(near, seen | {near}):
                    found.append([*path, edge])
            return found

        return walk(node_id, frozenset({node_id}))


def traverse(repository: LineageRepository, root: str, direction: str,
             depth: int, with_details: bool = True) -> LineageGraph:
    """Breadth-first walk from `root` for at most `depth` hops."""
    if direction not in ("upstream", "downstream"):
        raise ValueError(f"direction must be 'upstream' or 'downstream', got {direction!r}")
    graph = LineageGraph(root=root, direction=direction, nodes={root: 0})
    queue = deque([root])
    seen_edges: set[str] = set()
    while queue:
        current = queue.popleft()
        distance = graph.nodes[current]
        if distance >= depth:
            continue
        for edge in repository.edges(current, direction):
            if edge.key in seen_edges:
                continue
            seen_edges.add(edge.key)
            graph.edges.append(edge)
            neighbour = edge.upstream if direction == "upstream" else edge.downstream
            if neighbour not in graph.nodes:
                graph.nodes[neighbour] = distance + 1
                queue.append(neighbour)
    for node_id in graph.nodes if with_details else ():
        try:
            graph.details[node_id] = repository.get_node(node_id)
        except NotFoundError:
            continue
    return graph
