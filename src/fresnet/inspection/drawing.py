"""Draw a :class:`~fresnet.inspection.layout.Diagram` with matplotlib: SVG, PNG or PDF, no graphviz.

The positions come from :func:`~fresnet.inspection.layout.layout`; this module only turns rows and
columns into inches and paints boxes, arrows and dashed groups in the look of graphviz's drawing
(the same fills, rounded boxes, shape labels on the arrows, bold identity shortcuts). One data unit
is one inch, so text sizes are real point sizes at any graph size. SVG text stays text
(``svg.fonttype: none``), so a browser renders it crisply and a search finds a layer by name.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from fresnet.inspection.layout import Diagram, Layout, layout

FONT_PT, EDGE_FONT_PT, CLUSTER_FONT_PT, TITLE_FONT_PT = 7.0, 5.5, 6.5, 10.0
LINE_IN = 0.125  # height of one label line at FONT_PT
CHAR_IN = 0.062  # width of an average DejaVu Sans character at FONT_PT, with some slack
ROW_GAP_IN, GROUP_GAP_IN = 0.24, 0.34  # between rows; before a row that opens another group
COLUMN_GAP_IN, LANE_IN, MARGIN_IN = 0.55, 0.16, 0.3
EDGE_COLOUR, BORDER_COLOUR, GROUP_COLOUR = "#555555", "#333333", "#888888"
MAX_PIXELS = 30000  # a PNG side above this is drawn at a lower dpi (Agg refuses > 2**16)


@dataclass(frozen=True)
class Box:
    x: float  # centre, inches from the left
    y: float  # centre, inches from the top
    width: float
    height: float

    @property
    def top(self) -> float:
        return self.y - self.height / 2

    @property
    def bottom(self) -> float:
        return self.y + self.height / 2

    @property
    def left(self) -> float:
        return self.x - self.width / 2


def place(diagram: Diagram, where: Layout) -> tuple[dict[str, Box], float, float]:
    """Boxes in inches (y grows downwards) for every node, and the drawing's width and height."""
    nodes = {node.id: node for node in diagram.nodes}
    lines = {node.id: node.label.count("\n") + 1 for node in diagram.nodes}
    longest = max((len(line) for node in diagram.nodes for line in node.label.split("\n")), default=4)
    width = min(max(longest * CHAR_IN + 0.25, 1.1), 5.0)
    lanes = max(where.detours.values(), default=0)
    x0 = MARGIN_IN + lanes * LANE_IN + (0.45 if lanes else 0.0) + width / 2
    rows: list[list[str]] = [[] for _ in range(where.rows)]
    for node_id, rank in where.rank.items():
        rows[rank].append(node_id)
    y = MARGIN_IN + (0.3 if diagram.title else 0.0)
    boxes: dict[str, Box] = {}
    previous_group = None
    for index, row in enumerate(rows):
        height = max((lines[i] for i in row), default=1) * LINE_IN + 0.1
        group = next((nodes[i].cluster for i in row if where.column[i] == 0), None)
        if index:
            y += GROUP_GAP_IN if group != previous_group and group is not None else ROW_GAP_IN
        previous_group = group
        for node_id in row:
            x = x0 + where.column[node_id] * (width + COLUMN_GAP_IN)
            boxes[node_id] = Box(x, y + height / 2, width, lines[node_id] * LINE_IN + 0.1)
        y += height
    total_width = x0 + (where.columns - 1) * (width + COLUMN_GAP_IN) + width / 2 + 0.7 + MARGIN_IN
    return boxes, total_width, y + MARGIN_IN


def render(diagram: Diagram, fmt: str) -> bytes:
    """The picture as bytes in ``fmt`` ('svg', 'png' or 'pdf')."""
    import matplotlib
    from matplotlib.figure import Figure

    where = layout(diagram)
    boxes, width, height = place(diagram, where)
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y grows downwards, like the rows
    ax.axis("off")
    _draw_groups(ax, diagram, boxes)
    _draw_edges(ax, diagram, where, boxes)
    _draw_nodes(ax, diagram, boxes)
    if diagram.title:
        ax.text(width / 2, MARGIN_IN, diagram.title, ha="center", va="center", fontsize=TITLE_FONT_PT)
    buffer = io.BytesIO()
    options = {"format": fmt}
    if fmt == "png":
        options["dpi"] = max(20, min(150, int(MAX_PIXELS / max(width, height))))
    else:
        options["metadata"] = {"Date": None}  # the same network gives the same file
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fresnet", "font.family": "DejaVu Sans"}):
        fig.savefig(buffer, **options)
    return buffer.getvalue()


