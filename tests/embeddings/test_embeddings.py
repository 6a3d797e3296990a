"""embeddings/: the FAISS index against a numpy reference, persistence, the cache, real MiniLM."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evo.embeddings import (
    HNSW_THRESHOLD,
    CachedEncoder,
    EmbeddingCache,
    Encoder,
    HashingEncoder,
    MiniLMEncoder,
    VectorIndex,
    default_cache_path,
    default_encoder,
    l2_normalize,
)
from evo.embeddings.index import BLAS_MIN_WORK, EF_GRID, EF_SEARCH, TARGET_RECALL

# ---------------------------------------------------------------------------------------------
# helpers


def brute_force(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Reference top-k scores (descending) by numpy dot products."""
    scores = queries.astype(np.float64) @ db.astype(np.float64).T
    return -np.sort(-scores, axis=1)[:, :k]


def check_against_reference(index: VectorIndex, db: np.ndarray, db_ids: np.ndarray,
                            queries: np.ndarray, k: int) -> None:
    """Tie-robust check: top-k scores equal the reference, and each returned id really has the
    returned score; ids are distinct; the tail beyond len(index) is padding."""
    scores, ids = index.search(queries, k)
    n = len(db)
    kk = min(k, n)
    assert scores.shape == ids.shape == (len(queries), k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    ref = brute_force(db, queries, kk)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(scores[:, :kk], ref, rtol=0, atol=tol)
    pos_of = {int(i): p for p, i in enumerate(db_ids)}
    for qi in range(len(queries)):
        row = ids[qi, :kk].tolist()
        assert len(set(row)) == kk
        true = [float(queries[qi].astype(np.float64) @ db[pos_of[i]].astype(np.float64))
                for i in row]
        np.testing.assert_allclose(scores[qi, :kk], true, rtol=0, atol=tol)
    assert (ids[:, kk:] == -1).all()
    assert np.isneginf(scores[:, kk:]).all()


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int,
              noise: float) -> np.ndarray:
    """Unit vectors around random centres; ``noise`` is the noise norm relative to the centre's."""
    centers = l2_normalize(rng.standard_normal((n_clusters, d)))
    labels = rng.integers(0, n_clusters, size=n)
    noise_vectors = rng.standard_normal((n, d)).astype(np.float32)
    return l2_normalize(centers[labels] + noise / np.sqrt(d) * noise_vectors)


class FakeEncoder:
    """Deterministic hash-seeded unit vectors; records every text it is asked to encode."""

    def __init__(self, dim: int = 16, model_id: str = "fake/v1") -> None:
        self.dim = dim
        self.model_id = model_id
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def encode(self, texts):
        texts = list(texts)
        with self._lock:
            self.calls.append(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        return l2_normalize(np.array(rows, dtype=np.float32).reshape(len(texts), self.dim))

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


# ---------------------------------------------------------------------------------------------
# VectorIndex: exact search


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), d=st.integers(1, 48),
       nq=st.integers(1, 8), k=st.integers(1, 40))
def test_flat_index_matches_numpy_bruteforce(seed, n, d, nq, k):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # arbitrary, non-contiguous ids
    index = VectorIndex(d)
    # add in two batches: results must not depend on how vectors were added
    cut = int(rng.integers(0, n + 1))
    index.add(db[:cut], ids[:cut])
    index.add(db[cut:], ids[cut:])
    assert index.kind == "flat" and len(index) == n
    check_against_reference(index, db, ids, queries, k)


@settings(max_examples=40, deadline=None)
@given(db=hnp.arrays(np.int8, st.tuples(st.integers(1, 60), st.just(6)),
                    elements=st.integers(-3, 3)),
       queries=hnp.arrays(np.int8, st.tuples(st.integers(1, 5), st.just(6)),
                         elements=st.integers(-3, 3)),
       k=st.integers(1, 70))
def test_flat_index_with_many_ties(db, queries, k):
    """Small-integer vectors: exact dot products and lots of ties, duplicates and zero vectors."""
    db = db.astype(np.float32)
    index = VectorIndex(6)
    index.add(db)
    check_against_reference(index, db, np.arange(len(db)), queries.astype(np.float32), k)


