"""Multi-objective kernels with DEAP's semantics: non-dominated sorting, crowding distance, NSGA-II
selection and the 2-D hypervolume. Arrays in, arrays out.

``objectives`` is (N, M) float (no NaN); ``weights`` is (M,) nonzero floats whose sign says
maximize (+) or minimize (-), exactly as DEAP's ``Fitness.weights``. Dominance is on the weighted
values ``w = objectives * weights``: a dominates b iff ``w[a] >= w[b]`` everywhere and ``>``
somewhere (``deap.base.Fitness.dominates``), so identical points never dominate each other and
share a front. Each kernel (``_*_kernel``) sits beside a readable reference (``*_reference``)
that the tests prove it equal to; the tests also compare with DEAP 1.4.4 itself.

Example::

    >>> obj = np.array([[1.0, 4.0], [2.0, 3.0], [1.0, 1.0], [2.0, 3.0]])
    >>> nondominated_ranks(obj, np.array([1.0, 1.0]))
    array([0, 0, 1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from evo.kernels._jit import jit

__all__ = [
    "crowding_distance",
    "crowding_distance_reference",
    "hypervolume_2d",
    "hypervolume_2d_reference",
    "nondominated_ranks",
    "nondominated_ranks_reference",
    "select_nsga2",
    "sort_nondominated",
]


# ---------------------------------------------------------------- input validation (public edge)


def _as_objectives(objectives: ArrayLike, what: str = "objectives") -> np.ndarray:
    obj = np.ascontiguousarray(objectives, dtype=np.float64)
    if obj.ndim != 2 or obj.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-D (N points x M objectives) array, got {obj.shape}")
    if np.isnan(obj).any():
        raise ValueError(f"{what} contain NaN at rows {np.flatnonzero(np.isnan(obj).any(1))[:10]}")
    return obj


def _as_weights(weights: ArrayLike, n_obj: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_obj,):
        raise ValueError(f"weights must have shape ({n_obj},) (one per objective), got {w.shape}")
    if not np.isfinite(w).all() or (w == 0).any():
        raise ValueError(f"weights must be finite and nonzero (sign = maximize/minimize), got {w}")
    return w


def _weighted(objectives: ArrayLike, weights: ArrayLike) -> np.ndarray:
    obj = _as_objectives(objectives)
    return np.ascontiguousarray(obj * _as_weights(weights, obj.shape[1]))  # DEAP's wvalues


# ---------------------------------------------------------------- non-dominated ranks


@jit
def _compare_to(wt: np.ndarray, p: int, start: int, code: np.ndarray) -> None:
    """``code[j - start]`` for each j >= start: bit 0 set if p beats j on some objective, bit 1
    if j beats p on some objective. So 1 means p dominates j, 2 means j dominates p."""
    m = wt.shape[0]
    code[:] = 0
    for k in range(m):
        a = wt[k, p]
        row = wt[k, start:]  # a slice from 0: LLVM then vectorizes the branch-free loop
        for j in range(row.shape[0]):
            code[j] |= np.uint8(a > row[j]) | (np.uint8(a < row[j]) << np.uint8(1))


@jit
def _ranks_kernel(wt: np.ndarray) -> np.ndarray:
    """Deb's fast non-dominated sort on weighted values, objectives in rows (M, N), maximize.
    Domination counts over all pairs, then peel fronts: each member of the current front
    decrements the counts of the points it dominates; points reaching 0 form the next front.
    The dominated lists are recomputed during the peel instead of stored: O(M·N²) time either
    way, O(N) memory, and the recomputation is a SIMD scan, measured several times faster than
    filling and walking CSR lists (whose scattered writes do not vectorize)."""
    n = wt.shape[1]
    n_dominating = np.zeros(n, dtype=np.int64)  # how many points dominate i
    code = np.empty(n, dtype=np.uint8)
    for i in range(n):
        rest = code[: n - i - 1]
        _compare_to(wt, i, i + 1, rest)
        later = n_dominating[i + 1:]
        beaten_by = 0
        for j in range(rest.shape[0]):
            later[j] += rest[j] == 1
            beaten_by += rest[j] == 2
        n_dominating[i] += beaten_by
    ranks = np.full(n, -1, dtype=np.int64)
    front = np.empty(n, dtype=np.int64)
    size = 0
    for i in range(n):
        if n_dominating[i] == 0:
            ranks[i] = 0
            front[size] = i
            size += 1
    rank = 0
    placed = size
    while placed < n:
        for t in range(size):
            _compare_to(wt, front[t], 0, code)
            for j in range(n):
                n_dominating[j] -= code[j] == 1
        rank += 1
        size = 0
        for j in range(n):
            if n_dominating[j] == 0 and ranks[j] < 0:
                ranks[j] = rank
                front[size] = j
                size += 1
        placed += size
    return ranks


@jit
def _ranks_2d_kernel(w: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Two objectives in O(N log N): visit points by (w0, w1) descending, so every dominator of
    a point comes before it. Within a front, in this order, w1 increases, so a front dominates
    the point iff the front's last-added point does; and if front r+1 dominates it so does front
    r (transitivity), so the point's rank is found by binary search over the fronts."""
    n = order.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    last0 = np.empty(n, dtype=np.float64)  # per front: w of the point added last
    last1 = np.empty(n, dtype=np.float64)
    n_fronts = 0
    for t in range(n):
        p = order[t]
        x = w[p, 0]
        y = w[p, 1]
        lo = 0
        hi = n_fronts  # find the first front whose last point does not dominate p
        while lo < hi:
            mid = (lo + hi) // 2
            # last0[mid] >= x holds by the visiting order; dominance needs one strict >.
            if last1[mid] > y or (last1[mid] == y and last0[mid] > x):
                lo = mid + 1
            else:
                hi = mid
        ranks[p] = lo
        last0[lo] = x
        last1[lo] = y
        if lo == n_fronts:
            n_fronts += 1
    return ranks


