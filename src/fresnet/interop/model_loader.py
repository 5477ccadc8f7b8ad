"""One resolver for every way to name a model: ``load_any(spec) -> Embedder``.

``spec`` may be

* a preset name (``r18``, ``r50`` ...; random weights, for smoke tests), with ``overrides``;
* a fresnet ``.safetensors`` file (:func:`fresnet.load`);
* an MXNet checkpoint: ``prefix`` / ``prefix,epoch`` / ``prefix-0000.params`` / ``prefix-symbol.json``
  (:func:`fresnet.load_mxnet`);
* an arcface_torch ``.pth``/``.pt`` (:func:`fresnet.load_arcface_torch`);
* an ``.onnx`` file, run through onnxruntime.

Telling weight formats apart and reading them is :mod:`fresnet.interop.formats`'s job; this module only
adds the preset, ONNX and ``prefix,epoch`` cases and wraps the result. Every embedder takes RGB NCHW batches in 0..255
(uint8 or float) and returns float32 ``(N, D)`` embeddings, not normalised.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Union

import numpy as np

from fresnet.errors import FresnetError

# 0..255 (fresnet's exports), (x - 127.5) / 127.5 (arcface_torch / InsightFace model-zoo exports), or
# auto: raw when the graph carries fresnet's metadata, else arcface
ONNX_INPUTS = ("auto", "raw", "arcface")


class Embedder(Protocol):
    name: str
    kind: str
    input_size: tuple[int, int]

    def embed(self, batch: Any) -> np.ndarray: ...


def _as_float_nchw(batch: Any, input_size: tuple[int, int], who: str) -> np.ndarray:
    x = np.asarray(batch.cpu().numpy() if hasattr(batch, "cpu") else batch)
    if x.ndim != 4 or x.shape[1] != 3:
        raise FresnetError(f"{who}: expected an RGB batch of shape (N, 3, H, W), got {x.shape}")
    if tuple(x.shape[2:]) != tuple(input_size):
        raise FresnetError(
            f"{who}: the model takes {input_size[0]}x{input_size[1]} images, got {x.shape[2]}x{x.shape[3]}; "
            "resize or align the images first"
        )
    return x.astype(np.float32, copy=False)


def weights_sha256(model: Any) -> str:
    """SHA-256 of a network's state: every tensor's name, dtype, shape and bytes, in name order.
    The same weights give the same digest whatever file (or preset and seed) they came from."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def file_sha256(path: Union[str, os.PathLike]) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(embedder: Any) -> dict[str, Any]:
    """What makes two models the same for stored embeddings: the weights' SHA-256 and the network
    config (``{}`` for an embedder that cannot say, which then is known by its name only)."""
    identity = getattr(embedder, "identity", None)
    return dict(identity()) if callable(identity) else {}


@dataclass
class TorchEmbedder:
    """A PyTorch network (a fresnet model) in eval mode. ``digest``: the weights' SHA-256 when it was
    taken before the network was transformed (the fast path), else computed when first asked."""

    model: Any
    name: str
    kind: str
    device: str = "cpu"
    digest: Optional[str] = None
    input_size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        config = getattr(self.model, "config", None)
        self.input_size = tuple(config.input_size) if config is not None else (112, 112)

    def embed(self, batch: Any) -> np.ndarray:
        import torch

        x = torch.from_numpy(_as_float_nchw(batch, self.input_size, self.name)).to(self.device)
        with torch.inference_mode():
            out = self.model(x)
        if out.ndim != 2:
            raise FresnetError(
                f"{self.name}: the network outputs shape {tuple(out.shape)}, not (N, D) embeddings; "
                "use an embedding head (E, FC, GDC, ...) rather than Z"
            )
        return out.float().cpu().numpy()

    def identity(self) -> dict[str, Any]:
        if self.digest is None:
            self.digest = weights_sha256(self.model)
        config = getattr(self.model, "config", None)
        return {"weights_sha256": self.digest,
                "config": config.to_dict() if hasattr(config, "to_dict") else None}

    def fast_choice(self) -> Optional[str]:
        """What the fast path runs (after the first batch, when it calibrates); None without --fast."""
        choice = getattr(self.model, "choice", None)
        return None if choice is None else choice.describe()  # the path, and why it was chosen


