"""Exact scoring: every query against every sample, then each identity's best sample.

An identity's score is the maximum cosine over its samples (InsightFace's server rule). The
scores are a matrix product over all samples -- fp32 by default, or fp16/int8 copies of the samples
(:mod:`fresnet.gallery.codes`; int8 with PyTorch's int8 product where it has one) to halve or
quarter the memory read (their top-1 agreement with fp32 is measured in tests/test_gallery.py and
benchmarks/bench_gallery.py). The identities are then found from the best samples: sorted by score,
the first ``k`` distinct identities among the best ``k * (most samples of one identity)`` samples
are exactly the ``k`` best identities, since each identity's first appearance is its maximum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fresnet.gallery.codes import Int8Codes, int8_product_available

PRECISIONS = ("fp32", "fp16", "int8")
#: bytes of one block of the query x sample score matrix (the batch is split to stay below it)
SCORE_BLOCK_BYTES = 256 << 20
#: rows of samples widened to fp32 at a time when scoring int8 copies
INT8_BLOCK_ROWS = 32768


@dataclass(frozen=True)
class Match:
    """One identity found for a query: its name, its score (the best cosine over its samples) and
    the id of that best sample."""

    name: str
    score: float
    sample: int


class SampleScorer:
    """Cosine scores of queries against a fixed set of unit-length samples ``(n, d)`` float32."""

    def __init__(self, samples: np.ndarray, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.count = len(samples)
        import torch

        if precision == "fp32":
            self._samples = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
        elif precision == "fp16":
            self._samples = torch.from_numpy(samples.astype(np.float16))
        elif int8_product_available() and len(samples):
            self._codes = Int8Codes(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))
        else:
            scale = np.abs(samples).max(axis=1, keepdims=True) / 127.0 if len(samples) else np.ones((0, 1))
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            self._samples = torch.from_numpy(np.clip(np.rint(samples / scale), -127, 127).astype(np.int8))
            self._scale = torch.from_numpy(scale[:, 0])

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``(q, n)`` float32 cosines of unit ``queries`` ``(q, d)`` against the samples.

        PyTorch's matrix product: on a busy machine it degrades far less than OpenBLAS's, whose
        threads spin while they wait for cores other processes hold."""
        import torch

        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        if self.precision == "fp32":
            return (q @ self._samples.T).numpy()
        if self.precision == "fp16":
            return (q.half() @ self._samples.T).float().numpy()
        if hasattr(self, "_codes"):  # int8 x int8 -> int32, exact sums: a quarter of the bytes, fast
            return np.ascontiguousarray(self._codes.scores_many(q).numpy())
        out = torch.empty((len(queries), self.count), dtype=torch.float32)
        for start in range(0, self.count, INT8_BLOCK_ROWS):
            block = self._samples[start:start + INT8_BLOCK_ROWS].float()
            out[:, start:start + len(block)] = (q @ block.T) * self._scale[start:start + len(block)]
        return out.numpy()


def best_identities(scores: np.ndarray, owners: np.ndarray, most_samples: int, k: int,
                    threshold: float | None) -> list[list[tuple[int, float, int]]]:
    """For each row of ``scores`` ``(q, n)``: up to ``k`` ``(owner, score, sample position)``, best
    first, one per owner, each owner scored by its best sample; with ``threshold``, only scores
    ``>= threshold``. Ties are broken by sample position, so answers are reproducible."""
    count = scores.shape[1]
    if count == 0 or k < 1:
        return [[] for _ in range(len(scores))]
    import torch  # its top-k is many times faster than numpy's argpartition (and multi-threaded)

    wanted = min(count, k * max(1, most_samples))
    values, positions = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), wanted, dim=1, sorted=True)
    values, positions = values.numpy(), positions.numpy()
    return [first_owners(row_values, row_positions, owners, k, threshold)
            for row_values, row_positions in zip(values, positions)]


def first_owners(scores: np.ndarray, positions: np.ndarray, owners: np.ndarray, k: int,
                 threshold: float | None) -> list[tuple[int, float, int]]:
    """The first ``k`` distinct owners of the samples at ``positions`` (scored ``scores``), best
    score first and ties by position; with ``threshold``, only scores ``>= threshold``."""
    order = np.lexsort((positions, -scores))  # score descending, then position
    found: list[tuple[int, float, int]] = []
    seen: set[int] = set()
    for index in order:
        score = float(scores[index])
        if threshold is not None and score < threshold:
            break
        owner = int(owners[positions[index]])
        if owner in seen:
            continue
        seen.add(owner)
        found.append((owner, score, int(positions[index])))
        if len(found) == k:
            break
    return found


def query_blocks(count: int, samples: int) -> int:
    """Queries per block so that one block's score matrix stays under :data:`SCORE_BLOCK_BYTES`."""
    return max(1, min(count, SCORE_BLOCK_BYTES // max(1, 4 * samples)))
