"""Paired statistics between two candidates' score rows: bootstrap CI and permutation test.

Both resample with splitmix64, a 64-bit generator small enough to write twice -- once with
Python ints (the references here, which document the meaning) and once with ``np.uint64``
arithmetic (the Numba kernels) -- so kernel and reference draw bit-identical streams and return
identical numbers for the same seed. A draw ``x`` becomes an index in ``[0, n)`` as
``((x >> 32) * n) >> 32`` (multiply-shift on the top 32 bits: no division, bias below n / 2^32).

Example::

    >>> a = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    >>> b = np.ones(8)
    >>> # 5 nonzero differences: all 2^5 sign patterns are enumerated, one is as large as observed
    >>> paired_permutation_test(a, b, alternative="greater")
    0.03125
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from evo.kernels._jit import jit

__all__ = ["bootstrap_means", "paired_bootstrap_ci", "paired_permutation_test", "splitmix64"]

Alternative = Literal["two-sided", "greater", "less"]
_ALTERNATIVES = {"two-sided": 0, "greater": 1, "less": 2}

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Numba freezes these globals as uint64 constants. Every operand in the kernels' generator is a
# uint64: mixing uint64 with int64 (even a literal like 30) promotes to float64 in Numba.
_U_GOLDEN = np.uint64(_GOLDEN)
_U_MIX1 = np.uint64(_MIX1)
_U_MIX2 = np.uint64(_MIX2)
_U27, _U30, _U31, _U32, _U1 = (np.uint64(k) for k in (27, 30, 31, 32, 1))

# Sign-flipped sums add the same terms in another order, so a T* that ties T exactly can land a
# few ulps away; counting T* within this relative tolerance of T as a tie (">=") keeps the p-value
# honest. The scale is 1 + sum|d| (which bounds every |T*|), not just |T|, because T can be ~0
# while the terms, and so the rounding, are large.
TIE_RTOL = 1e-9


# ---------------------------------------------------------------- splitmix64


class SplitMix64:
    """Reference generator with Python ints masked to 64 bits (Steele, Lea & Flood 2014)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """An index in ``[0, n)`` from the top 32 bits of one draw."""
        return ((self.next() >> 32) * n) >> 32


# Callers write ``_splitmix64_next(np.uint64(state))``: a no-op under Numba, but on a kernel's
# ``py_func`` path the compiled helper hands back Python ints, which Numba would retype as int64.
@jit
def _splitmix64_next(state: np.uint64) -> tuple[np.uint64, np.uint64]:
    state = state + _U_GOLDEN  # uint64 arithmetic wraps mod 2^64
    z = state
    z = (z ^ (z >> _U30)) * _U_MIX1
    z = (z ^ (z >> _U27)) * _U_MIX2
    return state, z ^ (z >> _U31)


@jit
def _splitmix64_fill(seed: np.uint64, out: np.ndarray) -> None:
    state = seed
    for k in range(out.shape[0]):
        state, out[k] = _splitmix64_next(np.uint64(state))


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The first ``count`` outputs (``uint64``) of splitmix64 seeded with ``seed`` (any int,
    taken mod 2^64): the stream every resampler here draws from."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out = np.empty(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the pure-Python fallback wraps np.uint64 with a warning
        _splitmix64_fill(np.uint64(seed & _MASK), out)
    return out


# ---------------------------------------------------------------- validation (public edge)


def _paired_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D score rows of equal length, got shapes "
                         f"{a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("need at least one pair of scores")
    diff = b - a
    if not np.isfinite(diff).all():
        raise ValueError("scores must be finite (NaN = not evaluated: keep only the examples "
                         "both candidates were scored on)")
    return diff


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return int(n_resamples)


# ---------------------------------------------------------------- bootstrap


