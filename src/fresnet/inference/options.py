"""``optimize_for_inference``'s arguments, checked and resolved into one record (:class:`FastOptions`).

Every refusal of a bad argument happens here, before anything is built; what is tried for the
options is :mod:`fresnet.inference.candidates`' business.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from fresnet.errors import FresnetError
from fresnet.inference import compiling
from fresnet.inference.choice import INT8_BACKENDS, parse_dtype
from fresnet.network.model import FResNet

DTYPE_AUTO = "auto"


@dataclass(frozen=True)
class FastOptions:
    """The resolved request. ``dtype`` None means 'auto' (time the candidates); ``compile`` is what
    will be asked of ``torch.compile`` (False without a compiler); ``residual_dtype`` and
    ``float32_units`` are None where the ladder chooses them."""

    device: torch.device
    dtype: Optional[torch.dtype]
    channels_last: bool
    compile: Union[bool, str]
    fold_bn: bool
    calibrate: bool
    residual_dtype: Optional[torch.dtype] = None
    float32_units: Optional[int] = None
    calibration: Any = None
    int8_backend: Optional[str] = None
    reduce_range: Optional[bool] = None  # int8's bit width; None: the per-CPU default

    @property
    def auto(self) -> bool:
        return self.dtype is None


def parse_options(model: FResNet, *, device: Union[str, torch.device, None], dtype: Union[str, torch.dtype],
                  channels_last: bool, compile: Union[bool, str], fold_bn: bool, calibrate: Optional[bool],
                  residual_dtype: Union[str, torch.dtype, None], float32_units: Optional[int], calibration: Any,
                  int8_backend: Optional[str], reduce_range: Optional[bool] = None) -> FastOptions:
    """The arguments of :func:`fresnet.inference.fast.optimize_for_inference`, checked (a
    :class:`FresnetError` names the bad one and the fix) and resolved."""
    if not isinstance(model, FResNet):
        raise FresnetError("optimize_for_inference takes a fresnet network (fresnet.create_model / fresnet.load); "
                           f"got {type(model).__name__}")
    if compile != "auto" and compile not in (False, True) + compiling.COMPILE_MODES:
        raise FresnetError(f"unknown compile mode {compile!r}; choose one of 'auto', False, True, "
                           + ", ".join(repr(m) for m in compiling.COMPILE_MODES))
    device = _device(model, device)
    low = None if dtype == DTYPE_AUTO else parse_dtype(dtype)
    stream = None if residual_dtype is None else parse_dtype(residual_dtype)
    _check_dtype(low, device, stream, float32_units)
    _check_float32_units(model, float32_units)
    if int8_backend is not None and int8_backend not in INT8_BACKENDS:
        raise FresnetError(f"unknown int8_backend {int8_backend!r}; choose one of {', '.join(INT8_BACKENDS)}")
    if int8_backend is not None and low not in (None, torch.int8):
        raise FresnetError(f"int8_backend applies to dtype='int8' or 'auto'; got dtype={dtype!r}")
    if reduce_range is not None and (low not in (None, torch.int8) or not isinstance(reduce_range, bool)):
        raise FresnetError(f"reduce_range is True (7-bit int8) or False (8-bit) with dtype='int8' or 'auto'; "
                           f"got reduce_range={reduce_range!r} with dtype={dtype!r}")
    return FastOptions(device, low, bool(channels_last), _compile_mode(compile, device), bool(fold_bn),
                       calibrate=bool(low is None if calibrate is None else calibrate), residual_dtype=stream,
                       float32_units=float32_units, calibration=calibration, int8_backend=int8_backend,
                       reduce_range=reduce_range)


def _device(model: FResNet, device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FresnetError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
    return device


def _check_dtype(low: Optional[torch.dtype], device: torch.device, stream: Optional[torch.dtype],
                 float32_units: Optional[int]) -> None:
    if low == torch.float16 and device.type == "cpu":
        raise FresnetError("float16 is a GPU path; on CPU use dtype='bfloat16' or 'float32'")
    if low == torch.int8 and device.type != "cpu":
        raise FresnetError("int8 is a CPU path (x86 oneDNN kernels); on a GPU use dtype='float16' or 'auto'")
    if low == torch.int8 and (stream is not None or float32_units is not None):
        raise FresnetError("residual_dtype and float32_units apply to bfloat16/float16; int8 keeps the residual "
                           "stream, the stem and the first unit in float32 by design")


def _check_float32_units(model: FResNet, float32_units: Optional[int]) -> None:
    if float32_units is None:
        return
    if isinstance(float32_units, bool) or not isinstance(float32_units, int) or float32_units < 0:
        raise FresnetError(f"float32_units must be a whole number >= 0; got {float32_units!r}")
    available = sum(1 for _ in model.iter_units())
    if float32_units > available:
        raise FresnetError(f"float32_units={float32_units}, but this network has {available} residual units")


def _compile_mode(compile: Union[bool, str], device: torch.device) -> Union[bool, str]:
    if compile == "auto":
        return compiling.default_compile(device)
    if compile and not compiling.compiler_available(device):
        warnings.warn("torch.compile needs a C++ compiler (CPU) or Triton (CUDA), and none was found; "
                      "running uncompiled", RuntimeWarning, stacklevel=4)
        return False
    return compile
