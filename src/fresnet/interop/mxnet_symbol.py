"""MXNet ``-symbol.json`` graphs of fresnet: written from a :class:`NetConfig`, read back into one.

**Writing.** :func:`build_graph` replays the original ``fresnet.resnet()`` / ``symbol_utils.get_fc1()``
calls, in their order, against a tiny stand-in for ``mx.sym``; :func:`to_json` serialises the result
the way MXNet 1.9's ``Symbol.tojson()`` does (nnvm node order = depth-first post-order from the head,
dmlc ``JSONWriter`` layout, attribute values as Python ``str()`` of the keyword arguments, auto-names
like ``_plus0`` / ``dropout0`` from a fresh ``NameManager``). For every configuration the original can
build, the text is byte-identical to the original's (checked against the SHA-1s in the reference data).

**Reading.** :func:`read_symbol` parses any nnvm-era symbol file; :func:`infer_config` recognises a
fresnet graph and recovers its :class:`NetConfig`; :func:`check_fresnet_graph` rebuilds the graph from
that config and refuses the file at the first structural difference.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from fresnet.network.config import NetConfig
from fresnet.errors import FresnetError
from fresnet.network.presets import BASIC_FILTERS, UNITS_BY_DEPTH

MXNET_VERSION = 10901  # written into "attrs": {"mxnet_version": ["int", 10901]}, as MXNet 1.9.1 does
WORKSPACE = 256  # config.workspace of the original sample_config
HEAD_BN_MOM = 0.9  # symbol_utils.bn_mom is read once at import (see fresnet.network.layers.HEAD_BN_MOMENTUM)
NUM_OUTPUTS = {"BatchNorm": 3, "Dropout": 2}  # for node_row_ptr; every other op here has one output
PRELU_INIT_ATTR = '["Constant", {"value": 0.25}]'
AUX_INIT_ATTR = {"moving_mean": '["zero", {}]', "moving_var": '["one", {}]'}
# names MXNet's NameManager generates (hint + counter); they are compared by op only
AUTO_NAME = re.compile(r"^(_plus|_mul|_minusscalar|_mulscalar|broadcast_mul|broadcast_div|dropout|flatten|pooling|"
                       r"sum|sqrt|mean|tile|cast|activation|batchnorm|convolution|fullyconnected|leakyrelu)\d+$")

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------
# a graph: nodes in nnvm order
# ---------------------------------------------------------------------------------------------
@dataclass
class Node:
    op: str  # "null" for a variable
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple["Node", int, int]] = field(default_factory=list)  # (node, output index, version)


@dataclass
class SymbolGraph:
    """A parsed (or built) symbol: ``nodes`` in file order, ``heads`` as (node index, output index)."""

    nodes: list[Node]
    heads: list[tuple[int, int]]
    source: str = "<graph>"

    def __post_init__(self) -> None:
        self.index = {id(node): i for i, node in enumerate(self.nodes)}
        self.by_name: dict[str, Node] = {}
        for node in self.nodes:
            self.by_name.setdefault(node.name, node)

    def node(self, name: str) -> Optional[Node]:
        return self.by_name.get(name)

    @property
    def variables(self) -> list[str]:
        return [n.name for n in self.nodes if n.op == "null"]

    @property
    def aux_names(self) -> list[str]:
        """Variables fed to an op as mutable state (BatchNorm inputs 3 and 4), in node order."""
        aux = {id(src) for n in self.nodes if n.op == "BatchNorm" for src, _, _ in n.inputs[3:5]}
        return [n.name for n in self.nodes if n.op == "null" and id(n) in aux]

    @property
    def arg_names(self) -> list[str]:
        """``list_arguments()`` minus ``data``: the trainable arrays, in node order."""
        aux = set(self.aux_names)
        return [name for name in self.variables if name not in aux and name != "data"]


# ---------------------------------------------------------------------------------------------
# building: a stand-in for the few mx.sym calls fresnet makes
# ---------------------------------------------------------------------------------------------
def _s(value: Any) -> str:
    """MXNet stores every keyword argument as ``str(value)``: ``(3, 3)`` -> ``'(3, 3)'``, ``True`` -> ``'True'``."""
    return str(value)


class _Symbols:
    """Creates nodes the way ``mx.sym`` does: auto-named from a per-hint counter, with one variable per
    missing input named ``<op name>_<input>`` that carries the op's attributes."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def _auto(self, hint: str) -> str:
        count = self.counters.get(hint, 0)
        self.counters[hint] = count + 1
        return f"{hint}{count}"

    def _op(self, op: str, name: str, inputs: Sequence[Node], attrs: dict[str, Any],
            params: Sequence[str] = (), aux: Sequence[str] = (), param_attrs: Optional[dict] = None) -> Node:
        attrs = {k: _s(v) for k, v in attrs.items()}
        entries = [(node, 0, 0) for node in inputs]
        for suffix in params:
            var_attrs = dict(attrs)
            var_attrs.update(param_attrs or {})
            entries.append((Node("null", f"{name}_{suffix}", var_attrs), 0, 0))
        for suffix in aux:
            var_attrs = dict(attrs, __init__=AUX_INIT_ATTR[suffix])
            entries.append((Node("null", f"{name}_{suffix}", var_attrs), 0, 1))  # mutated input: version 1
        return Node(op, name, attrs, entries)

    def variable(self, name: str) -> Node:
        return Node("null", name)

    def conv(self, data: Node, name: str, **kwargs: Any) -> Node:
        params = ["weight"] if kwargs.get("no_bias") else ["weight", "bias"]
        return self._op("Convolution", name, [data], kwargs, params)

    def batchnorm(self, data: Node, name: str, **kwargs: Any) -> Node:
        return self._op("BatchNorm", name, [data], kwargs, ["gamma", "beta"], ["moving_mean", "moving_var"])

    def act(self, data: Node, act_type: str, name: str) -> Node:
        """The original ``Act``: ``LeakyReLU(act_type='prelu')`` with a gamma, else ``Activation``."""
        if act_type == "prelu":
            return self._op("LeakyReLU", name, [data], {"act_type": "prelu"}, ["gamma"],
                            param_attrs={"__init__": PRELU_INIT_ATTR})
        return self._op("Activation", name, [data], {"act_type": act_type})

    def activation(self, data: Node, act_type: str, name: str) -> Node:
        return self._op("Activation", name, [data], {"act_type": act_type})

    def fc(self, data: Node, name: str, num_hidden: int) -> Node:
        return self._op("FullyConnected", name, [data], {"num_hidden": num_hidden}, ["weight", "bias"])

    def pool(self, data: Node, name: Optional[str] = None, **kwargs: Any) -> Node:
        return self._op("Pooling", name or self._auto("pooling"), [data], kwargs)

    def simple(self, op: str, hint: str, inputs: Sequence[Node], name: Optional[str] = None, **attrs: Any) -> Node:
        return self._op(op, name or self._auto(hint), inputs, attrs)

    def add(self, a: Node, b: Node) -> Node:
        return self.simple("elemwise_add", "_plus", [a, b])

    def mul(self, a: Node, b: Node) -> Node:
        return self.simple("elemwise_mul", "_mul", [a, b])


