"""Synthetic IJB-format sets: the meta files of an IJB-B / IJB-C release and, optionally, loose-crop
pictures of synthetic faces (:mod:`fresnet.data.synthetic`), so the whole protocol runs offline at
any size, up to the real one.

The structure follows IJB-C's: every subject has one gallery template (the subjects split between
G1 and G2, IJB-B: S1 and S2) and some probe templates; templates hold still images and video frames
(several faces sharing one media id); the 1:1 pairs join gallery templates to probe templates, one
genuine pair per probe (almost) and the rest impostors. At ``faces`` = 469,375 (IJB-C) or 227,630
(IJB-B) every count is the real one; other sizes scale them.

Each picture is a rendered 112x112 face placed into a larger loose crop by a random similarity
(scale, rotation, shift); the landmarks are the ArcFace template points carried by the same
transform, so aligning the crop gives back the rendered face.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.ijb.layout import TARGETS, FaceTable, IJBMeta, PairTable, TemplateList, check_target, ijb_paths

PathLike = Union[str, os.PathLike]
_META_STREAM, _PICTURE_STREAM = 7321, 7322  # random streams apart from fresnet.data.synthetic's


@dataclass(frozen=True)
class IJBSizes:
    faces: int
    templates: int
    subjects: int  # = gallery templates, one per subject
    first_gallery: int  # subjects in G1 (S1); the rest are in G2 (S2)
    pairs: int
    genuine: int

    @property
    def probes(self) -> int:
        return self.templates - self.subjects


# the real releases as InsightFace's meta files describe them
REAL_SIZES = {
    "IJBC": IJBSizes(faces=469_375, templates=23_124, subjects=3_531, first_gallery=1_772, pairs=15_658_489, genuine=19_557),
    "IJBB": IJBSizes(faces=227_630, templates=12_115, subjects=1_845, first_gallery=931, pairs=8_010_270, genuine=10_270),
}


def sizes_for(faces: int, target: str = "IJBC") -> IJBSizes:
    """The real counts at the real size; otherwise the real proportions, with a floor that keeps a
    tiny set meaningful (at least 3 subjects, 2 probes per subject)."""
    real = REAL_SIZES[check_target(target)]
    if faces == real.faces:
        return real
    if faces < 12:
        raise FresnetError(f"a synthetic IJB set needs at least 12 faces, got {faces}")
    templates = min(faces, max(9, round(faces * real.templates / real.faces)))
    subjects = max(3, min(templates // 3, round(templates * real.subjects / real.templates)))
    probes = templates - subjects
    impostors_per_probe = (real.pairs - real.genuine) / (real.probes * (real.subjects - 1))
    impostors = max(probes, round(probes * (subjects - 1) * impostors_per_probe))
    genuine = max(1, round(probes * real.genuine / real.probes))
    first = max(1, round(subjects * real.first_gallery / real.subjects))
    # the pairs grow with probes x subjects, quadratically in the faces: a typo of a few digits in
    # --faces asks for terabytes of pair table (three int64 per pair)
    from fresnet.limits import check

    check("max_tensor_bytes", (impostors + genuine) * 3 * 8,
          f"a synthetic IJB set of {faces:,} faces ({impostors + genuine:,} pairs)")
    return IJBSizes(faces, templates, subjects, min(first, subjects - 1), impostors + genuine, genuine)


@dataclass(frozen=True)
class SyntheticIJB:
    """A synthetic release in memory: per-face arrays in file order, pairs in file order, 1:N lists."""

    target: str
    sizes: IJBSizes
    seed: int
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    subjects: np.ndarray  # of each face (truth, not in any file)
    landmarks: np.ndarray  # float32 (faces, 5, 2), two decimals as in the real file
    faceness: np.ndarray  # float32, six decimals
    crops: np.ndarray  # float64 (faces, 4): loose-crop width, height, and the face's scale and angle
    pair_first: np.ndarray
    pair_second: np.ndarray
    pair_labels: np.ndarray
    gallery_templates: dict[str, np.ndarray]  # gallery name -> its template ids
    probe_templates: np.ndarray
    template_subject: dict[int, int]

    def list_rows(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CSV rows of a 1:N list: one per face of each template (template, subject, face index)."""
        chosen = np.flatnonzero(np.isin(self.templates, templates))
        chosen = chosen[np.argsort(self.templates[chosen], kind="stable")]
        subjects = np.array([self.template_subject[int(t)] for t in self.templates[chosen]], dtype=np.int64)
        return self.templates[chosen], subjects, chosen

    def to_meta(self, root: PathLike = "synthetic") -> IJBMeta:
        """The same set as :func:`~fresnet.eval.ijb.layout.read_meta` would read it from disk."""
        paths = ijb_paths(root, self.target)
        faces = FaceTable(paths.faces, paths.landmarks, np.array(self.names), self.templates, self.medias,
                          self.landmarks, self.faceness)
        pairs = PairTable(paths.pairs, self.pair_first, self.pair_second, self.pair_labels)

        def lst(path: Path, templates: np.ndarray) -> TemplateList:
            t, s, _ = self.list_rows(templates)
            return TemplateList(path, t, s, np.arange(2, len(t) + 2))

        galleries = {name: lst(paths.galleries[name], t) for name, t in self.gallery_templates.items()}
        return IJBMeta(paths, faces, pairs, galleries, lst(paths.probes, self.probe_templates))


