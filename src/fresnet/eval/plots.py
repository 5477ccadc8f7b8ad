"""Pictures of verification results: ROC curves of several targets and pair-distance histograms.

matplotlib runs on the Agg backend (no display needed); files are written atomically.
"""
from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from fresnet.eval.verification import VerificationResult
from fresnet.ioutil import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_roc(
    results: Mapping[str, VerificationResult], path: str | os.PathLike, title: str = "Verification ROC"
) -> None:
    """One figure, two panels (linear FPR, and log FPR for the low-FAR end), one curve per target.

    ``results`` maps a label (``"lfw"``, ``"trained / holdout"``) to its result.
    """
    plt = _pyplot()
    fig, (ax_lin, ax_log) = plt.subplots(1, 2, figsize=(11, 4.6))
    for label, result in results.items():
        roc = result.roc
        if not roc.num_positive or not roc.num_negative:
            continue  # a curve needs both kinds of pairs
        auc = result.auc
        name = f"{label} (acc {result.accuracy:.4f}, AUC {auc:.4f})"
        fpr, tpr = roc.fpr, roc.tpr
        ax_lin.plot(fpr, tpr, drawstyle="steps-post", label=name)
        positive = fpr > 0
        if positive.any():
            ax_log.plot(fpr[positive], tpr[positive], drawstyle="steps-post", label=label)
    ax_lin.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    ax_lin.set(xlabel="false accept rate (FPR)", ylabel="true accept rate (TPR)", xlim=(0, 1), ylim=(0, 1.01))
    ax_lin.set_title(title)
    ax_log.set_xscale("log")
    ax_log.set(xlabel="false accept rate (log)", ylabel="true accept rate", ylim=(0, 1.01))
    ax_log.set_title("low-FAR end")
    for ax in (ax_lin, ax_log):
        ax.grid(True, alpha=0.3)
    if ax_lin.lines[:-1]:
        ax_lin.legend(loc="lower right", fontsize=8)
    else:
        ax_lin.text(0.5, 0.5, "no target has both positive and negative pairs", ha="center", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def plot_distance_histograms(
    distances: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, threshold: float | None = None
) -> None:
    """Histograms of squared-L2 pair distances, same vs different pairs, one panel per label.

    ``distances`` maps a label to ``(dist, issame)``.
    """
    plt = _pyplot()
    n = max(1, len(distances))
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    bins = np.linspace(0, 4, 41)
    for ax, (label, (dist, same)) in zip(axes[0], distances.items()):
        same = np.asarray(same, dtype=bool)
        ax.hist(dist[same], bins=bins, alpha=0.6, label="same identity")
        ax.hist(dist[~same], bins=bins, alpha=0.6, label="different identity")
        if threshold is not None:
            ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
        ax.set(title=label, xlabel="squared L2 distance of normalised embeddings", ylabel="pairs")
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_ijb_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float, float]], path: str | os.PathLike,
                 title: str = "IJB 1:1 verification") -> None:
    """ROC curves of IJB evaluations on a log-FAR axis (1e-6 .. 1), InsightFace's picture.

    ``curves`` maps a label to ``(fpr, tpr, auc, tar_at_1e-4)``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, (fpr, tpr, auc, tar) in curves.items():
        positive = fpr > 0
        # the points are the ROC's corners (scikit-learn drops collinear ones): straight lines between them
        ax.plot(fpr[positive], tpr[positive],
                label=f"{label} (TAR@FAR=1e-4 {100 * tar:.2f}%, AUC {100 * auc:.2f}%)")
    ax.set_xscale("log")
    ax.set(xlim=(1e-6, 1), ylim=(0, 1.01), xlabel="false accept rate (log)", ylabel="true accept rate", title=title)
    ax.set_xticks([10.0 ** -k for k in range(6, -1, -1)])
    ax.grid(True, which="major", linestyle="--", alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)
