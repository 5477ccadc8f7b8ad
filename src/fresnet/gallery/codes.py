"""Compact copies of a gallery's unit fp32 samples, each with a proven bound on its scores' error.

* :class:`Int8Codes`: int8 with one scale per sample (a quarter of the fp32 bytes), scored with
  PyTorch's exact int8 x int8 -> int32 product;
* :class:`Fp16Codes`: fp16 (half the bytes), where that product is missing.

:mod:`fresnet.gallery.screening` uses them to screen single exact queries, and
:class:`fresnet.gallery.scoring.SampleScorer` (``precision="int8"``) to score whole batches.
"""
from __future__ import annotations

import functools
import math

import numpy as np

FP16_UNIT_ROUNDOFF = 2.0 ** -11
FP32_UNIT_ROUNDOFF = 2.0 ** -24
FP16_SUBNORMAL_HALF_SPACING = 2.0 ** -25
#: the float terms of every bound are doubled: the proofs below are worst cases already, this covers
#: the float arithmetic that computes the bound itself and any slip in counting
SAFETY = 2.0


def rescoring_drift(dim: int) -> float:
    """Largest difference between two fp32 dot products of the same unit vectors summed in any
    orders (the rescoring's and the full product's): ``2 * dim * u32`` of a sum <= 1, and a bit."""
    return 2 * dim * FP32_UNIT_ROUNDOFF * 1.01


class Int8Codes:
    """Samples as int8 with one scale per row: ``x ~ s_i * c_i``, ``|x_ij - s_i c_ij| <= s_i / 2``."""

    name = "int8"

    def __init__(self, samples):
        import torch

        # float32 throughout (the samples' own precision; float64 copies would double the build's
        # memory): x / s is then off by <= 127 * 2^-24 before rounding, far inside the bound's slack
        self.scales = samples.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        self.codes = torch.round(samples / self.scales[:, None]).clamp_(-127, 127).to(torch.int8)
        self.largest_scale = float(self.scales.max())
        l1 = self.codes.abs().sum(dim=1, dtype=torch.int32).double() * self.scales.double()
        self.largest_l1 = float(l1.max())  # max ||x~_i||_1
        self.dim = samples.shape[1]

    def scores(self, query):
        """``(n,)`` float32 screened scores of one unit fp32 query ``(d,)``; also its bound."""
        import torch

        q = query.double()
        step = float(q.abs().max()) / 127.0 or 1.0
        codes = torch.round(q / step).clamp_(-127, 127).to(torch.int8)
        dots = torch._int_mm(self.codes, codes[:, None])[:, 0]  # exact int32 sums
        scores = dots.float().mul_(self.scales).mul_(step)
        return scores, self.bound(float(q.abs().sum()), step)

    def scores_many(self, queries):
        """``(m, n)`` float32 screened scores of unit fp32 queries ``(m, d)`` (each quantised with
        its own step, as :meth:`scores` does)."""
        import torch

        q = queries.double()
        steps = q.abs().amax(dim=1) / 127.0
        steps = torch.where(steps > 0, steps, torch.ones_like(steps))
        codes = torch.round(q / steps[:, None]).clamp_(-127, 127).to(torch.int8)
        dots = torch._int_mm(self.codes, codes.T.contiguous())  # (n, m) exact int32 sums
        return (dots.float().mul_(self.scales[:, None]).mul_(steps.float()[None, :])).T

    def bound(self, query_l1: float, query_step: float) -> float:
        """``|screened - exact|`` <= ``S/2 * ||q||_1`` (the samples' rounding) ``+ t/2 * max ||x~||_1``
        (the query's rounding, step ``t``), plus fp32's last bits in the scaling (``|score| <= 1.01``,
        three roundings) and the rescoring drift."""
        rounding = self.largest_scale / 2 * query_l1 + query_step / 2 * self.largest_l1
        arithmetic = 4 * FP32_UNIT_ROUNDOFF * 1.01 * (1 + rounding) + rescoring_drift(self.dim)
        return rounding * (1 + 1e-6) + SAFETY * arithmetic


class Fp16Codes:
    """Samples as fp16 (the fallback where PyTorch has no int8 product): half the bytes of fp32."""

    name = "fp16"

    def __init__(self, samples):
        self.codes = samples.half()
        self.dim = samples.shape[1]

    def scores(self, query):
        return (self.codes @ query.half()).float(), self.bound()

    def bound(self) -> float:
        """For unit vectors: rounding the query and the sample to fp16 moves their product by at most
        ``(2u + u^2)`` plus the subnormal range's absolute error on each side; the kernel sums ``dim``
        exact products in fp32 (``dim * u32`` relative, the worst order: checked by
        :func:`fp16_kernel_accumulates_in_fp32`) and rounds the result to fp16 (``u``, scores <= 1)."""
        u = FP16_UNIT_ROUNDOFF
        rounding = 2 * u + u * u + 2 * FP16_SUBNORMAL_HALF_SPACING * math.sqrt(self.dim) * (1 + u)
        accumulation = self.dim * FP32_UNIT_ROUNDOFF * (1 + 3 * u)
        result = u * (1 + 3 * u)
        return SAFETY * (rounding + accumulation + result + rescoring_drift(self.dim))


@functools.cache
def int8_product_available() -> bool:
    """Whether this PyTorch has the exact int8 x int8 -> int32 matrix product on the CPU."""
    import torch

    try:
        a = torch.tensor([[127, -127, 3]], dtype=torch.int8).repeat(17, 1)
        b = torch.tensor([[127], [127], [-2]], dtype=torch.int8)
        return bool((torch._int_mm(a, b) == -6).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def fp16_kernel_accumulates_in_fp32(dim: int = 512) -> bool:
    """Whether PyTorch's fp16 matrix-vector product on this machine sums in fp32 (checked once)."""
    import torch

    def torch_fp16(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return (torch.from_numpy(rows).half() @ torch.from_numpy(vector).half()).float().numpy()

    return accumulates_in_fp32(torch_fp16, dim)


def accumulates_in_fp32(matvec, dim: int) -> bool:
    """Whether ``matvec(rows, vector)`` (float32 arrays in, fp16 arithmetic inside) keeps fp32 sums.

    Each probe row is one large value and ``dim - 1`` values each below half of fp16's spacing at
    the large one: fp16 accumulation drops them (an error of ~0.06 at 512 values), fp32 keeps them
    (only the final fp16 rounding, <= 2^-11, remains)."""
    if dim < 64:
        return False  # too few values for the probe to tell the two apart; screening stays off
    rows = 4096
    big, small = 0.75, 2.0 ** -13
    probe = np.full((rows, dim), small, np.float32)
    rng = np.random.default_rng(0)
    probe[np.arange(rows), rng.integers(0, dim, rows)] = big
    exact = big + (dim - 1) * small
    got = np.asarray(matvec(probe, np.ones(dim, np.float32)), np.float64)
    return bool(np.abs(got - exact).max() <= 2 * FP16_UNIT_ROUNDOFF)
