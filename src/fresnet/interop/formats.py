"""Which weight format a path means, decided from its name alone, and one reader/writer per format;
:func:`load` (``fresnet.load``) reads any readable format by name.

============================  ===========  ==========================================
name                          format       read / write
============================  ===========  ==========================================
``model.safetensors``         fresnet      :func:`fresnet.load` / :func:`fresnet.save`
``model.pth``, ``model.pt``   arcface_torch iresnet state dict (both directions)
``prefix-symbol.json``        MXNet        :func:`fresnet.load_mxnet` / :func:`fresnet.save_mxnet`
``prefix-0010.params``        MXNet        the same, epoch 10
``prefix`` (no suffix)        MXNet        source: needs ``prefix-symbol.json``; destination: epoch 0
``model.onnx``                ONNX         write only (:func:`fresnet.export_onnx`)
============================  ===========  ==========================================
"""
from __future__ import annotations

import enum
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from fresnet.errors import FresnetError

if TYPE_CHECKING:
    import torch

SYMBOL_SUFFIX = "-symbol.json"
_PARAMS = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")
HELP = (
    "use a name ending in .safetensors (fresnet), .pth/.pt (arcface_torch iresnet), -symbol.json or "
    "-NNNN.params (MXNet; or the bare MXNet prefix), or .onnx (export only)"
)


class Kind(enum.Enum):
    SAFETENSORS = "fresnet safetensors"
    ARCFACE_TORCH = "arcface_torch iresnet state dict (.pth)"
    MXNET = "MXNet checkpoint"
    ONNX = "ONNX"


@dataclass(frozen=True)
class ModelFile:
    """A path with its format; MXNet checkpoints are a prefix plus an epoch."""

    kind: Kind
    path: str
    epoch: Optional[int] = None  # MXNet only

    def describe(self) -> str:
        if self.kind is Kind.MXNET:
            return f"{self.kind.value}: prefix {self.path!r}, epoch {self.epoch} ({self.path}-{self.epoch:04d}.params)"
        return f"{self.kind.value}: {self.path}"


def _by_suffix(path: str) -> Optional[Kind]:
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return Kind.SAFETENSORS
    if lower.endswith((".pth", ".pt")):
        return Kind.ARCFACE_TORCH
    if lower.endswith(".onnx"):
        return Kind.ONNX
    return None


def _mxnet_epochs(prefix: str) -> list[int]:
    found = []
    for name in glob.glob(glob.escape(prefix) + "-[0-9][0-9][0-9][0-9].params"):
        match = _PARAMS.match(name)
        if match and match.group("prefix") == prefix:
            found.append(int(match.group("epoch")))
    return sorted(found)


