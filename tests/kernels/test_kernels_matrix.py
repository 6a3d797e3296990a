"""Score-matrix kernels (evo.kernels.matrix) agree with their NumPy references, NaN = missing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evo.kernels import matrix as mx

# Few distinct values (ties everywhere, exact sums) or any float in [0, 1]; NaN = not evaluated.
TIED = st.sampled_from([np.nan, 0.0, 0.25, 0.5, 1.0])
FLOATS = st.one_of(st.just(np.nan), st.floats(0.0, 1.0))


def matrices(elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    shapes = st.tuples(st.integers(1, 8), st.integers(1, 12))
    return arrays(np.float64, shapes, elements=elements)


def subset(size: int) -> st.SearchStrategy[np.ndarray]:
    """None (all), integer indices (duplicates allowed, like fancy indexing) or a boolean mask."""
    return st.one_of(
        st.none(),
        st.lists(st.integers(0, size - 1), min_size=1, max_size=2 * size).map(np.array),
        st.lists(st.booleans(), min_size=size, max_size=size).map(np.array)
          .filter(lambda m: m.any()))


def assert_row_stats_equal(got: mx.RowStats, want: mx.RowStats, exact: bool) -> None:
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.failures, want.failures)
    np.testing.assert_array_equal(got.coverage, want.coverage)
    if exact:
        np.testing.assert_array_equal(got.mean, want.mean)
    else:  # NumPy sums pairwise, the kernel left to right: a few ulps apart
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12, atol=1e-15)
    assert got.count.dtype == got.failures.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(data=st.data(), tied=st.booleans())
def test_row_stats_matches_reference(data: st.DataObject, tied: bool) -> None:
    s = data.draw(matrices(TIED if tied else FLOATS))
    cols = data.draw(subset(s.shape[1]))
    assert_row_stats_equal(mx.row_stats(s, cols), mx.row_stats_reference(s, cols), exact=tied)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), tied=st.booleans())
def test_column_best_and_oracle_match_reference(data: st.DataObject, tied: bool) -> None:
    s = data.draw(matrices(TIED if tied else FLOATS))
    rows = data.draw(subset(s.shape[0]))
    best, count = mx.column_best(s, rows)
    ref_best, ref_count = mx.column_best_reference(s, rows)
    np.testing.assert_array_equal(best, ref_best)  # max is exact, NaN positions included
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(mx.oracle_mean(s, rows), mx.oracle_mean_reference(s, rows),
                               rtol=1e-12)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), tied=st.booleans())
def test_common_mean_matches_reference(data: st.DataObject, tied: bool) -> None:
    s = data.draw(matrices(TIED if tied else FLOATS))
    a = data.draw(st.integers(0, s.shape[0] - 1))
    b = data.draw(st.integers(0, s.shape[0] - 1))
    got, want = mx.common_mean(s, a, b), mx.common_mean_reference(s, a, b)
    assert got[2] == want[2]
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-12)


def test_python_fallback_matches_kernels() -> None:
    rng = np.random.default_rng(0)
    s = rng.choice([0.0, 0.5, 1.0], size=(5, 9))
    s[rng.random(s.shape) < 0.3] = np.nan
    s[2] = np.nan  # a row with nothing observed
    cols = np.array([0, 3, 3, 8], dtype=np.int64)
    rows = np.array([4, 0, 2], dtype=np.int64)
    for got, want in [(mx._row_stats_kernel.py_func(s, cols), mx._row_stats_kernel(s, cols)),
                      (mx._column_best_kernel.py_func(s, rows), mx._column_best_kernel(s, rows)),
                      (mx._common_mean_kernel.py_func(s, 0, 1), mx._common_mean_kernel(s, 0, 1)),
                      (mx._common_mean_kernel.py_func(s, 0, 2), mx._common_mean_kernel(s, 0, 2))]:
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_worked_example() -> None:
    s = np.array([[1.0, np.nan, 0.0, np.nan],
                  [1.0, 0.5, np.nan, np.nan],
                  [0.5, 0.5, 1.0, np.nan]])
    stats = mx.row_stats(s)
    np.testing.assert_array_equal(stats.mean, [0.5, 0.75, 2 / 3])
    np.testing.assert_array_equal(stats.count, [2, 2, 3])
    np.testing.assert_array_equal(stats.coverage, [0.5, 0.5, 0.75])
    np.testing.assert_array_equal(stats.failures, [1, 1, 2])
    best, count = mx.column_best(s)
    np.testing.assert_array_equal(best, [1.0, 0.5, 1.0, np.nan])
    np.testing.assert_array_equal(count, [2, 2, 1, 0])  # ties counted, empty column -> 0
    assert mx.oracle_mean(s) == pytest.approx(5 / 6)  # unobserved column left out
    assert mx.common_mean(s, 0, 1) == (1.0, 1.0, 1)
    assert mx.common_mean(s, 0, 2) == (0.5, 0.75, 2)
    # restricted to a subset of rows / columns
    np.testing.assert_array_equal(mx.column_best(s, [1])[1], [1, 1, 0, 0])
    np.testing.assert_array_equal(mx.row_stats(s, [1, 2]).mean, [0.0, 0.5, 0.75])


def test_nothing_observed() -> None:
    s = np.full((2, 3), np.nan)
    stats = mx.row_stats(s)
    assert np.isnan(stats.mean).all() and (stats.count == 0).all() and (stats.coverage == 0).all()
    assert np.isnan(mx.oracle_mean(s))
    a_mean, b_mean, n = mx.common_mean(s, 0, 1)
    assert np.isnan(a_mean) and np.isnan(b_mean) and n == 0
    best, count = mx.column_best(np.empty((0, 3)))  # no candidates yet
    assert np.isnan(best).all() and (count == 0).all()


def test_accepts_views_of_a_larger_buffer() -> None:
    # ScoreMatrix.scores is a row slice of a larger buffer; a strided view must work too.
    big = np.arange(40, dtype=float).reshape(8, 5) / 40
    np.testing.assert_allclose(mx.row_stats(big[:3]).mean, big[:3].mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(mx.row_stats(big[::2, ::2]).count, [3, 3, 3, 3])


@pytest.mark.parametrize("call, match", [
    (lambda: mx.row_stats(np.zeros(3)), "2-D"),
    (lambda: mx.row_stats(np.zeros((2, 3)), [3]), r"\[0, 3\)"),
    (lambda: mx.row_stats(np.zeros((2, 3)), [-1]), r"\[0, 3\)"),
    (lambda: mx.row_stats(np.zeros((2, 3)), np.array([], dtype=int)), "at least one column"),
    (lambda: mx.row_stats(np.zeros((2, 0))), "at least one column"),
    (lambda: mx.row_stats(np.zeros((2, 3)), np.array([True, False])), "mask"),
    (lambda: mx.row_stats(np.zeros((2, 3)), np.array([0.5])), "integer"),
    (lambda: mx.column_best(np.zeros((2, 3)), [2]), r"\[0, 2\)"),
    (lambda: mx.common_mean(np.zeros((2, 3)), 0, 2), "out of range"),
])
def test_bad_input_raises_one_clear_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
