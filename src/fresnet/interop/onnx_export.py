"""ONNX export for deployment (onnxruntime, TensorRT), checked against PyTorch.

The exported graph takes float RGB NCHW in 0..255 (input ``input``) and normalises it itself, like
the PyTorch model; it returns ``embedding`` (the 4-D map for head Z). Details that matter downstream:

* **Exporter.** The TorchScript-based exporter (``torch.onnx.export(dynamo=False)``) is used by
  default: it honours opset 17, takes well under a second for small nets and emits PReLU slopes as
  (C, 1, 1). The torch.export-based one (``exporter='dynamo'``) is slower, writes opset 18 or newer
  (its default 18; a lower opset asked of it is refused, never silently raised), and is used
  automatically when the legacy exporter is gone from torch. The file holds the opset asked for.
* **PReLU slopes** are reshaped to (C, 1, 1) for 4-D inputs whatever the exporter emitted: TensorRT
  and onnxruntime both accept that shape.
* **GNAP** averages the L2 norms over the *whole batch* (the original's cross-sample coupling); the
  graph keeps that ``ReduceMean`` over all axes, so a batch of 7 gives the same result as PyTorch.
* ``fold_bn=True`` folds BatchNorms into the neighbouring convs/FCs (:func:`fresnet.inference.fuse.fold_batchnorm`).
* The network's :class:`NetConfig` is stored in the model's metadata (``fresnet_config``).
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from fresnet.errors import FresnetError
from fresnet.inference.onnx_graph import INPUT_NAME, OUTPUT_NAME, example_input, torchscript_graph

MIN_OPSET = 17
DEFAULT_OPSET = 17  # the TorchScript exporter's
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter has no implementations below 18
EXPORTERS = ("torchscript", "dynamo")


def export_onnx(
    model,
    path: Union[str, os.PathLike],
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    *,
    fold_bn: bool = False,
    exporter: str = "torchscript",
    input_size: Optional[Sequence[int]] = None,
) -> str:
    """Export ``model`` (eval mode, float32, CPU copy) to ``path``; written atomically.

    Args:
        dynamic_batch: leave the batch dimension symbolic (``batch``); else it is fixed at 1.
        opset: ONNX opset: 17 or newer for 'torchscript' (its default 17), 18 or newer for 'dynamo'
            (its default 18). The file holds exactly that opset, or nothing is written.
        fold_bn: fold BatchNorm into conv/FC first (exact up to float rounding; smaller, faster graph).
        exporter: 'torchscript' (default) or 'dynamo'.
        input_size: (H, W) of the traced input; defaults to ``model.config.input_size``. The graph is
            specialised to that size (the FC heads need it anyway).

    Returns the path written. Check the result with :func:`verify_onnx`.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise FresnetError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if exporter == "torchscript" and not _has_legacy_exporter():
        exporter = "dynamo"  # this torch has no TorchScript exporter any more
    opset = _check_opset(opset, exporter)
    config = getattr(model, "config", None)
    size = tuple(input_size or (config.input_size if config is not None else ()))
    if len(size) != 2:
        raise FresnetError("export_onnx needs input_size=(H, W) for a model without a fresnet config")

    net = _deployable_copy(model, fold_bn)
    example = example_input(size, batch=2 if dynamic_batch else 1)
    if exporter == "torchscript" and not _has_legacy_exporter():
        exporter = "dynamo"
    try:
        proto = _export_dynamo(net, example, dynamic_batch, opset) if exporter == "dynamo" else _export_torchscript(
            net, example, dynamic_batch, opset
        )
    except Exception as exc:  # the exporters raise RuntimeError and their own types for an opset they lack
        if "opset" not in str(exc).lower():
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FresnetError(f"opset {opset}: the {exporter} exporter of this torch cannot write it ({first})") from None
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        raise FresnetError(f"asked for opset {opset}, but the {exporter} exporter produced opset {written}; "
                           "nothing was written. Ask for that opset, or try the other exporter")
    reshape_prelu_slopes(proto)
    if config is not None:
        set_metadata(proto, "fresnet_config", config.to_json())
    set_metadata(proto, "fresnet_input", "float RGB NCHW in 0..255; the graph normalises it")
    set_metadata(proto, "fresnet_bn_folded", str(bool(fold_bn)).lower())
    onnx.checker.check_model(proto)

    from fresnet.ioutil import atomic_write_bytes

    atomic_write_bytes(path, proto.SerializeToString())
    return os.fspath(path)


