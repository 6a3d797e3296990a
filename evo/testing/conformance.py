"""The checks every optimizer must pass, for a user writing one (and for every built-in one).

>>> import evo
>>> from evo.testing import conformance
>>> report = conformance.check("evolution", budget=60)   # a name, a class or a factory
>>> report.ok
True
>>> conformance.assert_conforms("gepa")  # doctest: +ELLIPSIS
<ConformanceReport gepa: conforms in ... s>

``assert_conforms`` raises ``AssertionError`` with one line per violation, e.g.
``[budget] the model received 56 task requests for 48 metric calls: some evaluation bypassed
the budget (an LM call the search did not count)``.

Four properties, each checked on the scripted task :data:`evo.testing.HASHED` (no model, a run
takes milliseconds) through the public API, :func:`evo.optimize`:

``budget``        the metric calls never exceed the budget (the result's count, and the count
                  every event reports); the model receives at most one task request per metric
                  call; no (prompt, example) cell is paid twice.
``reproducible``  the same seed gives the same search: candidates (genome, operator, score), best
                  program and score, metric calls and the model's requests.
``resume``        a run in a ``run_dir`` killed part way (the scripted model raises a
                  ``BaseException`` on its N-th call, as a kill would) and resumed with
                  ``evo.optimize(..., run_dir=same)`` ends with the result of an uninterrupted
                  run, and no request the killed sitting was answered is paid again.
``events``        ``events.jsonl`` parses, starts with ``start`` and ends with ``complete``,
                  every event kind is known, metric calls never decrease, and every candidate
                  an event names (``candidate``, ``parents``, ``best``) was generated before.

:class:`OptimizerContract` is the same suite as a pytest class: subclass it (name the subclass
``Test...``) and set ``optimizer``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import evo
from evo import Budget, SearchConfig
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.testing import HASHED, Killed, ScriptedTask, dying_lm

__all__ = ["PROPERTIES", "ConformanceReport", "Killed", "OptimizerContract", "Violation",
           "assert_conforms", "check", "known_kinds"]

PROPERTIES = ("budget", "reproducible", "resume", "events")

# Kinds evo's own optimizers emit as plain strings today; typed kinds register themselves in
# ``evo.events.Event.kinds`` and are known too (:func:`known_kinds`).
BUILTIN_KINDS = frozenset({
    "start", "candidate_generated", "candidate_evaluated", "new_best", "budget_exhausted",
    "converged", "complete", "proposal_rejected", "demo_sets", "instructions",
    "ensemble_rejected", "member_start", "member_skipped"})

# a registered name, a SearchConfig subclass or instance, or a factory budget -> optimizer
OptimizerSpec = Any


def known_kinds(extra: Iterable[str] = ()) -> frozenset[str]:
    """Event kinds the suite accepts: the built-in ones, every typed event class's, ``extra``."""
    typed = getattr(getattr(evo.events, "Event", None), "kinds", {})
    return BUILTIN_KINDS | frozenset(typed) | frozenset(extra)


@dataclass(frozen=True)
class Violation:
    """One failed property: which (one of :data:`PROPERTIES`) and what was seen."""

    prop: str
    message: str

    def __str__(self) -> str:
        return f"[{self.prop}] {self.message}"


@dataclass
class ConformanceReport:
    """What :func:`check` found: the violations (empty when the optimizer conforms), the runs'
    figures and how long the suite took."""

    optimizer: str
    budget: int
    violations: list[Violation] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def failed(self, prop: str) -> list[Violation]:
        return [v for v in self.violations if v.prop == prop]

    def __str__(self) -> str:
        head = (f"optimizer {self.optimizer!r} (budget {self.budget} metric calls, "
                f"{self.seconds:.2f} s): ")
        if self.ok:
            return head + "conforms (" + ", ".join(PROPERTIES) + ")"
        return head + f"{len(self.violations)} violation(s)\n" + \
            "\n".join(f"  {v}" for v in self.violations)

    def __repr__(self) -> str:
        state = "conforms" if self.ok else f"{len(self.violations)} violation(s)"
        return f"<ConformanceReport {self.optimizer}: {state} in {self.seconds:.2f} s>"


