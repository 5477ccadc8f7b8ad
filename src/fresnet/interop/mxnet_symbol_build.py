"""The MXNet symbol the original ``fresnet.get_symbol()`` builds for a :class:`NetConfig`.

:func:`build_graph` replays the original ``fresnet.resnet()`` / ``symbol_utils.get_fc1()`` calls, in
their order, against a tiny stand-in for ``mx.sym``, with auto-names like ``_plus0`` / ``dropout0``
from a fresh ``NameManager``. For every configuration the original can build, :func:`config_to_json`
is byte-identical to the original's (checked against the SHA-1s in the reference data).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from fresnet.errors import FresnetError
from fresnet.interop.mxnet_symbol import Node, SymbolGraph, to_json
from fresnet.network.config import NetConfig
from fresnet.network.layers import HEAD_BN_MOMENTUM

WORKSPACE = 256  # config.workspace of the original sample_config
PRELU_INIT_ATTR = '["Constant", {"value": 0.25}]'
AUX_INIT_ATTR = {"moving_mean": '["zero", {}]', "moving_var": '["one", {}]'}


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
    mom = HEAD_BN_MOMENTUM
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


def config_to_json(config: NetConfig) -> str:
    return to_json(build_graph(config))
