"""When an agent asks for a new optimization: small trigger objects over a snapshot of its state.

A trigger reads an :class:`AgentView` (what the agent has collected and how its deployed version
is doing, with the time ``now`` in it: no trigger reads a clock) and returns a reason to
optimize now, or None. The agent checks its trigger after each graded call; they are stateless,
so the agent decides what a reason does while a job is already queued or running::

    agent = evo.Agent(..., trigger=triggers.AnyOf(triggers.every(50),
                                                  triggers.performance(threshold=0.6)))

:class:`PerformanceDrop` also says why, as a :class:`~evo.agents.events.DegradationAlert`: the
rolling mean of the last ``window`` grades fell below ``threshold``, or significantly below what
the deployed version scored on held-out data when it was chosen (a one-sided unpaired
permutation test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from evo.agents.events import DegradationAlert
from evo.errors import ConfigError

__all__ = ["AgentView", "AnyOf", "EveryN", "Manual", "PerformanceDrop", "Periodic", "Trigger",
           "every", "manual", "performance", "periodic", "unpaired_permutation_test"]


@dataclass(frozen=True)
class AgentView:
    """What a trigger sees of an agent at time ``now`` (unix seconds).

    ``new_examples``: usable examples collected since the last optimization was scheduled;
    ``examples``: graded calls in all (a bound on the usable examples, counted without reading
    the texts, so a check stays cheap in a large store); ``recent_scores``: grades of the most
    recent graded calls the deployed version served, oldest first; ``deployed_scores``: the
    deployed version's held-out scores when it was chosen (None: none known); ``agent``: its
    name, for alerts."""

    now: float
    new_examples: int
    examples: int
    last_optimized: float | None
    recent_scores: tuple[float, ...]
    deployed_scores: tuple[float, ...] | None
    deployed_version: int | None
    agent: str = ""


@runtime_checkable
class Trigger(Protocol):
    """Decides whether an agent should be optimized now."""

    def check(self, view: AgentView) -> str | None:
        """A reason to optimize now, in words, or None."""
        ...


@dataclass(frozen=True)
class Manual:
    """Never fires by itself: the user calls ``agent.optimize_now()``."""

    def check(self, view: AgentView) -> str | None:
        return None


@dataclass(frozen=True)
class EveryN:
    """Fires once ``n`` new usable examples were collected since the last optimization."""

    n: int

    def __post_init__(self) -> None:
        _check_int(self.n, "EveryN: n", 1)

    def check(self, view: AgentView) -> str | None:
        if view.new_examples >= self.n:
            return (f"{view.new_examples} new examples since the last optimization "
                    f"(every {self.n})")
        return None


@dataclass(frozen=True)
class Periodic:
    """Fires when ``seconds`` have passed since the last optimization (never optimized counts as
    due) and at least ``min_new_examples`` new usable examples are there to learn from."""

    seconds: float
    min_new_examples: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, int | float) and np.isfinite(self.seconds)
                and self.seconds > 0):
            raise ConfigError(f"Periodic: seconds must be a positive number, got "
                              f"{self.seconds!r}")
        _check_int(self.min_new_examples, "Periodic: min_new_examples", 0)

    def check(self, view: AgentView) -> str | None:
        if view.new_examples < self.min_new_examples:
            return None
        if view.last_optimized is None:
            return (f"never optimized; {view.new_examples} new examples "
                    f"(every {self.seconds:g} s)")
        elapsed = view.now - view.last_optimized
        if elapsed >= self.seconds:
            return (f"{elapsed:.0f} s since the last optimization (every {self.seconds:g} s); "
                    f"{view.new_examples} new examples")
        return None


@dataclass(frozen=True)
class PerformanceDrop:
    """Fires when the deployed version degrades in production: the mean of the last ``window``
    grades is below ``threshold``, or significantly below the deployed version's held-out mean
    (one-sided unpaired permutation test, p < ``alpha``, ``n_resamples`` seeded resamples).
    Never with fewer than ``min_graded`` grades: a few bad calls are noise."""

    window: int = 50
    threshold: float | None = None
    alpha: float = 0.05
    min_graded: int = 20
    n_resamples: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int(self.min_graded, "PerformanceDrop: min_graded", 2)
        _check_int(self.window, "PerformanceDrop: window", 1)
        if self.window < self.min_graded:
            raise ConfigError(f"PerformanceDrop: window ({self.window}) must be at least "
                              f"min_graded ({self.min_graded})")
        if not (isinstance(self.alpha, int | float) and 0.0 < self.alpha < 1.0):
            raise ConfigError(f"PerformanceDrop: alpha must lie in (0, 1), got {self.alpha!r}")
        if self.threshold is not None and not (isinstance(self.threshold, int | float)
                                               and np.isfinite(self.threshold)):
            raise ConfigError(f"PerformanceDrop: threshold must be a finite number or None, "
                              f"got {self.threshold!r}")
        _check_int(self.n_resamples, "PerformanceDrop: n_resamples", 1)

    def degradation(self, view: AgentView) -> DegradationAlert | None:
        """The alert, if the deployed version degraded (see the class); None otherwise."""
        recent = np.asarray(view.recent_scores[-self.window:], float)
        if len(recent) < self.min_graded:
            return None
        mean = float(recent.mean())
        deployed = np.asarray(view.deployed_scores or (), float)
        deployed_mean = float(deployed.mean()) if len(deployed) else None
        p = None
        if deployed_mean is not None:
            p = unpaired_permutation_test(recent, deployed, n_resamples=self.n_resamples,
                                          seed=self.seed)
        reasons = []
        if self.threshold is not None and mean < self.threshold:
            reasons.append(f"the mean of the last {len(recent)} grades, {mean:.3f}, is below "
                           f"the threshold {self.threshold:g}")
        if p is not None and deployed_mean is not None and mean < deployed_mean \
                and p < self.alpha:
            reasons.append(f"the mean of the last {len(recent)} grades, {mean:.3f}, is "
                           f"significantly below the deployed version's held-out "
                           f"{deployed_mean:.3f} (one-sided permutation test p = {p:.4f} < "
                           f"alpha {self.alpha:g})")
        if not reasons:
            return None
        return DegradationAlert(t=view.now, agent=view.agent, version=view.deployed_version or 0,
                                n=len(recent), recent_mean=mean, deployed_mean=deployed_mean,
                                threshold=self.threshold, p_value=p, reason="; ".join(reasons))

    def check(self, view: AgentView) -> str | None:
        alert = self.degradation(view)
        return None if alert is None else alert.reason


@dataclass(frozen=True, init=False)
class AnyOf:
    """Fires when any of ``triggers`` does, with the first one's reason."""

    triggers: tuple[Trigger, ...]

    def __init__(self, *triggers: Trigger) -> None:
        if not triggers:
            raise ConfigError("AnyOf needs at least one trigger")
        for t in triggers:
            if not callable(getattr(t, "check", None)):
                raise ConfigError(f"AnyOf: {t!r} is not a trigger (it has no check(view))")
        object.__setattr__(self, "triggers", tuple(triggers))

    def check(self, view: AgentView) -> str | None:
        for t in self.triggers:
            reason = t.check(view)
            if reason is not None:
                return reason
        return None

    def degradation(self, view: AgentView) -> DegradationAlert | None:
        """The first degradation alert among the triggers that raise them."""
        for t in self.triggers:
            alert = getattr(t, "degradation", None)
            found = alert(view) if callable(alert) else None
            if found is not None:
                return found
        return None


