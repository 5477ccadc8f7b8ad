"""MTCNN's three networks (P-Net, R-Net, O-Net) as facenet-pytorch 2.6.0's weights expect them.

The parameter names match the state dicts of ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (MIT), which
were converted from the original TensorFlow/Caffe MTCNN: the dense layers read their input flattened
in ``(N, W, H, C)`` order, so the feature map is transposed before flattening.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.errors import FresnetError


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 windows at stride 2. ``(N,3,H,W) -> (reg (N,4,h,w), prob (N,2,h,w))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool_2x2_ceil(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        # both 1x1 heads in one convolution; the 2-channel logits made dense before the softmax
        heads = F.conv2d(x, torch.cat([self.conv4_1.weight, self.conv4_2.weight]),
                         torch.cat([self.conv4_1.bias, self.conv4_2.bias]))
        return heads[:, 2:], torch.softmax(heads[:, :2].contiguous(), dim=1)


def _max_pool_2x2_ceil(x: torch.Tensor) -> torch.Tensor:
    """``MaxPool2d(2, 2, ceil_mode=True)`` as the max of four strided views (same values; faster on
    channels-last maps): an odd last row/column is padded with -inf, which a max never picks."""
    height, width = x.shape[2:]
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2), value=float("-inf"))
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., ::2, 1::2]),
                         torch.maximum(x[..., 1::2, ::2], x[..., 1::2, 1::2]))


class RNet(nn.Module):
    """Refine net on 24x24 crops: ``(N,3,24,24) -> (reg (N,4), prob (N,2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: ``(N,3,48,48) -> (reg (N,4), landmarks (N,10) x's then y's, prob (N,2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def load_net(net: nn.Module, path: Path) -> nn.Module:
    """``net`` with the tensors of ``path`` (a plain state dict, read with ``weights_only=True``), in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise FresnetError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise FresnetError(f"{path}: does not fit MTCNN's {type(net).__name__}: {error}") from None
    return net.eval().requires_grad_(False)
