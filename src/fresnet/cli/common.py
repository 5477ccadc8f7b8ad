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
