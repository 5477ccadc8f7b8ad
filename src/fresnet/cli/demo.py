"""``fresnet demo``: synthetic data -> model summary and graph -> training -> evaluation -> ONNX, in one report."""
from __future__ import annotations

import argparse
from pathlib import Path

from fresnet.cli import args as A


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo: synthetic identities, training, verification, ONNX export; writes a report",
        description="Creates synthetic identities (RecordIO + a held-out .bin), summarises and draws the model, "
        "trains it (config synthetic-r18, as many steps as fit a time budget on this machine, at least 1000: "
        "a few minutes in all: 163 s measured on 2 AVX2 cores), evaluates it and the untrained "
        "network with InsightFace's protocol, exports ONNX and checks parity. Everything goes into --out "
        "(report.md, report.html, results.json, pictures). The last line printed is 'accuracy: 0.xxxx'.",
    )
    p.add_argument("--out", default="report", help="report folder (default: report)")
    p.add_argument(
        "--config", default="synthetic-r18", help="training config: built-in name or YAML (default synthetic-r18)"
    )
    p.add_argument(
        "--max-steps", type=A.positive_int, default=None, help="train exactly this many steps (no time budget)"
    )
    p.add_argument("--train-budget", type=A.nonnegative_float, default=None, metavar="SECONDS",
                   help="seconds of training to fit the steps to: a short calibration measures this machine's "
                   "speed, and the steps are what fits, at least the quality floor and at most the config's "
                   "max_steps (default 100; 0 trains the config's max_steps)")
    p.add_argument(
        "--pairs",
        type=A.positive_int,
        default=None,
        help="held-out verification pairs (default: the config's val_pairs)",
    )
    p.add_argument("--quick", action="store_true",
                   help="a smoke run with tiny settings (well under a minute); the accuracy means nothing")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out that is not a previous report")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fresnet.demo.run import run_demo
    from fresnet.demo.state import DemoFailed, DemoOptions

    options = DemoOptions(out=Path(args.out), config=args.config, max_steps=args.max_steps, quick=args.quick,
                          force=args.force, pairs=args.pairs, progress=args.progress, train_budget=args.train_budget)
    try:
        result = run_demo(options)
    except DemoFailed as exc:
        print(f"fresnet demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {result.report} (and report.html), total {result.seconds:.1f} s")
    print(f"untrained accuracy: {result.untrained_accuracy:.4f}")
    print(f"accuracy: {result.accuracy:.4f}")
    return 0
