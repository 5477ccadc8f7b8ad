"""``fresnet`` command line: one sub-command per module in this package.

Each sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` (a callable taking the parsed args and returning an exit code). A command that sets
``intermixed_overrides=True`` also takes ``KEY=VALUE`` overrides after its options.

Errors end here: a :class:`FresnetError`, any ``OSError`` (named by its path: disk full, read-only
folder, file-size limit, ...) and running out of memory print one line ``fresnet CMD: error: ...``
and exit with code 2; no traceback.
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
    "drop-subcenters": "fresnet.cli.subcenters",
    "eval": "fresnet.cli.evaluate",
    "detect": "fresnet.cli.faces",
    "embed": "fresnet.cli.faces",
    "compare": "fresnet.cli.faces",
    "demo": "fresnet.cli.demo",
    "gallery": "fresnet.cli.gallery",
    "serve": "fresnet.cli.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fresnet",
        description="InsightFace fresnet backbones in PyTorch: build, inspect, convert, train, evaluate.",
    )
    from fresnet import __version__

    parser.add_argument("--version", action="version", version=f"fresnet {__version__}")
    parser.add_argument(
        "--limit", dest="limits", action="append", default=[], metavar="NAME=VALUE",
        help="raise a safety limit for trusted inputs, e.g. --limit max_parameters=2e9 (repeatable; "
        "see docs/security.md for the names)",
    )
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
    from fresnet.cli.process_settings import keep_freed_memory, wait_briefly_then_sleep

    wait_briefly_then_sleep()
    keep_freed_memory()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `train CONFIG a=1 --no-progress b=2`: argparse ends a positional list at the first option
        if getattr(args, "intermixed_overrides", False) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        elif getattr(args, "intermixed_inputs", None) and not any(e.startswith("-") for e in extra):
            # `embed MODEL --set k=v PHOTO`: the inputs after the options (the same argparse limit)
            setattr(args, args.intermixed_inputs, list(getattr(args, args.intermixed_inputs)) + extra)
        else:  # the sub-command's usage, not the top level's
            _subparser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from fresnet.cli.terminal import show_library_messages
    from fresnet.errors import FresnetError
    from fresnet.limits import override

    show_library_messages()

    def fail(message: str) -> int:
        print(f"fresnet {args.command}: error: {message}", file=sys.stderr)
        return 2

    try:
        caps = dict(_limit(item) for item in args.limits)
        with override(**caps):
            return int(args.func(args) or 0)
    except FresnetError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(describe_os_error(exc))
    except MemoryError as exc:
        return fail(_out_of_memory(exc))
    except RuntimeError as exc:
        if not _is_allocation_failure(exc):
            raise
        return fail(_out_of_memory(exc))
    except KeyboardInterrupt:
        print(f"fresnet {args.command}: interrupted", file=sys.stderr)
        return 130


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of ``command`` (the top-level one when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _limit(item: str) -> tuple[str, str]:
    from fresnet.errors import FresnetError

    name, sep, value = item.partition("=")
    if not sep:
        raise FresnetError(f"--limit expects NAME=VALUE, e.g. --limit max_parameters=2e9, got {item!r}")
    from fresnet.limits import parse_cap

    return name.strip(), parse_cap(name.strip(), value.strip(), "--limit")


def describe_os_error(exc: OSError) -> str:
    """``<path>: <cause>`` (both paths of a rename), or the message when no path is known."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {cause}"
    if exc.filename is not None:
        return f"{exc.filename}: {cause}"
    return str(exc) or cause


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory" in text or "DefaultCPUAllocator" in text


def _out_of_memory(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return (f"out of memory ({first}); the input or the options ask for more memory than this process may use. "
            "Use smaller inputs or batches, or check the input: a damaged file can declare huge sizes")