def _draw_nodes(ax, diagram: Diagram, boxes: dict[str, Box]) -> None:
    from matplotlib.patches import Ellipse, FancyBboxPatch

    for node in diagram.nodes:
        box = boxes[node.id]
        if node.shape == "ellipse":
            patch = Ellipse((box.x, box.y), box.width * 0.8, box.height + 0.06)
        else:
            patch = FancyBboxPatch((box.left, box.top), box.width, box.height,
                                   boxstyle="round,pad=0,rounding_size=0.06")
        patch.set(facecolor=node.fill, edgecolor=BORDER_COLOUR, linewidth=0.6, zorder=3)
        ax.add_patch(patch)
        ax.text(box.x, box.y, node.label, ha="center", va="center", fontsize=FONT_PT, zorder=4, linespacing=1.15)


def _draw_edges(ax, diagram: Diagram, where: Layout, boxes: dict[str, Box]) -> None:
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    for edge in diagram.edges:
        source, target = boxes[edge.source], boxes[edge.target]
        style = dict(arrowstyle="-|>", mutation_scale=7, color=EDGE_COLOUR, linewidth=1.4 if edge.bold else 0.6,
                     shrinkA=0, shrinkB=0, zorder=2)
        lane = where.detours.get((edge.source, edge.target))
        if lane:
            x = min(source.left, target.left) - lane * LANE_IN
            path = Path([(source.left, source.y), (x, source.y), (x, target.y), (target.left, target.y)],
                        [Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO])
            ax.add_patch(FancyArrowPatch(path=path, **style))
            if edge.label:
                ax.text(x - 0.03, (source.y + target.y) / 2, edge.label, ha="right", va="center", rotation=90,
                        fontsize=EDGE_FONT_PT, color=EDGE_COLOUR)
            continue
        points = _route(source, target, where.column[edge.source], where.column[edge.target])
        codes = [Path.MOVETO] + [Path.LINETO] * (len(points) - 1)
        ax.add_patch(FancyArrowPatch(path=Path(points, codes), **style))
        if edge.label:  # beside the last vertical stretch, where the arrow enters its target
            (x1, y1), (x2, y2) = points[-2], points[-1]
            if x1 != x2 and len(points) > 2:
                (x1, y1), (x2, y2) = points[-3], points[-2]
            ax.text((x1 + x2) / 2 + 0.05, (y1 + y2) / 2, edge.label, ha="left", va="center",
                    fontsize=EDGE_FONT_PT, color=EDGE_COLOUR)


def _route(source: Box, target: Box, source_column: int, target_column: int) -> list[tuple[float, float]]:
    """An arrow's points: straight down within a column or to the next row; between columns an
    elbow (out sideways, then down into the branch; down the branch, then sideways back), so a long
    branch arrow never cuts across the boxes of the chain."""
    if source_column == target_column:
        return [(source.x, source.bottom), (target.x, target.top)]
    if target_column > source_column:  # into a side branch
        return [(source.left + source.width, source.y), (target.x, source.y), (target.x, target.top)]
    return [(source.x, source.bottom), (source.x, target.y), (target.left + target.width, target.y)]


def _draw_groups(ax, diagram: Diagram, boxes: dict[str, Box]) -> None:
    from matplotlib.patches import FancyBboxPatch

    members: dict[str, list[Box]] = {}
    for node in diagram.nodes:
        if node.cluster is not None:
            members.setdefault(node.cluster, []).append(boxes[node.id])
    for cluster, inside in members.items():
        left = min(b.left for b in inside) - 0.1
        right = max(b.left + b.width for b in inside) + 0.1
        top = min(b.top for b in inside) - 0.2
        bottom = max(b.bottom for b in inside) + 0.08
        ax.add_patch(FancyBboxPatch((left, top), right - left, bottom - top, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor="none", edgecolor=GROUP_COLOUR, linewidth=0.6, linestyle="--", zorder=1))
        ax.text(left + 0.06, top + 0.03, diagram.clusters.get(cluster, cluster), ha="left", va="top",
                fontsize=CLUSTER_FONT_PT, color=GROUP_COLOUR, zorder=1)
