"""Embedding heads: ``symbol_utils.get_fc1`` with its twelve ``fc_type`` values.

Layer attribute names are the original node names (``bn1``, ``pre_fc1``, ``fc1``, ``convf``, ...).
Head BNs use momentum 0.9 whatever ``bn_mom`` says (``symbol_utils.bn_mom`` is read once at import).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fresnet.network.layers import (
    BN_EPS,
    DROPOUT_P,
    HEAD_BN_MOMENTUM,
    LINEAR_BN_EPS,
    ActFactory,
    MXBatchNorm,
)


def _bn(channels: int, fix_gamma: bool = False, eps: float = BN_EPS) -> MXBatchNorm:
    return MXBatchNorm(channels, eps=eps, momentum=HEAD_BN_MOMENTUM, fix_gamma=fix_gamma)


class HeadZ(nn.Module):
    """bn1 -> dropout; the output stays 4-D."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.bn1 = _bn(channels)
        self.dropout = nn.Dropout(DROPOUT_P)

    def forward(self, x):
        return self.dropout(self.bn1(x))


class HeadE(nn.Module):
    """E: bn1 -> dropout -> pre_fc1 (FC with bias on the flattened C*H*W map) -> fc1 (BN, fix_gamma).
    FC and I are the same without dropout (``dropout=False``)."""

    def __init__(self, channels, hw, emb_size, act, dropout=True):
        super().__init__()
        self.bn1 = _bn(channels)
        self.dropout = nn.Dropout(DROPOUT_P) if dropout else nn.Identity()
        self.pre_fc1 = nn.Linear(channels * hw[0] * hw[1], emb_size)
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        x = self.dropout(self.bn1(x))
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


class HeadSFC(nn.Module):
    """SFC: bn1 -> convf (3x3/2 depthwise) -> bnf -> reluf -> convf2 (1x1, bias) -> bnf2 -> reluf2 -> pre_fc1 -> fc1."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.bn1 = _bn(channels)
        self.convf = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
        self.bnf = _bn(channels)
        self.reluf = act(channels)
        self.convf2 = nn.Conv2d(channels, channels, 1, bias=True)
        self.bnf2 = _bn(channels)
        self.reluf2 = act(channels)
        h, w = (hw[0] + 1) // 2, (hw[1] + 1) // 2
        self.pre_fc1 = nn.Linear(channels * h * w, emb_size)
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        x = self.reluf(self.bnf(self.convf(self.bn1(x))))
        x = self.reluf2(self.bnf2(self.convf2(x)))
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


class HeadGAP(nn.Module):
    """GAP: bn1 -> relu1 (network act) -> global average pool -> pre_fc1 -> fc1."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.bn1 = _bn(channels)
        self.relu1 = act(channels)
        self.pre_fc1 = nn.Linear(channels, emb_size)
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        x = self.relu1(self.bn1(x)).mean(dim=(2, 3))
        return self.fc1(self.pre_fc1(x))


class HeadGNAP(nn.Module):
    """GNAP (mobilefacenet++): [convx -> convx_bn -> convx_relu if emb > C] -> bn6f (fix_gamma) ->
    rescale each position by mean(|x|_2) / |x|_2 -> global average pool -> [bn6w -> pre_fc1 if emb < C] -> fc1.

    The mean of the L2 norms is taken over the *whole tensor, batch included* (``mx.sym.mean`` with no
    axis), so samples in a batch influence each other. That coupling is reproduced on purpose.
    """

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        filters = channels
        if emb_size > channels:
            self.convx = nn.Conv2d(channels, emb_size, 1, bias=False)
            self.convx_bn = _bn(emb_size)
            self.convx_relu = act(emb_size)
            filters = emb_size
        else:
            self.convx = None
        self.bn6f = _bn(filters, fix_gamma=True)
        if emb_size < filters:
            self.bn6w = _bn(filters, fix_gamma=True)
            self.pre_fc1 = nn.Linear(filters, emb_size)
        else:
            self.bn6w = None
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        if self.convx is not None:
            x = self.convx_relu(self.convx_bn(self.convx(x)))
        x = self.bn6f(x)
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        x = x * (norm.mean() / norm)
        x = x.mean(dim=(2, 3))
        if self.bn6w is not None:
            x = self.pre_fc1(self.bn6w(x))
        return self.fc1(x)


class HeadGDC(nn.Module):
    """GDC (mobilefacenet): conv_6dw7_7 depthwise 7x7 (pad 0) -> its BN with MXNet's default eps=1e-3
    -> pre_fc1 -> fc1."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.conv_6dw7_7_conv2d = nn.Conv2d(channels, channels, 7, groups=channels, bias=False)
        self.conv_6dw7_7_batchnorm = _bn(channels, eps=LINEAR_BN_EPS)
        self.pre_fc1 = nn.Linear(channels * (hw[0] - 6) * (hw[1] - 6), emb_size)
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        x = self.conv_6dw7_7_batchnorm(self.conv_6dw7_7_conv2d(x))
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


class HeadF(nn.Module):
    """F: bn1 -> dropout -> FC named ``fc1`` (bias, no BN). G: the same without dropout."""

    def __init__(self, channels, hw, emb_size, act, dropout=True):
        super().__init__()
        self.bn1 = _bn(channels)
        self.dropout = nn.Dropout(DROPOUT_P) if dropout else nn.Identity()
        self.fc1 = nn.Linear(channels * hw[0] * hw[1], emb_size)

    def forward(self, x):
        return self.fc1(torch.flatten(self.dropout(self.bn1(x)), 1))


class HeadH(nn.Module):
    """H: FC ``fc1`` directly on the trunk."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.fc1 = nn.Linear(channels * hw[0] * hw[1], emb_size)

    def forward(self, x):
        return self.fc1(torch.flatten(x, 1))


class HeadJ(nn.Module):
    """J: pre_fc1 -> fc1 BN (no bn1)."""

    def __init__(self, channels, hw, emb_size, act):
        super().__init__()
        self.pre_fc1 = nn.Linear(channels * hw[0] * hw[1], emb_size)
        self.fc1 = _bn(emb_size, fix_gamma=True)

    def forward(self, x):
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


def _without_dropout(cls):
    return lambda *args: cls(*args, dropout=False)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "Z": HeadZ,
    "E": HeadE,
    "FC": _without_dropout(HeadE),
    "I": _without_dropout(HeadE),  # byte-identical to FC in the original
    "SFC": HeadSFC,
    "GAP": HeadGAP,
    "GNAP": HeadGNAP,
    "GDC": HeadGDC,
    "F": HeadF,
    "G": _without_dropout(HeadF),
    "H": HeadH,
    "J": HeadJ,
}


def build_head(name: str, channels: int, hw, emb_size: int, act: ActFactory) -> nn.Module:
    return HEADS[name](channels, tuple(hw), emb_size, act)
