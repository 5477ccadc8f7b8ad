"""``fresnet summary NAME`` and ``fresnet list``."""
from __future__ import annotations

import argparse
import json

from fresnet.cli import args as A
from fresnet.cli.common import add_model_args, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer table, parameter counts (true and MXNet), MACs and FLOPs")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--rows", type=A.nonnegative_int, default=None, help="show at most this many layer rows")
    p.set_defaults(func=run_summary)
    p = sub.add_parser("list", help="list the named models")
    p.set_defaults(func=run_list)


def run_summary(args: argparse.Namespace) -> int:
    from fresnet.inspection.summary import summarize

    summary = summarize(model_from_args(args))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        summary.render(max_rows=args.rows)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from fresnet.network.presets import PRESETS, list_models

    for name in list_models():
        print(f"{name:8s} {PRESETS[name]}")
    return 0
