"""IJB 1:N identification: InsightFace's numbers (``ijb_1n.py``) and the standard open-set metric.

Both compare every probe template with the gallery templates (cosine of L2-normalised templates);
they differ in what counts as a false alarm.

**InsightFace's** (``top_k``, ``tpir_at_fpir_insightface``): G1 and G2 (IJB-B: S1, S2) are merged
into one gallery, and every probe's subject must have exactly one template in it (its *mate*).
``top_k[k]`` is the share of probes whose mate is among the k best-scoring gallery templates (ranked
by ``np.argsort(-similarity)``, so ties fall as numpy's sort leaves them). For a "FAR" f, take all
non-mated probe-gallery scores (probes x (gallery - 1) of them), let the threshold be the
``ceil(f * probes)``-th highest, and report the share of probes whose mated score exceeds it. That
"FAR" is false alarms per probe, counted over every non-mated score (one probe can raise many),
and it does not ask the mate to rank first: it is a verification rate, not an identification rate.

**Standard open-set** (``tpir_at_fpir``, per gallery, ISO/IEC 19795-1 / NIST FRVT style): for
gallery G, a probe is *mated* if its subject is enrolled in G, else *non-mated* (IJB-C: each probe
is mated in one gallery and non-mated in the other). With n non-mated probes, each contributing
only its top-1 score, the threshold t for FPIR f is the (floor(f*n) + 1)-th highest of those scores,
so at most floor(f*n) non-mated probes score above it (for f < 1/n: the highest one, FPIR 0). TPIR
is the share of mated probes whose best mated template ranks first, strictly above every non-mated
template of G (a tie at the top does not count), with a score strictly above t.

Scores are computed in blocks of probes (float64), so memory stays bounded at any size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.ijb.layout import TemplateList

FPIR_LABELS = (0.01, 0.1)
TOP_K = (1, 5, 10)
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Enrolment:
    """The distinct templates of a 1:N list (sorted, as ``np.unique``) and each one's subject (its
    first row's, as ``np.unique(..., return_index=True)`` picks)."""

    templates: np.ndarray
    subjects: np.ndarray

    @classmethod
    def of(cls, lists: Sequence[TemplateList]) -> Enrolment:
        templates = np.concatenate([t.templates for t in lists])
        subjects = np.concatenate([t.subjects for t in lists])
        unique, first = np.unique(templates, return_index=True)
        return cls(unique, subjects[first])


@dataclass(frozen=True)
class IdentificationNumbers:
    top_k: dict[int, float]
    tpir_at_fpir_insightface: dict[float, Optional[tuple[float, float]]]
    tpir_at_fpir: dict[str, dict[float, Optional[tuple[float, float]]]]
    num_probes: int
    num_gallery: int
    mated_per_gallery: dict[str, int]


def insightface_mates(probes: Enrolment, gallery: Enrolment, probe_list: TemplateList) -> np.ndarray:
    """Each probe's gallery position (``gen_mask``): its subject must have exactly one template."""
    order = np.argsort(gallery.subjects, kind="stable")
    sorted_subjects = gallery.subjects[order]
    left = np.searchsorted(sorted_subjects, probes.subjects, side="left")
    right = np.searchsorted(sorted_subjects, probes.subjects, side="right")
    bad = np.flatnonzero(right - left != 1)
    if bad.size:
        i = int(bad[0])
        count = int(right[i] - left[i])
        raise FresnetError(
            f"{probe_list.path}: line {probe_list.line_of(int(probes.templates[i]))}: probe template "
            f"{probes.templates[i]} is subject {probes.subjects[i]}, which has {count} templates in the merged "
            "gallery; InsightFace's 1:N protocol needs exactly one per probe subject"
        )
    return order[left]