def _trunk_bn(sym: _Symbols, data: Node, name: str, bn_mom: float) -> Node:
    return sym.batchnorm(data, name, fix_gamma=False, eps=2e-5, momentum=bn_mom)


def _se(sym: _Symbols, x: Node, num_filter: int, name: str, act_type: str) -> Node:
    body = sym.pool(x, name + "_se_pool1", global_pool=True, kernel=(7, 7), pool_type="avg")
    body = sym.conv(body, name + "_se_conv1", num_filter=num_filter // 16, kernel=(1, 1), stride=(1, 1), pad=(0, 0),
                    workspace=WORKSPACE)
    body = sym.act(body, act_type, name + "_se_relu1")
    body = sym.conv(body, name + "_se_conv2", num_filter=num_filter, kernel=(1, 1), stride=(1, 1), pad=(0, 0),
                    workspace=WORKSPACE)
    body = sym.activation(body, "sigmoid", name + "_se_sigmoid")
    return sym.simple("broadcast_mul", "broadcast_mul", [x, body])


def _conv_bn_shortcut(sym, data, num_filter, stride, dim_match, name, bn_mom):
    if dim_match:
        return data
    conv1sc = sym.conv(data, name + "_conv1sc", num_filter=num_filter, kernel=(1, 1), stride=stride, no_bias=True,
                       workspace=WORKSPACE)
    return _trunk_bn(sym, conv1sc, name + "_sc", bn_mom)


