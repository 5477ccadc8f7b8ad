"""Exact fp32 answers for a few queries at half the memory traffic: screen in fp16, prove, rescore.

One exact query over a large gallery reads every sample; in fp32 that read is the whole cost (586 MB
for 300,000 x 512). This module reads an fp16 copy instead (half the bytes), keeps the best few
hundred samples, rescores those in fp32 from the original rows, and then **proves** that no sample
left out could have changed the answer:

* every fp16 score is within :func:`screening_error_bound` of the sample's exact cosine (fp16
  rounding of the query and the sample, the kernel's fp32 accumulation and the fp16 result, for
  unit vectors of dimension ``d``);
* so a sample outside the candidates scores at most ``lowest screened score + bound``; when that is
  below the k-th identity's exact score (and below the threshold, when fewer than k pass it), the
  candidates hold every sample that can appear in the answer, and the answer is the fp32 one.

When the proof fails (near-ties at the edge of the candidate list) the candidate list grows, and
then the caller falls back to the full fp32 product: answers never depend on the screening.
The bound assumes the fp16 matrix-vector kernel accumulates in fp32; :func:`fp16_kernel_accumulates_in_fp32`
checks that once per process with a probe that fp16 accumulation gets visibly wrong, and screening
is off where it fails.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from fresnet.gallery.scoring import first_owners

#: candidate samples kept per query on the first try (grown 8x once when the proof fails)
FIRST_CANDIDATES = 256
#: screening pays off only for a few queries (a batch shares one fp32 read anyway) and large galleries
MAX_SCREENED_QUERIES = 8
MIN_SCREENED_SAMPLES = 20_000

FP16_UNIT_ROUNDOFF = 2.0 ** -11
FP32_UNIT_ROUNDOFF = 2.0 ** -24
FP16_SUBNORMAL_HALF_SPACING = 2.0 ** -25


def screening_error_bound(dim: int) -> float:
    """Largest possible ``|fp16 screened score - fp32 cosine|`` for unit vectors of ``dim`` values.

    Rounding the query and the sample to fp16 moves their product by at most
    ``(2u + u^2)|q||x|`` plus the subnormal range's absolute error on each side; the kernel sums
    ``dim`` exact products in fp32 (at most ``dim * u32`` relative, the worst sequential order) and
    rounds the result to fp16 (``u`` relative, scores <= 1). The fp32 rescoring that the answer
    reports carries its own ``dim * u32``. Everything is doubled for margin."""
    u = FP16_UNIT_ROUNDOFF
    rounding = 2 * u + u * u + 2 * FP16_SUBNORMAL_HALF_SPACING * math.sqrt(dim) * (1 + u)
    accumulation = 2 * dim * FP32_UNIT_ROUNDOFF * (1 + 3 * u)
    result = u * (1 + 3 * u)
    return 2.0 * (rounding + accumulation + result)


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


class ScreenedSearch:
    """Exact top-k identities for single queries against unit fp32 ``samples`` via an fp16 copy."""

    def __init__(self, samples: np.ndarray):
        import torch

        self._exact = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
        self._screen = self._exact.half()
        self.count, self.dim = self._exact.shape
        self.bound = screening_error_bound(self.dim)

    @staticmethod
    def usable(queries: int, samples: int, dim: int) -> bool:
        return (queries <= MAX_SCREENED_QUERIES and samples >= MIN_SCREENED_SAMPLES
                and fp16_kernel_accumulates_in_fp32(dim))

    def search(self, query: np.ndarray, owners: np.ndarray, most_samples: int, k: int,
               threshold: float | None) -> list[tuple[int, float, int]] | None:
        """Up to ``k`` ``(owner, fp32 score, sample position)`` best first (ties by position), as
        :func:`fresnet.gallery.scoring.best_identities` finds them from every fp32 score; ``None``
        when the screening cannot prove its answer (the caller then scores every sample in fp32)."""
        import torch

        q = torch.from_numpy(np.ascontiguousarray(query, np.float32))
        screened = self._screen @ q.half()
        wanted = max(FIRST_CANDIDATES, 4 * k * max(1, most_samples))
        for _ in range(2):
            if wanted >= self.count:
                return None  # no saving left: the full product is as cheap
            values, positions = torch.topk(screened, wanted, sorted=False)
            ceiling = float(values.min()) + self.bound  # no sample left out scores above this
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
