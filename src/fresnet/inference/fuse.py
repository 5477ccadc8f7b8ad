"""Fold BatchNorm into the neighbouring conv / FC layer, exactly, for deployment.

A BN in eval mode is an affine map ``y = x * scale + shift`` per channel. It folds exactly into
* the conv or FC that *feeds* it (``W * scale``, ``(b - mean) * scale + beta``), and
* the conv or FC that *consumes* it, when that layer has no zero padding (a 1x1 conv with pad 0,
  or an FC on the flattened map): ``W * scale`` on the input side plus ``W @ shift`` in the bias.
A BN in front of a padded 3x3 conv (the IR unit's ``bn1``) does not fold exactly -- the padding
zeros would be shifted too -- so it stays a BN. The table below says, per module type, which
pairs are folded; the modules' ``forward`` is unchanged, the folded BN just becomes an Identity.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.network import heads, units
from fresnet.network.layers import MXBatchNorm
from fresnet.network.model import FResNet, Reduce, Stem

# module type -> ((producer, bn), ...): BN applied to the producer's output
FOLD_AFTER = {
    Stem: (("conv0", "bn0"),),
    Reduce: (("convd", "bnd"),),
    units.UnitV1: (("conv1", "bn1"), ("conv2", "bn2"), ("conv1sc", "sc")),
    units.UnitV1Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv1sc", "sc")),
    units.UnitV2: (("conv1", "bn2"),),
    units.UnitV2Bottleneck: (("conv1", "bn2"), ("conv2", "bn3")),
    units.UnitV3: (("conv1", "bn2"), ("conv2", "bn3"), ("conv1sc", "sc")),
    units.UnitV3Bottleneck: (("conv1", "bn2"), ("conv2", "bn3"), ("conv3", "bn4"), ("conv1sc", "sc")),
    heads.HeadE: (("pre_fc1", "fc1"),),
    heads.HeadJ: (("pre_fc1", "fc1"),),
    heads.HeadGAP: (("pre_fc1", "fc1"),),
    heads.HeadSFC: (("convf", "bnf"), ("convf2", "bnf2"), ("pre_fc1", "fc1")),
    heads.HeadGDC: (("conv_6dw7_7_conv2d", "conv_6dw7_7_batchnorm"), ("pre_fc1", "fc1")),
    heads.HeadGNAP: (("convx", "convx_bn"), ("pre_fc1", "fc1")),
}
# module type -> ((bn, consumer), ...): BN output feeds an unpadded consumer (dropout is identity in eval)
FOLD_BEFORE = {
    units.UnitV3Bottleneck: (("bn1", "conv1"),),
    heads.HeadE: (("bn1", "pre_fc1"),),
    heads.HeadF: (("bn1", "fc1"),),
    heads.HeadGNAP: (("bn6w", "pre_fc1"),),
}


def bn_affine(bn: MXBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that bn(x) == x * scale + shift in eval mode, in float64."""
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = torch.ones_like(inv_std) if bn.weight is None else bn.weight.double()
    scale = gamma * inv_std
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _with_bias(layer: nn.Module) -> torch.Tensor:
    if layer.bias is None:
        layer.bias = nn.Parameter(
            torch.zeros(
                layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features,
                dtype=layer.weight.dtype,
                device=layer.weight.device,
            )
        )
    return layer.bias


@torch.no_grad()
def fold_after(layer: nn.Module, bn: MXBatchNorm) -> None:
    """bn(layer(x)) -> layer'(x)."""
    scale, shift = bn_affine(bn)
    weight = layer.weight.double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    bias = _with_bias(layer)
    layer.weight.copy_(weight * scale.view(shape))
    bias.copy_(bias.double() * scale + shift)


@torch.no_grad()
def fold_before(bn: MXBatchNorm, layer: nn.Module) -> None:
    """layer(bn(x)) -> layer'(x), for an FC (on a flattened C*H*W map) or an unpadded 1x1 conv."""
    scale, shift = bn_affine(bn)
    weight = layer.weight.double()
    bias = _with_bias(layer)
    if isinstance(layer, nn.Linear):
        repeat = layer.in_features // bn.num_features  # flatten is C-major: each channel spans H*W inputs
        scale_in, shift_in = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
        bias.copy_(bias.double() + weight @ shift_in)
        layer.weight.copy_(weight * scale_in)
        return
    if layer.kernel_size != (1, 1) or layer.padding not in ((0, 0), 0):
        raise ValueError("fold_before needs an unpadded 1x1 conv")
    groups = layer.groups
    out_ch, in_per_group = weight.shape[:2]
    extra = F.conv2d(shift.view(1, -1, 1, 1), weight, groups=groups).view(-1)
    per_out = scale.view(groups, 1, in_per_group).expand(groups, out_ch // groups, in_per_group)
    layer.weight.copy_(weight * per_out.reshape(out_ch, in_per_group, 1, 1))
    bias.copy_(bias.double() + extra)


def fold_batchnorm(model: FResNet, inplace: bool = False) -> FResNet:
    """Return an eval-mode copy of ``model`` with every exactly-foldable BN folded away.

    The result computes the same function in eval mode (to float rounding); it is meant for
    inference and export, not for training (the folded BNs no longer exist).
    """
    folded = model if inplace else copy.deepcopy(model)
    folded.eval()
    for module in list(folded.modules()):
        kind = type(module)
        for bn_name, consumer_name in FOLD_BEFORE.get(kind, ()):
            bn: Optional[MXBatchNorm] = getattr(module, bn_name, None)
            if isinstance(bn, MXBatchNorm):
                fold_before(bn, getattr(module, consumer_name))
                setattr(module, bn_name, nn.Identity())
        for producer_name, bn_name in FOLD_AFTER.get(kind, ()):
            producer = getattr(module, producer_name, None)
            bn = getattr(module, bn_name, None)
            if producer is not None and isinstance(bn, MXBatchNorm):
                fold_after(producer, bn)
                setattr(module, bn_name, nn.Identity())
    return folded


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, MXBatchNorm) for m in model.modules())
