"""How big a network is, from its config alone: no module is built and nothing is allocated.

:func:`network_size` counts, as Python integers, the values of the state dict (parameters and
BatchNorm statistics) exactly, the FLOPs of one forward pass at batch 1 (an upper bound: each
stage's convolutions are counted at the stage's input resolution) and the largest activation.
:func:`check_network_size` compares them with :mod:`fresnet.limits` before a network is built, so a
config read from a file (or typed on the command line) cannot ask for a terabyte.

The counts mirror :mod:`fresnet.network.units` and :mod:`fresnet.network.heads` module by module;
``tests/test_limits.py`` checks them against built networks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fresnet.errors import FresnetError
from fresnet.limits import check


@dataclass(frozen=True)
class NetworkSize:
    state_values: int  # parameters + BatchNorm statistics (what a weights file stores)
    flops: int  # upper bound, batch 1
    largest_activation: int  # elements, batch 1


def _bn(c: int, fix_gamma: bool = False) -> int:
    return (3 if fix_gamma else 4) * c


class _Counter:
    """Accumulates state values and FLOPs of convolutions and linears at a given resolution."""

    def __init__(self, prelu: bool):
        self.prelu = prelu
        self.values = 0
        self.flops = 0

    def act(self, c: int) -> None:
        self.values += c if self.prelu else 0

    def bn(self, c: int, fix_gamma: bool = False) -> None:
        self.values += _bn(c, fix_gamma)

    def conv(self, k: int, cin: int, cout: int, positions: int, groups: int = 1, bias: bool = False) -> None:
        weights = k * k * (cin // max(groups, 1)) * cout
        self.values += weights + (cout if bias else 0)
        self.flops += 2 * weights * positions

    def linear(self, cin: int, cout: int) -> None:
        self.values += cin * cout + cout
        self.flops += 2 * cin * cout

    def se(self, c: int, positions: int) -> None:
        r = c // 16
        self.conv(1, c, r, 1, bias=True)
        self.act(r)
        self.conv(1, r, c, 1, bias=True)
        self.flops += 2 * c * positions  # the pooling and the rescale


def _unit(n: _Counter, unit: Any, bottle_neck: bool, cin: int, cout: int, first: bool, hw: int, se: bool) -> None:
    """One residual unit; ``hw`` is the stage's input resolution (an upper bound for every conv)."""
    shortcut = first  # dim_match is False for a stage's first unit
    if unit == "3x" or (unit == 3 and bottle_neck):
        groups, mid = (32, int(cout * 0.5)) if unit == "3x" else (1, int(cout * 0.25))
        n.bn(cin), n.conv(1, cin, mid, hw, groups), n.bn(mid), n.act(mid)
        n.conv(3, mid, mid, hw, groups), n.bn(mid), n.act(mid), n.conv(1, mid, cout, hw), n.bn(cout)
    elif unit == 3:
        n.bn(cin), n.conv(3, cin, cout, hw), n.bn(cout), n.act(cout), n.conv(3, cout, cout, hw), n.bn(cout)
    elif unit == 2 and bottle_neck:
        mid = int(cout * 0.25)
        n.bn(cin), n.act(cin), n.conv(1, cin, mid, hw), n.bn(mid), n.act(mid), n.conv(3, mid, mid, hw)
        n.bn(mid), n.act(mid), n.conv(1, mid, cout, hw)
    elif unit == 2:
        n.bn(cin), n.act(cin), n.conv(3, cin, cout, hw), n.bn(cout), n.act(cout), n.conv(3, cout, cout, hw)
    elif bottle_neck:  # unit 1
        mid = int(cout * 0.25)
        n.conv(1, cin, mid, hw), n.bn(mid), n.act(mid), n.conv(3, mid, mid, hw), n.bn(mid), n.act(mid)
        n.conv(1, mid, cout, hw), n.bn(cout), n.act(cout)
    else:
        n.conv(3, cin, cout, hw), n.bn(cout), n.act(cout), n.conv(3, cout, cout, hw), n.bn(cout), n.act(cout)
    if se:
        n.se(cout, hw)
    if shortcut:
        n.conv(1, cin, cout, hw)
        if unit != 2:
            n.bn(cout)


