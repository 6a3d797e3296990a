"""Aggregates of the score matrix (candidates x examples) where NaN means "not evaluated".

Each public function validates its input once, then calls a Numba kernel (``_*_kernel``) that
makes one pass over the cells; beside it sits a NumPy reference (``*_reference``) written for
reading, which is what the kernel means and what the tests compare it to. The kernels skip the
temporaries NumPy needs (``scores[:, cols]`` copies, masks, ``where``), which is where their speed
comes from. Infinite scores are treated as observed values (only NaN means "missing").

Example::

    >>> s = np.array([[1.0, np.nan, 0.0], [1.0, 0.5, np.nan]])
    >>> row_stats(s).mean, column_best(s)[1]
    (array([0.5 , 0.75]), array([2, 1, 1]))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from evo.kernels._jit import jit

__all__ = ["RowStats", "column_best", "common_mean", "oracle_mean", "row_stats"]


class RowStats(NamedTuple):
    """Per-row aggregates over the observed (non-NaN) cells of the selected columns."""

    mean: np.ndarray  # float64; NaN where the row has no observed cell
    count: np.ndarray  # int64; observed cells
    coverage: np.ndarray  # float64; count / number of selected columns
    failures: np.ndarray  # int64; observed cells scoring below 1.0


# ---------------------------------------------------------------- input validation (public edge)


def _as_scores(scores: np.ndarray) -> np.ndarray:
    s = np.ascontiguousarray(scores, dtype=np.float64)  # no copy for the ScoreMatrix's own array
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D (candidates x examples) array, got shape {s.shape}")
    return s


def _as_index(index: np.ndarray | None, size: int, what: str) -> np.ndarray:
    """``None`` -> all of ``range(size)``; a boolean mask or integer indices -> int64 indices."""
    if index is None:
        return np.arange(size, dtype=np.int64)
    idx = np.asarray(index)
    if idx.dtype == np.bool_:
        if idx.shape != (size,):
            raise ValueError(f"{what} mask must have shape ({size},), got {idx.shape}")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-D array of integer indices or a boolean mask")
    idx = idx.astype(np.int64)
    # Numba does not bounds-check, so an out-of-range index would read foreign memory.
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(f"{what} indices must lie in [0, {size}), got {idx.min()}..{idx.max()}")
    return idx


# ---------------------------------------------------------------- row_stats


def row_stats(scores: np.ndarray, cols: np.ndarray | None = None) -> RowStats:
    """Per candidate (row): mean over observed cells (NaN if none), observed count, coverage
    (count / number of columns) and failures (observed cells < 1.0), optionally restricted to
    ``cols`` (integer indices, as ``scores[:, cols]`` selects them, or a boolean mask). Raises
    ValueError for a non-2-D matrix, bad indices or an empty column selection (coverage would be
    0/0)."""
    s = _as_scores(scores)
    c = _as_index(cols, s.shape[1], "cols")
    if c.size == 0:
        raise ValueError("row_stats needs at least one column (coverage = count / n_cols)")
    mean, count, failures = _row_stats_kernel(s, c)
    return RowStats(mean, count, count / c.size, failures)


@jit
def _row_stats_kernel(s: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_rows = s.shape[0]
    mean = np.empty(n_rows)
    count = np.zeros(n_rows, dtype=np.int64)
    failures = np.zeros(n_rows, dtype=np.int64)
    for i in range(n_rows):
        total = 0.0
        k = 0
        bad = 0
        for j in cols:
            x = s[i, j]
            # Branch-free on purpose: NaN cells are scattered at random, and mispredicted
            # branches would cost more than the arithmetic. NaN < 1.0 is False, so no mask.
            seen = x == x  # not NaN
            k += seen
            bad += x < 1.0
            total += x if seen else 0.0
        count[i] = k
        failures[i] = bad
        mean[i] = total / k if k > 0 else np.nan
    return mean, count, failures


def row_stats_reference(scores: np.ndarray, cols: np.ndarray | None = None) -> RowStats:
    """NumPy meaning of :func:`row_stats` (same validation)."""
    s = _as_scores(scores)
    c = _as_index(cols, s.shape[1], "cols")
    if c.size == 0:
        raise ValueError("row_stats needs at least one column (coverage = count / n_cols)")
    sub = s[:, c]
    observed = ~np.isnan(sub)
    count = observed.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 -> NaN for unobserved rows
        mean = np.where(observed, sub, 0.0).sum(axis=1) / count
    failures = (observed & (sub < 1.0)).sum(axis=1)
    return RowStats(mean, count.astype(np.int64), count / c.size, failures.astype(np.int64))


# ---------------------------------------------------------------- column_best / oracle_mean


def column_best(scores: np.ndarray, rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per example (column): the best observed score among ``rows`` (NaN if none observed) and
    how many of those rows attain it exactly (float ``==``, so ties count; 0 if none) -- the
    per-example best that an oracle picking any candidate would reach, and the height of the
    GEPA Pareto front on that example. Duplicate ``rows`` are counted as often as listed."""
    s = _as_scores(scores)
    r = _as_index(rows, s.shape[0], "rows")
    return _column_best_kernel(s, r)


