"""``facenet_pytorch.MTCNN`` as a test oracle, without torchvision.

PyPI's torchvision wheels are CUDA builds that do not load against the CPU torch, and
facenet-pytorch 2.6.0 imports only two names from it: ``torchvision.ops.boxes.batched_nms`` and
``torchvision.transforms.functional`` (``to_tensor``, on paths that ``detect`` never takes). This module
stands those in with a fake ``torchvision`` package in ``sys.modules`` before importing facenet-pytorch,
and, when ``tqdm`` is not installed, a fake ``tqdm`` too (its model-download helper imports it at
import time; nothing here downloads).

``greedy_batched_nms`` is torchvision's documented semantics written plainly: boxes ``x1, y1, x2, y2``,
areas without ``+1``, IoU in the boxes' dtype, a box suppressed when its IoU with a kept, higher
scored box of the same index is *strictly* greater than the threshold; kept indices by decreasing
score (ties: lower index first).
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch


def greedy_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                       iou_threshold: float) -> torch.Tensor:
    """The whole pairwise IoU table (float32, torch ops), then the greedy pass over it."""
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.detach().cpu()[order]
    groups = idxs.detach().cpu()[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    n = len(order)
    over = np.zeros((n, n), bool)
    for start in range(0, n, 512):  # rows in blocks: bounded memory
        rows = slice(start, start + 512)
        w = torch.clamp(torch.minimum(b[rows, None, 2], b[None, :, 2]) - torch.maximum(b[rows, None, 0], b[None, :, 0]), min=0)
        h = torch.clamp(torch.minimum(b[rows, None, 3], b[None, :, 3]) - torch.maximum(b[rows, None, 1], b[None, :, 1]), min=0)
        inter = w * h
        iou = inter / (area[rows, None] + area[None, :] - inter)
        over[rows] = ((iou > iou_threshold) & (groups[rows, None] == groups[None, :])).numpy()
    removed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if not removed[i]:
            keep.append(i)
            removed[i + 1:] |= over[i, i + 1:]
    return order[torch.as_tensor(keep, dtype=torch.long)].to(boxes.device)


def install_fake_torchvision(batched_nms=greedy_batched_nms) -> None:
    """Put a minimal ``torchvision`` (``ops.boxes.batched_nms``, ``transforms.functional``) in sys.modules."""
    if "facenet_pytorch" in sys.modules:  # already imported against a (fake or real) torchvision
        sys.modules["facenet_pytorch.models.utils.detect_face"].batched_nms = batched_nms
        return
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    boxes.batched_nms = batched_nms
    ops.boxes, ops.batched_nms = boxes, batched_nms

    def to_tensor(pic):
        return torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0).permute(2, 0, 1)

    functional.to_tensor = to_tensor
    transforms.functional = functional
    tv.ops, tv.transforms = ops, transforms
    modules = {"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
               "torchvision.transforms": transforms,
               "torchvision.transforms.functional": functional}
    try:
        import tqdm  # noqa: F401
    except ImportError:
        fake_tqdm = types.ModuleType("tqdm")
        fake_tqdm.tqdm = None
        fake_tqdm_auto = types.ModuleType("tqdm.auto")
        fake_tqdm_auto.tqdm = None
        fake_tqdm.auto = fake_tqdm_auto
        modules.update({"tqdm": fake_tqdm, "tqdm.auto": fake_tqdm_auto})
    for name, module in modules.items():
        sys.modules.setdefault(name, module)


def facenet_mtcnn(**options):
    """``facenet_pytorch.MTCNN(keep_all=True, select_largest=False, **options)``, or skip when absent."""
    try:
        import importlib.metadata
        importlib.metadata.distribution("facenet-pytorch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    install_fake_torchvision()
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, select_largest=False, **options).eval()


def facenet_detect(mtcnn, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes (N,4), scores (N,), landmarks (N,5,2))`` from ``mtcnn.detect``, empty arrays for no face."""
    boxes, probs, points = mtcnn.detect(rgb, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    return (np.asarray(boxes, np.float32), np.asarray(probs, np.float32), np.asarray(points, np.float32))
