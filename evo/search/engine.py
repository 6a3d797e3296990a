"""The engine: one search context (score matrix, budget, archive, events) that every optimizer
drives.

:class:`Search` is what an optimizer works through. It owns the instruction archive and demo
pool, the validation :class:`ScoreMatrix` (and a training one for bootstrapping and GEPA's
reflective minibatches), the :class:`Evaluator` with its one budget, and the event stream. An
optimizer (:class:`SearchConfig` subclass, see :mod:`evo.optimizers`) is its ``run(search)``
method: a short composition of the context's steps (``add`` a genome, ``evaluate`` it on a
minibatch, ``validate`` it in full, ``select_parent``), the strategies of
:mod:`evo.search.strategies` (parent selection, minibatch acceptance) and the operators of
:mod:`evo.search.genome` and :mod:`evo.proposers`. Every optimizer therefore shares the response
cache, the budget, the kernels, the "never pay for a (prompt, example) pair twice" rule and the
events.

Optimizers ask and decide; the context alone changes the search state: it counts iterations
(:meth:`Search.next_iteration`), metric calls and the population, and records why the search
stopped (:meth:`Search.stop` with a :class:`StopReason`). An optimizer reads the state through
read-only views (``population``, ``validated``, ``iteration``, ``candidates``, ``matrix``).

The budget counts (candidate, example) evaluations, validation and training cells alike. A
proposal is only started while the budget can still validate it fully, so no candidate is left
half-judged and the spend never exceeds it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evo.data import Example
from evo.errors import ConfigError, RunFailedError
from evo.kernels.matrix import row_stats
from evo.kernels.moo import select_nsga2
from evo.lm.base import scores_choices
from evo.lm.router import model_names
from evo.lm.session import LMSession
from evo.metrics import Metric
from evo.program import Prediction, Program
from evo.program.ensemble import EnsembleProgram
from evo.search import genome as G
from evo.search.evaluate import (
    Budget,
    BudgetExhausted,
    Cell,
    Evaluator,
    ScoreMatrix,
    cell_failures,
    cells_cost,
    failure_minibatch,
)
from evo.search.events import (
    BudgetExhaustedEvent,
    CandidateEvaluated,
    CandidateGenerated,
    Confirmed,
    Converged,
    Event,
    NewBest,
    SearchStarted,
)
from evo.search.genome import Archive, Genome
from evo.search.strategies import (
    Acceptance,
    BestSelector,
    CrowdedTournamentSelector,
    ParentSelector,
    ParetoSelector,
    StrictImprovement,
    TournamentSelector,
)

Objective = Literal["accuracy", "prompt_chars", "cost"]
# A program-level fitness: the candidate's validation score row (one score per example, all
# observed) and its program (a Program, or an EnsembleProgram for a vote) -> the number the
# search maximizes instead of the mean.
Fitness = Callable[[np.ndarray, Any], float]
Callback = Callable[[dict[str, Any]], None]
T = TypeVar("T")


# A field marked ``json_schema_extra=OMIT_DEFAULT`` is left out of the run spec (and the start
# event) while it has its default: a field added after runs were stored does not change their
# spec, so they still resume.
OMIT_DEFAULT = {"spec": "omit_default"}


class StopReason(StrEnum):
    """Why a search stopped. The values are the strings run records and events carry."""

    BUDGET = "budget exhausted"  # the budget cannot validate another candidate
    CONVERGED = "converged"  # the optimizer ran out of new candidates to try


def stop_reason(reason: StopReason | str) -> StopReason | str:
    """``reason`` as a :class:`StopReason` when it is one of its values; another non-empty text
    (a user optimizer's own, e.g. "perfect validation score") is kept as it is."""
    try:
        return StopReason(reason)
    except ValueError:
        if isinstance(reason, str) and reason.strip():
            return reason
        raise ConfigError(f"stop reason {reason!r}: give a StopReason or a non-empty "
                          "text") from None


class SearchConfig(BaseModel):
    """What every optimizer shares: the budget, the genome layout and the objectives.

    Subclasses add their own parameters and implement :meth:`run`; :meth:`search` wraps it in a
    :class:`Search` context (seed program validated first, the stop recorded last).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    budget: Budget = Field(default_factory=Budget)
    max_demos: int = Field(4, ge=0, description="demo slots in a genome (0: instruction only)")
    knn: bool = Field(True, description="let genomes use per-input nearest-neighbour demos")
    encoder: str = Field("minilm", description="embeddings for KNN demos and instruction dedupe "
                                               "('minilm', 'hashing' or a registered name)")
    dedupe_threshold: float | None = Field(
        0.97, gt=0, le=1, description="cosine above which a proposed instruction counts as a "
                                      "copy of an archived one (None: exact copies only)")
    population_size: int = Field(8, ge=1, description="fully validated candidates kept")
    objectives: tuple[Objective, ...] = Field(
        ("accuracy",), description="('accuracy',), ('accuracy', 'prompt_chars') or ('accuracy', "
                                   "'cost') (what the answers cost, evo.lm.ModelChoice): with "
                                   "two, the population is NSGA-II's survivors and parents are "
                                   "drawn by crowded tournament; Result.pareto_front() is the set")
    fitness: Fitness | None = Field(
        None, description="program-level fitness over the validation score row (default: mean)")
    max_tokens: int = Field(48, ge=1, description="reply length cap of task calls")
    max_prompt_chars: int | None = Field(
        None, ge=1, json_schema_extra=OMIT_DEFAULT,
        description="a length budget for the pick: the best validated candidate whose prompt "
                    "(before the example) is at most this many characters, if any is; "
                    "Result.pareto_front() is the whole accuracy / length front")
    settings: bool = Field(
        False, json_schema_extra=OMIT_DEFAULT,
        description="let genomes vary the program's settings: label scoring (answer_mode="
                    "'rank', for a closed label set on a backend that scores choices) with "
                    "contextual calibration, and a reasoning step")
    holdout: float = Field(
        0.0, ge=0, lt=1, json_schema_extra=OMIT_DEFAULT,
        description="share of the validation set kept out of every choice: the seed is scored "
                    "on it first, and the final pick once at the end, as an honest confirmation "
                    "of its validation score (Result.confirmation)")

    name: ClassVar[str] = ""
    # How an optimizer that screens children judges a child's minibatch scores against its
    # parent's before paying it a full validation (evo/search/strategies.py), and how many
    # proposals in a row that bring nothing new end its search as converged. Class attributes,
    # not fields: a subclass changes them (as fields they would enter the run spec, and run
    # directories made before could no longer resume).
    acceptance: ClassVar[Acceptance] = StrictImprovement()
    stale_limit: ClassVar[int] = 50

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        """About how many proposal / reflection LM calls a search of this budget makes (the dry
        run's figure; :mod:`evo.projection`). Default: one per child screened on a minibatch of
        ``minibatch_size`` (or validated in full) after the seed's validation. An estimate, not
        a bound: a rejected proposal costs an LM call and no metric call."""
        screen = getattr(self, "minibatch_size", None) or n_val
        return math.ceil(max(0, self.budget.metric_calls - n_val) / max(1, screen))

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value not in (("accuracy",), ("accuracy", "prompt_chars"), ("accuracy", "cost")):
            raise ValueError(f"objectives must be ('accuracy',), ('accuracy', 'prompt_chars') or "
                             f"('accuracy', 'cost'), got {value}")
        return value

    def search(self, program: Program, trainset: Sequence[Example], valset: Sequence[Example],
               **kwargs: Any) -> SearchState:
        ctx = Search(program, trainset, valset, config=self, **kwargs)
        try:
            ctx.start()
            try:
                self.run(ctx)
            except BudgetExhausted:  # e.g. an lm_calls cap hit by a proposal call
                pass
            ctx.confirm()
            ctx.finish()
        finally:  # calls still in flight end (and are journaled) before the run store closes
            ctx.evaluator.close()
        return ctx.state

    def run(self, search: Search) -> None:
        raise NotImplementedError


class Optimizer(Protocol):
    """What :func:`evo.optimize` needs from an optimizer: a budget, a reply cap, and a search that
    returns its final :class:`SearchState` (candidates, score matrix, population)."""

    budget: Budget
    max_tokens: int

    def search(self, program: Program, trainset: Sequence[Example], valset: Sequence[Example], *,
               task_session: LMSession, reflection_session: LMSession, metric: Metric,
               seed: int, description: str, on_event: Callback | None,
               on_cell: Callable[[int, Cell], None] | None,
               on_state: Callable[[SearchState], None] | None = None) -> SearchState: ...


@dataclass
class Candidate:
    """A prompt the engine generated: its row in the score matrix and where it came from."""

    id: int
    genome: Genome  # [] for a candidate that is no single prompt (a voting ensemble)
    program: Program | EnsembleProgram
    parents: tuple[int, ...]
    op: str
    iteration: int
    accepted: bool = False  # fully validated
    val_score: float = float("nan")  # fitness over the full validation set, once validated
    note: str = ""


@dataclass
class SearchState:
    """Everything the search knows; the result is read from it."""

    archive: Archive
    matrix: ScoreMatrix
    candidates: list[Candidate] = field(default_factory=list)
    by_key: dict[Hashable, int] = field(default_factory=dict)
    population: list[int] = field(default_factory=list)
    validated: list[int] = field(default_factory=list)  # every fully validated candidate
    events: list[dict[str, Any]] = field(default_factory=list)
    evaluator: Evaluator | None = None
    iteration: int = 0
    # "" until the search has stopped; a StopReason, or a user optimizer's own text
    stop_reason: StopReason | str = ""
    # the final pick's held-out confirmation (the ``confirmed`` event's data), when the search
    # kept part of validation out (SearchConfig.holdout)
    confirmation: dict[str, Any] | None = None
    # the pick's length budget in prompt characters (SearchConfig.max_prompt_chars)
    max_prompt_chars: int | None = None

    def cost(self, cand_id: int, lm: object) -> float:
        """What candidate ``cand_id``'s evaluated answers cost per example on the task LM
        ``lm`` (:func:`~evo.search.evaluate.cells_cost`)."""
        cells = [cell for (row, _), cell in self.matrix.cells.items() if row == cand_id]
        return cells_cost(cells, lm, getattr(self.candidates[cand_id].program, "model", None))

    @property
    def best(self) -> Candidate:
        """The pick: the best validated candidate (fitness, then the shorter prompt), within the
        length budget when one is set and some candidate meets it."""
        validated = [self.candidates[i] for i in self.validated]
        if self.max_prompt_chars is not None:
            validated = [c for c in validated
                         if c.program.prompt_chars() <= self.max_prompt_chars] or validated
        return max(validated, key=_rank)


def _rank(c: Candidate) -> tuple[float, int, int]:
    """Best first: fitness, then the shorter prompt, then the earlier candidate."""
    return c.val_score, -c.program.prompt_chars(), -c.id


def _settings_space(program: Program, config: SearchConfig, session: LMSession
                    ) -> G.SettingsSpace | None:
    """What genomes may vary of the program's settings: the flags with ``config.settings``, and
    the model when the task LM is a model choice (:class:`evo.lm.ModelChoice`) of two or more."""
    models = model_names(session.lm)
    if not config.settings and len(models) < 2:
        return None
    return G.SettingsSpace.for_program(program, scores_choices=scores_choices(session.lm),
                                       models=models, flags=config.settings)


class Search:
    """One search: the context every optimizer's ``run`` drives (see the module docstring)."""

    def __init__(self, base_program: Program, trainset: Sequence[Example],
                 valset: Sequence[Example], *, config: SearchConfig, task_session: LMSession,
                 reflection_session: LMSession, metric: Metric, seed: int = 0,
                 description: str = "", on_event: Callback | None = None,
                 on_cell: Callable[[int, Cell], None] | None = None,
                 on_state: Callable[[SearchState], None] | None = None,
                 holdout_cols: Sequence[int] | None = None) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.trainset, self.valset = tuple(trainset), tuple(valset)
        self.task_session, self.reflection_session = task_session, reflection_session
        self.metric, self.description = metric, description
        self.on_event = on_event
        archive = Archive(base_program, self.trainset, max_demos=config.max_demos,
                          knn_encoder=config.encoder if config.knn else None,
                          dedupe=(G.InstructionDedupe(config.encoder, config.dedupe_threshold)
                                  if config.dedupe_threshold is not None else None),
                          settings=_settings_space(base_program, config, task_session))
        self.state = SearchState(archive, ScoreMatrix(valset),
                                 max_prompt_chars=config.max_prompt_chars)
        self.evaluator = Evaluator(task_session, metric, config.budget,
                                   max_tokens=config.max_tokens, on_cell=on_cell,
                                   lm_sessions=(task_session, reflection_session))
        self.state.evaluator = self.evaluator
        if on_state is not None:  # a run store checkpoints this state as it changes
            on_state(self.state)
        # Validation columns that choose (all_cols) and the held-out ones that only confirm the
        # final pick (SearchConfig.holdout), drawn from their own stream so the search's random
        # choices do not depend on the split.
        # ``holdout_cols`` given: another search's split (a parallel ensemble member's, run on a
        # search of its own and merged back), which that search confirms, so none is reserved.
        # (at least one example always chooses: a fitness of no column is undefined)
        n_hold = min(round(config.holdout * len(valset)), len(valset) - 1) \
            if len(valset) >= 5 else 0
        held = set(random.Random(seed * 7919 + 17).sample(range(len(valset)), n_hold)
                   if holdout_cols is None else holdout_cols)
        self.all_cols = [c for c in range(len(valset)) if c not in held]
        self.holdout_cols = sorted(held)
        # kept for the final pick's confirmation
        self._reserve = len(self.holdout_cols) if holdout_cols is None else 0
        self._confirms = holdout_cols is None
        self._train: ScoreMatrix | None = None
        self._train_rows: dict[int, int] = {}
        self._cap: int | None = None  # a metric-call ceiling for one part of the search

    # ---- views ----------------------------------------------------------------------------
    @property
    def archive(self) -> Archive:
        return self.state.archive

    @property
    def matrix(self) -> ScoreMatrix:
        return self.state.matrix

    @property
    def candidates(self) -> list[Candidate]:
        return self.state.candidates

    @property
    def best(self) -> Candidate:
        return self.state.best

    @property
    def seed_candidate(self) -> Candidate:
        return self.state.candidates[0]

    @property
    def population(self) -> tuple[int, ...]:
        """The candidates kept as parents (ids, best first; NSGA-II's survivors with two
        objectives)."""
        return tuple(self.state.population)

    @property
    def validated(self) -> tuple[int, ...]:
        """Every fully validated candidate (ids, in the order they were validated)."""
        return tuple(self.state.validated)

    @property
    def iteration(self) -> int:
        return self.state.iteration

    def candidate_for(self, genome: Genome) -> Candidate | None:
        """The candidate that expresses ``genome``'s prompt, if one was generated."""
        row = self.state.by_key.get(G.key(genome))
        return None if row is None else self.candidates[row]

    def val_failures(self, cand: Candidate) -> list[tuple[Example, Cell]]:
        """``cand``'s validation cells that scored below 1, in the order they were paid (never
        a held-out one)."""
        held = set(self.holdout_cols)
        return [(self.matrix.examples[col], cell) for (row, col), cell in self.matrix.cells.items()
                if row == cand.id and cell.score < 1.0 and col not in held]

    @property
    def multi_objective(self) -> bool:
        return len(self.config.objectives) > 1

    def emit(self, event: Event | str, **data: Any) -> None:
        """Send ``event`` (:mod:`evo.search.events`), stamped with the time, the iteration and
        the spend so far, as a JSON-ready dict (:meth:`Event.to_dict`) to the event list and the
        ``on_event`` sink. A kind name with keyword data (an optimizer's kind without a class of
        its own) is typed by :meth:`Event.from_dict`."""
        if isinstance(event, str):
            event = Event.from_dict({"event": event, **data})
        event = dataclasses.replace(event, t=time.time(), iteration=self.state.iteration,
                                    metric_calls=self.evaluator.metric_calls,
                                    lm_calls=self.evaluator.lm_requests)
        raw = event.to_dict()
        self.state.events.append(raw)
        if self.on_event is not None:
            self.on_event(raw)

    # ---- the optimizer's decisions ----------------------------------------------------------
    def next_iteration(self) -> int:
        """Start the next iteration (the number events and new candidates carry)."""
        self.state.iteration += 1
        return self.state.iteration

    def stop(self, reason: StopReason | str) -> None:
        """Record why the optimizer stops (:meth:`finish` reports it): a :class:`StopReason`, or
        a text of the optimizer's own."""
        self.state.stop_reason = stop_reason(reason)

    def replace_in_population(self, old: Candidate, new: Candidate) -> None:
        """``new`` (validated) takes ``old``'s place: ``old`` leaves the population, if it is in
        it (EvoPrompt-DE's replacement of a base by the child that beat it)."""
        if new.accepted and old.id in self.state.population:
            self.state.population.remove(old.id)

    # ---- budget ---------------------------------------------------------------------------
    def remaining(self) -> int:
        left = self.evaluator.remaining() - self._reserve
        if self._cap is not None:
            left = min(left, max(0, self._cap - self.evaluator.metric_calls))
        return left

    def can_validate(self, cand: Candidate | None = None) -> bool:
        """Whether the budget can still validate ``cand`` (a new candidate if None) in full."""
        need = len(self.all_cols) if cand is None else len(self.matrix.missing(cand.id,
                                                                               self.all_cols))
        return self.remaining() >= need

    @contextmanager
    def limit(self, metric_calls: int) -> Iterator[None]:
        """Cap the metric calls spent inside the block (an ensemble member's share)."""
        outer = self._cap
        self._cap = self.evaluator.metric_calls + metric_calls
        if outer is not None:
            self._cap = min(self._cap, outer)
        try:
            yield
        finally:
            self._cap = outer

    # ---- candidates -----------------------------------------------------------------------
    def add(self, genome: Genome, parents: tuple[int, ...], op: str, note: str = ""
            ) -> Candidate | None:
        """Register a genome as a candidate; None when its prompt was generated before (it is
        never paid for twice)."""
        k = G.key(genome)
        if k in self.state.by_key:
            return None
        return self._register(list(genome), self.archive.program(genome), k, parents, op, note,
                              instruction_id=k.instruction,
                              instruction=self.archive.instructions[k.instruction],
                              demos=list(k.demos), knn_k=k.knn_k)

    def add_program(self, program: Program | EnsembleProgram, key: Hashable,
                    parents: tuple[int, ...], op: str, note: str = "") -> Candidate | None:
        """Register a candidate that is not a genome (a voting ensemble), under ``key``."""
        if key in self.state.by_key:
            return None
        return self._register([], program, key, parents, op, note)

    def _register(self, genome: Genome, program: Program | EnsembleProgram, key: Hashable,
                  parents: tuple[int, ...], op: str, note: str, **data: Any) -> Candidate:
        row = self.matrix.add_row()
        cand = Candidate(row, genome, program, parents, op, self.state.iteration, note=note)
        self.state.candidates.append(cand)
        self.state.by_key[key] = row
        self.emit(CandidateGenerated(candidate=row, parents=list(parents), op=op, note=note,
                                     **data))
        return cand

    def known(self, genome: Genome) -> bool:
        return G.key(genome) in self.state.by_key

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, cand: Candidate, cols: Sequence[int]) -> np.ndarray:
        """Scores of ``cand`` on validation columns ``cols``, paying only for missing cells.
        Raises :class:`BudgetExhausted` (evaluating nothing) when they do not fit."""
        return self.evaluate_many([(cand, cols)])[0]

    def validate(self, cand: Candidate) -> float:
        """Score ``cand`` on the whole validation set, set its fitness and let it join the
        population. Raises :class:`BudgetExhausted` (evaluating nothing) when it does not fit."""
        self.evaluate(cand, self.all_cols)
        return self.accept(cand)

    def evaluate_many(self, jobs: Sequence[tuple[Candidate, Sequence[int]]]) -> list[np.ndarray]:
        """:meth:`evaluate` for several ``(candidate, columns)`` jobs at once: all their cells
        are reserved first (they all fit, or :class:`BudgetExhausted` is raised and nothing is
        evaluated), their calls go out together, and they are recorded in job order."""
        return self._paid([(c.program, self.matrix, c.id, cols) for c, cols in jobs])

    def validate_many(self, cands: Sequence[Candidate]) -> None:
        """:meth:`validate` for several candidates, their calls together: the longest prefix of
        ``cands`` the budget can validate is validated (and accepted in order); if that is not
        all of them, :class:`BudgetExhausted` is raised then, as :meth:`validate` would for the
        first one left."""
        fit, left = [], self.remaining()
        for cand in cands:
            need = len(self.matrix.missing(cand.id, self.all_cols))
            if need > left:
                break
            fit.append(cand)
            left -= need
        self.evaluate_many([(c, self.all_cols) for c in fit])
        for cand in fit:
            self.accept(cand)
        if len(fit) < len(cands):
            raise BudgetExhausted(f"{len(cands) - len(fit)} candidates could not be validated: "
                                  f"{self.remaining()} metric calls left")

    def concurrently(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``calls`` (proposals: LM calls that change no search state) up to the
        reflection session's ``max_concurrency`` at once, and return their results in order
        (the first exception, in order, is raised). Whatever they draw from the search's
        random stream must be drawn before, in order, so the results do not depend on the
        concurrency."""
        n = min(len(calls), self.reflection_session.max_concurrency)
        if n <= 1:
            return [call() for call in calls]
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="evo-proposal") as pool:
            futures = [pool.submit(call) for call in calls]
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()

    def accept(self, cand: Candidate, cells: dict[int, Cell] | None = None) -> float:
        """Book a candidate whose validation row is complete (see :meth:`validate`); ``cells``
        (column -> cell, e.g. a vote's, made from its members' predictions) fill it in free
        first."""
        for col, cell in (cells or {}).items():
            self.matrix.set(cand.id, col, cell)
        cand.val_score = self.fitness(self.matrix.scores[cand.id, self.all_cols], cand.program)
        cand.accepted = True
        best_before = self.best.val_score if self.state.validated else float("-inf")
        self.state.validated.append(cand.id)
        if cand.genome:  # a voting ensemble is a result, not a parent
            self.state.population.append(cand.id)
            self._truncate_population()
        self.emit(CandidateEvaluated(candidate=cand.id, val_score=cand.val_score, accepted=True,
                                     cell_errors=self.cell_errors(cand, self.all_cols)))
        if cand.val_score > best_before:
            self.emit(NewBest(candidate=cand.id, val_score=cand.val_score))
        return cand.val_score

    def cell_errors(self, cand: Candidate, cols: Sequence[int]) -> dict[str, int] | None:
        """``{kind: count}`` of ``cand``'s failed validation cells at ``cols`` (LM, parser or
        metric errors, :func:`evo.search.evaluate.error_kind`); None when none failed. Its
        ``candidate_evaluated`` event carries it, so failures show as they come."""
        cells = [self.matrix.cells[(cand.id, c)] for c in cols
                 if (cand.id, c) in self.matrix.cells]
        return cell_failures(cells)["by_kind"] or None

    def fitness(self, row: np.ndarray, program: Program | EnsembleProgram) -> float:
        """The search's fitness of a full validation score row: the user's ``fitness`` (which
        may receive an :class:`EnsembleProgram`), else the mean."""
        if self.config.fitness is not None:
            return float(self.config.fitness(np.array(row, dtype=np.float64), program))
        return float(row_stats(np.array(row, dtype=np.float64)[None, :]).mean[0])

    def score_replies(self, predictions: Sequence[Prediction]) -> list[Cell]:
        """Validation cells for replies that cost no LM call (one per validation example that
        chooses, :attr:`all_cols`, e.g. a vote of candidates' predictions already in the
        matrix): scored by the metric, not charged to the budget."""
        return self.evaluator.score([self.valset[c] for c in self.all_cols], predictions)

    def objectives(self, ids: Sequence[int]) -> np.ndarray:
        """(fitness, prompt characters) of each candidate of ``ids``, one row each; (fitness,
        cost) with the objectives ``('accuracy', 'cost')``."""
        if self.config.objectives[-1] == "cost":
            return np.array([[self.candidates[i].val_score, self.cost(i)] for i in ids],
                            dtype=np.float64)
        return np.array([[self.candidates[i].val_score, self.candidates[i].program.prompt_chars()]
                         for i in ids], dtype=np.float64)

    def cost(self, cand_id: int) -> float:
        """What candidate ``cand_id``'s answers cost per example (:func:`cells_cost` of its
        cells: $ at a model choice's prices, else tokens); NaN before any is evaluated."""
        return self.state.cost(cand_id, self.task_session.lm)

    def _truncate_population(self) -> None:
        pop = self.state.population
        k = self.config.population_size
        if self.multi_objective and len(pop) > k:
            keep = select_nsga2(self.objectives(pop), [1.0, -1.0], k)
            self.state.population = sorted(pop[i] for i in keep)
            return
        pop.sort(key=lambda i: _rank(self.candidates[i]), reverse=True)
        del pop[k:]

    def _check_fits(self, n: int) -> None:
        if n > self.remaining():
            raise BudgetExhausted(f"{n} evaluations needed, {self.remaining()} left")

    def train_scores(self, cand: Candidate, cols: Sequence[int]) -> np.ndarray:
        """Scores of ``cand`` on training examples ``cols`` (bootstrapping, GEPA's reflective
        minibatches), paid once per cell like validation cells."""
        return self.train_scores_many([(cand, cols)])[0]

    def train_scores_many(self, jobs: Sequence[tuple[Candidate, Sequence[int]]]
                          ) -> list[np.ndarray]:
        """:meth:`train_scores` for several ``(candidate, training columns)`` jobs, their
        calls together (all cells reserved first, recorded in job order)."""
        if self._train is None:
            self._train = ScoreMatrix(self.trainset)
        rows = []
        for cand, _ in jobs:
            if cand.id not in self._train_rows:
                self._train_rows[cand.id] = self._train.add_row()
            rows.append(self._train_rows[cand.id])
        return self._paid([(c.program, self._train, r, cols)
                           for r, (c, cols) in zip(rows, jobs, strict=True)])

    def _paid(self, work: list[tuple[Program | EnsembleProgram, ScoreMatrix, int, Sequence[int]]]
              ) -> list[np.ndarray]:
        """Evaluate ``(program, matrix, row, columns)`` jobs once their missing cells (each
        paid once: a repeated column, or a cell two jobs share) fit this search's budget and
        cap; else :class:`BudgetExhausted`, evaluating nothing."""
        work = [(prog, matrix, row, list(dict.fromkeys(cols))) for prog, matrix, row, cols in work]
        self._check_fits(sum(map(len, self.evaluator.missing(work))))
        return self.evaluator.evaluate_many(work)

    def train_known(self, cand: Candidate, col: int) -> bool:
        """Whether ``cand`` was already scored on training example ``col`` (free to read)."""
        return self._train is not None and cand.id in self._train_rows and \
            (self._train_rows[cand.id], col) in self._train.cells

    def train_cell(self, cand: Candidate, col: int) -> Cell:
        """The cell of a training example ``cand`` was scored on (see :meth:`train_scores`)."""
        assert self._train is not None
        return self._train.cells[(self._train_rows[cand.id], col)]

    def val_cells(self, cand: Candidate, cols: Sequence[int]) -> list[tuple[Example, Cell]]:
        return [(self.valset[c], self.matrix.cells[(cand.id, c)]) for c in cols
                if (cand.id, c) in self.matrix.cells]

    # ---- selection ------------------------------------------------------------------------
    def select_parent(self, how: Literal["pareto", "tournament", "best"] | ParentSelector
                      = "pareto", *, tournament_size: int = 3) -> Candidate:
        """A parent among validated candidates: GEPA's instance-level Pareto sampling, a DEAP
        tournament within the population, the best, or what a :class:`ParentSelector` picks
        (:mod:`evo.search.strategies`). With two objectives, a named selection is NSGA-II's
        crowded binary tournament within the population, whatever ``how`` says."""
        if isinstance(how, str):
            if how not in ("pareto", "tournament", "best"):
                raise ValueError(f"parent selection must be 'pareto', 'tournament' or 'best', "
                                 f"got {how!r}")
            how = CrowdedTournamentSelector() if self.multi_objective else \
                ParetoSelector() if how == "pareto" else \
                BestSelector() if how == "best" else TournamentSelector(tournament_size)
        return self.candidates[how.select(self)]

    @property
    def parent_pool(self) -> list[int]:
        """Every validated candidate that is one prompt (a vote is a result, not a parent)."""
        return [r for r in self.state.validated if self.candidates[r].genome]

    def val_scores(self, ids: Sequence[int]) -> np.ndarray:
        """The fitness of each (validated) candidate of ``ids``."""
        return np.array([self.candidates[i].val_score for i in ids])

    def minibatch(self, parent: Candidate, size: int) -> list[int]:
        """Validation columns for an acceptance test (:func:`failure_minibatch`), never held-out
        ones."""
        picked = failure_minibatch(self.matrix.scores[parent.id, self.all_cols], size, self.rng)
        return [self.all_cols[i] for i in picked]

    def race_order_for(self, cand: Candidate) -> list[int]:
        """The order in which a race adds validation examples for ``cand``: a shuffle of the
        columns that choose, its own for each candidate (drawn from the seed and its id, so the
        same at any concurrency). Were every race run on the same first examples, each child
        would have to beat the incumbent there, and the search would fit those few."""
        return random.Random(self.seed * 7919 + 31 + 104_729 * cand.id).sample(
            self.all_cols, len(self.all_cols))

    def selection_scores(self, ids: Sequence[int]) -> np.ndarray:
        """The score matrix rows of ``ids`` on the validation columns that choose (held-out
        columns left out)."""
        return self.matrix.scores[np.asarray(ids, dtype=np.int64)][:, self.all_cols]

    # ---- start / finish -------------------------------------------------------------------
    def start(self, seed_cells: dict[int, Cell] | None = None) -> None:
        """Emit ``start`` and validate the seed program (the baseline every result is read
        against). ``seed_cells`` (column -> cell) are the seed's cells another search already
        paid for: they are filled in free."""
        self.emit(SearchStarted(seed=self.seed, budget=self.config.budget.metric_calls,
                                val_size=len(self.valset), train_size=len(self.trainset),
                                config=jsonable(self.config)))
        seed_cand = self.add(self.archive.seed_genome(), (), "seed")
        assert seed_cand is not None
        self._fill(seed_cand, seed_cells or {})
        try:
            self._reserve = 0  # the seed's held-out cells are paid with its validation
            self.evaluate_many([(seed_cand, self.all_cols + self.holdout_cols)])
            self._reserve = len(self.holdout_cols) if self._confirms else 0
            self.accept(seed_cand)
        except BudgetExhausted:
            raise ConfigError(f"budget of {self.config.budget.metric_calls} metric calls "
                              f"cannot validate the seed program on {len(self.valset)} "
                              "validation examples") from None
        self._check_metric(seed_cand)

    def confirm(self) -> None:
        """Score the final pick on the held-out validation columns (the budget kept them in
        reserve) and record it next to its validation score and the seed's held-out score
        (the ``confirmed`` event, :attr:`SearchState.confirmation`). No-op without a holdout."""
        if not self.holdout_cols or not self.state.validated:
            return
        self._reserve = 0
        best = self.best
        try:
            held = self._confirm_vote(best) if isinstance(best.program, EnsembleProgram) \
                else self.evaluate(best, self.holdout_cols)
        except BudgetExhausted:  # an lm_calls cap spent the reserve: nothing to confirm
            return
        seed_held = self.matrix.scores[0, self.holdout_cols]
        event = Confirmed(candidate=best.id, val_score=best.val_score,
                          holdout_score=float(np.mean(held)),
                          seed_holdout_score=float(np.mean(seed_held)), n=len(held))
        self.state.confirmation = {"candidate": best.id, "val_score": best.val_score,
                                   "holdout_score": event.holdout_score,
                                   "seed_holdout_score": event.seed_holdout_score,
                                   "n": event.n}
        self.emit(event)

    def _confirm_vote(self, vote: Candidate) -> np.ndarray:
        """A voting ensemble's held-out scores: its members' held-out cells (paid, one LM call
        each, as their validation was; :class:`BudgetExhausted` when they do not fit), then the
        vote of their predictions, as its validation cells were made."""
        assert isinstance(vote.program, EnsembleProgram)
        members = [self.candidates[i] for i in vote.parents]
        assert [m.program for m in members] == list(vote.program.members)
        self.evaluate_many([(m, self.holdout_cols) for m in members])
        cells = self.evaluator.score(
            [self.valset[c] for c in self.holdout_cols],
            [vote.program.vote_on([self.matrix.cells[(m.id, c)].prediction for m in members])
             for c in self.holdout_cols])
        for col, cell in zip(self.holdout_cols, cells, strict=True):
            self.matrix.set(vote.id, col, cell)
        return np.array([cell.score for cell in cells], dtype=np.float64)

    def _fill(self, cand: Candidate, cells: dict[int, Cell]) -> None:
        for col, cell in cells.items():
            self.matrix.set(cand.id, col, cell)

    def merge(self, sub: Search, label: str) -> None:
        """Take in another search over the same data and seed (a parallel ensemble member's):
        its candidates, genomes translated to this archive and notes prefixed with ``label``;
        their validation cells; and its spend, charged to this budget."""
        ids = {0: 0}
        for cand in sub.candidates[1:]:
            k = G.key(cand.genome)
            iid, _ = self.archive.add_instruction(sub.archive.instructions[k.instruction],
                                                  sub.archive.origins[k.instruction],
                                                  dedupe=False)
            demos = [self.archive.demo_index(sub.archive.demo(d)) for d in k.demos]
            genome = self.archive.genome(iid, demos, k.knn_k, settings=k.settings)
            parents = tuple(ids.get(p, 0) for p in cand.parents)
            new = self.add(genome, parents, cand.op, f"{label}: {cand.note}".strip())
            if new is None:
                ids[cand.id] = self.state.by_key[G.key(genome)]
                continue
            ids[cand.id] = new.id
            for (row, col), cell in sub.matrix.cells.items():
                if row == cand.id:
                    self.matrix.set(new.id, col, cell)
            if cand.accepted:
                self.accept(new)
        self.evaluator.metric_calls += sub.evaluator.metric_calls

    def _check_metric(self, seed_cand: Candidate) -> None:
        """Stop before the search is paid for when the metric failed on every seed cell that
        had a usable reply: no candidate could ever be told apart (the cells, with their
        errors, are in the events and the checkpoint)."""
        cells = [self.matrix.cells[(seed_cand.id, c)] for c in self.all_cols + self.holdout_cols]
        usable = [c for c in cells if c.kind in (None, "metric") and c.prediction.ok]
        if usable and all(c.kind == "metric" for c in usable):
            raise RunFailedError(
                f"the metric failed on all {len(usable)} validation examples the seed program "
                f"answered, e.g. {usable[0].error}; fix the metric (only the seed's "
                f"validation was paid for)")

    def finish(self, reason: StopReason | str | None = None) -> None:
        """Record why the search stopped: ``reason``, else the optimizer's (:meth:`stop`), else
        whether the budget can still validate a candidate."""
        exhausted = self.evaluator.remaining() < len(self.all_cols)
        self.state.stop_reason = stop_reason(reason or self.state.stop_reason or (
            StopReason.BUDGET if exhausted else StopReason.CONVERGED))
        stopped = BudgetExhaustedEvent if self.state.stop_reason is StopReason.BUDGET \
            else Converged
        self.emit(stopped(remaining=self.evaluator.remaining(),
                          reason=str(self.state.stop_reason),
                          cell_failures=cell_failures(self.matrix.cells.values())))


def jsonable(config: BaseModel, *, name: Callable[[Any], str] | None = None
              ) -> dict[str, Any]:
    """A config as JSON data for the ``start`` event and the run spec: callables by ``name``
    (default: their ``__name__``), nested configs as dicts."""
    def conv(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return {"optimizer": getattr(value, "name", type(value).__name__),
                    **{k: conv(getattr(value, k)) for k, f in type(value).model_fields.items()
                       if k != "budget" and not _omitted(f, getattr(value, k))}}
        if isinstance(value, list | tuple):
            return [conv(v) for v in value]
        if callable(value):
            return name(value) if name else getattr(value, "__name__", type(value).__name__)
        if isinstance(value, dict):
            return {k: conv(v) for k, v in value.items()}
        if isinstance(value, Budget):
            return value.__dict__
        return value
    return conv(config)


def _omitted(field_info: Any, value: Any) -> bool:
    return field_info.json_schema_extra == OMIT_DEFAULT and value == field_info.default