def _ranks(w: np.ndarray) -> np.ndarray:
    if w.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if w.shape[1] == 2:
        order = np.lexsort((-w[:, 1], -w[:, 0])).astype(np.int64)  # w0 desc, then w1 desc
        return _ranks_2d_kernel(w, order)
    # DEAP compares each distinct fitness once; so do we (many ties -> far fewer pairs).
    unique, inverse = _unique_rows(w)
    return _ranks_kernel(np.ascontiguousarray(unique.T))[inverse]


def _unique_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and, per row, the index of its distinct row (np.unique(axis=0) is ~3x
    slower: it sorts a structured view)."""
    order = np.lexsort(w.T[::-1])
    sorted_rows = w[order]
    first = np.ones(w.shape[0], dtype=np.bool_)
    np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1, out=first[1:])
    inverse = np.empty(w.shape[0], dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return sorted_rows[first], inverse


def nondominated_ranks(objectives: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Front index of each point, int64 (N,), 0 = non-dominated: the fronts of DEAP's
    ``sortNondominated`` (all of them). Dominance on ``objectives * weights`` (maximize after
    weighting; identical points share a front). Two objectives take an O(N log N) sweep, more an
    O(M·N²) fast non-dominated sort. Raises ValueError on NaN or mis-shaped weights."""
    return _ranks(_weighted(objectives, weights))