def open_set_tpir(
    mated_best: np.ndarray, nonmated_best: np.ndarray, fpirs: Sequence[float] = FPIR_LABELS
) -> dict[float, Optional[tuple[float, float]]]:
    """The standard metric from per-probe scores for one gallery.

    ``mated_best[i]``: probe i's best score over its mated templates in the gallery (-inf when its
    subject is not enrolled, i.e. a non-mated probe); ``nonmated_best[i]``: its best score over the
    gallery's other templates (-inf if none). Returns ``{fpir: (tpir, threshold)}``, ``None`` where
    it is undefined (no mated or no non-mated probes).
    """
    mated = mated_best > -np.inf
    top1_nonmated = np.sort(nonmated_best[~mated])[::-1]  # non-mated probes' top-1 scores, highest first
    n = len(top1_nonmated)
    out: dict[float, Optional[tuple[float, float]]] = {}
    for f in fpirs:
        if n == 0 or not mated.any():
            out[f] = None
            continue
        # floor(f * n) with f * n rounded first, so that 0.29 * 100 = 28.999999999999996 counts as 29
        k = math.floor(round(f * n, 9)) + 1
        threshold = float(top1_nonmated[min(k, n) - 1])
        hits = mated & (mated_best > nonmated_best) & (mated_best > threshold)
        out[f] = (float(hits.sum() / mated.sum()), threshold)
    return out


class InsightFaceTally:
    """``ijb_1n.py``'s numbers, gathered a block of probes at a time: each probe's mated score and
    the rank of its mate, and the highest non-mated scores seen so far (as many as its largest
    threshold position needs)."""

    def __init__(self, num_probes: int):
        self.num_probes = num_probes
        self.keep = max(math.ceil(num_probes * f) for f in FPIR_LABELS)  # its max(required_topk)
        self.mated = np.empty(num_probes)
        self.rank = np.empty(num_probes, dtype=np.int64)
        self.top_nonmated = np.zeros(0)

    def add(self, start: int, sim: np.ndarray, mate: np.ndarray) -> None:
        """Probes ``start ...`` with scores ``sim`` (overwritten: the mates' entries become -inf)."""
        local = np.arange(len(sim))
        mated = sim[local, mate]
        self.mated[start:start + len(sim)] = mated
        # the mate's rank in np.argsort(-sim): the count of higher scores, unless another template
        # ties with the mate, where only numpy's sort knows the order
        self.rank[start:start + len(sim)] = np.count_nonzero(sim > mated[:, None], axis=1)
        for i in np.flatnonzero(np.count_nonzero(sim == mated[:, None], axis=1) > 1):
            self.rank[start + i] = int(np.flatnonzero(np.argsort(-sim[i]) == mate[i])[0])
        sim[local, mate] = -np.inf
        self.top_nonmated = self._highest(np.concatenate([self.top_nonmated, self._highest(sim.reshape(-1))]))

    def _highest(self, values: np.ndarray) -> np.ndarray:
        if values.size <= self.keep:
            return values
        return np.partition(values, values.size - self.keep)[values.size - self.keep:]

    def numbers(self) -> tuple[dict[int, float], dict[float, Optional[tuple[float, float]]]]:
        q = self.num_probes
        top_k = {k: float(np.count_nonzero(self.rank < k) / q) for k in TOP_K}
        negatives = np.sort(self.top_nonmated[self.top_nonmated > -np.inf])[::-1]
        rates: dict[float, Optional[tuple[float, float]]] = {}
        for f in FPIR_LABELS:
            position = math.ceil(q * f)
            if position > len(negatives):  # a one-template gallery has no non-mated scores
                rates[f] = None
                continue
            threshold = float(negatives[position - 1])
            rates[f] = (float(np.sum(self.mated > threshold) / q), threshold)
        return top_k, rates


class OpenSetTally:
    """The standard metric's inputs per gallery: each probe's best mated and best non-mated score."""

    def __init__(self, num_probes: int, columns: dict[str, np.ndarray]):
        self.columns = columns  # gallery name -> its columns of the merged gallery
        self.mated_best = {name: np.empty(num_probes) for name in columns}
        self.nonmated_best = {name: np.empty(num_probes) for name in columns}

    def add(self, start: int, sim: np.ndarray, same_subject: np.ndarray) -> None:
        stop = start + len(sim)
        for name, columns in self.columns.items():
            part, mated = sim[:, columns], same_subject[:, columns]
            self.mated_best[name][start:stop] = part.max(axis=1, where=mated, initial=-np.inf)
            self.nonmated_best[name][start:stop] = part.max(axis=1, where=~mated, initial=-np.inf)

    def numbers(self) -> dict[str, dict[float, Optional[tuple[float, float]]]]:
        return {name: open_set_tpir(self.mated_best[name], self.nonmated_best[name]) for name in self.columns}