# ---- building and running the optimizer -------------------------------------------------------
def _factory(optimizer: OptimizerSpec) -> tuple[str, Callable[[Budget], Any]]:
    """(a name for messages, budget -> a fresh optimizer)."""
    if isinstance(optimizer, str):
        return optimizer, lambda b: evo.optimizers.get(optimizer, budget=b, encoder="hashing")
    if isinstance(optimizer, type) and issubclass(optimizer, SearchConfig):
        name = optimizer.name or optimizer.__name__
        return name, lambda b: optimizer(budget=b, encoder="hashing")
    if isinstance(optimizer, SearchConfig):
        name = optimizer.name or type(optimizer).__name__
        return name, lambda b: copy.deepcopy(optimizer).model_copy(update={"budget": b})
    if callable(optimizer):
        return getattr(optimizer, "__name__", repr(optimizer)), optimizer
    raise TypeError(f"conformance.check needs an optimizer name, a SearchConfig subclass or "
                    f"instance, or a factory budget -> optimizer; got {optimizer!r}")


@dataclass
class _Run:
    result: Any
    lm: ScriptedLM
    run_dir: Path | None


def _lm(task: ScriptedTask, dies_at: int | None = None) -> ScriptedLM:
    return ScriptedLM(task.respond) if dies_at is None else dying_lm(task.respond, dies_at)


def _optimize(make: Callable[[Budget], Any], budget: Budget, task: ScriptedTask, seed: int,
              lm: ScriptedLM, run_dir: Path | None) -> Any:
    return evo.optimize(task.program(), list(task.train), list(task.val), lm=lm,
                        optimizer=make(budget), seed=seed, cache=False, run_dir=run_dir)


def _run(make: Callable[[Budget], Any], budget: Budget, task: ScriptedTask, seed: int,
         run_dir: Path | None = None) -> _Run:
    lm = _lm(task)
    return _Run(_optimize(make, budget, task, seed, lm, run_dir), lm, run_dir)


def _close(result: Any) -> None:
    # Result keeps its run store open for report(); release the directory before it is removed.
    store = getattr(result, "store", None)
    if store is not None and hasattr(store, "close"):
        store.close()


# ---- what is compared -------------------------------------------------------------------------
def _paid(lm: ScriptedLM) -> list[LMRequest]:
    """The requests the search paid for (the preflight, a probe of the model, excluded)."""
    return [r for r in lm.calls if r.purpose != "preflight"]


def _keys(requests: Iterable[LMRequest]) -> list[str]:
    return [r.key("scripted") for r in requests]


def _search(result: Any) -> dict[str, Any]:
    """A result as the figures a reproduced or resumed search must repeat."""
    best = result.best.to_json() if hasattr(result.best, "to_json") else str(result.best)
    return {
        "candidates": [(json.dumps(c.genome, default=str, sort_keys=True), c.op, c.val_score)
                       for c in result.candidates],
        "best": json.dumps(best, default=str, sort_keys=True),
        "best_val": result.best_val, "baseline_val": result.baseline_val,
        "metric_calls": result.metric_calls, "stop_reason": str(result.stop_reason),
        "instructions": list(result.instructions),
    }


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for key, x in a.items():
        y = b[key]
        if x == y:
            continue
        if key == "candidates":
            n = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                     min(len(x), len(y)))
            first = (x[n] if n < len(x) else "none", y[n] if n < len(y) else "none")
            out.append(f"candidates differ from #{n} on ({len(x)} vs {len(y)} candidates; "
                       f"#{n}: {first[0]} vs {first[1]})")
        elif key in ("best", "instructions"):
            out.append(f"{key} differs")
        else:
            out.append(f"{key} {x!r} vs {y!r}")
    return out


