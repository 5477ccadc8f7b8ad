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


class UnknownName(FresnetError):
    """Neither the name nor the content of a path says which model format it holds."""


def sniff(path: str) -> Optional[Kind]:
    """The format a file's first bytes say (``None``: they say nothing): a zip (torch.save) or a
    pickle (the legacy torch format) is a PyTorch file, an 8-byte length then ``{`` a safetensors
    file. Names can lie (a ``.safetensors`` renamed ``.pt``); contents do not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return Kind.ARCFACE_TORCH
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < (1 << 40):
        return Kind.SAFETENSORS
    return None


RUN_MODEL = "model.safetensors"  # what a training run folder holds


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
    if os.path.isdir(path):  # a training run's folder
        model = os.path.join(path, RUN_MODEL)
        if os.path.isfile(model):
            return ModelFile(Kind.SAFETENSORS, model)
        raise FresnetError(f"{path}: a folder without {RUN_MODEL}; give a model file (a training run folder holds "
                           f"{RUN_MODEL} once its first checkpoint is written)")
    kind = _by_suffix(path)
    if kind is Kind.ONNX:
        raise FresnetError(
            f"{path}: ONNX is an export-only format here; convert from the .safetensors, .pth or MXNet files"
        )
    content = sniff(path) if os.path.isfile(path) else None
    kind = content or kind  # the bytes decide where they say something
    if kind is None:
        hint = " (and no MXNet checkpoint has this prefix)" if not Path(path).suffix else ""
        raise UnknownName(f"cannot tell the format of {path!r} from its name or its content{hint}; {HELP}")
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
        f"{shown}: several epochs: choose one ({', '.join(f'{e:04d}' for e in epochs)}) by naming its file, "
        f"e.g. {prefix}-{epochs[-1]:04d}.params"
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

    Other formats are read too, by content where the first bytes say it, else by name: an
    arcface_torch ``.pth``/``.pt`` and an MXNet checkpoint (``prefix-symbol.json`` /
    ``prefix-0000.params``, or the bare prefix when it has one epoch) go through their importers; a
    training run's folder loads its ``model.safetensors``.
    """
    from fresnet.interop.native import load_safetensors

    path = os.fspath(path)
    try:
        spec = detect_source(path)
    except UnknownName:
        spec = None  # an unusual name and content: read it as safetensors, whose errors explain themselves
    except FileNotFoundError:
        spec = None
    if spec is not None and spec.kind is not Kind.SAFETENSORS:
        return read_model(spec).to(device).eval()
    return load_safetensors(spec.path if spec is not None else path, device)


def output_files(destination: ModelFile) -> list[Path]:
    """The files a write to ``destination`` replaces (an MXNet prefix: its epoch's params; the
    symbol, shared by the epochs, is checked by :func:`fresnet.interop.mxnet.save_mxnet`)."""
    if destination.kind is Kind.MXNET:
        return [Path(f"{destination.path}-{destination.epoch or 0:04d}.params")]
    return [Path(destination.path)]


def write_model(model, destination: ModelFile, overwrite: bool = True, **onnx_options: Any) -> None:
    """Write ``model`` in the destination's format. ``onnx_options`` go to :func:`export_onnx`.
    ``overwrite=False`` refuses to replace an existing MXNet symbol of another network."""
    if destination.kind is Kind.SAFETENSORS:
        from fresnet.interop.native import save

        save(model, destination.path)
    elif destination.kind is Kind.ARCFACE_TORCH:
        from fresnet.interop.arcface_torch import export_arcface_torch

        export_arcface_torch(model, destination.path)
    elif destination.kind is Kind.MXNET:
        from fresnet.interop.mxnet import save_mxnet

        save_mxnet(model, destination.path, epoch=destination.epoch or 0, overwrite=overwrite)
    elif destination.kind is Kind.ONNX:
        from fresnet.interop.onnx_export import export_onnx

        export_onnx(model, destination.path, **onnx_options)
    else:  # pragma: no cover - Kind is closed
        raise FresnetError(f"cannot write {destination.kind}")


__all__ = ["Kind", "ModelFile", "UnknownName", "sniff", "detect_source", "detect_destination", "read_model",
           "write_model", "output_files", "load"]
