"""Layers that reproduce MXNet's semantics, and the MXNet quirks they depend on.

Everything surprising about the original lives here, named after what it does:

* ``BN_EPS`` (2e-5) is what fresnet passes to every BatchNorm; ``LINEAR_BN_EPS`` (1e-3) is MXNet's
  default eps, which the GDC head's ``Linear`` BN inherits because it passes none.
* MXNet's ``momentum`` is the weight of the *old* moving stat, so PyTorch's momentum is ``1 - m``.
* ``fix_gamma=True`` means gamma is 1 and never learnt: such BNs have no weight parameter here.
* Moving variance is updated with the *biased* batch variance (PyTorch uses the unbiased one).
* Input normalisation for net_input 0/1 is ``(x - 127.5) * 0.0078125`` -- a scale of 1/128, not 1/127.5.
* PReLU (``LeakyReLU act_type='prelu'``) has a per-channel gamma initialised at 0.25.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.errors import FresnetError

BN_EPS = 2e-5
LINEAR_BN_EPS = 1e-3
HEAD_BN_MOMENTUM = 0.9  # symbol_utils.bn_mom is read once at import: head BNs ignore config.bn_mom
PRELU_INIT = 0.25
INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125  # 1/128
DROPOUT_P = 0.4


class MXBatchNorm(nn.Module):
    """BatchNorm with MXNet semantics, for 2-D (N, C) and 4-D (N, C, H, W) inputs.

    ``fix_gamma=True`` drops the scale parameter (MXNet ignores the stored gamma and uses 1).
    In training mode the moving statistics are updated with the biased batch variance, as MXNet
    does (verified against MXNet 1.9.1 to 6e-8; the unbiased PyTorch rule misses by 2e-2).
    """

    def __init__(self, num_features: int, eps: float = BN_EPS, momentum: float = 0.9, fix_gamma: bool = False):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum  # MXNet convention: weight of the old value
        self.fix_gamma = fix_gamma
        if fix_gamma:
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # set by activation checkpointing while a segment is recomputed, so stats update once
        self.freeze_stats = False

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum(mxnet)={self.momentum}, fix_gamma={self.fix_gamma}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        # One op normalises and returns the batch mean and 1/sqrt(var + eps); the moving stats are
        # updated from those (biased variance, as MXNet), so the input is read once for the stats,
        # not twice. A fixed gamma is passed as an explicit 1: CUDA's batch-norm backward rejects a
        # missing weight ("invalid gradient at index 2"), the CPU kernel accepted it.
        weight = self.weight if self.weight is not None else self._unit_gamma(x)
        out, mean, invstd = torch.ops.aten._native_batch_norm_legit.no_stats(x, weight, self.bias, True, 0.0, self.eps)
        if not self.freeze_stats:
            with torch.no_grad():
                var = invstd.float().pow(-2) - self.eps
                m = self.momentum
                self.running_mean.mul_(m).add_(mean.to(self.running_mean.dtype), alpha=1 - m)
                self.running_var.mul_(m).add_(var.to(self.running_var.dtype), alpha=1 - m)
        return out

    def _unit_gamma(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(self.num_features, dtype=self.bias.dtype, device=x.device)


ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "prelu": lambda channels: nn.PReLU(channels, init=PRELU_INIT),
    "relu": lambda channels: nn.ReLU(),
    "sigmoid": lambda channels: nn.Sigmoid(),
    "tanh": lambda channels: nn.Tanh(),
    "softrelu": lambda channels: nn.Softplus(),  # MXNet's softrelu is log(1 + exp(x))
    "softsign": lambda channels: nn.Softsign(),
}


def make_act(act_type: str, channels: int) -> nn.Module:
    """The original ``Act``: a per-channel PReLU for 'prelu', else ``mx.sym.Activation(act_type)``."""
    try:
        return ACTIVATIONS[act_type](channels)
    except KeyError:
        raise FresnetError(f"unknown activation {act_type!r}; choose one of {', '.join(ACTIVATIONS)}") from None


ActFactory = Callable[[int], nn.Module]


class InputNorm(nn.Module):
    """``(x - 127.5) * 0.0078125``: the original's ``_minusscalar0`` / ``_mulscalar0`` for inputs 0 and 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - INPUT_MEAN) * INPUT_SCALE


class SEBlock(nn.Module):
    """Squeeze-and-excitation as the original wires it: both 1x1 convs *with* bias, and the
    squeeze activation is the network's own (``_se_relu1`` is a PReLU in a prelu network)."""

    def __init__(self, channels: int, act: ActFactory):
        super().__init__()
        reduced = channels // 16
        self.conv1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.relu1 = act(reduced)
        self.conv2 = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.conv2(self.relu1(self.conv1(w))))
        return x * w


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, padding=0, groups=groups, bias=False)