def _check_opset(opset: Optional[int], exporter: str) -> int:
    """The opset to write: the exporter's default, or the one asked for when the exporter and this
    onnx can write it (else a FresnetError saying which range works)."""
    import onnx

    lowest = DYNAMO_MIN_OPSET if exporter == "dynamo" else MIN_OPSET
    if opset is None:
        return max(DEFAULT_OPSET, lowest)
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise FresnetError(f"opset must be an integer, got {opset!r}")
    if opset < MIN_OPSET:
        raise FresnetError(f"opset {opset} is too old; use {MIN_OPSET} or newer (e.g. --opset 17)")
    if opset < lowest:
        raise FresnetError(f"opset {opset}: the dynamo exporter writes opset {lowest} or newer; ask for --opset "
                           f"{lowest}, or use the torchscript exporter (--exporter torchscript) for opset {opset}")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise FresnetError(f"opset {opset} does not exist yet: this onnx ({onnx.__version__}) knows opsets up to "
                           f"{newest}; use {lowest} to {newest}")
    return opset


def _deployable_copy(model, fold_bn: bool):
    if fold_bn:
        from fresnet.inference.fuse import fold_batchnorm

        net = fold_batchnorm(model)  # an eval copy
    else:
        net = copy.deepcopy(model)
    return net.float().cpu().eval()


def _has_legacy_exporter() -> bool:
    try:
        from torch.onnx import utils  # noqa: F401  (the TorchScript exporter's home)
    except ImportError:
        return False
    return True


def _export_torchscript(net, example, dynamic_batch: bool, opset: int):
    return torchscript_graph(net, example, dynamic_batch=dynamic_batch, opset=opset)


def _export_dynamo(net, example, dynamic_batch: bool, opset: int):
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            verbose=False,
        )
    return program.model_proto


def reshape_prelu_slopes(proto) -> int:
    """Make every constant PReLU slope of a 4-D input (C, 1, 1); returns how many were changed.

    Exporters emit (C,), (1, C, 1, 1) or (C, 1, 1); only the last broadcasts per channel in both
    TensorRT and onnxruntime without surprises.
    """
    from onnx import numpy_helper

    ranks = _value_ranks(proto)
    inits = {init.name: init for init in proto.graph.initializer}
    consumers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            continue
        if ranks.get(node.input[0], 4) != 4:
            continue
        slope = numpy_helper.to_array(inits[node.input[1]])
        if slope.ndim == 3 and slope.shape[1:] == (1, 1):
            continue
        channels = slope.size
        new = slope.reshape(channels, 1, 1)
        if consumers[node.input[1]] > 1:  # shared initializer: give this node its own copy
            name = f"{node.input[1]}_c11_{changed}"
            proto.graph.initializer.append(numpy_helper.from_array(new, name))
            node.input[1] = name
        else:
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(new, node.input[1]))
        changed += 1
    if changed:
        # stale value_info for the slopes would contradict the new shapes
        keep = [vi for vi in proto.graph.value_info if vi.name not in inits]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(keep)
    return changed


def _value_ranks(proto) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is an aid here, not a requirement
        return {}
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def set_metadata(proto, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry of an ONNX model proto."""
    for entry in proto.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value


@dataclass(frozen=True)
class OnnxDifference:
    """How far onnxruntime's outputs are from PyTorch's, on the same random batches:
    ``max_abs_diff``, and ``output_scale``, the largest absolute output the difference was
    measured on (random-weight presets reach hundreds), so a limit can be relative to it."""

    max_abs_diff: float
    output_scale: float

    def limit(self, tolerance: float) -> float:
        """The largest accepted difference: ``tolerance`` relative to ``max(1, output_scale)``."""
        return float(tolerance) * max(1.0, self.output_scale)

    def within(self, tolerance: float) -> bool:
        return self.max_abs_diff <= self.limit(tolerance)


def verify_onnx(
    model,
    path: Union[str, os.PathLike],
    batch_sizes: Sequence[int] = (1, 7),
    seed: int = 0,
) -> float:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch (eval) on random 0..255 batches;
    return the largest absolute difference over all ``batch_sizes``."""
    return compare_onnx(model, path, batch_sizes, seed).max_abs_diff


def compare_onnx(
    model,
    path: Union[str, os.PathLike],
    batch_sizes: Sequence[int] = (1, 7),
    seed: int = 0,
) -> OnnxDifference:
    """Like :func:`verify_onnx`, with the scale of the outputs compared (see :class:`OnnxDifference`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    h, w = int(shape[2]), int(shape[3])
    fixed = shape[0] if isinstance(shape[0], int) else None
    net = copy.deepcopy(model).float().cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    for batch in batch_sizes:
        if fixed is not None and batch != fixed:
            continue
        x = torch.rand(batch, 3, h, w, generator=generator) * 255
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise FresnetError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        worst = max(worst, float(abs(got - expected).max()))
        scale = max(scale, float(abs(expected).max()))
    return OnnxDifference(worst, scale)


__all__ = ["export_onnx", "verify_onnx", "compare_onnx", "OnnxDifference", "reshape_prelu_slopes"]
