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


def create_recognizer(spec: Any, device: str = "cpu", fast: bool = True, dtype: str = "auto",
                      calibration: Any = None) -> Recognizer:
    """The recogniser ``spec`` names (see the module docs). ``dtype`` and ``calibration`` go to
    :func:`fresnet.optimize_for_inference` for a PyTorch network on the fast path: 'auto' (time the
    paths on the first batch), 'float32', 'bfloat16', 'int8'...; ``calibration`` (int8's activation
    ranges) may also be aligned crops ``(N, S, S, 3)`` uint8 RGB, such as :meth:`FaceAnalysis.align` makes."""
    fast_options = _fast_options(dtype, calibration)
    if fast_options and not fast:
        raise FresnetError(f"dtype={dtype!r} and calibration= choose the fast path's precision; they need fast=True")
    torch_network = not (hasattr(spec, "embed") or (isinstance(spec, (str, os.PathLike))
                                                    and os.fspath(spec).lower().endswith(".onnx")))
    if fast_options and not torch_network:
        raise FresnetError(f"dtype={dtype!r} and calibration= apply to a PyTorch recogniser on the fast path; "
                           f"{getattr(spec, 'name', spec)!r} is not one (an ONNX graph runs as it was exported)")
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

        recognizer = EmbedderRecognizer(load_any(spec, device=device, fast=fast, fast_options=fast_options))
    check_input_size(recognizer)
    return recognizer


def _fast_options(dtype: str, calibration: Any) -> dict[str, Any]:
    """``optimize_for_inference`` keywords beyond its defaults; aligned uint8 crops (NHWC) become the
    float NCHW 0..255 batch its calibration takes."""
    options: dict[str, Any] = {}
    if dtype != "auto":
        options["dtype"] = dtype
    if calibration is not None:
        if isinstance(calibration, np.ndarray) and calibration.dtype == np.uint8 and calibration.ndim == 4 \
                and calibration.shape[-1] == 3:
            import torch

            calibration = torch.from_numpy(np.ascontiguousarray(calibration.transpose(0, 3, 1, 2))).float()
        options["calibration"] = calibration
    return options


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