class OnnxEmbedder:
    """An ONNX graph run by onnxruntime (CPU, or CUDA when asked and available)."""

    def __init__(self, path: str, input_range: str = "auto", device: str = "cpu"):
        import onnxruntime as ort

        if input_range not in ONNX_INPUTS:
            raise FresnetError(f"unknown ONNX input range {input_range!r}; choose one of {', '.join(ONNX_INPUTS)}")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FresnetError(f"{path}: onnxruntime cannot load this model: {str(exc).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise FresnetError(
                f"{path}: the ONNX graph has {len(inputs)} inputs; an embedder takes exactly one image input"
            )
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise FresnetError(f"{path}: ONNX input {self.input_name!r} has shape {shape}; expected (N, 3, H, W)")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        h, w = shape[2], shape[3]
        self.input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else (112, 112)
        if input_range == "auto":
            meta = self.session.get_modelmeta().custom_metadata_map
            input_range = "raw" if "fresnet_input" in meta or "fresnet_config" in meta else "arcface"
        self.input_range = input_range
        self.name = os.path.basename(path)
        self.kind = "onnx"
        self.path = path

    def identity(self) -> dict[str, Any]:
        meta = self.session.get_modelmeta().custom_metadata_map
        return {"weights_sha256": file_sha256(self.path), "config": meta.get("fresnet_config"),
                "input_range": self.input_range}

    def embed(self, batch: Any) -> np.ndarray:
        x = _as_float_nchw(batch, self.input_size, self.name)
        if self.input_range == "arcface":
            x = (x - 127.5) / 127.5
        n = x.shape[0]
        if self.fixed_batch is None:
            return self._run(x)
        # a graph exported with a fixed batch size: run full chunks, padding the last one
        b = self.fixed_batch
        outs = []
        for start in range(0, n, b):
            chunk = x[start:start + b]
            count = chunk.shape[0]
            if count < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - count, 0)])
            outs.append(self._run(chunk)[:count])
        return np.concatenate(outs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(out.shape[0], -1)


# --------------------------------------------------------------------------------------------------
# telling the formats apart: presets and ONNX here, every weight file through fresnet.interop.formats

_EPOCH_SUFFIX = re.compile(r"^(?P<prefix>.+),(?P<epoch>\d+)$")  # InsightFace's "prefix,epoch" model syntax


def _preset_names() -> list[str]:
    from fresnet.network.presets import list_models

    return list(list_models())


def detect_kind(spec: str) -> str:
    """``'preset'``, ``'onnx'``, ``'safetensors'``, ``'arcface_torch'`` or ``'mxnet'``."""
    if not os.path.exists(spec) and spec in _preset_names():
        return "preset"
    if spec.lower().endswith(".onnx"):
        return "onnx"
    return _weights_file(spec).kind.name.lower()


def _weights_file(spec: str):
    from fresnet.interop.formats import detect_source

    match = _EPOCH_SUFFIX.match(spec)
    if match and not os.path.exists(spec):
        return detect_source(match.group("prefix"), epoch=int(match.group("epoch")))
    try:
        return detect_source(spec)
    except FileNotFoundError:
        raise FresnetError(f"model {spec!r}: no such file") from None
    except FresnetError as exc:
        if not os.path.exists(spec) and os.path.sep not in spec and "." not in spec:
            raise FresnetError(
                f"model {spec!r} is neither a preset ({', '.join(_preset_names()[:6])}, ...) nor a model file: {exc}"
            ) from None
        raise


def load_any(
    spec: Union[str, os.PathLike, Any],
    overrides: Optional[Mapping[str, Any]] = None,
    device: str = "cpu",
    onnx_input: str = "auto",
    seed: int = 0,
    fast: bool = False,
    fast_options: Optional[Mapping[str, Any]] = None,
    **loader_options: Any,
) -> Embedder:
    """Resolve ``spec`` to an :class:`Embedder`.

    ``overrides`` (config keys) apply to presets only. ``seed`` makes a preset's random weights
    reproducible. ``onnx_input`` says what range an ONNX graph expects: 'raw' 0..255 (fresnet's own
    exports), 'arcface' ((x - 127.5) / 127.5, arcface_torch and model-zoo exports) or 'auto' (raw when
    the graph carries fresnet's metadata). An ``nn.Module`` is wrapped
    as it is. ``loader_options`` go to the format's loader (e.g. ``num_layers`` for arcface_torch).
    ``fast`` runs a fresnet network through :func:`fresnet.optimize_for_inference` with its defaults
    (calibrated on the first batch; the embedder's ``fast_choice()`` says what was picked);
    ``fast_options`` are further keyword arguments for it (``dtype``, ``calibration``, ...).
    """
    if fast_options and not fast:
        raise FresnetError(f"fast-path options ({', '.join(fast_options)}) need fast=True")
    if hasattr(spec, "forward") and hasattr(spec, "eval"):
        return _torch_embedder(spec, type(spec).__name__, "module", device, fast, fast_options)
    spec = os.fspath(spec)
    kind = detect_kind(spec)
    if overrides and kind != "preset":
        raise FresnetError(f"{spec}: --set overrides apply to preset names only; a {kind} model carries its own config")
    if fast and kind == "onnx":
        raise FresnetError(f"{spec}: --fast applies to PyTorch models; an ONNX graph already runs in ONNX Runtime "
                           "(convert the weights with `fresnet convert` to use the fast path)")
    if kind == "preset":
        import torch

        from fresnet.network.model import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(spec, **dict(overrides or {}))
        return _torch_embedder(model, f"{spec} (random weights)", "preset", device, fast, fast_options)
    if kind == "onnx":
        if not Path(spec).is_file():
            raise FresnetError(f"{spec}: no such ONNX file")
        return OnnxEmbedder(spec, input_range=onnx_input, device=device)
    from fresnet.interop.formats import read_model

    model = read_model(_weights_file(spec), **loader_options)
    return _torch_embedder(model, os.path.basename(spec.rstrip("/")) or spec, kind, device, fast, fast_options)


def _torch_embedder(model: Any, name: str, kind: str, device: str, fast: bool,
                    fast_options: Optional[Mapping[str, Any]] = None) -> TorchEmbedder:
    digest = None
    if fast:
        from fresnet.inference.fast import optimize_for_inference

        digest = weights_sha256(model)  # of the weights as loaded, before folding and casting
        model = optimize_for_inference(model.eval(), device=device, **dict(fast_options or {}))
    return TorchEmbedder(model, name=name, kind=kind, device=device, digest=digest)