def test_search_empty_index_and_input_validation():
    index = VectorIndex(4)
    scores, ids = index.search(np.ones((2, 4), np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError):
        index.add(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError):
        index.add(np.ones((2, 4), np.float32), ids=[1, 1])
    index.add(np.ones((2, 4), np.float32), ids=[1, 2])
    with pytest.raises(ValueError):
        index.add(np.ones((1, 4), np.float32), ids=[2])
    with pytest.raises(ValueError):
        index.add(np.ones((1, 4), np.float32), ids=[-1])
    with pytest.raises(ValueError):
        index.add(np.full((1, 4), np.nan, np.float32), ids=[3])
    with pytest.raises(ValueError):
        index.search(np.ones((1, 4), np.float32), 0)
    s, i = index.search(np.ones(4, np.float32), 1)  # a 1-D query is one query
    assert s.shape == i.shape == (1, 1) and i[0, 0] in (1, 2)


def check_exclude(index: VectorIndex, db: np.ndarray, db_ids: np.ndarray, queries: np.ndarray,
                  exclude: np.ndarray, k: int) -> None:
    """search(..., exclude_ids=...) equals the exact top-k of the pool minus each row's id."""
    scores, ids = index.search(queries, k, exclude_ids=exclude)
    assert scores.shape == ids.shape == (len(queries), k)
    pos_of = {int(i): p for p, i in enumerate(db_ids)}
    full = queries.astype(np.float64) @ db.astype(np.float64).T
    for qi in range(len(queries)):
        keep = db_ids != exclude[qi]
        ref = -np.sort(-full[qi, keep])[:k]
        kk = len(ref)
        tol = 1e-4 * max(1.0, float(np.abs(ref).max(initial=0.0)))
        np.testing.assert_allclose(scores[qi, :kk], ref, rtol=0, atol=tol)
        row = ids[qi, :kk].tolist()
        assert exclude[qi] not in row and len(set(row)) == kk
        np.testing.assert_allclose(scores[qi, :kk], [full[qi, pos_of[i]] for i in row],
                                   rtol=0, atol=tol)
        assert (ids[qi, kk:] == -1).all() and np.isneginf(scores[qi, kk:]).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), d=st.integers(1, 16),
       nq=st.integers(1, 8), k=st.integers(1, 20))
def test_exclude_ids_matches_bruteforce_without_that_id(seed, n, d, nq, k):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, d)).astype(np.float32)
    db_ids = rng.permutation(5 * n)[:n].astype(np.int64)
    index = VectorIndex(d)
    index.add(db, db_ids)
    # rows mix members (query = the member's own vector), -1 (no exclusion) and absent ids
    members = rng.integers(0, n, size=nq)
    queries = db[members] + 0.01 * rng.standard_normal((nq, d)).astype(np.float32)
    exclude = db_ids[members].copy()
    exclude[rng.random(nq) < 0.25] = -1
    exclude[rng.random(nq) < 0.15] = 10 * n + 1  # not in the index: nothing to drop
    check_exclude(index, db, db_ids, queries, exclude, k)


def test_neighbors_are_nearest_other_members_in_one_faiss_call():
    rng = np.random.default_rng(3)
    db = clustered(rng, 400, 32, 12, 1.0)
    db_ids = rng.permutation(10_000)[:400]
    index = VectorIndex(32)
    index.add(db, db_ids)
    calls = []
    inner = index._index
    index._index.search = lambda *a, **kw: calls.append(1) or type(inner).search(inner, *a, **kw)
    scores, ids = index.neighbors(db_ids, 5)
    assert len(calls) == 1  # every query row in one batched FAISS search
    assert (ids != db_ids[:, None]).all()
    check_exclude(index, db, db_ids, db, db_ids, 5)
    np.testing.assert_array_equal(index.vectors(db_ids[[5, 0]]), db[[5, 0]])
    with pytest.raises(KeyError):
        index.vectors([10_001])
    assert int(db_ids[0]) in index and 10_001 not in index
    with pytest.raises(ValueError):
        index.search(db[:3], 2, exclude_ids=db_ids[:2])  # one id per query row
    with pytest.raises(ValueError):
        index.search(db[:2], 2, exclude_ids=np.array([0.5, 1.0]))


