"""Screening of single exact queries (int8 and fp16 copies): each bound holds, the proof rejects what
it cannot prove, and a gallery that screens answers exactly as the full fp32 product does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fresnet.gallery import screening
from fresnet.gallery.codes import (
    Fp16Codes,
    Int8Codes,
    accumulates_in_fp32,
    fp16_kernel_accumulates_in_fp32,
    int8_product_available,
)
from fresnet.gallery.gallery import Gallery
from fresnet.gallery.scoring import best_identities
from fresnet.gallery.screening import ScreenedSearch

DIM = 128


def units(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng, identities: int, per: int, dim: int = DIM):
    """Samples around identity centres (cosine ~0.8 to the centre) and the identities' owners."""
    centres = units(rng.standard_normal((identities, dim)))
    owners = np.repeat(np.arange(identities), per)
    samples = units(centres[owners] + 0.5 * rng.standard_normal((len(owners), dim)) / np.sqrt(dim) * 2)
    return centres, owners, samples


def full_fp32(samples, owners, queries, k, threshold):
    scores = queries @ samples.T
    most = int(np.bincount(owners).max())
    return best_identities(scores, owners, most, k, threshold)


def edge_rows(rng):
    rows = units(rng.standard_normal((3000, DIM)))
    query = rows[7].copy()
    rows[:1000] = units(query + 1e-3 * rng.standard_normal((1000, DIM)))  # scores near +1
    rows[1000:1500] = -rows[:500]                                            # and near -1
    rows[1500:1600, : DIM // 2] *= 1e-6                                      # fp16 subnormals
    rows[1600:1700] = units(np.eye(DIM)[rng.integers(0, DIM, 100)] + 0.05)  # one large value a row
    spiky = query.copy()
    spiky[3] = 3.0                                                           # a query with one large value
    return units(rows), query, units(spiky[None])[0]


@pytest.mark.parametrize("codes", ["int8", "fp16"])
def test_each_bound_covers_every_screened_score_even_at_the_edges(codes):
    if codes == "int8" and not int8_product_available():
        pytest.skip("this PyTorch has no int8 x int8 -> int32 product on the CPU")
    if codes == "fp16" and not fp16_kernel_accumulates_in_fp32(DIM):
        pytest.skip("this PyTorch's fp16 matrix-vector product does not sum in fp32")
    rows, *queries = edge_rows(np.random.default_rng(0))
    encoded = (Int8Codes if codes == "int8" else Fp16Codes)(torch.from_numpy(rows))
    for query in queries:
        screened, bound = encoded.scores(torch.from_numpy(query))
        exact = rows.astype(np.float64) @ query.astype(np.float64)
        error = np.abs(screened.double().numpy() - exact).max()
        assert 0 < error <= bound, (codes, error, bound)
        assert bound < (0.1 if codes == "int8" else 4e-3)  # small enough to prune


def test_the_probe_tells_fp32_sums_from_fp16_sums():
    def fp32_sums(rows, vector):
        products = rows.astype(np.float16).astype(np.float32) * vector.astype(np.float16).astype(np.float32)
        return products.sum(axis=1, dtype=np.float32).astype(np.float16)

    def fp16_sums(rows, vector):
        products = (rows.astype(np.float16) * vector.astype(np.float16)).astype(np.float16)
        total = np.zeros(len(rows), np.float16)
        for column in products.T:  # one fp16 rounding per addition, as an fp16 accumulator does
            total = (total + column).astype(np.float16)
        return total

    assert accumulates_in_fp32(fp32_sums, 512)
    assert not accumulates_in_fp32(fp16_sums, 512)
    assert not accumulates_in_fp32(fp32_sums, 16)  # too short to tell: screening stays off


@pytest.mark.parametrize("codes", ["int8", "fp16"])
def test_screened_answers_equal_the_full_product(monkeypatch, codes):
    if codes == "int8" and not int8_product_available():
        pytest.skip("this PyTorch has no int8 x int8 -> int32 product on the CPU")
    if codes == "fp16" and not fp16_kernel_accumulates_in_fp32(DIM):
        pytest.skip("this PyTorch's fp16 matrix-vector product does not sum in fp32")
    rng = np.random.default_rng(1)
    centres, owners, samples = clustered(rng, 3000, 3)
    picks = centres[rng.integers(0, len(centres), 40)]
    queries = units(picks + 0.6 * rng.standard_normal((40, DIM)) / np.sqrt(DIM) * 2)
    search = ScreenedSearch(samples, codes)
    monkeypatch.setattr(screening, "FIRST_CANDIDATES", 16)
    proven = 0
    for k, threshold in ((1, None), (5, None), (5, 0.5), (3, 0.95)):
        expected = full_fp32(samples, owners, queries, k, threshold)
        for query, want in zip(queries, expected):
            got = search.search(query, owners, 3, k, threshold)
            if got is None:
                continue
            proven += 1
            assert [(o, p) for o, _, p in got] == [(o, p) for o, _, p in want]
            np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in want], atol=1e-6)
    assert proven >= 100  # of 160: the proof holds for queries with a clear answer