def _unit(sym: _Symbols, cfg: NetConfig, data: Node, num_filter: int, stride: tuple, dim_match: bool,
          name: str) -> Node:
    """``fresnet.residual_unit`` and the unit functions it dispatches to, call for call."""
    act, mom, se, bottle_neck = cfg.net_act, cfg.bn_mom, cfg.net_se, cfg.bottle_neck
    ws = WORKSPACE
    one = (1, 1)

    def conv(x, suffix, nf, kernel, s, pad, **extra):
        return sym.conv(x, name + suffix, num_filter=nf, kernel=kernel, stride=s, pad=pad, no_bias=True,
                        workspace=ws, **extra)

    def bn(x, suffix):
        return _trunk_bn(sym, x, name + suffix, mom)

    unit = cfg.net_unit
    if unit == 1:
        late = cfg.net_input != 0  # residual_unit_v1_L for any input but 0
        if bottle_neck:
            quarter = int(num_filter * 0.25)
            body = sym.act(bn(conv(data, "_conv1", quarter, one, one if late else stride, (0, 0)), "_bn1"), act,
                           name + "_relu1")
            body = sym.act(bn(conv(body, "_conv2", quarter, (3, 3), one, (1, 1)), "_bn2"), act, name + "_relu2")
            body = bn(conv(body, "_conv3", num_filter, one, stride if late else one, (0, 0)), "_bn3")
        else:
            body = sym.act(bn(conv(data, "_conv1", num_filter, (3, 3), one if late else stride, (1, 1)), "_bn1"), act,
                           name + "_relu1")
            body = bn(conv(body, "_conv2", num_filter, (3, 3), stride if late else one, (1, 1)), "_bn2")
        if se:
            body = _se(sym, body, num_filter, name, act)
        shortcut = _conv_bn_shortcut(sym, data, num_filter, stride, dim_match, name, mom)
        return sym.act(sym.add(body, shortcut), act, name + "_relu3")
    if unit == 2:
        act1 = sym.act(bn(data, "_bn1"), act, name + "_relu1")
        if bottle_neck:
            quarter = int(num_filter * 0.25)
            body = sym.act(bn(conv(act1, "_conv1", quarter, one, one, (0, 0)), "_bn2"), act, name + "_relu2")
            body = sym.act(bn(conv(body, "_conv2", quarter, (3, 3), stride, (1, 1)), "_bn3"), act, name + "_relu3")
            body = conv(body, "_conv3", num_filter, one, one, (0, 0))
        else:
            body = sym.act(bn(conv(act1, "_conv1", num_filter, (3, 3), stride, (1, 1)), "_bn2"), act, name + "_relu2")
            body = conv(body, "_conv2", num_filter, (3, 3), one, (1, 1))
        if se:
            body = _se(sym, body, num_filter, name, act)
        shortcut = data if dim_match else sym.conv(act1, name + "_sc", num_filter=num_filter, kernel=one,
                                                   stride=stride, no_bias=True, workspace=ws)
        return sym.add(body, shortcut)
    # unit 3 (and '3x', residual_unit_v3_x)
    bn1 = bn(data, "_bn1")
    if unit == "3x":
        half = int(num_filter * 0.5)
        body = sym.conv(bn1, name + "_conv1", num_group=32, num_filter=half, kernel=one, stride=one, pad=(0, 0),
                        no_bias=True, workspace=ws)
        body = sym.act(bn(body, "_bn2"), act, name + "_relu1")
        body = sym.conv(body, name + "_conv2", num_group=32, num_filter=half, kernel=(3, 3), stride=one, pad=(1, 1),
                        no_bias=True, workspace=ws)
        body = sym.act(bn(body, "_bn3"), act, name + "_relu2")
        body = bn(conv(body, "_conv3", num_filter, one, stride, (0, 0)), "_bn4")
    elif bottle_neck:
        quarter = int(num_filter * 0.25)
        body = sym.act(bn(conv(bn1, "_conv1", quarter, one, one, (0, 0)), "_bn2"), act, name + "_relu1")
        body = sym.act(bn(conv(body, "_conv2", quarter, (3, 3), one, (1, 1)), "_bn3"), act, name + "_relu2")
        body = bn(conv(body, "_conv3", num_filter, one, stride, (0, 0)), "_bn4")
    else:
        body = sym.act(bn(conv(bn1, "_conv1", num_filter, (3, 3), one, (1, 1)), "_bn2"), act, name + "_relu1")
        body = bn(conv(body, "_conv2", num_filter, (3, 3), stride, (1, 1)), "_bn3")
    if se:
        body = _se(sym, body, num_filter, name, act)
    return sym.add(body, _conv_bn_shortcut(sym, data, num_filter, stride, dim_match, name, mom))


