"""A network diagram (boxes, arrows, dashed groups) and where each box goes, without graphviz.

A fresnet graph is a chain with short side branches: a unit's body, its projection shortcut, an SE
gate. So the layout is a layered one specialised to that shape:

* every node gets a *rank* (its row, top to bottom) that is one below its lowest input, so each
  arrow points down;
* the longest path through the graph (data -> every layer of every unit -> output) is the *main
  chain* and stays in column 0;
* a node off the chain (a projection shortcut's conv and BN) is pushed down as far as its consumers
  allow, so it sits beside the end of the body it bypasses, in the first free column to the right;
* an arrow that skips rows inside column 0 (an identity shortcut, the ungated input of an SE
  multiply) is drawn as a detour on the left; :func:`layout` gives each such arrow its lane, wider
  for longer arrows, so nested detours do not overlap.

Only the data and the positions live here; :mod:`fresnet.inspection.drawing` draws them with
matplotlib, and :mod:`fresnet.inspection.viz` turns a traced network into a :class:`Diagram`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class DiagramNode:
    id: str
    label: str  # may hold several lines
    fill: str  # colour, '#rrggbb'
    shape: str = "box"  # 'box' or 'ellipse'
    cluster: Optional[str] = None  # id of the dashed group it belongs to


@dataclass(frozen=True)
class DiagramEdge:
    source: str
    target: str
    label: str = ""
    bold: bool = False  # the identity shortcut


@dataclass
class Diagram:
    """What is drawn: nodes in forward (topological) order, edges, and dashed groups by id."""

    nodes: list[DiagramNode] = field(default_factory=list)
    edges: list[DiagramEdge] = field(default_factory=list)
    clusters: dict[str, str] = field(default_factory=dict)  # id -> caption
    title: str = ""


@dataclass(frozen=True)
class Layout:
    """``rank[id]`` (row, 0 at the top) and ``column[id]`` (0 is the main chain) of every node;
    ``detours[(source, target)]`` the lane (1, 2, ...; higher is further left) of each arrow that
    skips rows in column 0."""

    rank: dict[str, int]
    column: dict[str, int]
    detours: dict[tuple[str, str], int]

    @property
    def rows(self) -> int:
        return max(self.rank.values(), default=-1) + 1

    @property
    def columns(self) -> int:
        return max(self.column.values(), default=-1) + 1


def layout(diagram: Diagram) -> Layout:
    """Rows, columns and detour lanes for ``diagram`` (its nodes must be in topological order)."""
    ids = [node.id for node in diagram.nodes]
    order = {node_id: i for i, node_id in enumerate(ids)}
    inputs: dict[str, list[str]] = {node_id: [] for node_id in ids}
    outputs: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for edge in diagram.edges:
        if order[edge.source] >= order[edge.target]:
            raise ValueError(
                f"edge {edge.source} -> {edge.target} points backwards; nodes must be in topological order"
            )
        inputs[edge.target].append(edge.source)
        outputs[edge.source].append(edge.target)

    earliest: dict[str, int] = {}
    for node_id in ids:
        earliest[node_id] = 1 + max((earliest[s] for s in inputs[node_id]), default=-1)
    chain = _longest_path(ids, inputs, earliest, order)

    rank = dict(earliest)
    for node_id in reversed(ids):  # off the chain: as low as the consumers allow
        if node_id not in chain and outputs[node_id]:
            rank[node_id] = max(earliest[node_id], min(rank[t] for t in outputs[node_id]) - 1)
    column = {node_id: 0 for node_id in chain}
    taken = {(rank[node_id], 0) for node_id in chain}
    for node_id in ids:
        if node_id in column:
            continue
        col = 1
        while (rank[node_id], col) in taken:
            col += 1
        column[node_id] = col
        taken.add((rank[node_id], col))
    return Layout(rank, column, _detour_lanes(diagram.edges, rank, column))


def _longest_path(ids: list[str], inputs: dict[str, list[str]], earliest: dict[str, int],
                  order: dict[str, int]) -> set[str]:
    """The nodes of one longest path, ending at the deepest node (the output)."""
    if not ids:
        return set()
    node = max(ids, key=lambda i: (earliest[i], -order[i]))
    chain = {node}
    while inputs[node]:
        node = next(s for s in inputs[node] if earliest[s] == earliest[node] - 1)
        chain.add(node)
    return chain


def _detour_lanes(edges: list[DiagramEdge], rank: dict[str, int], column: dict[str, int]) -> dict[tuple[str, str], int]:
    """Lanes for the arrows that skip rows in column 0: an arrow takes the lowest lane above every
    detour it encloses, so the outer shortcut of a unit runs outside its SE gate's."""
    skips = [e for e in edges if column[e.source] == column[e.target] == 0 and rank[e.target] - rank[e.source] > 1]
    skips.sort(key=lambda e: rank[e.target] - rank[e.source])
    lanes: dict[tuple[str, str], int] = {}
    placed: list[tuple[int, int, int]] = []  # (top, bottom, lane)
    for edge in skips:
        top, bottom = rank[edge.source], rank[edge.target]
        inner = [lane for t, b, lane in placed if t < bottom and b > top]
        lane = 1 + max(inner, default=0)
        lanes[(edge.source, edge.target)] = lane
        placed.append((top, bottom, lane))
    return lanes
