"""A recogniser from anything ``fresnet eval`` loads, or from an ONNX graph: aligned crops in, raw
embeddings out.

The pipeline's recogniser interface is ``input_size`` ``(H, W)`` and ``embed(crops)``: ``(N, H, W, 3)``
uint8 RGB aligned faces -> ``(N, D)`` float32 embeddings, not normalised. A fresnet network, a
``.safetensors`` file, an MXNet checkpoint or an arcface_torch ``.pth`` goes through
:func:`fresnet.interop.model_loader.load_any` (with ``fast=True``, :func:`fresnet.optimize_for_inference`
picks bf16/int8 where it keeps the embeddings); an ``.onnx`` graph -- fresnet's exports, InsightFace's
model-zoo recognisers, MXNet-converted graphs such as SFace -- goes through the ONNX recogniser, which
decides the input range the way InsightFace's ``ArcFaceONNX`` does. An object that already has
``input_size`` and ``embed(crops)`` is used as it is.
"""
from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from fresnet.errors import FresnetError


class Recognizer(Protocol):
    name: str
    input_size: tuple[int, int]

    def embed(self, crops: np.ndarray) -> np.ndarray: ...


class EmbedderRecognizer:
    """An :class:`fresnet.interop.model_loader.Embedder` (NCHW batches) seen as a crop recogniser."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.name = embedder.name
        self.input_size = tuple(int(v) for v in embedder.input_size)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(np.asarray(crops).transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self.embedder.embed(batch), dtype=np.float32)

    def fast_choice(self):
        return getattr(self.embedder, "fast_choice", lambda: None)()


def _onnx_recognizer(path: str, device: str) -> Any:
    from fresnet.faces.detectors import onnx_providers

    try:
        from fresnet.faces.recognizer import ONNXRecognizer
    except ModuleNotFoundError:  # a tree without the ONNX recogniser: onnxruntime through load_any
        from fresnet.interop.model_loader import load_any

        return EmbedderRecognizer(load_any(path, device=device))

    try:
        return ONNXRecognizer(path, providers=onnx_providers(device))
    except TypeError:  # a recogniser without a providers option runs on its default (CPU)
        return ONNXRecognizer(path)


def create_recognizer(spec: Any, device: str = "cpu", fast: bool = True) -> Recognizer:
    """The recogniser ``spec`` names (see the module docs)."""
    if hasattr(spec, "embed") and hasattr(spec, "input_size") and not hasattr(spec, "kind"):
        recognizer = spec
    elif hasattr(spec, "embed") and hasattr(spec, "kind"):  # an Embedder from load_any
        recognizer = EmbedderRecognizer(spec)
    elif isinstance(spec, (str, os.PathLike)) and os.fspath(spec).lower().endswith(".onnx"):
        path = os.fspath(spec)
        if not os.path.isfile(path):
            raise FresnetError(f"recogniser {path}: no such ONNX file")
        recognizer = _onnx_recognizer(path, device)
    else:
        from fresnet.interop.model_loader import load_any

        recognizer = EmbedderRecognizer(load_any(spec, device=device, fast=fast))
    check_input_size(recognizer)
    return recognizer


def check_input_size(recognizer: Any) -> int:
    """The crop size a recogniser takes; it must be square and one of InsightFace's template sizes."""
    from fresnet.faces.align import crop_geometry

    h, w = (int(v) for v in recognizer.input_size)
    name = getattr(recognizer, "name", type(recognizer).__name__)
    if h != w:
        raise FresnetError(
            f"recogniser {name} takes {h}x{w} input; face alignment makes square crops (InsightFace's 112x112 "
            "template and its multiples), so this recogniser cannot be fed aligned faces"
        )
    try:
        crop_geometry(h)
    except FresnetError:
        raise FresnetError(f"recogniser {name} takes {h}x{w} input; alignment needs a multiple of 112 or 128") from None
    return h
