"""Greedy non-maximum suppression, in the two conventions MTCNN's reference uses.

* :func:`nms_iou` is torchvision's ``nms``: areas ``(x2 - x1) * (y2 - y1)``, a box is dropped when its
  IoU with a kept, higher-scored box is *strictly* above the threshold; the kept indices come by
  decreasing score, ties broken by the lower index (a stable sort).
* :func:`nms_min_plus_one` is the original MTCNN's ``'Min'`` NMS (facenet-pytorch's last stage):
  pixel-inclusive areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``, overlap = intersection / the *smaller*
  area, a box is kept while its overlap is ``<=`` the threshold; candidates are taken from the end
  of ``numpy.argsort(scores)`` (its default sort), as the reference does.

Both compute in float32, the boxes' precision, term by term as the references do, so the same
boxes give the same decisions. Inputs are NumPy arrays; the loop runs once per kept box over the
remaining candidates, vectorised.
"""
from __future__ import annotations

import numpy as np


def nms_iou(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of ``boxes`` ``(N, 4)`` kept by IoU NMS (torchvision semantics), best first."""
    boxes = np.asarray(boxes, np.float32)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    keep = []
    threshold = np.float32(threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        for r in range(len(order)):
            if suppressed[r]:
                continue
            keep.append(order[r])
            rest = slice(r + 1, None)
            w = np.maximum(np.minimum(x2[r], x2[rest]) - np.maximum(x1[r], x1[rest]), np.float32(0))
            h = np.maximum(np.minimum(y2[r], y2[rest]) - np.maximum(y1[r], y1[rest]), np.float32(0))
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
