"""GEPA's instance-level Pareto front over the score matrix (candidates x examples, NaN = missing).

For each validation example the *front* is the set of programs that reach the best score on it
(ties all in). GEPA then prunes by set cover, not by vector dominance: visiting programs from the
lowest aggregate score up, a program is removed when every front it is in still holds another
surviving program. A parent is drawn with probability proportional to the number of pruned fronts
it is in. This module computes the same thing from the matrix in O(P·V) and consumes a
``random.Random`` exactly as ``gepa.gepa_utils.select_program_candidate_from_pareto_front`` does
(gepa 0.1.4), so a seeded run picks the same parents.

Why a single pass suffices: gepa restarts its scan after every removal, but removal only shrinks
the set of survivors, so a program once found non-dominated stays non-dominated; visiting the
programs once in order, with a live count per front, removes exactly the same programs.

The order of the visit: aggregate score ascending (stable), ties by first appearance when scanning
examples 0, 1, … and, within an example, program index ascending. That is gepa's order whenever
Python iterates its front sets in ascending order (always for ids below 8, usually for small ids).

Example::

    >>> s = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> pareto_frequencies(s)      # program 2 is covered by 0 on example 2 and is pruned
    array([2, 2, 0])
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from evo.kernels._jit import jit

__all__ = [
    "instance_fronts",
    "instance_fronts_reference",
    "pareto_frequencies",
    "remove_dominated",
    "remove_dominated_reference",
    "select_from_pareto_front",
    "select_from_pareto_front_reference",
]


# ---------------------------------------------------------------- input validation (public edge)


def _as_scores(scores: ArrayLike) -> np.ndarray:
    s = np.ascontiguousarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D (programs x examples) array, got shape {s.shape}")
    return s


def _as_member(member: ArrayLike) -> np.ndarray:
    m = np.ascontiguousarray(member)
    if m.ndim != 2:
        raise ValueError(f"member must be a 2-D (programs x examples) array, got shape {m.shape}")
    if m.dtype != np.bool_:
        raise ValueError(f"member must be a boolean array, got dtype {m.dtype}")
    return m


def _as_agg(agg: ArrayLike | None, member: np.ndarray) -> np.ndarray | None:
    if agg is None:
        return None
    a = np.asarray(agg, dtype=np.float64)
    if a.shape != (member.shape[0],):
        raise ValueError(f"agg must have shape ({member.shape[0]},), got {a.shape}")
    # NaN is fine for a program in no front (e.g. a row mean over no observed cell): it is never
    # visited. For a visited program it would make the order undefined (gepa's sort would too).
    bad = np.isnan(a) & member.any(axis=1)
    if bad.any():
        raise ValueError("agg is NaN for program(s) in a front: "
                         f"{np.flatnonzero(bad)[:10].tolist()}")
    return a


# ---------------------------------------------------------------- fronts


@jit
def _fronts_kernel(s: np.ndarray) -> np.ndarray:
    """Membership (P, V): column maxima over non-NaN cells, then equality, row by row."""
    n_prog, n_ex = s.shape
    # Start at -inf: NaN > b is False, so NaN never becomes the best; an all-NaN column keeps
    # -inf and matches no cell, while a column of -inf scores matches its -inf cells (as gepa).
    best = np.full(n_ex, -np.inf)
    for i in range(n_prog):
        for j in range(n_ex):
            v = s[i, j]
            best[j] = v if v > best[j] else best[j]
    member = np.empty((n_prog, n_ex), dtype=np.bool_)
    for i in range(n_prog):
        for j in range(n_ex):
            member[i, j] = s[i, j] == best[j]  # NaN equals nothing
    return member


def instance_fronts(scores: ArrayLike) -> np.ndarray:
    """Membership (P, V) bool: program i is in the front of example j iff ``scores[i, j]`` equals
    the best observed score of column j (exact float equality, as gepa's ``==``; ties all in).
    NaN means "not evaluated" and is never in a front, so an all-NaN column has an empty front."""
    return _fronts_kernel(_as_scores(scores))


def instance_fronts_reference(scores: ArrayLike) -> dict[int, set[int]]:
    """gepa's incremental front update (``GEPAState._update_pareto_front_for_val_id``) replayed
    over the programs in index order: a better score resets the front, an equal one joins it.
    Examples nobody scored are left out, as in gepa's state."""
    s = _as_scores(scores)
    fronts: dict[int, set[int]] = {}
    for j in range(s.shape[1]):
        best = float("-inf")
        for i in range(s.shape[0]):
            score = float(s[i, j])
            if score != score:  # NaN: not evaluated
                continue
            if score > best or j not in fronts:
                best, fronts[j] = score, {i}
            elif score == best:
                fronts[j].add(i)
    return fronts


# ---------------------------------------------------------------- set-cover pruning


@jit
def _prune_kernel(member: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Survivors (P,) bool: visit programs in ``order``; remove one when each of its fronts
    holds at least one other live program (then decrement those fronts' live counts)."""
    n_prog, n_ex = member.shape
    live = np.zeros(n_ex, dtype=np.int32)
    for i in range(n_prog):
        for j in range(n_ex):
            live[j] += member[i, j]
    keep = np.zeros(n_prog, dtype=np.bool_)
    for t in range(order.shape[0]):
        y = order[t]
        # Branch-free on purpose: membership bits are unpredictable, and a mispredicted branch
        # per cell cost ~15x more than scanning the whole row with SIMD.
        last_in_some_front = False
        for j in range(n_ex):
            last_in_some_front |= member[y, j] & (live[j] < 2)
        if last_in_some_front:
            keep[y] = True
        else:  # every front of y keeps another live program: y is dominated
            for j in range(n_ex):
                live[j] -= member[y, j]
    return keep


def _first_appearance(member: np.ndarray) -> np.ndarray:
    """Programs in some front, ordered by (first example whose front holds them, index)."""
    present = np.flatnonzero(member.any(axis=1))
    first_example = member[present].argmax(axis=1)
    return present[np.lexsort((present, first_example))]  # lexsort: last key is primary


def _visit_order(member: np.ndarray, agg: np.ndarray | None) -> np.ndarray:
    order = _first_appearance(member)
    if agg is None:
        return order
    return order[np.argsort(agg[order], kind="stable")]  # gepa: sorted(programs, key=score)


def remove_dominated(member: ArrayLike, agg: ArrayLike | None = None) -> np.ndarray:
    """gepa's ``remove_dominated_programs`` on a (P, V) bool membership matrix: returns the pruned
    membership. Programs are visited by ``agg`` ascending (stable; ties by first appearance over
    examples, then index; ``agg=None`` means all tied, as gepa's ``scores=None``), and a program
    is removed when every front containing it still contains another surviving program. Every
    non-empty front keeps at least one program."""
    m = _as_member(member)
    return m & _survivors(m, _as_agg(agg, m))[:, None]


def _survivors(member: np.ndarray, agg: np.ndarray | None) -> np.ndarray:
    return _prune_kernel(member, _visit_order(member, agg).astype(np.int64))


def remove_dominated_reference(
    fronts: Mapping[int, set[int]], agg: Sequence[float] | Mapping[int, float] | None = None
) -> dict[int, set[int]]:
    """The readable gepa way: dict of front sets, restart the scan after every removal.
    Front sets are scanned in ascending program order (the order the kernel defines)."""
    programs: list[int] = []
    for front in fronts.values():
        for p in sorted(front):
            if p not in programs:
                programs.append(p)
    if agg is not None:
        programs.sort(key=lambda p: agg[p])  # list.sort is stable

    def is_dominated(y: int, others: set[int]) -> bool:
        return all(any(p in others for p in front) for front in fronts.values() if y in front)

    dominated: set[int] = set()
    found = True
    while found:
        found = False
        for y in programs:
            if y not in dominated and is_dominated(y, set(programs) - {y} - dominated):
                dominated.add(y)
                found = True
                break
    return {j: {p for p in front if p not in dominated} for j, front in fronts.items()}


# ---------------------------------------------------------------- sampling


@jit
def _row_means_kernel(s: np.ndarray) -> np.ndarray:
    """Mean over non-NaN cells per row (the default aggregate); 0.0 for a row with none (such a
    row is in no front). Summed left to right, so the last bit may differ from NumPy's
    pairwise sums: pass ``agg`` explicitly where exact ties with another mean matter."""
    n_prog, n_ex = s.shape
    out = np.zeros(n_prog)
    for i in range(n_prog):
        total = 0.0
        count = 0
        for j in range(n_ex):
            v = s[i, j]
            observed = v == v  # branch-free: NaN cells are scattered, branches mispredict
            total += v if observed else 0.0
            count += observed
        if count > 0:
            out[i] = total / count
    return out


def pareto_frequencies(scores: ArrayLike, agg: ArrayLike | None = None) -> np.ndarray:
    """Number of pruned fronts each program is in, int64 (P,); 0 = never selected. ``agg``
    defaults to the mean over observed cells per row, as in :func:`select_from_pareto_front`, so
    these are exactly the weights that selection samples with."""
    s = _as_scores(scores)
    pruned = remove_dominated(instance_fronts(s), _row_means_kernel(s) if agg is None else agg)
    return pruned.sum(axis=1, dtype=np.int64)


def select_from_pareto_front(scores: ArrayLike, agg: ArrayLike | None, rng: random.Random) -> int:
    """gepa's ``select_program_candidate_from_pareto_front`` from the score matrix: build the
    fronts, prune them (:func:`remove_dominated`, visiting by ``agg``, default the mean over
    observed cells per row), then draw a program with weight = number of pruned fronts it is in.
    The draw is ``sampling_list[rng.randrange(total)]`` over gepa's sampling list (programs by
    first appearance in the pruned fronts, each repeated by its weight), which consumes ``rng``
    exactly like gepa's ``rng.choice(sampling_list)``. Raises ValueError if no cell is scored."""
    s = _as_scores(scores)
    member = _fronts_kernel(s)
    if not member.any():
        raise ValueError("select_from_pareto_front: no example has any score (all cells NaN)")
    a = _row_means_kernel(s) if agg is None else _as_agg(agg, member)
    survivors = np.flatnonzero(_survivors(member, a))  # few: most programs are pruned
    kept = member[survivors]
    order = np.lexsort((survivors, kept.argmax(axis=1)))  # first appearance in pruned fronts
    cum = np.cumsum(kept[order].sum(axis=1))
    r = rng.randrange(int(cum[-1]))
    return int(survivors[order[np.searchsorted(cum, r, side="right")]])  # block holding r


def select_from_pareto_front_reference(
    fronts: Mapping[int, set[int]],
    agg: Sequence[float] | Mapping[int, float] | None,
    rng: random.Random,
) -> int:
    """gepa's selection, written out: prune, count fronts per program in order of first
    appearance, repeat each program by its count, ``rng.choice`` of that list."""
    pruned = remove_dominated_reference(fronts, agg)
    freq: dict[int, int] = {}
    for front in pruned.values():
        for p in sorted(front):
            freq[p] = freq.get(p, 0) + 1
    sampling_list = [p for p, n in freq.items() for _ in range(n)]
    if not sampling_list:
        raise ValueError("select_from_pareto_front_reference: every front is empty")
    return rng.choice(sampling_list)