def unpaired_permutation_test(recent: Sequence[float] | np.ndarray,
                              reference: Sequence[float] | np.ndarray, *,
                              n_resamples: int = 2_000, seed: int = 0) -> float:
    """One-sided p-value that ``recent`` scores lower on average than ``reference``: the share
    of random relabellings of the pooled scores whose mean(recent) - mean(reference) is at most
    the observed one, (1 + hits) / (1 + n_resamples). Seeded (numpy's PCG64) and bounded: memory
    stays under ~8 MB whatever the sizes."""
    a, b = np.asarray(recent, float), np.asarray(reference, float)
    if not len(a) or not len(b):
        raise ValueError("the permutation test needs scores on both sides")
    pooled = np.concatenate([a, b])
    n, total = len(a), float(pooled.sum())
    observed = a.mean() - b.mean()
    tol = 1e-9 * (1.0 + float(np.abs(pooled).sum()))  # ties count as extreme
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // len(pooled))
    hits, done = 0, 0
    while done < n_resamples:
        rows = min(chunk, n_resamples - done)
        perm = rng.permuted(np.broadcast_to(pooled, (rows, len(pooled))), axis=1)
        s = perm[:, :n].sum(axis=1)
        stat = s / n - (total - s) / len(b)
        hits += int((stat <= observed + tol).sum())
        done += rows
    return (1 + hits) / (1 + n_resamples)


def _check_int(value: object, what: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ConfigError(f"{what} must be an integer >= {least}, got {value!r}")


def every(n: int) -> EveryN:
    """Optimize after every ``n`` new usable examples."""
    return EveryN(n)


def periodic(seconds: float, *, min_new_examples: int = 1) -> Periodic:
    """Optimize every ``seconds`` when there is something new to learn from."""
    return Periodic(seconds, min_new_examples=min_new_examples)


def performance(**kw: object) -> PerformanceDrop:
    """Optimize when the deployed version degrades (:class:`PerformanceDrop`'s options)."""
    return PerformanceDrop(**kw)  # type: ignore[arg-type]


def manual() -> Manual:
    """Optimize only when asked (``agent.optimize_now()``)."""
    return Manual()
