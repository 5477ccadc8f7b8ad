#!/usr/bin/env python
"""One training step of a fresnet backbone + ArcFace FC: eager float32 vs the best configuration.

The step is: backbone forward (train mode), FC over ``--classes`` identities with the ArcFace margin
(cos logits, s=64, m=0.5, :mod:`fresnet.train.losses`), cross-entropy, backward, SGD (momentum 0.9,
weight decay 5e-4). The configurations:

* ``eager``: float32, NCHW, PyTorch's default SGD (for-each) -- the baseline;
* ``best``: channels_last, bf16 autocast for the backbone (the FC, margin and loss stay float32:
  the margin's arccos needs float32 cosines, and that part costs <0.1% of the step), and the fused
  SGD kernel where the device has one; ``--compile`` adds ``torch.compile`` of the backbone.

Both are timed interleaved (one step of each per round) from the same initial weights. Then a
short convergence comparison trains both from the same start on ``fresnet.data.SyntheticFaces``
with the same batches and prints the loss curves.

    python benchmarks/bench_train.py                                    # r50, batch 32, 10k classes
    python benchmarks/bench_train.py --steps 3 --convergence-steps 10   # quicker
    python benchmarks/bench_train.py --device cuda --json train.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common import face_images, interleaved_timing, machine_info, open_device, set_threads, write_json  # noqa: E402

SPEEDUP_TARGET = 1.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="r50", help="backbone preset for the timing (default: r50)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--classes", type=int, default=10_000, help="FC classes for the timing (default: 10000)")
    p.add_argument("--input-size", type=int, default=112, help="square input size (default: 112)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default: 5)")
    p.add_argument("--compile", action="store_true", help="also torch.compile the backbone in the best config")
    p.add_argument("--convergence-model", default="r18",
                   help="backbone for the convergence comparison (default: r18, so it runs in minutes on CPU)")
    p.add_argument("--convergence-steps", type=int, default=40, help="training steps per config (0 skips; default: 40)")
    p.add_argument("--convergence-size", type=int, default=0,
                   help="square input size for the convergence comparison (default: --input-size)")
    p.add_argument("--identities", type=int, default=16, help="SyntheticFaces identities for convergence (default: 16)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1, the original's)")
    p.add_argument("--json", type=Path, help="write the results to this JSON file")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# the loss


def arcface_head(emb_size: int, classes: int) -> nn.Module:
    """fresnet.train.losses' FC + ArcFace (s=64, m=0.5); a minimal local copy if that module is absent."""
    try:
        from fresnet.train.losses import FullFCLoss, margin_spec

        return FullFCLoss(emb_size, classes, margin_spec("arcface"))
    except ImportError:
        return _LocalArcFace(emb_size, classes)


class _LocalArcFace(nn.Module):
    def __init__(self, emb_size: int, classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, emb_size) * 0.01)
        self.s, self.m = s, m

    def forward(self, embeddings, labels):
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + self.m)
        logits = cos.scatter(1, labels[:, None], target) * self.s
        return F.cross_entropy(logits, labels)


# ---------------------------------------------------------------------------------------------------
# one configuration = model + head + optimiser + how a step runs


class Trainer:
    def __init__(self, backbone: nn.Module, head: nn.Module, device: torch.device, best: bool, lr: float,
                 compile_backbone: bool = False):
        self.device, self.best = device, best
        self.backbone = backbone.to(device).train()
        self.head = head.to(device).train()
        if best:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.fused = best and _fused_sgd_available(device)
        kwargs = dict(lr=lr, momentum=0.9, weight_decay=5e-4)
        self.optimizer = torch.optim.SGD(params, fused=True, **kwargs) if self.fused else torch.optim.SGD(params, **kwargs)
        self.forward = torch.compile(self.backbone) if compile_backbone else self.backbone
        self.autocast_dtype = torch.bfloat16 if best else None

    def describe(self) -> str:
        if not self.best:
            return "float32, NCHW, SGD (for-each)"
        return (f"bf16 autocast, channels_last, SGD ({'fused' if self.fused else 'for-each'})"
                + (", torch.compile" if self.forward is not self.backbone else ""))

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        if self.best:
            images = images.contiguous(memory_format=torch.channels_last)
        cast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                else contextlib.nullcontext())
        with cast:
            embeddings = self.forward(images)
        loss = self.head(embeddings.float(), labels)  # margin + loss in float32
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _fused_sgd_available(device: torch.device) -> bool:
    try:
        p = nn.Parameter(torch.zeros(2, device=device))
        p.grad = torch.zeros(2, device=device)
        torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def make_pair(model_name: str, classes: int, size: int, device: torch.device, lr: float, compile_best: bool):
    import fresnet

    torch.manual_seed(0)
    backbone = fresnet.create_model(model_name, input_size=(size, size))
    head = arcface_head(backbone.config.emb_size, classes)
    eager = Trainer(copy.deepcopy(backbone), copy.deepcopy(head), device, best=False, lr=lr)
    best = Trainer(backbone, head, device, best=True, lr=lr, compile_backbone=compile_best)
    return eager, best