def test_exclude_on_a_tiny_index_pads():
    index = VectorIndex(2)
    index.add(np.array([[1, 0], [0, 1]], np.float32), ids=[7, 8])
    scores, ids = index.search(np.array([[1, 0], [1, 0]], np.float32), 3, exclude_ids=[7, -1])
    assert ids.tolist() == [[8, -1, -1], [7, 8, -1]]
    assert np.isneginf(scores[0, 1:]).all() and scores[1, 0] == pytest.approx(1.0)


def test_batched_flat_search_through_blas_is_exact():
    """Enough queries that FAISS takes its BLAS path (n_queries * dim >= BLAS_MIN_WORK)."""
    rng = np.random.default_rng(5)
    db = clustered(rng, 3_000, 384, 30, 1.5)
    queries = clustered(rng, 64, 384, 30, 1.5)
    assert BLAS_MIN_WORK <= 64 * 384
    index = VectorIndex(384)
    index.add(db)
    check_against_reference(index, db, np.arange(3_000), queries, 10)
    check_exclude(index, db, np.arange(3_000), db[:64], np.arange(64), 10)


# ---------------------------------------------------------------------------------------------
# VectorIndex: flat -> HNSW, persistence


def test_switches_to_hnsw_at_threshold():
    rng = np.random.default_rng(0)
    db = clustered(rng, 300, 32, 10, 1.0)
    index = VectorIndex(32, hnsw_threshold=200)
    index.add(db[:150])
    assert index.kind == "flat"
    index.add(db[150:250])  # crosses the threshold: converted, earlier vectors kept
    assert index.kind == "hnsw" and len(index) == 250
    index.add(db[250:])
    assert index.kind == "hnsw" and len(index) == 300
    # every stored vector finds itself first (tiny graph, generous ef: effectively exact)
    scores, ids = index.search(db, 1)
    assert (ids[:, 0] == np.arange(300)).mean() >= 0.99


@pytest.mark.parametrize("threshold", [10_000, 100], ids=["flat", "hnsw"])
def test_save_load_roundtrip(tmp_path, threshold):
    rng = np.random.default_rng(1)
    db = clustered(rng, 500, 24, 8, 1.0)
    ids = rng.permutation(100_000)[:500]
    index = VectorIndex(24, hnsw_threshold=threshold, ef_search=64, target_recall=None)
    index.add(db, ids)
    path = tmp_path / "sub" / "index.npz"
    index.save(path)
    loaded = VectorIndex.load(path)
    assert loaded.kind == index.kind and len(loaded) == 500 and loaded.dim == 24
    assert loaded.ef_search == 64 and loaded.hnsw_threshold == threshold
    assert loaded.target_recall is None
    np.testing.assert_array_equal(loaded.ids, index.ids)
    queries = clustered(rng, 20, 24, 8, 1.0)
    s1, i1 = index.search(queries, 10)
    s2, i2 = loaded.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # a loaded index keeps working: add more, ids stay unique
    loaded.add(db[:2], [100_001, 100_002])
    assert len(loaded) == 502
    with pytest.raises(ValueError):
        loaded.add(db[:1], ids[:1])


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, config=np.array('{"format": "other"}'), ids=np.zeros(0),
             index=np.zeros(0, np.uint8))
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_default_threshold_is_exact_below_and_hnsw_at_it():
    """With the shipped defaults: exact up to HNSW_THRESHOLD - 1 vectors, HNSW from the
    threshold."""
    d = 8
    rng = np.random.default_rng(11)
    db = clustered(rng, HNSW_THRESHOLD + 50, d, 50, 1.0)
    queries = clustered(rng, 20, d, 50, 1.0)
    index = VectorIndex(d)
    index.add(db[:HNSW_THRESHOLD - 1])
    assert index.kind == "flat"
    check_against_reference(index, db[:HNSW_THRESHOLD - 1], np.arange(HNSW_THRESHOLD - 1),
                            queries, 10)
    index.add(db[HNSW_THRESHOLD - 1:HNSW_THRESHOLD])
    assert index.kind == "hnsw" and len(index) == HNSW_THRESHOLD
    index.add(db[HNSW_THRESHOLD:])
    assert len(index) == HNSW_THRESHOLD + 50
    # efSearch was calibrated on the pool at the conversion: the smallest grid value reaching
    # the target recall (easy clustered data: a small one)
    assert index.ef_search in EF_GRID and index.calibrated_recall >= TARGET_RECALL


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(t)) / k for a, t in zip(approx, exact)]))


