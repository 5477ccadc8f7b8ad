"""The candidate policy of the fast path: the decision table of :mod:`fresnet.inference.fast` as code.

Which paths are tried for a request (:func:`candidates_for`), in which order (the precision ladder,
:func:`default_candidates`), which int8 backend runs on which CPU (:func:`default_int8_backend`),
and the accuracy gate each path must pass (:func:`accuracy_gate`). Nothing here builds or times a
network; :mod:`fresnet.inference.fast_model` does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inference import compiling
from fresnet.inference.choice import INT8_BACKENDS, FastChoice, Int8Settings
from fresnet.inference.mixed_precision import dtype_name, onednn_can_pack
from fresnet.inference.options import FastOptions

PROMISED_COSINE = 0.9995
CALIBRATION_COSINE = 0.9997  # checked on the first batch, with a margin for unseen inputs (fast's docs)
# int8 is not bf16: measured worst cosines are ~0.99 (random r50) and higher on trained networks;
# below this something is wrong (a calibration set unlike the inputs, a saturating kernel)
INT8_CALIBRATION_COSINE = 0.98
# dtype='int8' on an x86 CPU without VNNI/AMX (AVX2 only), with a C++ compiler: see default_int8_backend.
# Measured on an AVX2-only EPYC (docs/performance.md): both backends meet the accuracy target with 7
# bits; onnxruntime was as fast or faster and builds once for every batch size
INT8_BACKEND_WITHOUT_VNNI = "onnxruntime"
INT8_WHY_WITHOUT_VNNI = (
    "no VNNI on this CPU, so 7-bit int8 (AVX2's int16 pair sums saturate at 8 bits); measured on "
    "an AVX2-only CPU, onnxruntime was as accurate as PyTorch's PT2E kernels and faster (r50 batch "
    "32: 2.26x vs 2.14x arcface_torch's eager), and it builds once for every batch size"
)

Rung = tuple[torch.dtype, torch.dtype, int]  # (convolution dtype, residual stream dtype, float32 units)


@dataclass(frozen=True)
class Candidates:
    """What the fast model tries: the precision ladder (float32 last; only its first passing
    low-precision rung is timed), the extras timed besides it, and int8's calibration images."""

    ladder: list[FastChoice]
    extras: list[FastChoice] = field(default_factory=list)
    calibration: Optional[list[torch.Tensor]] = None


def candidates_for(model: nn.Module, options: FastOptions) -> Candidates:
    """The paths to try for ``options`` on ``model``: the decision table of the fast module's docs."""
    device = options.device
    check_int8_backend(options.int8_backend)
    if options.dtype == torch.int8:
        return _int8_request(model, options)
    reason = "decision table" if options.auto else "requested"
    ladder = [FastChoice(str(device), low, options.channels_last, options.compile, options.fold_bn,
                         residual_dtype=stream, float32_units=units, reason=reason)
              for low, stream, units in _ladder(options)]
    if not options.auto:
        return Candidates(ladder)
    # float32 in the other layout is timed too: channels_last is not faster everywhere
    extras = [replace(ladder[-1], dtype=torch.float32, channels_last=not options.channels_last,
                      residual_dtype=torch.float32, float32_units=0)]
    batches = None
    if options.calibration is not None and device.type == "cpu":
        batches = _int8_calibration(model, options.calibration)
        extras += int8_candidates(device, options.fold_bn, batches, reason, options.int8_backend,
                                  reduce_range=options.reduce_range)
    return Candidates(ladder, extras, batches)


def accuracy_gate(choice: FastChoice) -> Optional[float]:
    """The least min cosine to eager a path must reach on the first batch; None for float32 paths
    (the same function to float rounding: they need only a finite output)."""
    if choice.dtype == torch.float32:
        return None
    return INT8_CALIBRATION_COSINE if choice.int8 is not None else CALIBRATION_COSINE


