"""``Gallery``: identities with face samples and metadata, 1:N search, in one durable SQLite file.

    gallery = Gallery("people.db", contract)           # created when absent
    gallery.add("Ada", embeddings, metadata={"team": "analytics"})
    gallery.search(queries, k=5, threshold=0.35)       # [[Match(name, score, sample), ...], ...]

An identity's score is the best cosine over its samples; ``threshold`` is inclusive. Search is
exact (a matrix product over all samples) unless an approximate FAISS index is asked for. The
in-memory index is rebuilt from the file when it is opened and whenever another process commits a
change (SQLite's ``data_version``), so several processes may share one gallery file.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

from fresnet.gallery.approximate import ApproximateSettings, FaissIndex
from fresnet.gallery.contract import EmbeddingContract
from fresnet.gallery.errors import GalleryError, IdentityNotFound
from fresnet.gallery.names import identity_name
from fresnet.gallery.scoring import (
    PRECISIONS,
    Match,
    SampleScorer,
    best_identities,
    first_owners,
    query_blocks,
)
from fresnet.gallery.screening import ScreenedSearch
from fresnet.gallery.store import SQLiteStore, metadata_json
from fresnet.validate import load_json

#: most samples the approximate index fetches per query before grouping them by identity
MAX_APPROXIMATE_CANDIDATES = 2048
MAX_SAMPLES_PER_ADD = 10_000


@dataclass(frozen=True)
class Identity:
    name: str
    metadata: dict
    samples: tuple[int, ...] = field(default=())
    sample_count: int = 0


def unit_rows(embeddings: Any, dim: int | None, what: str) -> np.ndarray:
    """``(n, d)`` float32 unit rows from one vector or a batch; refuses empty, non-finite and zero rows."""
    try:
        array = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"{what}: not an array of numbers ({exc})") from None
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise GalleryError(f"{what}: expected embeddings shaped (n, d) or (d,), got {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise GalleryError(f"{what}: embeddings of size {array.shape[1]}, the gallery's are {dim}")
    if not np.isfinite(array).all():
        raise GalleryError(f"{what}: embeddings hold NaN or infinity")
    norms = np.linalg.norm(array.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise GalleryError(f"{what}: an embedding is all zeros")
    return (array / norms).astype(np.float32)


class Gallery:
    """One gallery file. ``contract`` states the model in use: a new gallery records it, an existing
    one refuses it when it differs. ``index`` is ``"exact"`` (default), ``"hnsw"`` or ``"ivf"``
    (FAISS, approximate); ``precision`` (exact only) ``"fp32"`` (default), ``"fp16"`` or ``"int8"``."""

    def __init__(self, path: str | Path, contract: EmbeddingContract | None = None, *,
                 index: str = "exact", precision: str = "fp32", approximate: ApproximateSettings | None = None,
                 create: bool = True, embedding_size: int | None = None):
        if index not in ("exact", "hnsw", "ivf"):
            raise GalleryError(f"index {index!r}: expected exact, hnsw or ivf")
        if index != "exact" and precision != "fp32":
            raise GalleryError("precision applies to the exact index; an approximate index scores in fp32")
        self.index_kind = index
        self.approximate = approximate or (ApproximateSettings(kind=index) if index != "exact" else None)
        self.precision = precision
        if precision not in PRECISIONS:
            raise GalleryError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self._store = SQLiteStore(path, create=create)
        self._lock = threading.RLock()
        try:
            self._contract = self._settle_contract(contract, embedding_size)
        except BaseException:
            self._store.close()
            raise
        self._loaded_version: int | None = None
        self._reload()

    # ---- identity of the file ---------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def contract(self) -> EmbeddingContract | None:
        return self._contract

    @property
    def embedding_size(self) -> int | None:
        if getattr(self, "_embedding_size", None) is None:  # set once, then fixed for the file's life
            text = self._store.get_meta("embedding_size")
            self._embedding_size = None if text is None else int(text)
        return self._embedding_size

    def _settle_contract(self, given: EmbeddingContract | None, size: int | None) -> EmbeddingContract | None:
        stored_text = self._store.get_meta("contract")
        stored = None
        if stored_text is not None:
            stored = EmbeddingContract.from_mapping(load_json(stored_text, f"{self.path}: contract"),
                                                    f"{self.path}: contract")
        if stored is not None:
            stored.require_same(given, f"{self.path}")
            return stored
        stored_size = self._store.get_meta("embedding_size")
        wanted = given.embedding_size if given is not None else size
        if stored_size is not None and wanted is not None and int(stored_size) != wanted:
            raise GalleryError(f"{self.path}: holds embeddings of size {stored_size}, given size {wanted}")
        with self._store.transaction() as db:
            if given is not None:
                self._store.set_meta("contract", given.to_json(), db)
            if wanted is not None and stored_size is None:
                self._store.set_meta("embedding_size", str(wanted), db)
        return given

    def _check_contract(self, contract: EmbeddingContract | None, where: str) -> None:
        if self._contract is not None:
            self._contract.require_same(contract, where)
        elif contract is not None:  # a gallery made without a contract learns it from its first model
            self._contract = self._settle_contract(contract, None)

    # ---- calibrated threshold ---------------------------------------------------------------------
    @property
    def calibration(self) -> dict | None:
        """The stored calibration (threshold, target false-match rate, provenance), or ``None``."""
        text = self._store.get_meta("calibration")
        return None if text is None else load_json(text, f"{self.path}: calibration")

    @property
    def threshold(self) -> float | None:
        calibration = self.calibration
        return None if calibration is None else float(calibration["threshold"])

    def set_calibration(self, calibration: dict) -> None:
        if "threshold" not in calibration:
            raise GalleryError("a calibration needs a 'threshold'")
        self._store.set_meta("calibration", metadata_json(calibration, "calibration"))

    # ---- changes ----------------------------------------------------------------------------------
    def add(self, name: str, embeddings: Any, metadata: dict | None = None,
            sample_metadata: Sequence[dict | None] | None = None,
            contract: EmbeddingContract | None = None) -> list[int]:
        """Enrol ``embeddings`` (one or several) as samples of ``name`` (created if new; ``metadata``
        replaces its metadata when given), in one transaction. Returns the new sample ids."""
        return self.add_many([(name, embeddings, metadata, sample_metadata)], contract=contract)[0]

    def add_many(self, entries: Iterable[tuple], contract: EmbeddingContract | None = None) -> list[list[int]]:
        """Several :meth:`add` calls, ``(name, embeddings[, metadata[, sample_metadata]])`` each, in
        one transaction (all or nothing): the fast way to load many identities."""
        self._check_contract(contract, f"{self.path}: add")
        prepared = []
        dim = self.embedding_size
        for entry in entries:
            name, embeddings, metadata, sample_metadata = (tuple(entry) + (None, None))[:4]
            name = identity_name(name)
            rows = unit_rows(embeddings, dim, f"add {name!r}")
            dim = rows.shape[1]
            if len(rows) > MAX_SAMPLES_PER_ADD:
                raise GalleryError(f"add {name!r}: {len(rows):,} samples at once, above {MAX_SAMPLES_PER_ADD:,}")
            extras = list(sample_metadata) if sample_metadata is not None else [None] * len(rows)
            if len(extras) != len(rows):
                raise GalleryError(f"add {name!r}: {len(rows)} embeddings but {len(extras)} sample metadata")
            prepared.append((name, rows, None if metadata is None else metadata_json(metadata, f"identity {name!r}"),
                             [metadata_json(extra, f"a sample of {name!r}") for extra in extras]))
        if not prepared:
            return []
        with self._lock:
            if self.embedding_size is None:
                self._store.set_meta("embedding_size", str(dim))
            results = self._store.add_samples_many(prepared)
            for (name, rows, _, _), (identity, samples) in zip(prepared, results):
                self._names[identity] = name
                self._pending.append((np.asarray(samples, np.int64), np.full(len(samples), identity, np.int64), rows))
            self._stale = True
        return [samples for _, samples in results]

    def remove(self, name: str) -> None:
        """Remove an identity and all its samples."""
        name = identity_name(name)
        with self._lock:
            identity = self._store.remove_identity(name)
            if identity is None:
                raise IdentityNotFound(f"{self.path}: no identity named {name!r}")
            self._names.pop(identity, None)
            self._removed_owners.add(identity)
            self._stale = True

    def remove_sample(self, sample: int) -> None:
        with self._lock:
            if self._store.remove_sample(int(sample)) is None:
                raise GalleryError(f"{self.path}: no sample {sample}")
            self._removed_samples.add(int(sample))
            self._stale = True

    def rename(self, old: str, new: str) -> None:
        old, new = identity_name(old), identity_name(new)
        with self._lock:
            identity = self._store.rename(old, new)
            if identity is None:
                raise IdentityNotFound(f"{self.path}: no identity named {old!r}")
            self._names[identity] = new

    # ---- reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._store.identities())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._store.identity_id(name) is not None

    def identities(self) -> list[Identity]:
        return [Identity(name, json.loads(metadata), (), count)
                for _, name, metadata, count in self._store.identities()]

    def identity(self, name: str) -> Identity:
        name = identity_name(name)
        found = self._store.identity(name)
        if found is None:
            raise IdentityNotFound(f"{self.path}: no identity named {name!r}")
        _, name, metadata, samples = found
        return Identity(name, json.loads(metadata), tuple(s for s, _ in samples), len(samples))

    def search(self, embeddings: Any, k: int = 5, threshold: float | None = None,
               contract: EmbeddingContract | None = None) -> list[list[Match]]:
        """For each query embedding, up to ``k`` identities best first, each scored by its best sample;
        with ``threshold``, only those scoring ``>= threshold``."""
        if self._contract is not None:
            self._contract.require_same(contract, f"{self.path}: search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise GalleryError(f"search: k = {k!r}: expected an integer >= 1")
        if threshold is not None:
            from fresnet.validate import as_float

            threshold = as_float(threshold, "threshold", "search", minimum=-1.0, maximum=1.0)
        queries = unit_rows(embeddings, self.embedding_size, "search")
        with self._lock:
            state = self._index()
        if state.count == 0:
            return [[] for _ in queries]
        answers: list[list[tuple[int, float, int]]] = [[] for _ in queries]
        if state.approximate is None:
            unproven = self._screened(state, queries, int(k), threshold, answers)
            step = query_blocks(len(unproven), state.count)
            for start in range(0, len(unproven), step):
                scores = state.scorer.scores(queries[unproven[start:start + step]])
                found = best_identities(scores, state.owners, state.most_samples, int(k), threshold)
                for position, row in zip(unproven[start:start + step], found):
                    answers[position] = row
        else:
            wanted = min(MAX_APPROXIMATE_CANDIDATES, int(k) * state.most_samples)
            values, positions = state.approximate.search(queries, wanted)
            found = positions >= 0  # FAISS pads a short answer with -1
            answers = [first_owners(row_values[keep], row_positions[keep], state.owners, int(k), threshold)
                       for row_values, row_positions, keep in zip(values, positions, found)]
        with self._lock:  # the names of the owners found only (copying all of them costs ms per query)
            names = {owner: self._names.get(owner) for row in answers for owner, _, _ in row}
        # an identity removed by another thread since the index was taken is left out
        return [[Match(names[owner], score, int(state.ids[position])) for owner, score, position in row
                 if names[owner] is not None] for row in answers]

    def _screened(self, state: _IndexState, queries: np.ndarray, k: int, threshold: float | None,
                  answers: list) -> np.ndarray:
        """Answers the queries that fp16 screening proves exact (fp32 precision, a few queries, a
        large gallery: :mod:`fresnet.gallery.screening`); returns the positions of the others."""
        everything = np.arange(len(queries))
        if self.precision != "fp32" or not ScreenedSearch.usable(len(queries), state.count, queries.shape[1]):
            return everything
        unproven = []
        for position, query in enumerate(queries):
            found = state.screened.search(query, state.owners, state.most_samples, k, threshold)
            if found is None:
                unproven.append(position)
            else:
                answers[position] = found
        return np.asarray(unproven, dtype=np.int64)

    def tune(self, ef_search: int | None = None, ivf_probe: int | None = None) -> None:
        """The approximate index's search breadth (HNSW efSearch, IVF probes), kept across rebuilds."""
        if self.approximate is None:
            raise GalleryError("tune applies to an approximate index (index='hnsw' or 'ivf')")
        changes = {k: int(v) for k, v in (("ef_search", ef_search), ("ivf_probe", ivf_probe)) if v is not None}
        self.approximate = dataclasses.replace(self.approximate, **changes)
        with self._lock:
            state = self._index()
            state.approximate_settings = self.approximate
            if state.approximate is not None:
                state.approximate.tune(ef_search, ivf_probe)

    @staticmethod
    def compare(a: Any, b: Any) -> float | np.ndarray:
        """Cosine similarity of two embeddings (or of two equal-length batches, row by row)."""
        first, second = unit_rows(a, None, "compare: a"), unit_rows(b, None, "compare: b")
        if first.shape != second.shape:
            raise GalleryError(f"compare: shapes {first.shape} and {second.shape} differ")
        scores = np.einsum("nd,nd->n", first, second)
        return float(scores[0]) if np.ndim(a) == 1 and np.ndim(b) == 1 else scores

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``'ok'`` for a sound file."""
        return self._store.integrity_check()

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r}, index={self.index_kind!r}, precision={self.precision!r})"

    # ---- the in-memory index ----------------------------------------------------------------------
    def _reload(self) -> None:
        with self._lock:
            version = self._store.data_version()
            dim = self.embedding_size
            stored = self._store.load(dim) if dim is not None else None
            self._names = self._store.names()
            if stored is None:
                stored_ids, owners, rows = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
            else:
                stored_ids, owners, rows = stored.ids, stored.owners, stored.embeddings
            self._state = _IndexState.build(stored_ids, owners, rows, self.precision, self.approximate)
            self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            self._removed_owners: set[int] = set()
            self._removed_samples: set[int] = set()
            self._stale = False
            self._loaded_version = version

    def _index(self) -> _IndexState:
        if self._store.data_version() != self._loaded_version:
            self._reload()  # another process changed the file
        elif self._stale:
            self._state = self._state.updated(self._pending, self._removed_owners, self._removed_samples,
                                              self.precision)
            self._pending, self._removed_owners, self._removed_samples = [], set(), set()
            self._stale = False
        return self._state


@dataclass
class _IndexState:
    ids: np.ndarray
    owners: np.ndarray
    embeddings: np.ndarray
    precision: str
    most_samples: int
    approximate_settings: ApproximateSettings | None
    approximate: FaissIndex | None
    _scorer: SampleScorer | None = None
    _screened: ScreenedSearch | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def scorer(self) -> SampleScorer:
        """Built on the first search (a process that only writes never loads PyTorch)."""
        if self._scorer is None:
            self._scorer = SampleScorer(self.embeddings, self.precision)
        return self._scorer

    @property
    def screened(self) -> ScreenedSearch:
        """The fp16 copy for single exact queries, built on the first one that uses it."""
        if self._screened is None:
            self._screened = ScreenedSearch(self.embeddings)
        return self._screened

    @staticmethod
    def _most(owners: np.ndarray) -> int:
        return int(np.bincount(np.unique(owners, return_inverse=True)[1]).max()) if len(owners) else 0

    @classmethod
    def build(cls, ids, owners, embeddings, precision: str, settings: ApproximateSettings | None) -> _IndexState:
        approximate = FaissIndex(embeddings, settings) if settings is not None and len(ids) else None
        return cls(ids, owners, embeddings, precision, cls._most(owners), settings, approximate)

    def updated(self, pending, removed_owners: set, removed_samples: set, precision: str) -> _IndexState:
        """Appends first, then removals (a sample may be added and removed before the next search)."""
        ids, owners, embeddings = self.ids, self.owners, self.embeddings
        new_rows = None
        if pending:
            new_ids, new_owners, new_rows = (np.concatenate(parts) for parts in zip(*pending))
            if not len(embeddings):
                embeddings = np.zeros((0, new_rows.shape[1]), np.float32)
            ids, owners = np.concatenate([ids, new_ids]), np.concatenate([owners, new_owners])
            embeddings = np.concatenate([embeddings, new_rows])
        removing = bool(removed_owners or removed_samples)
        if removing:
            keep = ~(np.isin(owners, list(removed_owners)) | np.isin(ids, list(removed_samples)))
            ids, owners, embeddings = ids[keep], owners[keep], embeddings[keep]
        if self.approximate is not None and not removing and new_rows is not None:
            self.approximate.add(new_rows)  # appends keep the FAISS positions; removals rebuild it
            return _IndexState(ids, owners, embeddings, precision, self._most(owners), self.approximate_settings,
                               self.approximate)
        return _IndexState.build(ids, owners, embeddings, precision, self.approximate_settings)