def synthetic_ijb(faces: int, target: str = "IJBC", seed: int = 0) -> SyntheticIJB:
    """A synthetic release's metadata (no pictures): fast, vectorised, deterministic in ``seed``."""
    target = check_target(target)
    sizes = sizes_for(faces, target)
    rng = np.random.default_rng([seed, _META_STREAM, faces])
    T, S = sizes.templates, sizes.subjects
    template_ids = np.sort(rng.choice(np.arange(1, 4 * T + 1), size=T, replace=False))
    rng.shuffle(template_ids)
    # the first S templates are the galleries (subject i), the rest probes: each subject at least one
    subject_ids = 1000 + np.arange(S)
    probe_subject = np.r_[np.arange(S), rng.integers(0, S, sizes.probes - S)]  # sizes_for keeps probes >= 2 S
    rng.shuffle(probe_subject)
    template_subject_index = np.r_[np.arange(S), probe_subject]

    # faces per template: at least one, the rest spread with a heavy tail (some long videos)
    weights = rng.lognormal(0.0, 1.0, T)
    per_template = 1 + rng.multinomial(sizes.faces - T, weights / weights.sum())
    # media inside each template: stills (one face) and video clips (several frames)
    media_of_face = np.empty(sizes.faces, dtype=np.int64)
    template_of_face = np.repeat(np.arange(T), per_template)
    pos = 0
    next_media = 0
    for count in per_template:
        left = int(count)
        while left:
            size = 1 if rng.random() < 0.55 else min(left, 2 + int(rng.geometric(0.12)))
            media_of_face[pos:pos + size] = next_media
            pos += size
            left -= size
            next_media += 1
    media_ids = rng.choice(np.arange(1, 8 * max(next_media, 1) + 1), size=next_media, replace=False)
    # file order: templates in random order, each template's faces shuffled (media interleave)
    template_order = rng.permutation(T)
    starts = np.r_[0, np.cumsum(per_template)[:-1]]
    order = np.concatenate([starts[t] + rng.permutation(per_template[t]) for t in template_order])
    templates = template_ids[template_of_face[order]]
    medias = media_ids[media_of_face[order]]
    subjects = subject_ids[template_subject_index[template_of_face[order]]]
    names = [f"{i}.jpg" for i in range(1, sizes.faces + 1)]

    # loose crops: the face scaled (px per template px), rotated, shifted inside a larger crop
    scale = rng.uniform(0.9, 2.0, sizes.faces)
    angle = rng.uniform(-0.3, 0.3, sizes.faces)
    side = np.ceil(112 * scale * rng.uniform(1.25, 1.6, sizes.faces))
    crops = np.stack([side, side, scale, angle], 1)
    from fresnet.faces.align import ARCFACE_DST

    centre = side[:, None] / 2 + rng.uniform(-0.08, 0.08, (sizes.faces, 2)) * side[:, None]
    cos, sin = np.cos(angle), np.sin(angle)
    rel = ARCFACE_DST[None] - 56.0
    x = scale[:, None] * (cos[:, None] * rel[..., 0] - sin[:, None] * rel[..., 1]) + centre[:, :1]
    y = scale[:, None] * (sin[:, None] * rel[..., 0] + cos[:, None] * rel[..., 1]) + centre[:, 1:]
    landmarks = np.round(np.stack([x, y], -1), 2).astype(np.float32)
    faceness = np.round(rng.uniform(0.45, 1.0, sizes.faces), 6).astype(np.float32)

    # pairs: (gallery template, probe template); one genuine pair for `genuine` probes, impostors spread evenly
    gallery_of_subject = template_ids[:S]
    probe_ids = template_ids[S:]
    impostors = sizes.pairs - sizes.genuine
    per_probe = np.full(sizes.probes, impostors // sizes.probes)
    per_probe[rng.choice(sizes.probes, impostors % sizes.probes, replace=False)] += 1
    if per_probe.max(initial=0) > S - 1:
        raise FresnetError(f"{impostors} impostor pairs do not fit {sizes.probes} probes x {S - 1} other subjects")
    first, second = [], []
    for p in range(sizes.probes):
        others = rng.choice(S - 1, per_probe[p], replace=False)
        others += others >= probe_subject[p]  # skip the probe's own subject
        first.append(gallery_of_subject[others])
        second.append(np.full(per_probe[p], probe_ids[p]))
    genuine = rng.choice(sizes.probes, sizes.genuine, replace=False)
    first.append(gallery_of_subject[probe_subject[genuine]])
    second.append(probe_ids[genuine])
    pair_first, pair_second = np.concatenate(first), np.concatenate(second)
    labels = np.r_[np.zeros(impostors, np.int8), np.ones(sizes.genuine, np.int8)]
    shuffle = rng.permutation(len(labels))

    galleries = dict(zip(TARGETS[target], (gallery_of_subject[:sizes.first_gallery], gallery_of_subject[sizes.first_gallery:])))
    template_subject = {int(t): int(subject_ids[s]) for t, s in zip(template_ids, template_subject_index)}
    return SyntheticIJB(target, sizes, seed, names, templates, medias, subjects, landmarks, faceness, crops,
                        pair_first[shuffle], pair_second[shuffle], labels[shuffle], galleries, probe_ids,
                        template_subject)


# --------------------------------------------------------------------------------------------------
# writing a release to disk


def _lines(*columns) -> Iterable[str]:
    return (" ".join(map(str, row)) + "\n" for row in zip(*columns))


def _write_chunks(path: Path, lines: Iterable[str], chunk: int = 1 << 20) -> None:
    from fresnet.ioutil import atomic_write

    with atomic_write(path, "w") as handle:
        buffer: list[str] = []
        for line in lines:
            buffer.append(line)
            if len(buffer) >= chunk:
                handle.write("".join(buffer))
                buffer.clear()
        handle.write("".join(buffer))


def write_meta(ijb: SyntheticIJB, root: PathLike) -> None:
    """The meta files of ``ijb`` under ``root/meta`` (each written atomically)."""
    paths = ijb_paths(root, ijb.target)
    _write_chunks(paths.faces, _lines(ijb.names, ijb.templates.tolist(), ijb.medias.tolist()))
    points = [" ".join(f"{v:.2f}" for v in row) for row in ijb.landmarks.reshape(-1, 10).tolist()]
    _write_chunks(paths.landmarks, _lines(ijb.names, points, [f"{v:.6f}" for v in ijb.faceness.tolist()]))
    pair_text = map("{} {} {}\n".format, ijb.pair_first.tolist(), ijb.pair_second.tolist(), ijb.pair_labels.tolist())
    _write_chunks(paths.pairs, pair_text)
    lists = {**{paths.galleries[name]: t for name, t in ijb.gallery_templates.items()}, paths.probes: ijb.probe_templates}
    for path, templates in lists.items():
        t, s, faces = ijb.list_rows(templates)
        rows = (f"{a},{b},img/{ijb.names[f]}\n" for a, b, f in zip(t.tolist(), s.tolist(), faces.tolist()))
        _write_chunks(path, ["TEMPLATE_ID,SUBJECT_ID,FILENAME\n", *rows])


def render_loose_crops(ijb: SyntheticIJB, faces: np.ndarray) -> list[bytes]:
    """JPEG loose crops of the given faces (indices in file order)."""
    from PIL import Image

    from fresnet.data.decode import encode_jpeg
    from fresnet.data.synthetic import identity_params, image_params, render

    seed = ijb.seed
    ids = [identity_params(seed, int(ijb.subjects[f])) for f in faces]
    ims = [image_params(seed, int(ijb.subjects[f]), int(f)) for f in faces]
    rendered = render(ids, ims, 112)
    out = []
    for face, picture in zip(faces, rendered):
        width, height, scale, angle = ijb.crops[face]
        landmarks = ijb.landmarks[face].astype(np.float64)
        # the similarity from the 112 face to the crop, fitted to the (rounded) landmarks, inverted
        # for PIL, whose affine maps output to input in pixel-corner coordinates
        from fresnet.faces.align import ARCFACE_DST, umeyama

        forward = umeyama(ARCFACE_DST, landmarks)
        inverse = np.linalg.inv(forward)
        shift = inverse[:2, :2] @ [0.5, 0.5]
        coeffs = np.r_[inverse[0, :2], inverse[0, 2] - shift[0] + 0.5, inverse[1, :2], inverse[1, 2] - shift[1] + 0.5]
        background = tuple(int(v) for v in picture[:4, :4].reshape(-1, 3).mean(0))
        crop = Image.fromarray(picture).transform(
            (int(width), int(height)), Image.AFFINE, data=tuple(coeffs), resample=Image.BILINEAR, fillcolor=background
        )
        out.append(encode_jpeg(np.asarray(crop), quality=90))
    return out


def _write_pictures(args: tuple[SyntheticIJB, str, np.ndarray]) -> int:
    ijb, folder, faces = args
    for face, data in zip(faces, render_loose_crops(ijb, faces)):
        with open(os.path.join(folder, ijb.names[face]), "wb") as handle:
            handle.write(data)
    return len(faces)


def write_synthetic_ijb(
    out: PathLike,
    faces: int,
    target: str = "IJBC",
    seed: int = 0,
    pictures: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    distinct_pictures: Optional[int] = None,
) -> SyntheticIJB:
    """Write a synthetic release to ``out`` (``meta/`` and, with ``pictures``, ``loose_crop/``).

    ``progress(n)`` is called as pictures are written; ``workers`` processes render them.
    ``distinct_pictures=K`` renders only K pictures and gives face i the picture (and landmarks) of
    face i % K: for extraction-speed benchmarks, where rendering would take longer than the run.
    """
    out = Path(out)
    paths = ijb_paths(out, target)
    if paths.faces.exists() and not overwrite:
        raise FresnetError(f"{paths.faces} already exists; choose another folder or pass overwrite=True (--overwrite)")
    ijb = synthetic_ijb(faces, target, seed)
    paths.meta.mkdir(parents=True, exist_ok=True)
    if pictures:
        paths.images.mkdir(parents=True, exist_ok=True)
        rendered = faces
        if distinct_pictures is not None and distinct_pictures < faces:
            rendered = max(1, int(distinct_pictures))
            source = np.arange(faces) % rendered
            ijb = dataclasses.replace(ijb, landmarks=ijb.landmarks[source], crops=ijb.crops[source])
        chunks = [np.arange(s, min(s + 64, rendered)) for s in range(0, rendered, 64)]
        jobs = [(ijb, str(paths.images), c) for c in chunks]
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for done in pool.map(_write_pictures, jobs):
                    if progress is not None:
                        progress(done)
        else:
            for job in jobs:
                done = _write_pictures(job)
                if progress is not None:
                    progress(done)
        copies = faces - rendered
        for face in range(rendered, faces):  # copies of the rendered pictures
            data = (paths.images / ijb.names[face % rendered]).read_bytes()
            (paths.images / ijb.names[face]).write_bytes(data)
            if progress is not None and (face - rendered + 1) % 1024 == 0:
                progress(1024)
        if progress is not None and copies % 1024:
            progress(copies % 1024)
    write_meta(ijb, out)  # last: a set whose meta files exist is complete
    return ijb


def synthetic_features(ijb: SyntheticIJB, dim: int = 512, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """Random per-face features with subject structure, float32 (faces, 2*dim): each face a noisy
    copy of its subject's direction with a random norm, then a near copy for its mirror. For scoring
    benchmarks: the numbers are not meaningful, the work is the real work."""
    rng = np.random.default_rng([seed, _PICTURE_STREAM, len(ijb.names)])
    subjects, subject_index = np.unique(ijb.subjects, return_inverse=True)
    centres = rng.standard_normal((len(subjects), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((len(ijb.names), 2 * dim), dtype=np.float32)
    for start in range(0, len(out), chunk):
        index = subject_index[start:start + chunk]
        face = centres[index] + rng.standard_normal((len(index), dim), dtype=np.float32) * np.float32(0.06)
        face *= rng.uniform(5, 30, (len(index), 1)).astype(np.float32)
        out[start:start + len(index), :dim] = face
        out[start:start + len(index), dim:] = face + rng.standard_normal((len(index), dim), dtype=np.float32)
    return out