# ---------------------------------------------------------------------------------------------------
# the precision ladder


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively (AVX512-BF16 / AMX), not emulated."""
    return onednn_can_pack(torch.bfloat16)


def default_candidates(device: torch.device) -> list[Rung]:
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


def _ladder(options: FastOptions) -> list[Rung]:
    """The rungs for ``options``: the default ladder (auto) or the asked-for dtype, with a fixed
    residual stream or number of float32 units applied to every low-precision rung."""
    ladder = default_candidates(options.device) if options.auto else [(options.dtype, torch.float32, 0)]
    stream = options.residual_dtype
    if stream is not None:
        if stream not in (torch.float32, ladder[0][0]):
            asked = "auto" if options.auto else dtype_name(options.dtype)
            raise FresnetError(f"residual_dtype {dtype_name(stream)} must be float32 or the same as dtype "
                               f"({asked}): the stream is never less precise than the convolutions")
        ladder = [(low, stream if low != torch.float32 else low, units) for low, _, units in ladder]
    units = options.float32_units
    if units is not None:
        ladder = [(low, rung_stream, units if low != torch.float32 else 0) for low, rung_stream, _ in ladder]
    return list(dict.fromkeys(ladder))  # fixing an option collapses candidates that became equal


# ---------------------------------------------------------------------------------------------------
# int8: which backend, per CPU class


def int8_backends_unavailable() -> dict[str, Optional[str]]:
    """For each int8 backend, None when it can be built here, else the reason it cannot."""
    from fresnet.inference.int8 import int8_unavailable
    from fresnet.inference.onnxruntime_int8 import onnxruntime_int8_unavailable

    return {"pytorch": int8_unavailable(), "onnxruntime": onnxruntime_int8_unavailable()}


def default_int8_backend(device: torch.device) -> tuple[str, str]:
    """(backend, why) for ``dtype='int8'`` on this machine: the per-CPU decision table of
    ``docs/performance.md``. Both backends use the same recipe and, measured on the CPU class each
    is picked for, meet the accuracy target; what differs is speed and what they need.

    * no C++ compiler: onnxruntime (PyTorch's int8 kernels come from inductor; without it PyTorch
      runs reference kernels slower than float32);
    * an int8 dot product (VNNI, AMX): PyTorch (oneDNN's VNNI kernels, 8-bit activations);
    * neither (AVX2-only x86): :data:`INT8_BACKEND_WITHOUT_VNNI`, the faster one measured there.
    """
    from fresnet.inference.int8 import cpu_has_int8_dot_product

    missing = int8_backends_unavailable()
    if all(missing.values()):
        raise FresnetError("no int8 backend here: " + "; ".join(str(reason) for reason in missing.values()))
    for backend, reason in missing.items():
        if reason is not None:
            other = next(b for b in missing if b != backend)
            return other, f"the only int8 backend here ({reason})"
    if not compiling.compiler_available(device):
        return "onnxruntime", "no C++ compiler for PyTorch's int8 kernels (inductor)"
    if cpu_has_int8_dot_product():
        return "pytorch", "this CPU has VNNI/AMX int8 dot products (oneDNN kernels, 8-bit activations)"
    return INT8_BACKEND_WITHOUT_VNNI, INT8_WHY_WITHOUT_VNNI


def check_int8_backend(backend: Optional[str]) -> None:
    """Refuse an asked-for int8 backend that cannot run here, with the reason."""
    missing = None if backend is None else int8_backends_unavailable()[backend]
    if missing is not None:
        raise FresnetError(missing)


def int8_choice(device: torch.device, fold_bn: bool, batches: Sequence[torch.Tensor], reason: str,
                backend: str, warn: bool = True, reduce_range: Optional[bool] = None) -> FastChoice:
    """The int8 path on ``backend``, compiled where its kernels need inductor and a compiler is there;
    7-bit where ``reduce_range`` says, or by default where this CPU needs it."""
    from fresnet.inference.int8 import reduce_range_for_this_cpu

    compiled = backend == "pytorch" and compiling.compiler_available(device)
    if backend == "pytorch" and not compiled and warn:
        warnings.warn("int8 without a C++ compiler runs PyTorch's reference quantised kernels, slower than "
                      "float32; install g++ (inductor builds the int8 kernels) or use int8_backend='onnxruntime'",
                      RuntimeWarning, stacklevel=5)
    if reduce_range is None:
        reduce_range = reduce_range_for_this_cpu()
    settings = Int8Settings(backend, reduce_range=reduce_range,
                            calibration_images=sum(int(b.shape[0]) for b in batches))
    return FastChoice(str(device), torch.int8, False, compiled, fold_bn, reason=reason, int8=settings)


def int8_candidates(device: torch.device, fold_bn: bool, batches: Sequence[torch.Tensor], reason: str,
                    backend: Optional[str], reduce_range: Optional[bool] = None) -> list[FastChoice]:
    """auto's int8 candidates: every backend that can run here (or the one asked for). PyTorch
    without a compiler is left out when onnxruntime is there: its reference kernels are slower than
    float32, so timing them would only cost the first call."""
    missing = int8_backends_unavailable()
    if backend is None:
        backends = [b for b in INT8_BACKENDS if missing[b] is None]
        if "onnxruntime" in backends and not compiling.compiler_available(device):
            backends = [b for b in backends if b != "pytorch"]  # pytorch may be missing too (no torchao)
    else:
        backends = [backend]
    if not backends:
        raise FresnetError("no int8 backend here: " + "; ".join(str(reason) for reason in missing.values()))
    return [int8_choice(device, fold_bn, batches, reason, b, warn=False, reduce_range=reduce_range) for b in backends]


def _int8_request(model: nn.Module, options: FastOptions) -> Candidates:
    """``dtype='int8'``: the one int8 path, on the asked-for backend or the per-CPU default."""
    if options.calibration is None:
        warnings.warn("dtype='int8' without calibration=: calibrating on synthetic faces, which is fine for a "
                      "speed test but not for a trained network; pass real face crops (a tensor, or a .bin, "
                      "RecordIO or image folder path)", UserWarning, stacklevel=4)
    reason, backend = "requested", options.int8_backend
    if backend is None:
        backend, why = default_int8_backend(options.device)
        reason = f"{reason}; {backend} backend: {why}"
    batches = _int8_calibration(model, options.calibration)
    choice = int8_choice(options.device, options.fold_bn, batches, reason, backend, reduce_range=options.reduce_range)
    return Candidates([choice], [], batches)


def _int8_calibration(model: nn.Module, calibration: Any) -> list[torch.Tensor]:
    from fresnet.inference.calibration import calibration_batches

    return calibration_batches(calibration, model.config.input_size)
