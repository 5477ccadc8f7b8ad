#!/usr/bin/env python
"""Training speed: fresnet's step against arcface_torch's own recipe, on the same device, in one run.

Variants (each one optimisation step: backbone forward in train mode, Partial FC + ArcFace margin
(s=64, m=0.5), cross-entropy, backward, SGD momentum 0.9, wd 5e-4):

* ``arcface_torch`` -- the baseline: ``train_v2.py``'s recipe (``arcface_recipe.py``): IResNet with
  fp16 autocast inside its forward (CUDA), NCHW, PartialFC_V2, GradScaler, ``clip_grad_norm_(5)``,
  for-each SGD, DDP over one process, and ``loss.item()`` every step;
* ``fresnet-eager`` -- fresnet's :class:`~fresnet.train.step.TrainStep` in float32, NCHW, for-each SGD;
* ``fresnet-amp`` -- bf16 autocast, channels_last, fused SGD on CUDA, no host syncs;
* ``fresnet-compiled`` -- the same under ``torch.compile`` (forward + loss in one graph);
* ``fresnet-cudagraphs`` -- ``compile=reduce-overhead``: the compiled step replayed as CUDA graphs;
* ``fresnet-fp16`` -- fp16 autocast + GradScaler, channels_last, compiled.

Every variant trains the same network (fresnet's r50 is arcface_torch's iresnet50: same units,
same FLOPs) on the same batch, timed interleaved (one step of each per round), from copies of
the same weights. Reported: samples/s, the ratio to ``arcface_torch``, peak GPU memory.

``--convergence-steps N`` then trains ``arcface_torch`` and ``--convergence-variant`` for N steps from
the *same* initial weights (the iresnet's, imported into fresnet) on the same synthetic batches and
compares the per-step losses (a PNG with both curves: ``--plot``). ``--max-batch MODEL`` searches the
largest batch that fits (CUDA).

    python benchmarks/bench_train.py --device cuda --json train.json --plot curves.png
    python benchmarks/bench_train.py --device cuda --model r100 --max-batch r100
    python benchmarks/bench_train.py --model r18 --batch 8 --input-size 32 --steps 2      # CPU smoke
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from torch import nn

from arcface_recipe import ArcfaceTorchRecipe
from common import face_images, interleaved_timing, machine_info, open_device, set_threads, write_json

TARGET_RATIO = 2.5  # fresnet's best variant against the arcface_torch recipe, on a GPU
VARIANTS = ("arcface_torch", "fresnet-eager", "fresnet-amp", "fresnet-compiled", "fresnet-cudagraphs", "fresnet-fp16")
DEFAULT_VARIANTS = {"cuda": VARIANTS, "cpu": ("arcface_torch", "fresnet-eager", "fresnet-amp")}
DEPTHS = {"r18": 18, "r34": 34, "r50": 50, "r100": 100, "r200": 200}
TINY = {"units": [1, 1, 1, 1], "filter_list": [16, 16, 32, 32, 64]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="r50", choices=sorted(DEPTHS), help="network (default: r50)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default: 128, arcface_torch's)")
    p.add_argument("--classes", type=int, default=2000, help="classes of the Partial FC (default: 2000)")
    p.add_argument("--input-size", type=int, default=112, help="square input size (default: 112)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all on CUDA, the first three on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant after the first (default: 3)")
    p.add_argument("--convergence-steps", type=int, default=0, help="steps of the loss-curve comparison (0 skips)")
    p.add_argument("--convergence-variant", default=None, help="fresnet variant compared with arcface_torch "
                   "(default: the fastest timed one)")
    p.add_argument(
        "--identities", type=int, default=200, help="synthetic identities for the convergence run (default: 200)"
    )
    p.add_argument(
        "--max-batch", default=None, choices=sorted(DEPTHS), help="also find the largest batch that fits (CUDA)"
    )
    p.add_argument("--tiny", action="store_true", help="one unit per stage, narrow widths (dry runs and smoke tests)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1)")
    p.add_argument("--plot", type=Path, help="write the loss curves to this PNG")
    p.add_argument("--json", type=Path, help="write the results to this JSON file")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# the variants


class FresnetVariant:
    """fresnet's own training step (the code ``fresnet train`` runs) with one set of switches."""

    def __init__(self, name: str, model_name: str, classes: int, size: int, device: torch.device, lr: float,
                 backbone: Optional[nn.Module] = None, init_centres: Optional[torch.Tensor] = None, tiny: bool = False):
        import fresnet
        from fresnet.train.losses import margin_spec
        from fresnet.train.partial_fc import PartialFC
        from fresnet.train.step import StepSettings, TrainStep

        cuda = device.type == "cuda"
        # every variant clips at 5, as the recipe does: the same work per step
        settings = {
            "fresnet-eager": StepSettings("none", False, None, 5.0),
            "fresnet-amp": StepSettings("bf16", True, None, 5.0),
            "fresnet-compiled": StepSettings("bf16", True, "default", 5.0),
            "fresnet-cudagraphs": StepSettings("bf16", True, "reduce-overhead", 5.0),
            "fresnet-fp16": StepSettings("fp16", True, "default", 5.0),
        }[name]
        self.name, self.settings, self.device = name, settings, device
        if backbone is None:
            torch.manual_seed(0)
            backbone = fresnet.create_model(model_name, input_size=(size, size), **(TINY if tiny else {}))
        self.model = backbone.to(device).train()
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.fc = PartialFC(self.model.config.emb_size, classes, margin_spec("arcface"), 1.0, rank=0, world_size=1,
                            init_weight=init_centres).to(device)
        fused = cuda and name != "fresnet-eager"
        params = [{"params": self.model.parameters()}, {"params": self.fc.parameters()}]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, fused=fused or None)
        scaler = torch.amp.GradScaler("cuda", enabled=settings.amp == "fp16") if cuda else None
        self.step_fn = TrainStep(self.model, self.model, self.fc, self.optimizer, scaler, settings, device)
        self.lr = lr

    def describe(self) -> str:
        fused = "fused" if self.optimizer.defaults.get("fused") else "for-each"
        return f"fresnet TrainStep: {self.settings.describe()}, SGD {fused}"

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.step_fn(images, labels, self.lr)


