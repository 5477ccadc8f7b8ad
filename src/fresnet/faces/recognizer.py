"""Face recognisers from ONNX graphs: InsightFace's model zoo (``w600k_r50.onnx`` style), MXNet
conversions such as OpenCV's SFace, and fresnet's own exports.

:class:`ONNXRecognizer` feeds a graph as InsightFace's ``ArcFaceONNX`` does: aligned crops in RGB,
NCHW float32, either raw pixels 0..255 or ``(x - 127.5) / 127.5``, decided by the names of the
graph's first nodes (:func:`fresnet.interop.insightface_onnx.reads_raw_pixels`). Two differences, both
for graphs InsightFace misreads:

* the 8-node window covers the nodes the image flows through, not the first 8 of the file: in
  weight-quantised graphs (SFace int8) the file starts with weight ``DequantizeLinear`` nodes and
  InsightFace normalises pixels that the graph's own ``_minusscalar0``/``_mulscalar0`` normalise again;
* a fresnet export (its metadata says the graph takes 0..255 and normalises itself) gets raw pixels
  whatever its nodes are called.

Where InsightFace reads a graph right, the blob is the one its ``get_feat`` builds
(``cv2.dnn.blobFromImages`` with the same mean and scale), so embeddings are identical to its.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fresnet.errors import FresnetError
from fresnet.faces.onnx_session import (
    drop_unused_inputs,
    fixed,
    image_input,
    open_session,
)

NORMALISED = (127.5, 127.5)  # ArcFaceONNX's input_mean, input_std for graphs without their own
RAW = (0.0, 1.0)
FRESNET_RAW_PREFIX = "float RGB NCHW in 0..255"  # onnx_export's 'fresnet_input' metadata for its graphs
DEFAULT_BATCH = 64


class ONNXRecognizer:
    """An ONNX face recogniser run by onnxruntime.

    Args:
        path: the ``.onnx`` graph; its input must be a fixed, square ``(N, 3, S, S)``.
        providers: onnxruntime execution providers (default CPU).
        batch_size: crops per run (a graph with a fixed batch size runs that many at a time).

    Attributes:
        name: ``onnx:<file name>``.
        input_size: ``(H, W)`` of the aligned crops it takes.
        embedding_size: length of the embeddings.
        input_mean, input_std: the pixel normalisation fed to the graph, ``(x - mean) / std``.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence | None = None, batch_size: int = DEFAULT_BATCH):
        self.path = os.fspath(path)
        self.name = f"onnx:{os.path.basename(self.path)}"
        what = "face recogniser graph"
        proto = _load(self.path, what)
        edited = drop_unused_inputs(proto)
        self.session = open_session(self.path, providers, what, graph=proto if edited else None)
        self._input = image_input(self.session, self.path, "face recogniser graph")
        shape = list(self._input.shape)
        h, w = fixed(shape[2]), fixed(shape[3])
        if h is None or w is None:
            raise FresnetError(f"{self.path}: the recogniser's input {self._input.name!r} has shape {shape}, with no "
                               "fixed height and width; aligned crops need a fixed size (re-export it with one)")
        if h != w:
            raise FresnetError(f"{self.path}: the recogniser takes {h}x{w} crops; face alignment (InsightFace's "
                               "norm_crop) makes square crops, so only square-input recognisers are supported")
        if fixed(shape[1]) not in (None, 3):
            raise FresnetError(f"{self.path}: the recogniser's input has {shape[1]} channels; expected 3 (RGB)")
        self.input_size: tuple[int, int] = (h, w)
        self._dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32
        outputs = self.session.get_outputs()
        if not outputs:
            raise FresnetError(f"{self.path}: the recogniser graph has no output")
        self._output = outputs[0].name
        fixed_batch = fixed(shape[0])
        self.batch_size = fixed_batch or max(1, int(batch_size))
        self._fixed_batch = fixed_batch is not None
        self.input_mean, self.input_std = input_normalisation(proto)
        del proto
        dims = [fixed(d) for d in outputs[0].shape[1:]]
        if dims and None not in dims:
            self.embedding_size = int(np.prod(dims))
        else:
            self.embedding_size = int(self.embed(np.zeros((1, h, w, 3), np.uint8)).shape[1])

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Raw (not normalised) float32 embeddings ``(N, D)`` of aligned RGB ``uint8`` crops ``(N, H, W, 3)``."""
        import cv2

        h, w = self.input_size
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.shape[1:] != (h, w, 3):
            raise FresnetError(f"{self.path}: the recogniser takes aligned RGB uint8 crops of shape (N, {h}, {w}, 3); "
                               f"got {getattr(crops, 'dtype', type(crops).__name__)} {getattr(crops, 'shape', None)}")
        mean, std = self.input_mean, self.input_std
        results = []
        for start in range(0, len(crops), self.batch_size):
            chunk = list(crops[start:start + self.batch_size])
            count = len(chunk)
            if self._fixed_batch and count < self.batch_size:
                chunk += [chunk[-1]] * (self.batch_size - count)
            blob = cv2.dnn.blobFromImages(chunk, 1.0 / std, (w, h), (mean, mean, mean), swapRB=False)
            out = self.session.run([self._output], {self._input.name: blob.astype(self._dtype, copy=False)})[0]
            results.append(np.asarray(out, dtype=np.float32).reshape(len(chunk), -1)[:count])
        if not results:
            return np.zeros((0, getattr(self, "embedding_size", 0)), np.float32)
        return np.concatenate(results)


def _load(path: str, what: str):
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.isfile(path):
        raise FresnetError(f"no such {what}: {path}")
    try:
        return onnx.load(path)
    except (DecodeError, ValueError, OSError) as exc:
        raise FresnetError(f"{path}: not a readable ONNX {what}: {exc}") from None


def input_normalisation(proto) -> tuple[float, float]:
    """``(mean, std)`` to feed ``proto``: raw pixels when a fresnet export says it normalises itself or
    InsightFace's node-name rule (on the image's path) finds a Sub and a Mul; else ``(x - 127.5) / 127.5``."""
    from fresnet.interop.insightface_onnx import RAW_INPUT, reads_raw_pixels

    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if metadata.get("fresnet_input", "").startswith((FRESNET_RAW_PREFIX, RAW_INPUT)):
        return RAW
    return RAW if reads_raw_pixels(proto, data_path=True) else NORMALISED


__all__ = ["ONNXRecognizer", "input_normalisation"]
