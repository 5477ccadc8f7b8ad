"""The files of an IJB-B / IJB-C release, read the way InsightFace's evaluation scripts read them.

``ROOT/meta/`` holds, for target ``IJBC`` (``IJBB``: prefix ``ijbb``, galleries ``S1``/``S2``):

* ``ijbc_face_tid_mid.txt``: ``image template_id media_id``, one face per line;
* ``ijbc_name_5pts_score.txt``: ``image x1 y1 ... x5 y5 faceness`` (or 68 points), the same faces in
  the same order: the order of every per-face array, the features included;
* ``ijbc_template_pair_label.txt``: ``template1 template2 label`` (1 = same subject), the 1:1 pairs;
* ``ijbc_1N_gallery_G1.csv``, ``..._G2.csv``, ``ijbc_1N_probe_mixed.csv``: the 1:N protocol, CSV with a
  header whose first two columns are ``TEMPLATE_ID,SUBJECT_ID``, one row per image.

``ROOT/loose_crop/<image>`` holds the pictures. Every parse error names the file and the 1-based line.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fresnet.errors import FresnetError

PathLike = Union[str, os.PathLike]
# target -> the names of its two 1:N galleries
TARGETS = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


def check_target(target: str) -> str:
    name = str(target).upper()
    if name not in TARGETS:
        raise FresnetError(f"unknown IJB target {target!r}; choose one of {', '.join(TARGETS)}")
    return name


@dataclass(frozen=True)
class IJBPaths:
    """Where each file of a release lives."""

    root: Path
    target: str

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def prefix(self) -> str:
        return self.target.lower()

    @property
    def faces(self) -> Path:
        return self.meta / f"{self.prefix}_face_tid_mid.txt"

    @property
    def landmarks(self) -> Path:
        return self.meta / f"{self.prefix}_name_5pts_score.txt"

    @property
    def pairs(self) -> Path:
        return self.meta / f"{self.prefix}_template_pair_label.txt"

    @property
    def galleries(self) -> dict[str, Path]:
        return {name: self.meta / f"{self.prefix}_1N_gallery_{name}.csv" for name in TARGETS[self.target]}

    @property
    def probes(self) -> Path:
        return self.meta / f"{self.prefix}_1N_probe_mixed.csv"

    @property
    def images(self) -> Path:
        return self.root / "loose_crop"


def ijb_paths(root: PathLike, target: str = "IJBC") -> IJBPaths:
    return IJBPaths(Path(root), check_target(target))


@dataclass(frozen=True)
class FaceTable:
    """One row per face, in the order of the landmarks file."""

    path: Path  # the face -> template/media file
    landmarks_path: Path
    names: np.ndarray  # str
    templates: np.ndarray  # int64
    medias: np.ndarray  # int64
    landmarks: np.ndarray  # float32 (faces, 5, 2): 68-point lines already reduced to 5
    faceness: np.ndarray  # float32 (faces,)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class PairTable:
    """The 1:1 pairs in file order."""

    path: Path
    first: np.ndarray  # int64 template ids
    second: np.ndarray
    labels: np.ndarray  # int8, 1 = same subject

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TemplateList:
    """A 1:N gallery or probe list: one row per image, ``TEMPLATE_ID,SUBJECT_ID,...``."""

    path: Path
    templates: np.ndarray  # int64, per row
    subjects: np.ndarray  # int64, per row
    lines: np.ndarray  # int64, the 1-based line of each row

    def line_of(self, template: int) -> int:
        return int(self.lines[np.flatnonzero(self.templates == template)[0]])


@dataclass(frozen=True)
class IJBMeta:
    paths: IJBPaths
    faces: FaceTable
    pairs: PairTable
    galleries: Optional[dict[str, TemplateList]] = None  # None: the release has no 1:N files
    probes: Optional[TemplateList] = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# reading


def _read_text(path: Path, what: str) -> str:
    """The whole file, once it is known to be a regular file within ``max_list_bytes`` (the rows
    split from it take several times its size in memory)."""
    from fresnet.ioutil import read_text

    if not path.exists():
        raise FresnetError(
            f"{path}: missing; an IJB release keeps {what} there (meta/{path.name}); "
            "check the root folder and --target (IJBB or IJBC)"
        )
    return read_text(path, f"IJB meta file ({what})", limit="max_list_bytes")


def _rows(text: str) -> tuple[list[list[str]], np.ndarray]:
    """Whitespace-split non-empty lines and their 1-based line numbers."""
    lines = text.splitlines()
    rows = [line.split() for line in lines]
    keep = [i for i, row in enumerate(rows) if row]
    if len(keep) == len(rows):
        return rows, np.arange(1, len(rows) + 1)
    return [rows[i] for i in keep], np.array(keep, dtype=np.int64) + 1


def _numbers(values: list[str], dtype) -> Optional[np.ndarray]:
    """``values`` parsed in C (``np.fromstring``; a float the way Python's ``float()`` reads it), or
    ``None`` when one of them is not a number of that type (the caller then finds which)."""
    if not values:
        return np.zeros(0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "could not be read to its end"
        try:
            parsed = np.fromstring(" ".join(values), dtype=dtype, sep=" ")
        except ValueError:
            return None
    return parsed if len(parsed) == len(values) else None


def _int_column(rows: list[list[str]], column: int, path: Path, lines: np.ndarray, expected: str) -> np.ndarray:
    values = [row[column] for row in rows]
    parsed = _numbers(values, np.int64)
    if parsed is not None:
        return parsed
    for i, value in enumerate(values):
        if not _is_int(value):
            raise FresnetError(f"{path}: line {lines[i]}: {value!r} is not an integer; expected {expected}")
    raise FresnetError(f"{path}: cannot parse column {column + 1} as integers")


def read_faces(paths: IJBPaths) -> FaceTable:
    """The face -> template/media file and the landmarks file, checked against each other."""
    rows, lines = _rows(_read_text(paths.faces, "the face -> template, media list"))
    bad = next((i for i, row in enumerate(rows) if len(row) != 3), None)
    if bad is not None:
        raise FresnetError(
            f"{paths.faces}: line {lines[bad]}: expected 'image template_id media_id', got {' '.join(rows[bad])!r}"
        )
    expected = "'image template_id media_id'"
    templates = _int_column(rows, 1, paths.faces, lines, expected)
    medias = _int_column(rows, 2, paths.faces, lines, expected)
    tid_names = [row[0] for row in rows]

    rows, pts_lines = _rows(_read_text(paths.landmarks, "the landmarks and faceness of every face"))
    if len(rows) != len(tid_names):
        raise FresnetError(
            f"{paths.landmarks} lists {len(rows)} faces but {paths.faces} lists {len(tid_names)}; "
            "the two files describe the same faces line by line (are they from the same release?)"
        )
    bad = next((i for i, row in enumerate(rows) if len(row) not in (12, 138)), None)
    if bad is not None:
        raise FresnetError(
            f"{paths.landmarks}: line {pts_lines[bad]}: expected 'image x1 y1 ... x5 y5 faceness' "
            f"(12 fields, or 138 with 68 points), got {len(rows[bad])} fields"
        )
    names = [row[0] for row in rows]
    bad = next((i for i, (a, b) in enumerate(zip(names, tid_names)) if a != b), None)
    if bad is not None:
        raise FresnetError(
            f"{paths.landmarks}: line {pts_lines[bad]}: image {names[bad]!r}, but line {lines[bad]} of "
            f"{paths.faces} is {tid_names[bad]!r}; the two files must list the same faces in the same order"
        )
    landmarks = np.zeros((len(rows), 5, 2), dtype=np.float32)
    for count in (10, 136):
        chosen = [i for i, row in enumerate(rows) if len(row) == count + 2]
        if not chosen:
            continue
        # float() of each string, then float32: InsightFace's np.array([float(x) ...], dtype=np.float32)
        points = _numbers([v for i in chosen for v in rows[i][1:-1]], np.float64)
        if points is None:
            _raise_first_bad_number(paths.landmarks, pts_lines, [rows[i][1:-1] for i in chosen], chosen)
        with np.errstate(over="ignore"):  # 1e39 becomes inf in float32, refused just below
            points = points.astype(np.float32).reshape(len(chosen), count // 2, 2)
        _refuse_non_finite(paths.landmarks, pts_lines, points.reshape(len(chosen), -1), chosen, "a landmark")
        if count == 10:
            landmarks[chosen] = points
        else:
            from fresnet.faces.align import landmarks_68_to_5

            landmarks[chosen] = np.stack([landmarks_68_to_5(p) for p in points])
    faceness = [row[-1] for row in rows]
    try:
        # the faceness column parsed as InsightFace does: np.array(strings).astype(np.float32)
        with np.errstate(over="ignore"):
            scores = np.array(faceness).astype(np.float32)
    except ValueError:
        _raise_first_bad_number(paths.landmarks, pts_lines, [[f] for f in faceness], range(len(faceness)))
    # a NaN faceness or landmark would not fail anywhere: it turns the template's pooled feature,
    # and with it every score of that template, into NaN
    _refuse_non_finite(paths.landmarks, pts_lines, scores[:, None], range(len(scores)), "the faceness score")
    return FaceTable(paths.faces, paths.landmarks, np.array(names), templates, medias, landmarks, scores)


def _refuse_non_finite(path: Path, lines: np.ndarray, values: np.ndarray, chosen, what: str) -> None:
    """``values`` (rows, n) parsed from the rows ``chosen`` of ``path``: NaN, inf or beyond float32 is an error."""
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise FresnetError(
            f"{path}: line {lines[list(chosen)[row]]}: {what} is not a finite number (NaN, inf, or beyond "
            "float32's range); the file is damaged: re-create it or take it from the release again"
        )


def _raise_first_bad_number(path: Path, lines: np.ndarray, numbers, chosen) -> None:
    for values, i in zip(numbers, chosen):
        for value in values:
            try:
                float(value)
            except ValueError:
                raise FresnetError(f"{path}: line {lines[i]}: {value!r} is not a number") from None
    raise FresnetError(f"{path}: cannot parse the numbers")


def read_pairs(paths: IJBPaths) -> PairTable:
    """``template1 template2 label`` lines (15.7 M for IJB-C: parsed by numpy, checked line by line
    only when something is wrong)."""
    path = paths.pairs
    if not path.is_file():
        _read_text(path, "the 1:1 template pairs")  # raises the missing-file error
    from fresnet.ioutil import regular_file

    regular_file(path, "IJB pair list")  # a FIFO would block np.loadtxt forever
    try:
        # streamed, so not bounded by max_list_bytes: memory is the int64 table itself
        table = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except (ValueError, OverflowError):
        table = None
    if table is None or (table.size and table.shape[1] != 3):
        rows, lines = _rows(_read_text(path, "the 1:1 template pairs"))
        for i, row in enumerate(rows):
            if len(row) != 3 or not all(_is_int(v) for v in row):
                raise FresnetError(
                    f"{path}: line {lines[i]}: expected 'template1 template2 label' (three integers), "
                    f"got {' '.join(row)!r}"
                )
        raise FresnetError(f"{path}: cannot parse the pairs")
    if table.size == 0:
        raise FresnetError(f"{path}: no pairs; the 1:1 protocol needs 'template1 template2 label' lines")
    labels = table[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise FresnetError(
            f"{path}: line {line_of_row(path, int(bad[0]))}: label {labels[bad[0]]}; labels are 1 (same subject) or 0"
        )
    return PairTable(path, table[:, 0].copy(), table[:, 1].copy(), labels.astype(np.int8))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def line_of_row(path: Path, row: int) -> int:
    """The 1-based line of the ``row``-th non-empty line of a file (only called to report an error)."""
    with open(path) as handle:
        seen = -1
        for number, line in enumerate(handle, 1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1


def read_template_list(path: Path) -> TemplateList:
    """A 1:N CSV: a header line, then ``TEMPLATE_ID,SUBJECT_ID[,...]`` rows."""
    text = _read_text(path, "a 1:N template list")
    lines = text.splitlines()
    numbers = [n for n, line in enumerate(lines[1:], 2) if line.strip()]
    cells = [lines[n - 1].split(",", 2) for n in numbers]
    templates = _numbers([c[0] for c in cells], np.int64) if all(len(c) >= 2 for c in cells) else None
    subjects = _numbers([c[1] for c in cells], np.int64) if templates is not None else None
    if subjects is None:
        for n, c in zip(numbers, cells):
            if len(c) < 2 or not _is_int(c[0]) or not _is_int(c[1]):
                raise FresnetError(
                    f"{path}: line {n}: expected 'TEMPLATE_ID,SUBJECT_ID,...' (two integers first), "
                    f"got {lines[n - 1]!r}"
                )
        raise FresnetError(f"{path}: cannot parse the template and subject ids")
    if not numbers:
        raise FresnetError(f"{path}: no rows after the header; a 1:N list has one 'TEMPLATE_ID,SUBJECT_ID' row per image")
    return TemplateList(path, templates, subjects, np.array(numbers, dtype=np.int64))


def read_meta(root: PathLike, target: str = "IJBC", identification: bool = True) -> IJBMeta:
    """Every meta file of a release. The 1:N lists are optional as a set: a release without any of
    them is evaluated 1:1 only (with a note); one with some but not all of them is an error."""
    paths = ijb_paths(root, target)
    faces = read_faces(paths)
    pairs = read_pairs(paths)
    notes: list[str] = []
    galleries = probes = None
    if identification:
        wanted = [*paths.galleries.values(), paths.probes]
        present = [p for p in wanted if p.is_file()]
        if not present:
            notes.append(f"no 1:N files in {paths.meta} ({', '.join(p.name for p in wanted)}): 1:1 only")
        else:
            missing = [p for p in wanted if not p.is_file()]
            if missing:
                raise FresnetError(
                    f"{missing[0]}: missing, while {present[0].name} is there; the 1:N protocol needs "
                    f"{', '.join(p.name for p in wanted)}"
                )
            galleries = {name: read_template_list(p) for name, p in paths.galleries.items()}
            probes = read_template_list(paths.probes)
    return IJBMeta(paths, faces, pairs, galleries, probes, notes)
