"""The Milvus gallery (milvus-lite, embedded): the same answers as the exact SQLite gallery."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus gallery needs pymilvus (pip install 'fresnet[milvus]')")
pytest.importorskip("milvus_lite", reason="the embedded Milvus needs milvus-lite (pip install 'fresnet[milvus]')")

from fresnet.gallery.contract import EmbeddingContract
from fresnet.gallery.errors import ContractMismatch, IdentityNotFound
from fresnet.gallery.gallery import Gallery
from fresnet.gallery.milvus import MilvusGallery


def units(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_milvus_lite_answers_like_the_exact_gallery(tmp_path):
    rng = np.random.default_rng(0)
    contract = EmbeddingContract("sha256:abcd", 32)
    people = {f"person {i}": units(rng, 1 + i % 3) for i in range(150)}
    people['O"Neil 李'] = units(rng, 2)  # quotes and non-ASCII survive Milvus's filter language
    queries = np.concatenate([units(rng, 20), people["person 7"][:1] + 0.1 * units(rng, 1)])
    with Gallery(tmp_path / "exact.db", contract) as exact, \
            MilvusGallery(tmp_path / "lite.db", contract, name="people") as milvus:
        for name, samples in people.items():
            exact.add(name, samples, metadata={"n": len(samples)})
            milvus.add(name, samples, metadata={"n": len(samples)})
        for got, want in zip(milvus.search(queries, k=5), exact.search(queries, k=5)):
            assert [m.name for m in got] == [m.name for m in want]
            assert [m.score for m in got] == pytest.approx([m.score for m in want], abs=1e-5)
        threshold = exact.search(queries[0], k=3)[0][2].score
        assert len(milvus.search(queries[0], k=5, threshold=threshold - 1e-6)[0]) == 3
        assert milvus.identity('O"Neil 李').sample_count == 2
        milvus.rename("person 7", "Person Seven")
        milvus.remove('O"Neil 李')
        assert milvus.search(queries[-1], k=1)[0][0].name == "Person Seven"
        with pytest.raises(IdentityNotFound):
            milvus.remove('O"Neil 李')
        names = [i.name for i in milvus.identities()]
        assert len(names) == 150 and "Person Seven" in names and "person 7" not in names
        with pytest.raises(ContractMismatch):
            milvus.search(queries, contract=EmbeddingContract("sha256:other", 32))
    with MilvusGallery(tmp_path / "lite.db", name="people") as reopened:  # durable in its file
        assert reopened.contract == contract and len(reopened) == 150
