"""The same gallery API over Milvus (``pymilvus``), for galleries past one machine.

``MilvusGallery("http://milvus:19530")`` talks to a Milvus server; ``MilvusGallery("people.milvus.db")``
runs ``milvus-lite``, the same client API embedded in the process (no server; what the tests use).

Three collections per gallery: ``<name>_samples`` (auto id, the unit embedding, the identity's
name, sample metadata) searched with a FLAT inner-product index -- exact, so the answers are the
exact search's (ties aside) -- and grouped by identity (Milvus's ``group_by_field``: each
identity's best sample, i.e. the max-over-samples rule); ``<name>_identities`` (name, metadata)
and ``<name>_meta`` (the embedding contract, the calibration). Milvus needs a vector in every
collection, so the last two carry a constant 2-d one.

Milvus has no multi-row transactions: an ``add`` interrupted between its two inserts leaves an
identity without samples, and ``rename`` copies then deletes. The SQLite gallery is the durable
default; this one is for scale.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

from fresnet.gallery.contract import EmbeddingContract
from fresnet.gallery.errors import GalleryError, IdentityNotFound
from fresnet.gallery.gallery import Identity, unit_rows
from fresnet.gallery.names import MAX_IDENTITY_NAME, gallery_name, identity_name
from fresnet.gallery.scoring import Match
from fresnet.gallery.store import metadata_json
from fresnet.validate import load_json

#: Milvus's cap on ``limit`` (topk) of one search or query
MAX_LIMIT = 16384
_DUMMY = [0.0, 0.0]


def _milvus():
    try:
        import pymilvus
    except ImportError:
        raise GalleryError("the Milvus gallery needs pymilvus (and milvus-lite for a local file): "
                           "pip install 'fresnet[milvus]'") from None
    return pymilvus


def _literal(text: str) -> str:
    """A Milvus filter string literal (double quotes, JSON escapes)."""
    return json.dumps(text, ensure_ascii=False)


class MilvusGallery:
    """:class:`fresnet.gallery.gallery.Gallery`'s API over Milvus. ``uri``: a server URL or a local
    ``.db`` file (milvus-lite); ``name``: the collections' prefix."""

    def __init__(self, uri: str | Path, contract: EmbeddingContract | None = None, *,
                 name: str = "fresnet", embedding_size: int | None = None, token: str = ""):
        pymilvus = _milvus()
        self.uri = str(uri)
        self.name = gallery_name(name).replace(".", "_").replace("-", "_")
        self.client = pymilvus.MilvusClient(self.uri, token=token)
        self._samples, self._identities, self._meta = (f"{self.name}_{part}" for part in
                                                       ("samples", "identities", "meta"))
        self._create_meta()
        stored = self._get_meta("contract")
        self._contract = None
        if stored is not None:
            self._contract = EmbeddingContract.from_mapping(load_json(stored, "milvus contract"))
            self._contract.require_same(contract, self.uri)
        elif contract is not None:
            self._set_meta("contract", contract.to_json())
            self._contract = contract
        size = self._get_meta("embedding_size")
        wanted = contract.embedding_size if contract is not None else embedding_size
        if size is None and wanted is not None:
            self._set_meta("embedding_size", str(wanted))
            size = str(wanted)
        elif size is not None and wanted is not None and int(size) != wanted:
            raise GalleryError(f"{self.uri}: holds embeddings of size {size}, given size {wanted}")
        if size is not None:
            self._create_data(int(size))

    # ---- collections ------------------------------------------------------------------------------
    def _schema(self, fields: Sequence[tuple], auto_id: bool = False):
        pymilvus = _milvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=auto_id, enable_dynamic_field=False)
        for field_name, kind, options in fields:
            schema.add_field(field_name, getattr(pymilvus.DataType, kind), **options)
        return schema

    def _create(self, collection: str, fields: Sequence[tuple], metric: str, auto_id: bool = False) -> None:
        if self.client.has_collection(collection):
            return
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type=metric)
        self.client.create_collection(collection, schema=self._schema(fields, auto_id), index_params=index,
                                      consistency_level="Strong")

    def _create_meta(self) -> None:
        self._create(self._meta, [("key", "VARCHAR", {"is_primary": True, "max_length": 64}),
                                  ("value", "VARCHAR", {"max_length": 65535}),
                                  ("vector", "FLOAT_VECTOR", {"dim": 2})], "L2")

    def _create_data(self, dim: int) -> None:
        self._create(self._identities, [("name", "VARCHAR", {"is_primary": True, "max_length": 4 * MAX_IDENTITY_NAME}),
                                        ("metadata", "JSON", {}), ("vector", "FLOAT_VECTOR", {"dim": 2})], "L2")
        self._create(self._samples, [("id", "INT64", {"is_primary": True}),
                                     ("vector", "FLOAT_VECTOR", {"dim": dim}),
                                     ("identity", "VARCHAR", {"max_length": 4 * MAX_IDENTITY_NAME}),
                                     ("metadata", "JSON", {})], "IP", auto_id=True)

    def _get_meta(self, key: str) -> str | None:
        rows = self.client.query(self._meta, filter=f"key == {_literal(key)}", output_fields=["value"])
        return rows[0]["value"] if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        self.client.upsert(self._meta, [{"key": key, "value": value, "vector": _DUMMY}])

    # ---- the Gallery API --------------------------------------------------------------------------
    @property
    def contract(self) -> EmbeddingContract | None:
        return self._contract

    @property
    def embedding_size(self) -> int | None:
        size = self._get_meta("embedding_size")
        return None if size is None else int(size)

    @property
    def calibration(self) -> dict | None:
        text = self._get_meta("calibration")
        return None if text is None else load_json(text, "milvus calibration")

    @property
    def threshold(self) -> float | None:
        calibration = self.calibration
        return None if calibration is None else float(calibration["threshold"])

    def set_calibration(self, calibration: dict) -> None:
        self._set_meta("calibration", metadata_json(calibration, "calibration"))

    def add(self, name: str, embeddings: Any, metadata: dict | None = None,
            sample_metadata: Sequence[dict | None] | None = None,
            contract: EmbeddingContract | None = None) -> list[int]:
        return self.add_many([(name, embeddings, metadata, sample_metadata)], contract=contract)[0]

    def add_many(self, entries: Iterable[tuple], contract: EmbeddingContract | None = None) -> list[list[int]]:
        if self._contract is not None:
            self._contract.require_same(contract, f"{self.uri}: add")
        results = []
        for entry in entries:
            name, embeddings, metadata, sample_metadata = (tuple(entry) + (None, None))[:4]
            name = identity_name(name)
            rows = unit_rows(embeddings, self.embedding_size, f"add {name!r}")
            if self.embedding_size is None:
                self._set_meta("embedding_size", str(rows.shape[1]))
                self._create_data(rows.shape[1])
            extras = list(sample_metadata) if sample_metadata is not None else [None] * len(rows)
            if len(extras) != len(rows):
                raise GalleryError(f"add {name!r}: {len(rows)} embeddings but {len(extras)} sample metadata")
            extras = [json.loads(metadata_json(extra, f"a sample of {name!r}")) for extra in extras]
            known = self._identity_row(name)
            if known is None or metadata is not None:
                value = json.loads(metadata_json(metadata, f"identity {name!r}")) if metadata is not None \
                    else {}
                self.client.upsert(self._identities, [{"name": name, "metadata": value, "vector": _DUMMY}])
            inserted = self.client.insert(self._samples, [
                {"vector": row.tolist(), "identity": name, "metadata": extra} for row, extra in zip(rows, extras)])
            results.append([int(i) for i in inserted["ids"]])
        return results

    def _identity_row(self, name: str) -> dict | None:
        if not self.client.has_collection(self._identities):
            return None
        rows = self.client.query(self._identities, filter=f"name == {_literal(name)}",
                                 output_fields=["name", "metadata"])
        return rows[0] if rows else None

    def _samples_of(self, name: str, fields: Sequence[str]) -> list[dict]:
        return self.client.query(self._samples, filter=f"identity == {_literal(name)}", output_fields=list(fields),
                                 limit=MAX_LIMIT)

    def remove(self, name: str) -> None:
        name = identity_name(name)
        if self._identity_row(name) is None:
            raise IdentityNotFound(f"{self.uri}: no identity named {name!r}")
        self.client.delete(self._samples, filter=f"identity == {_literal(name)}")
        self.client.delete(self._identities, filter=f"name == {_literal(name)}")

    def rename(self, old: str, new: str) -> None:
        old, new = identity_name(old), identity_name(new)
        row = self._identity_row(old)
        if row is None:
            raise IdentityNotFound(f"{self.uri}: no identity named {old!r}")
        if self._identity_row(new) is not None:
            raise GalleryError(f"cannot rename {old!r} to {new!r}: {new!r} is already in the gallery")
        samples = self._samples_of(old, ["vector", "metadata"])
        self.client.upsert(self._identities, [{"name": new, "metadata": row["metadata"], "vector": _DUMMY}])
        if samples:
            self.client.insert(self._samples, [{"vector": s["vector"], "identity": new, "metadata": s["metadata"]}
                                               for s in samples])
        self.client.delete(self._samples, filter=f"identity == {_literal(old)}")
        self.client.delete(self._identities, filter=f"name == {_literal(old)}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._identity_row(name) is not None

    def __len__(self) -> int:
        return len(self.identities())

    def identities(self) -> list[Identity]:
        if not self.client.has_collection(self._identities):
            return []
        rows = self.client.query(self._identities, filter='name != ""', output_fields=["name", "metadata"],
                                 limit=MAX_LIMIT)
        counts: dict[str, int] = {}
        for sample in self.client.query(self._samples, filter="id >= 0", output_fields=["identity"],
                                        limit=MAX_LIMIT):
            counts[sample["identity"]] = counts.get(sample["identity"], 0) + 1
        return sorted((Identity(r["name"], dict(r["metadata"] or {}), (), counts.get(r["name"], 0)) for r in rows),
                      key=lambda identity: identity.name)

    def identity(self, name: str) -> Identity:
        name = identity_name(name)
        row = self._identity_row(name)
        if row is None:
            raise IdentityNotFound(f"{self.uri}: no identity named {name!r}")
        samples = sorted(int(s["id"]) for s in self._samples_of(name, ["id"]))
        return Identity(name, dict(row["metadata"] or {}), tuple(samples), len(samples))

    def search(self, embeddings: Any, k: int = 5, threshold: float | None = None,
               contract: EmbeddingContract | None = None) -> list[list[Match]]:
        if self._contract is not None:
            self._contract.require_same(contract, f"{self.uri}: search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_LIMIT:
            raise GalleryError(f"search: k = {k!r}: expected an integer in [1, {MAX_LIMIT}]")
        queries = unit_rows(embeddings, self.embedding_size, "search")
        if not self.client.has_collection(self._samples):
            return [[] for _ in queries]
        hits = self.client.search(self._samples, data=queries.tolist(), limit=int(k), group_by_field="identity",
                                  output_fields=["identity"], search_params={"metric_type": "IP"})
        answers = []
        for row in hits:
            matches = [Match(hit["entity"]["identity"], float(hit["distance"]), int(hit["id"])) for hit in row]
            answers.append([m for m in matches if threshold is None or m.score >= threshold])
        return answers

    @staticmethod
    def compare(a: Any, b: Any):
        from fresnet.gallery.gallery import Gallery

        return Gallery.compare(a, b)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
