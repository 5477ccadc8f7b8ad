"""int8 inference through PyTorch's PT2E quantisation (torchao's ``X86InductorQuantizer``) and inductor.

Static post-training quantisation: per-channel symmetric int8 weights, per-tensor uint8
activations whose ranges come from calibration images (``HistogramObserver``: the range that
minimises the quantisation error of the observed histogram, not the raw min/max). ``torch.compile``
with weight freezing then lowers every quantised conv/linear to oneDNN's int8 kernels (u8s8 with
int32 accumulation; VNNI where the CPU has it, AVX2 ``vpmaddubsw`` where it does not).

What stays float32, and why (measured on a settled random r50, worst / mean cosine to float32 over
a batch of 32 synthetic faces; ``docs/performance.md`` has the table):

* **the residual stream**: the stock recipe quantises the shortcut input of every residual add,
  so the running sum is rounded to 8 bits 24 times in an r50 (0.9778 / 0.9883). Here conv and add
  are not fused: each unit's body ends in an int8 conv with a float32 output, and the sum stays
  float32 (0.9859 / 0.9922).
* **the stem and the first residual unit** (:data:`FLOAT_MODULES`): they work on the 112x112 maps
  every later layer amplifies, as with bf16 (0.9922 / 0.9954 with both kept; the stem alone:
  0.9874 / 0.9930). Together they are ~10% of an r50's FLOPs.
* BatchNorms that do not fold (the IR unit's ``bn1``, before a padded conv) and PReLU run in
  float32 between the int8 convolutions.

Activations use 7 bits on CPUs without VNNI/AMX (:func:`reduce_range_for_this_cpu`): AVX2's
``vpmaddubsw`` sums pairs of u8 x s8 products in a saturating int16, and full-range activations
clip there (measured on the compiled kernels; the reference kernels do not saturate, and there 7
bits only cost precision).

The head's FC (25088 x 512 for 112x112 inputs) is int8: keeping it float32 moves the worst cosine
by 4e-4 and costs its memory traffic at batch 1 four times over.

Needs ``torchao`` (PyTorch's quantisation stack; PT2E moved there from ``torch.ao``) and, for
speed, a C++ compiler for inductor. Without a compiler the quantised graph still runs, but on the
reference (dequantise, float op, quantise) kernels, slower than float32: ``optimize_for_inference``
with ``dtype='auto'`` times it and will not pick it, and :func:`int8_unavailable` says why.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError

# modules (by their name in a fresnet network) that run in float32 in the int8 network
FLOAT_MODULES = ("stem", "{first_unit}")
# CPU features with an int8 dot product that accumulates u8 x s8 products in int32 (no int16 step)
INT8_DOT_PRODUCT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_int8_dot_product() -> bool:
    """True when the CPU has VNNI (AVX512-VNNI or AVX-VNNI) or AMX-INT8, as PyTorch reports it
    (``torch.cpu.get_capabilities()``).

    Without it, oneDNN's u8 x s8 kernels multiply with AVX2's ``vpmaddubsw``, which adds each two
    neighbouring products into a *saturating int16*: two products of a full-range uint8 activation
    (up to 255) and an int8 weight (up to 127) can exceed 32767, and the sum is clipped.
    """
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(feature, False)) for feature in INT8_DOT_PRODUCT_FEATURES)


def reduce_range_for_this_cpu() -> bool:
    """Whether int8 activations use 7 bits (0..127) here: yes without an int8 dot product
    (:func:`cpu_has_int8_dot_product`), so that two products never leave int16 (2 x 127 x 128 <
    32768). On an AVX2-only EPYC, the demo's trained model on 6000 held-out pairs: cosine to
    float32 min / mean 0.98596 / 0.99926 with 8 bits, 0.99217 / 0.99980 with 7
    (``docs/performance.md``). With VNNI there is nothing to avoid, and the 8th bit is kept. The
    onnxruntime backend applies the same flag to its weights (MLAS has the same int16 step)."""
    return not cpu_has_int8_dot_product()


def int8_unavailable() -> Optional[str]:
    """None when the PT2E int8 path can be built here, else the reason (for messages and skips)."""
    try:
        _torchao()
    except ImportError as error:
        return f"int8 needs torchao (pip install torchao): {error}"
    if not torch.backends.mkldnn.is_available():
        return "int8 needs PyTorch built with oneDNN (mkldnn) on x86"
    return None


def _torchao():
    with warnings.catch_warnings(), _quiet_torchao_logs():
        warnings.simplefilter("ignore")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    return prepare_pt2e, convert_pt2e, x86


@contextlib.contextmanager
def _quiet_torchao_logs():
    """torchao logs a line per CUDA-only extension it cannot load on a CPU build: not our concern."""
    import logging

    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_qat_conv_bn_folding():
    """``convert_pt2e`` looks for quantisation-aware-training conv -> BN pairs whenever the graph has
    a BN, by exporting 96 small pattern graphs: ~100 s on 2 cores, for nothing here. The model is
    already BN-folded (:func:`fresnet.inference.fuse.fold_batchnorm` folds every BN that follows a
    conv); the BNs left (the IR unit's ``bn1``) follow an add, never a conv."""
    from torchao.quantization.pt2e import quantize_pt2e

    saved = quantize_pt2e._fold_conv_bn_qat
    quantize_pt2e._fold_conv_bn_qat = lambda graph_module: graph_module
    try:
        yield
    finally:
        quantize_pt2e._fold_conv_bn_qat = saved


def float_module_names(model: nn.Module) -> list[str]:
    """The names in ``model`` of :data:`FLOAT_MODULES`: ``['stem', 'stage1.unit1']``."""
    first_unit = next(model.iter_units())[0]
    return [name.format(first_unit=first_unit) for name in FLOAT_MODULES]


def _float_stream_quantizer(x86):
    class FloatStreamQuantizer(x86.X86InductorQuantizer):
        """The x86 recipe without its conv+add fusions: a residual add's shortcut input is not
        quantised, so the residual stream stays float32 (see the module docs)."""

        def _annotate_conv2d_binary(self, *args, **kwargs):
            return None

        def _annotate_conv2d_binary_unary(self, *args, **kwargs):
            return None

    return FloatStreamQuantizer


@torch.no_grad()
def quantize_int8(model: nn.Module, batches: Sequence[torch.Tensor],
                  float_modules: Optional[Sequence[str]] = None, reduce_range: Optional[bool] = None) -> nn.Module:
    """An int8 copy of ``model`` (a BN-folded fresnet network, float32, eval), calibrated on ``batches``.

    The result is a ``torch.fx.GraphModule`` with quantise/dequantise nodes, for any batch size;
    compile it (inductor with freezing) to get int8 kernels. ``model`` is not modified.
    ``reduce_range``: 7-bit activations; default :func:`reduce_range_for_this_cpu`.
    """
    reason = int8_unavailable()
    if reason is not None:
        raise FresnetError(reason)
    prepare_pt2e, convert_pt2e, x86 = _torchao()
    if float_modules is None:
        float_modules = float_module_names(model)
    example = batches[0].float()
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's notes on specialisation and deprecated kwargs
        exported = torch.export.export(model.float().eval(), (example,), dynamic_shapes=({0: batch},)).module()
        quantizer = _float_stream_quantizer(x86)()
        if reduce_range is None:
            reduce_range = reduce_range_for_this_cpu()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=bool(reduce_range)))
        for name in float_modules:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(exported, quantizer)
        for images in batches:
            prepared(images.float())
        with _no_qat_conv_bn_folding():
            converted = convert_pt2e(prepared)
    for param in converted.parameters():
        param.requires_grad_(False)
    return converted


