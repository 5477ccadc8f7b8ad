"""Reading PyTorch files (``.pth`` weights, training checkpoints) without trusting what they declare.

``torch.load(weights_only=True)`` never runs code, but it rebuilds tensors from the sizes and
strides the file declares: a stride-0 tensor of a few bytes on disk can claim terabytes, and a
zip entry may be compressed (torch never writes one) so a small file inflates. :func:`load_weights`
refuses compressed or over-long zip entries before loading, and :func:`check_tensor` refuses a
tensor whose declared elements are not backed by its storage, before anything copies it.
"""
from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Union

import torch

from fresnet.errors import FresnetError
from fresnet.ioutil import regular_file
from fresnet.limits import check, product
from fresnet.validate import describe


def _check_zip(path: str, size: int) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return  # not a zip (the legacy format, or garbage): torch.load explains it
    with archive:
        total = 0
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise FresnetError(
                    f"{path}: zip entry {describe(info.filename)} is compressed; torch.save never compresses, so the "
                    "file was made by another tool or crafted to inflate when read; re-save it with torch.save"
                )
            total += info.file_size
        if total > size:
            raise FresnetError(
                f"{path}: the zip entries claim {total:,} bytes but the file has {size:,}; "
                f"the file is damaged or crafted"
            )


def load_weights(path: Union[str, os.PathLike], what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on a regular file whose zip entries are what torch
    writes; every failure is a :class:`FresnetError` naming the file and ``fix``."""
    path = os.fspath(path)
    regular_file(path, what)  # a missing file: FileNotFoundError "no such {what}"
    _check_zip(path, os.path.getsize(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; all mean "not a readable file"
        raise FresnetError(f"{path}: cannot read it as a {what} ({explain_load_error(exc)}). {fix}") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def explain_load_error(exc: BaseException, limit: int = 300) -> str:
    """What torch.load(weights_only=True) said, in one plain sentence: a pickled Python object is
    named as such, terminal colour codes are removed, and a long message is cut at a word."""
    text = _ANSI.sub("", str(exc))
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (f"it holds a pickled Python object, {found.group(1)}, not only tensors: a whole module saved "
                "with torch.save(model) rather than model.state_dict(), or another program's pickle; fresnet "
                "never unpickles objects")
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"torch.load with weights_only=True failed: {text}"


def check_tensor(tensor: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """Refuse a tensor that declares more elements than its storage holds (stride 0, overlapping
    strides) or more bytes than ``max_tensor_bytes``; sizes multiply as Python integers."""
    shape = tuple(int(d) for d in tensor.shape)
    numel = product(shape)
    nbytes = numel * tensor.element_size()
    check("max_tensor_bytes", nbytes, f"tensor {describe(name)} of shape {list(shape)}", source)
    if numel:
        span = 1 + sum((d - 1) * abs(int(s)) for d, s in zip(shape, tensor.stride()))
        stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        if numel > stored or tensor.storage_offset() + span > stored:
            raise FresnetError(
                f"{source}: tensor {describe(name)} declares shape {list(shape)} ({numel:,} values) over a storage "
                f"of {stored:,} values (strides {list(tensor.stride())}); its data is not in the file, which was "
                "crafted or damaged; re-save it with torch.save(model.state_dict(), path)"
            )
    return tensor