def test_hnsw_recall_at_calibrated_ef_search():
    """HNSW forced on 12k clustered d=384 vectors: recall@10 >= 0.95 at the efSearch calibrated
    at the build, for held-out queries and for members asking for their nearest other members;
    a fixed efSearch (target_recall=None) is kept as given."""
    rng = np.random.default_rng(7)
    n, d = 12_000, 384
    data = clustered(rng, n + 200, d, 120, 1.5)  # top-10 cosine ~0.35: not trivially separable
    queries, db = data[:200], data[200:]
    hnsw = VectorIndex(d, hnsw_threshold=1)
    hnsw.add(db)
    assert hnsw.kind == "hnsw" and hnsw.ef_search in EF_GRID
    assert hnsw.calibrated_recall >= TARGET_RECALL
    fixed = VectorIndex(d, hnsw_threshold=1, target_recall=None)
    fixed.add(db[:500])
    assert fixed.ef_search == EF_SEARCH and fixed.calibrated_recall is None
    exact = VectorIndex(d, hnsw_threshold=10**9)
    exact.add(db)
    assert _recall(hnsw.search(queries, 10)[1], exact.search(queries, 10)[1]) >= 0.95
    members = rng.permutation(n)[:200]
    got = hnsw.neighbors(members, 10)[1]
    assert (got != members[:, None]).all()
    assert _recall(got, exact.neighbors(members, 10)[1]) >= 0.95


@pytest.mark.slow
@pytest.mark.network
def test_hnsw_recall_on_real_minilm_vectors():
    """Real text is harder for HNSW than synthetic clusters: MiniLM vectors of ~10.6k TREC
    questions and SMS messages (encoded once, ~1 min, then read from the embedding cache), HNSW
    forced, the calibrated efSearch keeps recall@10 >= 0.95 for held-out queries."""
    from evo.datasets import fetch

    texts: list[str] = []
    for name in ("trec", "sms_spam"):
        texts += [" ".join(ex.inputs.values()) for ex in fetch(name).examples]
    vecs = default_encoder().encode(list(dict.fromkeys(texts)))
    perm = np.random.default_rng(0).permutation(len(vecs))
    queries, db = vecs[perm[:300]], vecs[perm[300:]]
    hnsw = VectorIndex(384, hnsw_threshold=1)
    hnsw.add(db)
    exact = VectorIndex(384, hnsw_threshold=10**9)
    exact.add(db)
    assert _recall(hnsw.search(queries, 10)[1], exact.search(queries, 10)[1]) >= 0.95
    members = np.arange(300)  # default ids are positions in db
    assert _recall(hnsw.neighbors(members, 10)[1], exact.neighbors(members, 10)[1]) >= 0.95


# ---------------------------------------------------------------------------------------------
# EmbeddingCache / CachedEncoder


