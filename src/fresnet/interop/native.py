"""fresnet's own file format: safetensors, with the :class:`NetConfig` in the header metadata.

A ``.safetensors`` file written by :func:`save` is self-describing: :func:`load_safetensors` rebuilds
the network from it alone. (:func:`fresnet.load` reads it, and the other formats by file name, through
:mod:`fresnet.interop.formats`.) The metadata (all strings, as safetensors requires) is::

    {"format": "fresnet", "format_version": "1", "config": "<NetConfig JSON>", ...user metadata}

The tensors are ``model.state_dict()`` under fresnet's own key names. safetensors never executes
code on load, unlike a pickle.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Union

import torch

from fresnet.errors import FresnetError

FORMAT_NAME = "fresnet"
FORMAT_VERSION = 1
RESERVED_KEYS = ("format", "format_version", "config")

PathLike = Union[str, os.PathLike]


def save(model, path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``model`` (an FResNet) to ``path`` as safetensors with its config embedded; atomically.

    ``metadata`` adds string entries to the header (e.g. ``{"source": "arcface r100 ms1mv3"}``).
    """
    from safetensors.torch import save as save_bytes

    from fresnet.ioutil import atomic_write_bytes

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json"):
        raise FresnetError(f"fresnet.save needs a fresnet model (with .config), got {type(model).__name__}")
    header = {}
    for key, value in (metadata or {}).items():
        if key in RESERVED_KEYS:
            raise FresnetError(f"metadata key {key!r} is reserved by the fresnet format; rename it")
        header[str(key)] = str(value)
    header.update(format=FORMAT_NAME, format_version=str(FORMAT_VERSION), config=config.to_json())
    # safetensors refuses shared or strided storage: give it plain contiguous copies
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def read_metadata(path: PathLike) -> dict[str, str]:
    """The safetensors header metadata of ``path``, with clear errors for non-safetensors files."""
    from safetensors import safe_open

    path = os.fspath(path)
    _require_file(path)
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise FresnetError(
            f"{path}: not a readable safetensors file ({_first_line(exc)}); the file is corrupt or truncated, "
            "or has another format (see `fresnet convert --help` for the formats and their file names)"
        ) from None


def read_config(path: PathLike):
    """The :class:`NetConfig` stored in a fresnet ``.safetensors`` file."""
    from fresnet.network.config import NetConfig

    path = os.fspath(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise FresnetError(
            f"{path}: a safetensors file, but not a fresnet one (no 'format': 'fresnet' and 'config' in its metadata; "
            f"found keys {sorted(meta)}). Write it with fresnet.save(model, path), or import the source weights "
            "with `fresnet convert`"
        )
    version = meta.get("format_version", "?")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise FresnetError(
            f"{path}: fresnet format version {version} is newer than this fresnet understands ({FORMAT_VERSION}); "
            "upgrade fresnet"
        )
    try:
        return NetConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise FresnetError(f"{path}: the 'config' metadata is not valid NetConfig JSON ({exc})") from None
    except FresnetError as exc:
        raise FresnetError(f"{path}: the stored config is invalid: {exc}") from None


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Rebuild a fresnet model from a ``.safetensors`` file written by :func:`save` (eval mode)."""
    from safetensors.torch import load_file

    from fresnet.network.model import FResNet

    path = os.fspath(path)
    config = read_config(path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:
        raise FresnetError(f"{path}: the tensor data cannot be read ({_first_line(exc)}); the file is corrupt") from None
    model = FResNet(config)
    load_checked(model, tensors, path)
    return model.to(device).eval()


def load_checked(model, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with one clear error for missing, unexpected or mis-shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {list(tensors[k].shape)} (needs {list(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected {_clip(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_clip(wrong)}")
    if problems:
        raise FresnetError(
            f"{source}: the tensors do not match the stored config ({'; '.join(problems)}); the file was edited "
            "or written by another tool"
        )
    model.load_state_dict(dict(tensors))


def _clip(items: list[str], limit: int = 4) -> str:
    return str(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise FresnetError(f"{path} is a directory; give a .safetensors file")


__all__ = ["save", "load_safetensors", "read_config", "read_metadata", "FORMAT_VERSION"]
