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
    if not path.is_file():
        raise FresnetError(
            f"{path}: missing; an IJB release keeps {what} there (meta/{path.name}); "
            "check the root folder and --target (IJBB or IJBC)"
        )
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FresnetError(f"{path}: cannot read it ({exc})") from exc


def _rows(text: str) -> tuple[list[list[str]], np.ndarray]:
    """Whitespace-split non-empty lines and their 1-based line numbers."""
    lines = text.splitlines()
    rows = [line.split() for line in lines]
    keep = [i for i, row in enumerate(rows) if row]
    if len(keep) == len(rows):
        return rows, np.arange(1, len(rows) + 1)
    return [rows[i] for i in keep], np.array(keep, dtype=np.int64) + 1


def _int_column(rows: list[list[str]], column: int, path: Path, lines: np.ndarray, expected: str) -> np.ndarray:
    values = [row[column] for row in rows]
    try:
        return np.array(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    except (ValueError, OverflowError):
        for i, value in enumerate(values):
            try:
                int(value)
            except ValueError:
                raise FresnetError(
                    f"{path}: line {lines[i]}: {value!r} is not an integer; expected {expected}"
                ) from None
        raise


def read_faces(paths: IJBPaths) -> FaceTable:
    """The face -> template/media file and the landmarks file, checked against each other."""
    rows, lines = _rows(_read_text(paths.faces, "the face -> template, media list"))
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise FresnetError(
                f"{paths.faces}: line {lines[i]}: expected 'image template_id media_id', got {' '.join(row)!r}"
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
    names, numbers, faceness = [], [], []
    for i, row in enumerate(rows):
        if len(row) not in (12, 138):
            raise FresnetError(
                f"{paths.landmarks}: line {pts_lines[i]}: expected 'image x1 y1 ... x5 y5 faceness' "
                f"(12 fields, or 138 with 68 points), got {len(row)} fields"
            )
        if row[0] != tid_names[i]:
            raise FresnetError(
                f"{paths.landmarks}: line {pts_lines[i]}: image {row[0]!r}, but line {lines[i]} of "
                f"{paths.faces} is {tid_names[i]!r}; the two files must list the same faces in the same order"
            )
        names.append(row[0])
        numbers.append(row[1:-1])
        faceness.append(row[-1])
    landmarks = np.zeros((len(rows), 5, 2), dtype=np.float32)
    for count in (10, 136):
        chosen = [i for i, values in enumerate(numbers) if len(values) == count]
        if not chosen:
            continue
        try:
            # float() of each string, then float32: InsightFace's np.array([float(x) ...], dtype=np.float32)
            points = np.array([numbers[i] for i in chosen], dtype=np.float64).astype(np.float32)
        except ValueError:
            _raise_first_bad_number(paths.landmarks, pts_lines, numbers, chosen)
        if count == 10:
            landmarks[chosen] = points.reshape(-1, 5, 2)
        else:
            from fresnet.eval.align import landmarks_68_to_5

            landmarks[chosen] = np.stack([landmarks_68_to_5(p.reshape(68, 2)) for p in points])
    try:
        # the faceness column parsed as InsightFace does: np.array(strings).astype(np.float32)
        scores = np.array(faceness).astype(np.float32)
    except ValueError:
        _raise_first_bad_number(paths.landmarks, pts_lines, [[f] for f in faceness], range(len(faceness)))
    return FaceTable(paths.faces, paths.landmarks, np.array(names), templates, medias, landmarks, scores)


def _raise_first_bad_number(path: Path, lines: np.ndarray, numbers, chosen) -> None:
    for i in chosen:
        for value in numbers[i]:
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
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
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
    templates, subjects, numbers = [], [], []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            if len(cells) < 2:
                raise ValueError
            templates.append(int(cells[0]))
            subjects.append(int(cells[1]))
        except ValueError:
            raise FresnetError(
                f"{path}: line {number}: expected 'TEMPLATE_ID,SUBJECT_ID,...' (two integers first), got {line!r}"
            ) from None
        numbers.append(number)
    if not templates:
        raise FresnetError(f"{path}: no rows after the header; a 1:N list has one 'TEMPLATE_ID,SUBJECT_ID' row per image")
    return TemplateList(
        path, np.array(templates, dtype=np.int64), np.array(subjects, dtype=np.int64), np.array(numbers, dtype=np.int64)
    )


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
