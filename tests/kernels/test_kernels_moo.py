"""evo.kernels.moo: kernels == readable references == DEAP 1.4.4 (sorting, crowding, NSGA-II,
HV)."""

from __future__ import annotations

import numpy as np
import pytest
from deap import tools
from deap.benchmarks.tools import hypervolume as deap_hypervolume
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_moo import deap_population  # benchmarks/ (on sys.path: tests/conftest.py)
from evo.kernels import moo
from evo.kernels.moo import (
    crowding_distance,
    crowding_distance_reference,
    hypervolume_2d,
    hypervolume_2d_reference,
    nondominated_ranks,
    nondominated_ranks_reference,
    select_nsga2,
    sort_nondominated,
)


@st.composite
def problems(draw, max_n: int = 40, min_m: int = 2, max_m: int = 4):
    """Integer-valued objectives (many ties and duplicates), weights with mixed signs."""
    n = draw(st.integers(0, max_n))
    m = draw(st.integers(min_m, max_m))
    cells = draw(st.lists(st.integers(-2, 2), min_size=n * m, max_size=n * m))
    weights = draw(st.lists(st.sampled_from([1.0, -1.0, 2.0, -0.5]), min_size=m, max_size=m))
    return np.array(cells, dtype=np.float64).reshape(n, m), np.array(weights)


def general_ranks(w: np.ndarray) -> np.ndarray:
    return moo._ranks_kernel(np.ascontiguousarray(w.T))


# ---------------------------------------------------------------- kernels == references


@settings(max_examples=300, deadline=None)
@given(problems())
def test_ranks_match_reference(problem) -> None:
    obj, weights = problem
    ranks = nondominated_ranks(obj, weights)
    assert ranks.tolist() == nondominated_ranks_reference(obj, weights).tolist()
    w = obj * weights
    if obj.shape[0]:
        assert general_ranks(w).tolist() == ranks.tolist()  # O(M·N²) path on every M
        if obj.shape[1] == 2:
            order = np.lexsort((-w[:, 1], -w[:, 0])).astype(np.int64)
            assert moo._ranks_2d_kernel(w, order).tolist() == ranks.tolist()
    fronts = sort_nondominated(obj, weights)
    assert sum(f.size for f in fronts) == obj.shape[0]
    for r, front in enumerate(fronts):
        assert front.tolist() == np.flatnonzero(ranks == r).tolist()


@settings(max_examples=300, deadline=None)
@given(problems(min_m=1), st.booleans())
def test_crowding_matches_reference(problem, same_front: bool) -> None:
    obj, weights = problem
    ranks = np.zeros(obj.shape[0], np.int64) if same_front else nondominated_ranks(obj, weights)
    ours = crowding_distance(obj, ranks)
    assert np.array_equal(ours, crowding_distance_reference(obj, ranks))  # same float ops


@settings(max_examples=300, deadline=None)
@given(problems(max_m=2, min_m=2), st.lists(st.integers(-3, 3), min_size=2, max_size=2))
def test_hypervolume_matches_reference(problem, ref) -> None:
    obj, weights = problem
    ours = hypervolume_2d(obj, ref, weights)
    assert ours == pytest.approx(hypervolume_2d_reference(obj, ref, weights), rel=1e-12, abs=0)
    assert ours >= 0.0


def test_python_fallback_matches_kernels() -> None:
    rng = np.random.default_rng(5)
    for n, m in [(1, 2), (9, 2), (30, 3), (25, 4)]:
        obj = rng.integers(0, 4, size=(n, m)).astype(float)
        wt = np.ascontiguousarray(obj.T)
        assert np.array_equal(moo._ranks_kernel.py_func(wt), moo._ranks_kernel(wt))
        if m == 2:
            order = np.lexsort((-obj[:, 1], -obj[:, 0])).astype(np.int64)
            assert np.array_equal(moo._ranks_2d_kernel.py_func(obj, order),
                                  moo._ranks_2d_kernel(obj, order))
            x, y = obj[order, 0].copy(), obj[order, 1].copy()
            assert moo._hypervolume_2d_kernel.py_func(x, y, -1.0, -1.0) == \
                moo._hypervolume_2d_kernel(x, y, -1.0, -1.0)
        ranks = nondominated_ranks(obj, np.ones(m))
        members = np.argsort(ranks, kind="stable").astype(np.int64)
        indptr = np.concatenate(([0], np.flatnonzero(np.diff(ranks[members])) + 1, [n]))
        assert np.array_equal(moo._crowding_kernel.py_func(obj, members, indptr),
                              moo._crowding_kernel(obj, members, indptr))


# ---------------------------------------------------------------- agreement with DEAP


