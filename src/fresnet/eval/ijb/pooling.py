"""From face embeddings to template embeddings, as InsightFace's ``image2template_feature`` does.

The test modes (InsightFace's names): **F1** adds each face's embedding and its mirror's (F0: the
face's only); **N0** L2-normalises each face first (N1 keeps the norm, which says how face-like the
network found it); **D1** multiplies each face by its detector's faceness score. Then the faces of
one media (the frames of a video) are averaged, a template is the sum of its media, and the
template is L2-normalised.

Same numbers, vectorised: InsightFace loops over templates with an ``np.where`` over every face
(minutes for IJB-C). Here the faces are sorted by (template, media) once and each group is summed
in one pass per member position. The per-face steps and the sums run in float32 like theirs: the
features are float32, so their means and sums are too, and summing in float64 instead moves the
final scores by ~3e-8. The sums go member by member in file order, media by media in media-id
order, exactly the order of their ``np.sum(axis=0)`` over a stacked array (a sequential loop in
numpy), so every float32 rounding is the same and the scores agree to ~1e-16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fresnet.errors import FresnetError


@dataclass(frozen=True)
class Mode:
    """One of InsightFace's eight test modes, ``F1N1D1`` by default."""

    flip: bool = True
    norm_score: bool = True
    detector_score: bool = True

    @property
    def name(self) -> str:
        return f"F{int(self.flip)}N{int(self.norm_score)}D{int(self.detector_score)}"

    @classmethod
    def parse(cls, name: str) -> Mode:
        text = name.upper()
        if len(text) != 6 or text[0::2] != "FND" or any(c not in "01" for c in text[1::2]):
            raise FresnetError(f"unknown IJB test mode {name!r}; modes look like F1N1D1 (flip, norm, detector: 1 or 0)")
        return cls(text[1] == "1", text[3] == "1", text[5] == "1")

    def face_features(self, rows: np.ndarray, faceness: np.ndarray, mirrored: bool) -> np.ndarray:
        """The per-face vectors of InsightFace's ``img_input_feats``: float32 (n, D)."""
        rows = np.asarray(rows, dtype=np.float32)
        half = rows.shape[1] // 2
        if self.flip:
            x = rows[:, :half] + rows[:, half:]
        elif mirrored:
            x = np.array(rows[:, :half])
        else:
            x = np.array(rows)
        # in place, the same float32 operations as InsightFace's x = x / ... and x = x * ...
        if not self.norm_score:
            x /= np.sqrt(np.sum(x ** 2, -1, keepdims=True))
        if self.detector_score:
            x *= faceness[:, np.newaxis]
        return x


@dataclass(frozen=True)
class TemplateGroups:
    """Faces grouped by (template, media): the order of every sum."""

    templates: np.ndarray  # sorted unique template ids
    face_order: np.ndarray  # face indices sorted by (template, media), file order within a media
    media_starts: np.ndarray  # each media's first position in face_order
    media_sizes: np.ndarray
    template_starts: np.ndarray  # each template's first media (index into the media arrays)
    template_sizes: np.ndarray  # media per template

    @property
    def face_counts(self) -> np.ndarray:
        """Faces per template."""
        ends = np.r_[self.media_starts, len(self.face_order)]
        return ends[self.template_starts + self.template_sizes] - ends[self.template_starts]


def group_faces(templates: np.ndarray, medias: np.ndarray) -> TemplateGroups:
    """Sort the faces by template, then media (``np.unique``'s order), keeping file order within."""
    templates, medias = np.asarray(templates), np.asarray(medias)
    order = np.lexsort((medias, templates))  # stable: equal keys keep file order
    t, m = templates[order], medias[order]
    new_media = np.r_[True, (t[1:] != t[:-1]) | (m[1:] != m[:-1])] if len(t) else np.zeros(0, bool)
    media_starts = np.flatnonzero(new_media)
    media_sizes = np.diff(np.r_[media_starts, len(t)])
    media_templates = t[media_starts]
    new_template = np.r_[True, media_templates[1:] != media_templates[:-1]] if len(media_starts) else np.zeros(0, bool)
    template_starts = np.flatnonzero(new_template)
    template_sizes = np.diff(np.r_[template_starts, len(media_starts)])
    return TemplateGroups(
        media_templates[template_starts], order, media_starts, media_sizes, template_starts, template_sizes
    )


