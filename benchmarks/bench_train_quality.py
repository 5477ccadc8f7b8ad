"""Quality bar of the built-in ``synthetic-r18`` config: train it on 2 CPU threads, time it, and
report verification accuracy on held-out synthetic identities before and after training.

    python benchmarks/bench_train_quality.py [--out runs/bench-synthetic-r18] [--threads 2] [key=value ...]

Targets (docs/training.md): >= 95% accuracy within 5 minutes of training on 2 cores; an untrained
network sits near 50%. Prints one line per verification and a summary; writes the run's log.csv
(the curve) under --out and copies it to --csv when given. Timing depends on the machine's load:
state it when you quote the numbers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-synthetic-r18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="synthetic-r18")
    parser.add_argument("--csv", default=None, help="also copy the curve (log.csv) here")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from fresnet.train.config import load_config
    from fresnet.timing import timed
    from fresnet.train.loop import Trainer

    cfg = load_config(args.config, [f"output={args.out}", "overwrite=true", *args.overrides])
    if not cfg.val_targets:
        cfg.val_targets = ["synthetic"]
    with timed() as setup:
        trainer = Trainer(cfg)
    setup_s = setup.wall
    untrained = trainer.verify()
    trainer.metrics.clear()
    with timed() as training:
        result = trainer.fit()
    train_s = training.wall
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"config {args.config}: {cfg.max_steps} steps x batch {cfg.batch_size}, {args.threads} threads, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"setup (data rendering, model) {setup_s:.1f} s; training incl. verification {train_s:.1f} s "
          f"({result.elapsed_s:.1f} s in optimiser steps)")
    for name, acc in untrained.items():
        print(f"{name}: untrained {acc:.4f} -> trained {result.metrics.get(name, float('nan')):.4f}")
    for row in result.history:
        vals = {k: v for k, v in row.items() if k.startswith("val_") and v not in ("", None)}
        if vals:
            print(f"  step {row['step']:>5}  loss {float(row['loss']):.3f}  " + "  ".join(f"{k} {float(v):.4f}" for k, v in vals.items()))
    if args.csv:
        shutil.copyfile(result.log_path, args.csv)
    ok = all(v >= 0.95 for v in result.metrics.values()) and train_s <= 300
    print(f"quality bar (>= 0.95 within 300 s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
