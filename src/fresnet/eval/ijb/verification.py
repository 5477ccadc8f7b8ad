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

from dataclasses import dataclass

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.roc import auc_trapezoid, roc_curve_sklearn

# InsightFace's x_labels = [10 ** -6, ..., 10 ** -1], the columns of its table
FAR_LABELS = tuple(10 ** -k for k in range(6, 0, -1))
BLOCK_BYTES = 64 << 20  # one block of the score matrix


def template_index(template_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``wanted`` ids in the sorted ``template_ids``, and a mask of the ones found."""
    pos = np.searchsorted(template_ids, wanted)
    pos = np.minimum(pos, max(len(template_ids) - 1, 0))
    found = template_ids[pos] == wanted if len(template_ids) else np.zeros(len(wanted), bool)
    return pos, found


def pair_scores(templates: np.ndarray, first: np.ndarray, second: np.ndarray, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
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
    row_pos = np.full(count, -1, dtype=np.int64)
    row_pos[rows] = np.arange(len(rows))
    col_pos = np.full(count, -1, dtype=np.int64)
    col_pos[cols] = np.arange(len(cols))
    right = np.ascontiguousarray(templates[cols].T)
    step = max(1, block_bytes // (8 * len(cols)))
    blocks = -(-len(rows) // step)
    block_of = row_pos[first] // step
    block_of = block_of.astype(np.uint16 if blocks <= np.iinfo(np.uint16).max else np.uint32)  # uint16 sorts by radix
    order = np.argsort(block_of, kind="stable")
    bounds = np.searchsorted(block_of[order], np.arange(blocks + 1))
    for k in range(blocks):
        chosen = order[bounds[k]:bounds[k + 1]]
        if not len(chosen):
            continue
        matrix = templates[rows[k * step:(k + 1) * step]] @ right
        scores[chosen] = matrix[row_pos[first[chosen]] - k * step, col_pos[second[chosen]]]
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


def verification_numbers(scores: np.ndarray, labels: np.ndarray, source: str) -> VerificationNumbers:
    positives = int(np.count_nonzero(labels == 1))
    if positives == 0 or positives == len(labels):
        raise FresnetError(
            f"{source}: all {len(labels)} pairs are labelled {int(labels[0])}; a ROC needs both genuine (1) "
            "and impostor (0) pairs"
        )
    fpr, tpr, _ = roc_curve_sklearn(labels, scores)
    return VerificationNumbers(scores, fpr, tpr, auc_trapezoid(fpr, tpr), tar_at_far_nearest(fpr, tpr))
