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
