"""Triggers over constructed agent views (no clocks: ``now`` is in the view)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.agents.events import DegradationAlert
from evo.agents.triggers import (
    AgentView,
    AnyOf,
    EveryN,
    Manual,
    PerformanceDrop,
    Periodic,
    Trigger,
    every,
    manual,
    performance,
    periodic,
    unpaired_permutation_test,
)
from evo.errors import ConfigError


def view(**kw) -> AgentView:
    base = dict(now=1_000.0, new_examples=0, examples=0, last_optimized=None, recent_scores=(),
                deployed_scores=None, deployed_version=None, agent="qa")
    return AgentView(**{**base, **kw})


def test_factories_and_protocol():
    assert every(5) == EveryN(5) and periodic(60) == Periodic(60) and manual() == Manual()
    assert performance(window=30, min_graded=10) == PerformanceDrop(window=30, min_graded=10)
    for t in (every(1), periodic(1), manual(), performance(), AnyOf(manual())):
        assert isinstance(t, Trigger)


def test_manual_never_fires():
    assert Manual().check(view(new_examples=10**6, recent_scores=(0.0,) * 100,
                               deployed_scores=(1.0,) * 100)) is None


def test_every_n():
    t = EveryN(10)
    assert t.check(view(new_examples=9, examples=500)) is None
    assert t.check(view(new_examples=10)) == "10 new examples since the last optimization " \
                                             "(every 10)"
    assert t.check(view(new_examples=25)) is not None


def test_periodic():
    t = Periodic(3600, min_new_examples=5)
    assert t.check(view(now=10_000, last_optimized=10_000 - 3599, new_examples=50)) is None
    assert "3600 s since the last optimization" in t.check(
        view(now=10_000, last_optimized=10_000 - 3600, new_examples=5))
    assert t.check(view(now=10_000, last_optimized=0, new_examples=4)) is None  # nothing new
    assert "never optimized" in t.check(view(last_optimized=None, new_examples=5))
    assert Periodic(10, min_new_examples=0).check(view(now=20, last_optimized=5)) is not None


@pytest.mark.parametrize("make, match", [
    (lambda: EveryN(0), "n must be an integer >= 1"),
    (lambda: EveryN(2.5), "n must be an integer"),  # type: ignore[arg-type]
    (lambda: Periodic(0), "seconds must be a positive"),
    (lambda: Periodic(float("inf")), "seconds must be a positive"),
    (lambda: Periodic(5, min_new_examples=-1), "min_new_examples"),
    (lambda: PerformanceDrop(window=10, min_graded=20), r"window \(10\) must be at least"),
    (lambda: PerformanceDrop(min_graded=1), "min_graded"),
    (lambda: PerformanceDrop(alpha=0), "alpha"),
    (lambda: PerformanceDrop(alpha=1.0), "alpha"),
    (lambda: PerformanceDrop(threshold=float("nan")), "threshold"),
    (lambda: PerformanceDrop(n_resamples=0), "n_resamples"),
    (lambda: AnyOf(), "at least one trigger"),
    (lambda: AnyOf(EveryN(1), "every 5"), "not a trigger"),  # type: ignore[arg-type]
])
def test_bad_parameters_are_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_performance_threshold():
    t = PerformanceDrop(window=20, threshold=0.7, min_graded=10)
    good = (1.0,) * 10 + (0.0,) * 2  # old grades, then the last 20 below ...
    assert t.check(view(recent_scores=(1.0,) * 30)) is None
    alert = t.degradation(view(recent_scores=good + (1.0, 0.0) * 10, deployed_version=3,
                               now=42.0))
    assert isinstance(alert, DegradationAlert)
    assert (alert.n, alert.recent_mean, alert.threshold, alert.version, alert.agent, alert.t) \
        == (20, 0.5, 0.7, 3, "qa", 42.0)
    assert alert.deployed_mean is None and alert.p_value is None
    assert "below the threshold 0.7" in alert.reason
    assert t.check(view(recent_scores=(1.0, 0.0) * 10)) == alert.reason
    assert alert.kind == "degradation_alert"


def test_performance_needs_min_graded():
    t = PerformanceDrop(window=50, threshold=0.9, min_graded=20)
    assert t.degradation(view(recent_scores=(0.0,) * 19, deployed_scores=(1.0,) * 100)) is None
    assert t.degradation(view(recent_scores=(0.0,) * 20, deployed_scores=(1.0,) * 100))


def test_performance_significant_drop_against_the_deployed_scores():
    t = PerformanceDrop(window=40, min_graded=20, alpha=0.05)
    deployed = (1.0,) * 32 + (0.0,) * 8  # 0.8 on held-out data when chosen
    dropped = (1.0,) * 16 + (0.0,) * 24  # 0.4 now
    alert = t.degradation(view(recent_scores=dropped, deployed_scores=deployed,
                               deployed_version=2))
    assert alert is not None and alert.p_value < 0.01
    assert (alert.n, alert.recent_mean, alert.deployed_mean) == (40, 0.4, 0.8)
    assert "significantly below the deployed version's held-out 0.800" in alert.reason
    # the same level, or better: no alert
    assert t.degradation(view(recent_scores=deployed, deployed_scores=deployed)) is None
    assert t.degradation(view(recent_scores=(1.0,) * 40, deployed_scores=deployed)) is None
    # slightly lower is noise
    assert t.degradation(view(recent_scores=(1.0,) * 30 + (0.0,) * 10,
                              deployed_scores=deployed)) is None
    # only the last `window` grades count: an old bad stretch is forgotten
    assert t.degradation(view(recent_scores=(0.0,) * 100 + deployed,
                              deployed_scores=deployed)) is None


def test_both_reasons_and_any_of():
    t = PerformanceDrop(window=40, min_graded=20, threshold=0.5)
    v = view(recent_scores=(1.0,) * 10 + (0.0,) * 30, deployed_scores=(1.0,) * 40,
             new_examples=3)
    alert = t.degradation(v)
    assert "threshold" in alert.reason and "significantly" in alert.reason
    both = AnyOf(EveryN(5), t)
    assert both.check(v) == alert.reason and both.degradation(v) == alert
    assert AnyOf(EveryN(3), t).check(v).startswith("3 new examples")
    assert AnyOf(EveryN(3), t).degradation(v) == alert  # alerts come also when another fires
    assert AnyOf(Manual(), EveryN(5)).check(v) is None
    assert AnyOf(EveryN(5)).degradation(v) is None


def test_unpaired_permutation_test_is_seeded_bounded_and_one_sided():
    low, high = np.r_[np.ones(10), np.zeros(30)], np.r_[np.ones(30), np.zeros(10)]
    p = unpaired_permutation_test(low, high, n_resamples=999, seed=1)
    assert p == unpaired_permutation_test(low, high, n_resamples=999, seed=1)
    assert 1 / 1000 <= p < 0.01
    assert unpaired_permutation_test(high, low, n_resamples=999) > 0.99  # the other side
    assert unpaired_permutation_test(high, high, n_resamples=999) > 0.4
    big = np.zeros(20_000)  # bounded memory: chunks of resamples
    assert unpaired_permutation_test(big[:50], big, n_resamples=200) == 1.0
    with pytest.raises(ValueError):
        unpaired_permutation_test([], [1.0])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=20, max_size=60),
       st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=60))
def test_never_alerts_when_recent_is_not_lower(recent, deployed):
    t = PerformanceDrop(window=60, min_graded=20)
    alert = t.degradation(view(recent_scores=tuple(recent), deployed_scores=tuple(deployed)))
    if np.mean(recent) >= np.mean(deployed):
        assert alert is None
    else:
        assert (alert is None) == (unpaired_permutation_test(recent, deployed,
                                                             n_resamples=2000) >= 0.05)


def test_views_are_frozen():
    v = view()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.now = 5.0  # type: ignore[misc]
