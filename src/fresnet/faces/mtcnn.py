"""MTCNN (Zhang et al. 2016) in PyTorch with facenet-pytorch 2.6.0's weights: the embedded default detector.

Three stages, as ``facenet_pytorch.MTCNN.detect`` runs them (its results are the tests' oracle):

1. an image pyramid (scales ``12 / min_face_size * factor**k`` while the short side stays >= 12 px),
   P-Net on every level, proposals where P(face) >= ``thresholds[0]``, IoU-NMS 0.5 per level then
   0.7 over all levels, box regression, squared boxes;
2. R-Net on 24x24 crops, P(face) > ``thresholds[1]``, IoU-NMS 0.7, regression, squared boxes;
3. O-Net on 48x48 crops, P(face) > ``thresholds[2]``, five landmarks, regression, ``'Min'``-NMS 0.7.

Every resampling (each pyramid level and each crop) is an area average (``interpolate(mode='area')``)
of the one photo, so all of them are read from a single summed-area table of the uint8 image:
the whole pyramid and all crops of a stage are a few batched gathers instead of one resize per level
and per box. The sums are exact integers and are divided as PyTorch's area pooling divides them
(by the bin height, then the width, in float32), so the nets see the same inputs bit for bit.

Crops are the in-image part of each box, stretched (the reference does not zero-pad at the
border). A box wholly outside the photo (an empty crop) is dropped; the reference fails there.

Landmarks are left eye, right eye, nose, left mouth corner, right mouth corner *as seen in the
image* — already InsightFace's order (``fresnet.faces.detection``). Rows come best score first.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from fresnet.errors import FresnetError
from fresnet.faces.detection import Detections, check_rgb_image
from fresnet.faces.mtcnn_nets import ONet, PNet, RNet, load_net
from fresnet.faces.nms import nms_iou, nms_min_plus_one
from fresnet.faces.weights import mtcnn_weights

FACENET_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults
INSIGHTFACE_THRESHOLDS = (0.6, 0.7, 0.8)  # InsightFace's MXNet deploy (face_model.py)
_CROP_BATCH = 2048  # R-/O-Net crops per forward, bounds memory on photos with many candidates


class _AreaSampler:
    """Area-average resampling of one uint8 image from its summed-area table, batched over rectangles."""

    def __init__(self, image: np.ndarray, device: torch.device) -> None:  # (H, W, 3) uint8
        height, width, _ = image.shape
        # exact integer sums (OpenCV's integral image); int32 holds them while H * W * 255 < 2**31
        if height * width * 255 < 2**31:
            table = torch.from_numpy(cv2.integral(image, sdepth=cv2.CV_32S))
        else:
            table = torch.from_numpy(cv2.integral(image, sdepth=cv2.CV_64F)).to(torch.int64)
        self.table = table.to(device)
        self.height, self.width = height, width

    @staticmethod
    def _bins(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive-pooling bins of ``size`` outputs over ``[start, start + length)``: ``(n, size)`` edges."""
        i = torch.arange(size, device=start.device)
        lo = start[:, None] + torch.div(i * length[:, None], size, rounding_mode="floor")
        hi = start[:, None] - torch.div(-(i + 1) * length[:, None], size, rounding_mode="floor")
        return lo, hi

    def whole(self, size: tuple[int, int]) -> torch.Tensor:
        """The whole image resized to ``size``: ``(1, 3, h, w)`` float32 (separable: rows, then columns)."""
        zero = torch.zeros(1, dtype=torch.int64, device=self.table.device)
        top, bottom = (edge[0] for edge in self._bins(zero, zero + self.height, size[0]))
        left, right = (edge[0] for edge in self._bins(zero, zero + self.width, size[1]))
        rows = self.table.index_select(0, bottom) - self.table.index_select(0, top)
        sums = rows.index_select(1, right) - rows.index_select(1, left)
        heights = (bottom - top).to(torch.float32)[:, None, None]
        widths = (right - left).to(torch.float32)[None, :, None]
        # (1, h, w, 3) viewed as NCHW: channels-last with a true batch stride, which oneDNN's fast
        # convolution path needs (a size-1 batch dim of stride 3 sends it down a path ~1.5x slower)
        return sums.to(torch.float32).div_(heights).div_(widths).unsqueeze(0).permute(0, 3, 1, 2)

    def sample(self, y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
               size: tuple[int, int]) -> torch.Tensor:
        """Rectangles ``[y0, y1) x [x0, x1)`` (``(n,)`` int64 each) resized to ``size``: ``(n, 3, h, w)`` float32."""
        top, bottom = self._bins(y0, y1 - y0, size[0])
        left, right = self._bins(x0, x1 - x0, size[1])
        flat = self.table.view(-1, 3)
        stride = self.width + 1

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return flat.index_select(0, (rows[:, :, None] * stride + cols[:, None, :]).flatten())

        sums = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
        sums = sums.view(len(y0), size[0], size[1], 3)
        heights = (bottom - top).to(torch.float32)[:, :, None, None]
        widths = (right - left).to(torch.float32)[:, None, :, None]
        return sums.to(torch.float32).div_(heights).div_(widths).permute(0, 3, 1, 2)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """``(x - 127.5) * 0.0078125`` as the reference computes it, in place."""
    return pixels.sub_(127.5).mul_(0.0078125)


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes ``(n, >=4)`` grown to squares about their centres (side = the longer side); in place."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regressed(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by R-/O-Net's offsets, in units of the pixel-inclusive width and height; in place."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    moved = torch.stack([boxes[:, 0] + offsets[:, 0] * w, boxes[:, 1] + offsets[:, 1] * h,
                         boxes[:, 2] + offsets[:, 2] * w, boxes[:, 3] + offsets[:, 3] * h], dim=1)
    boxes[:, :4] = moved
    return boxes


