"""Exact fp32 answers for a few queries at a fraction of the memory traffic: screen, prove, rescore.

One exact query over a large gallery reads every sample; in fp32 that read is the whole cost (586 MB
for 300,000 x 512, ~30 ms at this machine's ~18 GB/s). This module reads a compact copy instead --
int8 (a quarter of the bytes, PyTorch's exact int8 x int8 -> int32 product) or, where that product
is missing, fp16 (half) -- keeps the best candidates, rescores those in fp32 from the original rows,
and then **proves** that no sample left out could have changed the answer:

* every screened score is within a bound of the sample's exact cosine (:meth:`Int8Codes.bound`,
  :meth:`Fp16Codes.bound`: the rounding of the query and the samples, the kernel's arithmetic, and
  the difference between the fp32 rescoring and the full fp32 product);
* so a sample outside the candidates scores at most ``lowest screened score + bound``; when that is
  below the k-th identity's exact score (and below the threshold, when fewer than k pass it), the
  candidates hold every sample that can appear in the answer, and the answer is the fp32 one.

When the proof fails (near-ties at the edge of the candidate list) the candidate list grows once,
and then the caller falls back to the full fp32 product: answers never depend on the screening.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from fresnet.gallery.scoring import first_owners

#: candidate samples kept per query on the first try (grown 8x once when the proof fails)
FIRST_CANDIDATES = 1024
#: screening pays off only for a few queries (a batch shares one fp32 read anyway) and large galleries
MAX_SCREENED_QUERIES = 8
MIN_SCREENED_SAMPLES = 20_000

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

        rows = samples.double()
        scales = rows.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        self.codes = torch.round(rows / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        self.scales = scales.float()
        self.largest_scale = float(scales.max())
        self.largest_l1 = float((self.codes.double().abs().sum(dim=1) * scales).max())  # max ||x~_i||_1
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


def screening_codes(dim: int) -> str | None:
    """The compact copy this machine can screen with: ``"int8"``, ``"fp16"`` or None (none is safe)."""
    if int8_product_available():
        return "int8"
    return "fp16" if fp16_kernel_accumulates_in_fp32(dim) else None


class ScreenedSearch:
    """Exact top-k identities for single queries against unit fp32 ``samples``, via a compact copy."""

    def __init__(self, samples: np.ndarray, codes: str | None = None):
        import torch

        self._exact = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
        self.count, self.dim = self._exact.shape
        codes = codes or screening_codes(self.dim)
        if codes not in ("int8", "fp16"):
            raise ValueError(f"screening codes {codes!r}: expected 'int8' or 'fp16'")
        self.codes = Int8Codes(self._exact) if codes == "int8" else Fp16Codes(self._exact)

    @staticmethod
    def usable(queries: int, samples: int, dim: int) -> bool:
        return queries <= MAX_SCREENED_QUERIES and samples >= MIN_SCREENED_SAMPLES and screening_codes(dim) is not None

    def search(self, query: np.ndarray, owners: np.ndarray, most_samples: int, k: int,
               threshold: float | None) -> list[tuple[int, float, int]] | None:
        """Up to ``k`` ``(owner, fp32 score, sample position)`` best first (ties by position), as
        :func:`fresnet.gallery.scoring.best_identities` finds them from every fp32 score; ``None``
        when the screening cannot prove its answer (the caller then scores every sample in fp32)."""
        import torch

        q = torch.from_numpy(np.ascontiguousarray(query, np.float32))
        screened, bound = self.codes.scores(q)
        wanted = max(FIRST_CANDIDATES, 4 * k * max(1, most_samples))
        for _ in range(2):
            if wanted >= self.count:
                return None  # no saving left: the full product is as cheap
            values, positions = torch.topk(screened, wanted, sorted=False)
            ceiling = float(values.min()) + bound  # no sample left out scores above this
            exact = (self._exact[positions] @ q).numpy()
            found = first_owners(exact, positions.numpy(), owners, k, threshold)
            if _proven(found, k, threshold, ceiling):
                return found
            wanted *= 8
        return None


def _proven(found: list[tuple[int, float, int]], k: int, threshold: float | None, ceiling: float) -> bool:
    """Whether no sample outside the candidates (each scoring <= ``ceiling``) can enter the answer."""
    if len(found) == k:
        return found[-1][1] > ceiling
    return threshold is not None and threshold > ceiling
