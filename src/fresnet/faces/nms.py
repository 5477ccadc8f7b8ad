"""Greedy non-maximum suppression, in the two conventions MTCNN's reference uses.

* :func:`nms_iou` is torchvision's ``nms``: areas ``(x2 - x1) * (y2 - y1)``, a box is dropped when its
  IoU with a kept, higher-scored box is *strictly* above the threshold; the kept indices come by
  decreasing score, ties broken by the lower index (a stable sort).
* :func:`nms_min_plus_one` is the original MTCNN's ``'Min'`` NMS (facenet-pytorch's last stage):
  pixel-inclusive areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``, overlap = intersection / the *smaller*
  area, a box is kept while its overlap is ``<=`` the threshold; candidates are taken from the end
  of ``numpy.argsort(scores)`` (its default sort), as the reference does.

Both compute in float32, the boxes' precision, term by term as the references do, so the same
boxes give the same decisions. Inputs are NumPy arrays; up to 2048 boxes the IoU table is computed
at once (a box suppressed by an already-suppressed box is not a problem: the greedy pass only
applies rows of kept boxes), beyond that one vectorised row per kept box.
"""
from __future__ import annotations

import numpy as np

_TABLE_LIMIT = 2048  # up to this many boxes, the pairwise IoU table (16 MiB) replaces the per-box loop


def nms_iou(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of ``boxes`` ``(N, 4)`` kept by IoU NMS (torchvision semantics), best first."""
    boxes = np.asarray(boxes, np.float32)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    threshold = np.float32(threshold)
    zero = np.float32(0)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        if len(order) <= _TABLE_LIMIT:  # the whole IoU table at once, then one cheap pass
            w = np.maximum(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), zero)
            h = np.maximum(np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]), zero)
            inter = w * h
            over = inter / (area[:, None] + area[None, :] - inter) > threshold
            suppressed = np.zeros(len(order), bool)
            for r in range(len(order)):
                if not suppressed[r]:
                    keep.append(order[r])
                    suppressed |= over[r]
            return np.asarray(keep, np.int64)
        suppressed = np.zeros(len(order), bool)
        for r in range(len(order)):
            if suppressed[r]:
                continue
            keep.append(order[r])
            rest = slice(r + 1, None)
            w = np.maximum(np.minimum(x2[r], x2[rest]) - np.maximum(x1[r], x1[rest]), zero)
            h = np.maximum(np.minimum(y2[r], y2[rest]) - np.maximum(y1[r], y1[rest]), zero)
            inter = w * h
            suppressed[rest] |= inter / (area[r] + area[rest] - inter) > threshold
    return np.asarray(keep, np.int64)


def nms_min_plus_one(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by the original MTCNN's ``'Min'`` NMS, best first."""
    boxes = np.asarray(boxes, np.float32)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    one = np.float32(1)
    area = (x2 - x1 + one) * (y2 - y1 + one)
    remaining = np.argsort(np.asarray(scores, np.float32))
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while remaining.size:
            i, rest = remaining[-1], remaining[:-1]
            keep.append(i)
            w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
            h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
            overlap = (w * h) / np.minimum(area[i], area[rest])
            remaining = rest[overlap <= np.float32(threshold)]
    return np.asarray(keep, np.int64)
