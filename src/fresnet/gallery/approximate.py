"""Approximate search with FAISS (``faiss-cpu``): HNSW or IVF over the samples, inner product.

An option for large galleries, never a silent substitute: a gallery uses it only when asked
(``Gallery(..., index="hnsw")``), and :func:`recall_at_k` measures how many of the exact search's
identities it finds (benchmarks/bench_gallery.py reports it beside the speed).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fresnet.gallery.errors import GalleryError

KINDS = ("hnsw", "ivf")


@dataclass(frozen=True)
class ApproximateSettings:
    """HNSW: ``hnsw_m`` links per node, ``ef_construction``/``ef_search`` beam widths. IVF:
    ``ivf_lists`` clusters (default ``4 * sqrt(n)``), ``ivf_probe`` clusters visited per query."""

    kind: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_lists: int = 0
    ivf_probe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GalleryError(f"approximate index {self.kind!r}: expected one of {', '.join(KINDS)}")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GalleryError("the approximate index needs faiss: pip install 'fresnet[gallery]' (faiss-cpu)") from None
    return faiss


class FaissIndex:
    """Sample positions ``0..n-1`` in a FAISS index; :meth:`search` returns their scores and positions."""

    def __init__(self, embeddings: np.ndarray, settings: ApproximateSettings):
        faiss = _faiss()
        self.settings = settings
        dim = embeddings.shape[1]
        if settings.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = settings.ef_construction
            self.index.hnsw.efSearch = settings.ef_search
        else:
            lists = settings.ivf_lists or max(1, int(4 * np.sqrt(max(1, len(embeddings)))))
            lists = max(1, min(lists, len(embeddings) // 39 or 1))  # FAISS wants ~39 points per list to train
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer
            if len(embeddings):
                self.index.train(np.ascontiguousarray(embeddings, np.float32))
            self.index.nprobe = min(settings.ivf_probe, lists)
        self.add(embeddings)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def add(self, embeddings: np.ndarray) -> None:
        if len(embeddings):
            if self.settings.kind == "ivf" and not self.index.is_trained:
                self.index.train(np.ascontiguousarray(embeddings, np.float32))
            self.index.add(np.ascontiguousarray(embeddings, np.float32))

    def tune(self, ef_search: int | None = None, ivf_probe: int | None = None) -> None:
        """Change the search breadth without rebuilding: HNSW's efSearch, IVF's probed lists."""
        if ef_search is not None and self.settings.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
        if ivf_probe is not None and self.settings.kind == "ivf":
            self.index.nprobe = int(ivf_probe)

    def search(self, queries: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        """``(q, m)`` scores and positions (``-1`` where fewer than ``m`` were found)."""
        wanted = max(1, min(wanted, self.count))
        return self.index.search(np.ascontiguousarray(queries, np.float32), wanted)


def recall_at_k(approximate: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    """Share of the exact search's identities (per query, its top-k names) that the approximate
    search also returned in its top-k."""
    found = total = 0
    for approx_names, exact_names in zip(approximate, exact):
        total += len(exact_names)
        found += len(set(approx_names) & set(exact_names))
    return found / total if total else 1.0
