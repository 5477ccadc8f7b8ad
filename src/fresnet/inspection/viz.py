"""Draw a fresnet network as a graph: the original's ``mx.viz.plot_network``, from the real dataflow.

The graph comes from ``torch.fx`` tracing the model (so a shortcut is drawn from wherever the unit's
``forward`` really takes it, e.g. ``act1`` in a pre-activation unit), and the edge labels are tensor
shapes from one real forward pass of a single image. Two views:

* layers: one node per layer (op type and kernel/stride/filters), coloured by op type like
  ``plot_network``, each unit boxed;
* units (``collapse=True``): one node per residual unit, for deep networks.

Pictures are drawn by graphviz's ``dot`` program when it is installed, and otherwise by matplotlib
(:mod:`fresnet.inspection.layout` places the nodes, :mod:`fresnet.inspection.drawing` draws them),
so ``fresnet plot`` and the demo's report need no system package. Both draw the same
:class:`~fresnet.inspection.layout.Diagram`; ``.dot``/``.gv`` output is the graphviz source.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
import torch.fx as fx
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inspection.layout import Diagram, DiagramEdge, DiagramNode
from fresnet.network.layers import InputNorm, MXBatchNorm

# above this many residual units the default view is one node per unit (r34 has 16, r50 24)
COLLAPSE_ABOVE_UNITS = 16
RENDER_FORMATS = ("svg", "png", "pdf")
DOT_FORMATS = ("dot", "gv")

# mx.viz.plot_network's palette, by MXNet op family
COLORS = {
    "data": "#8dd3c7",
    "conv": "#fb8072",
    "fc": "#fb8072",
    "bn": "#bebada",
    "act": "#ffffb3",
    "pool": "#80b1d3",
    "reshape": "#fdb462",
    "add": "#b3de69",
    "other": "#fccde5",
}
UNIT_COLORS = {
    "identity": "#d9d9d9", "projection": "#fb8072", "stem": "#8dd3c7", "reduce": "#bebada", "head": "#80b1d3",
}

_ACT_NAMES = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softplus: "softrelu", nn.Softsign: "softsign"}
# torch function -> (colour key, name suffix, label)
_FUNCTION_OPS = {
    "add": ("add", "add", "elemwise add"), "iadd": ("add", "add", "elemwise add"),
    "mul": ("other", "broadcast_mul", "broadcast_mul"), "truediv": ("other", "div", "broadcast_div"),
    "sub": ("other", "sub", "broadcast_sub"), "sigmoid": ("act", "activation", "Activation sigmoid"),
    "flatten": ("reshape", "flatten", "Flatten"), "adaptive_avg_pool2d": ("pool", "pooling", "Pooling global avg"),
}


@dataclass
class Layer:
    """One node of the layer view."""

    id: str
    name: str  # MXNet-style name, e.g. stage1_unit1_conv1
    kind: str  # key of COLORS
    label: str  # op type and key attributes
    group: str  # 'data', 'stem', 'stage1.unit1', 'reduce', 'head', 'output'
    inputs: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()  # output shape without the batch
    named: bool = True  # a layer module (its name is drawn), not an anonymous function such as an add


class _Tracer(fx.Tracer):
    """Stops at the layers a user thinks in (conv, BN, activation, FC, dropout); traces through the
    rest, so residual adds and SE multiplies become nodes of their own."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (MXBatchNorm, InputNorm)):
            return True
        if isinstance(module, nn.Identity):
            return False
        return super().is_leaf_module(module, qualified_name)


def _mx_name(path: str) -> str:
    parts = path.split(".")
    if parts and parts[0] in ("stem", "reduce", "head"):
        parts = parts[1:]
    return "_".join(parts) or path