def _positions(enrolment: Enrolment, lists: Sequence[TemplateList], template_ids: np.ndarray) -> np.ndarray:
    """Each enrolled template's index among the sorted ``template_ids`` (one binary search, used for
    the rows and the pair grid both); a template with no faces is an error naming its line."""
    pos = np.minimum(np.searchsorted(template_ids, enrolment.templates), len(template_ids) - 1)
    missing = np.flatnonzero(template_ids[pos] != enrolment.templates)
    if missing.size:
        t = int(enrolment.templates[missing[0]])
        source = next(lst for lst in lists if (lst.templates == t).any())
        raise FresnetError(
            f"{source.path}: line {source.line_of(t)}: template {t} has no faces in the face list "
            "(meta/*_face_tid_mid.txt); every 1:N template needs at least one face"
        )
    return pos


def _rows_of(count: int, positions: np.ndarray) -> np.ndarray:
    """For every template index (``count`` of them): its row among the members at ``positions``
    (-1: not a member)."""
    table = np.full(count, -1, dtype=np.int32)
    table[positions] = np.arange(len(positions), dtype=np.int32)
    return table


def identify(
    templates: np.ndarray,
    template_ids: np.ndarray,
    galleries: dict[str, TemplateList],
    probe_list: TemplateList,
    block_bytes: int = BLOCK_BYTES,
    pairs: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> tuple[IdentificationNumbers, Optional[np.ndarray]]:
    """Both 1:N metrics. ``templates``: L2-normalised rows for the sorted ``template_ids``.

    ``pairs`` (template indices of the 1:1 pairs): IJB's pairs join gallery templates to probe
    templates, so their scores are entries of this pass's probe x gallery blocks; when every pair
    is such an entry, its score is read from there (one matrix product instead of two) and
    returned, else ``None``.
    """
    gallery = Enrolment.of(list(galleries.values()))
    probes = Enrolment.of([probe_list])
    gallery_at = _positions(gallery, list(galleries.values()), template_ids)
    probes_at = _positions(probes, [probe_list], template_ids)
    mates = insightface_mates(probes, gallery, probe_list)
    q, g = len(probes.templates), len(gallery.templates)
    probe_rows = templates[probes_at]
    gallery_t = np.ascontiguousarray(templates[gallery_at].T)
    step = max(1, block_bytes // (8 * g))  # probes per block of the score matrix

    grid = scores = None
    if pairs is not None:
        from fresnet.eval.ijb.verification import PairGrid

        count = len(template_ids)
        grid = PairGrid.locate(pairs[0], pairs[1], _rows_of(count, probes_at), _rows_of(count, gallery_at), q, g, step)
        scores = None if grid is None else np.empty(len(pairs[0]), dtype=np.float64)
    insightface = InsightFaceTally(q)
    open_set = OpenSetTally(q, {name: np.flatnonzero(np.isin(gallery.templates, lst.templates))
                                for name, lst in galleries.items()})
    for block, start in enumerate(range(0, q, step)):
        stop = min(q, start + step)
        sim = probe_rows[start:stop] @ gallery_t
        if grid is not None:
            grid.fill(scores, block, sim)
        open_set.add(start, sim, probes.subjects[start:stop, None] == gallery.subjects[None, :])
        insightface.add(start, sim, mates[start:stop])  # last: it overwrites the mates' scores
    top_k, rates = insightface.numbers()
    mated_count = {name: int(np.count_nonzero(open_set.mated_best[name] > -np.inf)) for name in galleries}
    return IdentificationNumbers(top_k, rates, open_set.numbers(), q, g, mated_count), scores