def nondominated_ranks_reference(objectives: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Pairwise dominance matrix, then peel: a front is every remaining point that no remaining
    point dominates."""
    w = _weighted(objectives, weights)
    ge = (w[:, None, :] >= w[None, :, :]).all(axis=2)
    gt = (w[:, None, :] > w[None, :, :]).any(axis=2)
    dominates = ge & gt  # dominates[a, b]: a dominates b
    ranks = np.full(w.shape[0], -1, dtype=np.int64)
    rank = 0
    while (ranks < 0).any():
        remaining = ranks < 0
        beaten = dominates[remaining][:, remaining].any(axis=0)
        ranks[np.flatnonzero(remaining)[~beaten]] = rank
        rank += 1
    return ranks


def _fronts_from_ranks(ranks: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(ranks, kind="stable")  # by rank, index ascending within a rank
    bounds = [0, *(np.flatnonzero(np.diff(ranks[order])) + 1).tolist(), order.size]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])] if order.size else []


def sort_nondominated(
    objectives: ArrayLike, weights: ArrayLike, k: int | None = None, first_front_only: bool = False
) -> list[np.ndarray]:
    """DEAP's ``sortNondominated``: the fronts as arrays of point indices (ascending within a
    front), best first. With ``k``, fronts are added until at least ``min(k, N)`` points are
    placed (the last front is whole, so more than ``k`` may come back); ``k=0`` gives ``[]``;
    ``first_front_only`` gives the first front alone. Unlike DEAP, no points gives ``[]``."""
    w = _weighted(objectives, weights)
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 or None, got {k}")
    if k == 0 or w.shape[0] == 0:
        return []
    fronts = _fronts_from_ranks(_ranks(w))
    if first_front_only:
        return fronts[:1]
    need = w.shape[0] if k is None else min(k, w.shape[0])
    placed = np.cumsum([f.size for f in fronts])
    return fronts[: int(np.searchsorted(placed, need)) + 1]  # first front reaching ``need``


# ---------------------------------------------------------------- crowding distance


@jit
def _crowding_kernel(obj: np.ndarray, members: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """DEAP's ``assignCrowdingDist`` on each front ``members[indptr[f]:indptr[f + 1]]``,
    with the same sort order and floating-point operations."""
    n, m = obj.shape
    dist = np.zeros(n, dtype=np.float64)
    for f in range(indptr.shape[0] - 1):
        order = members[indptr[f]:indptr[f + 1]].copy()
        size = order.shape[0]
        if size == 0:
            continue
        vals = np.empty(size, dtype=np.float64)
        for i in range(m):
            # DEAP sorts one list in place, objective after objective, so ties keep the order
            # the previous objective's stable sort left (not the index order): replicate it.
            for t in range(size):
                vals[t] = obj[order[t], i]
            order = order[np.argsort(vals, kind="mergesort")]
            dist[order[0]] = np.inf
            dist[order[size - 1]] = np.inf
            lo = obj[order[0], i]
            hi = obj[order[size - 1], i]
            if hi == lo:
                continue
            norm = m * (hi - lo)
            for t in range(1, size - 1):
                dist[order[t]] += (obj[order[t + 1], i] - obj[order[t - 1], i]) / norm
    return dist


def _as_ranks(ranks: ArrayLike, n: int) -> np.ndarray:
    r = np.asarray(ranks)
    if r.shape != (n,) or (r.size and not np.issubdtype(r.dtype, np.integer)):
        raise ValueError(f"ranks must be an integer array of shape ({n},), got {r.dtype} {r.shape}")
    return r.astype(np.int64)


def crowding_distance(objectives: ArrayLike, ranks: ArrayLike) -> np.ndarray:
    """Crowding distance of each point within its front (points sharing a rank), float (N,):
    DEAP's ``assignCrowdingDist`` applied to each front with its points in index order. On the
    raw objective values (no weights): per objective, a stable sort; both ends get inf; an
    objective with equal values across the front adds nothing; an inner point adds
    ``(next - prev) / (M * (max - min))``."""
    obj = _as_objectives(objectives)
    r = _as_ranks(ranks, obj.shape[0])
    members = np.argsort(r, kind="stable").astype(np.int64)  # fronts back to back, index order
    indptr = np.concatenate(([0], np.flatnonzero(np.diff(r[members])) + 1, [r.size]))
    return _crowding_kernel(obj, members, indptr.astype(np.int64))


def crowding_distance_reference(objectives: ArrayLike, ranks: ArrayLike) -> np.ndarray:
    """DEAP's ``assignCrowdingDist`` written with Python lists, front by front."""
    obj = _as_objectives(objectives)
    r = _as_ranks(ranks, obj.shape[0])
    dist = np.zeros(obj.shape[0])
    n_obj = obj.shape[1]
    for rank in np.unique(r):
        front = [int(p) for p in np.flatnonzero(r == rank)]
        crowd = [(obj[p].tolist(), p) for p in front]
        for i in range(n_obj):
            crowd.sort(key=lambda element: element[0][i])  # stable, from the previous order
            dist[crowd[0][1]] = dist[crowd[-1][1]] = np.inf
            lo, hi = crowd[0][0][i], crowd[-1][0][i]
            if hi == lo:
                continue
            norm = n_obj * (hi - lo)
            for prev, cur, nxt in zip(crowd[:-2], crowd[1:-1], crowd[2:]):
                dist[cur[1]] += (nxt[0][i] - prev[0][i]) / norm
    return dist


