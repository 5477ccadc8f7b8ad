"""The pooled ROC of a verification set, and the numbers read from it: AUC, EER, TAR at FAR.

Every pair counts once (no folds). Lower distance means "more alike"; the curve has one point per
distinct distance (accept every pair with ``dist <= d``), so tied distances move TPR and FPR together
and repeated FAR values are harmless -- unlike InsightFace's ``calculate_val``, which feeds repeated
FAR values to ``scipy.interpolate.interp1d`` and raises on current SciPy.

TAR@FAR is the best TPR among operating points whose false-accept *count* is at most
``floor(far * num_negative)``. A FAR below ``1 / num_negative`` cannot be told apart from 0 with so few
negative pairs, so it is reported as ``None`` (undefined), never as a number that looks measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class RocCurve:
    """Operating points in order of increasing distance threshold, starting at (FPR 0, TPR 0)."""

    thresholds: np.ndarray  # distance d of each point (accept dist <= d); -inf for the origin
    true_accepts: np.ndarray  # counts, non-decreasing
    false_accepts: np.ndarray
    num_positive: int
    num_negative: int

    @property
    def tpr(self) -> np.ndarray:
        return self.true_accepts / max(self.num_positive, 1)

    @property
    def fpr(self) -> np.ndarray:
        return self.false_accepts / max(self.num_negative, 1)

    def auc(self) -> Optional[float]:
        """Area under the ROC (trapezoids; a tie between a positive and a negative counts 1/2)."""
        if not self.num_positive or not self.num_negative:
            return None
        fpr, tpr = self.fpr, self.tpr
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))

    def eer(self) -> Optional[float]:
        """Equal error rate: where FPR = FNR (= 1 - TPR), linearly interpolated between the two points
        that straddle the crossing."""
        if not self.num_positive or not self.num_negative:
            return None
        fpr, fnr = self.fpr, 1.0 - self.tpr
        gap = fnr - fpr  # starts at +1 (origin), ends at -1 (accept all); non-increasing
        i = int(np.argmax(gap <= 0))
        if i == 0:
            return float(fpr[0])
        t = gap[i - 1] / (gap[i - 1] - gap[i])
        return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))

    def tar_at_far(self, far: float) -> Optional[float]:
        """Best TPR with FPR <= ``far``; ``None`` when ``far`` is below the resolution 1/num_negative
        (or when there are no positive or no negative pairs)."""
        if not self.num_positive or not self.num_negative:
            return None
        allowed = math.floor(far * self.num_negative + 1e-9)
        if allowed < 1:
            return None
        ok = self.false_accepts <= allowed
        return float(np.max(self.true_accepts[ok]) / self.num_positive)

    def threshold_at_far(self, far: float) -> Optional[float]:
        """The distance threshold of the :meth:`tar_at_far` operating point (accept ``dist <= it``)."""
        if self.tar_at_far(far) is None:
            return None
        allowed = math.floor(far * self.num_negative + 1e-9)
        ok = np.flatnonzero(self.false_accepts <= allowed)
        return float(self.thresholds[ok[-1]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [None if not np.isfinite(t) else float(t) for t in self.thresholds],
            "tpr": self.tpr.tolist(),
            "fpr": self.fpr.tolist(),
            "num_positive": self.num_positive,
            "num_negative": self.num_negative,
        }


def roc_from_distances(dist: np.ndarray, issame: np.ndarray) -> RocCurve:
    """The pooled ROC of pair distances (lower = same) against the ground truth."""
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    same = np.asarray(issame, dtype=bool).reshape(-1)
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    tp = np.cumsum(s)
    fp = np.cumsum(~s)
    # keep the last index of each run of equal distances: ties are accepted together
    last = np.flatnonzero(np.r_[d[1:] != d[:-1], True]) if d.size else np.zeros(0, dtype=np.int64)
    return RocCurve(
        thresholds=np.r_[-np.inf, d[last]],
        true_accepts=np.r_[0, tp[last]].astype(np.int64),
        false_accepts=np.r_[0, fp[last]].astype(np.int64),
        num_positive=int(s.sum()),
        num_negative=int((~s).sum()),
    )


# --------------------------------------------------------------------------------------------------
# scikit-learn's ROC, as InsightFace's IJB scripts read it


def roc_curve_sklearn(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(labels, scores)`` exactly: ``(fpr, tpr, thresholds)``.

    One point per distinct score, highest first (accept ``score >= threshold``), after a first point
    (0, 0) at threshold +inf. With ``drop_intermediate`` (sklearn's default) a point is dropped when
    its FP and TP counts both lie on the straight line through its two neighbours (second
    differences zero), so the curve keeps only its corners. InsightFace reads TAR@FAR off this
    reduced set, so it matters.

    Computed from one sort and per-score counts instead of an argsort and cumulative sums over
    every pair: the second difference of the FP count at a point is the change in the number of
    negatives between its score and the next, so the corners are found on counts, and the
    cumulative sums are only read at the corners (15.7 M IJB-C pairs in about a second). The
    counts, and so the rates, are sklearn's to the last bit.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) == 1
    ascending = np.sort(scores)
    n = len(ascending)
    if n == 0:
        return np.zeros(1), np.full(1, np.nan), np.full(1, np.inf)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(ascending[1:], ascending[:-1], out=new[1:])
    starts = np.flatnonzero(new)  # where each distinct score begins, ascending
    del new
    m = len(starts)
    # positives per distinct score, highest score first (a positive's group: where its value starts)
    group = np.searchsorted(starts, np.searchsorted(ascending, scores[positive], side="left"))
    pos = np.bincount(m - 1 - group, minlength=m).astype(np.int32)
    descending_starts = starts[::-1]
    if drop_intermediate and m > 2:
        # point i's second differences are the changes in positives and negatives from i to i + 1
        change = pos[1:] != pos[:-1]
        if m < n:  # tied scores: the negatives change on their own too
            size = np.diff(starts, append=n).astype(np.int32)[::-1]
            change |= (size[1:] - pos[1:]) != (size[:-1] - pos[:-1])
        keep = np.flatnonzero(np.r_[True, change[1:], True])
    else:
        keep = np.arange(m)
    tps = np.cumsum(pos, dtype=np.int64)[keep]
    fps = (n - descending_starts[keep]) - tps  # pairs at or above the threshold, minus the positives
    thresholds = ascending[descending_starts[keep]]
    tps, fps = tps.astype(np.float64), fps.astype(np.float64)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1]
        tpr = tps / tps[-1]
    return fpr, tpr, thresholds


def auc_trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """``sklearn.metrics.auc``: the trapezoid rule (``np.trapz``) over a monotonic x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.diff(x)
    direction = 1.0
    if np.any(dx < 0):
        if not np.all(dx <= 0):
            raise ValueError("x is neither increasing nor decreasing")
        direction = -1.0
    return direction * float(np.add.reduce(dx * (y[1:] + y[:-1]) / 2.0))
