"""Residual units, one small class per original function; ``forward`` mirrors its dataflow.

Every unit takes the same arguments: ``(in_ch, out_ch, stride, dim_match, act, norm, se)``, where
``act(channels)`` and ``norm(channels)`` build the activation and BatchNorm, and ``se`` switches on
squeeze-and-excitation. Layer attribute names are the original's name suffixes (``conv1``, ``bn1``,
``relu1``, ``conv1sc``, ``sc``, ``se``), so ``stage1.unit1.conv1.weight`` is
``stage1_unit1_conv1_weight`` in MXNet.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

import torch
from torch import nn

from fresnet.network.layers import ActFactory, SEBlock, conv1x1, conv3x3

NormFactory = Callable[[int], nn.Module]


class _Unit(nn.Module):
    """Shared parts: the optional SE block and the projection shortcut (conv1sc + BN ``sc``)."""

    bottle_neck = False

    def _init_se(self, out_ch: int, act: ActFactory, se: bool) -> None:
        self.se: Optional[SEBlock] = SEBlock(out_ch, act) if se else None

    def _init_shortcut(self, in_ch: int, out_ch: int, stride: int, dim_match: bool,
                       norm: Optional[NormFactory]) -> None:
        """The projection used when the shape changes: ``conv1sc`` then the BN ``sc`` (v1, v3), or,
        with ``norm=None``, a bare 1x1 conv named ``sc`` (v2, as the original names it)."""
        self.dim_match = dim_match
        if dim_match:
            return
        if norm is None:
            self.sc = conv1x1(in_ch, out_ch, stride)
        else:
            self.conv1sc = conv1x1(in_ch, out_ch, stride)
            self.sc = norm(out_ch)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dim_match else self.sc(self.conv1sc(x))

    def _apply_se(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.se is None else self.se(x)


class UnitV1(_Unit):
    """``residual_unit_v1`` / ``residual_unit_v1_L`` (basic): post-activation, act ``relu3`` after the add.

    v1 (net_input 0) strides conv1; v1_L (any other input) strides conv2 to keep resolution early.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False, late_stride: bool = True):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, 1 if late_stride else stride)
        self.bn1 = norm(out_ch)
        self.relu1 = act(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, stride if late_stride else 1)
        self.bn2 = norm(out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm)
        self.relu3 = act(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.relu1(self.bn1(self.conv1(x)))
        body = self._apply_se(self.bn2(self.conv2(body)))
        return self.relu3(body + self._shortcut(x))


class UnitV1Bottleneck(_Unit):
    """Bottleneck v1 / v1_L: 1x1 -> 3x3 -> 1x1 at width C/4; v1 strides conv1, v1_L strides conv3."""

    bottle_neck = True

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False, late_stride: bool = True):
        super().__init__()
        mid = int(out_ch * 0.25)
        self.conv1 = conv1x1(in_ch, mid, 1 if late_stride else stride)
        self.bn1 = norm(mid)
        self.relu1 = act(mid)
        self.conv2 = conv3x3(mid, mid)
        self.bn2 = norm(mid)
        self.relu2 = act(mid)
        self.conv3 = conv1x1(mid, out_ch, stride if late_stride else 1)
        self.bn3 = norm(out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm)
        self.relu3 = act(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.relu1(self.bn1(self.conv1(x)))
        body = self.relu2(self.bn2(self.conv2(body)))
        body = self._apply_se(self.bn3(self.conv3(body)))
        return self.relu3(body + self._shortcut(x))


class UnitV2(_Unit):
    """``residual_unit_v2`` (basic), pre-activation (fb.resnet.torch): bn1 -> act -> conv1 (stride)
    -> bn2 -> act -> conv2. The projection ``sc`` is a bare 1x1 conv on act1 (no BN), and nothing
    follows the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False):
        super().__init__()
        self.bn1 = norm(in_ch)
        self.relu1 = act(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = norm(out_ch)
        self.relu2 = act(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act1 = self.relu1(self.bn1(x))
        body = self.relu2(self.bn2(self.conv1(act1)))
        body = self._apply_se(self.conv2(body))
        return body + (x if self.dim_match else self.sc(act1))


class UnitV2Bottleneck(_Unit):
    """Bottleneck v2: bn1 -> act -> conv1 1x1 -> bn2 -> act -> conv2 3x3 (stride) -> bn3 -> act -> conv3 1x1."""

    bottle_neck = True

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False):
        super().__init__()
        mid = int(out_ch * 0.25)
        self.bn1 = norm(in_ch)
        self.relu1 = act(in_ch)
        self.conv1 = conv1x1(in_ch, mid)
        self.bn2 = norm(mid)
        self.relu2 = act(mid)
        self.conv2 = conv3x3(mid, mid, stride)
        self.bn3 = norm(mid)
        self.relu3 = act(mid)
        self.conv3 = conv1x1(mid, out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act1 = self.relu1(self.bn1(x))
        body = self.relu2(self.bn2(self.conv1(act1)))
        body = self.relu3(self.bn3(self.conv2(body)))
        body = self._apply_se(self.conv3(body))
        return body + (x if self.dim_match else self.sc(act1))


class UnitV3(_Unit):
    """``residual_unit_v3`` (basic), the "IR" unit: bn1 -> conv1 3x3 -> bn2 -> act -> conv2 3x3 (stride)
    -> bn3, plus the shortcut. No activation after the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False):
        super().__init__()
        self.bn1 = norm(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.bn2 = norm(out_ch)
        self.relu1 = act(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, stride)
        self.bn3 = norm(out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.relu1(self.bn2(self.conv1(self.bn1(x))))
        body = self._apply_se(self.bn3(self.conv2(body)))
        return body + self._shortcut(x)


class UnitV3Bottleneck(_Unit):
    """Bottleneck v3: bn1 -> conv1 1x1 -> bn2 -> act -> conv2 3x3 -> bn3 -> act -> conv3 1x1 (stride) -> bn4.

    With ``groups=32, width=0.5`` this is ``residual_unit_v3_x`` (ResNeXt): conv1 *and* conv2 are grouped.
    """

    bottle_neck = True

    def __init__(self, in_ch: int, out_ch: int, stride: int, dim_match: bool, act: ActFactory, norm: NormFactory,
                 se: bool = False, groups: int = 1, width: float = 0.25):
        super().__init__()
        mid = int(out_ch * width)
        self.bn1 = norm(in_ch)
        self.conv1 = conv1x1(in_ch, mid, groups=groups)
        self.bn2 = norm(mid)
        self.relu1 = act(mid)
        self.conv2 = conv3x3(mid, mid, groups=groups)
        self.bn3 = norm(mid)
        self.relu2 = act(mid)
        self.conv3 = conv1x1(mid, out_ch, stride)
        self.bn4 = norm(out_ch)
        self._init_se(out_ch, act, se)
        self._init_shortcut(in_ch, out_ch, stride, dim_match, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.relu1(self.bn2(self.conv1(self.bn1(x))))
        body = self.relu2(self.bn3(self.conv2(body)))
        body = self._apply_se(self.bn4(self.conv3(body)))
        return body + self._shortcut(x)


UnitBuilder = Callable[..., _Unit]

# (net_unit, bottle_neck) -> the unit's constructor, as the original ``residual_unit`` dispatches;
# v1 also depends on the stem (:func:`unit_builder`); '3x' is bottleneck only (NetConfig refuses it without)
UNITS: dict[tuple[Union[int, str], bool], UnitBuilder] = {
    (1, False): UnitV1,
    (1, True): UnitV1Bottleneck,
    (2, False): UnitV2,
    (2, True): UnitV2Bottleneck,
    (3, False): UnitV3,
    (3, True): UnitV3Bottleneck,
    ("3x", True): partial(UnitV3Bottleneck, groups=32, width=0.5),  # residual_unit_v3_x (ResNeXt)
}


def unit_builder(net_unit: Union[int, str], bottle_neck: bool, net_input: int) -> UnitBuilder:
    """The original ``residual_unit`` dispatcher, as a lookup in :data:`UNITS` returning a constructor.
    v1 strides its first conv with the 7x7 stem (net_input 0, ``residual_unit_v1``) and a later one
    otherwise (``residual_unit_v1_L``)."""
    build = UNITS[(net_unit, bool(bottle_neck))]
    return partial(build, late_stride=net_input != 0) if net_unit == 1 else build
