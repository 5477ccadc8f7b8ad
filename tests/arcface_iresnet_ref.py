"""A minimal, faithful re-implementation of arcface_torch's ``IResNet`` / ``IBasicBlock``
(insightface ``recognition/arcface_torch/backbones/iresnet.py``), written for the parity tests.

Same module names (so the same ``state_dict`` keys), same BatchNorm eps (1e-5), same dataflow.
Two deliberate simplifications that do not change what is computed in eval mode: the ``fc_scale``
is derived from ``input_size`` (the original hard-codes 7*7, i.e. 112x112), and the stage widths can
be shrunk (``widths``) so tests stay cheap.
"""
from __future__ import annotations

import torch
from torch import nn

ARCFACE_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out


class IResNet(nn.Module):
    def __init__(self, layers, num_features=512, dropout=0.0, input_size=(112, 112), widths=(64, 64, 128, 256, 512)):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        for i, (planes, blocks) in enumerate(zip(widths[1:], layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, blocks, stride=2))
        self.num_stages = len(layers)
        h, w = input_size
        for _ in layers:
            h, w = (h + 1) // 2, (w + 1) // 2
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(widths[-1] * h * w, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def trunk(self, x):
        """Everything before ``fc`` (arcface_torch runs this part under its fp16 autocast)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        return self.dropout(x)

    def forward(self, x):
        x = self.fc(self.trunk(x))
        x = self.features(x)
        return x


def preprocess(images_0_255: torch.Tensor) -> torch.Tensor:
    """arcface_torch's own input pipeline: ``ToTensor`` (/255) then ``Normalize(0.5, 0.5)``."""
    return (images_0_255 / 255.0 - 0.5) / 0.5


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* random BatchNorm statistics (so that every eps and scale matters)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) / fan_in**0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        elif isinstance(module, nn.PReLU):
            module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.5)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            if module is not getattr(model, "features", None):
                module.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
            module.bias.copy_(0.1 * torch.randn(n, generator=g))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            if module is getattr(model, "features", None):
                # tiny variances (some below 1e-5) make the 1e-5 / 2e-5 eps difference visible
                module.running_var.copy_(torch.rand(n, generator=g) * 1e-4 + 5e-6)
                module.running_var[0] = 3e-6
            else:
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.num_batches_tracked.fill_(7)
    return model