@jit
def _column_best_kernel(s: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_cols = s.shape[1]
    # Start from -inf with count 0: an observed -inf then ties with the start and counts as 1.
    best = np.full(n_cols, -np.inf)
    count = np.zeros(n_cols, dtype=np.int64)
    for i in rows:  # row-major walk: the matrix is C-contiguous
        for j in range(n_cols):
            x = s[i, j]
            if x > best[j]:
                best[j] = x
                count[j] = 1
            elif x == best[j]:  # NaN compares False both times: skipped
                count[j] += 1
    for j in range(n_cols):
        if count[j] == 0:
            best[j] = np.nan
    return best, count


def column_best_reference(scores: np.ndarray, rows: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """NumPy meaning of :func:`column_best`."""
    s = _as_scores(scores)
    sub = s[_as_index(rows, s.shape[0], "rows")]
    observed = ~np.isnan(sub)
    best = np.where(observed, sub, -np.inf).max(axis=0, initial=-np.inf)
    count = (observed & (sub == best)).sum(axis=0).astype(np.int64)
    return np.where(count > 0, best, np.nan), count


def oracle_mean(scores: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean over examples of the per-example best score among ``rows`` (:func:`column_best`):
    the ceiling reached by picking the best candidate separately for every example. Examples no
    selected row has observed are left out; NaN when there are none at all."""
    best, count = column_best(scores, rows)
    seen = count > 0
    return float(best[seen].mean()) if seen.any() else float("nan")


def oracle_mean_reference(scores: np.ndarray, rows: np.ndarray | None = None) -> float:
    """NumPy meaning of :func:`oracle_mean`."""
    best, _ = column_best_reference(scores, rows)
    return float(np.nanmean(best)) if not np.isnan(best).all() else float("nan")


# ---------------------------------------------------------------- common_mean


def common_mean(scores: np.ndarray, a: int, b: int) -> tuple[float, float, int]:
    """Means of rows ``a`` and ``b`` over the columns observed in both, and how many those are:
    the fair comparison of two partially evaluated candidates. ``(nan, nan, 0)`` when they share
    no observed column. Raises ValueError for a row index out of range."""
    s = _as_scores(scores)
    for name, row in (("a", a), ("b", b)):
        if not 0 <= int(row) < s.shape[0]:
            raise ValueError(f"row {name}={row} out of range for a matrix of {s.shape[0]} rows")
    mean_a, mean_b, n = _common_mean_kernel(s, int(a), int(b))
    return float(mean_a), float(mean_b), int(n)


@jit
def _common_mean_kernel(s: np.ndarray, a: int, b: int) -> tuple[float, float, int]:
    total_a = 0.0
    total_b = 0.0
    n = 0
    for j in range(s.shape[1]):
        x = s[a, j]
        y = s[b, j]
        if x == x and y == y:  # both observed
            total_a += x
            total_b += y
            n += 1
    if n == 0:
        return np.nan, np.nan, 0
    return total_a / n, total_b / n, n


def common_mean_reference(scores: np.ndarray, a: int, b: int) -> tuple[float, float, int]:
    """NumPy meaning of :func:`common_mean`."""
    s = _as_scores(scores)
    both = ~np.isnan(s[a]) & ~np.isnan(s[b])
    n = int(both.sum())
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(s[a, both].mean()), float(s[b, both].mean()), n
