"""Search events, typed where they are raised.

Each step of a search that a user may want to watch is an :class:`Event` subclass, built where it
happens and handed to :meth:`evo.search.engine.Search.emit`::

    search.emit(ProposalRejected(candidate=parent.id, op="reflection", reason=note))

The engine stamps it (wall time, iteration, metric calls and LM requests spent so far) and
sends it on as a JSON-ready dict (:meth:`Event.to_dict`: the event log, ``on_event``, the run
store); :meth:`Event.from_dict` types such a dict again for callbacks
(:mod:`evo.runs.events`). A field left ``None`` is not part of the event (the dict has no such
key), so each kind's dict carries exactly the keys its emit site gives, in its fields' order.

A user's optimizer adds a kind of its own by subclassing::

    @dataclass(frozen=True)
    class RoundDone(Event, kind="round_done"):
        round: int = 0
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

_COMMON = ("kind", "t", "iteration", "metric_calls", "lm_calls", "data", "replayed")


@dataclass(frozen=True)
class Event:
    """What every event carries: its kind, wall time, the search iteration, and the metric calls
    and LM requests (cache hits and replays included) spent when it happened (the engine fills
    these in when it emits); ``data`` holds the kind's own fields (all of them, also for the
    typed subclasses, in the order of the dict)."""

    kind: str = ""
    t: float = 0.0
    iteration: int = 0
    metric_calls: int = 0
    lm_calls: int = 0
    # built from the kind's fields when not given (None fields left out)
    data: dict[str, Any] = field(default=None, repr=False)  # type: ignore[assignment]
    # A resumed run retraces its earlier sittings: their events come again, marked replayed
    # (a sink that keeps its own record across sittings may skip them).
    replayed: bool = False

    kinds: ClassVar[dict[str, type[Event]]] = {}
    _kind: ClassVar[str] = ""

    def __init_subclass__(cls, kind: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if kind:
            cls._kind = kind
            Event.kinds[kind] = cls

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self._kind)
        if self.data is None:  # built from its fields: they are its data
            object.__setattr__(self, "data", {
                f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _COMMON and getattr(self, f.name) is not None})

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, replayed: bool = False) -> Event:
        """The typed event for an event dict (a plain :class:`Event` for other kinds)."""
        data = {k: v for k, v in raw.items()
                if k not in ("event", "t", "iteration", "metric_calls", "lm_calls")}
        sub = Event.kinds.get(raw["event"], Event)
        own = {f.name: data[f.name] for f in fields(sub)
               if f.name in data and f.name not in _COMMON}
        return sub(kind=raw["event"], t=raw.get("t", 0.0), iteration=raw.get("iteration", 0),
                   metric_calls=raw.get("metric_calls", 0), lm_calls=raw.get("lm_calls", 0),
                   data=data, replayed=replayed, **own)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "t": self.t, "iteration": self.iteration,
                "metric_calls": self.metric_calls, "lm_calls": self.lm_calls, **self.data,
                **({"replayed": True} if self.replayed else {})}


# ---- the engine's own -------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchStarted(Event, kind="start"):
    seed: int = 0
    budget: int = 0
    val_size: int = 0
    train_size: int = 0
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class CandidateGenerated(Event, kind="candidate_generated"):
    """A candidate joined the score matrix (the instruction and demo fields: a single prompt's
    only, not a voting ensemble's)."""

    candidate: int = -1
    parents: list[int] | None = None
    op: str = ""
    note: str = ""
    instruction_id: int | None = None
    instruction: str | None = None  # its instruction text (None for a voting ensemble)
    demos: list[int] | None = None  # its fixed demo ids, in order
    knn_k: int | None = None  # nearest-neighbour demos per input


@dataclass(frozen=True)
class CandidateEvaluated(Event, kind="candidate_evaluated"):
    """A candidate was scored: on a minibatch of validation (``minibatch``) or training
    (``train_minibatch``) examples, ``val_score`` None unless it was then validated in full, or
    on the whole validation set. ``cell_errors`` counts its failed cells there by kind."""

    candidate: int = -1
    val_score: float | None = None
    minibatch: list[int] | None = None
    train_minibatch: list[int] | None = None
    minibatch_score: float | None = None
    parent_minibatch_score: float | None = None
    estimate: float | None = None  # MIPROv2: the combination's estimated score before this trial
    accepted: bool | None = None
    trial: int | None = None  # MIPROv2's trial number
    cell_errors: dict[str, int] | None = None


@dataclass(frozen=True)
class CandidateRaced(Event, kind="candidate_raced"):
    """A child's race against the incumbent (the best validated candidate) ended: ``rungs``
    lists, per rung reached, ``[examples, child mean, incumbent mean]`` on the same validation
    examples (the signal the race used: the model's probability of the gold answer when both
    have dense scores, ``dense`` true, else the metric's scores); ``outcome`` is "validated"
    (it reached the whole validation set), "dropped" (confidently worse at its last rung) or
    "out of budget" (its next rung no longer fit)."""

    candidate: int = -1
    incumbent: int = -1
    rungs: list[list[float]] = field(default_factory=list)
    dense: bool = False
    outcome: str = ""


@dataclass(frozen=True)
class OperatorStats(Event, kind="operator_stats"):
    """How each variation operator's children fared in their races, at the end of a search:
    ``{operator: [raced, past the first rung, validated]}``; ``note`` says when reflection
    helped no child (its budget then went to the demo and settings operators)."""

    stats: dict[str, list[int]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Confirmed(Event, kind="confirmed"):
    """The final pick scored once on the held-out part of validation that never took part in
    choosing (``holdout_score``, on ``n`` examples), next to its validation score and the seed
    program's held-out score."""

    candidate: int = -1
    val_score: float = 0.0
    holdout_score: float = 0.0
    seed_holdout_score: float = 0.0
    n: int = 0


@dataclass(frozen=True)
class NewBest(Event, kind="new_best"):
    candidate: int = -1
    val_score: float = 0.0


@dataclass(frozen=True)
class ProposalRejected(Event, kind="proposal_rejected"):
    """A proposal was not paid for: the LM's text failed the sanity filter, or it repeats a
    prompt already generated (``reason`` says which). ``candidate`` is its parent."""

    candidate: int = -1
    op: str = ""
    reason: str = ""


@dataclass(frozen=True)
class BudgetExhaustedEvent(Event, kind="budget_exhausted"):
    remaining: int = 0
    reason: str = ""
    cell_failures: dict[str, Any] | None = None  # evo.search.evaluate.cell_failures


@dataclass(frozen=True)
class Converged(Event, kind="converged"):
    remaining: int = 0
    reason: str = ""
    cell_failures: dict[str, Any] | None = None


@dataclass(frozen=True)
class SearchCompleted(Event, kind="complete"):
    """The search returned (emitted by :func:`evo.optimize` once the result is built)."""

    best: int = -1
    best_val: float = 0.0
    baseline_val: float = 0.0
    stop_reason: str = ""
    usage: dict[str, Any] | None = None
    cell_failures: dict[str, Any] | None = None
    best_program: dict[str, Any] | None = None  # as saved in best.json


# ---- optimizers' own --------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoSetsProposed(Event, kind="demo_sets"):
    """MIPROv2's candidate demo sets (demo ids each; the first is zero-shot)."""

    sets: list[list[int]] | None = None


@dataclass(frozen=True)
class InstructionsProposed(Event, kind="instructions"):
    """MIPROv2's candidate instructions (archive ids; the seed's first) and the dataset summary
    they were grounded in."""

    ids: list[int] | None = None
    summary: str = ""


@dataclass(frozen=True)
class MemberStarted(Event, kind="member_start"):
    """An ensemble member's turn (``member`` -1 with a ``note``: members could not run in
    parallel), with its share of the budget."""

    member: int = -1
    optimizer: str = ""
    share: int = 0
    note: str | None = None
    parallel: bool | None = None


@dataclass(frozen=True)
class MemberSkipped(Event, kind="member_skipped"):
    optimizer: str = ""
    reason: str = ""


@dataclass(frozen=True)
class EnsembleRejected(Event, kind="ensemble_rejected"):
    """No vote of validated candidates beat the best single one on validation."""

    reason: str = ""
    best_single: float | None = None


__all__ = ["BudgetExhaustedEvent", "CandidateEvaluated", "CandidateGenerated", "Converged",
           "DemoSetsProposed", "EnsembleRejected", "Event", "InstructionsProposed",
           "MemberSkipped", "MemberStarted", "NewBest", "ProposalRejected", "SearchCompleted",
           "SearchStarted"]
