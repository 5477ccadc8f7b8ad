"""Argument helpers shared by sub-commands."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fresnet.cli import args as A
from fresnet.errors import FresnetError
from fresnet.network.config import parse_assignments

MODEL_FILES = ".safetensors (fresnet), .pth/.pt (arcface_torch), an MXNet prefix, X-symbol.json or X-NNNN.params"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help=f"preset name (see `fresnet list`), e.g. r50, or a model file: {MODEL_FILES}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset's config key, e.g. --set net_output=GDC --set input_size=112x96 (repeatable)",
    )
    parser.add_argument("--epoch", type=A.epoch, default=None, help="epoch of an MXNet checkpoint given as a prefix")


def is_preset(name: str) -> bool:
    """A preset name that is not also the name of a file here (then the file is meant)."""
    from fresnet.network.presets import PRESETS

    return name in PRESETS and not os.path.exists(name)


def model_from_args(args: argparse.Namespace) -> Any:
    """The network NAME names: a preset (random weights, with --set overrides) or a model file in
    any format ``fresnet convert`` reads (with --epoch for an MXNet prefix of several epochs)."""
    from fresnet.interop.formats import detect_source, read_model
    from fresnet.network.model import create_model

    if is_preset(args.name):
        if args.epoch is not None:
            raise FresnetError(f"--epoch applies to an MXNet checkpoint; {args.name} is a preset")
        return create_model(args.name, **parse_assignments(args.overrides))
    if args.overrides:
        raise FresnetError(
            f"--set applies to preset names only; {args.name} is a model file and carries its own config"
        )
    try:
        source = detect_source(args.name, epoch=args.epoch)
    except FileNotFoundError:
        raise FresnetError(f"{args.name}: no such model file") from None
    except FresnetError as exc:
        if not os.path.exists(args.name) and os.sep not in args.name and "." not in args.name:
            raise FresnetError(
                f"{args.name!r} is neither a preset (see `fresnet list`) nor a model file: {exc}"
            ) from None
        raise
    return read_model(source)


def model_label(args: argparse.Namespace) -> str:
    """How outputs name the model: the preset, or the model file's name without its suffix."""
    if is_preset(args.name):
        return args.name
    name = Path(args.name.rstrip("/\\")).name
    for suffix in ("-symbol.json", ".safetensors", ".params", ".pth", ".pt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------------------------------
# the overwrite rule, one for every command that writes (docs/cli.md): an existing output is
# refused unless --overwrite; --overwrite with --resume is an error (a resume continues what is
# there, an overwrite replaces it)

OVERWRITE_HELP = "replace outputs that already exist (without it, an existing output is refused)"


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def refuse_existing(paths, overwrite: bool, resume: bool = False) -> None:
    """The rule: raise when one of ``paths`` exists and ``overwrite`` is not given."""
    import os

    from fresnet.errors import FresnetError

    if overwrite and resume:
        raise FresnetError("--overwrite and --resume contradict each other: --resume continues what is there, "
                           "--overwrite replaces it; give one")
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise FresnetError(f"{path} already exists; choose another output, or pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------------
# --device, parsed once for every command that runs a model


def resolve_device(text: str) -> str:
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device this
    torch cannot use is a :class:`FresnetError` naming what can be typed instead."""
    import re

    import torch

    from fresnet.errors import FresnetError

    name = str(text).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise FresnetError(f"unknown device {text!r}; use --device cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        build = ("a CPU-only build" if torch.version.cuda is None
                 else f"CUDA {torch.version.cuda}, but no GPU is visible")
        raise FresnetError(f"--device {text}: this torch has no CUDA device ({build}); use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise FresnetError(f"--device {text}: no CUDA device {index}, this machine has {count} "
                           f"(cuda:0 to cuda:{count - 1}); use one of those or --device cpu")
    return name