def test_cached_encoder_never_reencodes(tmp_path):
    fake = FakeEncoder()
    path = tmp_path / "emb.sqlite3"
    enc = CachedEncoder(fake, EmbeddingCache(path))
    assert isinstance(enc, Encoder) and isinstance(fake, Encoder)
    assert enc.model_id == "fake/v1" and enc.dim == 16

    first = enc.encode(["a", "b", "a", "c", "b"])  # duplicates within a batch: encoded once
    assert sorted(fake.encoded) == ["a", "b", "c"] and len(fake.calls) == 1
    np.testing.assert_array_equal(first, fake.encode(["a", "b", "a", "c", "b"]))
    fake.calls.clear()

    second = enc.encode(["c", "d", "a", "d"])  # only the miss is encoded
    assert fake.encoded == ["d"]
    np.testing.assert_array_equal(second[[0, 2]], first[[3, 0]])
    np.testing.assert_array_equal(second[1], second[3])
    assert np.allclose(np.linalg.norm(second, axis=1), 1.0, atol=1e-6)
    fake.calls.clear()

    assert enc.encode(["a", "b", "c", "d"]).shape == (4, 16)
    assert enc.encode([]).shape == (0, 16)
    assert fake.calls == []
    assert enc.hits == 2 + 4 and enc.misses == 3 + 1

    # persistent: a new process (new cache object on the same file) encodes nothing
    enc2 = CachedEncoder(fake, EmbeddingCache(path))
    np.testing.assert_array_equal(enc2.encode(["d", "c"]), second[[1, 0]])
    assert fake.calls == []

    # keyed by model_id: another model shares the file but not the vectors
    other = FakeEncoder(model_id="fake/v2")
    CachedEncoder(other, EmbeddingCache(path)).encode(["a"])
    assert other.encoded == ["a"]
    assert EmbeddingCache(path).count("fake/v1") == 4


def test_cache_unicode_and_long_texts(tmp_path):
    fake = FakeEncoder(dim=8)
    enc = CachedEncoder(fake, EmbeddingCache(tmp_path / "c.sqlite3"))
    texts = ["", " ", "naïve café ☕", "x" * 100_000, "🙂\n\t\x00nul"]
    v = enc.encode(texts)
    v2 = enc.encode(list(reversed(texts)))
    np.testing.assert_array_equal(v2, v[::-1])
    assert len(fake.calls) == 1
    with pytest.raises(TypeError):
        enc.encode("not a list")


def test_cache_many_texts_and_threads(tmp_path):
    """More keys than one SQL chunk; concurrent callers share one cache safely."""
    fake = FakeEncoder(dim=4)
    enc = CachedEncoder(fake, EmbeddingCache(tmp_path / "c.sqlite3"))
    texts = [f"text {i}" for i in range(1_700)]
    ref = enc.encode(texts)
    fake.calls.clear()
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            got = enc.encode(texts[offset:] + texts[:offset])
            np.testing.assert_array_equal(got, np.roll(ref, -offset, axis=0))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and fake.calls == []


def test_default_cache_follows_evo_cache_dir(tmp_cache_dir):
    assert default_cache_path() == tmp_cache_dir / "embeddings" / "embeddings.sqlite3"
    enc = default_encoder()  # does not load the model yet
    assert isinstance(enc, CachedEncoder) and isinstance(enc.encoder, MiniLMEncoder)
    assert enc.model_id == "sentence-transformers/all-MiniLM-L6-v2" and enc.dim == 384
    assert enc.encoder._model is None
    assert (tmp_cache_dir / "embeddings" / "embeddings.sqlite3").exists()



# ---------------------------------------------------------------------------------------------
# HashingEncoder


_HASHING_CHILD = """
import json, sys
from evo.embeddings import HashingEncoder
v = HashingEncoder(dim=64).encode(["Who wrote Hamlet?", "naïve café", ""])
print(json.dumps({"v": v.tolist(), "torch": "torch" in sys.modules}))
"""


def test_hashing_encoder_is_deterministic_across_processes():
    texts = ["Who wrote Hamlet?", "naïve café", ""]
    here = HashingEncoder(dim=64).encode(texts)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for seed in ("0", "12345"):  # a different str hash salt in each child
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root}
        out = subprocess.run([sys.executable, "-c", _HASHING_CHILD], env=env, cwd=root,
                             capture_output=True, text=True, check=True, timeout=120)
        child = json.loads(out.stdout)
        np.testing.assert_array_equal(np.array(child["v"], dtype=np.float32), here)
        assert child["torch"] is False  # dependency-free: importing and encoding loads no torch


