"""``fresnet`` command line: one sub-command per module in this package.

Each sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` (a callable taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    from fresnet.cli.process_settings import keep_freed_memory, prefer_sleeping_threads

    prefer_sleeping_threads()
    keep_freed_memory()
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