def _head(sym: _Symbols, cfg: NetConfig, body: Node) -> Node:
    """``symbol_utils.get_fc1(last_conv, emb_size, fc_type, input_channel=512)``."""
    fc_type, emb, act = cfg.net_output, cfg.emb_size, cfg.net_act
    mom = HEAD_BN_MOM
    # get_fc1's input_channel (and GNAP's filters_in) default to 512, the trunk width of every network
    # the original builds; following the trunk keeps narrower custom trunks consistent with the model
    input_channel = cfg.trunk_channels

    def bn(x, name, fix_gamma=False, momentum=mom):
        return sym.batchnorm(x, name, fix_gamma=fix_gamma, eps=2e-5, momentum=momentum)

    def dropout(x):
        return sym.simple("Dropout", "dropout", [x], p=0.4)

    if fc_type == "Z":
        return dropout(bn(body, "bn1"))
    if fc_type in ("E", "FC", "I"):
        body = bn(body, "bn1")
        if fc_type == "E":
            body = dropout(body)
        return bn(sym.fc(body, "pre_fc1", emb), "fc1", fix_gamma=True)
    if fc_type == "SFC":
        body = bn(body, "bn1")
        body = sym.conv(body, "convf", num_filter=input_channel, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                        no_bias=True, num_group=input_channel)
        body = sym.act(bn(body, "bnf"), act, "reluf")
        body = sym.conv(body, "convf2", num_filter=input_channel, kernel=(1, 1), pad=(0, 0), stride=(1, 1))
        body = sym.act(bn(body, "bnf2"), act, "reluf2")
        return bn(sym.fc(body, "pre_fc1", emb), "fc1", fix_gamma=True)
    if fc_type == "GAP":
        body = sym.act(bn(body, "bn1"), act, "relu1")
        body = sym.pool(body, "pool1", global_pool=True, kernel=(7, 7), pool_type="avg")
        body = sym.simple("Flatten", "flatten", [body])
        return bn(sym.fc(body, "pre_fc1", emb), "fc1", fix_gamma=True)
    if fc_type == "GNAP":
        filters_in = input_channel
        if emb > filters_in:
            body = sym.conv(body, "convx", num_filter=emb, kernel=(1, 1), stride=(1, 1), pad=(0, 0), no_bias=True)
            body = sym.act(bn(body, "convx_bn", momentum=0.9), act, "convx_relu")
            filters_in = emb
        body = bn(body, "bn6f", fix_gamma=True, momentum=0.9)
        norm = sym.simple("sum", "sum", [sym.mul(body, body)], axis=1, keepdims=True)
        norm = sym.simple("sqrt", "sqrt", [norm])
        mean = sym.simple("mean", "mean", [norm])
        inverse = sym.simple("broadcast_div", "broadcast_div", [mean, norm])
        inverse = sym.simple("tile", "tile", [inverse], reps=(1, filters_in, 1, 1))
        body = sym.mul(body, inverse)
        fc1 = sym.pool(body, kernel=(7, 7), global_pool=True, pool_type="avg")
        if emb < filters_in:
            fc1 = sym.fc(bn(fc1, "bn6w", fix_gamma=True, momentum=0.9), "pre_fc1", emb)
        else:
            fc1 = sym.simple("Flatten", "flatten", [fc1])
        return bn(fc1, "fc1", fix_gamma=True, momentum=0.9)
    if fc_type == "GDC":
        # symbol_utils.Linear: no eps given, so MXNet's default 1e-3 applies
        body = sym.conv(body, "conv_6dw7_7_conv2d", num_filter=input_channel, kernel=(7, 7), num_group=input_channel,
                        stride=(1, 1), pad=(0, 0), no_bias=True)
        body = sym.batchnorm(body, "conv_6dw7_7_batchnorm", fix_gamma=False, momentum=mom)
        return bn(sym.fc(body, "pre_fc1", emb), "fc1", fix_gamma=True)
    if fc_type in ("F", "G"):
        body = bn(body, "bn1")
        if fc_type == "F":
            body = dropout(body)
        return sym.fc(body, "fc1", emb)
    if fc_type == "H":
        return sym.fc(body, "fc1", emb)
    if fc_type == "J":
        return bn(sym.fc(body, "pre_fc1", emb), "fc1", fix_gamma=True)
    raise FresnetError(f"unknown head {fc_type!r}")


