"""SCRFD / RetinaFace ONNX detectors of InsightFace's model zoo, decoded as ``insightface==2.1`` does.

The graphs (``det_10g.onnx``, ``det_2.5g.onnx``, ``det_500m.onnx``, ``scrfd_*_bnkps.onnx`` re-exports)
predict, for every anchor of every stride, a face score, the distances from the anchor centre to the
box's four sides and (``*kps`` graphs) the offsets of five landmarks. Their outputs come grouped by
kind, each group ordered by stride (InsightFace indexes them by position, and so does this module):

=======  =====================  =============  ==================
outputs  strides                anchors/point  groups
=======  =====================  =============  ==================
6        8, 16, 32              2              scores, boxes
9        8, 16, 32              2              scores, boxes, kps
10       8, 16, 32, 64, 128     1              scores, boxes
15       8, 16, 32, 64, 128     1              scores, boxes, kps
=======  =====================  =============  ==================

Each output is ``(candidates, width)`` or, in batched exports, ``(1, candidates, width)`` with width
1 (score), 4 (box distances) or 10 (landmark offsets), all in units of the stride.

The decode follows ``insightface/model_zoo/scrfd.py`` step for step, in the same float32 arithmetic,
so boxes, scores and landmarks are bit-identical to it on the same graph and photo: the photo is
resized (``cv2.resize``, bilinear) to fit the input size with its aspect ratio kept and pasted in the
top-left corner of a black canvas; the blob is ``(x - 127.5) / 128`` in RGB order
(``cv2.dnn.blobFromImage``); anchor centres are ``(column, row) * stride``; candidates scoring at least
``det_thresh`` are decoded, scaled back to the photo, sorted by score (stable) and pass a greedy NMS
whose areas count ``+1`` pixel per side, as InsightFace's does; ``max_num`` keeps the largest faces,
by default preferring central ones. With several input sizes, the candidates of all sizes go through
one NMS. A graph with a fixed input size always runs at that size (InsightFace ignores ``det_size``
for such graphs too); a dynamic one runs at each size of ``det_size``.

InsightFace's pretrained detectors are for non-commercial research; none is bundled here.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.faces.detection import Detections, largest_first
from fresnet.faces.onnx_session import fixed, image_input, open_session

Size = tuple[int, int]  # (width, height), InsightFace's convention for det_size
SizeArg = Union[Sequence[int], Sequence[Sequence[int]]]

INPUT_MEAN = 127.5
INPUT_STD = 128.0
METRICS = ("default", "max")
INSIGHTFACE_AUTO_SIZES: tuple[Size, ...] = ((128, 128), (640, 640))  # FaceAnalysis' det_size=None


@dataclass(frozen=True)
class OutputLayout:
    """How a detector graph's outputs are grouped: one per stride, per kind."""

    strides: tuple[int, ...]
    anchors: int  # anchors per feature-map point
    kps: bool

    @property
    def groups(self) -> tuple[tuple[str, int], ...]:
        kinds = (("score", 1), ("box", 4)) + ((("kps", 10),) if self.kps else ())
        return kinds


LAYOUTS = {
    6: OutputLayout((8, 16, 32), 2, False),
    9: OutputLayout((8, 16, 32), 2, True),
    10: OutputLayout((8, 16, 32, 64, 128), 1, False),
    15: OutputLayout((8, 16, 32, 64, 128), 1, True),
}


