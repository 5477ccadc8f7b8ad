"""fresnet's own file format: safetensors, with the :class:`NetConfig` in the header metadata.

A ``.safetensors`` file written by :func:`save` is self-describing: :func:`load_safetensors` rebuilds
the network from it alone. (:func:`fresnet.load` reads it, and the other formats by file name, through
:mod:`fresnet.interop.formats`.) The metadata (all strings, as safetensors requires) is::

    {"format": "fresnet", "format_version": "1", "config": "<NetConfig JSON>", ...user metadata}

The tensors are ``model.state_dict()`` under fresnet's own key names. safetensors never executes
code on load, unlike a pickle.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Mapping, Optional, Union

import torch

from fresnet.errors import FresnetError
from fresnet.ioutil import regular_file
from fresnet.limits import check
from fresnet.validate import describe, load_json

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
    check("max_text_bytes", sum(len(k) + len(v) for k, v in header.items()), "the metadata", os.fspath(path))
    state = model.state_dict()
    _check_writable(state, config, os.fspath(path))
    # safetensors refuses shared or strided storage: give it plain contiguous copies
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def _check_writable(state: Mapping[str, torch.Tensor], config, path: str) -> None:
    """What :func:`load_safetensors` would refuse is not written: weights that are not floating point,
    or a state dict that is not the network ``model.config`` describes (a replaced layer)."""
    from fresnet.network.size import network_size

    for key, value in state.items():
        if not value.is_floating_point():
            raise FresnetError(f"{path}: cannot save {key} with dtype {value.dtype}: fresnet files hold floating-point "
                               "weights only (convert the model back with model.float())")
    present = sum(int(v.numel()) for v in state.values())
    needed = network_size(config).state_values
    if present != needed:
        raise FresnetError(
            f"{path}: the model's tensors ({present:,} values) are not the network its config describes "
            f"({config.short_name()}: {needed:,}); a module was replaced or added after building, so the file could "
            "not be loaded back; save a model built from its config"
        )


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Any]:
    """The file's safetensors handle: its header parsed once, for the metadata, the tensor index
    and the tensors alike; a file that is not safetensors is one clear error."""
    from safetensors import safe_open

    _require_file(path)
    try:
        handle = safe_open(path, framework="pt")
    except Exception as exc:
        raise FresnetError(
            f"{path}: not a readable safetensors file ({_first_line(exc)}); the file is corrupt or truncated, "
            "or has another format (see `fresnet convert --help` for the formats and their file names)"
        ) from None
    with handle:
        yield handle


def _metadata(handle) -> dict[str, str]:
    return {str(k): str(v) for k, v in (handle.metadata() or {}).items()}


def read_metadata(path: PathLike) -> dict[str, str]:
    """The safetensors header metadata of ``path``, with clear errors for non-safetensors files."""
    path = os.fspath(path)
    with _opened(path) as handle:
        return _metadata(handle)


def read_config(path: PathLike):
    """The :class:`NetConfig` stored in a fresnet ``.safetensors`` file."""
    return _config_of(os.fspath(path), read_metadata(path))


def _config_of(path: str, meta: Mapping[str, str]):
    """The :class:`NetConfig` in a fresnet file's metadata, every problem named."""
    from fresnet.network.config import NetConfig

    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise FresnetError(
            f"{path}: a safetensors file, but not a fresnet one (no 'format': 'fresnet' and 'config' in its metadata; "
            f"found keys {sorted(meta)}). Write it with fresnet.save(model, path), or import the source weights "
            "with `fresnet convert`"
        )
    version = meta.get("format_version", "?")
    if not (version.isascii() and version.isdigit() and len(version) < 10):
        raise FresnetError(
            f"{path}: the fresnet format version {describe(version)} is not a number; the file is damaged"
        )
    if int(version) > FORMAT_VERSION:
        raise FresnetError(
            f"{path}: fresnet format version {version} is newer than this fresnet understands ({FORMAT_VERSION}); "
            "upgrade fresnet"
        )
    try:
        options = load_json(meta["config"], path, "'config' metadata")
    except FresnetError as exc:
        raise FresnetError(f"{exc}; it is not valid NetConfig JSON") from None
    if not isinstance(options, dict):
        raise FresnetError(f"{path}: the 'config' metadata is not valid NetConfig JSON (a {type(options).__name__}, "
                           "not a mapping of keys to values)")
    try:
        return NetConfig.from_dict(options)
    except FresnetError as exc:
        raise FresnetError(f"{path}: the stored config is invalid: {exc}") from None


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Rebuild a fresnet model from a ``.safetensors`` file written by :func:`save` (eval mode).
    The header is parsed once; the network's size is checked against the limits before the
    network or any tensor is allocated."""
    from fresnet.limits import product
    from fresnet.network.model import FResNet
    from fresnet.network.size import check_declared_size

    path = os.fspath(path)
    with _opened(path) as handle:
        config = _config_of(path, _metadata(handle))
        try:  # safetensors has checked that every tensor's bytes lie in the file
            keys = list(handle.keys())
            stored = sum(product(handle.get_slice(key).get_shape()) for key in keys)
        except Exception as exc:
            raise FresnetError(
                f"{path}: the tensor index cannot be read ({_first_line(exc)}); the file is corrupt"
            ) from None
        check_declared_size(config, stored, path)
        try:
            tensors = {key: handle.get_tensor(key) for key in keys}
        except Exception as exc:
            raise FresnetError(
                f"{path}: the tensor data cannot be read ({_first_line(exc)}); the file is corrupt"
            ) from None
    model = FResNet(config)
    load_checked(model, tensors, path)
    return model.to(device).eval()


def load_checked(model, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with one clear error for missing, unexpected, mis-shaped or mis-typed
    tensors (an integer tensor is never cast into floating-point weights)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {list(tensors[k].shape)} (needs {list(v.shape)})"
        for k, v in expected.items()
        if k in tensors and (not isinstance(tensors[k], torch.Tensor) or tuple(tensors[k].shape) != tuple(v.shape))
    ]
    wrong += [
        f"{k} has dtype {tensors[k].dtype} (needs floating point)"
        for k, v in expected.items()
        if k in tensors
        and isinstance(tensors[k], torch.Tensor)
        and tensors[k].is_floating_point() != v.is_floating_point()
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
        raise FileNotFoundError(2, "no such file", path)
    regular_file(path, ".safetensors file")


__all__ = ["save", "load_safetensors", "read_config", "read_metadata", "FORMAT_VERSION"]