def build_graph(config: NetConfig) -> SymbolGraph:
    """The symbol the original ``fresnet.get_symbol()`` / ``resnet()`` builds for ``config``."""
    sym = _Symbols()
    cfg = config
    data = sym.variable("data")
    if cfg.net_input == 2:
        data = sym.batchnorm(data, "bn_data", fix_gamma=True, eps=2e-5, momentum=cfg.bn_mom)
    else:
        data = sym.simple("_copy", "", [data], name="id")
        data = sym.simple("_minus_scalar", "_minusscalar", [data], scalar=127.5)
        data = sym.simple("_mul_scalar", "_mulscalar", [data], scalar=0.0078125)
    if cfg.net_input == 0:
        body = sym.conv(data, "conv0", num_filter=cfg.filter_list[0], kernel=(7, 7), stride=(2, 2), pad=(3, 3),
                        no_bias=True, workspace=WORKSPACE)
    else:
        body = sym.conv(data, "conv0", num_filter=cfg.filter_list[0], kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                        no_bias=True, workspace=WORKSPACE)
    body = sym.act(_trunk_bn(sym, body, "bn0", cfg.bn_mom), cfg.net_act, "relu0")
    for i, count in enumerate(cfg.units):
        for j in range(count):
            body = _unit(sym, cfg, body, cfg.filter_list[i + 1], (2, 2) if j == 0 else (1, 1), j != 0,
                         f"stage{i + 1}_unit{j + 1}")
    if cfg.bottle_neck:
        body = sym.conv(body, "convd", num_filter=512, kernel=(1, 1), stride=(1, 1), pad=(0, 0), no_bias=True,
                        workspace=WORKSPACE)
        body = sym.act(_trunk_bn(sym, body, "bnd", cfg.bn_mom), cfg.net_act, "relud")
    head = _head(sym, cfg, body)
    return _topological(head)


def _topological(head: Node) -> SymbolGraph:
    """nnvm's DFSVisit: post-order, inputs in order, each node once (iterative: graphs are deep)."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, int]] = [(head, 0)]
    while stack:
        node, next_input = stack.pop()
        if next_input == 0:
            if id(node) in seen:
                continue
            seen.add(id(node))
        if next_input < len(node.inputs):
            stack.append((node, next_input + 1))
            child = node.inputs[next_input][0]
            if id(child) not in seen:
                stack.append((child, 0))
        else:
            order.append(node)
    graph = SymbolGraph(order, [])
    graph.heads = [(graph.index[id(head)], 0)]
    return graph


# ---------------------------------------------------------------------------------------------
# serialising exactly like dmlc::JSONWriter
# ---------------------------------------------------------------------------------------------
def _str(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return '"' + out.replace("\t", "\\t") + '"'


def _int_list(values: Sequence[int], indent: str) -> str:
    """dmlc writes arrays of PODs on one line up to 10 items, else one item per line."""
    if len(values) > 10:
        inner = ", ".join(f"\n{indent}  {v}" for v in values)
        return f"[{inner}\n{indent}]"
    return "[" + ", ".join(str(v) for v in values) + "]"


def to_json(graph: SymbolGraph) -> str:
    """The text ``Symbol.tojson()`` produces in MXNet 1.9 for this graph."""
    index = graph.index
    parts = []
    for node in graph.nodes:
        fields = [f'"op": {_str(node.op)}', f'"name": {_str(node.name)}']
        if node.attrs:
            items = sorted(node.attrs.items())
            if len(items) > 1:
                body = ", ".join(f"\n        {_str(k)}: {_str(v)}" for k, v in items)
                fields.append(f'"attrs": {{{body}\n      }}')
            else:
                fields.append(f'"attrs": {{{_str(items[0][0])}: {_str(items[0][1])}}}')
        inputs = ", ".join(f"[{index[id(src)]}, {out}, {ver}]" for src, out, ver in node.inputs)
        fields.append(f'"inputs": [{inputs}]')
        parts.append("{" + ", ".join(f"\n      {f}" for f in fields) + "\n    }")
    nodes = "[" + ", ".join(f"\n    {p}" for p in parts) + "\n  ]"
    arg_nodes = [i for i, n in enumerate(graph.nodes) if n.op == "null"]
    row_ptr = [0]
    for node in graph.nodes:
        row_ptr.append(row_ptr[-1] + NUM_OUTPUTS.get(node.op, 1))
    heads = ", ".join(f"[{i}, {out}, 0]" for i, out in graph.heads)
    return (
        "{"
        f'\n  "nodes": {nodes}, '
        f'\n  "arg_nodes": {_int_list(arg_nodes, "  ")}, '
        f'\n  "node_row_ptr": {_int_list(row_ptr, "  ")}, '
        f'\n  "heads": [{heads}], '
        f'\n  "attrs": {{"mxnet_version": ["int", {MXNET_VERSION}]}}'
        "\n}"
    )


def config_to_json(config: NetConfig) -> str:
    return to_json(build_graph(config))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def parse_symbol(text: str, source: str = "<symbol>") -> SymbolGraph:
    """Parse symbol JSON text (nnvm format; the pre-1.0 ``attr``/``param`` keys are accepted too)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FresnetError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or "heads" not in data:
        raise FresnetError(f"{source}: not an MXNet symbol file (needs 'nodes' and 'heads')")
    nodes: list[Node] = []
    raw_nodes = data["nodes"]
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or "op" not in raw or "name" not in raw:
            raise FresnetError(f"{source}: node {i} is malformed (needs 'op' and 'name')")
        attrs: dict[str, str] = {}
        for key in ("param", "attr", "attrs"):  # old and new spellings
            if isinstance(raw.get(key), dict):
                attrs.update({str(k): str(v) for k, v in raw[key].items()})
        nodes.append(Node(str(raw["op"]), str(raw["name"]), attrs))
    for i, raw in enumerate(raw_nodes):
        for entry in raw.get("inputs", []):
            try:
                src, out = int(entry[0]), int(entry[1])
                version = int(entry[2]) if len(entry) > 2 else 0
                if not 0 <= src < i:
                    raise IndexError
            except (TypeError, ValueError, IndexError):
                raise FresnetError(f"{source}: node {i} ({raw['name']!r}) has a bad input {entry!r}") from None
            nodes[i].inputs.append((nodes[src], out, version))
    try:
        heads = [(int(h[0]), int(h[1])) for h in data["heads"]]
        for h, _ in heads:
            nodes[h]
    except (TypeError, ValueError, IndexError):
        raise FresnetError(f"{source}: bad 'heads' entry {data['heads']!r}") from None
    return SymbolGraph(nodes, heads, source)


