"""Inner-product nearest-neighbour search over FAISS.

Exact (``IndexFlatIP``) below ``HNSW_THRESHOLD`` = 50,000 vectors, approximate HNSW
(``IndexHNSWFlat``, inner product, M=16, efConstruction=128) from there: reaching the threshold
converts the flat index in place (one build of the whole pool), and later additions go straight
into the graph. At that build 200 pool vectors are held out of the graph, used as queries against
an exact scan, and efSearch is set to the smallest value reaching recall@10 >= ``TARGET_RECALL``
(0.97), then they are inserted: the data decides how hard it is to search, not a constant
(with M=16: the benchmark's clustered 100k pool gets efSearch 32, 22k real MiniLM texts 96,
held-out recall 0.987 and 0.984). ``target_recall=None`` keeps a fixed ``ef_search``. M=16 searched
~1.4x faster than M=32 at the same recall on the 100k pool (172 vs 235 µs a query batched) and
builds in ~50 s instead of ~90 s. The sweep below was taken with M=32, efConstruction=64.
With L2-normalized vectors (what every :class:`~embeddings.encoder.Encoder` returns) the scores
are cosine similarities.

Measured with ``benchmarks/bench_knn.py --sweep`` on the 2-core dev machine (Xeon with AVX-512,
faiss-cpu 1.15.1, d=384, k=10, 500 held-out queries, best of 3 rounds, each measurement taken
while the machine was otherwise idle). Per-query µs; b64 = 64 queries per call, b1 = one.
Clustered synthetic unit vectors (~100 per cluster, 10th neighbour at cosine ~0.35):

    pool   exact b64  exact b1   HNSW ef=128: recall  b64   b1   build   IVFFlat build
    1k         8         77                   1.000    37    84   0.1 s      0.0 s
    5k        35        265                   1.000    87   233   0.6 s      0.1 s
    10k       88        458                   1.000   139   366   0.9 s      0.2 s
    20k      159      1,089                   1.000   171   362   2.9 s      0.6 s
    50k      344      5,719                   1.000   332   662    12 s      2.5 s
    100k     697     10,308                   1.000   383   811    31 s      5.8 s

(exact b1 is ``VectorIndex.search`` with its numpy path, below; FAISS's own one-query scan took
1.3-2.8x longer.) dspy's KNN, same data and machine: 0.10 / 0.72 / 9-13 ms a query at 1k / 10k /
100k (``benchmarks/bench_knn.py``).
MiniLM vectors of 22k real texts (trec, sms_spam, rotten_tomatoes) are harder: HNSW recall@10 at
ef=64 falls 0.994 / 0.982 / 0.971 / 0.963 at 1k / 5k / 10k / 20k, at ef=128 0.999 / 0.993 /
0.988 / 0.987 (synthetic: 1.000 at every size up to 100k, and >= 0.95 already at ef=16-24).
IVFFlat (nlist = 4 sqrt(n)) needs nprobe 96 of 565 lists at 20k for recall 0.95 on the real
vectors, slower than the exact scan (258 vs 139 µs/query b64), so IVF is not offered.

So: below 50k, an exact batched search costs at most ~0.35 ms a query, no more than HNSW at a
recall-safe efSearch, needs no build (HNSW takes 12 s at 50k) and is exact; one query at a time
costs up to ~6 ms, small next to one LM call (~2 s). Past 50k exact search keeps growing
linearly (0.7 ms batched, 10 ms alone at 100k) while HNSW stays well below 1 ms. A fixed
efSearch is either slow on easy data or unsafe on hard data (ef=32: recall 0.99 on the synthetic
100k pool, 0.92 on real text at 20k), hence the calibration.
``tests/embeddings/test_embeddings.py::test_hnsw_recall_at_calibrated_ef_search`` and
``::test_hnsw_recall_on_real_minilm_vectors`` (held-out queries) guard it.

Exact search on 2 cores: batches go through FAISS's BLAS path (see ``BLAS_MIN_WORK``); fewer
queries than that use one numpy matrix product over FAISS's storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

# faiss >= 1.14 sends a flat search to BLAS only when n_queries * dim >= 128,000 (tuned for
# many-core servers: below it each query scans the whole pool on its own). On 2 cores BLAS wins
# from ~8 queries at d=384: 64 queries over 100k vectors take 0.7 ms/query with it, 8 without.
# Older faiss counts queries (default 20) and is left alone.
_FAISS_NQ_TIMES_D_DEFAULT = 128_000
BLAS_MIN_WORK = 8 * 384  # n_queries * dim from which flat search uses BLAS
if faiss.cvar.distance_compute_blas_threshold == _FAISS_NQ_TIMES_D_DEFAULT:
    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_WORK

HNSW_THRESHOLD = 50_000  # measured, see the module docstring
HNSW_M = 16
EF_CONSTRUCTION = 128
EF_SEARCH = 64  # used as is when target_recall is None; with efConstruction 128: recall@10 0.98
# on real MiniLM vectors at 20k
TARGET_RECALL = 0.97  # efSearch is calibrated at the HNSW build to reach this recall@10
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_FORMAT = "evo.VectorIndex/1"


class VectorIndex:
    """Vectors with int64 ids; batched top-k search by inner product.

    ``search`` returns ``(scores, ids)``, both ``(n_queries, k)``, best first; when fewer than
    ``k`` vectors are indexed the tail is padded with score ``-inf`` and id ``-1``. All query rows
    go to FAISS in one call.

    >>> index = VectorIndex(3)
    >>> index.add(np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32), ids=[10, 11, 12])
    >>> index.search(np.array([[1.0, 0.2, 0.0]], np.float32), k=2)[1].tolist()
    [[10, 11]]
    >>> index.neighbors([10], k=1)[1].tolist()   # nearest *other* member
    [[11]]
    """

    def __init__(self, dim: int, *, hnsw_threshold: int = HNSW_THRESHOLD, hnsw_m: int = HNSW_M,
                 ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH,
                 target_recall: float | None = TARGET_RECALL) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        for name, value in (("hnsw_threshold", hnsw_threshold), ("hnsw_m", hnsw_m),
                            ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.dim = int(dim)
        self.hnsw_threshold = int(hnsw_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        self.target_recall = target_recall
        self.calibrated_recall: float | None = None
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._ids = np.zeros(0, dtype=np.int64)  # position in the FAISS index -> user id
        self._pos: dict[int, int] = {}  # user id -> position

    # -- properties ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._pos

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"hnsw"`` (approximate)."""
        return "hnsw" if isinstance(self._index, faiss.IndexHNSW) else "flat"

    @property
    def ids(self) -> np.ndarray:
        """The ids in index position order (a copy; insertion order, except that an HNSW build
        moves its calibration probes to the end)."""
        return self._ids.copy()

    # -- building --------------------------------------------------------------------------------
    def _as_matrix(self, x: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{what}: expected shape (n, {self.dim}), got {np.shape(x)}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: contains NaN or inf")
        return np.ascontiguousarray(a)

    def _new_hnsw(self) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Add ``vectors`` (n, dim) under ``ids`` (n unique ints >= 0; default: next positions).

        Reaching ``hnsw_threshold`` vectors converts the index to HNSW once (a build of the
        whole pool: see the module docstring for what that costs).
        """
        vecs = self._as_matrix(vectors, "add")
        n = vecs.shape[0]
        if ids is None:
            new_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        else:
            new_ids = np.asarray(ids)
            if new_ids.shape != (n,) or (n and not np.issubdtype(new_ids.dtype, np.integer)):
                raise ValueError(f"add: need {n} integer ids, got {new_ids.dtype} {new_ids.shape}")
            new_ids = new_ids.astype(np.int64)
            if n and new_ids.min() < 0:
                raise ValueError("add: ids must be >= 0 (-1 marks an empty result slot)")
        if n == 0:
            return
        id_list = new_ids.tolist()
        if len(set(id_list)) != n or any(i in self._pos for i in id_list):
            raise ValueError("add: ids must be unique and not already in the index")
        if self.kind == "flat" and len(self) + n >= self.hnsw_threshold:
            old = self._index.reconstruct_n(0, len(self)) if len(self) else None
            all_vecs = vecs if old is None else np.concatenate([old, vecs])
            order = self._build_hnsw(all_vecs)
            self._ids = np.concatenate([self._ids, new_ids])[order]
            self._pos = {int(i): p for p, i in enumerate(self._ids.tolist())}
            return
        start = len(self)
        self._index.add(vecs)
        self._ids = np.concatenate([self._ids, new_ids])
        self._pos.update(zip(id_list, range(start, start + n)))

    def calibrate(self, queries: np.ndarray, *, k: int = 10,
                  base: np.ndarray | None = None) -> tuple[int, float]:
        """Set ``ef_search`` to the smallest value of ``EF_GRID`` whose recall@``k`` on
        ``queries`` (against an exact scan of ``base``, default every indexed vector in position
        order) reaches ``target_recall``, else the largest; return ``(ef_search, recall)``.

        Run at the HNSW build with held-out pool vectors as queries: how hard a pool is to search
        depends on the data (clustered synthetic vectors need efSearch 16, MiniLM text more), so
        the data decides, not a constant. Members asking for themselves would overstate recall."""
        if self.kind != "hnsw" or len(self) == 0:
            return self.ef_search, 1.0
        target = self.target_recall if self.target_recall is not None else TARGET_RECALL
        q = self._as_matrix(queries, "calibrate")
        x = self._index.reconstruct_n(0, len(self)) if base is None else base
        kk = min(k, len(x))
        exact = np.argpartition(-(q @ x.T), kk - 1, axis=1)[:, :kk]
        recall = 0.0
        for ef in EF_GRID:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef, kk)
            _, pos = self._index.search(q, kk, params=params)
            recall = float(np.mean([len(set(a.tolist()) & set(t.tolist())) / kk
                                    for a, t in zip(pos, exact)]))
            self.ef_search = ef
            if recall >= target:
                break
        self._index.hnsw.efSearch = self.ef_search
        self.calibrated_recall = recall
        return self.ef_search, recall

    def _build_hnsw(self, x: np.ndarray, *, n_probe: int = 200, seed: int = 0) -> np.ndarray:
        """Replace the flat index by HNSW over ``x`` (all vectors, position order) and return
        the insertion order. With a ``target_recall``, ``n_probe`` vectors are held out of the
        graph, serve as queries to calibrate efSearch, then are inserted last."""
        hnsw = self._new_hnsw()
        self._index = hnsw
        n = len(x)
        if self.target_recall is None or n < 4 * n_probe:
            hnsw.add(x)
            return np.arange(n)
        probe = np.random.default_rng(seed).choice(n, size=n_probe, replace=False)
        held = np.zeros(n, dtype=bool)
        held[probe] = True
        rest = np.flatnonzero(~held)
        hnsw.add(x[rest])
        self.calibrate(x[probe], base=x[rest])
        hnsw.add(x[probe])
        return np.concatenate([rest, probe])

    # -- searching -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *,
               exclude_ids: Sequence[int] | np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each query row: ``(scores float32, ids int64)``.

        ``exclude_ids`` (one id per query row, ``-1`` for none) drops that id from its row's
        results, e.g. a query that is itself in the index: ``k + 1`` are fetched, the excluded id
        (or else the last) is dropped, so every row still has ``k`` results when the index holds
        more than ``k`` other vectors.
        """
        q = self._as_matrix(queries, "search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        nq = q.shape[0]
        exclude = None
        if exclude_ids is not None:
            exclude = np.asarray(exclude_ids)
            if exclude.shape != (nq,) or (nq and not np.issubdtype(exclude.dtype, np.integer)):
                raise ValueError(f"search: exclude_ids needs {nq} integer ids (one per query row, "
                                 f"-1 for none), got {exclude.dtype} {exclude.shape}")
            exclude = exclude.astype(np.int64)
        fetch = k + 1 if exclude is not None else k
        if len(self) == 0 or nq == 0:
            return (np.full((nq, k), -np.inf, dtype=np.float32),
                    np.full((nq, k), -1, dtype=np.int64))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, fetch)
            scores, pos = self._index.search(q, fetch, params=params)
        elif nq * self.dim < BLAS_MIN_WORK:
            scores, pos = self._flat_few_queries(q, fetch)
        else:
            scores, pos = self._index.search(q, fetch)
        missing = pos < 0
        out_ids = self._ids[np.where(missing, 0, pos)]
        out_ids[missing] = -1
        scores = scores.astype(np.float32, copy=False)
        scores[missing] = -np.inf
        if exclude is None:
            return scores, out_ids
        # Drop exactly one slot per row: the excluded id where present (ids are unique within a
        # row), else the extra (k+1)-th result.
        drop = (out_ids == exclude[:, None]) & (exclude[:, None] >= 0)
        drop[~drop.any(axis=1), -1] = True
        keep = ~drop
        return scores[keep].reshape(nq, k), out_ids[keep].reshape(nq, k)

    def _flat_few_queries(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``fetch`` for a few queries by one numpy matrix product over FAISS's own
        storage (no copy): ~1.8x faster than FAISS's per-query scan here (10k x 384: 370 vs
        656 µs a query), which also slows down on two OpenMP threads."""
        n, nq = len(self), q.shape[0]
        pool = faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim)
        sims = q @ pool.T
        kk = min(fetch, n)
        top = (np.argpartition(sims, n - kk, axis=1)[:, n - kk:] if kk < n
               else np.broadcast_to(np.arange(n), (nq, n)))
        rows = np.arange(nq)[:, None]
        top_sims = sims[rows, top]
        order = np.argsort(-top_sims, axis=1, kind="stable")
        scores, pos = top_sims[rows, order], top[rows, order].astype(np.int64, copy=False)
        if kk < fetch:  # fewer vectors than asked for: pad
            scores = np.pad(scores, ((0, 0), (0, fetch - kk)), constant_values=-np.inf)
            pos = np.pad(pos, ((0, 0), (0, fetch - kk)), constant_values=-1)
        return scores, pos

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (float32, ``(len(ids), dim)``)."""
        id_list = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        try:
            pos = np.fromiter((self._pos[i] for i in id_list), dtype=np.int64, count=len(id_list))
        except KeyError as e:
            raise KeyError(f"vectors: id {e.args[0]} is not in the index") from None
        if not id_list:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(pos)

    def neighbors(self, ids: Sequence[int] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each member id, its ``k`` nearest *other* members: ``search(vectors(ids), k,
        exclude_ids=ids)`` in one batched call (e.g. each training example's closest demos)."""
        id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self.search(self.vectors(id_arr), k, exclude_ids=id_arr)

    # -- persistence -----------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"format": _FORMAT, "dim": self.dim, "hnsw_threshold": self.hnsw_threshold,
                "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "target_recall": self.target_recall,
                "kind": self.kind}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one ``.npz`` file (config, ids, serialized FAISS index); atomic replace."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, config=np.array(json.dumps(self._config())), ids=self._ids,
                     index=faiss.serialize_index(self._index))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        with np.load(path, allow_pickle=False) as data:
            config = json.loads(str(data["config"]))
            if config.get("format") != _FORMAT:
                raise ValueError(f"{path}: not a VectorIndex file "
                                 f"(format {config.get('format')!r})")
            ids = np.asarray(data["ids"], dtype=np.int64)
            raw = np.asarray(data["index"], dtype=np.uint8)
        self = cls(config["dim"], hnsw_threshold=config["hnsw_threshold"], hnsw_m=config["hnsw_m"],
                   ef_construction=config["ef_construction"], ef_search=config["ef_search"],
                   target_recall=config.get("target_recall", TARGET_RECALL))
        index = faiss.deserialize_index(raw)
        if index.d != self.dim or index.ntotal != len(ids):
            raise ValueError(f"{path}: index has d={index.d}, n={index.ntotal}; "
                             f"expected d={self.dim}, n={len(ids)}")
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = self.ef_search
        self._index = index
        self._ids = ids
        self._pos = {int(i): p for p, i in enumerate(ids.tolist())}
        return self
