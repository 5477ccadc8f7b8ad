"""int8 inference through ONNX Runtime: static QDQ quantisation of the float graph, run in a session.

The recipe (shared with ``fresnet export --int8``, :mod:`fresnet.interop.onnx_int8`, which writes the
same graph to a file):

* per-channel symmetric int8 weights, per-tensor uint8 activations, calibrated on the given images
  (``Percentile`` of onnxruntime's histogram calibrators: measured best of MinMax, Percentile and
  Entropy on r50, ``docs/performance.md``);
* only Conv and Gemm are quantised: the residual adds, PReLU and the BatchNorms that do not fold
  stay float32, so the residual stream is float32;
* the stem and the first residual unit (every Conv before the first residual Add) stay float32.

onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an int8 convolution (MLAS
kernels: AVX2, AVX-512 or VNNI as the CPU has them). It needs no C++ compiler and runs any batch
size from one build, which PT2E's inductor kernels (:mod:`fresnet.inference.int8`) do not.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inference.onnx_graph import INPUT_NAME, example_input, torchscript_graph

logger = logging.getLogger(__name__)

CALIBRATION_METHOD = "Percentile"  # onnxruntime's CalibrationMethod; chosen in docs/performance.md
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
WEIGHT_TYPES = ("QInt8", "QUInt8")  # onnxruntime's QuantType names


def onnxruntime_int8_unavailable() -> Optional[str]:
    """None when onnxruntime's static quantisation and the ONNX exporter are here, else the reason."""
    try:
        import onnx  # noqa: F401
        from onnxruntime.quantization import quantize_static  # noqa: F401
    except ImportError as error:
        return f"int8 through onnxruntime needs onnx and onnxruntime (pip install onnx onnxruntime): {error}"
    return None


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


def quantize_onnx(float_path: Union[str, os.PathLike], int8_path: Union[str, os.PathLike],
                  batches: Sequence[torch.Tensor], *, calibration_method: str = CALIBRATION_METHOD,
                  weight_type: str = "QInt8", reduce_range: bool = False, per_channel: bool = True) -> int:
    """Quantise the float ONNX file ``float_path`` (a BN-folded fresnet graph whose input is
    ``input``) to a QDQ int8 file ``int8_path`` with the recipe of the module docs, calibrated on
    ``batches``; returns the number of calibration images.

    ``reduce_range`` (7-bit weights) and ``weight_type='QUInt8'`` (u8 x u8 kernels) are onnxruntime's
    remedies for int16 saturation in AVX2's ``vpmaddubsw`` (u8 x s8 pairs). ``reduce_range`` is the
    one measured and used (``docs/performance.md``: on an AVX2-only CPU it took the trained demo
    model's min cosine to float32 from 0.988 to 0.995); ``QUInt8`` is left to experiments.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration_method not in CALIBRATION_METHODS:
        raise FresnetError(f"unknown calibration method {calibration_method!r}; choose one of "
                           + ", ".join(CALIBRATION_METHODS))
    if weight_type not in WEIGHT_TYPES:
        raise FresnetError(f"unknown weight type {weight_type!r}; choose one of " + ", ".join(WEIGHT_TYPES))
    proto = onnx.load(os.fspath(float_path))
    batches = _within_calibration_memory(proto, batches, calibration_method)
    items = _equal_batches(batches)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(items)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: item.float().numpy()}

    with warnings.catch_warnings(), _quantizer_output_to_log():
        warnings.simplefilter("ignore")  # onnxruntime's advice to run its pre-processing script
        quantize_static(
            os.fspath(float_path), os.fspath(int8_path), Reader(),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
            op_types_to_quantize=["Conv", "Gemm"], nodes_to_exclude=float_node_names(proto),
            calibrate_method=getattr(CalibrationMethod, calibration_method),
            extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(items)),
                           "CalibTensorRangeSymmetric": False},
        )
    return sum(int(b.shape[0]) for b in items)


@contextlib.contextmanager
def _quantizer_output_to_log():
    """onnxruntime's quantiser talks on the root logger (``WARNING:root:`` lines: its advice to run a
    pre-processing script, each bias it expected as an initializer, ~10 per network) and prints
    its calibration steps; none of it is for the user. Both go to this module's logger at DEBUG."""
    root = logging.getLogger()

    def to_debug(record: logging.LogRecord) -> bool:
        logger.debug("onnxruntime: %s", record.getMessage())
        return False

    placeholder = logging.NullHandler()  # a root handler, so that logging.warning() skips basicConfig()
    root.addFilter(to_debug)
    root.addHandler(placeholder)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(to_debug)
        root.removeHandler(placeholder)
        for line in printed.getvalue().splitlines():
            if line.strip():
                logger.debug("onnxruntime: %s", line.strip())