def test_hashing_encoder_conforms_and_ranks_similar_text_higher():
    enc = HashingEncoder()
    assert isinstance(enc, Encoder) and enc.dim == 512
    texts = ["What is the capital of France?", "what's the capital city of France",
             "The stock market fell sharply today.", "Stock markets fell sharply on Tuesday",
             "", "   "]
    v = enc.encode(texts)
    assert v.shape == (6, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:4], axis=1), 1.0, atol=1e-6)
    assert not v[4:].any()  # no features: the zero vector
    sim = v[:4] @ v[:4].T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3
    # case, Unicode form and batch composition do not change a text's vector
    np.testing.assert_array_equal(enc.encode(["WHAT IS THE CAPITAL OF FRANCE?"])[0], v[0])
    np.testing.assert_array_equal(enc.encode(["caf\u00e9"]), enc.encode(["cafe\u0301"]))
    assert enc.encode([]).shape == (0, 512)
    with pytest.raises(TypeError):
        enc.encode("one string")
    with pytest.raises(ValueError):
        HashingEncoder(dim=0)
    with pytest.raises(ValueError):
        HashingEncoder(ngram_range=(4, 3))


def test_hashing_encoder_model_id_names_its_parameters():
    ids = {HashingEncoder().model_id, HashingEncoder(dim=256).model_id,
           HashingEncoder(ngram_range=(2, 4)).model_id,
           HashingEncoder(word_unigrams=False).model_id}
    assert len(ids) == 4
    assert HashingEncoder().model_id == HashingEncoder().model_id
    # char_wb n-grams of the space-padded token (a short token once, whole), then word unigrams
    assert HashingEncoder().features("Hi!") == [" hi", "hi!", "i! ", " hi!", "hi! ", " hi! ",
                                                "w:hi"]


def test_hashing_encoder_behind_cache_with_index(tmp_path):
    enc = CachedEncoder(HashingEncoder(), EmbeddingCache(tmp_path / "h.sqlite3"))
    assert isinstance(enc, Encoder) and enc.model_id.startswith("evo/hashing-v1")
    docs = ["How far is the moon from the earth?", "Who wrote the play Hamlet?",
            "What is the capital of France?", "When did World War II end?"]
    index = VectorIndex(enc.dim)
    index.add(enc.encode(docs))
    _, ids = index.search(enc.encode(["capital of France", "Hamlet was written by whom?"]), 1)
    assert ids[:, 0].tolist() == [2, 1]
    assert enc.misses == 6 and enc.hits == 0
    np.testing.assert_array_equal(enc.encode(docs), HashingEncoder().encode(docs))
    assert enc.misses == 6 and enc.hits == 4


# ---------------------------------------------------------------------------------------------
# The real model


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.mark.network
def test_minilm_semantics(minilm):
    t0 = time.perf_counter()
    v = minilm.encode(["cat", "kitten", "stock market"])
    load_and_encode = time.perf_counter() - t0
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cat_kitten, cat_stock = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert cat_kitten > cat_stock + 0.2, (cat_kitten, cat_stock)
    assert load_and_encode < 120
    # deterministic, and batch composition does not change a text's vector
    np.testing.assert_allclose(minilm.encode(["kitten"])[0], v[1], atol=1e-5)


@pytest.mark.network
def test_minilm_behind_cache_with_index(minilm, tmp_path):
    enc = CachedEncoder(minilm, EmbeddingCache(tmp_path / "e.sqlite3"))
    docs = ["How far is the moon?", "Who wrote Hamlet?", "What is the capital of France?",
            "When did World War II end?"]
    index = VectorIndex(enc.dim)
    index.add(enc.encode(docs))
    _, ids = index.search(enc.encode(["Which city is France's capital?", "Author of Hamlet"]), 1)
    assert ids[:, 0].tolist() == [2, 1]
    assert enc.misses == 6
    enc.encode(docs)
    assert enc.misses == 6 and enc.hits == 4
