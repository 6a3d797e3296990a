"""Paired statistics and score-matrix aggregates: evo's Numba kernels against NumPy versions.

    .venv/bin/python benchmarks/bench_stats.py            # full (more repeats)
    .venv/bin/python benchmarks/bench_stats.py --quick    # same sizes, fewer repeats

References: the bootstrap CI evo shipped before the kernels (``rng.integers(0, n, (R, n))``,
``diff[idx].mean(1)``, ``np.quantile``); a permutation test with a random sign matrix and one
matrix product; :func:`evo.kernels.matrix.row_stats_reference` / ``column_best_reference``
(masks and ``np.where``). The NumPy versions draw from NumPy's generator, so their numbers agree
with ours statistically, not digit for digit (the notes show both). Numba is warmed up (and its
cache loaded) before anything is timed.
"""

from __future__ import annotations

import numpy as np

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_stats
    from _timing import Row, best_time, main
except ImportError:  # pragma: no cover
    from benchmarks._timing import Row, best_time, main

from evo.kernels import backend
from evo.kernels.matrix import column_best, column_best_reference, row_stats, row_stats_reference
from evo.kernels.stats import TIE_RTOL, paired_bootstrap_ci, paired_permutation_test


def numpy_bootstrap_ci(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """evo.api.paired_bootstrap_ci before the kernel: one (R, n) index matrix, fancy indexing."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def numpy_permutation_test(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000,
                           seed: int = 0) -> float:
    """Two-sided Monte Carlo sign-flip test: an (R, m) matrix of random signs times the m nonzero
    differences (zeros dropped, as the kernel does: flipping them changes nothing)."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    diff = diff[diff != 0]
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(n_resamples, len(diff))) * 2.0 - 1.0
    flipped = signs @ diff
    observed = diff.sum()
    tol = TIE_RTOL * (1 + np.abs(diff).sum())
    return float((1 + np.sum(np.abs(flipped) >= abs(observed) - tol)) / (1 + n_resamples))


def score_matrix(rows: int, cols: int, missing: float, seed: int = 0) -> np.ndarray:
    """Scores in {0, 0.5, 1} (ties, as exact-match metrics give) with a fraction unevaluated."""
    rng = np.random.default_rng(seed)
    s = rng.choice([0.0, 0.5, 1.0], size=(rows, cols))
    s[rng.random((rows, cols)) < missing] = np.nan
    return s


def run(quick: bool = False) -> list[Row]:
    """Rows: bootstrap CI and permutation tests (n=300 pairs, 10,000 resamples), row_stats and
    column_best on a 400 x 1000 matrix with 30% missing. ``quick`` only lowers the repeats."""
    repeat = 3 if quick else 7
    rng = np.random.default_rng(0)
    n, n_resamples = 300, 10_000
    a = rng.choice([0.0, 1.0], size=n, p=[0.4, 0.6])
    b = np.where(rng.random(n) < 0.85, a, 1.0 - a)  # a sibling candidate: mostly the same answers
    b[:12] = 1.0
    rows: list[Row] = []
    tag = f"kernels on {backend()}"

    ours_ci = paired_bootstrap_ci(a, b, n_resamples=n_resamples)  # warm-up (compile or cache)
    ref_ci = numpy_bootstrap_ci(a, b, n_resamples=n_resamples)
    rows.append(Row(
        "paired bootstrap CI", f"n={n}, R={n_resamples:,}",
        best_time(lambda: paired_bootstrap_ci(a, b, n_resamples=n_resamples), repeat=repeat),
        best_time(lambda: numpy_bootstrap_ci(a, b, n_resamples=n_resamples), repeat=repeat),
        "numpy fancy indexing",
        f"{tag}; CI ours [{ours_ci[0]:.4f}, {ours_ci[1]:.4f}] numpy [{ref_ci[0]:.4f}, "
        f"{ref_ci[1]:.4f}]"))

    # 0/1 scores of sibling candidates (most differences zero), then float scores (none zero).
    fa = rng.random(n)
    fb = np.clip(fa + rng.normal(0.01, 0.2, n), 0.0, 1.0)
    for kind, x, y in [("0/1 scores", a, b), ("float scores", fa, fb)]:
        ours_p = paired_permutation_test(x, y, n_resamples=n_resamples)
        ref_p = numpy_permutation_test(x, y, n_resamples=n_resamples)
        m = int(np.count_nonzero(y - x))
        rows.append(Row(
            "paired permutation test", f"n={n}, {kind} ({m} nonzero), R={n_resamples:,}",
            best_time(lambda: paired_permutation_test(x, y, n_resamples=n_resamples),
                      repeat=repeat),
            best_time(lambda: numpy_permutation_test(x, y, n_resamples=n_resamples),
                      repeat=repeat),
            "numpy sign matrix @ diff", f"{tag}; p ours {ours_p:.4f} numpy {ref_p:.4f}"))

    s = score_matrix(400, 1000, 0.3)
    for name, ours, ref in [("row_stats", row_stats, row_stats_reference),
                            ("column_best", column_best, column_best_reference)]:
        got, want = ours(s), ref(s)  # warm-up and a correctness check on the benchmark data
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12)
        rows.append(Row(
            name, "400 x 1000, 30% NaN",
            best_time(lambda: ours(s), repeat=repeat, number=10),
            best_time(lambda: ref(s), repeat=repeat, number=10),
            "numpy masks", tag))
    return rows


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