def _events(run_dir: Path) -> list[str]:
    return [json.loads(line).get("event", "?")
            for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


# ---- the four properties ----------------------------------------------------------------------
def _check_budget(run: _Run, budget: Budget) -> list[str]:
    out = []
    r, lm = run.result, run.lm
    if r.metric_calls > budget.metric_calls:
        out.append(f"{r.metric_calls} metric calls spent, budget {budget.metric_calls}")
    over = [e for e in r.events if e.get("metric_calls", 0) > budget.metric_calls]
    if over:
        out.append(f"event {over[0].get('event')!r} reports {over[0]['metric_calls']} metric "
                   f"calls, budget {budget.metric_calls}")
    task = [q for q in lm.calls if q.purpose == "task"]
    if len(task) > r.metric_calls:
        out.append(f"the model received {len(task)} task requests for {r.metric_calls} metric "
                   "calls: some evaluation bypassed the budget (an LM call the search did "
                   "not count)")
    keys = _keys(task)
    if len(set(keys)) < len(keys):
        out.append(f"{len(keys) - len(set(keys))} (prompt, example) cell(s) paid twice: the "
                   "same task request reached the model again")
    if budget.lm_calls is not None and len(_paid(lm)) > budget.lm_calls:
        out.append(f"{len(_paid(lm))} LM requests made, budget {budget.lm_calls}")
    return out


def _check_reproducible(a: _Run, b: _Run) -> list[str]:
    out = [f"same seed, {d}" for d in _differences(_search(a.result), _search(b.result))]
    if not out and sorted(_keys(a.lm.calls)) != sorted(_keys(b.lm.calls)):
        out.append("same seed, the same search, but other requests reached the model")
    return out


def _check_resume(whole: _Run, make: Callable[[Budget], Any], budget: Budget,
                  task: ScriptedTask, seed: int, run_dir: Path) -> tuple[list[str], dict]:
    """Kill a stored run half way through the uninterrupted run's LM calls, resume it."""
    paid_whole = len(_paid(whole.lm))
    dies_at = 1 + max(1, paid_whole // 2) + 1  # the preflight is call 1
    killed = _lm(task, dies_at=dies_at)
    try:
        _close(_optimize(make, budget, task, seed, killed, run_dir))
    except Killed:
        pass
    else:
        return [(f"the run was to be killed on LM call {dies_at} (half of the uninterrupted "
                 f"run's {paid_whole}) but made only {len(killed.calls)}: the search does not "
                 "repeat itself")], {"killed_at": dies_at}
    answered = _paid(killed)[:-1]  # the last request died unanswered
    figures = {"killed_at": dies_at}
    try:
        resumed = _run(make, budget, task, seed, run_dir)
    except Exception as exc:  # noqa: BLE001 -- a failed resume is this property's violation
        return [(f"resuming the run killed on LM call {dies_at} raised "
                 f"{type(exc).__name__}: {exc}")], figures
    try:
        out = [f"resumed after a kill on LM call {dies_at}: {d} (uninterrupted vs resumed)"
               for d in _differences(_search(whole.result), _search(resumed.result))]
        kinds = (_events(whole.run_dir), _events(run_dir)) if whole.run_dir else ([], [])
        if not out and kinds[0] != kinds[1]:
            out.append("resumed run's events.jsonl holds other event kinds than the "
                       "uninterrupted run's")
        again = set(_keys(answered)) & set(_keys(_paid(resumed.lm)))
        if again:
            out.append(f"resume paid again for {len(again)} request(s) the killed sitting had "
                       "been answered (the run store should replay them)")
        total = len(answered) + len(_paid(resumed.lm))
        if not again and total != paid_whole:
            out.append(f"killed + resumed sittings paid {total} LM requests, the uninterrupted "
                       f"run {paid_whole}")
        figures["resumed_paid"] = len(_paid(resumed.lm))
    finally:
        _close(resumed.result)
    return out, figures


def _check_events(run_dir: Path, known: frozenset[str]) -> list[str]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return [f"no events.jsonl in the run directory {run_dir}"]
    events = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            return [f"events.jsonl line {n} is not JSON ({exc})"]
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            return [f"events.jsonl line {n} is not an object with an 'event' kind: {line[:80]}"]
        events.append(event)
    if not events:
        return ["events.jsonl is empty"]
    out = []
    if events[0]["event"] != "start":
        out.append(f"the first event is {events[0]['event']!r}, not 'start'")
    if events[-1]["event"] != "complete":
        out.append(f"the last event is {events[-1]['event']!r}, not 'complete'")
    unknown = sorted({e["event"] for e in events} - known)
    if unknown:
        out.append(f"unknown event kind(s) {unknown}: define a typed event (a subclass of "
                   "evo.events.Event) or pass them as extra_kinds")
    generated: set[int] = set()
    last_calls = 0
    for n, e in enumerate(events, 1):
        calls = e.get("metric_calls", 0)
        if not isinstance(calls, int) or calls < last_calls:
            out.append(f"event {n} ({e['event']}) reports {calls!r} metric calls after "
                       f"{last_calls}")
            break
        last_calls = calls
        if e["event"] == "candidate_generated" and isinstance(e.get("candidate"), int):
            named = [p for p in e.get("parents", []) if p not in generated]
            generated.add(e["candidate"])
        else:
            named = [e[k] for k in ("candidate", "best") if isinstance(e.get(k), int)
                     and e[k] not in generated]
        if named:
            out.append(f"event {n} ({e['event']}) names candidate(s) {named} never generated "
                       "before it")
            break
    return out


# ---- the suite --------------------------------------------------------------------------------
def check(optimizer: OptimizerSpec, *, budget: int | Budget = 60, seed: int = 0,
          task: ScriptedTask = HASHED, properties: Sequence[str] = PROPERTIES,
          extra_kinds: Iterable[str] = (), workdir: str | Path | None = None
          ) -> ConformanceReport:
    """Run the conformance suite on ``optimizer`` and report every violation found.

    ``optimizer`` is a registered name (``"gepa"``), a :class:`~evo.SearchConfig` subclass (built
    with ``budget=`` and ``encoder="hashing"``), an instance (copied with the budget), or a
    factory ``budget -> optimizer``. Four or five searches of ``budget`` on ``task`` run in a
    temporary directory (``workdir`` keeps them). ``extra_kinds`` are event kinds your optimizer
    emits besides the typed and built-in ones.
    """
    unknown = sorted(set(properties) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {PROPERTIES}")
    budget = budget if isinstance(budget, Budget) else Budget(metric_calls=budget)
    name, make = _factory(optimizer)
    report = ConformanceReport(name, budget.metric_calls)
    known = known_kinds(extra_kinds)
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="evo-conform-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs: list[_Run] = []

    def fail(prop: str, messages: Iterable[str]) -> None:
        report.violations.extend(Violation(prop, m) for m in messages)

    try:
        first = _run(make, budget, task, seed)
        runs.append(first)
        report.figures.update(metric_calls=first.result.metric_calls,
                              lm_requests=len(_paid(first.lm)),
                              candidates=len(first.result.candidates))
        if "budget" in properties:
            fail("budget", _check_budget(first, budget))
        if "reproducible" in properties:
            runs.append(second := _run(make, budget, task, seed))
            fail("reproducible", _check_reproducible(first, second))
        if "events" in properties or "resume" in properties:
            runs.append(stored := _run(make, budget, task, seed, root / "whole"))
            if "events" in properties:
                fail("events", _check_events(root / "whole", known))
            if "resume" in properties:
                messages, figures = _check_resume(stored, make, budget, task, seed,
                                                  root / "killed")
                fail("resume", messages)
                report.figures.update(figures)
    finally:
        for run in runs:
            _close(run.result)
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    report.seconds = time.perf_counter() - t0
    return report


def assert_conforms(optimizer: OptimizerSpec, **kwargs: Any) -> ConformanceReport:
    """:func:`check`, raising ``AssertionError`` with one line per violation when any is found;
    the report when none is."""
    report = check(optimizer, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report


class OptimizerContract:
    """The suite as pytest tests, one per property; the searches run once per class.

    >>> class TestMyOptimizer(OptimizerContract):     # in a test module  # doctest: +SKIP
    ...     optimizer = MyOptimizer                    # a name, class, instance or factory
    """

    optimizer: ClassVar[OptimizerSpec] = None
    budget: ClassVar[int | Budget] = 60
    seed: ClassVar[int] = 0
    extra_kinds: ClassVar[tuple[str, ...]] = ()
    _reports: ClassVar[dict[type, ConformanceReport]] = {}

    def conformance(self) -> ConformanceReport:
        cls = type(self)
        if cls not in OptimizerContract._reports:
            if cls.optimizer is None:
                raise TypeError(f"{cls.__name__} must set the class attribute 'optimizer'")
            OptimizerContract._reports[cls] = check(cls.optimizer, budget=cls.budget,
                                                    seed=cls.seed, extra_kinds=cls.extra_kinds)
        return OptimizerContract._reports[cls]

    def _holds(self, prop: str) -> None:
        report = self.conformance()
        bad = report.failed(prop)
        assert not bad, f"optimizer {report.optimizer!r}:\n" + "\n".join(f"  {v}" for v in bad)

    def test_budget_is_never_exceeded(self) -> None:
        self._holds("budget")

    def test_same_seed_reproduces_the_search(self) -> None:
        self._holds("reproducible")

    def test_resume_replays_identically(self) -> None:
        self._holds("resume")

    def test_events_are_well_formed(self) -> None:
        self._holds("events")
