"""``evaluate(root, features) -> IJBResult``: the IJB-B / IJB-C protocol from per-face features."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.ijb.identification import IdentificationNumbers, identify
from fresnet.eval.ijb.layout import IJBMeta, read_meta
from fresnet.eval.ijb.pooling import (
    Mode,
    check_features,
    group_faces,
    l2_normalize_rows,
    pool_templates,
)
from fresnet.eval.ijb.verification import (
    pair_scores,
    template_index,
    verification_numbers,
)
from fresnet.timing import Timing

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class IJBResult:
    """The numbers of one IJB evaluation (see docs/evaluation.md for each definition).

    * ``tar_at_far``: ``{1e-6: tar, ..., 1e-1: tar}``, InsightFace's nearest-FPR reading of the ROC;
    * ``auc``; ``scores``: one per pair, in the pair file's order; ``labels``; ``roc``: (fpr, tpr);
    * ``top_k``: ``{1, 5, 10: accuracy}`` over the merged gallery; ``tpir_at_fpir_insightface``:
      ``{0.01, 0.1: (tpir, threshold)}`` as ``ijb_1n.py`` computes them;
    * ``tpir_at_fpir``: the standard open-set metric per gallery, ``{"G1": {0.01: (tpir, threshold),
      0.1: ...}, "G2": ...}`` (IJB-B: S1, S2); ``None`` where undefined.

    The identification fields are ``None`` for a release without 1:N files.
    """

    target: str
    mode: str
    tar_at_far: dict[float, float]
    auc: float
    scores: np.ndarray
    labels: np.ndarray
    roc: tuple[np.ndarray, np.ndarray]
    top_k: Optional[dict[int, float]]
    tpir_at_fpir_insightface: Optional[dict[float, Optional[tuple[float, float]]]]
    tpir_at_fpir: Optional[dict[str, dict[float, Optional[tuple[float, float]]]]]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-pair scores and the curve, JSON-ready (FAR keys as strings)."""

        def pair(value):
            return None if value is None else {"tpir": value[0], "threshold": value[1]}

        return {
            "target": self.target,
            "mode": self.mode,
            "verification": {
                "tar_at_far": {f"{far:g}": tar for far, tar in self.tar_at_far.items()},
                "auc": self.auc,
                "pairs": int(len(self.scores)),
                "genuine_pairs": int(np.count_nonzero(self.labels == 1)),
            },
            "identification": None if self.top_k is None else {
                "top_k": {str(k): v for k, v in self.top_k.items()},
                "tpir_at_fpir_insightface": {f"{f:g}": pair(v) for f, v in self.tpir_at_fpir_insightface.items()},
                "tpir_at_fpir": {
                    name: {f"{f:g}": pair(v) for f, v in per.items()} for name, per in self.tpir_at_fpir.items()
                },
            },
            "counts": dict(self.counts),
            "seconds": dict(self.seconds),
            "notes": list(self.notes),
        }


def _as_features(features: Union[np.ndarray, PathLike]) -> np.ndarray:
    if isinstance(features, (str, os.PathLike)):
        path = Path(features)
        if not path.is_file():
            raise FresnetError(f"{path}: no such features file (a .npy of shape (faces, 2*D))")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FresnetError(f"{path}: not a .npy array ({exc})") from None
    return np.asarray(features) if not isinstance(features, np.ndarray) else features


def evaluate(
    root: Union[PathLike, IJBMeta],
    features: Union[np.ndarray, PathLike],
    *,
    target: str = "IJBC",
    flip: bool = True,
    norm_score: bool = True,
    detector_score: bool = True,
    mirrored: Optional[bool] = None,
) -> IJBResult:
    """The IJB protocol on per-face features, with InsightFace's numbers exactly.

    ``features``: float (faces, 2*D), each face's embedding then its mirror's, in the order of
    ``meta/*_name_5pts_score.txt`` (a ``.npy`` path is memory-mapped); or (faces, D) with
    ``flip=False``. ``flip``/``norm_score``/``detector_score`` are InsightFace's F/N/D switches.
    ``mirrored`` says whether the rows hold the mirror's half (default: ``flip``); with
    ``flip=False, mirrored=True`` only the first half is used, as InsightFace's F0 does.
    ``root`` may also be an :class:`IJBMeta` already read (to evaluate several feature sets).
    """
    watch = Timing.start()
    clock = {"start": 0.0}  # seconds since the start, at the end of each step
    meta = root if isinstance(root, IJBMeta) else read_meta(root, target)
    clock["read_meta"] = watch.wall
    mode = Mode(flip, norm_score, detector_score)
    mirrored = flip if mirrored is None else bool(mirrored)
    if flip and not mirrored:
        raise FresnetError("flip=True needs features holding each face's mirror too (mirrored=True)")
    feats = _as_features(features)
    faces = meta.faces
    check_features(feats, len(faces), mode, mirrored, str(faces.landmarks_path))

    groups = group_faces(faces.templates, faces.medias)
    templates = l2_normalize_rows(pool_templates(feats, faces.faceness, groups, mode, mirrored))
    clock["templates"] = watch.wall

    pairs = meta.pairs
    first, found_first = template_index(groups.templates, pairs.first)
    second, found_second = template_index(groups.templates, pairs.second)
    unknown = np.flatnonzero(~(found_first & found_second))
    if unknown.size:
        from fresnet.eval.ijb.layout import line_of_row

        row = int(unknown[0])
        template = pairs.first[row] if not found_first[row] else pairs.second[row]
        raise FresnetError(
            f"{pairs.path}: line {line_of_row(pairs.path, row)}: template {template} is not in {faces.path} "
            "(no face belongs to it); are the pair list and the face list from the same release?"
        )
    ident: Optional[IdentificationNumbers] = None
    scores = None
    if meta.galleries is not None and meta.probes is not None:
        ident, scores = identify(templates, groups.templates, meta.galleries, meta.probes, pairs=(first, second))
        clock["identification"] = watch.wall
    if scores is None:
        scores = pair_scores(templates, first, second)
        clock["pair_scores"] = watch.wall
    numbers = verification_numbers(scores, pairs.labels, str(pairs.path))
    clock["roc"] = watch.wall

    counts = {
        "faces": len(faces),
        "templates": len(groups.templates),
        "media": len(groups.media_sizes),
        "pairs": len(pairs),
        "genuine_pairs": int(np.count_nonzero(pairs.labels == 1)),
        "embedding_size": int(templates.shape[1]),
    }
    if ident is not None:
        counts.update(probes=ident.num_probes, gallery_templates=ident.num_gallery,
                      **{f"mated_probes_{name}": n for name, n in ident.mated_per_gallery.items()})
    steps = list(clock)
    seconds = {step: clock[step] - clock[prev] for prev, step in zip(steps, steps[1:])}
    return IJBResult(
        target=meta.paths.target,
        mode=mode.name,
        tar_at_far=numbers.tar_at_far,
        auc=numbers.auc,
        scores=scores,
        labels=pairs.labels,
        roc=(numbers.fpr, numbers.tpr),
        top_k=None if ident is None else ident.top_k,
        tpir_at_fpir_insightface=None if ident is None else ident.tpir_at_fpir_insightface,
        tpir_at_fpir=None if ident is None else ident.tpir_at_fpir,
        counts=counts,
        seconds=seconds,
        notes=list(meta.notes),
    )