def detect_source(path: str | os.PathLike, epoch: Optional[int] = None) -> ModelFile:
    """The format of an existing model file; raises :class:`FresnetError` when the name says nothing."""
    path = os.fspath(path)
    if path.endswith(SYMBOL_SUFFIX):
        return _mxnet_source(path[: -len(SYMBOL_SUFFIX)], epoch, path)
    match = _PARAMS.match(path)
    if match:
        if epoch is not None and epoch != int(match.group("epoch")):
            raise FresnetError(f"{path} names epoch {int(match.group('epoch'))}, but --epoch {epoch} was given")
        return ModelFile(Kind.MXNET, match.group("prefix"), int(match.group("epoch")))
    if os.path.exists(path + SYMBOL_SUFFIX):  # a bare prefix (it may contain dots: r100.v2)
        return _mxnet_source(path, epoch, path)
    kind = _by_suffix(path)
    if kind is Kind.ONNX:
        raise FresnetError(
            f"{path}: ONNX is an export-only format here; convert from the .safetensors, .pth or MXNet files"
        )
    if kind is None:
        hint = " (and no MXNet checkpoint has this prefix)" if not Path(path).suffix else ""
        raise FresnetError(f"cannot tell the format of {path!r} from its name{hint}; {HELP}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    return ModelFile(kind, path)


def _mxnet_source(prefix: str, epoch: Optional[int], shown: str) -> ModelFile:
    if epoch is not None:
        return ModelFile(Kind.MXNET, prefix, int(epoch))
    epochs = _mxnet_epochs(prefix)
    if len(epochs) == 1:
        return ModelFile(Kind.MXNET, prefix, epochs[0])
    if not epochs:
        raise FresnetError(
            f"{shown}: no {prefix}-NNNN.params file next to it; an MXNet checkpoint needs the weights too"
        )
    raise FresnetError(
        f"{shown}: several epochs exist ({', '.join(f'{e:04d}' for e in epochs)}); choose one with --epoch N "
        f"or name the file, e.g. {prefix}-{epochs[-1]:04d}.params"
    )


def detect_destination(path: str | os.PathLike, epoch: Optional[int] = None) -> ModelFile:
    """The format to write, from the name; a suffix-less name is an MXNet prefix (epoch 0 by default)."""
    path = os.fspath(path)
    if path.endswith(SYMBOL_SUFFIX):
        return ModelFile(Kind.MXNET, path[: -len(SYMBOL_SUFFIX)], 0 if epoch is None else int(epoch))
    match = _PARAMS.match(path)
    if match:
        if epoch is not None and epoch != int(match.group("epoch")):
            raise FresnetError(f"{path} names epoch {int(match.group('epoch'))}, but --epoch {epoch} was given")
        return ModelFile(Kind.MXNET, match.group("prefix"), int(match.group("epoch")))
    kind = _by_suffix(path)
    if kind is not None:
        return ModelFile(kind, path)
    if not Path(path).suffix and not path.endswith(("/", os.sep)) and not os.path.isdir(path):
        return ModelFile(Kind.MXNET, path, 0 if epoch is None else int(epoch))
    raise FresnetError(f"cannot tell which format to write for {path!r}; {HELP}")


def read_model(source: ModelFile, **options: Any):
    """Read a model in any readable format. ``options`` go to the importers: ``num_layers`` and
    ``input_size`` for arcface_torch, ``input_size`` for MXNet; ``None`` values are ignored."""
    if source.kind is Kind.SAFETENSORS:
        from fresnet.interop.native import load_safetensors

        return load_safetensors(source.path)
    if source.kind is Kind.ARCFACE_TORCH:
        from fresnet.interop.arcface_torch import load_arcface_torch

        return load_arcface_torch(source.path, **{k: v for k, v in options.items() if v is not None})
    if source.kind is Kind.MXNET:
        from fresnet.interop.mxnet import load_mxnet

        extra = {"input_size": options["input_size"]} if options.get("input_size") is not None else {}
        model, _config = load_mxnet(source.path, epoch=source.epoch or 0, **extra)
        return model.eval()
    raise FresnetError(f"{source.path}: {source.kind.value} cannot be read, only written")


def load(path: str | os.PathLike, device: Union[str, torch.device] = "cpu"):
    """Rebuild a fresnet model from a ``.safetensors`` file written by :func:`fresnet.save` (eval mode).

    Other formats are read too, by file name: an arcface_torch ``.pth``/``.pt`` and an MXNet
    checkpoint (``prefix-symbol.json`` / ``prefix-0000.params``) go through their importers.
    """
    from fresnet.interop.native import load_safetensors

    path = os.fspath(path)
    try:
        spec = detect_source(path)
    except FresnetError:
        if path.lower().endswith(".onnx"):
            raise
        spec = None  # an unusual name: read it as safetensors, whose errors explain themselves
    if spec is not None and spec.kind is not Kind.SAFETENSORS:
        return read_model(spec).to(device).eval()
    return load_safetensors(path, device)


def write_model(model, destination: ModelFile, **onnx_options: Any) -> None:
    """Write ``model`` in the destination's format. ``onnx_options`` go to :func:`export_onnx`."""
    if destination.kind is Kind.SAFETENSORS:
        from fresnet.interop.native import save

        save(model, destination.path)
    elif destination.kind is Kind.ARCFACE_TORCH:
        from fresnet.interop.arcface_torch import export_arcface_torch

        export_arcface_torch(model, destination.path)
    elif destination.kind is Kind.MXNET:
        from fresnet.interop.mxnet import save_mxnet

        save_mxnet(model, destination.path, epoch=destination.epoch or 0)
    elif destination.kind is Kind.ONNX:
        from fresnet.interop.onnx_export import export_onnx

        export_onnx(model, destination.path, **onnx_options)
    else:  # pragma: no cover - Kind is closed
        raise FresnetError(f"cannot write {destination.kind}")


__all__ = ["Kind", "ModelFile", "detect_source", "detect_destination", "read_model", "write_model", "load"]
