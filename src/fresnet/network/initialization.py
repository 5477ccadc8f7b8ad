"""Default initialisation, as the original ``train.py`` set it up.

``mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)``: every weight of a conv or FC
is drawn from N(0, sqrt(2 / fan_out)), where fan_out = out_channels * kh * kw (out_features for FC).
Biases start at 0, BatchNorm gamma at 1 and beta at 0, and PReLU gammas at 0.25 (the op's own
``__init__`` attribute, which takes precedence over the global initialiser).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fresnet.network.layers import PRELU_INIT, MXBatchNorm

XAVIER_MAGNITUDE = 2.0


def xavier_out_gaussian_(weight: torch.Tensor, magnitude: float = XAVIER_MAGNITUDE) -> torch.Tensor:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_out = weight.shape[0] * receptive
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(magnitude / fan_out))


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if generator is None:
                xavier_out_gaussian_(module.weight)
            else:
                receptive = math.prod(module.weight.shape[2:]) if module.weight.dim() > 2 else 1
                std = math.sqrt(XAVIER_MAGNITUDE / (module.weight.shape[0] * receptive))
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, MXBatchNorm):
            if module.weight is not None:
                module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        elif isinstance(module, nn.PReLU):
            module.weight.fill_(PRELU_INIT)
    return model
