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

import numpy as np

from fresnet.gallery.codes import Fp16Codes, Int8Codes, fp16_kernel_accumulates_in_fp32, int8_product_available
from fresnet.gallery.scoring import first_owners

#: candidate samples kept per query on the first try (grown 8x once when the proof fails)
FIRST_CANDIDATES = 1024
#: screening pays off only for a few queries (a batch shares one fp32 read anyway) and large galleries
MAX_SCREENED_QUERIES = 8
MIN_SCREENED_SAMPLES = 20_000

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
