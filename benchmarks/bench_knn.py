"""KNN retrieval: evo's :class:`embeddings.VectorIndex` against ``dspy.predict.knn.KNN``, and the
flat-vs-approximate sweep that set ``embeddings.index.HNSW_THRESHOLD``.

    .venv/bin/python benchmarks/bench_knn.py            # KNN rows at pools of 1k, 10k, 100k
    .venv/bin/python benchmarks/bench_knn.py --quick    # 1k and 10k only
    .venv/bin/python benchmarks/bench_knn.py --sweep    # flat vs HNSW vs IVF table (~4 min
                                                         # of an idle machine: it waits for one)
    .venv/bin/python benchmarks/bench_knn.py --sweep --real   # the same on MiniLM vectors of ~22k
                                                               # real texts (encoded once, cached)

dspy answers one query per call (its API): embed the query, ``np.dot`` against every training
vector, full ``argsort``, build the list. Its vectorizer here is a dict lookup of precomputed
vectors behind ``dspy.Embedder`` (caching off), so its time is the search, not a model. Ours
answers the same queries in one batched ``VectorIndex.search`` call; a second row per pool shows
batches of one query; where the pool is past HNSW_THRESHOLD a third row shows what a lower
efSearch would buy (and why it is not the default). Build time is in the note, not counted per
query. The numbers behind HNSW_THRESHOLD are in ``embeddings/index.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import faiss
import numpy as np

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_knn
    from _timing import HEADER, Row, best_time
except ImportError:  # pragma: no cover
    from benchmarks._timing import HEADER, Row, best_time

from evo.embeddings import VectorIndex, l2_normalize
from evo.embeddings.index import EF_SEARCH, HNSW_THRESHOLD

D = 384


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int,
              noise: float) -> np.ndarray:
    """Unit vectors around random centres (as in tests/embeddings/test_embeddings.py), generated
    in float32 so 100k x 384 takes about a second. ``noise`` is the noise norm relative to the
    centre's: at 1.5 a point's 10th neighbour has cosine ~0.35, close to the rest of its cluster
    (a hard case)."""
    centers = l2_normalize(rng.standard_normal((n_clusters, d), dtype=np.float32))
    labels = rng.integers(0, n_clusters, size=n)
    noise_v = rng.standard_normal((n, d), dtype=np.float32)
    noise_v *= np.float32(noise / np.sqrt(d))
    noise_v += centers[labels]
    return l2_normalize(noise_v)


def pool_and_queries(n: int, n_queries: int, *, d: int = D,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pool vectors and ``n_queries`` held-out queries from one ~100-per-cluster mixture."""
    rng = np.random.default_rng(seed)
    data = clustered(rng, n + n_queries, d, max(10, n // 100), 1.5)
    return data[n_queries:], data[:n_queries]


def cpu_busy(interval_s: float = 0.3) -> float:
    """Fraction of the machine's CPU time spent busy over ``interval_s`` (Linux /proc/stat)."""
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)

    idle0, total0 = snap()
    time.sleep(interval_s)
    idle1, total1 = snap()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_busy: float = 0.1, timeout_s: float = 60.0) -> bool:
    """Wait (up to ``timeout_s``) until the machine is nearly idle; False if it never was. Timings
    on a shared 2-core machine are meaningless while someone else's job holds a core: FAISS's
    OpenMP threads then wait on each other and a search can take 10x longer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cpu_busy() < max_busy:
                return True
        except OSError:  # not Linux: nothing to wait for
            return True
        time.sleep(1.0)
    return False


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k
                          for a, e in zip(approx, exact)]))


# ---------------------------------------------------------------------------------------------
# KNN against dspy


def _dspy_knn(pool_texts: list[str], lookup: dict[str, np.ndarray], k: int):
    import dspy
    from dspy.predict.knn import KNN

    def vectorize(texts: list[str]) -> np.ndarray:
        return np.stack([lookup[t] for t in texts])  # KNN embeds "text: <value>"

    trainset = [dspy.Example(text=t).with_inputs("text") for t in pool_texts]
    return KNN(k, trainset, dspy.Embedder(vectorize, caching=False))


def _time_per_query_batched(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    return best_time(lambda: index.search(queries, k), repeat=5) / len(queries)


def _time_per_query_single(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    rows = [q.reshape(1, -1) for q in queries]

    def one_by_one() -> None:
        for q in rows:
            index.search(q, k)

    return best_time(one_by_one, repeat=5) / len(rows)


def run(quick: bool = False, *, k: int = 10, n_queries: int = 200) -> list[Row]:
    """KNN rows (per-query seconds, ours vs dspy) at pools of 1k, 10k and, unless quick, 100k."""
    rows: list[Row] = []
    for n in ((1_000, 10_000) if quick else (1_000, 10_000, 100_000)):
        pool, queries = pool_and_queries(n, n_queries, seed=n)
        pool_texts = [f"pool {i}" for i in range(n)]
        query_texts = [f"query {i}" for i in range(n_queries)]
        lookup = {f"text: {t}": v for t, v in zip(pool_texts + query_texts, [*pool, *queries])}

        t0 = time.perf_counter()
        index = VectorIndex(D)
        index.add(pool)
        build_s = time.perf_counter() - t0
        exact = VectorIndex(D, hnsw_threshold=10**12)
        exact.add(pool)
        _, true_ids = exact.search(queries, k)
        _, got_ids = index.search(queries, k)
        recall = recall_at_k(got_ids, true_ids)

        knn = _dspy_knn(pool_texts, lookup, k)
        dspy_ids = [[int(ex.text.split()[1]) for ex in knn(text=t)] for t in query_texts[:20]]
        assert recall_at_k(np.array(dspy_ids), true_ids[:20]) >= 0.99  # same task, same answers

        def dspy_all() -> None:
            for t in query_texts:
                knn(text=t)

        wait_quiet(timeout_s=30)
        dspy_s = best_time(dspy_all, repeat=3, budget_s=30) / n_queries
        lookup_s = best_time(lambda: [knn.embedding([f"text: {t}"]) for t in query_texts],
                             repeat=3) / n_queries
        wait_quiet(timeout_s=30)
        batched_s = _time_per_query_batched(index, queries, k)
        wait_quiet(timeout_s=30)
        single_s = _time_per_query_single(index, queries, k)
        kind = index.kind if index.kind == "flat" else (
            f"{index.kind} ef={index.ef_search} (calibrated at the build: recall "
            f"{index.calibrated_recall:.3f} on held-out pool vectors)")
        note = (f"k={k}, d={D}, {n_queries} queries; {kind}; recall@{k} {recall:.3f} vs exact; "
                f"build {build_s:.2f} s; dspy's vectorizer lookup {lookup_s * 1e6:.0f} µs of it")
        size = f"{n // 1000}k pool"
        rows.append(Row("knn retrieval, batched", size, batched_s, dspy_s, "dspy KNN per query",
                        note + f"; batch of {n_queries}"))
        rows.append(Row("knn retrieval, 1 query/call", size, single_s, dspy_s, "dspy KNN per query",
                        note + "; batch of 1"))
    return rows


# ---------------------------------------------------------------------------------------------
# The sweep behind HNSW_THRESHOLD: exact flat vs HNSW vs IVF at growing pool sizes


QUIET_TIMEOUT_S = 300.0  # the sweep waits this long for an idle machine before each measurement
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_GRID = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def _tune(index: faiss.Index, set_param, grid, queries, true_ids, k, target) -> tuple[int, float]:
    """Smallest grid value reaching ``target`` recall@k (or the largest), with its recall."""
    last = (grid[-1], 0.0)
    for p in grid:
        set_param(index, p)
        _, got = index.search(queries, k)
        last = (p, recall_at_k(got, true_ids))
        if last[1] >= target:
            break
    return last


def _set_ef(index: faiss.Index, ef: int) -> None:
    index.hnsw.efSearch = ef


def _set_nprobe(index: faiss.Index, nprobe: int) -> None:
    index.nprobe = nprobe


def _build(pool: np.ndarray, queries: np.ndarray, k: int, target: float, hnsw_m: int,
           ef_construction: int, ivf: bool, fixed_ef: tuple[int, ...]) -> tuple[dict, list]:
    """Build flat / HNSW / IVF over ``pool``, tune efSearch and nprobe; return the result dict and
    the (name, index, set_param, value) cells to time."""
    n, d = pool.shape
    res: dict = {"n": n}
    wait_quiet(timeout_s=QUIET_TIMEOUT_S)
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(pool)
    res["flat_build"] = time.perf_counter() - t0
    _, true_ids = flat.search(queries, k)
    cells = [("flat", flat, None, None)]

    wait_quiet(timeout_s=QUIET_TIMEOUT_S)
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(pool)
    res["hnsw_build"] = time.perf_counter() - t0
    res["hnsw_ef"], res["hnsw_recall"] = _tune(hnsw, _set_ef, EF_GRID, queries, true_ids, k, target)
    cells.append(("hnsw", hnsw, _set_ef, res["hnsw_ef"]))
    for ef in fixed_ef:
        _set_ef(hnsw, ef)
        res[f"hnsw{ef}_recall"] = recall_at_k(hnsw.search(queries, k)[1], true_ids)
        cells.append((f"hnsw{ef}", hnsw, _set_ef, ef))

    if ivf:
        nlist = max(1, int(4 * math.sqrt(n)))
        wait_quiet(timeout_s=QUIET_TIMEOUT_S)
        t0 = time.perf_counter()
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(pool[np.random.default_rng(1).permutation(n)[:min(n, 64 * nlist)]])
        index.add(pool)
        res["ivf_build"] = time.perf_counter() - t0
        res["ivf_nlist"] = nlist
        res["ivf_nprobe"], res["ivf_recall"] = _tune(index, _set_nprobe, NPROBE_GRID, queries,
                                                     true_ids, k, target)
        cells.append(("ivf", index, _set_nprobe, res["ivf_nprobe"]))
    return res, cells


def _time_cell(index: faiss.Index, queries: np.ndarray, k: int, batch: int) -> dict[str, float]:
    """Per-query seconds: batches of ``batch``; one query per call (2 and 1 OpenMP threads)."""
    qb = np.ascontiguousarray(queries[:batch])
    q1 = [np.ascontiguousarray(queries[i:i + 1]) for i in range(min(32, len(queries)))]

    def singles() -> None:
        for q in q1:
            index.search(q, k)

    threads = faiss.omp_get_max_threads()
    wait_quiet(timeout_s=QUIET_TIMEOUT_S)
    out = {"b": best_time(lambda: index.search(qb, k), repeat=3) / len(qb)}
    wait_quiet(timeout_s=QUIET_TIMEOUT_S)
    out["s"] = best_time(singles, repeat=3) / len(q1)
    wait_quiet(timeout_s=QUIET_TIMEOUT_S)
    faiss.omp_set_num_threads(1)
    try:
        out["s1"] = best_time(singles, repeat=3) / len(q1)
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def sweep_data(pools: list[tuple[np.ndarray, np.ndarray]], *, k: int = 10, batch: int = 64,
               target: float = 0.95, hnsw_m: int = 32, ef_construction: int = 64,
               ivf: bool = True, fixed_ef: tuple[int, ...] = (64, 128), rounds: int = 5,
               pause_s: float = 2.0) -> list[dict]:
    """Build everything, then time every cell in ``rounds`` rounds spread over time, keeping each
    cell's best: on a shared 2-core machine a burst of someone else's work then spoils one round,
    not the table."""
    built = []
    for pool, queries in pools:
        res, cells = _build(pool, queries, k, target, hnsw_m, ef_construction, ivf, fixed_ef)
        built.append((res, cells, queries))
        print(f"built n={res['n']:,}: hnsw {res['hnsw_build']:.1f} s "
              f"(ef {res['hnsw_ef']} -> {res['hnsw_recall']:.3f}), "
              f"ivf {res.get('ivf_build', 0):.1f} s", flush=True)
    for r in range(rounds):
        for res, cells, queries in built:
            for name, index, set_param, value in cells:
                if set_param is not None:
                    set_param(index, value)
                for key, t in _time_cell(index, queries, k, batch).items():
                    res[f"{name}_{key}"] = min(res.get(f"{name}_{key}", math.inf), t)
        print(f"timing round {r + 1}/{rounds} done", flush=True)
        time.sleep(pause_s)
    return [res for res, _, _ in built]


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f}"


def sweep_table(results: list[dict]) -> str:
    """Markdown, per-query µs: b64 = 64 queries per call, b1 = one per call. Raw FAISS indexes:
    flat b1 is FAISS's one-query scan on one OpenMP thread (b1/2t: two); VectorIndex answers few
    queries with a numpy product instead, faster still."""
    head = ("| n | flat b64 | flat b1 | flat b1/2t | HNSW tuned ef→recall | b64 | b1 "
            "| ef=64 recall | b64 | b1 | ef=128 recall | b64 | b1 | HNSW build s "
            "| IVF nlist/nprobe→recall | b64 | b1 | IVF build s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ivf = "- | - | - | -"
        if "ivf_build" in r:
            ivf = (f"{r['ivf_nlist']}/{r['ivf_nprobe']}→{r['ivf_recall']:.3f} | {_us(r['ivf_b'])} "
                   f"| {_us(r['ivf_s'])} | {r['ivf_build']:.1f}")
        fixed = " | ".join(f"{r[f'hnsw{ef}_recall']:.3f} | {_us(r[f'hnsw{ef}_b'])} "
                           f"| {_us(r[f'hnsw{ef}_s'])}" for ef in (64, 128))
        lines.append(
            f"| {r['n']:,} | {_us(r['flat_b'])} | {_us(r['flat_s1'])} | {_us(r['flat_s'])} "
            f"| {r['hnsw_ef']}→{r['hnsw_recall']:.3f} | {_us(r['hnsw_b'])} | {_us(r['hnsw_s'])} "
            f"| {fixed} | {r['hnsw_build']:.1f} | {ivf} |")
    return "\n".join(lines)


def real_vectors() -> np.ndarray:
    """MiniLM vectors of the ~23.3k distinct inputs of trec, sms_spam and rotten_tomatoes (encoded
    once, ~2 min on 2 cores, then read from the embedding cache)."""
    from evo.datasets import fetch
    from evo.embeddings import default_encoder

    texts: list[str] = []
    for name in ("trec", "sms_spam", "rotten_tomatoes"):
        texts += [" ".join(ex.inputs.values()) for ex in fetch(name).examples]
    texts = list(dict.fromkeys(texts))
    return default_encoder().encode(texts)


def sweep(sizes=(1_000, 5_000, 10_000, 20_000, 50_000, 100_000), *, real: bool = False,
          n_queries: int = 500, **kwargs) -> list[dict]:
    """The flat / HNSW / IVF sweep over clustered synthetic vectors, or MiniLM ones (``real``)."""
    pools = []
    if real:
        vecs = real_vectors()
        vecs = vecs[np.random.default_rng(0).permutation(len(vecs))]
        sizes = [n for n in sizes if n + n_queries <= len(vecs)]
        pools = [(vecs[n_queries:n_queries + n], vecs[:n_queries]) for n in sizes]
    else:
        pools = [pool_and_queries(n, n_queries, seed=n) for n in sizes]
    return sweep_data(pools, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="flat vs HNSW vs IVF table")
    parser.add_argument("--real", action="store_true", help="sweep real MiniLM vectors")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated pool sizes")
    parser.add_argument("--no-ivf", action="store_true")
    parser.add_argument("--json", type=str, default=None, help="also write the sweep here")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (best kept)")
    args = parser.parse_args()
    if args.sweep:
        default = (1_000, 5_000, 10_000, 20_000) + (() if args.real else (50_000, 100_000))
        sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else default
        print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={D}, k=10, "
              f"{'MiniLM real texts' if args.real else 'clustered synthetic'}")
        results = sweep(sizes, real=args.real, ivf=not args.no_ivf, rounds=args.rounds)
        print(sweep_table(results))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return
    print(f"HNSW_THRESHOLD={HNSW_THRESHOLD}, ef_search={EF_SEARCH}")
    print(HEADER)
    for row in run(quick=args.quick):
        print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
