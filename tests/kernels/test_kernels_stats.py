"""Paired bootstrap CI and permutation test (evo.kernels.stats): kernels == references, bitwise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evo.kernels import stats as ks

# Integer-ish rows (few distinct values: ties, zero differences) or any float in [0, 1].
TIED = st.sampled_from([0.0, 0.5, 1.0])
FLOATS = st.floats(0.0, 1.0)
SEEDS = st.integers(-(2**70), 2**70)  # any int; taken mod 2^64


@st.composite
def pairs(draw: st.DrawFn, max_len: int = 24) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, max_len))
    elements = TIED if draw(st.booleans()) else FLOATS
    return (draw(arrays(np.float64, n, elements=elements)),
            draw(arrays(np.float64, n, elements=elements)))


# ---------------------------------------------------------------- splitmix64


def test_splitmix64_known_values() -> None:
    # First outputs for seed 0 from the reference C implementation (Vigna's splitmix64.c).
    assert [int(x) for x in ks.splitmix64(0, 3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS, count=st.integers(0, 40))
def test_splitmix64_kernel_stream_is_bit_identical_to_python_ints(seed: int, count: int) -> None:
    rng = ks.SplitMix64(seed)
    want = [rng.next() for _ in range(count)]
    got = ks.splitmix64(seed, count)
    assert got.dtype == np.uint64 and [int(x) for x in got] == want
    out = np.empty(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        ks._splitmix64_fill.py_func(np.uint64(seed % 2**64), out)
    assert [int(x) for x in out] == want


# ---------------------------------------------------------------- bootstrap


@settings(max_examples=100, deadline=None)
@given(ab=pairs(), n_resamples=st.integers(1, 40), seed=SEEDS)
def test_bootstrap_means_kernel_equals_reference(ab, n_resamples: int, seed: int) -> None:
    diff = ab[1] - ab[0]
    np.testing.assert_array_equal(ks.bootstrap_means(diff, n_resamples, seed),
                                  ks.bootstrap_means_reference(diff, n_resamples, seed))


def test_bootstrap_python_fallback_equals_kernel() -> None:
    diff = np.random.default_rng(0).normal(size=17)
    for seed in (0, 7, 2**64 - 1):
        out = np.empty(25)
        with np.errstate(over="ignore"):
            ks._bootstrap_means_kernel.py_func(diff, np.uint64(seed), out)
        np.testing.assert_array_equal(out, ks.bootstrap_means(diff, 25, seed))


def test_bootstrap_ci_contains_observed_mean_and_shrinks_with_level() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(200)
    b = np.clip(a + rng.normal(0.05, 0.2, 200), 0, 1)
    low, high = ks.paired_bootstrap_ci(a, b)
    assert low < np.mean(b - a) < high
    low80, high80 = ks.paired_bootstrap_ci(a, b, level=0.8)
    assert low < low80 < high80 < high
    # Close to the normal-theory interval (sanity of the resampling, not exactness).
    se = np.std(b - a, ddof=1) / np.sqrt(200)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_ci_is_the_linear_quantile_of_the_means() -> None:
    a, b = np.zeros(30), np.linspace(0, 1, 30)
    means = ks.bootstrap_means(b - a, 500, 11)
    assert ks.paired_bootstrap_ci(a, b, n_resamples=500, level=0.9, seed=11) == (
        np.quantile(means, 0.05, method="linear"), np.quantile(means, 0.95, method="linear"))


def test_bootstrap_seed_and_resamples_are_deterministic() -> None:
    a, b = np.zeros(40), np.random.default_rng(1).random(40)
    assert ks.paired_bootstrap_ci(a, b, seed=5) == ks.paired_bootstrap_ci(a, b, seed=5)
    assert ks.paired_bootstrap_ci(a, b, seed=5) != ks.paired_bootstrap_ci(a, b, seed=6)
    # A longer run extends the same stream: its first resamples are the shorter run's.
    np.testing.assert_array_equal(ks.bootstrap_means(b, 300, 5)[:100],
                                  ks.bootstrap_means(b, 100, 5))
    assert (ks.paired_bootstrap_ci(a, b, n_resamples=100)
            != ks.paired_bootstrap_ci(a, b, n_resamples=300))


# ---------------------------------------------------------------- permutation test


@settings(max_examples=150, deadline=None)
@given(ab=pairs(), n_resamples=st.integers(1, 60), seed=SEEDS,
       alternative=st.sampled_from(["two-sided", "greater", "less"]))
def test_permutation_kernel_equals_reference(ab, n_resamples: int, seed: int,
                                             alternative: str) -> None:
    a, b = ab
    got = ks.paired_permutation_test(a, b, n_resamples=n_resamples, seed=seed,
                                     alternative=alternative)
    want = ks.paired_permutation_test_reference(a, b, n_resamples=n_resamples, seed=seed,
                                                alternative=alternative)
    assert got == want
    assert 0 < got <= 1


def brute_force_p(d: np.ndarray, alternative: str) -> float:
    """Every sign pattern via itertools; ties decided with the module's tolerance."""
    d = d[d != 0]
    observed = d.sum()
    tol = ks.TIE_RTOL * (1 + np.abs(d).sum())
    stats = [float(np.dot(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))]
    extreme = {"greater": lambda t: t >= observed - tol,
               "less": lambda t: t <= observed + tol,
               "two-sided": lambda t: abs(t) >= abs(observed) - tol}[alternative]
    return sum(map(extreme, stats)) / len(stats)