# ---------------------------------------------------------------------------------------------------


def time_steps(args, device: torch.device, log) -> dict:
    eager, best = make_pair(args.model, args.classes, args.input_size, device, args.lr, args.compile)
    images = face_images(args.batch, (args.input_size, args.input_size), seed=3).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=torch.Generator().manual_seed(0)).to(device)
    log(f"timing {args.model}, batch {args.batch}, {args.classes} classes: eager = {eager.describe()}; "
        f"best = {best.describe()}")
    start = time.perf_counter()
    best.step(images, labels)  # compile / first-call costs outside the timing
    log(f"  best config first step {time.perf_counter() - start:.1f} s")
    timings = interleaved_timing({"eager": lambda: eager.step(images, labels), "best": lambda: best.step(images, labels)},
                                 rounds=args.steps, warmup=1, device=device)
    result = {name: dict(seconds_per_step=t.median, images_per_s=args.batch / t.median,
                         samples_s=[round(s, 4) for s in t.seconds]) for name, t in timings.items()}
    result["speedup"] = timings["eager"].median / timings["best"].median
    result["eager_config"], result["best_config"] = eager.describe(), best.describe()
    for name in ("eager", "best"):
        log(f"  {name}: {result[name]['seconds_per_step']:.3f} s/step = {result[name]['images_per_s']:.1f} img/s")
    log(f"  speed-up {result['speedup']:.2f}x (target {SPEEDUP_TARGET}x: "
        f"{'met' if result['speedup'] >= SPEEDUP_TARGET else 'NOT met'})")
    return result


def synthetic_batches(identities: int, batch: int, steps: int, size: int, seed: int = 0):
    """(images, labels) batches from SyntheticFaces, the same sequence for both configurations."""
    from fresnet.data import SyntheticFaces

    per_identity = max(2, math.ceil(batch * 4 / identities))
    data = SyntheticFaces(num_identities=identities, images_per_identity=per_identity, seed=seed, size=size)
    pixels = torch.from_numpy(data.render(list(range(len(data))))).permute(0, 3, 1, 2).float().contiguous()
    labels = torch.as_tensor(data.labels)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(data), generator=gen) for _ in range(steps * batch // len(data) + 1)])
    for step in range(steps):
        index = order[step * batch:(step + 1) * batch]
        yield pixels[index], labels[index]


def convergence(args, device: torch.device, log) -> Optional[dict]:
    if args.convergence_steps <= 0:
        return None
    try:
        size = args.convergence_size or args.input_size
        batches = list(synthetic_batches(args.identities, args.batch, args.convergence_steps, size))
    except ImportError:
        log("convergence: fresnet.data.SyntheticFaces is not available, skipped")
        return None
    eager, best = make_pair(args.convergence_model, args.identities, size, device, args.lr, False)
    log(f"convergence: {args.convergence_model} at {size}x{size}, {args.identities} SyntheticFaces identities, batch {args.batch}, "
        f"{args.convergence_steps} steps, lr {args.lr}")
    curves: dict[str, list[float]] = {"eager": [], "best": []}
    try:
        from rich.progress import Progress

        progress = Progress(transient=True)
    except ImportError:
        progress = None
    with progress or contextlib.nullcontext():
        task = progress.add_task("training both configs", total=len(batches)) if progress else None
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            curves["eager"].append(float(eager.step(images, labels)))
            curves["best"].append(float(best.step(images, labels)))
            if progress:
                progress.advance(task)
    window = max(1, len(batches) // 5)
    summary = {name: dict(first=curve[0], last_mean=sum(curve[-window:]) / window, curve=[round(v, 4) for v in curve])
               for name, curve in curves.items()}
    for step in range(0, len(batches), max(1, len(batches) // 8)):
        log(f"  step {step + 1:4d}: eager {curves['eager'][step]:.3f}   best {curves['best'][step]:.3f}")
    log(f"  mean loss over the last {window} steps: eager {summary['eager']['last_mean']:.3f}, "
        f"best {summary['best']['last_mean']:.3f} (from {summary['eager']['first']:.3f})")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    device = open_device(args.device)
    if device is None:
        return 2
    threads = set_threads(args.threads)
    meta = machine_info(device)

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"fresnet training benchmark: {meta.get('gpu') or meta['cpu']}, {threads} threads, torch {torch.__version__}")
    result = dict(meta=meta, args={k: str(v) for k, v in vars(args).items()})
    result["timing"] = time_steps(args, device, log)
    result["convergence"] = convergence(args, device, log)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
