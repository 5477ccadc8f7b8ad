"""The :class:`NetConfig` an MXNet fresnet symbol holds, and a check that the graph is exactly that.

:func:`infer_config` recognises a fresnet graph and recovers its :class:`NetConfig`;
:func:`check_fresnet_graph` rebuilds the graph from that config
(:func:`~fresnet.interop.mxnet_symbol_build.build_graph`) and refuses the file at the first structural
difference (:func:`describe_difference`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence, Union

from fresnet.errors import FresnetError
from fresnet.interop.mxnet_symbol import Node, SymbolGraph
from fresnet.interop.mxnet_symbol_build import build_graph
from fresnet.network.config import NetConfig
from fresnet.network.presets import BASIC_FILTERS, UNITS_BY_DEPTH
from fresnet.validate import describe

# names MXNet's NameManager generates (hint + counter); they are compared by op only
AUTO_NAME = re.compile(r"^(_plus|_mul|_minusscalar|_mulscalar|broadcast_mul|broadcast_div|dropout|flatten|pooling|"
                       r"sum|sqrt|mean|tile|cast|activation|batchnorm|convolution|fullyconnected|leakyrelu)\d+$")


def _attr_error(node: Node, key: str, expected: str) -> FresnetError:
    return FresnetError(
        f"{node.name}: attribute {key} = {describe(node.attrs.get(key))} is not {expected}; the symbol file is damaged "
        "or was edited by hand"
    )


def _tuple_attr(node: Node, key: str) -> tuple[int, ...]:
    text = node.attrs.get(key, "")
    numbers = re.findall(r"-?\d+", text)
    if any(len(v) > 18 for v in numbers) or len(numbers) > 16:
        raise _attr_error(node, key, "a short tuple of integers")
    return tuple(int(v) for v in numbers)


def _int_attr(node: Node, key: str, default: int = 0) -> int:
    """An integer attribute; ``default`` when absent, an error when present but not an integer."""
    if key not in node.attrs:
        return default
    text = node.attrs[key].strip()
    if not (text.lstrip("-").isdigit() and text.isascii() and len(text) <= 18):
        raise _attr_error(node, key, "an integer")
    return int(text)


def _act_type(node: Optional[Node]) -> Optional[str]:
    if node is None:
        return None
    if node.op == "LeakyReLU":
        return node.attrs.get("act_type", "leaky")
    if node.op == "Activation":
        return node.attrs.get("act_type")
    return None


def _not_fresnet(graph: SymbolGraph, why: str) -> FresnetError:
    return FresnetError(
        f"{graph.source} is not a fresnet graph (the InsightFace MXNet fresnet.get_symbol() family): {why}; "
        "only fresnet checkpoints can be loaded"
    )


HEAD_NODES = {  # a head's signature: nodes it has (and, for E/F, a dropout)
    "GNAP": "bn6f",
    "GDC": "conv_6dw7_7_conv2d",
    "SFC": "convf",
}


def _infer_head(graph: SymbolGraph) -> str:
    for head, marker in HEAD_NODES.items():
        if graph.node(marker) is not None:
            return head
    has = lambda name: graph.node(name) is not None
    dropout = any(n.op == "Dropout" for n in graph.nodes)
    fc1 = graph.node("fc1")
    if has("relu1") and has("pre_fc1"):  # the GAP head's act is the only top-level 'relu1'
        return "GAP"
    if fc1 is None:
        if has("bn1") and dropout:
            return "Z"
        raise _not_fresnet(graph, "no 'fc1' node (every fresnet head but Z ends in fc1)")
    if fc1.op == "FullyConnected":
        if not has("bn1"):
            return "H"
        return "F" if dropout else "G"
    if not has("pre_fc1"):
        raise _not_fresnet(graph, "'fc1' is a BatchNorm but there is no 'pre_fc1'")
    if not has("bn1"):
        return "J"
    return "E" if dropout else "FC"  # FC and I build byte-identical graphs


def _square_side(area: float) -> Optional[int]:
    side = int(round(math.sqrt(area)))
    return side if side > 0 and side * side == area else None


def infer_config(
    graph: SymbolGraph,
    arg_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    input_size: Optional[Union[int, Sequence[int]]] = None,
) -> NetConfig:
    """Recover the :class:`NetConfig` of a fresnet graph (see :func:`_infer_config`); every error
    names the symbol file."""
    try:
        return _infer_config(graph, arg_shapes, input_size)
    except FresnetError as exc:
        if str(exc).startswith(str(graph.source)):
            raise
        raise FresnetError(f"{graph.source}: {exc}") from None


def _infer_config(
    graph: SymbolGraph,
    arg_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    input_size: Optional[Union[int, Sequence[int]]] = None,
) -> NetConfig:
    """Recover the :class:`NetConfig` of a fresnet graph.

    Depth/units, unit version (1, 2, 3 or '3x' from ``num_group=32`` convs), SE, activation, input mode,
    head, embedding size, bottleneck, filters and bn_mom all come from the graph. The input size is not
    stored in a symbol: it is taken from ``input_size`` if given, else from a ``data`` ``__shape__``
    attribute, else from the flattened FC width in ``arg_shapes`` (square trunks only), else 112x112.
    """
    g = graph
    conv0 = g.node("conv0")
    if conv0 is None or conv0.op != "Convolution" or not any(n.name.startswith("stage1_unit1_") for n in g.nodes):
        raise _not_fresnet(g, "no 'conv0' Convolution followed by 'stage1_unit1_*' layers")
    # stem
    if g.node("bn_data") is not None:
        net_input = 2
    elif _tuple_attr(conv0, "kernel") == (7, 7):
        net_input = 0
    else:
        net_input = 1
    net_act = _act_type(g.node("relu0"))
    if net_act is None:
        raise _not_fresnet(g, "no 'relu0' activation after the stem")
    # stages and units
    units: dict[int, int] = {}
    for node in g.nodes:
        m = re.match(r"^stage(\d+)_unit(\d+)_", node.name)
        if m:
            stage, unit = int(m.group(1)), int(m.group(2))
            units[stage] = max(units.get(stage, 0), unit)
    if not units or sorted(units) != list(range(1, len(units) + 1)):
        raise _not_fresnet(g, f"stages are not numbered 1..N (found {sorted(units)})")
    units_list = tuple(units[s] for s in sorted(units))
    bottle_neck = g.node("stage1_unit1_conv3") is not None

    def out_filters(stage: int) -> int:
        for suffix in ("_conv1sc", "_sc"):
            node = g.node(f"stage{stage}_unit1{suffix}")
            if node is not None and node.op == "Convolution":
                return _int_attr(node, "num_filter")
        raise _not_fresnet(g, f"stage{stage}_unit1 has no projection shortcut ('_conv1sc' or '_sc')")

    filter_list = (_int_attr(conv0, "num_filter"),) + tuple(out_filters(s) for s in sorted(units))
    sc = g.node("stage1_unit1_sc")
    conv1 = g.node("stage1_unit1_conv1")
    if sc is not None and sc.op == "Convolution":
        net_unit: Union[int, str] = 2
    elif conv1 is not None and _int_attr(conv1, "num_group", 1) == 32 and bottle_neck:
        net_unit = "3x"
    elif g.node("stage1_unit1_relu3") is not None:
        net_unit = 1
    else:
        net_unit = 3
    net_se = 1 if g.node("stage1_unit1_se_conv1") is not None else 0
    bn0 = g.node("bn0")
    bn_mom = 0.9
    if bn0 is not None and "momentum" in bn0.attrs:
        try:
            bn_mom = float(bn0.attrs["momentum"])
        except ValueError:
            raise _attr_error(bn0, "momentum", "a number") from None
    # head
    head = _infer_head(g)
    trunk_channels = 512 if bottle_neck else filter_list[-1]
    emb_size = 512
    fc_name = "fc1" if head in ("F", "G", "H") else "pre_fc1"
    if g.node(fc_name) is not None and g.node(fc_name).op == "FullyConnected":
        emb_size = _int_attr(g.node(fc_name), "num_hidden", 512)
    elif head == "GNAP" and g.node("convx") is not None:
        emb_size = _int_attr(g.node("convx"), "num_filter", 512)
    # depth: the one whose units these are, whatever the widths (a custom-width r18 stays an r18)
    matches = [d for d, u in UNITS_BY_DEPTH.items() if u == units_list]
    num_layers: Optional[int] = (50 if 50 in matches else matches[0]) if matches else None
    options: dict[str, Any] = dict(
        num_layers=num_layers, net_unit=net_unit, net_se=net_se, net_act=net_act, net_input=net_input,
        net_output=head, emb_size=emb_size, bn_mom=bn_mom,
    )
    if num_layers is None or bottle_neck or filter_list != BASIC_FILTERS:
        options.update(units=units_list, filter_list=filter_list, bottle_neck=bottle_neck)
    # widths, emb_size and the unit count are NetConfig's to check (below); the input size is inferred
    # only from a trunk width that can divide (a width of 0 is left to NetConfig's message)
    options["input_size"] = _infer_input_size(g, head, trunk_channels, units_list, net_input, arg_shapes,
                                               input_size, fc_name)
    try:
        return NetConfig(**options)
    except FresnetError as exc:
        raise FresnetError(f"{g.source}: the graph's configuration is not valid: {exc}") from None


def _infer_input_size(g, head, channels, units, net_input, arg_shapes, input_size, fc_name) -> tuple[int, int]:
    if input_size is not None:
        return (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    data = g.node("data")
    shape = _tuple_attr(data, "__shape__") if data is not None else ()
    if len(shape) == 4 and min(shape[2:]) > 0:
        return shape[2], shape[3]
    halvings = len(units) + (1 if net_input == 0 else 0)
    weight = (arg_shapes or {}).get(f"{fc_name}_weight")
    if (head in ("E", "FC", "I", "J", "F", "G", "H", "SFC", "GDC") and weight is not None and len(weight) == 2
            and isinstance(channels, int) and channels >= 1):
        area = weight[1] / channels
        side = _square_side(area)
        if side is None:
            raise FresnetError(
                f"{g.source}: {fc_name} flattens a {channels}-channel map of {area:g} positions, which is not a "
                "square trunk; pass the input size explicitly (e.g. input_size=(112, 96))"
            )
        trunk = {"SFC": 2 * side, "GDC": side + 6}.get(head, side)
        return trunk * 2 ** halvings, trunk * 2 ** halvings
    return 112, 112


# ---------------------------------------------------------------------------------------------
# structural comparison (is this graph exactly what the inferred config builds?)
# ---------------------------------------------------------------------------------------------
KEY_ATTRS = ("kernel", "stride", "pad", "num_filter", "num_group", "no_bias", "num_hidden", "act_type",
             "fix_gamma", "eps", "global_pool", "pool_type", "scalar", "axis", "keepdims", "reps")
TRANSPARENT_OPS = ("Cast", "amp_cast")  # the original's fp16 switch inserts these; they change no weights


def graph_signature(graph: SymbolGraph) -> list[tuple]:
    """One tuple per op node: (op, name or '*' for an auto-name, key attrs, inputs), where inputs name
    variables and refer to ops by their position. Casts are skipped (treated as identities)."""
    position: dict[int, Any] = {}
    out = []

    def ref(node: Node) -> Any:
        while node.op in TRANSPARENT_OPS and node.inputs:
            node = node.inputs[0][0]
        return node.name if node.op == "null" else position[id(node)]

    for node in graph.nodes:
        if node.op == "null" or node.op in TRANSPARENT_OPS:
            continue
        position[id(node)] = len(out)
        attrs = tuple((k, node.attrs[k]) for k in KEY_ATTRS if k in node.attrs)
        if node.op == "BatchNorm" and "eps" not in node.attrs:
            attrs = attrs + (("eps", "0.001"),)  # MXNet's default
        name = "*" if AUTO_NAME.match(node.name) else node.name
        out.append((node.op, name, _normalise(attrs), tuple((ref(src), idx) for src, idx, _ in node.inputs)))
    return out


def _normalise(attrs: tuple) -> tuple:
    out = []
    for key, value in attrs:
        try:
            value = repr(float(value)) if key in ("eps", "scalar") else value
        except ValueError:
            pass
        out.append((key, value))
    return tuple(sorted(out))


def describe_difference(actual: SymbolGraph, expected: SymbolGraph) -> Optional[str]:
    """None when ``actual`` has the same structure as ``expected``; else the first difference, in words."""
    got, want = graph_signature(actual), graph_signature(expected)
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"op #{i}: the file has {_fmt(a)}, the inferred config builds {_fmt(b)}"
    if len(got) != len(want):
        longer = got if len(got) > len(want) else want
        extra = _fmt(longer[min(len(got), len(want))])
        who = "the file has" if len(got) > len(want) else "the inferred config builds"
        return f"{who} {abs(len(got) - len(want))} more ops, starting with {extra}"
    return None


def _fmt(entry: tuple) -> str:
    op, name, attrs, _ = entry
    attrs_text = ", ".join(f"{k}={v}" for k, v in attrs)
    return f"{op} {name!r}" + (f" ({attrs_text})" if attrs_text else "")


def check_fresnet_graph(graph: SymbolGraph, config: NetConfig) -> None:
    """Refuse a graph that is not exactly what ``config`` builds (the file is then not a fresnet)."""
    problem = describe_difference(graph, build_graph(config))
    if problem is not None:
        raise _not_fresnet(graph, f"{problem} (inferred config: {config.to_json()})")
