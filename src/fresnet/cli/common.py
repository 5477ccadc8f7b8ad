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
