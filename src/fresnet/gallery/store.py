"""The durable store: one SQLite file in WAL mode holding identities, samples, embeddings and metadata.

Every change is one ``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=FULL``: a
process killed at any moment loses at most the change it was making, and SQLite's journal keeps
the file consistent. Several processes may read while one writes (WAL); writers queue on the
file lock for up to ``busy_timeout``. ``data_version`` tells a connection that another one has
committed, so a reader reloads what it caches.

Embeddings are stored as little-endian float32 blobs and validated on every read (length, finite
values, unit norm): a file fresnet did not write is refused with the sample that is wrong.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fresnet.gallery.errors import GalleryCorrupt, GalleryError
from fresnet.validate import describe

FORMAT = "fresnet-gallery"
FORMAT_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
MAX_METADATA_BYTES = 64 << 10
_NORM_TOLERANCE = 1e-3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_identity ON samples(identity);
"""


@dataclass(frozen=True)
class StoredSamples:
    """All samples, in sample-id order: ids ``(n,)``, owner identity ids ``(n,)``, embeddings ``(n, d)``."""

    ids: np.ndarray
    owners: np.ndarray
    embeddings: np.ndarray


def metadata_json(metadata: Any, what: str) -> str:
    """Free metadata as compact JSON text (a mapping, bounded in size)."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise GalleryError(f"{what} metadata must be a mapping (a JSON object), got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"{what} metadata is not JSON: {exc}") from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise GalleryError(f"{what} metadata is {len(text.encode()):,} bytes of JSON, above {MAX_METADATA_BYTES:,}")
    return text


class SQLiteStore:
    """The gallery file. Thread-safe within a process (one connection behind a lock)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise GalleryError(f"{self.path}: no such gallery; create it first (fresnet gallery create)")
        if self.path.exists() and not self.path.is_file():
            raise GalleryError(f"{self.path}: not a regular file")
        if not self.path.parent.is_dir():
            raise GalleryError(f"{self.path}: the folder {self.path.parent} does not exist; create it first")
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=False)
        try:
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise GalleryError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); "
                                   "put the gallery on a local file system")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA foreign_keys = ON")
            with self.transaction():
                for statement in filter(str.strip, SCHEMA.split(";")):
                    self.db.execute(statement)
                self._check_format()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise GalleryCorrupt(f"{self.path}: not a fresnet gallery ({exc})") from None
        except BaseException:
            self.db.close()
            raise

    def _check_format(self) -> None:
        stored = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')").fetchall())
        if not stored:
            self.db.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, str(FORMAT_VERSION)))
        elif stored.get("format") != FORMAT or stored.get("version") != str(FORMAT_VERSION):
            raise GalleryCorrupt(f"{self.path}: format {stored.get('format')!r} version {stored.get('version')!r}; "
                                 f"this fresnet reads {FORMAT} version {FORMAT_VERSION}")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the file's write lock at once (``BEGIN IMMEDIATE``), so two
        writers never deadlock upgrading read locks; commits on success, rolls back on any error."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def data_version(self) -> int:
        """Changes when *another* connection commits (SQLite's ``PRAGMA data_version``)."""
        with self.lock:
            return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # ---- meta ------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str, db: sqlite3.Connection | None = None) -> None:
        if db is None:
            with self.transaction() as own:
                own.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        else:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- reads -----------------------------------------------------------------------------------
    def identity_id(self, name: str, db: sqlite3.Connection | None = None) -> int | None:
        with self.lock:
            row = (db or self.db).execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def identities(self) -> list[tuple[int, str, str, int]]:
        """``(id, name, metadata JSON, sample count)`` of every identity, by name."""
        with self.lock:
            return self.db.execute(
                "SELECT i.id, i.name, i.metadata, COUNT(s.id) FROM identities i "
                "LEFT JOIN samples s ON s.identity = i.id GROUP BY i.id ORDER BY i.name").fetchall()

    def identity(self, name: str) -> tuple[int, str, str, list[tuple[int, str]]] | None:
        """``(id, name, metadata JSON, [(sample id, sample metadata JSON)])`` or ``None``."""
        with self.lock:
            row = self.db.execute("SELECT id, name, metadata FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            samples = self.db.execute("SELECT id, metadata FROM samples WHERE identity = ? ORDER BY id",
                                      (row[0],)).fetchall()
        return row[0], row[1], row[2], samples

    def load(self, dim: int) -> StoredSamples:
        """Every sample, validated: blob length ``4 * dim``, finite, unit norm."""
        with self.lock:
            self.db.execute("BEGIN")  # one consistent snapshot of the file
            try:
                rows = self.db.execute("SELECT id, identity, embedding FROM samples ORDER BY id").fetchall()
            finally:
                self.db.execute("COMMIT")
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        owners = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        width = 4 * dim
        blobs = [r[2] for r in rows]
        for position, blob in enumerate(blobs):
            if not isinstance(blob, bytes) or len(blob) != width:
                size = len(blob) if isinstance(blob, (bytes, str)) else describe(blob)
                raise GalleryCorrupt(f"{self.path}: sample {int(ids[position])}: embedding of {size} bytes, expected "
                                     f"{width} ({dim} float32); the file was changed outside fresnet")
        embeddings = np.frombuffer(b"".join(blobs), "<f4").reshape(len(rows), dim).astype(np.float32)
        del blobs
        check_embeddings(embeddings, ids, self.path)
        return StoredSamples(ids, owners, embeddings)

    def names(self) -> dict[int, str]:
        with self.lock:
            return dict(self.db.execute("SELECT id, name FROM identities").fetchall())

    # ---- writes ----------------------------------------------------------------------------------
    def add_samples_many(self, entries: list[tuple[str, np.ndarray, str | None, list[str]]]
                         ) -> list[tuple[int, list[int]]]:
        """For each ``(name, embeddings, metadata JSON or None, sample metadata JSON)``: create the
        identity if new (replacing its metadata when given) and append its samples -- all in one
        transaction. Returns ``(identity id, sample ids)`` per entry."""
        now = time.time()
        results = []
        with self.transaction() as db:
            for name, embeddings, metadata, sample_metadata in entries:
                identity = self.identity_id(name, db)
                if identity is None:
                    identity = db.execute("INSERT INTO identities (name, metadata, created) VALUES (?, ?, ?)",
                                          (name, metadata or "{}", now)).lastrowid
                elif metadata is not None:
                    db.execute("UPDATE identities SET metadata = ? WHERE id = ?", (metadata, identity))
                samples = []
                for vector, extra in zip(embeddings, sample_metadata):
                    blob = np.ascontiguousarray(vector, "<f4").tobytes()
                    samples.append(int(db.execute("INSERT INTO samples (identity, embedding, metadata, created) "
                                                  "VALUES (?, ?, ?, ?)", (identity, blob, extra, now)).lastrowid))
                results.append((int(identity), samples))
        return results

    def remove_identity(self, name: str) -> int | None:
        with self.transaction() as db:
            identity = self.identity_id(name, db)
            if identity is not None:
                db.execute("DELETE FROM samples WHERE identity = ?", (identity,))
                db.execute("DELETE FROM identities WHERE id = ?", (identity,))
        return identity

    def remove_sample(self, sample: int) -> int | None:
        """Remove one sample; its identity stays (with no samples it matches nothing)."""
        with self.transaction() as db:
            row = db.execute("SELECT identity FROM samples WHERE id = ?", (sample,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM samples WHERE id = ?", (sample,))
        return None if row is None else int(row[0])

    def rename(self, old: str, new: str) -> int | None:
        with self.transaction() as db:
            identity = self.identity_id(old, db)
            if identity is not None:
                if self.identity_id(new, db) is not None:
                    raise GalleryError(f"cannot rename {old!r} to {new!r}: {new!r} is already in the gallery")
                db.execute("UPDATE identities SET name = ? WHERE id = ?", (new, identity))
        return identity

    def integrity_check(self) -> str:
        with self.lock:
            return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])


def check_embeddings(embeddings: np.ndarray, ids: np.ndarray, path: Path) -> None:
    if not len(embeddings):
        return
    finite = np.isfinite(embeddings).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], embeddings, 0), axis=1)
    bad = np.flatnonzero(~finite | (np.abs(norms - 1) > _NORM_TOLERANCE))
    if len(bad):
        raise GalleryCorrupt(f"{path}: sample {int(ids[bad[0]])}: embedding is not a finite unit vector "
                             f"({len(bad)} such samples); the file was changed outside fresnet")