def sequential_sums(rows: Callable[[np.ndarray], np.ndarray], starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``out[g] = rows(s) + rows(s + 1) + ...`` over each group's ``sizes[g]`` positions, added
    left to right in float32: the rounding of ``np.sum(stacked, axis=0)``.

    Groups are processed longest first, so the ones still adding at step j are a prefix: one
    vectorised ``+=`` per step, as many steps as the longest group.
    """
    order = np.argsort(-sizes, kind="stable")
    first, length = starts[order], sizes[order]
    acc = np.array(rows(first), dtype=np.float32)
    descending = -length
    for j in range(1, int(length[0]) if len(length) else 0):
        active = int(np.searchsorted(descending, -j, side="left"))  # groups longer than j
        acc[:active] += rows(first[:active] + j)
    out = np.empty_like(acc)
    out[order] = acc
    return out


def pool_templates(
    features: np.ndarray,
    faceness: np.ndarray,
    groups: TemplateGroups,
    mode: Mode,
    mirrored: bool,
    chunk_faces: int = 65536,
) -> np.ndarray:
    """Unnormalised template embeddings, float64 (templates, D), in ``groups.templates`` order.

    Works through the templates a chunk at a time (about ``chunk_faces`` faces), so the memory
    beyond ``features`` stays small; ``features`` may be a memory-mapped array.
    """
    faceness = np.asarray(faceness, dtype=np.float32)
    width = features.shape[1]
    dim = width // 2 if (mode.flip or mirrored) else width
    media_ends = np.r_[groups.media_starts, len(groups.face_order)]
    template_face_start = media_ends[groups.template_starts]
    out = np.empty((len(groups.templates), dim), dtype=np.float64)

    def face_rows(positions: np.ndarray) -> np.ndarray:
        index = groups.face_order[positions]
        return mode.face_features(features[index], faceness[index], mirrored)

    first = 0
    while first < len(groups.templates):
        # the next templates holding about chunk_faces faces (at least one template)
        limit = template_face_start[first] + chunk_faces
        last = max(first + 1, int(np.searchsorted(template_face_start, limit, side="right")))
        media = slice(groups.template_starts[first], groups.template_starts[last - 1] + groups.template_sizes[last - 1])
        sums = sequential_sums(face_rows, groups.media_starts[media], groups.media_sizes[media])
        sizes = groups.media_sizes[media]
        means = np.where((sizes > 1)[:, None], sums / sizes[:, None].astype(np.float32), sums)
        local_starts = groups.template_starts[first:last] - media.start
        out[first:last] = sequential_sums(means.__getitem__, local_starts, groups.template_sizes[first:last])
        first = last
    return out


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """``sklearn.preprocessing.normalize``: rows over their L2 norm, a zero row stays zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, np.newaxis]


def check_features(features: np.ndarray, num_faces: int, mode: Mode, mirrored: bool, source: str) -> None:
    """Shape checks with messages that say what layout is expected."""
    if features.ndim != 2:
        raise FresnetError(f"features must be a 2-D array (faces, dims), got shape {features.shape}")
    if features.shape[0] != num_faces:
        raise FresnetError(
            f"features have {features.shape[0]} rows but {source} lists {num_faces} faces; "
            "give one row per line of that file, in its order"
        )
    if (mode.flip or mirrored) and features.shape[1] % 2:
        raise FresnetError(
            f"features have {features.shape[1]} columns, but each row should be the face's embedding then its "
            "mirror's (2*D columns, InsightFace's layout); for single (faces, D) embeddings say so: flip=False, "
            "mirrored=False (--no-flip --features-layout single)"
        )
    if not np.issubdtype(features.dtype, np.floating):
        raise FresnetError(f"features must be floating point, got {features.dtype}")