def read_symbol(path: PathLike) -> SymbolGraph:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FresnetError(f"{path}: no such file (expected an MXNet -symbol.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FresnetError(f"{path}: cannot read ({exc})") from None
    return parse_symbol(text, str(path))


def _tuple_attr(node: Node, key: str) -> tuple[int, ...]:
    text = node.attrs.get(key, "")
    return tuple(int(v) for v in re.findall(r"-?\d+", text))


def _int_attr(node: Node, key: str, default: int = 0) -> int:
    try:
        return int(node.attrs.get(key, default))
    except ValueError:
        return default


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
    has = lambda name: graph.node(name) is not None  # noqa: E731
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
    try:
        bn_mom = float(bn0.attrs.get("momentum", 0.9)) if bn0 is not None else 0.9
    except ValueError:
        bn_mom = 0.9
    # head
    head = _infer_head(g)
    trunk_channels = 512 if bottle_neck else filter_list[-1]
    emb_size = 512
    fc_name = "fc1" if head in ("F", "G", "H") else "pre_fc1"
    if g.node(fc_name) is not None and g.node(fc_name).op == "FullyConnected":
        emb_size = _int_attr(g.node(fc_name), "num_hidden", 512)
    elif head == "GNAP" and g.node("convx") is not None:
        emb_size = _int_attr(g.node("convx"), "num_filter", 512)
    # depth
    num_layers: Optional[int] = None
    if not bottle_neck and filter_list == BASIC_FILTERS:
        matches = [d for d, u in UNITS_BY_DEPTH.items() if u == units_list]
        if matches:
            num_layers = 50 if 50 in matches else matches[0]
    options: dict[str, Any] = dict(
        num_layers=num_layers, net_unit=net_unit, net_se=net_se, net_act=net_act, net_input=net_input,
        net_output=head, emb_size=emb_size, bn_mom=bn_mom,
    )
    if num_layers is None:
        options.update(units=units_list, filter_list=filter_list, bottle_neck=bottle_neck)
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
    if head in ("E", "FC", "I", "J", "F", "G", "H", "SFC", "GDC") and weight is not None and len(weight) == 2:
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
