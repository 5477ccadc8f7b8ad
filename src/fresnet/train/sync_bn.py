"""BatchNorm whose training statistics span the global batch of all ranks (opt-in, ``sync_bn``).

With DDP each rank sees ``batch_size`` samples, so plain BatchNorm would normalise with per-rank
statistics and a 2-process run would not follow the 1-process one. :class:`SyncMXBatchNorm` keeps
``MXBatchNorm``'s semantics (biased moving variance, MXNet momentum, ``fix_gamma``) but computes the
batch mean and variance over every rank: two small all-reduces (the mean, then the centred sum of
squares, which is as accurate as the single-process two-pass variance). Gradients flow through the
all-reduces (:func:`fresnet.train.distributed.sum_partials`). ``network/layers.py`` is not changed: models
are converted in place by swapping the class of their BatchNorm modules.
"""
from __future__ import annotations

import torch
from torch import nn

from fresnet.network.layers import MXBatchNorm
from fresnet.train import distributed as D


class SyncMXBatchNorm(MXBatchNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not D.active():
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device)
        total = D.sum_partials(torch.cat([xf.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = D.sum_partials(centred.pow(2).sum(dims)) / n
        if not self.freeze_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(m).add_(mean.detach().to(self.running_mean.dtype), alpha=1 - m)
                self.running_var.mul_(m).add_(var.detach().to(self.running_var.dtype), alpha=1 - m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        y = y + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every ``MXBatchNorm`` of ``model`` a :class:`SyncMXBatchNorm` (same parameters, same
    state-dict keys); returns the model."""
    for module in model.modules():
        if type(module) is MXBatchNorm:
            module.__class__ = SyncMXBatchNorm
    return model

