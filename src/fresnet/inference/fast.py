"""Inference fast path: ``optimize_for_inference(model)`` -> a module with the same input and output.

What it does to a copy of the network (the original is never modified):

* folds every BatchNorm that folds exactly (:func:`fresnet.inference.fuse.fold_batchnorm`);
* stores activations channels_last (NHWC), the layout oneDNN and cuDNN convolutions are fastest in;
* on CPU, reorders every convolution weight once into oneDNN's blocked layout (eager PyTorch
  repeats that reorder on every call: ~20% of an r50's time at batch 1);
* optionally runs the convolutions of the residual stages in bfloat16 (CPU, CUDA) or float16
  (CUDA), with the stem, the BatchNorm parameters, the head and -- by default -- the residual
  stream kept in float32 (:mod:`fresnet.inference.mixed_precision` says why, with measurements);
* optionally compiles it with ``torch.compile`` (inductor, with weight freezing on CPU; CUDA graphs
  on GPU with ``compile='reduce-overhead'``).

The batch is never split, padded or reordered, so GNAP's coupling of the samples of one batch
(its mean of L2 norms over the whole batch) is exactly that of the original.

**Defaults** (``dtype='auto'``, ``compile='auto'``) follow a decision table, checked by a one-time
calibration on the first batch. Candidates are (convolution dtype, residual stream dtype), plus
float32 for the first residual unit on the third rung, fastest first:

=================================  ======================================  ==========================
device                             candidates, in the order tried          compile
=================================  ======================================  ==========================
CPU with native bf16 (AVX512-BF16  (bf16, bf16), (bf16, fp32),            no (on 2 cores it is not
or AMX, as oneDNN reports)         (bf16, fp32) + 1 float32 unit, fp32     faster than the pre-packed
                                                                           oneDNN path, and its first
                                                                           call takes ~1 min)
CPU without                        fp32                                    no
CUDA                               (fp16, fp16), (fp16, fp32),             'reduce-overhead' if
                                   (fp16, fp32) + 1 float32 unit, fp32     Triton works
=================================  ======================================  ==========================

On the first call the fast model runs the first candidate *and* the float32 network on that batch
and keeps the candidate only if every embedding's cosine similarity to the float32 one is at least
:data:`CALIBRATION_COSINE` and all outputs are finite; otherwise it tries the next candidate.
:data:`CALIBRATION_COSINE` (0.9997) is stricter than the promised 0.9995 on purpose: the check
sees one batch, and across batches the worst cosine of one path varies by ~1e-4 (measured on r50
and r100), so the margin keeps the promise for inputs the calibration did not see. Pass
``dtype='float32'`` when the bound must hold for every input with certainty. Float32 paths are the
same function as the eager model to float rounding (max abs diff well under 1e-4).
``fast.choice`` says what was picked and why.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inference.mixed_precision import MixedPrecisionNet, dtype_name, onednn_can_pack

PROMISED_COSINE = 0.9995
CALIBRATION_COSINE = 0.9997  # checked on the first batch, with a margin for unseen inputs (module docs)
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class FastChoice:
    """One concrete way to run the network (and, after calibration, why it was chosen)."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    compile: Union[bool, str]
    fold_bn: bool
    residual_dtype: torch.dtype = torch.float32  # the stream between residual units
    float32_units: int = 0  # leading residual units kept entirely in float32
    reason: str = ""
    cosine: Optional[float] = None  # min cosine to float32 on the calibration batch

    @property
    def name(self) -> str:
        """Short name: 'float32'; 'bfloat16' (float32 residual stream); 'bfloat16/bfloat16' (bf16
        stream); 'bfloat16+1' (float32 stream and first unit)."""
        name = dtype_name(self.dtype)
        if self.dtype == torch.float32:
            return name
        if self.residual_dtype != torch.float32:
            name += "/" + dtype_name(self.residual_dtype)
        return name + (f"+{self.float32_units}" if self.float32_units else "")

    def describe(self) -> str:
        if self.dtype == torch.float32:
            precision = "float32"
        else:
            kept = "stem, first unit" if self.float32_units == 1 else (
                f"stem, first {self.float32_units} units" if self.float32_units else "stem")
            precision = (f"{dtype_name(self.dtype)} convolutions, "
                         f"{dtype_name(self.residual_dtype)} residual stream, float32 {kept} and head")
        parts = [self.device, precision, "channels_last" if self.channels_last else "NCHW"]
        if self.fold_bn:
            parts.append("BN folded")
        if self.compile:
            parts.append(f"compiled({self.compile})" if isinstance(self.compile, str) else "compiled")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------