class SCRFD:
    """An SCRFD or RetinaFace graph of InsightFace's model zoo, run by onnxruntime.

    Args:
        model_file: the ``.onnx`` graph.
        det_size: ``(width, height)`` of the network input, or a list of them to detect at several
            sizes (the candidates of every size share one NMS). Ignored for a graph whose input size
            is fixed: it runs at its own size, as in InsightFace. Sizes must be multiples of the
            largest stride (32, or 128 for five-stride graphs).
        det_thresh: minimum face score.
        nms_thresh: IoU above which a lower-scoring box is suppressed.
        providers: onnxruntime execution providers (default CPU).

    ``detect`` takes an RGB ``uint8`` image; landmarks are NaN for graphs without landmark outputs
    (6 or 10 outputs, see ``has_landmarks``).
    """

    name = "scrfd"

    def __init__(self, model_file: str | os.PathLike, det_size: SizeArg = (640, 640), det_thresh: float = 0.5,
                 nms_thresh: float = 0.4, providers: Sequence | None = None):
        self.model_file = os.fspath(model_file)
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        self.session = open_session(self.model_file, providers, what="face detector graph")
        self._input = image_input(self.session, self.model_file, "face detector graph")
        self._outputs = self.session.get_outputs()
        self.layout = _layout_of(self._outputs, self.model_file)
        self._batched = len(self._outputs[0].shape) == 3
        self._dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32
        width, height = fixed(self._input.shape[3]), fixed(self._input.shape[2])
        self.fixed_size: Size | None = (width, height) if width and height else None
        self.input_sizes: tuple[Size, ...] = (self.fixed_size,) if self.fixed_size else _sizes(det_size)
        step = max(self.layout.strides)
        for w, h in self.input_sizes:
            if w % step or h % step:
                raise FresnetError(f"{self.model_file}: det_size {w}x{h} is not a multiple of {step}, the "
                                   f"largest stride of this graph (strides {list(self.layout.strides)}); "
                                   f"use e.g. {max(step, w // step * step)}x{max(step, h // step * step)}")
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}
        self._sessions: dict[Size, object] = {self.fixed_size: self.session} if self.fixed_size else {}
        self._providers = providers

    @property
    def has_landmarks(self) -> bool:
        return self.layout.kps

    def detect(self, image: np.ndarray, max_num: int = 0, metric: str = "default") -> Detections:
        """Faces in ``image`` (RGB ``uint8``, ``(H, W, 3)``), best score first; ``max_num > 0`` keeps
        that many, the largest (``metric='max'``) or the largest and most central ('default')."""
        _check_image(image)
        if metric not in METRICS:
            raise FresnetError(f"unknown max_num metric {metric!r}; choose one of {', '.join(METRICS)}")
        found = [self._candidates(image, size) for size in self.input_sizes]
        found = [c for c in found if len(c[1])]
        if not found:
            return Detections.empty()
        boxes, scores, points = (np.concatenate(parts) for parts in zip(*found))
        order = np.argsort(-scores, kind="stable")
        boxes, scores, points = boxes[order], scores[order], points[order]
        keep = greedy_nms(boxes, scores, self.nms_thresh)
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        if 0 < max_num < len(scores):
            pick = largest_first(boxes, image.shape, metric)[:max_num]
            boxes, scores, points = boxes[pick], scores[pick], points[pick]
        return Detections(boxes, scores, points)

    def _candidates(self, image: np.ndarray, size: Size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and landmarks above ``det_thresh`` at one input size, in photo pixels,
        sorted by score (stable)."""
        import cv2

        canvas, scale = _letterbox(image, size)
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / INPUT_STD, size, (INPUT_MEAN,) * 3, swapRB=False)
        outputs = self._session_for(size).run(None, {self._input.name: blob.astype(self._dtype, copy=False)})
        n = len(self.layout.strides)
        boxes, scores, points = [], [], []
        for i, stride in enumerate(self.layout.strides):
            score = self._output(outputs, i, size, stride)[:, 0]
            centres = self._anchor_centres(size, stride)
            hit = np.where(score >= self.det_thresh)[0]
            distances = self._output(outputs, n + i, size, stride) * stride
            boxes.append(distance_to_box(centres, distances)[hit])
            scores.append(score[hit])
            if self.layout.kps:
                offsets = self._output(outputs, 2 * n + i, size, stride) * stride
                points.append(distance_to_points(centres, offsets)[hit])
        score = np.concatenate(scores)
        order = np.argsort(-score, kind="stable")
        box = (np.concatenate(boxes) / scale).astype(np.float32, copy=False)[order]
        if self.layout.kps:
            point = (np.concatenate(points) / scale).astype(np.float32, copy=False)[order]
        else:
            point = np.full((len(score), 5, 2), np.nan, np.float32)
        return box, score.astype(np.float32, copy=False)[order], point

    def _session_for(self, size: Size):
        """The session for one input size. A dynamic graph gets one per size with that size written into
        its input, as InsightFace's SCRFD builds them: onnxruntime then plans the convolutions for known
        shapes, which changes their float32 rounding (about 1e-6) from the dynamic graph's."""
        session = self._sessions.get(size)
        if session is None:
            import onnx

            graph = onnx.load(self.model_file)
            inputs = {value.name: value for value in graph.graph.input}
            dims = inputs[self._input.name].type.tensor_type.shape.dim
            for dim, value in ((dims[2], size[1]), (dims[3], size[0])):
                dim.ClearField("dim_param")
                dim.dim_value = value
            session = open_session(self.model_file, self._providers, "face detector graph", graph=graph)
            self._sessions[size] = session
        return session

    def _output(self, outputs: list, index: int, size: Size, stride: int) -> np.ndarray:
        value = outputs[index][0] if self._batched else outputs[index]
        count = (size[1] // stride) * (size[0] // stride) * self.layout.anchors
        kind, width = self.layout.groups[index // len(self.layout.strides)]
        if value.shape != (count, width):
            raise FresnetError(
                f"{self.model_file}: output {self._outputs[index].name!r} (the {kind} output of stride {stride}) "
                f"has shape {list(value.shape)} for a {size[0]}x{size[1]} input; an SCRFD graph gives "
                f"({count}, {width}) there. Layout found: {describe_outputs(self._outputs)}"
            )
        return value

    def _anchor_centres(self, size: Size, stride: int) -> np.ndarray:
        rows, cols = size[1] // stride, size[0] // stride
        key = (rows, cols, stride)
        centres = self._centres.get(key)
        if centres is None:
            xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
            centres = np.stack([xs, ys], axis=-1).astype(np.float32).reshape(-1, 2) * stride
            centres = np.repeat(centres, self.layout.anchors, axis=0)
            self._centres[key] = centres
        return centres


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """``(n, 4)`` boxes from anchor centres and their distances to the left, top, right and bottom sides."""
    return np.stack([centres[:, 0] - distances[:, 0], centres[:, 1] - distances[:, 1],
                     centres[:, 0] + distances[:, 2], centres[:, 1] + distances[:, 3]], axis=-1)


def distance_to_points(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(n, k, 2)`` points from anchor centres and their ``(n, 2k)`` x, y offsets."""
    return (offsets.reshape(len(offsets), -1, 2) + centres[:, None, :]).astype(np.float32, copy=False)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first. Areas and intersections count ``+1`` pixel per
    side (the Pascal VOC convention that InsightFace's SCRFD keeps), in the boxes' float32."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _letterbox(image: np.ndarray, size: Size) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``size`` (width, height) with its aspect ratio kept, in the top-left
    corner of a black canvas; and the scale from photo to canvas pixels."""
    import cv2

    width, height = size
    image_ratio = float(image.shape[0]) / image.shape[1]
    if image_ratio > float(height) / width:
        new_height = height
        new_width = max(1, int(new_height / image_ratio))
    else:
        new_width = width
        new_height = max(1, int(new_width * image_ratio))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return canvas, float(new_height) / image.shape[0]


def _layout_of(outputs: list, path: str) -> OutputLayout:
    layout = LAYOUTS.get(len(outputs))
    problem = None
    if layout is None:
        problem = f"{len(outputs)} outputs; SCRFD/RetinaFace graphs have 6, 9, 10 or 15"
    elif len({len(o.shape) for o in outputs}) != 1 or len(outputs[0].shape) not in (2, 3):
        problem = "outputs must all be (candidates, width) or all (1, candidates, width)"
    else:
        n = len(layout.strides)
        for index, output in enumerate(outputs):
            kind, width = layout.groups[index // n]
            last = fixed(output.shape[-1])
            if last is not None and last != width:
                problem = (f"output {index} {output.name!r} is {kind} of stride {layout.strides[index % n]} by position "
                           f"and should end in {width}, not {last}")
                break
    if problem:
        raise FresnetError(f"{path}: not an SCRFD/RetinaFace detector graph of InsightFace's model zoo: {problem}. "
                           f"Layout found: {describe_outputs(outputs)}")
    return layout


def describe_outputs(outputs: list) -> str:
    return ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)


def _sizes(det_size: SizeArg) -> tuple[Size, ...]:
    items = list(det_size) if det_size is not None else []
    if items and not isinstance(items[0], (list, tuple, np.ndarray)):
        items = [items]
    sizes: list[Size] = []
    for item in items:
        try:
            width, height = (int(v) for v in item)
        except (TypeError, ValueError):
            raise FresnetError(f"det_size must be (width, height) or a list of them, got {det_size!r}") from None
        if width <= 0 or height <= 0:
            raise FresnetError(f"det_size values must be positive, got {width}x{height}")
        if (width, height) not in sizes:
            sizes.append((width, height))
    if not sizes:
        raise FresnetError(f"det_size must be (width, height) or a list of them, got {det_size!r}")
    return tuple(sizes)


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise FresnetError(f"a detector takes an RGB uint8 image of shape (H, W, 3); got {dtype} {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FresnetError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")


__all__ = [
    "INSIGHTFACE_AUTO_SIZES",
    "LAYOUTS",
    "SCRFD",
    "OutputLayout",
    "distance_to_box",
    "distance_to_points",
    "greedy_nms",
]
