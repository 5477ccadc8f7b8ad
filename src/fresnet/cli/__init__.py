"""``fresnet`` command line: one sub-command per module in this package.

Each sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` (a callable taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-command name -> module; order is the order shown in --help
COMMANDS = {
    "summary": "fresnet.cli.summary",
    "list": "fresnet.cli.summary",
    "plot": "fresnet.cli.plot",
    "memory": "fresnet.cli.memory",
    "convert": "fresnet.cli.convert",
    "export": "fresnet.cli.convert",
    "pack": "fresnet.cli.data",
    "make-bin": "fresnet.cli.data",
    "synth": "fresnet.cli.data",
    "train": "fresnet.cli.train",
    "eval": "fresnet.cli.evaluate",
    "embed": "fresnet.cli.evaluate",
    "compare": "fresnet.cli.evaluate",
    "demo": "fresnet.cli.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fresnet",
        description="InsightFace fresnet backbones in PyTorch: build, inspect, convert, train, evaluate.",
    )
    from fresnet import __version__

    parser.add_argument("--version", action="version", version=f"fresnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == module_name:
                continue
            raise
        module.register(sub)
    return parser


def prefer_sleeping_threads() -> None:
    """Let torch's OpenMP threads sleep while they wait, unless the user chose (``OMP_WAIT_POLICY``).

    By default a waiting OpenMP thread spins. When the cores are shared (a CI runner, a laptop doing
    other work) the spinning threads take the time slices the working ones need: on a 2-core machine
    at load 5-10 a demo training step took 3-4.6 s with spinning threads and 0.3-0.7 s with sleeping
    ones, at about the same CPU time per step as one thread. Only works before torch is imported,
    so the command line sets it first thing; ``OMP_WAIT_POLICY=ACTIVE`` restores spinning."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    prefer_sleeping_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from fresnet.errors import FresnetError

    try:
        return int(args.func(args) or 0)
    except (FresnetError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"fresnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fresnet {args.command}: interrupted", file=sys.stderr)
        return 130