def _crop_rectangles(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Pixel rectangles ``[y0, y1) x [x0, x1)`` that the boxes cover inside the image, and which are non-empty."""
    corners = boxes[:, :4].trunc().to(torch.int64)
    x0 = corners[:, 0].clamp(min=1) - 1
    y0 = corners[:, 1].clamp(min=1) - 1
    x1 = corners[:, 2].clamp(max=width)
    y1 = corners[:, 3].clamp(max=height)
    return y0, y1, x0, x1, (y1 > y0) & (x1 > x0)


class MTCNN:
    """MTCNN face detector; ``detect(rgb_uint8) -> Detections``.

    ``thresholds``: P-/R-/O-Net face probabilities (facenet-pytorch's ``FACENET_THRESHOLDS`` by
    default, ``INSIGHTFACE_THRESHOLDS`` for InsightFace's MXNet deploy). ``min_face_size``: smallest
    face searched, in pixels. ``factor``: pyramid scale step. ``weights``: ``{'pnet','rnet','onet'}``
    paths (default: the facenet-pytorch 2.6.0 wheel's, digest-checked). ``device``: where the nets run.
    """

    name = "mtcnn"

    def __init__(self, min_face_size: float = 20.0, thresholds: Sequence[float] = FACENET_THRESHOLDS,
                 factor: float = 0.709, device: str | torch.device = "cpu",
                 weights: Mapping[str, str | Path] | None = None) -> None:
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise FresnetError(f"MTCNN thresholds must be three probabilities (P-, R-, O-Net), got {thresholds}")
        if not 0.0 < factor < 1.0:
            raise FresnetError(f"MTCNN pyramid factor must lie in (0, 1), got {factor}")
        if not min_face_size > 0:
            raise FresnetError(f"MTCNN min_face_size must be positive, got {min_face_size}")
        self.min_face_size = float(min_face_size)
        self.thresholds = thresholds
        self.factor = float(factor)
        self.device = torch.device(device)
        paths = dict(weights) if weights is not None else mtcnn_weights()
        missing = {"pnet", "rnet", "onet"} - set(paths)
        if missing:
            raise FresnetError(f"MTCNN weights lack {sorted(missing)}; give paths for 'pnet', 'rnet' and 'onet'")
        self.pnet = load_net(PNet(), Path(paths["pnet"])).to(self.device)
        self.rnet = load_net(RNet(), Path(paths["rnet"])).to(self.device)
        self.onet = load_net(ONet(), Path(paths["onet"])).to(self.device)

    def pyramid_scales(self, height: int, width: int) -> list[float]:
        """The pyramid's scales for an image of this size (empty when it is smaller than one 12 px window)."""
        scale = 12.0 / self.min_face_size
        short = min(height, width) * scale
        scales = []
        while short >= 12:
            scales.append(scale)
            scale *= self.factor
            short *= self.factor
        return scales

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> Detections:
        rgb = check_rgb_image(image)
        height, width, _ = rgb.shape
        sampler = _AreaSampler(rgb, self.device)
        boxes = self._propose(sampler, height, width)
        if len(boxes):
            boxes = self._refine(sampler, boxes, height, width)
        if not len(boxes):
            return Detections.empty()
        boxes, points = self._output(sampler, boxes, height, width)
        if not len(boxes):
            return Detections.empty()
        boxes, points = boxes.cpu().numpy(), points.cpu().numpy()
        return Detections(np.ascontiguousarray(boxes[:, :4]), np.ascontiguousarray(boxes[:, 4]),
                          np.ascontiguousarray(points))

    # ---- stage 1: P-Net over the pyramid ----
    def _propose(self, sampler: _AreaSampler, height: int, width: int) -> torch.Tensor:
        levels = []
        for scale in self.pyramid_scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            offsets, probs = self.pnet(_normalise(sampler.whole(size)))
            candidates = self._windows(offsets[0], probs[0, 1], scale)
            keep = nms_iou(candidates[:, :4].cpu().numpy(), candidates[:, 4].cpu().numpy(), 0.5)
            levels.append(candidates[torch.from_numpy(keep).to(self.device)])
        if not levels:
            return torch.zeros((0, 5), device=self.device)
        candidates = torch.cat(levels)
        keep = nms_iou(candidates[:, :4].cpu().numpy(), candidates[:, 4].cpu().numpy(), 0.7)
        candidates = candidates[torch.from_numpy(keep).to(self.device)]
        w = candidates[:, 2] - candidates[:, 0]
        h = candidates[:, 3] - candidates[:, 1]
        boxes = torch.stack([candidates[:, 0] + candidates[:, 5] * w, candidates[:, 1] + candidates[:, 6] * h,
                             candidates[:, 2] + candidates[:, 7] * w, candidates[:, 3] + candidates[:, 8] * h,
                             candidates[:, 4]], dim=1)
        return _squared(boxes)

    def _windows(self, offsets: torch.Tensor, probs: torch.Tensor, scale: float) -> torch.Tensor:
        """P-Net's 12x12 windows (stride 2) with P(face) >= threshold: ``(n, 9)`` box, score, 4 offsets."""
        mask = probs >= self.thresholds[0]
        where = mask.nonzero()
        xy = where.flip(1).to(offsets.dtype)
        start = ((2 * xy + 1) / scale).floor()
        end = ((2 * xy + 12) / scale).floor()
        return torch.cat([start, end, probs[mask][:, None], offsets[:, mask].T], dim=1)

    def _crops(self, sampler: _AreaSampler, boxes: torch.Tensor, height: int, width: int,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
        y0, y1, x0, x1, valid = _crop_rectangles(boxes, width, height)
        if not bool(valid.all()):
            boxes, y0, y1, x0, x1 = boxes[valid], y0[valid], y1[valid], x0[valid], x1[valid]
        return boxes, _normalise(sampler.sample(y0, y1, x0, x1, (size, size)))

    @staticmethod
    def _run(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [net(crops[i:i + _CROP_BATCH]) for i in range(0, len(crops), _CROP_BATCH)]
        return tuple(torch.cat(parts) for parts in zip(*outputs))

    # ---- stage 2: R-Net ----
    def _refine(self, sampler: _AreaSampler, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        boxes, crops = self._crops(sampler, boxes, height, width, 24)
        if not len(boxes):
            return boxes
        offsets, probs = self._run(self.rnet, crops)
        score = probs[:, 1]
        passed = score > self.thresholds[1]
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        offsets = offsets[passed]
        keep = torch.from_numpy(nms_iou(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), 0.7)).to(self.device)
        return _squared(_regressed(boxes[keep], offsets[keep]))

    # ---- stage 3: O-Net and landmarks ----
    def _output(self, sampler: _AreaSampler, boxes: torch.Tensor, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, crops = self._crops(sampler, boxes, height, width, 48)
        if not len(boxes):
            return boxes, torch.zeros((0, 5, 2), device=self.device)
        offsets, marks, probs = self._run(self.onet, crops)
        score = probs[:, 1]
        passed = score > self.thresholds[2]
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        offsets, marks = offsets[passed], marks[passed]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        xs = w[:, None] * marks[:, :5] + boxes[:, 0, None] - 1
        ys = h[:, None] * marks[:, 5:] + boxes[:, 1, None] - 1
        points = torch.stack([xs, ys], dim=2)
        boxes = _regressed(boxes, offsets)
        keep = nms_min_plus_one(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), 0.7)
        keep = torch.from_numpy(keep).to(self.device)
        return boxes[keep], points[keep]

