"""IJB 1:1 verification: template-pair cosine scores and the TAR@FAR table as InsightFace reads it.

A pair's score is the dot product of its two L2-normalised templates. InsightFace gathers both
rows of every pair (15.7 M x 2 x 512 doubles for IJB-C, memory-bound). IJB's pairs join a few
thousand enrolment templates to the probe templates, so here the distinct rows and columns are
multiplied block by block as matrices (float64, same values to ~1e-16) and each pair picks its
entry; a sparse pair list falls back to row gathers.

TAR at a FAR: InsightFace's rule, the TPR of the ROC point (scikit-learn's ``roc_curve``, corners
only) whose FPR is nearest to the FAR, the one with the highest TPR on a tie. No interpolation, so
with few impostor pairs a low FAR reads the nearest point there is, often FPR 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.roc import auc_trapezoid, roc_curve_sklearn

# InsightFace's x_labels = [10 ** -6, ..., 10 ** -1], the columns of its table
FAR_LABELS = tuple(10 ** -k for k in range(6, 0, -1))
BLOCK_BYTES = 64 << 20  # one block of the score matrix


def template_index(template_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int32) of ``wanted`` ids in the sorted ``template_ids``, and a mask of those found.

    A lookup table when the ids are small non-negative integers (IJB's are), else a binary search.
    """
    wanted = np.asarray(wanted)
    if len(template_ids) == 0:
        return np.zeros(len(wanted), np.int32), np.zeros(len(wanted), bool)
    low, high = int(template_ids[0]), int(template_ids[-1])
    if low >= 0 and high < 64 * max(len(wanted), len(template_ids)) + (1 << 20):
        table = np.full(high + 2, -1, dtype=np.int32)
        table[template_ids] = np.arange(len(template_ids), dtype=np.int32)
        pos = table[np.clip(wanted, 0, high + 1)]
        found = pos >= 0
        pos[~found] = 0
        return pos, found
    pos = np.minimum(np.searchsorted(template_ids, wanted), len(template_ids) - 1).astype(np.int32)
    return pos, template_ids[pos] == wanted


@dataclass(frozen=True)
class PairGrid:
    """Pairs placed on a (rows x columns) score matrix that is computed a block of rows at a time:
    the pairs grouped by block, and each one's offset inside its block."""

    order: np.ndarray  # pair indices, grouped by block
    bounds: np.ndarray  # block k's pairs are order[bounds[k]:bounds[k + 1]]
    offsets: np.ndarray  # int32, in `order`'s order: (row - first row of the block) * columns + column

    @classmethod
    def locate(cls, first: np.ndarray, second: np.ndarray, row_of: np.ndarray, col_of: np.ndarray, rows: int,
               columns: int, step: int):
        """``row_of``/``col_of`` map a template index to its row/column (-1: absent). A pair may sit
        either way round; ``None`` when some pair is not on the grid."""
        row, col = row_of[first], col_of[second]
        if (row < 0).any() or (col < 0).any():
            row, col = row_of[second], col_of[first]
            if (row < 0).any() or (col < 0).any():
                return None
        blocks = -(-rows // step)
        within = np.arange(rows, dtype=np.int64)
        # per row: its block, and where the row starts inside it (tables: gathers beat divisions)
        block_of_row = (within // step).astype(np.uint16 if blocks <= np.iinfo(np.uint16).max else np.uint32)
        start_of_row = ((within % step) * columns).astype(np.int32)  # < step * columns <= 2**31
        block_of = block_of_row[row]
        order = np.argsort(block_of, kind="stable")  # uint16 keys sort by radix, in linear time
        bounds = np.r_[0, np.cumsum(np.bincount(block_of, minlength=blocks))]
        local = start_of_row[row]
        local += col
        return cls(order, bounds, local[order])

    def fill(self, scores: np.ndarray, block: int, matrix: np.ndarray) -> None:
        """Copy the scores of block ``block`` out of its ``matrix`` (C-contiguous)."""
        lo, hi = self.bounds[block], self.bounds[block + 1]
        scores[self.order[lo:hi]] = matrix.reshape(-1)[self.offsets[lo:hi]]


def _positions(members: np.ndarray, count: int) -> np.ndarray:
    table = np.full(count, -1, dtype=np.int32)
    table[members] = np.arange(len(members), dtype=np.int32)
    return table


def pair_scores(
    templates: np.ndarray, first: np.ndarray, second: np.ndarray, block_bytes: int = BLOCK_BYTES
) -> np.ndarray:
    """``templates[first[i]] . templates[second[i]]`` for every pair, float64 (templates normalised)."""
    n = len(first)
    scores = np.empty(n, dtype=np.float64)
    count = len(templates)
    rows = np.flatnonzero(np.bincount(first, minlength=count))
    cols = np.flatnonzero(np.bincount(second, minlength=count))
    if len(rows) * len(cols) > 32 * max(n, 1):  # sparse: a matrix product would mostly be wasted
        step = max(1, block_bytes // (16 * templates.shape[1]))
        for start in range(0, n, step):
            a, b = templates[first[start:start + step]], templates[second[start:start + step]]
            scores[start:start + step] = np.einsum("ij,ij->i", a, b)
        return scores
    step = max(1, block_bytes // (8 * len(cols)))
    grid = PairGrid.locate(first, second, _positions(rows, count), _positions(cols, count), len(rows), len(cols), step)
    right = np.ascontiguousarray(templates[cols].T)
    for block, start in enumerate(range(0, len(rows), step)):
        grid.fill(scores, block, templates[rows[start:start + step]] @ right)
    return scores


@dataclass(frozen=True)
class VerificationNumbers:
    scores: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    tar_at_far: dict[float, float]


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, fars=FAR_LABELS) -> dict[float, float]:
    """InsightFace's table: for each FAR, the TPR at the nearest FPR (reversed curve, first minimum,
    so the highest-TPR point among equally near ones)."""
    fpr_r, tpr_r = fpr[::-1], tpr[::-1]
    return {far: float(tpr_r[int(np.argmin(np.abs(fpr_r - far)))]) for far in fars}


def unsupported_fars(num_impostors: int, fars=FAR_LABELS) -> tuple[float, ...]:
    """The FARs that ``num_impostors`` impostor pairs cannot resolve: below one false accept
    (``floor(far * impostors) < 1``, the rule the ``.bin`` tables use to say "undefined")."""
    return tuple(far for far in fars if math.floor(far * num_impostors + 1e-9) < 1)


def verification_numbers(scores: np.ndarray, labels: np.ndarray, source: str) -> VerificationNumbers:
    positives = int(np.count_nonzero(labels == 1))
    if positives == 0 or positives == len(labels):
        raise FresnetError(
            f"{source}: all {len(labels)} pairs are labelled {int(labels[0])}; a ROC needs both genuine (1) "
            "and impostor (0) pairs"
        )
    fpr, tpr, _ = roc_curve_sklearn(labels, scores)
    return VerificationNumbers(scores, fpr, tpr, auc_trapezoid(fpr, tpr), tar_at_far_nearest(fpr, tpr))
