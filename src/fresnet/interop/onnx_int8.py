"""int8 ONNX export: the float graph (BN folded) quantised by ONNX Runtime's static quantisation.

``fresnet export MODEL out.onnx --int8 --calibration DATA`` writes a QDQ model (QuantizeLinear /
DequantizeLinear pairs around each quantised op, the format every ONNX runtime reads) with the
same recipe as the PyTorch int8 path (:mod:`fresnet.inference.int8`):

* per-channel symmetric int8 weights, per-tensor uint8 activations, calibrated on the given images
  (:func:`fresnet.inference.calibration.calibration_batches`: tensor, ``.bin``, RecordIO, image folder);
* only Conv and Gemm are quantised: the residual adds, PReLU and the BatchNorms that do not fold
  stay float32, so the residual stream is float32;
* the stem and the first residual unit (every Conv before the first residual Add) stay float32.

onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an int8 convolution (MLAS
u8s8 kernels, AVX2/AVX-512/VNNI as the CPU has them).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import torch

from fresnet.errors import FresnetError

CALIBRATION_METHOD = "Percentile"  # onnxruntime's CalibrationMethod; chosen in docs/performance.md


def float_node_names(proto) -> list[str]:
    """Names of the Conv nodes kept float32: the stem's and the first residual unit's (all Convs
    before the first Add, in graph order)."""
    names = []
    for node in proto.graph.node:
        if node.op_type == "Add":
            break
        if node.op_type == "Conv":
            names.append(node.name)
    return names


def export_onnx_int8(
    model,
    path: Union[str, os.PathLike],
    calibration: Any,
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
    calibration_method: str = CALIBRATION_METHOD,
) -> str:
    """Export ``model`` to an int8 (QDQ) ONNX file at ``path``, written atomically; returns the path.

    ``calibration``: face images for the activation ranges, as for
    ``optimize_for_inference(calibration=...)`` (a tensor, an iterable of tensors, or a path to a
    ``.bin``, RecordIO dataset or image folder).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from fresnet.inference.calibration import calibration_batches
    from fresnet.interop.onnx_export import INPUT_NAME, export_onnx

    config = getattr(model, "config", None)
    size = config.input_size if config is not None else (112, 112)
    batches = _equal_batches(calibration_batches(calibration, size))
    try:
        method = getattr(CalibrationMethod, calibration_method)
    except AttributeError:
        raise FresnetError(f"unknown calibration method {calibration_method!r}; choose MinMax, Percentile or Entropy") from None

    class Reader(CalibrationDataReader):
        def __init__(self, items: Sequence[torch.Tensor]):
            self._items = iter(items)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: item.float().numpy()}

    with tempfile.TemporaryDirectory() as workdir:
        float_path = os.path.join(workdir, "float.onnx")
        int8_path = os.path.join(workdir, "int8.onnx")
        export_onnx(model, float_path, dynamic_batch=dynamic_batch, opset=opset, fold_bn=True)
        proto = onnx.load(float_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnxruntime's advice to run its pre-processing script
            quantize_static(
                float_path, int8_path, Reader(batches),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv", "Gemm"], nodes_to_exclude=float_node_names(proto),
                calibrate_method=method,
                extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(batches)),
                               "CalibTensorRangeSymmetric": False},
            )
        quantized = onnx.load(int8_path)
        present = {prop.key for prop in quantized.metadata_props}
        for prop in proto.metadata_props:  # the config and input notes of the float export
            if prop.key not in present:
                quantized.metadata_props.add(key=prop.key, value=prop.value)
        entry = quantized.metadata_props.add()
        entry.key, entry.value = "fresnet_int8", (f"QDQ, per-channel int8 weights, uint8 activations calibrated on "
                                                  f"{sum(int(b.shape[0]) for b in batches)} images "
                                                  f"({calibration_method}); float32 stem, first unit, residual stream")
        from fresnet.ioutil import atomic_write_bytes

        atomic_write_bytes(path, quantized.SerializeToString())
    return os.fspath(Path(path))


def _equal_batches(batches: Sequence[torch.Tensor], largest: int = 32) -> list[torch.Tensor]:
    """The same images in batches of one size (the largest divisor of the count up to ``largest``):
    onnxruntime's histogram calibrators stack the batches and fail on a short last one."""
    images = torch.cat(list(batches))
    size = max(d for d in range(1, min(largest, len(images)) + 1) if len(images) % d == 0)
    return list(images.split(size))


def _flush_every(batches: int) -> int:
    """How many batches onnxruntime's calibrator keeps before reducing them (memory: every
    intermediate tensor of every kept batch). It must not divide the batch count: onnxruntime 1.2x-1.3x
    then ends on an empty buffer and raises "No data is collected"."""
    return next(k for k in (4, 3, 5, 7) if batches % k) if batches > 4 else batches + 1


def onnx_session(path: Union[str, os.PathLike], threads: int = 0):
    """An onnxruntime CPU session for ``path`` whose idle threads do not spin (a spinning pool
    steals the cores from whatever runs next, PyTorch included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


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
