"""The record of one way to run the network on the fast path (:class:`FastChoice`), and the dtype
names ``optimize_for_inference`` accepts.

A choice is data: :mod:`fresnet.inference.candidates` decides which choices are tried,
:mod:`fresnet.inference.fast_model` builds, checks and times them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from fresnet.errors import FresnetError
from fresnet.inference.mixed_precision import dtype_name

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "int8": torch.int8,
}
INT8_BACKENDS = ("pytorch", "onnxruntime")  # PT2E with inductor's kernels; an onnxruntime QDQ session


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """A dtype given by name ('bf16', 'float32', ...) or as a ``torch.dtype`` the fast path runs."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise FresnetError(f"dtype {dtype} is not supported; use float32, bfloat16, float16 or int8 (or 'auto')")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise FresnetError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16', 'float16' or 'int8'") from None


@dataclass(frozen=True)
class Int8Settings:
    """What only an int8 path has: its backend, its bit width and its calibration."""

    backend: str = "pytorch"  # 'pytorch' (PT2E, inductor) or 'onnxruntime' (QDQ session)
    reduce_range: bool = False  # 7-bit activations (PyTorch) or weights (onnxruntime), no int16 saturation
    calibration_images: int = 0  # how many images the activation ranges come from

    def describe(self) -> str:
        if self.backend == "onnxruntime":
            how = "onnxruntime QDQ, " + ("7-bit weights" if self.reduce_range else "8-bit weights")
        else:
            how = "PT2E, " + ("7-bit activations" if self.reduce_range else "8-bit activations")
        return (f"int8 convolutions and FC ({how}, calibrated on {self.calibration_images} images), "
                "float32 stem, first unit and residual stream")


@dataclass(frozen=True)
class FastChoice:
    """One concrete way to run the network (and, after the first call with ``dtype='auto'``, why it
    was chosen). ``int8`` is set exactly when ``dtype`` is ``torch.int8``."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    compile: Union[bool, str]
    fold_bn: bool
    residual_dtype: torch.dtype = torch.float32  # the stream between residual units
    float32_units: int = 0  # leading residual units kept entirely in float32
    reason: str = ""
    cosine: Optional[float] = None  # min cosine to float32 on the calibration batch
    eager: bool = False  # the model exactly as given (a copy), no fast-path change at all
    int8: Optional[Int8Settings] = None

    def __post_init__(self) -> None:
        if (self.int8 is not None) != (self.dtype == torch.int8):
            raise ValueError("a FastChoice has int8 settings exactly when its dtype is torch.int8")

    # shorthands for the int8 settings (None on other paths)
    @property
    def int8_backend(self) -> Optional[str]:
        return self.int8.backend if self.int8 else None

    @property
    def reduce_range(self) -> Optional[bool]:
        return self.int8.reduce_range if self.int8 else None

    @property
    def calibration_images(self) -> int:
        return self.int8.calibration_images if self.int8 else 0

    @property
    def name(self) -> str:
        """Short name: 'eager'; 'float32' ('float32/nchw' without channels_last); 'int8' (PyTorch),
        'int8/onnxruntime'; 'bfloat16' (float32 residual stream); 'bfloat16/bfloat16' (bf16 stream);
        'bfloat16+1' (float32 stream and first unit)."""
        if self.eager:
            return "eager"
        name = dtype_name(self.dtype)
        if self.int8 is not None:
            return name + ("" if self.int8.backend == "pytorch" else f"/{self.int8.backend}")
        if self.dtype == torch.float32:
            return name + ("" if self.channels_last else "/nchw")
        if self.residual_dtype != torch.float32:
            name += "/" + dtype_name(self.residual_dtype)
        return name + (f"+{self.float32_units}" if self.float32_units else "")

    def describe(self) -> str:
        """What runs, and -- once chosen -- why (the reason, with the times measured)."""
        if self.eager:
            text = f"{self.device}, eager (the model as given)"
        else:
            text = ", ".join(self._parts())
        return text + (f"; {self.reason}" if self.reason else "")

    def _parts(self) -> list[str]:
        if self.int8 is not None:
            precision = self.int8.describe()
        elif self.dtype == torch.float32:
            precision = "float32"
        else:
            kept = "stem, first unit" if self.float32_units == 1 else (
                f"stem, first {self.float32_units} units" if self.float32_units else "stem")
            precision = (f"{dtype_name(self.dtype)} convolutions, "
                         f"{dtype_name(self.residual_dtype)} residual stream, float32 {kept} and head")
        parts = [self.device, precision]
        if self.int8 is None:
            parts.append("channels_last" if self.channels_last else "NCHW")
        if self.fold_bn:
            parts.append("BN folded")
        if self.compile:
            parts.append(f"compiled({self.compile})" if isinstance(self.compile, str) else "compiled")
        return parts
