#!/usr/bin/env python
"""Where low precision loses accuracy: worst-case cosine of each fast path over several batches,
and (with --sensitivity) which layers' bf16 rounding costs the most.

The accuracy bound of the fast paths (every embedding at cosine >= 0.9995 to eager float32) is
about the *worst* image, and the worst image differs from batch to batch, so this script looks at
several batches. The networks are random with settled BatchNorm statistics
(``common.realistic_model``), the same as the speed benchmark.

    python benchmarks/bench_precision.py                          # r18 r50 r100, 5 batches of 32
    python benchmarks/bench_precision.py --models r50 --sensitivity --batches 1
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from common import face_images, realistic_model, set_threads, write_json

PATHS = {  # name -> optimize_for_inference options
    "bf16 (float32 stream)": dict(dtype="bfloat16", residual_dtype="float32"),
    "bf16-all (bf16 stream)": dict(dtype="bfloat16", residual_dtype="bfloat16"),
    "bf16+1 (+ first unit fp32)": dict(dtype="bfloat16", residual_dtype="float32", float32_units=1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="r18,r50,r100")
    p.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--batches", type=int, default=5, help="batches, each from its own seed (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sensitivity", action="store_true",
                   help="also round one piece (stem or unit) at a time to bf16 and report its cost")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def cosines(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(out.float().flatten(1), ref.float().flatten(1), dim=1)


@torch.no_grad()
def worst_cosines(model, batches: list[torch.Tensor]) -> dict[str, dict]:
    from fresnet.inference.fast import optimize_for_inference

    results = {}
    references = [model(x) for x in batches]
    for name, options in PATHS.items():
        fast = optimize_for_inference(model, compile=False, **options)
        per_batch = [cosines(fast(x), ref) for x, ref in zip(batches, references)]
        results[name] = dict(worst=min(c.min().item() for c in per_batch),
                             per_batch_min=[round(c.min().item(), 6) for c in per_batch],
                             mean=torch.cat(per_batch).mean().item())
    return results


@torch.no_grad()
def sensitivity(model, x: torch.Tensor) -> list[tuple[str, float, float]]:
    """(piece, 1 - min cosine, 1 - mean cosine) when only that piece's conv weights and conv inputs
    are rounded to bf16 (computed in float32 otherwise): how much each place contributes."""
    from fresnet.inference.fuse import fold_batchnorm

    folded = fold_batchnorm(model)
    reference = model(x)
    pieces: dict[str, list[str]] = {}
    for name, module in folded.named_modules():
        if isinstance(module, torch.nn.Conv2d) and not name.startswith("head"):
            pieces.setdefault(name.rsplit(".", 1)[0], []).append(name)

    def round_input(module, args):
        return (args[0].to(torch.bfloat16).float(),)

    rows = []
    for piece, names in pieces.items():
        trial = copy.deepcopy(folded)
        modules = dict(trial.named_modules())
        for name in names:
            conv = modules[name]
            conv.weight.copy_(conv.weight.to(torch.bfloat16).float())
            conv.register_forward_pre_hook(round_input)
        c = cosines(trial(x), reference)
        rows.append((piece, 1 - c.min().item(), 1 - c.mean().item()))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    report: dict = {}
    for name in [m for m in args.models.split(",") if m]:
        model = realistic_model(name)
        size = model.config.input_size
        batches = [face_images(args.batch, size, seed=1000 + i) for i in range(args.batches)]
        result = worst_cosines(model, batches)
        report[name] = result
        print(f"{name}: worst cosine to eager float32 over {args.batches} batches of {args.batch}", flush=True)
        for path, r in result.items():
            verdict = "meets" if r["worst"] >= 0.9995 else "MISSES"
            print(f"  {path:26s} worst {r['worst']:.6f} ({verdict} 0.9995)  mean {r['mean']:.6f}  "
                  f"per batch {r['per_batch_min']}", flush=True)
        if args.sensitivity:
            rows = sensitivity(model, batches[0])
            report[name + "_sensitivity"] = rows
            total = sum(r[2] for r in rows)
            print(f"  bf16 rounding of one piece at a time (1 - cosine; sum of means {total:.2e}):")
            for piece, worst, mean in rows:
                print(f"    {piece:16s} 1-min {worst:.2e}  1-mean {mean:.2e}  ({mean / total:.0%} of the sum)")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
