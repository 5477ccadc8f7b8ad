"""The network the inference fast path runs: convolutions in bfloat16/float16, the delicate parts in float32.

Where low precision loses accuracy was measured, layer by layer, on settled random r18/r50/r100
networks at batch 32 (worst per-image cosine to eager float32 over five batches; numbers in
``docs/performance.md``). Three places decide it, and each is kept in float32 here:

* **the stem** (``conv0 -> bn0 -> act``, the first 112x112 map): every later layer amplifies an
  error made there. Rounding only the stem's weights *or* only its output to bfloat16 costs as much
  as all 24 units of an r50 together. It is ~0.7% of the FLOPs, so it runs in float32.
* **BatchNorm parameters**: they stay float32 (PyTorch's CPU and CUDA kernels take a bfloat16/
  float16 input with float32 parameters and compute in float32).
* **the residual stream** (``residual_dtype``, float32 by default): each unit's body runs in low
  precision, but the running sum ``x + body(x)`` and the projection shortcut are kept in float32, so
  rounding errors do not pile up along the stream.
* optionally **the first residual units** (``float32_units``): after the stem, ``stage1_unit1``
  is by far the most sensitive piece (its first conv works on the 112x112 map). Keeping it in
  float32 costs ~5% (r100) to ~10% (r50) of the time and lifts r100's worst cosine from 0.99946
  to 0.99975.

Worst cosine over 5 batches of 32 (``benchmarks/bench_precision.py``): r50 0.99962 (bfloat16
stream) / 0.99971 (float32 stream); r100 0.99923 / 0.99946 / 0.99975 (float32 stream and first
unit); bound 0.9995.

In the head, pooling, norms and BatchNorms run in float32; only its FC multiplies in ``dtype``
(float32 accumulation, float32 bias and output). At batch 1 that FC is a 25088x512 matrix-vector
product bound by memory bandwidth: bf16 weights halve its bytes, ~8% of an r50's batch-1 time,
for a cosine change of ~5e-6.

On CPU every convolution's weight is reordered once into oneDNN's blocked layout
(:class:`InferenceConv2d`); eager PyTorch otherwise repeats that reorder on every call, which is
~20% of an r50's time at batch 1.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.network import units

# the convolution (or, for v2 units, the bare conv ``sc``) whose output joins the residual stream
SHORTCUT_CONVS = {
    units.UnitV1: "conv1sc",
    units.UnitV1Bottleneck: "conv1sc",
    units.UnitV2: "sc",
    units.UnitV2Bottleneck: "sc",
    units.UnitV3: "conv1sc",
    units.UnitV3Bottleneck: "conv1sc",
}


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for ``torch.bfloat16``."""
    return str(dtype).replace("torch.", "")


