"""int8 ONNX export: the float graph (BN folded) quantised by ONNX Runtime's static quantisation.

``fresnet export MODEL out.onnx --int8 --calibration DATA`` writes a QDQ model (QuantizeLinear /
DequantizeLinear pairs around each quantised op, the format every ONNX runtime reads) with the
recipe of :mod:`fresnet.inference.onnxruntime_int8` (what ``optimize_for_inference(dtype='int8')``
runs where onnxruntime is its int8 backend): per-channel int8 weights, per-tensor uint8
activations, only Conv and Gemm quantised, float32 stem, first residual unit and residual stream.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from fresnet.inference.int8 import reduce_range_for_this_cpu
from fresnet.inference.onnxruntime_int8 import CALIBRATION_METHOD, float_node_names, onnx_session, quantize_onnx

__all__ = ["export_onnx_int8", "verify_onnx_int8", "float_node_names", "onnx_session"]


def export_onnx_int8(
    model,
    path: Union[str, os.PathLike],
    calibration: Any,
    *,
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    calibration_method: str = CALIBRATION_METHOD,
    weight_type: str = "QInt8",
    reduce_range: Optional[bool] = None,
) -> str:
    """Export ``model`` to an int8 (QDQ) ONNX file at ``path``, written atomically; returns the path.

    ``calibration``: face images for the activation ranges, as for
    ``optimize_for_inference(calibration=...)`` (a tensor, an iterable of tensors, or a path to a
    ``.bin``, RecordIO dataset or image folder). ``reduce_range``: 7-bit weights, which keep
    AVX2's int16 pair sums from saturating (``docs/performance.md``); default: 7 bits on a CPU
    without an int8 dot product (VNNI/AMX), 8 with one
    (:func:`fresnet.inference.int8.reduce_range_for_this_cpu`: the file is usually run where it is made).
    """
    import onnx

    from fresnet.inference.calibration import calibration_batches
    from fresnet.interop.onnx_export import export_onnx

    config = getattr(model, "config", None)
    size = config.input_size if config is not None else (112, 112)
    batches = calibration_batches(calibration, size)
    if reduce_range is None:
        reduce_range = reduce_range_for_this_cpu()
    with tempfile.TemporaryDirectory() as workdir:
        float_path = os.path.join(workdir, "float.onnx")
        int8_path = os.path.join(workdir, "int8.onnx")
        export_onnx(model, float_path, dynamic_batch=dynamic_batch, opset=opset, fold_bn=True)
        proto = onnx.load(float_path)
        images = quantize_onnx(float_path, int8_path, batches, calibration_method=calibration_method,
                               weight_type=weight_type, reduce_range=reduce_range)
        quantized = onnx.load(int8_path)
        present = {prop.key for prop in quantized.metadata_props}
        for prop in proto.metadata_props:  # the config and input notes of the float export
            if prop.key not in present:
                quantized.metadata_props.add(key=prop.key, value=prop.value)
        entry = quantized.metadata_props.add()
        entry.key, entry.value = "fresnet_int8", (f"QDQ, per-channel int8 weights ({7 if reduce_range else 8}-bit), "
                                                  f"uint8 activations calibrated on "
                                                  f"{images} images "
                                                  f"({calibration_method}); float32 stem, first unit, residual stream")
        from fresnet.ioutil import atomic_write_bytes

        atomic_write_bytes(path, quantized.SerializeToString())
    return os.fspath(Path(path))


def verify_onnx_int8(model, path: Union[str, os.PathLike], batch: int = 8, seed: int = 1) -> tuple[float, float]:
    """(min, mean) cosine between the int8 ONNX model in onnxruntime and ``model`` in PyTorch
    float32, on ``batch`` synthetic faces (not the calibration images)."""
    from fresnet.inference.calibration import synthetic_faces
    from fresnet.interop.onnx_export import INPUT_NAME

    size = model.config.input_size if getattr(model, "config", None) is not None else (112, 112)
    x = synthetic_faces(batch, size, seed=seed)
    with torch.no_grad():
        reference = model.eval()(x)
    out = torch.from_numpy(onnx_session(path).run(None, {INPUT_NAME: x.numpy()})[0])
    cosine = torch.nn.functional.cosine_similarity(out.flatten(1), reference.flatten(1), dim=1)
    return cosine.min().item(), cosine.mean().item()