# the decision table


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively (AVX512-BF16 / AMX), not emulated."""
    return onednn_can_pack(torch.bfloat16)


def default_candidates(device: torch.device) -> list[tuple[torch.dtype, torch.dtype, int]]:
    """(convolution dtype, residual stream dtype, float32 units) in the order tried, fastest first;
    float32 always last (the fallback). On CUDA bfloat16 is not tried: it is no faster than float16
    there and has 3 fewer mantissa bits, so it cannot pass where float16 failed."""
    low = None
    if device.type == "cuda":
        low = torch.float16
    elif device.type == "cpu" and cpu_has_native_bf16():
        low = torch.bfloat16
    fp32 = (torch.float32, torch.float32, 0)
    return [fp32] if low is None else [(low, low, 0), (low, torch.float32, 0), (low, torch.float32, 1), fp32]


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile``'s inductor backend can build code here: a C++ compiler on CPU,
    Triton on CUDA. Without one, compiling would fail at the first call."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return bool(has_triton())
        except ImportError:
            return False
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def default_compile(device: torch.device) -> Union[bool, str]:
    # CPU: measured in benchmarks/RESULTS.md, inductor (with freezing) is not reliably faster than
    # the eager oneDNN kernels on this family's conv-dominated graph, and its first call costs ~1 min.
    if device.type == "cuda" and compiler_available(device):
        return "reduce-overhead"  # CUDA graphs: batch-1 inference is launch-bound on a GPU
    return False


# ---------------------------------------------------------------------------------------------------
# building one path


def _is_fresnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("stem", "stage_names", "reduce", "head"))


def build_path(model: nn.Module, choice: FastChoice) -> nn.Module:
    """The network for one :class:`FastChoice` (not compiled), on its device, in eval mode."""
    from fresnet.inference.fuse import fold_batchnorm

    source = fold_batchnorm(model) if choice.fold_bn else copy.deepcopy(model).eval()
    # inductor packs weights itself (freezing); pre-packed oneDNN tensors are opaque to it
    net = MixedPrecisionNet(source.float(), choice.dtype, choice.residual_dtype, channels_last=choice.channels_last,
                            pack=not choice.compile, float32_units=choice.float32_units)
    net = net.to(choice.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _compile(net: nn.Module, choice: FastChoice) -> nn.Module:
    mode = None if choice.compile in (True, "default") else choice.compile
    options = None
    if torch.device(choice.device).type == "cpu":
        # freezing turns weights into constants: conv-BN folding, weight prepacking for oneDNN
        options = {"freezing": True}
        mode = None  # modes are CUDA-graph / autotune knobs; options and mode are exclusive
    return torch.compile(net, mode=mode, options=options, dynamic=False)


# ---------------------------------------------------------------------------------------------------
# the public module


class FastModel(nn.Module):
    """A faster, inference-only stand-in for a fresnet network: same input (float RGB NCHW, 0..255,
    any device), float32 output on the fast path's device. Gradients are never recorded.

    Attributes:
        choice: the :class:`FastChoice` in use (after the first call when calibrating).
        config: the wrapped network's :class:`NetConfig`.
    """

    def __init__(self, model: nn.Module, candidates: Sequence[FastChoice], calibrate: bool):
        super().__init__()
        self.config = getattr(model, "config", None)
        self._candidates = list(candidates)
        self._calibrate = calibrate and len(self._candidates) > 1
        self.choice = self._candidates[0]
        # a closure, not an attribute: the caller's model must not become a submodule of this one
        # (``fast.train()`` or ``fast.to()`` would reach it); dropped after calibration
        self._build = (lambda choice: build_path(model, choice)) if self._calibrate else None
        self.net = build_path(model, self.choice)
        self._set_runner(self.net, compiled=False)

    def _set_runner(self, runner: nn.Module, compiled: bool) -> None:
        # plain attributes: the compiled wrapper would otherwise duplicate ``net`` in state_dict()
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_compiled", compiled)

    # -- running ----------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice.compile and not self._compiled:
            try:
                runner = _compile(self.net, self.choice)
                out = runner(x)
                self._set_runner(runner, compiled=True)
                return _own(out, self.choice)
            except Exception as error:  # a missing compiler or an unsupported op: stay eager
                warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                              "running the fast path uncompiled", RuntimeWarning, stacklevel=3)
                self.choice = replace(self.choice, compile=False)
                self._set_runner(self.net, compiled=False)
        return _own(self._runner(x), self.choice)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.choice.device)
        if self._calibrate:
            out = self._calibrate_on(x)
            if out is not None:
                return out
        with _exact_float32(self.choice):
            return self._run(x)

    def train(self, mode: bool = True) -> "FastModel":
        # inference only: BN must keep its (folded) moving statistics and dropout stays off
        return super().train(False)

    def _calibrate_on(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Pick the first candidate that meets :data:`CALIBRATION_COSINE` on ``x``; returns its
        output on ``x`` when it is already computed (uncompiled paths), else None."""
        fp32 = replace(self.choice, dtype=torch.float32, residual_dtype=torch.float32, float32_units=0, compile=False)
        reference_net = self._build(fp32)
        with _exact_float32(fp32):
            reference = reference_net(x)
        rejected: list[str] = []
        for index, choice in enumerate(self._candidates):
            if choice.dtype == torch.float32:
                # the reference *is* this path (same folding and layout), uncompiled
                net, out, cosine = reference_net, reference, 1.0
                reason = "float32" + (f" ({'; '.join(rejected)})" if rejected else f": {choice.reason}")
                break
            net = self.net if index == 0 else self._build(choice)
            out = net(x)  # checked uncompiled: compiling a candidate that is then rejected wastes time
            cosine = _min_cosine(out, reference)
            finite = bool(torch.isfinite(out).all())
            if finite and cosine >= CALIBRATION_COSINE:
                reason = f"calibrated on the first batch: min cosine {cosine:.6f} >= {CALIBRATION_COSINE}"
                break
            why = "non-finite output" if not finite else f"min cosine {cosine:.6f} < {CALIBRATION_COSINE}"
            rejected.append(f"{choice.name} rejected: {why}")
        self.choice = replace(choice, reason=reason, cosine=cosine)
        self.net = net
        self._set_runner(net, compiled=False)
        self._calibrate, self._build, self._candidates = False, None, [self.choice]
        return None if self.choice.compile else out

    def extra_repr(self) -> str:
        return self.choice.describe() + (" (calibrates on first call)" if self._calibrate else "")