def test_near_ties_at_the_candidate_edge_are_not_proven(monkeypatch):
    monkeypatch.setattr(screening, "FIRST_CANDIDATES", 16)  # 16, then 128 candidates, of 5,000
    rng = np.random.default_rng(2)
    query = units(rng.standard_normal((1, DIM)))[0]
    # 5,000 samples of 5,000 identities all at cosine 0.5 +- 1e-5 to the query: fp16 cannot order them
    others = units(rng.standard_normal((5000, DIM)))
    others -= np.outer(others @ query, query)
    others = units(others)
    samples = units(0.5 * query + np.sqrt(0.75) * others + 1e-5 * rng.standard_normal((5000, DIM)))
    owners = np.arange(5000)
    for codes in ("int8", "fp16"):
        assert ScreenedSearch(samples, codes).search(query, owners, 1, 5, None) is None, codes


def test_a_large_gallery_screens_single_queries_and_answers_as_fp32(tmp_path, monkeypatch):
    if screening.screening_codes(DIM) is None:
        pytest.skip("this PyTorch has neither an int8 product nor fp32 sums in its fp16 one: screening is off")
    monkeypatch.setattr(screening, "MIN_SCREENED_SAMPLES", 1000)
    monkeypatch.setattr(screening, "FIRST_CANDIDATES", 32)
    rng = np.random.default_rng(3)
    centres, owners, samples = clustered(rng, 800, 2)
    calls = []
    original = ScreenedSearch.search

    def counted(self, *args, **kwargs):
        calls.append(original(self, *args, **kwargs) is not None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ScreenedSearch, "search", counted)
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_many((f"id{i}", samples[owners == i]) for i in range(len(centres)))
        queries = units(centres[:6] + 0.3 * rng.standard_normal((6, DIM)) / np.sqrt(DIM) * 2)
        single = [gallery.search(query, k=5)[0] for query in queries]
        batched = gallery.search(queries, k=5)  # 6 <= MAX_SCREENED_QUERIES: screened one by one too
    assert len(calls) == 12 and all(calls)
    expected = full_fp32(samples, owners, queries, 5, None)
    for got in (single, batched):
        assert [[m.name for m in row] for row in got] == [[f"id{o}" for o, _, _ in row] for row in expected]
        np.testing.assert_allclose([[m.score for m in row] for row in got],
                                   [[s for _, s, _ in row] for row in expected], atol=1e-6)


def test_without_an_int8_product_screening_uses_fp16_and_without_either_it_is_off(monkeypatch):
    monkeypatch.setattr(screening, "int8_product_available", lambda: False)
    expected = "fp16" if fp16_kernel_accumulates_in_fp32(DIM) else None
    assert screening.screening_codes(DIM) == expected
    monkeypatch.setattr(screening, "fp16_kernel_accumulates_in_fp32", lambda dim: False)
    assert screening.screening_codes(DIM) is None
    assert not ScreenedSearch.usable(1, 10**6, DIM)


def test_int8_batches_score_each_query_as_a_single_query_does():
    if not int8_product_available():
        pytest.skip("this PyTorch has no int8 x int8 -> int32 product on the CPU")
    rng = np.random.default_rng(4)
    rows, queries = units(rng.standard_normal((500, DIM))), units(rng.standard_normal((7, DIM)))
    encoded = Int8Codes(torch.from_numpy(rows))
    many = encoded.scores_many(torch.from_numpy(queries))
    for query, row in zip(queries, many):
        single, bound = encoded.scores(torch.from_numpy(query))
        assert torch.equal(single, row)
        assert np.abs(row.double().numpy() - rows.astype(np.float64) @ query).max() <= bound
