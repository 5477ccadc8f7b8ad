"""``fresnet memory NAME --batch 64 [--budget MB]``: the original memonger's report, measured."""
from __future__ import annotations

import argparse
import json

from fresnet.cli import args as A
from fresnet.cli.common import add_model_args, model_from_args, model_label
from fresnet.errors import FresnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "memory",
        help="plan activation recomputation; print the old and new feature-map cost and the step-time overhead",
        description="Measure the bytes one training step saves for backward, choose units to recompute "
        "(torch.utils.checkpoint), and measure again with the plan, like the original memonger's "
        "'Old feature map cost=... MB / New feature map cost=... MB'. Runs real training steps on the CPU: "
        "deep networks at large batches take minutes.",
    )
    add_model_args(p)
    p.add_argument(
        "--batch", type=A.positive_int, default=64, help="batch size (default 64, as in the original's figures)"
    )
    p.add_argument("--budget", type=A.positive_float, default=None, metavar="MB",
                   help="MB of saved tensors allowed: recompute as little as fits (default: the sqrt(n) plan)")
    p.add_argument("--ratio", type=A.positive_float, default=None,
                   help="instead of --budget: the cheapest plan that divides the saved bytes by this much (e.g. 4)")
    p.add_argument("--strategy", choices=("sqrt", "budget"), default=None,
                   help="sqrt: every unit, in about sqrt(n) segments; budget: the cheapest plan within --budget")
    p.add_argument("--steps", type=A.nonnegative_int, default=2,
                   help="timed training steps with and without the plan, best one kept (default 2; 0 skips timing)")
    p.add_argument("--show-plan", action="store_true", help="list the checkpointed segments")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_memory)


def run_memory(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fresnet.memory.comparison import compare
    from fresnet.memory.measure import MB
    from fresnet.memory.planning import plan

    _check_strategy(args)
    model = model_from_args(args)
    label = model_label(args)
    console = Console(stderr=True)
    with console.status("profiling the units") as status:
        memory_plan = plan(model, args.budget, strategy=args.strategy, ratio=args.ratio, batch=args.batch)
        result = compare(model, memory_plan, batch=args.batch, steps=args.steps, on_progress=status.update)

    if args.json:
        print(json.dumps({
            "model": label, "batch": args.batch, "input_size": list(result.old.input_size),
            "strategy": memory_plan.strategy, "segments": [list(s) for s in memory_plan.segments],
            "old_saved_bytes": result.old.saved_bytes, "new_saved_bytes": result.new.saved_bytes,
            "ratio": result.ratio, "old_peak_bytes": result.old.peak_bytes, "new_peak_bytes": result.new.peak_bytes,
            "param_bytes_saved": result.old.param_bytes,
            "old_step_seconds": result.old_time and result.old_time.wall,
            "new_step_seconds": result.new_time and result.new_time.wall,
            "step_time_ratio": result.time_ratio, "cpu_time_ratio": result.cpu_time_ratio,
            "budget_bytes": memory_plan.budget_bytes,
            "meets_budget": result.new.saved_bytes <= memory_plan.budget_bytes if memory_plan.budget_bytes else None,
        }, indent=1))
        return 0
    h, w = result.old.input_size
    print(f"{label}, batch {args.batch}, {h}x{w}: {memory_plan.describe()}")
    if args.show_plan:
        for segment in memory_plan.segments:
            span = segment[0] if len(segment) == 1 else f"{segment[0]} .. {segment[-1]} ({len(segment)} units)"
            print(f"  segment: {span}")
    print(f"Old feature map cost={result.old.saved_bytes / MB:.0f} MB")
    print(f"New feature map cost={result.new.saved_bytes / MB:.0f} MB")
    line = f"Reduction: {result.ratio:.2f}x fewer bytes saved for backward"
    if result.old.peak_bytes is not None and result.new.peak_bytes is not None:
        line += f"; step peak {result.old.peak_bytes / MB:.0f} MB -> {result.new.peak_bytes / MB:.0f} MB"
    print(line)
    if result.time_ratio is not None:
        old, new = result.old_time, result.new_time
        print(f"Step time: {old.wall:.2f} s -> {new.wall:.2f} s ({result.time_ratio:.2f}x); "
              f"CPU time {old.cpu:.2f} s -> {new.cpu:.2f} s ({result.cpu_time_ratio:.2f}x)")
    if memory_plan.budget_bytes is not None and result.new.saved_bytes > memory_plan.budget_bytes:
        print(f"warning: the budget of {memory_plan.budget_bytes / MB:.0f} MB is not met even recomputing "
              f"every unit; the stem, head and segment inputs need {result.new.saved_bytes / MB:.0f} MB")
    return 0


def _check_strategy(args: argparse.Namespace) -> None:
    """The flags that go together, said with the flags (the library's messages name its keywords)."""
    limit = "--budget" if args.budget is not None else "--ratio" if args.ratio is not None else None
    if args.budget is not None and args.ratio is not None:
        raise FresnetError("give --budget MB or --ratio R, not both")
    if args.strategy == "sqrt" and limit:
        raise FresnetError(f"--strategy sqrt recomputes every unit whatever the budget, so {limit} would be ignored; "
                           f"drop {limit}, or drop --strategy sqrt to recompute as little as fits")
    if args.strategy == "budget" and not limit:
        raise FresnetError("--strategy budget needs a limit: --budget MB (e.g. --budget 2000) or --ratio R "
                           "(e.g. --ratio 4)")