@contextlib.contextmanager
def _exact_float32(choice: FastChoice):
    """On CUDA, PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa); a path
    called float32 should be float32, so TF32 is off while such a path runs."""
    if torch.device(choice.device).type != "cuda" or choice.dtype != torch.float32:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _own(out: torch.Tensor, choice: FastChoice) -> torch.Tensor:
    if choice.compile in ("reduce-overhead", "max-autotune"):
        return out.clone()  # CUDA-graph outputs are overwritten by the next replay
    return out


def _min_cosine(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.float().flatten(1), reference.float().flatten(1)
    return torch.nn.functional.cosine_similarity(out, reference, dim=1).min().item()


def _parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise FresnetError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16 (or 'auto')")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise FresnetError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'") from None


def optimize_for_inference(
    model: nn.Module,
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype] = "auto",
    channels_last: bool = True,
    compile: Union[bool, str] = "auto",
    fold_bn: bool = True,
    calibrate: Optional[bool] = None,
    residual_dtype: Union[str, torch.dtype, None] = None,
    float32_units: Optional[int] = None,
) -> FastModel:
    """A fast inference module computing the same embeddings as ``model`` (which is not modified).

    Args:
        model: a fresnet network (:func:`fresnet.create_model`, :func:`fresnet.load`, ...).
        device: where to run; default: the model's device.
        dtype: 'auto' (decision table + calibration, see the module docs), or 'float32',
            'bfloat16' (CPU with native bf16, or CUDA), 'float16' (CUDA).
        channels_last: store activations NHWC.
        compile: 'auto', False, True/'default', or a ``torch.compile`` mode ('reduce-overhead' uses
            CUDA graphs, 'max-autotune'). Falls back to eager, with a warning, if compiling fails.
        fold_bn: fold BatchNorm into neighbouring conv/FC layers where exact.
        calibrate: check the low-precision candidates against float32 on the first batch and fall
            back when they miss :data:`CALIBRATION_COSINE`. Default: on when ``dtype='auto'``.
        residual_dtype: dtype of the residual stream between units when ``dtype`` is low precision:
            'float32' (the default for an explicit ``dtype``: more accurate, ~8% slower on CPU) or
            the same as ``dtype`` (fastest). With ``dtype='auto'`` both are candidates unless this
            is given.
        float32_units: how many residual units, from the input side, run entirely in float32 when
            ``dtype`` is low precision (default 0 for an explicit ``dtype``; 1 makes deep networks
            such as r100 meet the bound). With ``dtype='auto'`` 0 and 1 are candidates unless given.

    Returns:
        A :class:`FastModel`; ``fast(x)`` takes the same input as ``model(x)``.
    """
    if not _is_fresnet(model):
        raise FresnetError("optimize_for_inference takes a fresnet network (fresnet.create_model / fresnet.load); "
                           f"got {type(model).__name__}")
    if compile not in COMPILE_MODES and compile != "auto":
        raise FresnetError(f"unknown compile mode {compile!r}; choose one of 'auto', "
                           + ", ".join(repr(m) for m in COMPILE_MODES))
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FresnetError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
    if dtype == "auto":
        ladder = default_candidates(device)
        reason = "decision table"
    else:
        low = _parse_dtype(dtype)
        ladder = [(low, torch.float32, 0)]
        reason = "requested"
        if low == torch.float16 and device.type == "cpu":
            raise FresnetError("float16 is a GPU path; on CPU use dtype='bfloat16' or 'float32'")
    if residual_dtype is not None:
        stream = _parse_dtype(residual_dtype)
        if stream not in (torch.float32, ladder[0][0]):
            raise FresnetError(f"residual_dtype {dtype_name(stream)} must be float32 or the same as dtype "
                               f"({dtype}): the stream is never less precise than the convolutions")
        ladder = [(low, stream if low != torch.float32 else low, units) for low, _, units in ladder]
    if float32_units is not None:
        if isinstance(float32_units, bool) or not isinstance(float32_units, int) or float32_units < 0:
            raise FresnetError(f"float32_units must be a whole number >= 0; got {float32_units!r}")
        available = sum(len(getattr(model, stage)) for stage in model.stage_names)
        if float32_units > available:
            raise FresnetError(f"float32_units={float32_units}, but this network has {available} residual units")
        ladder = [(low, stream, float32_units if low != torch.float32 else 0) for low, stream, _ in ladder]
    ladder = list(dict.fromkeys(ladder))  # fixing an option collapses candidates that became equal
    if compile == "auto":
        compile = default_compile(device)
    elif compile and not compiler_available(device):
        warnings.warn("torch.compile needs a C++ compiler (CPU) or Triton (CUDA), and none was found; "
                      "running uncompiled", RuntimeWarning, stacklevel=2)
        compile = False
    candidates = [FastChoice(str(device), low, channels_last, compile, fold_bn, residual_dtype=stream,
                             float32_units=units, reason=reason) for low, stream, units in ladder]
    if calibrate is None:
        calibrate = dtype == "auto"
    return FastModel(model, candidates, calibrate=bool(calibrate))
