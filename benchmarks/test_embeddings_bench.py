"""VectorIndex.search against the numpy baseline dspy's KNN uses (np.dot + argsort), n=10k, d=384.

Run with `make bench` (pytest benchmarks/ --benchmark-only).
"""

from __future__ import annotations

import numpy as np
import pytest

from evo.embeddings import VectorIndex, l2_normalize

N, D, K, NQ = 10_000, 384, 10, 32


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    db = l2_normalize(rng.standard_normal((N, D)).astype(np.float32))
    queries = l2_normalize(rng.standard_normal((NQ, D)).astype(np.float32))
    index = VectorIndex(D)
    index.add(db)
    return db, queries, index


def numpy_topk(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """One query at a time, like dspy/predict/knn.py: dot products, full argsort."""
    return np.stack([np.argsort(-(db @ q))[:k] for q in queries])


@pytest.mark.benchmark(group="search-10k-d384-32q")
def test_bench_vector_index_flat(benchmark, data):
    db, queries, index = data
    assert index.kind == "flat"
    _, ids = benchmark(index.search, queries, K)
    np.testing.assert_array_equal(ids[:, 0], numpy_topk(db, queries, 1)[:, 0])


@pytest.mark.benchmark(group="search-10k-d384-32q")
def test_bench_numpy_dot_argsort(benchmark, data):
    db, queries, _ = data
    ids = benchmark(numpy_topk, db, queries, K)
    assert ids.shape == (NQ, K)