def random_cases(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for case in range(count):
        n = int(rng.integers(1, 120))
        m = int(rng.integers(2, 5))
        # odd cases integer-valued: duplicates and ties
        obj = rng.integers(0, 4, size=(n, m)).astype(float) if case % 2 else rng.random((n, m))
        # ±1 weights: DEAP's values = wvalues / weights then round-trip exactly, so crowding
        # distances (computed on values) can be compared bit for bit.
        yield obj, rng.choice([-1.0, 1.0], size=m), rng


def test_sort_nondominated_matches_deap() -> None:
    for obj, weights, rng in random_cases(60, seed=0):
        n = obj.shape[0]
        pop = deap_population(obj, weights)
        for k in (n, int(rng.integers(1, n + 1)), n + 3):
            theirs = [{ind.index for ind in f} for f in tools.sortNondominated(pop, k)]
            assert [set(f.tolist()) for f in sort_nondominated(obj, weights, k)] == theirs
        first = tools.sortNondominated(pop, n, first_front_only=True)
        assert [set(f.tolist()) for f in sort_nondominated(obj, weights, first_front_only=True)] \
            == [{ind.index for ind in f} for f in first]
        assert sort_nondominated(obj, weights, 0) == tools.sortNondominated(pop, 0) == []


def test_crowding_matches_deap() -> None:
    for obj, weights, _ in random_cases(60, seed=1):
        pop = deap_population(obj, weights)
        ranks = nondominated_ranks(obj, weights)
        ours = crowding_distance(obj, ranks)
        for r in range(ranks.max() + 1):
            front = [pop[i] for i in np.flatnonzero(ranks == r)]  # index order, as documented
            tools.emo.assignCrowdingDist(front)
            theirs = np.array([ind.fitness.crowding_dist for ind in front])
            mine = ours[ranks == r]
            assert np.array_equal(np.isinf(mine), np.isinf(theirs))
            np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=0)


def test_select_nsga2_matches_deap() -> None:
    compared = 0
    for obj, weights, rng in random_cases(80, seed=2):
        n = obj.shape[0]
        k = int(rng.integers(0, n + 2))
        ours = select_nsga2(obj, weights, k)
        assert ours.size == min(k, n) and len(set(ours.tolist())) == ours.size
        fronts = sort_nondominated(obj, weights, k)
        if len(np.unique(obj[:, 0])) < n:
            # Tied values: crowding distances then depend on the order of the front's members,
            # and DEAP's within-front order is internal (grouped by fitness); only sizes compare.
            continue
        if fronts:
            last = fronts[-1]
            cd = np.sort(crowding_distance(obj[last], np.zeros(last.size, np.int64)))[::-1]
            cut = k - sum(f.size for f in fronts[:-1])
            if 0 < cut < last.size and cd[cut - 1] == cd[cut]:
                continue  # a tie at the cut: DEAP's pick depends on its internal front order
        theirs = tools.selNSGA2(deap_population(obj, weights), k)
        assert set(ours.tolist()) == {ind.index for ind in theirs}
        compared += 1
    assert compared >= 25


def test_hypervolume_matches_deap() -> None:
    # DEAP 1.4.4 computes hypervolume with moocore, minimizing -wvalues w.r.t. a reference in
    # that space: our ref in objective space maps to -ref * weights.
    rng = np.random.default_rng(3)
    for case in range(60):
        n = int(rng.integers(1, 60))
        weights = rng.choice([-1.0, 1.0, 2.0, -3.0], size=2)
        pts = rng.random((n, 2)) if case % 2 else rng.integers(0, 5, size=(n, 2)).astype(float)
        ref = np.where(weights > 0, -0.5, 5.5)  # every point strictly better than ref
        theirs = deap_hypervolume(deap_population(pts, weights), ref=-ref * weights)
        assert hypervolume_2d(pts, ref, weights) == pytest.approx(theirs, rel=1e-12, abs=0)


# ---------------------------------------------------------------- semantics and validation


def test_docstring_example_and_edges() -> None:
    obj = np.array([[1.0, 4.0], [2.0, 3.0], [1.0, 1.0], [2.0, 3.0]])
    assert nondominated_ranks(obj, [1.0, 1.0]).tolist() == [0, 0, 1, 0]
    assert nondominated_ranks(obj, [-1.0, -1.0]).tolist() == [1, 1, 0, 1]
    assert nondominated_ranks(np.zeros((0, 3)), np.ones(3)).shape == (0,)
    assert sort_nondominated(np.zeros((0, 2)), np.ones(2)) == []
    assert select_nsga2(obj, [1.0, 1.0], 2).tolist() == [0, 1]  # all inf: ties by index
    assert hypervolume_2d([[1.0, 1.0], [2.0, 0.5]], [0.0, 0.0]) == pytest.approx(1.5)
    assert hypervolume_2d([[1.0, 1.0]], [1.0, 0.0]) == 0.0  # not strictly better than ref
    assert hypervolume_2d(np.zeros((0, 2)), [0.0, 0.0]) == 0.0
    cd = crowding_distance([[0.0, 3.0], [1.0, 2.0], [3.0, 0.0]], [0, 0, 0])
    assert cd[0] == cd[2] == np.inf and cd[1] == pytest.approx((3 / 6) + (3 / 6))


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        nondominated_ranks([[1.0, np.nan]], [1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        nondominated_ranks([[1.0, 2.0]], [1.0])
    with pytest.raises(ValueError, match="nonzero"):
        nondominated_ranks([[1.0, 2.0]], [1.0, 0.0])
    with pytest.raises(ValueError, match="2-D"):
        nondominated_ranks([1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="ranks"):
        crowding_distance([[1.0, 2.0]], [0.5])
    with pytest.raises(ValueError, match="k must be"):
        sort_nondominated([[1.0, 2.0]], [1.0, 1.0], k=-1)
    with pytest.raises(ValueError, match="2 columns"):
        hypervolume_2d([[1.0, 2.0, 3.0]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="ref"):
        hypervolume_2d([[1.0, 2.0]], [0.0])