# onnxruntime's histogram calibrators (Percentile, Entropy) keep every intermediate tensor of every
# calibration image until the end (its CalibMaxIntermediateOutputs flush is MinMax's only): r100 at
# 112x112 holds ~90 MB per image, and 256 images took a process to 23.4 GB (a 24 GB machine's OOM
# killer ended a `bench_inference.py --models r100` run). The images are capped to fit this.
CALIBRATION_MEMORY_BYTES = 8 * 2**30
HISTOGRAM_METHODS = ("Percentile", "Entropy")


def held_bytes_per_image(proto) -> int:
    """Bytes of float32 intermediate tensors onnxruntime's calibrator keeps per calibration image:
    the input and output of every Conv and Gemm, from ONNX shape inference (batch dimension left out)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims[1:]]
    names = {name for node in inferred.graph.node if node.op_type in ("Conv", "Gemm")
             for name in (node.input[0], node.output[0])}
    return 4 * sum(int(np.prod(shapes[name], dtype=np.int64)) for name in names if name in shapes)


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _within_calibration_memory(proto, batches: Sequence[torch.Tensor], method: str) -> list[torch.Tensor]:
    """``batches``, or an even subsample of their images (with a warning) when a histogram
    calibrator would hold more than :data:`CALIBRATION_MEMORY_BYTES` (or 40% of the memory
    available now) of intermediate tensors."""
    batches = list(batches)
    if method not in HISTOGRAM_METHODS:
        return batches
    per_image = max(held_bytes_per_image(proto), 1)
    available = _available_memory()
    budget = CALIBRATION_MEMORY_BYTES if available is None else min(CALIBRATION_MEMORY_BYTES, int(0.4 * available))
    images = sum(int(b.shape[0]) for b in batches)
    fit = max(1, budget // per_image)
    if images <= fit:
        return batches
    from fresnet.inference.calibration import CalibrationWarning

    keep = torch.linspace(0, images - 1, fit).round().long().unique()
    warnings.warn(f"onnxruntime's {method} calibrator keeps every intermediate tensor of every calibration image "
                  f"({per_image / 1e6:.0f} MB per image for this network): calibrating on {len(keep)} of the {images} "
                  f"images, evenly spread, to stay within {budget / 2**30:.1f} GiB; pass fewer images, or use "
                  "int8_backend='pytorch' (its observers keep ranges, not tensors)", CalibrationWarning, stacklevel=4)
    return [torch.cat(batches)[keep]]


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


def onnx_session(model: Union[str, os.PathLike, bytes], threads: int = 0):
    """An onnxruntime CPU session for ``model`` (a path or the serialised graph) whose idle threads
    do not spin (a spinning pool steals the cores from whatever runs next, PyTorch included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _float_onnx(model: nn.Module, path: str) -> None:
    """The float graph of a BN-folded fresnet network, batch dimension symbolic (the TorchScript
    export ``fresnet export`` uses by default; it keeps GNAP's batch-wide mean)."""
    example = example_input(model.config.input_size)
    proto = torchscript_graph(model.float().cpu().eval(), example, dynamic_batch=True, opset=17)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


class OnnxRuntimeInt8Net(nn.Module):
    """The int8 network run by onnxruntime, behind an ``nn.Module`` that takes the same input as the
    fresnet network (float RGB NCHW, 0..255, CPU) and returns float32 embeddings.

    ``model``: a BN-folded fresnet network (float32, eval); ``batches``: calibration images.
    ``graph`` holds the serialised int8 ONNX model (write it to a file to deploy it elsewhere).
    """

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], *, threads: int = 0,
                 reduce_range: bool = False, weight_type: str = "QInt8"):
        super().__init__()
        reason = onnxruntime_int8_unavailable()
        if reason is not None:
            raise FresnetError(reason)
        with tempfile.TemporaryDirectory() as workdir:
            float_path, int8_path = os.path.join(workdir, "float.onnx"), os.path.join(workdir, "int8.onnx")
            _float_onnx(model, float_path)
            self.calibration_images = quantize_onnx(float_path, int8_path, batches, reduce_range=reduce_range,
                                                    weight_type=weight_type)
            with open(int8_path, "rb") as f:
                self.graph = f.read()
        self.threads = int(threads or torch.get_num_threads())
        self._session = onnx_session(self.graph, threads=self.threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise FresnetError(f"the onnxruntime int8 network runs on the CPU; got a tensor on {x.device}")
        array = np.ascontiguousarray(x.detach().float().numpy())
        return torch.from_numpy(self._session.run(None, {INPUT_NAME: array})[0])

    def extra_repr(self) -> str:
        return f"onnxruntime QDQ int8, calibrated on {self.calibration_images} images, {self.threads} threads"
