"""evo.kernels.pareto: kernel == readable reference == gepa 0.1.4 (fronts, pruning, the draw)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from gepa.gepa_utils import remove_dominated_programs, select_program_candidate_from_pareto_front
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.kernels import pareto as pk
from evo.kernels.pareto import (
    instance_fronts,
    instance_fronts_reference,
    pareto_frequencies,
    remove_dominated,
    remove_dominated_reference,
    select_from_pareto_front,
    select_from_pareto_front_reference,
)

NAN = float("nan")


@st.composite
def score_matrices(draw, max_programs: int = 8, max_examples: int = 12) -> np.ndarray:
    """Few distinct values (ties everywhere) and some NaN cells (not evaluated)."""
    p = draw(st.integers(1, max_programs))
    v = draw(st.integers(1, max_examples))
    cells = draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, 1.0, 0.5, NAN]), min_size=p * v,
                          max_size=p * v))
    return np.array(cells, dtype=np.float64).reshape(p, v)


@st.composite
def aggregates(draw, p: int) -> list[float] | None:
    """None (all tied), or integer-valued aggregates (ties likely)."""
    if draw(st.booleans()):
        return None
    return [float(x) for x in draw(st.lists(st.integers(0, 2), min_size=p, max_size=p))]


def as_dict(member: np.ndarray) -> dict[int, set[int]]:
    """Membership matrix -> gepa's {example: set(programs)}, examples with an empty front left
    out."""
    return {j: set(np.flatnonzero(member[:, j]).tolist())
            for j in range(member.shape[1]) if member[:, j].any()}


def row_means(s: np.ndarray) -> list[float]:
    return pk._row_means_kernel(s).tolist()


# ---------------------------------------------------------------- kernel == reference


@settings(max_examples=300, deadline=None)
@given(score_matrices(max_programs=30, max_examples=20), st.data())
def test_kernel_matches_reference(s: np.ndarray, data: st.DataObject) -> None:
    member = instance_fronts(s)
    fronts = instance_fronts_reference(s)
    assert as_dict(member) == fronts
    agg = data.draw(aggregates(s.shape[0]))
    assert as_dict(remove_dominated(member, agg)) == {
        j: f for j, f in remove_dominated_reference(fronts, agg).items() if f}
    if not fronts:
        with pytest.raises(ValueError, match="no example has any score"):
            select_from_pareto_front(s, agg, random.Random(0))
        return
    seed = data.draw(st.integers(0, 2**32 - 1))
    ours_rng, ref_rng = random.Random(seed), random.Random(seed)
    used = row_means(s) if agg is None else agg
    assert select_from_pareto_front(s, agg, ours_rng) == select_from_pareto_front_reference(
        fronts, used, ref_rng)
    assert ours_rng.getstate() == ref_rng.getstate()  # same amount of randomness consumed
    freq = pareto_frequencies(s, agg)
    assert freq.tolist() == remove_dominated(member, used).sum(axis=1).tolist()


def test_python_fallback_matches_kernels() -> None:
    rng = np.random.default_rng(3)
    for p, v in [(1, 1), (5, 7), (30, 40)]:
        s = rng.choice([0.0, 1.0, 0.5, NAN], size=(p, v))
        member = pk._fronts_kernel(s)
        assert np.array_equal(pk._fronts_kernel.py_func(s), member)
        assert np.array_equal(pk._row_means_kernel.py_func(s), pk._row_means_kernel(s))
        order = pk._visit_order(member, pk._row_means_kernel(s)).astype(np.int64)
        assert np.array_equal(pk._prune_kernel.py_func(member, order),
                              pk._prune_kernel(member, order))


def test_randrange_consumes_rng_like_choice() -> None:
    # gepa draws rng.choice(sampling_list); we draw rng.randrange(len): both are _randbelow(n).
    for seed in range(50):
        for n in (1, 2, 3, 7, 1000, 2**20 + 3):
            a, b = random.Random(seed), random.Random(seed)
            assert a.randrange(n) == b.choice(range(n))
            assert a.getstate() == b.getstate()


# ---------------------------------------------------------------- agreement with gepa


@settings(max_examples=400, deadline=None)
@given(score_matrices(max_programs=8), st.data())
def test_small_matches_gepa_exactly(s: np.ndarray, data: st.DataObject) -> None:
    # With ids < 8, Python iterates every front set in ascending order, so gepa's visiting order
    # and its sampling list are exactly ours: same pruned fronts and the same draw per seed.
    fronts = instance_fronts_reference(s)
    if not fronts:
        return
    agg = data.draw(aggregates(s.shape[0]))
    gepa_pruned = remove_dominated_programs({j: set(f) for j, f in fronts.items()}, agg)
    assert as_dict(remove_dominated(instance_fronts(s), agg)) == {
        j: f for j, f in gepa_pruned.items() if f}
    used = row_means(s) if agg is None else agg
    for seed in data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5)):
        ours_rng, gepa_rng = random.Random(seed), random.Random(seed)
        assert select_from_pareto_front(s, used, ours_rng) == \
            select_program_candidate_from_pareto_front(fronts, used, gepa_rng)
        assert ours_rng.getstate() == gepa_rng.getstate()


def test_small_tied_matches_gepa_over_many_seeds() -> None:
    rng = np.random.default_rng(0)
    for case in range(40):
        shape = (int(rng.integers(2, 9)), int(rng.integers(1, 30)))
        s = rng.integers(0, 2, size=shape).astype(float)
        agg = rng.integers(0, 2, size=s.shape[0]).astype(float).tolist()  # tied aggregates
        fronts = instance_fronts_reference(s)
        for seed in range(25):
            assert select_from_pareto_front(s, agg, random.Random(seed)) == \
                select_program_candidate_from_pareto_front(fronts, agg, random.Random(seed)), case


class _RecordingRandom(random.Random):
    """Keeps the list gepa samples from, to read off its per-program frequencies."""

    def choice(self, seq):  # type: ignore[override]
        self.sampling_list = list(seq)
        return super().choice(seq)


@pytest.mark.parametrize(("p", "v", "seed"), [(50, 300, 0), (120, 200, 1), (200, 500, 2),
                                               (400, 1000, 3)])
def test_large_matches_gepa(p: int, v: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.3, 0.9, p)
    s = (rng.random((p, v)) < acc[:, None]).astype(float)
    s[rng.random((p, v)) < 0.02] = NAN  # a few cells not evaluated
    agg = (pk._row_means_kernel(s) + np.arange(p) * 1e-9).tolist()  # distinct aggregates
    fronts = instance_fronts_reference(s)
    ours = remove_dominated(instance_fronts(s), agg)
    assert as_dict(ours) == {j: f for j, f in remove_dominated_programs(fronts, agg).items() if f}
    # With ids >= 8 gepa's sampling-list order follows Python's set iteration order, which is
    # not ours; the multiset (each program's frequency) is the same, so compare that.
    recorder = _RecordingRandom(0)
    select_program_candidate_from_pareto_front(fronts, agg, recorder)
    gepa_freq = np.bincount(recorder.sampling_list, minlength=p)
    assert pareto_frequencies(s, agg).tolist() == gepa_freq.tolist()
    assert select_from_pareto_front(s, agg, random.Random(0)) in set(recorder.sampling_list)


# ---------------------------------------------------------------- semantics and validation


def test_docstring_example_and_fronts() -> None:
    s = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert pareto_frequencies(s).tolist() == [2, 2, 0]
    t = np.array([[NAN, 0.3, -np.inf], [NAN, 0.3, -np.inf], [NAN, NAN, NAN]])
    member = instance_fronts(t)
    assert member.tolist() == [[False, True, True], [False, True, True], [False, False, False]]
    # Program 1 is visited first (lower aggregate) and both its fronts still hold program 0.
    # Program 2 has no score (NaN mean) and is in no front: its NaN aggregate is allowed.
    assert remove_dominated(member, [0.5, 0.4, NAN]).sum(axis=1).tolist() == [2, 0, 0]
    assert instance_fronts(np.zeros((0, 3))).shape == (0, 3)


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        instance_fronts(np.zeros(3))
    with pytest.raises(ValueError, match="boolean"):
        remove_dominated(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        remove_dominated(np.ones((2, 2), dtype=bool), [1.0])
    with pytest.raises(ValueError, match="NaN"):
        remove_dominated(np.ones((2, 2), dtype=bool), [1.0, NAN])
    with pytest.raises(ValueError, match="no example has any score"):
        select_from_pareto_front(np.full((3, 4), NAN), None, random.Random(0))
