#!/usr/bin/env python
"""Activation memory of fresnet training steps, without and with a checkpointing plan, in ONE run.

For each model (default r50, r100, r200 at batch 32, 112x112) it measures the bytes one training
step saves for backward (``fresnet.memory.feature_map_cost``) with no plan, with the ``budget`` plan
aimed at ``--ratio`` (the least recomputation that divides the saved bytes by that much) and with the
``sqrt`` plan (every unit, ~sqrt(n) segments), then times training steps without a plan and with the
budget plan, interleaved, and reports the step-time ratio, wall clock and process CPU time. (On a
shared machine the CPU-time ratio is the steadier one: other jobs stretch wall time unevenly.)

Target (issue #5): r100's saved bytes cut >= 4x at <= 1.35x the step time; the original memonger
managed 2.6x on r100 (7121 -> 2756 MB at batch 64). The sqrt plan's cost should grow sublinearly
with depth.

    python benchmarks/bench_memory.py                      # r50 r100 r200, batch 32: ~10+ minutes on 2 cores
    python benchmarks/bench_memory.py --models r18 --batch 8 --steps 1     # quick look
    python benchmarks/bench_memory.py --time-sqrt --json memory.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from common import machine_info, print_table, set_threads, write_json
from fresnet.memory import MB, best_step_time, feature_map_cost, plan, profile_units, time_step
from fresnet.network.model import create_model


def measure(name: str, args, say) -> dict:
    torch.manual_seed(0)
    model = create_model(name)
    say(f"{name}: profiling units")
    profile = profile_units(model)
    plans = {
        "budget": plan(model, ratio=args.ratio, batch=args.batch, profile=profile),
        "sqrt": plan(model, batch=args.batch, profile=profile),
    }
    settings = {"none": False, **plans}
    costs = {}
    for key, setting in settings.items():
        say(f"{name}: measuring saved tensors, plan {key}")
        model.set_grad_checkpointing(setting)
        costs[key] = feature_map_cost(model, args.batch)
    timed = ["none", "budget"] + (["sqrt"] if args.time_sqrt else [])
    times = {key: [] for key in timed}
    for step in range(args.steps):
        order = timed[step % len(timed):] + timed[: step % len(timed)]
        for key in order:
            say(f"{name}: timing step {step + 1}/{args.steps}, plan {key}")
            model.set_grad_checkpointing(settings[key])
            times[key].append(time_step(model, args.batch, seed=step))
    best = {key: best_step_time(values) for key, values in times.items()}
    result = {
        "model": name,
        "units": len(profile.units),
        "batch": args.batch,
        "saved_mb": {key: cost.saved_bytes / MB for key, cost in costs.items()},
        "peak_mb": {key: cost.peak_mb for key, cost in costs.items()},
        "param_mb_saved": costs["none"].param_bytes / MB,
        "ratio": {key: costs["none"].saved_bytes / costs[key].saved_bytes for key in plans},
        "recompute_fraction": {key: p.recompute_fraction for key, p in plans.items()},
        "segments": {key: len(p.segments) for key, p in plans.items()},
        "estimated_mb": {key: p.estimated_bytes / MB for key, p in plans.items()},
        "step_seconds": {key: t.wall for key, t in best.items()},
        "step_cpu_seconds": {key: t.cpu for key, t in best.items()},
        "time_ratio": {key: best[key].wall / best["none"].wall for key in timed if key != "none"},
        "cpu_time_ratio": {key: best[key].cpu / best["none"].cpu for key in timed if key != "none"},
    }
    say(f"{name}: done")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["r50", "r100", "r200"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=4.3,
                        help="what the budget plan aims at (a little above 4: the estimate is within ~3%%)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant (the measuring steps warm up)")
    parser.add_argument("--time-sqrt", action="store_true", help="time the sqrt plan too")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    set_threads(args.threads)
    info = machine_info()
    started = time.time()

    from rich.console import Console

    console = Console(stderr=True)
    results = []
    with console.status("starting") as status:
        def say(message: str) -> None:
            status.update(f"[{time.time() - started:5.0f} s] {message}")

        for name in args.models:
            results.append(measure(name, args, say))
            r = results[-1]
            console.log(f"{name}: saved {r['saved_mb']['none']:.0f} MB -> budget plan {r['saved_mb']['budget']:.0f} MB "
                        f"({r['ratio']['budget']:.2f}x, step {r['time_ratio']['budget']:.2f}x wall, "
                        f"{r['cpu_time_ratio']['budget']:.2f}x CPU); sqrt plan {r['saved_mb']['sqrt']:.0f} MB "
                        f"({r['ratio']['sqrt']:.2f}x)")

    rows = []
    for r in results:
        rows.append([
            r["model"], r["units"], round(r["saved_mb"]["none"]), round(r["saved_mb"]["budget"]),
            f"{r['ratio']['budget']:.2f}x", f"{r['recompute_fraction']['budget']:.0%}",
            f"{r['time_ratio']['budget']:.2f}x", f"{r['cpu_time_ratio']['budget']:.2f}x",
            round(r["saved_mb"]["sqrt"]), f"{r['ratio']['sqrt']:.2f}x"
            + (f" / {r['cpu_time_ratio']['sqrt']:.2f}x CPU" if "sqrt" in r["cpu_time_ratio"] else ""),
            f"{r['peak_mb']['none']:.0f} / {r['peak_mb']['budget']:.0f} / {r['peak_mb']['sqrt']:.0f}"
            if r["peak_mb"]["none"] is not None else "n/a",
            f"{r['step_seconds']['none']:.1f} / {r['step_seconds']['budget']:.1f}",
        ])
    print_table(
        f"Saved-for-backward memory, batch {args.batch}, 112x112 (MB = 2**20 bytes); budget plan aims at {args.ratio}x",
        ["model", "units", "no plan MB", "budget MB", "cut", "recomputed", "step wall", "step CPU",
         "sqrt MB", "sqrt cut", "peak MB none/budget/sqrt", "step s none/budget"],
        rows,
    )
    if len(results) > 1:
        first, last = results[0], results[-1]
        depth = last["units"] / first["units"]
        print(f"{first['model']} -> {last['model']}: units x{depth:.2f}; saved bytes without a plan "
              f"x{last['saved_mb']['none'] / first['saved_mb']['none']:.2f}, with the sqrt plan "
              f"x{last['saved_mb']['sqrt'] / first['saved_mb']['sqrt']:.2f}")
    print("original memonger (MXNet, batch 64): r50 4621 -> 2340 MB (1.97x), r100 7121 -> 2756 MB (2.58x)")
    print(f"total {time.time() - started:.0f} s; load average at start {info.get('load_average_start')}")
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