# ---------------------------------------------------------------- NSGA-II selection


def select_nsga2(objectives: ArrayLike, weights: ArrayLike, k: int) -> np.ndarray:
    """DEAP's ``selNSGA2`` (``nd='standard'``): indices of ``k`` points (all N if ``k >= N``):
    whole fronts best first, then the rest of the last front needed by crowding distance
    (within that front) descending, ties by index. Within a whole front, index order."""
    obj = _as_objectives(objectives)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    fronts = sort_nondominated(obj, weights, k)
    if not fronts:
        return np.zeros(0, dtype=np.int64)
    chosen = np.concatenate(fronts[:-1]) if len(fronts) > 1 else np.zeros(0, dtype=np.int64)
    last = fronts[-1]
    need = min(k, obj.shape[0]) - chosen.size
    cd = crowding_distance(obj[last], np.zeros(last.size, dtype=np.int64))
    best = last[np.argsort(-cd, kind="stable")[:need]]  # stable: like sorted(..., reverse=True)
    return np.concatenate((chosen, best)).astype(np.int64)


# ---------------------------------------------------------------- 2-D hypervolume


@jit
def _hypervolume_2d_kernel(x: np.ndarray, y: np.ndarray, ref_x: float, ref_y: float) -> float:
    """Sweep from the largest x down: the strip between this x and the next one is covered up
    to the best y seen so far. ``x`` sorted descending; all points strictly beat ``ref``."""
    n = x.shape[0]
    area = 0.0
    top = ref_y
    for t in range(n):
        if y[t] > top:
            top = y[t]
        x_next = x[t + 1] if t + 1 < n else ref_x
        area += (x[t] - x_next) * (top - ref_y)
    return area


def _hv_inputs(
    points: ArrayLike, ref: ArrayLike, weights: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    p = _as_objectives(points, "points")
    if p.shape[1] != 2:
        raise ValueError(f"points must have 2 columns (2 objectives), got shape {p.shape}")
    w = _as_weights(weights, 2)
    r = np.asarray(ref, dtype=np.float64)
    if r.shape != (2,) or np.isnan(r).any():
        raise ValueError(f"ref must be 2 numbers (no NaN), got {r}")
    wp, wr = p * w, r * w
    return wp[(wp > wr).all(axis=1)], wr  # a point not strictly better in both adds no area


def hypervolume_2d(
    points: ArrayLike, ref: ArrayLike, weights: Sequence[float] | np.ndarray = (1.0, 1.0)
) -> float:
    """Area dominated by ``points`` (N, 2) and bounded by the reference point ``ref``, in the
    maximization sense after ``weights`` (a point dominates the box between it and ``ref``;
    points not strictly better than ``ref`` in both weighted values add nothing). Dominated
    and duplicate points are allowed. Equals DEAP's ``benchmarks.tools.hypervolume`` (moocore,
    minimizing ``-wvalues``) with its reference point ``-ref * weights``."""
    wp, wr = _hv_inputs(points, ref, weights)
    if wp.shape[0] == 0:
        return 0.0
    order = np.lexsort((-wp[:, 1], -wp[:, 0]))
    x = np.ascontiguousarray(wp[order, 0])
    y = np.ascontiguousarray(wp[order, 1])
    return float(_hypervolume_2d_kernel(x, y, float(wr[0]), float(wr[1])))


def hypervolume_2d_reference(
    points: ArrayLike, ref: ArrayLike, weights: Sequence[float] | np.ndarray = (1.0, 1.0)
) -> float:
    """Inclusion on the grid of unique coordinates: a grid cell counts when some point is at
    or beyond its upper corner in both coordinates."""
    wp, wr = _hv_inputs(points, ref, weights)
    xs = np.unique(np.concatenate(([wr[0]], wp[:, 0])))
    ys = np.unique(np.concatenate(([wr[1]], wp[:, 1])))
    covered = ((wp[:, 0, None, None] >= xs[None, 1:, None])
               & (wp[:, 1, None, None] >= ys[None, None, 1:])).any(axis=0)
    return float((np.diff(xs)[:, None] * np.diff(ys)[None, :] * covered).sum())
