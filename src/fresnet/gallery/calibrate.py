"""Thresholds from data: the cosine at which a gallery's false-match rate meets a target.

Two sources, both measured with fresnet's own evaluation code:

* a verification pack (``lfw.bin``-style pairs): the pooled ROC of the pairs
  (:mod:`fresnet.eval.roc`); the threshold is the one of its TAR@FAR operating point, so the
  pairs' false-match rate is at most the target (accept ``cosine >= threshold``);
* an IJB-B/IJB-C release with saved features: the open-set TPIR@FPIR of one of its galleries
  (:mod:`fresnet.eval.ijb`); the threshold is the one the standard metric reads at that FPIR.

The result is stored in the gallery (``Gallery.set_calibration``) with its provenance: where the
numbers came from (file, digest), the model, the method, the measured rates, and when.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np

from fresnet.gallery.contract import file_digest
from fresnet.gallery.errors import GalleryError


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def threshold_from_pairs(similarities: np.ndarray, issame: np.ndarray, target_fmr: float) -> dict[str, Any]:
    """The lowest cosine threshold whose false-match rate over these pairs is at most ``target_fmr``
    (from the pooled ROC), with the rates measured there."""
    from fresnet.eval.roc import roc_from_distances

    similarities = np.asarray(similarities, np.float64).reshape(-1)
    same = np.asarray(issame, bool).reshape(-1)
    if len(similarities) != len(same) or not len(same):
        raise GalleryError(f"calibration: {len(similarities)} scores for {len(same)} labels")
    roc = roc_from_distances(2.0 - 2.0 * similarities, same)  # squared distance of unit vectors
    distance = roc.threshold_at_far(target_fmr)
    if distance is None:
        raise GalleryError(
            f"calibration: a false-match rate of {target_fmr:g} cannot be measured with {roc.num_negative:,} "
            f"impostor pairs (the smallest measurable is 1/{roc.num_negative:,}); use a larger pack or a higher "
            "--fmr")
    threshold = float(1.0 - distance / 2.0)
    accepted = similarities >= threshold
    return {
        "threshold": threshold,
        "target_false_match_rate": float(target_fmr),
        "false_match_rate": float(np.mean(accepted[~same])) if (~same).any() else None,
        "true_match_rate": float(np.mean(accepted[same])) if same.any() else None,
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
    }


def calibrate_verification_pack(embedder: Any, pack: str | os.PathLike, target_fmr: float,
                                flip: bool = True, batch_size: int = 64,
                                model_digest: str | None = None) -> dict[str, Any]:
    """Embed a verification pack with ``embedder`` and calibrate on its pairs."""
    from fresnet.data.verification_bin import load_bin
    from fresnet.eval.embed import embed_images

    images, issame = load_bin(pack, image_size=tuple(embedder.input_size))
    embeddings = embed_images(embedder, images, batch_size=batch_size, flip=flip)
    embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarities = np.einsum("nd,nd->n", embeddings[0::2], embeddings[1::2])
    result = threshold_from_pairs(similarities, np.asarray(issame, bool), target_fmr)
    return {**result, "method": "verification pairs, pooled ROC (fresnet.eval.roc)",
            "source": str(Path(pack)), "source_digest": file_digest(pack), "flip": bool(flip),
            "model": getattr(embedder, "name", ""), "model_digest": model_digest, "calibrated": _now()}


def calibrate_ijb(root: str | os.PathLike, features: str | os.PathLike, target_fpir: float,
                  release: str = "IJBC", ijb_gallery: str | None = None,
                  model_digest: str | None = None) -> dict[str, Any]:
    """The open-set threshold of an IJB release at ``target_fpir`` (one of
    :data:`fresnet.eval.ijb.identification.FPIR_LABELS`), from its saved per-face features."""
    from fresnet.eval.ijb.identification import FPIR_LABELS
    from fresnet.eval.ijb.protocol import evaluate

    matching = [f for f in FPIR_LABELS if abs(f - target_fpir) <= 1e-12]
    if not matching:
        raise GalleryError(f"IJB calibration reads the open-set metric at FPIR {', '.join(map(str, FPIR_LABELS))}; "
                           f"got {target_fpir:g}")
    result = evaluate(root, features, target=release)
    if result.tpir_at_fpir is None:
        raise GalleryError(f"{root}: this {release} release has no 1:N (identification) files")
    name = ijb_gallery or min(result.tpir_at_fpir)
    if name not in result.tpir_at_fpir:
        raise GalleryError(f"{root}: no gallery {name!r}; it has {', '.join(sorted(result.tpir_at_fpir))}")
    reading = result.tpir_at_fpir[name][matching[0]]
    if reading is None:
        raise GalleryError(f"{root}: TPIR@FPIR={target_fpir:g} is undefined for gallery {name} (no mated or "
                           "no non-mated probes)")
    tpir, threshold = reading
    # the metric accepts scores strictly above its threshold; the gallery's threshold is inclusive
    inclusive = float(np.nextafter(np.float32(threshold), np.float32(np.inf)))
    return {"threshold": inclusive, "target_false_positive_identification_rate": float(target_fpir),
            "true_positive_identification_rate": float(tpir), "method": f"{release} open-set TPIR@FPIR, gallery "
            f"{name} (fresnet.eval.ijb)", "source": str(Path(root)), "features": str(Path(features)),
            "source_digest": file_digest(features), "model_digest": model_digest, "calibrated": _now()}