def make_variant(name: str, args, device: torch.device, lr: Optional[float] = None, same_start=None):
    lr = args.lr if lr is None else lr
    if name == "arcface_torch":
        torch.manual_seed(0)
        tiny = dict(layers=TINY["units"], widths=TINY["filter_list"]) if args.tiny else {}
        return ArcfaceTorchRecipe(DEPTHS[args.model], args.classes, device, lr=lr,
                                  input_size=(args.input_size, args.input_size), **tiny)
    backbone, centres = same_start if same_start is not None else (None, None)
    return FresnetVariant(name, args.model, args.classes, args.input_size, device, lr, backbone, centres, args.tiny)


def supported(name: str, device: torch.device) -> Optional[str]:
    """Why ``name`` cannot run here, or None."""
    if device.type != "cuda" and name in ("fresnet-cudagraphs", "fresnet-fp16"):
        return "CUDA only"
    if "compiled" in name or "cudagraphs" in name or name == "fresnet-fp16":
        if device.type == "cuda":
            try:
                from torch.utils._triton import has_triton

                if not has_triton():
                    return "no Triton"
            except ImportError:
                return "no Triton"
    return None


# ---------------------------------------------------------------------------------------------------
# timing


def time_variants(args, device: torch.device, names: list[str], log) -> dict:
    batch = face_images(args.batch, (args.input_size, args.input_size), seed=3).round().to(torch.uint8)
    labels = torch.randint(0, args.classes, (args.batch,), generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        batch, labels = batch.pin_memory(), labels.pin_memory()  # the H2D copy is part of every step
    variants, result = {}, {}
    for name in names:
        reason = supported(name, device)
        if reason:
            log(f"  {name}: skipped ({reason})")
            continue
        resident = 0
        if device.type == "cuda":  # the variants stay resident together, so count only this one's memory
            torch.cuda.synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        variant = make_variant(name, args, device)
        start = time.perf_counter()
        float(variant.step(batch, labels))  # compile / autotune / first-call costs, outside the timing
        first = time.perf_counter() - start
        for _ in range(args.warmup):
            variant.step(batch, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        memory = (torch.cuda.max_memory_allocated(device) - resident) / 2**30 if device.type == "cuda" else None
        variants[name] = variant
        result[name] = {"config": variant.describe(), "first_step_s": round(first, 2),
                        "peak_gpu_memory_gib": None if memory is None else round(memory, 2)}
        log(f"  {name}: {variant.describe()}; first step {first:.1f} s"
            + (f", peak GPU memory {memory:.2f} GiB" if memory is not None else ""))
    timings = interleaved_timing({n: (lambda v=v: v.step(batch, labels)) for n, v in variants.items()},
                                 rounds=args.steps, warmup=1, device=device)
    base = timings["arcface_torch"].median if "arcface_torch" in timings else None
    for name, timing in timings.items():
        rate = args.batch / timing.median
        result[name].update(seconds_per_step=round(timing.median, 5), samples_per_s=round(rate, 1),
                            ratio_to_arcface_torch=None if base is None else round(base / timing.median, 3))
    best = max((n for n in timings if n != "arcface_torch"), key=lambda n: result[n]["samples_per_s"], default=None)
    result["best"] = best
    log("")
    log(f"{'variant':20s} {'samples/s':>10s} {'ms/step':>9s} {'vs arcface_torch':>17s} {'GPU GiB':>8s}")
    for name in timings:
        r = result[name]
        ratio = "" if r["ratio_to_arcface_torch"] is None else f"{r['ratio_to_arcface_torch']:.2f}x"
        mem = "" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f}"
        log(f"{name:20s} {r['samples_per_s']:10.1f} {1000 * r['seconds_per_step']:9.2f} {ratio:>17s} {mem:>8s}")
    if best and base is not None and device.type == "cuda":
        ratio = result[best]["ratio_to_arcface_torch"]
        log(
            f"best: {best} at {ratio:.2f}x arcface_torch "
            f"(target {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        )
    return result


# ---------------------------------------------------------------------------------------------------
# the loss curves


def synthetic_batches(identities: int, batch: int, steps: int, size: int, seed: int = 0):
    """(uint8 images, labels) from SyntheticFaces, the same sequence for every variant."""
    from fresnet.data import SyntheticFaces

    per_identity = max(2, math.ceil(batch * 8 / identities))
    data = SyntheticFaces(num_identities=identities, images_per_identity=per_identity, seed=seed, size=size)
    pixels = torch.from_numpy(data.render(list(range(len(data))))).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(data.labels)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(data), generator=gen) for _ in range(steps * batch // len(data) + 1)])
    for step in range(steps):
        index = order[step * batch:(step + 1) * batch]
        yield pixels[index], labels[index]


def convergence(args, device: torch.device, variant_name: str, log) -> dict:
    from fresnet.interop.arcface_torch import load_arcface_torch

    cargs = argparse.Namespace(**{**vars(args), "classes": args.identities})
    baseline = make_variant("arcface_torch", cargs, device)
    # the same start: the iresnet's weights imported into fresnet (net_output FC: no dropout, like
    # arcface_torch's dropout=0), the same class centres
    state = {k: v.detach().cpu() for k, v in baseline.backbone.state_dict().items()}
    backbone = load_arcface_torch(state, None if args.tiny else DEPTHS[args.model],
                                  input_size=(args.input_size, args.input_size), net_output="FC")
    ours = make_variant(variant_name, cargs, device, same_start=(backbone, baseline.fc.weight.detach().cpu().clone()))
    log(f"convergence: {args.model}, {args.identities} synthetic identities, batch {args.batch}, "
        f"{args.convergence_steps} steps, lr {args.lr}: arcface_torch vs {variant_name}, same initial weights")
    curves: dict[str, list[float]] = {"arcface_torch": [], variant_name: []}
    pending = []
    for images, labels in synthetic_batches(args.identities, args.batch, args.convergence_steps, args.input_size):
        curves["arcface_torch"].append(float(baseline.step(images, labels)))
        pending.append(ours.step(images, labels))
    curves[variant_name] = [float(v) for v in torch.stack(pending).tolist()]
    n = len(curves["arcface_torch"])
    window = max(1, n // 10)
    summary = {}
    for name, curve in curves.items():
        summary[name] = dict(
            first=curve[0], last_mean=sum(curve[-window:]) / window, curve=[round(v, 4) for v in curve]
        )
    a, b = curves["arcface_torch"], curves[variant_name]
    diffs = [abs(x - y) for x, y in zip(a, b)]
    noise = _step_noise(a)
    summary["mean_abs_difference"] = sum(diffs) / n
    summary["step_to_step_noise"] = noise
    for step in range(0, n, max(1, n // 10)):
        log(f"  step {step + 1:4d}: arcface_torch {a[step]:.3f}   {variant_name} {b[step]:.3f}")
    log(
        f"  mean over the last {window} steps: arcface_torch {summary['arcface_torch']['last_mean']:.3f}, "
        f"{variant_name} {summary[variant_name]['last_mean']:.3f}; "
        f"mean |difference| {summary['mean_abs_difference']:.3f} "
        f"vs step-to-step noise {noise:.3f}"
    )
    if args.plot:
        _plot(curves, args.plot, f"{args.model}, batch {args.batch}, {args.identities} synthetic identities")
        log(f"  curves: {args.plot}")
    return summary


def _step_noise(curve: list[float]) -> float:
    """Mean |loss[i] - mean of its 9 neighbours|: how much one step's loss moves on its own."""
    n, out = len(curve), []
    for i in range(n):
        lo, hi = max(0, i - 4), min(n, i + 5)
        out.append(abs(curve[i] - sum(curve[lo:hi]) / (hi - lo)))
    return sum(out) / max(1, n)


def _plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Loss per step: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# the largest batch


def largest_batch(args, device: torch.device, model_name: str, variant: str, log) -> dict:
    """Double the batch until a step runs out of memory; report the last one that fit."""
    fits, peak, batch = None, None, 128
    while batch <= 16384:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            v = make_variant(variant, argparse.Namespace(**{**vars(args), "model": model_name}), device)
            images = torch.randint(
                0, 256, (batch, 3, args.input_size, args.input_size), dtype=torch.uint8, device=device
            )
            labels = torch.randint(0, args.classes, (batch,), device=device)
            for _ in range(2):
                float(v.step(images, labels))
            torch.cuda.synchronize(device)
            fits, peak = batch, torch.cuda.max_memory_allocated(device) / 2**30
            log(f"  {model_name} batch {batch}: fits, peak {peak:.1f} GiB")
            batch *= 2
        except torch.cuda.OutOfMemoryError:
            log(f"  {model_name} batch {batch}: out of memory")
            break
        finally:
            v = images = labels = None
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return {
        "model": model_name,
        "variant": variant,
        "largest_batch": fits,
        "peak_gib": peak,
        "gpu_gib": round(total, 1),
    }


# ---------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    device = open_device(args.device)
    if device is None:
        return 2
    threads = set_threads(args.threads)
    meta = machine_info(device)
    names = [n.strip() for n in args.variants.split(",")] if args.variants else list(DEFAULT_VARIANTS[device.type])
    unknown = set(names) - set(VARIANTS)
    if unknown:
        print(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, flush=True)

    log(
        f"fresnet training benchmark: {meta.get('gpu') or meta['cpu']}, {threads} CPU threads, "
        f"torch {torch.__version__}"
    )
    log(f"{args.model}, batch {args.batch}, {args.classes} classes, {args.input_size}x{args.input_size}")
    result = dict(meta=meta, args={k: str(v) for k, v in vars(args).items()})
    result["timing"] = time_variants(args, device, names, log)
    if args.convergence_steps > 0:
        variant = args.convergence_variant or result["timing"].get("best") or "fresnet-eager"
        result["convergence"] = convergence(args, device, variant, log)
    if args.max_batch and device.type == "cuda":
        variant = "fresnet-amp"
        result["largest_batch"] = largest_batch(args, device, args.max_batch, variant, log)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