def _group_of(node: fx.Node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    path = stack[-1] if stack else (node.target if node.op == "call_module" else "")
    parts = str(path).split(".")
    if parts[0].startswith("stage") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts[0] in ("stem", "reduce", "head") else "head"


def _describe_module(module: nn.Module) -> tuple[str, str]:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        text = f"Convolution {kh}x{kw}/{module.stride[0]}, {module.out_channels}"
        if module.groups > 1:
            text += ", dw" if module.groups == module.in_channels else f", g{module.groups}"
        return "conv", text
    if isinstance(module, nn.Linear):
        return "fc", f"FullyConnected {module.out_features}"
    if isinstance(module, MXBatchNorm):
        return "bn", "BatchNorm" + (" fix_gamma" if module.fix_gamma else "")
    if isinstance(module, nn.PReLU):
        return "act", "LeakyReLU prelu"
    if type(module) in _ACT_NAMES:
        return "act", f"Activation {_ACT_NAMES[type(module)]}"
    if isinstance(module, nn.Dropout):
        return "other", f"Dropout p={module.p}"
    if isinstance(module, InputNorm):
        return "other", "InputNorm (x-127.5)/128"
    return "other", type(module).__name__


def _describe_function(node: fx.Node) -> tuple[str, str, str]:
    name = getattr(node.target, "__name__", str(node.target)) if node.op == "call_function" else str(node.target)
    return _FUNCTION_OPS.get(name, ("other", name, name))


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape[1:]) if shape is not None else ()


