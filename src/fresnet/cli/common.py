"""Argument helpers shared by sub-commands."""
from __future__ import annotations

import argparse
from typing import Any

from fresnet.network.config import parse_assignments


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="preset name (see `fresnet list`), e.g. r50")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set net_output=GDC --set input_size=112x96 (repeatable)",
    )


def model_from_args(args: argparse.Namespace) -> Any:
    from fresnet.network.model import create_model

    return create_model(args.name, **parse_assignments(args.overrides))


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
