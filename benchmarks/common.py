"""Shared helpers for the speed benchmarks: thread setup, interleaved timing, matmul peak,
realistic weights, face-like inputs, machine description and result files.

Timing on a shared machine is noisy, so every benchmark measures the variants it compares
*interleaved* (round-robin, one call of each per round, order rotated each round) and reports the
median per call: slow spells then hit every variant alike and the ratios stay meaningful.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:  # a fresh clone without `pip install -e .` still runs
    sys.path.insert(0, str(REPO_ROOT / "src"))


# ---------------------------------------------------------------------------------------------------
# setup


def set_threads(threads: Optional[int]) -> int:
    """Use ``threads`` intra-op threads (None keeps PyTorch's default); returns the count in use."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def open_device(name: str) -> Optional[torch.device]:
    """The benchmark device, or None (with a message) when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available here; use --device cpu", file=sys.stderr)
            return None
        torch.backends.cudnn.benchmark = True
    return device


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_flags() -> set[str]:
    from fresnet.demo.machine import cpu_name_and_flags

    return cpu_name_and_flags()[1]


def cpu_name() -> str:
    from fresnet.demo.machine import cpu_name_and_flags

    return cpu_name_and_flags()[0]


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, for the results file."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_isa": sorted(
            f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}
        ),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": _load_average(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def _load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------
# timing


@dataclass
class Timing:
    """Seconds per call of one variant."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def interleaved_timing(
    candidates: dict[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    on_round: Optional[Callable[[int], None]] = None,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds`` times, round-robin.

    Each round calls every candidate once, starting at a different candidate each round, so a
    burst of load from elsewhere lands on all of them. ``warmup`` untimed rounds come first.
    """
    names = list(candidates)
    timings = {name: Timing(name) for name in names}
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            timings[name].seconds.append(time.perf_counter() - start)
        if on_round is not None:
            on_round(r)
    return timings


def matmul_gflops(dtype: torch.dtype, n: int = 4096, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """Best achieved GFLOP/s of an n x n x n matmul in ``dtype``: the machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.no_grad():
        a @ b  # first call: allocation, kernel selection
        synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


# ---------------------------------------------------------------------------------------------------
# models and inputs


@torch.no_grad()
def settle_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Give a randomly initialised network realistic BatchNorm statistics.

    With the initial moving stats (mean 0, var 1) a deep IR-ResNet's activations grow to ~1e6 and
    accuracy comparisons become meaningless. One training-mode pass with momentum 0 sets every
    moving statistic to the batch statistic, as a trained network's would be. The affine
    parameters get a little spread too, so BN folding is exercised with non-trivial values.
    """
    from fresnet.network.layers import MXBatchNorm

    gen = torch.Generator().manual_seed(0)
    saved = {}
    for module in model.modules():
        if isinstance(module, MXBatchNorm):
            saved[module] = module.momentum
            module.momentum = 0.0  # MXNet convention: weight of the old value
            if module.weight is not None:
                module.weight.mul_(1 + 0.2 * torch.rand(module.weight.shape, generator=gen))
            module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=gen))
    was_training = model.training
    model.train()
    model(images)
    model.train(was_training)
    for module, momentum in saved.items():
        module.momentum = momentum
    return model


def face_images(batch: int, size: Sequence[int] = (112, 112), seed: int = 0) -> torch.Tensor:
    """Float RGB NCHW images in 0..255: synthetic faces when ``fresnet.data.SyntheticFaces`` is
    available and the size is square, else smooth random images."""
    h, w = int(size[0]), int(size[1])
    try:
        from fresnet.data import SyntheticFaces

        if h == w:
            faces = SyntheticFaces(num_identities=max(1, batch // 2 + 1), images_per_identity=2, seed=seed, size=h)
            pixels = faces.render(list(range(batch)))  # uint8 (B, H, W, 3)
            return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().contiguous()
    except (ImportError, AttributeError):
        pass
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, h // 8), max(2, w // 8), generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 255.0


def realistic_model(name: str, **options: Any) -> torch.nn.Module:
    """``fresnet.create_model(name, **options)`` in eval mode with settled BatchNorm statistics."""
    import fresnet

    torch.manual_seed(0)
    model = fresnet.create_model(name, **options)
    settle_batchnorm(model, face_images(8, model.config.input_size, seed=1))
    return model.eval()


def cosine_and_maxdiff(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Smallest per-sample cosine similarity and the largest absolute difference."""
    out, ref = out.detach().float().cpu().flatten(1), ref.detach().float().cpu().flatten(1)
    cosine = torch.nn.functional.cosine_similarity(out, ref, dim=1).min().item()
    return cosine, (out - ref).abs().max().item()


# ---------------------------------------------------------------------------------------------------
# output


def write_json(path: str | os.PathLike, data: Any) -> None:
    from fresnet.ioutil import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table when rich is there, else aligned plain text."""
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, justify="right" if column != columns[0] else "left")
        for row in rows:
            table.add_row(*[_fmt(v) for v in row])
        Console(width=160).print(table)
    except ImportError:
        print(title)
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(_fmt(v) for v in row))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