def bootstrap_means(diff: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples`` bootstrap means of ``diff``: each resample draws ``len(diff)`` indices with
    replacement from splitmix64(``seed``), one draw per index, and sums in draw order."""
    d = np.ascontiguousarray(diff, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError("diff must be a non-empty 1-D array of finite values")
    if d.size >= 1 << 32:
        raise ValueError("bootstrap index draws use 32 bits: at most 2^32 - 1 values")
    out = np.empty(_check_resamples(n_resamples))
    with np.errstate(over="ignore"):
        _bootstrap_means_kernel(d, np.uint64(seed & _MASK), out)
    return out


@jit
def _bootstrap_means_kernel(diff: np.ndarray, seed: np.uint64, out: np.ndarray) -> None:
    n = diff.shape[0]
    un = np.uint64(n)
    state = seed
    for r in range(out.shape[0]):
        total = 0.0
        for _ in range(n):
            state, x = _splitmix64_next(np.uint64(state))
            total += diff[np.int64(((x >> _U32) * un) >> _U32)]
        out[r] = total / n


def bootstrap_means_reference(diff: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Python meaning of :func:`bootstrap_means` (sums left to right, as the kernel does)."""
    d = np.asarray(diff, dtype=np.float64)
    rng = SplitMix64(seed)
    means = np.empty(n_resamples)
    for r in range(n_resamples):
        total = 0.0
        for _ in range(len(d)):
            total += float(d[rng.below(len(d))])
        means[r] = total / len(d)
    return means


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval at ``level`` of mean(b - a), resampling examples with
    replacement while keeping each (a, b) pair together; percentiles by
    ``np.quantile(method="linear")``. Raises ValueError for rows of unequal length, no pairs,
    non-finite scores, ``level`` outside (0, 1) or ``n_resamples < 1``.

    >>> paired_bootstrap_ci(np.zeros(50), np.full(50, 0.5))
    (0.5, 0.5)
    """
    diff = _paired_diff(a, b)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    means = bootstrap_means(diff, n_resamples, seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], method="linear")
    return float(low), float(high)


# ---------------------------------------------------------------- permutation test


def paired_permutation_test(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000,
                            seed: int = 0, alternative: Alternative = "two-sided") -> float:
    """p-value of mean(b - a) = 0 against ``alternative`` ("greater": b better, "less": b worse,
    "two-sided"), by flipping the signs of the paired differences. With m nonzero differences
    and 2^m <= ``n_resamples`` all sign patterns are enumerated: p = #{T* >= T} / 2^m, exact
    (identical rows, m = 0, give 1). Otherwise ``n_resamples`` random patterns from splitmix64
    (``seed``): p = (1 + #{T* >= T}) / (1 + n_resamples). T* within ``TIE_RTOL * (1 + sum|d|)``
    of T counts as a tie, i.e. as extreme. Raises ValueError like :func:`paired_bootstrap_ci`
    and for an unknown ``alternative``."""
    diff = _paired_diff(a, b)
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {sorted(_ALTERNATIVES)}, got {alternative!r}")
    nonzero = np.ascontiguousarray(diff[diff != 0.0])  # a zero difference is its own flip
    with np.errstate(over="ignore"):
        return float(_permutation_kernel(nonzero, _check_resamples(n_resamples),
                                         np.uint64(seed & _MASK), _ALTERNATIVES[alternative]))


@jit
def _is_extreme(t: float, observed: float, tol: float, alternative: int) -> bool:
    if alternative == 1:  # greater
        return t >= observed - tol
    if alternative == 2:  # less
        return t <= observed + tol
    return abs(t) >= abs(observed) - tol


@jit
def _permutation_kernel(d: np.ndarray, n_resamples: int, seed: np.uint64,
                        alternative: int) -> float:
    m = d.shape[0]
    observed = 0.0
    scale = 1.0
    for i in range(m):
        observed += d[i]
        scale += abs(d[i])
    tol = TIE_RTOL * scale
    if m < 63 and (1 << m) <= n_resamples:
        # Exact: bit i of the pattern flips d[i]; pattern 0 is the observed statistic itself.
        hits = 0
        for pattern in range(1 << m):
            t = 0.0
            for i in range(m):
                if (pattern >> i) & 1:
                    t -= d[i]
                else:
                    t += d[i]
            if _is_extreme(t, observed, tol, alternative):
                hits += 1
        return hits / (1 << m)
    # Monte Carlo: one 64-bit draw supplies the signs of 64 consecutive differences.
    state = seed
    hits = 0
    for _ in range(n_resamples):
        t = 0.0
        bits = np.uint64(0)
        for i in range(m):
            if i % 64 == 0:
                state, bits = _splitmix64_next(np.uint64(state))
            if bits & _U1:
                t -= d[i]
            else:
                t += d[i]
            bits = bits >> _U1
        if _is_extreme(t, observed, tol, alternative):
            hits += 1
    return (1 + hits) / (1 + n_resamples)


def paired_permutation_test_reference(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000,
                                      seed: int = 0, alternative: str = "two-sided") -> float:
    """Python meaning of :func:`paired_permutation_test` (same draws, same summation order)."""
    d = [float(x) for x in np.asarray(b, float) - np.asarray(a, float) if x != 0.0]
    m = len(d)

    def flipped_sum(flips: list[bool]) -> float:
        total = 0.0
        for x, flip in zip(d, flips, strict=True):
            total += -x if flip else x
        return total

    observed = flipped_sum([False] * m)
    tol = TIE_RTOL * (1.0 + sum(abs(x) for x in d))

    def extreme(t: float) -> bool:
        if alternative == "greater":
            return t >= observed - tol
        if alternative == "less":
            return t <= observed + tol
        return abs(t) >= abs(observed) - tol

    if 2**m <= n_resamples:
        patterns = range(2**m)
        hits = sum(extreme(flipped_sum([bool(p >> i & 1) for i in range(m)])) for p in patterns)
        return hits / 2**m
    rng = SplitMix64(seed)
    hits = 0
    for _ in range(n_resamples):
        words = [rng.next() for _ in range(math.ceil(m / 64))]
        hits += extreme(flipped_sum([bool(words[i // 64] >> (i % 64) & 1) for i in range(m)]))
    return (1 + hits) / (1 + n_resamples)
