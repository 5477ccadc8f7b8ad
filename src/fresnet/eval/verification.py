"""InsightFace's face-verification protocol (LFW, CFP-FP, AgeDB-30 ``.bin`` packs), reproduced exactly.

The original is ``recognition/arcface_torch/eval/verification.py`` (``test`` -> ``evaluate`` ->
``calculate_roc`` / ``calculate_accuracy``):

* embeddings are L2-normalised (``sklearn.preprocessing.normalize``: a zero row stays zero);
* pair ``i`` is ``(embeddings[2i], embeddings[2i+1])``; its distance is the *squared* L2 distance;
* a pair is predicted "same" when ``dist < threshold`` (strictly), thresholds ``np.arange(0, 4, 0.01)``;
* ``KFold(n_splits=10, shuffle=False)`` over pair indices: for each fold the threshold with the best
  accuracy on the other folds (the FIRST one on ties, ``np.argmax``) is applied to the held-out fold;
* the reported accuracy is the mean over folds and its ``np.std`` (population std).

On top of that the result carries the pooled ROC (:mod:`fresnet.eval.roc`): AUC, EER and TAR at
FAR 1e-1 ... 1e-6, computed without the original's ``interp1d`` on repeated FAR values (which raises
on current SciPy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.roc import FAR_TARGETS, RocCurve, roc_from_distances

# exactly the original's grid: the float values (0.07 -> 0.07000000000000001) decide ties with dist
THRESHOLDS = np.arange(0, 4, 0.01)


def kfold_split(num_samples: int, num_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``sklearn.model_selection.KFold(n_splits, shuffle=False).split(range(num_samples))`` in numpy.

    Contiguous test folds; the first ``num_samples % num_folds`` folds get one extra sample. As in
    InsightFace's ``LFold``, ``num_folds == 1`` means train = test = everything.
    """
    indices = np.arange(num_samples)
    if num_folds == 1:
        return [(indices, indices)]
    if num_folds < 1:
        raise FresnetError(f"nfolds must be >= 1, got {num_folds}")
    if num_folds > num_samples:
        # sklearn raises here too; say what to do instead
        raise FresnetError(
            f"cannot split {num_samples} pairs into {num_folds} folds; use --nfolds {max(1, num_samples)} or fewer"
        )
    sizes = np.full(num_folds, num_samples // num_folds, dtype=np.int64)
    sizes[: num_samples % num_folds] += 1
    folds = []
    start = 0
    for size in sizes:
        test = indices[start:start + size]
        train = np.concatenate([indices[:start], indices[start + size:]])
        folds.append((train, test))
        start += size
    return folds


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation as ``sklearn.preprocessing.normalize`` does it (zero rows stay zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def pair_distances(embeddings: np.ndarray, num_pairs: Optional[int] = None) -> np.ndarray:
    """Squared L2 distance of each pair (2i, 2i+1) after L2 normalisation, in float64 as the original."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise FresnetError(f"embeddings must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] % 2:
        raise FresnetError(f"embeddings hold {x.shape[0]} rows; pairs (2i, 2i+1) need an even number")
    x = l2_normalize(x)
    diff = x[0::2] - x[1::2]
    dist = np.sum(np.square(diff), 1)
    return dist if num_pairs is None else dist[:num_pairs]


def _confusion_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """tp/fp/tn/fn for every threshold (rows) -- ``calculate_accuracy`` vectorised over thresholds."""
    predict = dist[None, :] < thresholds[:, None]
    same = issame[None, :]
    return {
        "tp": np.sum(predict & same, 1),
        "fp": np.sum(predict & ~same, 1),
        "tn": np.sum(~predict & ~same, 1),
        "fn": np.sum(~predict & same, 1),
    }


def _rates(counts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """tpr, fpr with the original's convention: 0 when the denominator is 0."""
    pos = counts["tp"] + counts["fn"]
    neg = counts["fp"] + counts["tn"]
    tpr = np.where(pos == 0, 0.0, counts["tp"] / np.maximum(pos, 1))
    fpr = np.where(neg == 0, 0.0, counts["fp"] / np.maximum(neg, 1))
    return tpr, fpr


@dataclass
class VerificationResult:
    """What :func:`verify` measured. Reads like a dict too: ``result["accuracy"]``."""

    accuracy: float  # mean of the per-fold accuracies (InsightFace's "Accuracy-Flip")
    accuracy_std: float  # np.std over folds (population std, as the original)
    fold_accuracies: list[float]
    fold_thresholds: list[float]  # best squared-L2 threshold chosen on each fold's training folds
    num_pairs: int
    num_positive: int
    num_negative: int
    nfolds: int
    # InsightFace's ROC: per-threshold tpr/fpr on each test fold, averaged over folds
    thresholds: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    fpr: np.ndarray = field(repr=False)
    # the pooled ROC over all pairs, and the numbers read from it
    roc: RocCurve = field(repr=False)
    auc: Optional[float] = None
    eer: Optional[float] = None
    tar_at_far: dict[float, Optional[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    @property
    def best_threshold(self) -> float:
        """Median of the per-fold thresholds: one number to use on new pairs (squared L2 distance)."""
        return float(np.median(self.fold_thresholds))

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies,
            "fold_thresholds": self.fold_thresholds,
            "best_threshold": self.best_threshold,
            "best_threshold_cosine": 1.0 - self.best_threshold / 2.0,
            "num_pairs": self.num_pairs,
            "num_positive": self.num_positive,
            "num_negative": self.num_negative,
            "nfolds": self.nfolds,
            "auc": self.auc,
            "eer": self.eer,
            "tar_at_far": {f"{far:.0e}": tar for far, tar in self.tar_at_far.items()},
            "notes": list(self.notes),
        }
        if curves:
            out["insightface_roc"] = {
                "thresholds": self.thresholds.tolist(),
                "tpr": self.tpr.tolist(),
                "fpr": self.fpr.tolist(),
            }
            out["roc"] = self.roc.to_dict()
        return out


def verify(
    embeddings: np.ndarray,
    issame: Sequence[bool],
    nfolds: int = 10,
    far_targets: Sequence[float] = FAR_TARGETS,
) -> VerificationResult:
    """Run InsightFace's verification protocol on ``2 * len(issame)`` embeddings (pairs 2i, 2i+1).

    ``embeddings`` may be raw (flip-summed) network outputs: they are L2-normalised here, exactly as
    InsightFace's ``test`` does before ``evaluate``.
    """
    actual = np.asarray(issame, dtype=bool).reshape(-1)
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] != 2 * actual.size:
        raise FresnetError(
            f"verify needs 2 embeddings per pair: {actual.size} pairs -> {2 * actual.size} rows, "
            f"but embeddings have shape {x.shape}"
        )
    if actual.size == 0:
        raise FresnetError("verify needs at least one pair; the issame list is empty")
    dist = pair_distances(x)
    return verify_distances(dist, actual, nfolds=nfolds, far_targets=far_targets)


def verify_distances(
    dist: np.ndarray,
    issame: Sequence[bool],
    nfolds: int = 10,
    far_targets: Sequence[float] = FAR_TARGETS,
    thresholds: np.ndarray = THRESHOLDS,
) -> VerificationResult:
    """The protocol from precomputed squared-L2 pair distances (``calculate_roc`` + the ROC numbers)."""
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    actual = np.asarray(issame, dtype=bool).reshape(-1)
    if dist.size != actual.size:
        raise FresnetError(f"{dist.size} distances but {actual.size} issame labels; they must match")
    n = actual.size
    folds = kfold_split(n, nfolds)
    thresholds = np.asarray(thresholds, dtype=np.float64)

    # correct[t, i]: pair i classified right at threshold t; fold sums give calculate_accuracy's tp+tn
    correct = (dist[None, :] < thresholds[:, None]) == actual[None, :]
    fold_acc, fold_thr = [], []
    tprs = np.zeros((len(folds), thresholds.size))
    fprs = np.zeros((len(folds), thresholds.size))
    for k, (train, test) in enumerate(folds):
        train_correct = correct[:, train].sum(1)
        # same denominator for every threshold, so integer counts rank exactly as the original's
        # float accuracies; np.argmax keeps the FIRST best threshold, as InsightFace does
        best = int(np.argmax(train_correct))
        tprs[k], fprs[k] = _rates(_confusion_counts(dist[test], actual[test], thresholds))
        fold_acc.append(float(correct[best, test].sum()) / float(test.size))
        fold_thr.append(float(thresholds[best]))

    roc = roc_from_distances(dist, actual)
    notes = []
    tar = {}
    for far in far_targets:
        tar[float(far)] = roc.tar_at_far(far)
    unreachable = [f"{far:.0e}" for far, value in tar.items() if value is None]
    if unreachable and roc.num_negative and roc.num_positive:
        notes.append(
            f"TAR@FAR undefined for FAR {', '.join(unreachable)}: with {roc.num_negative} negative pairs the "
            f"smallest measurable FAR is {1.0 / roc.num_negative:.2g}"
        )
    if not roc.num_negative:
        notes.append("no negative pairs: FAR, AUC, EER and TAR@FAR are undefined")
    if not roc.num_positive:
        notes.append("no positive pairs: TAR, AUC and EER are undefined")
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=fold_acc,
        fold_thresholds=fold_thr,
        num_pairs=n,
        num_positive=int(actual.sum()),
        num_negative=int((~actual).sum()),
        nfolds=len(folds),
        thresholds=thresholds,
        tpr=np.mean(tprs, 0),
        fpr=np.mean(fprs, 0),
        roc=roc,
        auc=roc.auc(),
        eer=roc.eer(),
        tar_at_far=tar,
        notes=notes,
    )


def unique_pack_names(paths: Sequence[str]) -> list[str]:
    """One result name per verification pack, in order: the file's stem (``lfw.bin`` -> ``lfw``).
    Packs whose stems collide are named by the shortest path suffix that tells them apart, joined
    with ``_`` (``mine.bin``, ``sub/mine.bin`` -> ``mine``, ``sub_mine``); a path given twice gets
    ``_2``, ``_3``, ... Used for ``val_*`` columns in training and for ``fresnet eval``'s results."""
    from collections import Counter
    from pathlib import PurePath

    parts = []
    for raw in paths:
        path = PurePath(str(raw))
        named = [p for p in path.with_suffix("").parts if p != path.anchor] if path.name else []
        parts.append(named or [str(raw)])
    depth = [1] * len(parts)

    def names() -> list[str]:
        return ["_".join(p[-d:]) for p, d in zip(parts, depth)]

    while True:
        current = names()
        counts = Counter(current)
        deeper = [i for i, name in enumerate(current) if counts[name] > 1 and depth[i] < len(parts[i])]
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    seen: Counter = Counter()
    out = []
    for name in names():
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