def count_quantized(graph_module: nn.Module) -> dict[str, int]:
    """How many convolutions/linears of the graph take int8 input (``quantized``) and how many do not."""
    counts = {"quantized": 0, "float": 0}
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in (
            torch.ops.aten.conv2d.default,
            torch.ops.aten.linear.default,
        ):
            continue
        source = node.args[0]
        quantized = getattr(source, "op", None) == "call_function" and "dequantize" in str(source.target)
        counts["quantized" if quantized else "float"] += 1
    return counts


class Int8Net(nn.Module):
    """The int8 network: ``graph`` (a PT2E-quantised GraphModule) behind an ``nn.Module`` that takes
    the same input as the fresnet network and returns float32 embeddings."""

    def __init__(self, graph: nn.Module, calibration_images: int, reduce_range: bool = False):
        super().__init__()
        self.graph = graph
        self.calibration_images = calibration_images
        self.reduce_range = reduce_range
        counts = count_quantized(graph)
        self.int8_layers, self.float_layers = counts["quantized"], counts["float"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.float()).float()

    def extra_repr(self) -> str:
        return (f"{self.int8_layers} int8 conv/linear layers, {self.float_layers} float32, "
                f"{7 if self.reduce_range else 8}-bit activations calibrated on {self.calibration_images} images")