@settings(max_examples=100, deadline=None)
@given(ab=pairs(max_len=10), alternative=st.sampled_from(["two-sided", "greater", "less"]))
def test_exact_permutation_matches_itertools_enumeration(ab, alternative: str) -> None:
    a, b = ab  # at most 10 nonzero differences: 2^10 <= 10_000, so the test is exact
    assert ks.paired_permutation_test(a, b, alternative=alternative) == brute_force_p(
        b - a, alternative)


def test_exact_ties_count_as_extreme() -> None:
    # 0.1 + 0.2 - 0.3 style reorderings: T* equal to T in exact arithmetic must count as ">=".
    a = np.zeros(3)
    b = np.array([0.1, 0.2, 0.3])
    # Patterns with T* >= T = 0.6: only all-plus. Two-sided |T*| >= 0.6: all-plus, all-minus.
    assert ks.paired_permutation_test(a, b, alternative="greater") == 1 / 8
    assert ks.paired_permutation_test(a, b) == 2 / 8
    # d = (0.1, 0.2, -0.3): T = 0 and the flip (-0.1, -0.2, +0.3) also sums to ~0.
    b2 = np.array([0.1, 0.2, -0.3])
    # T* >= T: 0.6, 0.4, 0.2 and both near-zero sums; without the tolerance (-,-,-) would be lost.
    assert ks.paired_permutation_test(a, b2, alternative="greater") == 5 / 8


def test_permutation_python_fallback_equals_kernel() -> None:
    d = np.random.default_rng(2).normal(size=70)  # > 64 differences: two draws per resample
    for m, n_resamples, alternative in [(70, 30, 0), (20, 50, 1), (8, 256, 2), (6, 64, 0)]:
        args = (d[:m], n_resamples, np.uint64(9), alternative)  # the last two are exact
        with np.errstate(over="ignore"):
            assert ks._permutation_kernel.py_func(*args) == ks._permutation_kernel(*args)


def test_identical_rows_give_p_one() -> None:
    a = np.random.default_rng(4).random(50)
    for alternative in ("two-sided", "greater", "less"):
        assert ks.paired_permutation_test(a, a.copy(), alternative=alternative) == 1.0


def test_strongly_better_row_is_significant() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(100)
    b = np.clip(a + rng.normal(0.3, 0.1, 100), 0, 1.5)
    assert ks.paired_permutation_test(a, b) < 0.01
    assert ks.paired_permutation_test(a, b, alternative="greater") < 0.01
    assert ks.paired_permutation_test(a, b, alternative="less") > 0.99
    # Monte Carlo floor: p can never be below 1 / (1 + R).
    assert ks.paired_permutation_test(a, b, n_resamples=999) == 1 / 1000


def test_null_p_values_are_not_small() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.random(80), rng.random(80)  # same distribution
    assert ks.paired_permutation_test(a, b) > 0.05


def test_permutation_seed_and_resamples_are_deterministic() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.random(60), rng.random(60) + 0.05
    p = ks.paired_permutation_test(a, b, seed=1)
    assert p == ks.paired_permutation_test(a, b, seed=1)
    assert p != ks.paired_permutation_test(a, b, seed=2)
    assert p != ks.paired_permutation_test(a, b, seed=1, n_resamples=5_000)


@pytest.mark.parametrize("call, match", [
    (lambda f: f(np.zeros(3), np.zeros(4)), "equal length"),
    (lambda f: f(np.zeros((2, 2)), np.zeros((2, 2))), "1-D"),
    (lambda f: f(np.zeros(0), np.zeros(0)), "at least one pair"),
    (lambda f: f(np.zeros(3), np.array([0.0, np.nan, 1.0])), "finite"),
    (lambda f: f(np.zeros(3), np.array([0.0, np.inf, 1.0])), "finite"),
    (lambda f: f(np.zeros(3), np.ones(3), n_resamples=0), "n_resamples"),
])
@pytest.mark.parametrize("fn", [ks.paired_bootstrap_ci, ks.paired_permutation_test])
def test_bad_input_raises_one_clear_error(fn, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(fn)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="level"):
        ks.paired_bootstrap_ci(np.zeros(3), np.ones(3), level=1.0)
    with pytest.raises(ValueError, match="alternative"):
        ks.paired_permutation_test(np.zeros(3), np.ones(3),
                                   alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        ks.bootstrap_means(np.array([np.nan]), 10, 0)