def onednn_can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs convolutions of ``dtype`` natively here (bf16: AVX512-BF16 or AMX, not
    emulated), so a pre-packed weight pays off."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class InferenceConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` that computes in ``dtype`` whatever float dtype its input has.

    Output dtype: ``out_dtype`` (default ``dtype``). With ``pack=True`` on CPU the weight is
    reordered once, at the first call, into oneDNN's blocked layout for that input shape and reused
    for every later call (other shapes stay correct; oneDNN adapts the layout if it must).
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, out_dtype: Optional[torch.dtype] = None,
                 pack: bool = True):
        super().__init__()
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"InferenceConv2d takes zero-padded convolutions with numeric padding; got {conv}")
        self.register_buffer("weight", conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.dtype = dtype
        self.out_dtype = out_dtype or dtype
        self.pack = pack
        self._packed: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.pack and x.device.type == "cpu" and not x.requires_grad:
            if self._packed is None:
                self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            y = torch.ops.mkldnn._convolution_pointwise(
                x, self._packed, self.bias, self.padding, self.stride, self.dilation, self.groups, "none", [], "")
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y.to(self.out_dtype)

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: pack again from the new weight
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # a packed weight is an opaque oneDNN tensor: copies and pickles pack again on first use
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_packed": None}

    def extra_repr(self) -> str:
        out_ch, in_ch = self.weight.shape[0], self.weight.shape[1] * self.groups
        text = (f"{in_ch}, {out_ch}, kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, "
                f"{dtype_name(self.dtype)}")
        if self.out_dtype != self.dtype:
            text += f" -> {dtype_name(self.out_dtype)}"
        return text + (", oneDNN pre-packed" if self.pack else "")


class InferenceLinear(nn.Module):
    """A frozen ``nn.Linear`` that multiplies in ``dtype`` (accumulating in float32) and adds its
    bias in float32; input and output are float32."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(dtype).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight).float()
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"{dtype_name(self.weight.dtype)} weights, float32 bias and output")


class DtypeFollowingPReLU(nn.Module):
    """``nn.PReLU`` with its slope kept in float32 and in ``dtype``, used in the dtype of the input."""

    def __init__(self, prelu: nn.PReLU, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", prelu.weight.detach().float().clone())
        self.register_buffer("weight_low", prelu.weight.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight if x.dtype == self.weight.dtype else self.weight_low.to(x.dtype))


class MixedPrecisionNet(nn.Module):
    """``head(trunk(precise_units(stem(normalise(x)))))`` with the trunk's convolutions in ``dtype``.

    ``model`` must be a fresnet network in eval mode (already BN-folded if wanted); its modules are
    taken over, not copied. Input normalisation, stem, the first ``float32_units`` residual units,
    BN parameters and the head run in float32 (the head's FC multiplies in ``dtype``); the residual
    stream between the other units is ``residual_dtype``. Units are named like the original's
    layers: ``trunk.stage2_unit1``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, residual_dtype: torch.dtype,
                 channels_last: bool = True, pack: bool = True, float32_units: int = 0):
        super().__init__()
        stem = model.stem
        self.normalise = stem.bn_data if stem.bn_data is not None else stem.norm
        pack32 = pack and onednn_can_pack(torch.float32)
        self.stem = nn.Sequential(InferenceConv2d(stem.conv0, torch.float32, pack=pack32), stem.bn0, stem.relu0)
        units = [(name.replace(".", "_"), unit) for name, unit in model.iter_units()]
        if not 0 <= float32_units <= len(units):
            raise ValueError(f"float32_units must be between 0 and the network's {len(units)} residual units; "
                             f"got {float32_units}")
        self.precise_units = nn.Sequential(OrderedDict(units[:float32_units]))
        rest = units[float32_units:] + ([("reduce", model.reduce)] if model.reduce is not None else [])
        self.trunk = nn.Sequential(OrderedDict(rest))
        self.head = model.head.float()
        self.dtype, self.residual_dtype, self.channels_last = dtype, residual_dtype, channels_last
        _lower_precision(self.precise_units, torch.float32, torch.float32, pack=pack32)
        _lower_precision(self.trunk, dtype, residual_dtype, pack=pack and onednn_can_pack(dtype))
        if dtype != torch.float32:
            _replace_modules(self.head, lambda m: InferenceLinear(m, dtype) if isinstance(m, nn.Linear) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x.float())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.precise_units(self.stem(x))
        x = self.trunk(x.to(self.residual_dtype))
        return self.head(x.float())


def _lower_precision(trunk: nn.Module, dtype: torch.dtype, residual_dtype: torch.dtype, pack: bool) -> None:
    """Swap every conv for an :class:`InferenceConv2d` in ``dtype`` (shortcut convs emit
    ``residual_dtype``) and every PReLU for a :class:`DtypeFollowingPReLU`, in place."""
    shortcut_convs = set()
    for module in trunk.modules():
        name = SHORTCUT_CONVS.get(type(module))
        if name is not None and isinstance(getattr(module, name, None), nn.Conv2d):
            shortcut_convs.add(getattr(module, name))

    def lowered(module: nn.Module) -> Optional[nn.Module]:
        if isinstance(module, nn.Conv2d):
            out = residual_dtype if module in shortcut_convs else dtype
            return InferenceConv2d(module, dtype, out, pack=pack)
        if isinstance(module, nn.PReLU):
            return DtypeFollowingPReLU(module, dtype)
        return None

    _replace_modules(trunk, lowered)


def _replace_modules(root: nn.Module, replacement: Callable[[nn.Module], Optional[nn.Module]]) -> None:
    """Swap, in place, every submodule of ``root`` for which ``replacement`` returns a module."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