def trace_layers(model: nn.Module, input_size=None) -> list[Layer]:
    """The model's dataflow as a list of layers in forward order, with output shapes (batch dropped)."""
    from torch.fx.passes.shape_prop import ShapeProp

    config = getattr(model, "config", None)
    size = tuple(input_size or (config.input_size if config is not None else (112, 112)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            graph = _Tracer().trace(model)
            module = fx.GraphModule(model, graph)
            ShapeProp(module).propagate(torch.zeros(1, 3, *size))
    except (RuntimeError, ValueError) as exc:
        raise FresnetError(f"cannot trace the network at input size {size}: {exc}") from exc
    finally:
        model.train(was_training)

    layers: list[Layer] = []
    for node in graph.nodes:
        inputs = [n.name for n in node.all_input_nodes]
        if node.op == "placeholder":
            shape = _shape(node)
            layers.append(Layer(node.name, "data", "data", "data\n" + "x".join(map(str, shape)), "data", [], shape))
        elif node.op == "output":
            layers.append(Layer(node.name, "output", "data", "output", "output", inputs, ()))
        elif node.op == "call_module":
            kind, label = _describe_module(model.get_submodule(node.target))
            layers.append(Layer(node.name, _mx_name(node.target), kind, label, _group_of(node), inputs, _shape(node)))
        else:  # call_function / call_method / get_attr
            kind, suffix, label = _describe_function(node)
            group = _group_of(node)
            stack = list(node.meta.get("nn_module_stack", {}).keys())
            prefix = _mx_name(stack[-1]) if stack else group
            layers.append(Layer(node.name, f"{prefix}_{suffix}", kind, label, group, inputs, _shape(node), False))
    return layers


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _unit_summaries(model: nn.Module, layers: list[Layer]) -> dict[str, tuple[str, str]]:
    """group -> (label, colour key) for the unit view."""
    by_group: dict[str, list[Layer]] = {}
    for layer in layers:
        by_group.setdefault(layer.group, []).append(layer)
    summaries: dict[str, tuple[str, str]] = {}
    units = dict(model.iter_units()) if hasattr(model, "iter_units") else {}
    for group, members in by_group.items():
        if group in units:
            unit = units[group]
            convs = [m for m in unit.modules() if isinstance(m, nn.Conv2d)]
            stride = max(c.stride[0] for c in convs)
            projection = not getattr(unit, "dim_match", True)
            se = getattr(unit, "se", None) is not None
            # one line per unit keeps a 100-unit network's picture compact
            text = (f"{group}: {type(unit).__name__} {convs[0].in_channels}->{_out_channels(members)}"
                    f"{f' /{stride}' if stride > 1 else ''}{', projection shortcut' if projection else ''}"
                    f"{' + SE' if se else ''}")
            summaries[group] = (text, "projection" if projection else "identity")
        elif group in ("stem", "reduce", "head"):
            ops = [m.label for m in members]
            summaries[group] = (group + "\n" + "\n".join(ops), group)
    return summaries


def _out_channels(members: list[Layer]) -> int:
    last = members[-1].shape
    return last[0] if last else 0


def build_diagram(model: nn.Module, *, collapse: Optional[bool] = None, input_size=None,
                  title: Optional[str] = None) -> Diagram:
    """The model's graph as a :class:`~fresnet.inspection.layout.Diagram` (what both renderers
    draw). ``collapse`` None picks the unit view for networks with more than
    :data:`COLLAPSE_ABOVE_UNITS` units."""
    layers = trace_layers(model, input_size)
    unit_count = len({layer.group for layer in layers if layer.group.startswith("stage")})
    if collapse is None:
        collapse = unit_count > COLLAPSE_ABOVE_UNITS
    diagram = Diagram(title=title or "")
    by_id = {layer.id: layer for layer in layers}
    if collapse:
        _unit_diagram(diagram, model, layers, by_id)
    else:
        _layer_diagram(diagram, layers, by_id)
    return diagram


def build_graph(model: nn.Module, *, collapse: Optional[bool] = None, input_size=None, title: Optional[str] = None):
    """A ``graphviz.Digraph`` of the model (needs the ``graphviz`` Python package, not ``dot``)."""
    return to_graphviz(build_diagram(model, collapse=collapse, input_size=input_size, title=title))


def to_graphviz(diagram: Diagram):
    """The diagram as a ``graphviz.Digraph``: nodes outside any group, then each group as a dashed
    cluster, then the edges."""
    try:
        import graphviz
    except ImportError:
        raise FresnetError("writing graphviz DOT source needs the graphviz Python package: pip install graphviz "
                           "(pictures (.svg, .png, .pdf) do not)") from None

    graph = graphviz.Digraph(name="fresnet", graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "12", "nodesep": "0.25", "ranksep": "0.3",
        "label": diagram.title, "labelloc": "t",
    }, node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica", "fontsize": "10",
                  "margin": "0.12,0.04", "height": "0.3"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#555555", "arrowsize": "0.6"})
    grouped: dict[str, list[DiagramNode]] = {}
    for node in diagram.nodes:
        if node.cluster is None:
            _dot_node(graph, node)
        else:
            grouped.setdefault(node.cluster, []).append(node)
    for cluster, members in grouped.items():
        with graph.subgraph(name="cluster_" + cluster) as sub:
            sub.attr(label=diagram.clusters.get(cluster, cluster), style="rounded,dashed", color="#888888",
                     fontsize="10", labeljust="l")
            for node in members:
                _dot_node(sub, node)
    for edge in diagram.edges:
        attrs = {"label": " " + edge.label} if edge.label else {}
        if edge.bold:
            attrs["style"] = "bold"
        graph.edge(edge.source, edge.target, **attrs)
    return graph


def _dot_node(graph, node: DiagramNode) -> None:
    attrs = {"label": node.label, "fillcolor": node.fill}
    if node.shape != "box":
        attrs["shape"] = node.shape
    graph.node(node.id, **attrs)


def _layer_diagram(diagram: Diagram, layers: list[Layer], by_id: dict[str, Layer]) -> None:
    for layer in layers:
        cluster = layer.group.replace(".", "_") if layer.group.startswith("stage") else None
        if cluster is not None:  # the unit's dashed box
            diagram.clusters.setdefault(cluster, layer.group)
        name = layer.name
        if cluster is not None:  # the unit's box already says stageN_unitM
            name = name[len(layer.group) + 1:]
        label = f"{name}\n{layer.label}" if layer.named and layer.kind != "data" else layer.label
        diagram.nodes.append(DiagramNode(layer.id, label, COLORS[layer.kind],
                                         "ellipse" if layer.kind == "data" else "box", cluster))
    for layer in layers:
        for source in dict.fromkeys(layer.inputs):
            src = by_id[source]
            # the identity shortcut: drawn bold so the residual path stands out
            bold = layer.kind == "add" and len(layer.inputs) == 2 and src.kind == "add"
            diagram.edges.append(DiagramEdge(source, layer.id, _shape_text(src.shape), bold))


def _unit_diagram(diagram: Diagram, model: nn.Module, layers: list[Layer], by_id: dict[str, Layer]) -> None:
    summaries = _unit_summaries(model, layers)
    order: list[str] = []
    for layer in layers:
        if layer.group not in order:
            order.append(layer.group)
    stages: dict[str, int] = {}
    for group in order:
        if group.startswith("stage"):
            stage = group.split(".")[0]
            stages[stage] = stages.get(stage, 0) + 1
    for group in order:
        node_id = group.replace(".", "_")
        if group == "data":
            diagram.nodes.append(DiagramNode(node_id, by_id[layers[0].id].label, COLORS["data"], "ellipse"))
        elif group == "output":
            diagram.nodes.append(DiagramNode(node_id, "output", COLORS["data"], "ellipse"))
        else:
            text, colour = summaries[group]
            stage = group.split(".")[0] if group.startswith("stage") else None
            if stage is not None:
                diagram.clusters.setdefault(stage, f"{stage} ({stages[stage]} units)")
            diagram.nodes.append(DiagramNode(node_id, text, UNIT_COLORS[colour], "box", stage))
    seen = set()
    for layer in layers:
        for source in layer.inputs:
            src = by_id[source]
            if src.group == layer.group or (src.group, layer.group) in seen:
                continue
            seen.add((src.group, layer.group))
            diagram.edges.append(DiagramEdge(src.group.replace(".", "_"), layer.group.replace(".", "_"),
                                             _shape_text(src.shape)))


@dataclass(frozen=True)
class PlotResult:
    """What :func:`plot_network` wrote: ``path`` (the picture or the DOT source), ``dot_path`` (the
    DOT source, when that is what was asked for), ``rendered`` (a picture was drawn), ``collapsed``
    (one node per unit) and ``renderer``: 'dot' (graphviz), 'matplotlib' (no ``dot`` program) or
    '' (DOT source only)."""

    path: Path
    dot_path: Optional[Path]
    rendered: bool
    collapsed: bool
    renderer: str = ""


def plot_network(model: nn.Module, path: Union[str, Path], *, collapse: Optional[bool] = None,
                 input_size=None, title: Optional[str] = None, renderer: str = "auto") -> PlotResult:
    """Write the model's graph to ``path``; the suffix picks the format (.svg, .png, .pdf, .dot, .gv).

    Pictures are drawn by graphviz's ``dot`` program when it is installed (and the ``graphviz``
    Python package is), otherwise by matplotlib (:mod:`fresnet.inspection.drawing`), so a picture
    never needs a system package. ``renderer`` forces one: 'dot' or 'matplotlib'.
    """
    from fresnet.ioutil import atomic_write_bytes, atomic_write_text

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in RENDER_FORMATS + DOT_FORMATS:
        raise FresnetError(
            f"cannot tell the picture format from {str(path)!r}; end the name in one of "
            f"{', '.join('.' + f for f in RENDER_FORMATS + DOT_FORMATS)}"
        )
    if renderer not in ("auto", "dot", "matplotlib"):
        raise FresnetError(f"unknown renderer {renderer!r}; choose auto, dot or matplotlib")
    units = len(list(model.iter_units())) if hasattr(model, "iter_units") else 0
    collapsed = collapse if collapse is not None else units > COLLAPSE_ABOVE_UNITS
    diagram = build_diagram(model, collapse=collapsed, input_size=input_size, title=title)
    if fmt in DOT_FORMATS:
        atomic_write_text(path, to_graphviz(diagram).source)
        return PlotResult(path, path, False, collapsed)
    if renderer == "auto":
        renderer = "dot" if dot_available() else "matplotlib"
    if renderer == "matplotlib":
        from fresnet.inspection.drawing import render

        atomic_write_bytes(path, render(diagram, fmt))
        return PlotResult(path, None, True, collapsed, "matplotlib")
    if not dot_available():
        raise FresnetError("renderer='dot' needs graphviz's `dot` program on PATH (apt-get install graphviz) and the "
                           "graphviz Python package; renderer='matplotlib' needs neither")
    import graphviz

    try:
        picture = to_graphviz(diagram).pipe(format=fmt)
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError) as exc:
        raise FresnetError(f"graphviz 'dot' failed to render {path}: {exc}") from exc
    atomic_write_bytes(path, picture)
    return PlotResult(path, None, True, collapsed, "dot")


def dot_available() -> bool:
    """Whether graphviz can draw here: the ``dot`` program on PATH and the graphviz Python package."""
    if shutil.which("dot") is None:
        return False
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return True
