"""``fresnet train CONFIG [key=value ...]``: train a fresnet (also as one rank under torchrun)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train with a margin-softmax loss (arcface, cosface, ...), Partial FC, torchrun/DDP",
        description=(
            "Train a fresnet. CONFIG is a YAML file or a built-in name (e.g. synthetic-r18); key=value pairs "
            "override its keys (max_steps=200 batch_size=64 loss=cosface network=r50 dataset=PATH). "
            "Multi-process: torchrun --nproc_per_node N -m fresnet train CONFIG ..."
        ),
    )
    p.add_argument("config", metavar="CONFIG", nargs="?", help="YAML path or built-in config name (see --list)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. output=runs/a max_steps=100"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in OUTPUT from its checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUTPUT holds a checkpoint")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress display (neither the bar nor the periodic progress lines); messages, "
                        "verification results and the closing summary still print")
    p.add_argument("--list", action="store_true", help="list the built-in configs and exit")
    p.add_argument("--list-losses", action="store_true",
                   help="list the losses (loss=NAME), their options with defaults (loss_options) and references")
    p.set_defaults(func=run_train, intermixed_overrides=True)  # key=value pairs may follow the flags


def _rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    value = os.environ.get("RANK", "0").strip()
    return int(value) if value.isdigit() else 0


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run from its checkpoint."""
    kept = [o for o in args.overrides if o.split("=", 1)[0].strip() not in ("resume", "overwrite")]
    words = ["fresnet", "train", args.config, *kept]
    if args.no_progress:
        words.append("--no-progress")
    return shlex.join(words + ["--resume"])


def losses_table() -> str:
    """One block per loss: its name, its options with their defaults, the reference it follows."""
    from fresnet.train.losses import describe_margins

    lines = ["loss=NAME and loss_options={key: value, ...} (the defaults below are the authors'):", ""]
    for name, options, reference in describe_margins():
        lines += [f"{name}", f"    options: {options}", f"    follows: {reference}"]
    lines += ["softmax", "    the original's plain FC with bias (no normalisation, no margin)",
              "nsoftmax", "    combined with no margin (m1=1, m2=0, m3=0): s * cos"]
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from fresnet.train.config import builtin_names, load_config
    from fresnet.train.loop import TrainingInterrupted, train

    if args.list:
        print("\n".join(builtin_names()))
        return 0
    if args.list_losses:
        print(losses_table())
        return 0
    if args.config is None:
        from fresnet.errors import FresnetError

        raise FresnetError(f"give a config: a YAML path or one of {', '.join(builtin_names())}")
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_config(args.config, overrides)
    try:
        result = train(cfg)
    except TrainingInterrupted as stop:
        if _rank() == 0:
            print(f"fresnet train: {stop}", file=sys.stderr)
            if stop.checkpoint_step is not None:
                print(f"continue with: {resume_command(args)}", file=sys.stderr)
        return 130
    if _rank() == 0:  # the process group is gone by now: ask torchrun's environment
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}" + (f", {metrics}" if metrics else ""))
        print(f"throughput: {result.samples_per_s:.1f} samples/s after warm-up ({result.settings})")
        print(f"model: {result.model_path}\ncheckpoint: {result.checkpoint_path}\nlog: {result.log_path}")
    return 0
