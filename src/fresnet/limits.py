"""Explicit caps on what an input may make fresnet allocate or compute, checked before it happens.

A file *declares* sizes (a tensor's shape, a network's widths, an identity range, an image's
dimensions) long before the bytes behind them are read. Every reader checks what is declared
against the bytes actually present first; these caps bound what cannot be checked that way
(a network rebuilt from a stored config, pixels decoded from compressed images, identities named
by a range). Sizes are multiplied as Python integers, so a product never overflows past a check.

The defaults are generous for real use -- r269 (115M parameters and statistics, 43 GFLOPs at 112x112), IJB-C-size
verification packs, MS1MV3-size RecordIO sets (93k identities, 5.2M images), 100 GB datasets --
and small enough that a hostile file cannot exhaust a machine. Raise one when a trusted input needs
more, in code::

    with fresnet.limits.override(max_parameters=2_000_000_000):
        model = fresnet.load("huge.safetensors")

from the environment (read when first needed; ``FRESNET_MAX_PARAMETERS=2e9``, sizes may carry a
unit: ``FRESNET_MAX_TENSOR_BYTES=32GiB``), or on the command line
(``fresnet --limit max_parameters=2e9 convert ...``). See docs/security.md.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Union

from fresnet.errors import FresnetError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
ENV_PREFIX = "FRESNET_"


@dataclass(frozen=True)
class Limits:
    """The caps (all integers). Each is documented where it is checked; docs/security.md lists them."""

    #: bytes of one tensor or array read from a file or allocated from declared sizes (the largest
    #: activation of a network at batch 1 included)
    max_tensor_bytes: int = 8 * GiB
    #: parameters plus BatchNorm statistics of one network (r269: 115M)
    max_parameters: int = 500_000_000
    #: FLOPs of one forward pass at batch 1 (r100 at 112x112: 24 GFLOPs)
    max_flops: int = 2 * 10**12
    #: residual units over all stages (r269: 89)
    max_units: int = 1_000
    #: decoded pixels of one image (a 24-megapixel photo is 2.4e7): Pillow's own bomb threshold
    #: (raising this past it also needs PIL.Image.MAX_IMAGE_PIXELS raised above 179M pixels)
    max_image_pixels: int = (1 << 30) // 12
    #: decoded pixels of one verification pack, all images together (IJB-C at 112x112: 5.9e9)
    max_pack_pixels: int = 1 << 33
    #: decoded pixels per byte of a verification pack, all images together (lfw.bin: about 3):
    #: a small pack of highly compressed images must not decode to gigabytes
    max_pixels_per_byte: int = 128
    #: identities of one training set, and records of a RecordIO file (its keys and labels are
    #: float32, exact up to 2**24)
    max_identities: int = 1 << 24
    #: bytes of one RecordIO record, split parts joined (a face crop is a few KB)
    max_record_bytes: int = 256 * MiB
    #: bytes of one text file read whole: a YAML config, an MXNet -symbol.json (r269's is ~0.5 MB)
    max_text_bytes: int = 64 * MiB
    #: bytes of one list file read whole and split into rows: the IJB meta files (IJB-C's
    #: landmarks file is about 40 MB; its 15.7M-line pair list is streamed, not read whole)
    max_list_bytes: int = 256 * MiB
    #: nesting depth of JSON and YAML documents (fresnet's own are 4 deep)
    max_nesting: int = 64
    #: bytes of one HTTP request body sent to ``fresnet serve`` (all its photos together; a phone
    #: photo is 2-8 MB)
    max_upload_bytes: int = 32 * MiB

    def replace(self, **caps: Union[int, float, str]) -> Limits:
        return dataclasses.replace(self, **{name: parse_cap(name, value, "limits") for name, value in caps.items()})


NAMES = tuple(f.name for f in dataclasses.fields(Limits))
DEFAULTS = Limits()

_current: contextvars.ContextVar[Optional[Limits]] = contextvars.ContextVar("fresnet_limits", default=None)
_from_env: Optional[Limits] = None

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_cap(name: str, value: Union[int, float, str], where: str) -> int:
    """A cap as a positive integer: ``2000000000``, ``2e9``, ``'8GiB'``, ``'500M'``."""
    if name not in NAMES:
        raise FresnetError(f"{where}: unknown limit {name!r}; the limits are {', '.join(NAMES)}")
    number: Optional[float] = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        return _positive(name, value, where)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        unit = match.group(2).lower() if match else ""
        if match and unit in _UNITS:
            text = match.group(1)
            if re.fullmatch(r"[0-9]+", text):
                return _positive(name, int(text) * _UNITS[unit], where)
            number = float(text) * _UNITS[unit]
    if number is None or number != number or number in (float("inf"), float("-inf")) or number != int(number):
        raise FresnetError(
            f"{where}: {name}={value!r} is not a whole number; give e.g. {name}=2000000000, 2e9 or (for bytes) 8GiB"
        )
    return _positive(name, int(number), where)


def _positive(name: str, value: int, where: str) -> int:
    if value < 1:
        raise FresnetError(f"{where}: {name}={value} must be a positive number")
    return value


def _env_limits(environ: Mapping[str, str]) -> Limits:
    caps = {}
    for name in NAMES:
        text = environ.get(ENV_PREFIX + name.upper())
        if text is not None and text.strip():
            caps[name] = parse_cap(name, text, f"environment variable {ENV_PREFIX + name.upper()}")
    return dataclasses.replace(DEFAULTS, **caps)


def current() -> Limits:
    """The limits in force: an :func:`override` if one is active, else the defaults updated from
    ``FRESNET_MAX_*`` environment variables (read once)."""
    active = _current.get()
    if active is not None:
        return active
    global _from_env
    if _from_env is None:
        _from_env = _env_limits(os.environ)
    return _from_env


@contextlib.contextmanager
def override(**caps: Union[int, float, str]) -> Iterator[Limits]:
    """Raise (or lower) some limits inside a ``with`` block; the others keep their current values."""
    token = _current.set(current().replace(**caps))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


#: what a limit hit says about where the value came from (``check(..., origin=...)``)
ORIGINS = {
    "input": "The input is damaged or hostile; if it is trusted",
    "request": "This is the size asked for (an option or argument given), not a damaged input; if it is meant",
    "config": "The network config asks for this (a preset with overrides, or a file's stored config); if it is meant",
}


def raise_hint(name: str) -> str:
    """How to raise the limit ``name``: in code, in the environment, on the command line."""
    return (f"fresnet.limits.override({name}=...), {ENV_PREFIX}{name.upper()}=... or "
            f"`fresnet --limit {name}=...` (see docs/security.md)")


def check(name: str, needed: int, what: str, where: str = "", *, origin: str = "input") -> None:
    """Refuse ``needed`` (a Python int) when it is above the limit ``name``. ``origin`` says where
    the value came from: ``"input"`` (a file declared it), ``"request"`` (the caller's own value,
    e.g. ``--faces``) or ``"config"`` (a network config); the message says which."""
    cap = getattr(current(), name)
    if needed > cap:
        prefix = f"{where}: " if where else ""
        raise FresnetError(
            f"{prefix}{what} needs {needed:,}, above the limit {name}={cap:,}. {ORIGINS[origin]}, "
            f"raise the limit: {raise_hint(name)}"
        )


def product(values) -> int:
    """The product of sizes as a Python int (numpy's int64 product wraps around silently)."""
    out = 1
    for value in values:
        out *= int(value)
    return out


__all__ = ["Limits", "DEFAULTS", "NAMES", "ORIGINS", "current", "override", "check", "product", "parse_cap",
           "raise_hint"]