def _head(n: _Counter, head: str, c: int, h: int, w: int, emb: int) -> None:
    if head == "Z":
        n.bn(c)
    elif head in ("E", "FC", "I"):
        n.bn(c), n.linear(c * h * w, emb), n.bn(emb, True)
    elif head == "SFC":
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        n.bn(c), n.conv(3, c, c, h2 * w2, groups=c), n.bn(c), n.act(c), n.conv(1, c, c, h2 * w2, bias=True)
        n.bn(c), n.act(c), n.linear(c * h2 * w2, emb), n.bn(emb, True)
    elif head == "GAP":
        n.bn(c), n.act(c), n.linear(c, emb), n.bn(emb, True)
    elif head == "GNAP":
        filters = c
        if emb > c:
            n.conv(1, c, emb, h * w), n.bn(emb), n.act(emb)
            filters = emb
        n.bn(filters, True)
        if emb < filters:
            n.bn(filters, True), n.linear(filters, emb)
        n.bn(emb, True)
    elif head == "GDC":
        n.conv(7, c, c, max(h - 6, 0) * max(w - 6, 0), groups=c), n.bn(c)
        n.linear(c * max(h - 6, 0) * max(w - 6, 0), emb), n.bn(emb, True)
    elif head in ("F", "G"):
        n.bn(c), n.linear(c * h * w, emb)
    elif head == "H":
        n.linear(c * h * w, emb)
    elif head == "J":
        n.linear(c * h * w, emb), n.bn(emb, True)


def network_size(config: Any) -> NetworkSize:
    """The size of the network ``config`` (a validated :class:`NetConfig`) builds."""
    n = _Counter(config.net_act == "prelu")
    height, width = (int(v) for v in config.input_size)
    filters = [int(v) for v in config.filter_list]
    largest = 3 * height * width
    if config.net_input == 2:
        n.bn(3, True)
    if config.net_input == 0:
        height, width = (height + 1) // 2, (width + 1) // 2
        n.conv(7, 3, filters[0], height * width)
    else:
        n.conv(3, 3, filters[0], height * width)
    n.bn(filters[0]), n.act(filters[0])
    largest = max(largest, filters[0] * height * width)
    cin = filters[0]
    for stage, count in enumerate(config.units):
        cout = filters[stage + 1]
        largest = max(largest, max(cin, cout) * height * width)
        for j in range(int(count)):
            hw = height * width if j == 0 else ((height + 1) // 2) * ((width + 1) // 2)
            _unit(n, config.net_unit, config.bottle_neck, cin if j == 0 else cout, cout, j == 0, hw, config.net_se)
        height, width = (height + 1) // 2, (width + 1) // 2
        cin = cout
    if config.bottle_neck:
        n.conv(1, cin, 512, height * width), n.bn(512), n.act(512)
        cin = 512
    _head(n, config.net_output, cin, height, width, int(config.emb_size))
    largest = max(largest, int(config.emb_size))
    return NetworkSize(n.values, n.flops, largest)


def check_network_size(config: Any, where: str = "") -> NetworkSize:
    """Refuse a config whose network is above ``max_parameters``, ``max_flops`` or ``max_tensor_bytes``
    (its largest float32 activation at batch 1)."""
    size = network_size(config)
    name = f"network {config.short_name()} at {config.input_size[0]}x{config.input_size[1]}"
    check("max_parameters", size.state_values, f"{name}: its parameters and statistics", where)
    check("max_flops", size.flops, f"{name}: one forward pass (FLOPs at batch 1)", where)
    check("max_tensor_bytes", 4 * size.largest_activation, f"{name}: its largest activation (bytes at batch 1)",
          where)
    return size


DECLARED_SLACK = 2  # a network may need at most twice the values its file holds (a few tensors may be missing)


def check_declared_size(config: Any, present_values: int, source: str) -> None:
    """Refuse a config (read from a file, or inferred from its shapes) whose network needs far more
    values than the file holds: building it would allocate memory the file never paid for. A small
    shortfall is left to the loader, which names each missing or mis-shaped tensor."""
    needed = network_size(config).state_values
    if needed > DECLARED_SLACK * present_values + 65536:
        raise FresnetError(
            f"{source}: the network it describes "
            f"({config.short_name()}, {config.input_size[0]}x{config.input_size[1]}) "
            f"has {needed:,} parameters and statistics, but the file holds only {present_values:,} values; the "
            "stored configuration does not match the weights: the file was edited, damaged or crafted"
        )
