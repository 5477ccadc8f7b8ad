"""Every margin loss in the training step: CPU speed against ArcFace, and low-precision stability.

    python benchmarks/bench_losses.py                      # both parts, defaults below
    python benchmarks/bench_losses.py --part speed --steps 5 --rounds 7 --classes 2000
    python benchmarks/bench_losses.py --part stability --stability-steps 300

speed: the whole CPU training step (uint8 batch -> r18 narrow backbone (synthetic-r18's: 32x32) ->
Partial FC with the loss -> backward -> SGD) with each ``build_margin`` loss, timed interleaved (round-robin, median per
step) so load from elsewhere hits every loss alike; prints ms/step and the ratio to ArcFace's.
The issue's target: every loss within 5% of ArcFace (ratio <= 1.05).

stability: 300 steps of each loss with the backbone under bf16 autocast (CPU, a tiny r18: 16x16
inputs, batch 16, 200 classes) and fp16 / bf16 (CUDA when present, the narrow r18; on the CPU the
fp16 case runs the loss itself on float16 cosines, with the edge values
+-1 in every batch), on random synthetic batches; counts non-finite losses and gradients (must be 0).
Timing depends on the machine's load: state it when quoting the numbers.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from common import interleaved_timing, print_table, set_threads

NET = {"units": [2, 2, 2, 2], "filter_list": [16, 16, 32, 64, 128], "input_size": [32, 32], "emb_size": 128}
TINY = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32}


def _step_for(name: str, classes: int, batch: int, amp: str, device: torch.device, seed: int = 0, net=NET):
    from fresnet.network import create_model
    from fresnet.train.losses import build_margin
    from fresnet.train.partial_fc import PartialFC
    from fresnet.train.step import StepSettings, TrainStep

    torch.manual_seed(seed)
    model = create_model("r18", **net, net_output="E").to(device).train()
    fc = PartialFC(net["emb_size"], classes, build_margin(name, num_classes=classes), rank=0, world_size=1).to(device)
    opt = torch.optim.SGD(list(model.parameters()) + list(fc.parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=True) if amp == "fp16" else None
    step = TrainStep(model, model, fc, opt, scaler, StepSettings(amp, False, None, 5.0 if amp != "none" else 0.0),
                     device)
    gen = torch.Generator().manual_seed(seed + 1)
    images = (torch.rand(batch, 3, *net["input_size"], generator=gen) * 255).to(torch.uint8)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return step, fc, images, labels


def speed(args) -> None:
    from fresnet.train.losses import MARGIN_LOSSES

    device = torch.device("cpu")
    steps = {}
    for name in MARGIN_LOSSES:
        step, _, images, labels = _step_for(name, args.classes, args.batch, "none", device)
        steps[name] = (lambda s=step, x=images, y=labels: [s(x, y, 0.05) for _ in range(args.steps)])
    timings = interleaved_timing(steps, rounds=args.rounds, warmup=1)
    base = timings["arcface"].median
    rows = [(name, f"{t.median / args.steps * 1e3:.1f}", f"{t.median / base:.3f}") for name, t in timings.items()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_table(f"CPU training step, r18 narrow {NET['input_size']} batch {args.batch}, {args.classes} classes, "
                f"{torch.get_num_threads()} threads, load average {load:.1f}",
                ["loss", "ms/step", "vs arcface"], rows)


def _module_low_precision(name: str, dtype: torch.dtype, steps: int) -> int:
    """Non-finite results of the loss module itself on ``dtype`` cosines (with exact +-1 entries)."""
    from fresnet.train.losses import build_margin

    module = build_margin(name, num_classes=64).train()
    bad = 0
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        columns = 64 * (3 if name == "subcenter_arcface" else 1)
        cos = (torch.rand(32, columns, generator=gen) * 2 - 1).to(dtype)
        labels = torch.randint(0, 64, (32,), generator=gen)
        cos[0, labels[0]], cos[1, labels[1]], cos[2, 5] = 1.0, -1.0, 1.0
        cos.requires_grad_()
        norms = (torch.rand(32, generator=gen) * 150 + 0.5).to(dtype)
        loss = module(cos, labels, norms)
        loss.float().backward()
        bad += int(not bool(torch.isfinite(loss.float())) or not bool(torch.isfinite(cos.grad.float()).all()))
    return bad


def stability(args) -> None:
    from fresnet.train.losses import MARGIN_LOSSES

    cuda = torch.cuda.is_available()
    rows = []
    for name in MARGIN_LOSSES:
        row = [name]
        cases = [("bf16", torch.device("cpu"))] + ([("fp16", torch.device("cuda")), ("bf16", torch.device("cuda"))]
                                                  if cuda else [])
        for amp, device in cases:
            step, fc, images, labels = _step_for(name, 200, 16, amp, device, net=TINY if device.type == "cpu" else NET)
            gen = torch.Generator().manual_seed(5)
            bad = 0
            for _ in range(args.stability_steps):
                images = (torch.rand(images.shape, generator=gen) * 255).to(torch.uint8)
                labels = torch.randint(0, 200, labels.shape, generator=gen)
                loss = step(images, labels, 0.05)
                bad += int(not math.isfinite(float(loss)))
            weights_ok = bool(torch.isfinite(fc.weight).all())
            row.append(f"{bad}" + ("" if weights_ok else " (weights non-finite)"))
        for dtype in (torch.float16, torch.bfloat16):
            row.append(str(_module_low_precision(name, dtype, args.stability_steps)))
        rows.append(row)
    columns = ["loss", "step bf16 cpu"] + (["step fp16 cuda", "step bf16 cuda"] if cuda else []) + \
        ["module fp16", "module bf16"]
    print_table(f"non-finite steps out of {args.stability_steps} (0 everywhere is the target)", columns, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("speed", "stability", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stability-steps", type=int, default=300)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.part in ("speed", "both"):
        speed(args)
    if args.part in ("stability", "both"):
        stability(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
