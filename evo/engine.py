"""The evolutionary engine: one loop, reading one score matrix, spending one budget.

Each iteration:

1. **select** a parent: by default GEPA's instance-level Pareto sampling over every fully
   validated candidate (a candidate is likely to be picked in proportion to the validation
   examples on which it is among the best, after set-cover pruning; :mod:`evo.kernels.pareto`),
   or a DEAP tournament on validation accuracy;
2. **vary** it: first a KNN-demo candidate (each input gets its nearest training examples) and
   a few fresh random demo sets (each must beat the best so far), then reflective mutation (the
   reflection LM reads the parent's failures; a near-duplicate of an archived instruction is
   not paid for), crossover with another member, or a cheap demo / instruction mutation;
3. **minibatch acceptance**: the child is scored on a few validation examples (half of them the
   parent's failures); the parent's scores there are already in the matrix, so they cost nothing.
   A child that is not strictly better is dropped;
4. **full validation**: an accepted child is scored on the rest of the validation set (its
   minibatch cells are reused) and joins the population, which keeps the best ``population_size``.

The budget counts (candidate, example) evaluations. A proposal is only started while the budget
can still validate it fully, so no candidate is left half-judged and the spend never exceeds it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from deap import base, tools
from pydantic import BaseModel, ConfigDict, Field

from evo import genome as G
from evo.data import Example
from evo.evaluate import Budget, BudgetExhausted, Cell, Evaluator, ScoreMatrix
from evo.metrics import Metric
from evo.genome import Archive, Genome
from evo.kernels.pareto import select_from_pareto_front
from evo.lm.session import LMSession
from evo.program import Program
from evo.reflection import ReflectionStyle, propose


class Evolution(BaseModel):
    """The default optimizer: genomes of (instruction, demos) evolved with DEAP operators and
    GEPA-style reflective mutation, minibatch acceptance, then full validation.

    >>> Evolution(budget=Budget(metric_calls=300)).population_size
    8
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    budget: Budget = Field(default_factory=Budget)
    population_size: int = Field(8, ge=1, description="fully validated candidates kept")
    initial_demo_sets: int = Field(3, ge=0, description="random demo sets tried first")
    max_demos: int = Field(4, ge=0, description="demo slots in a genome (0: instruction only)")
    minibatch_size: int = Field(6, ge=1, description="validation examples for acceptance")
    reflection_rate: float = Field(0.35, ge=0, le=1, description="share of reflective mutations")
    crossover_rate: float = Field(0.25, ge=0, le=1)
    reflection_style: ReflectionStyle = "rules"
    reflection_minibatch: int = Field(3, ge=1, description="failures shown to the reflector")
    tournament_size: int = Field(3, ge=1)
    selection: Literal["pareto", "tournament"] = Field(
        "pareto", description="parent selection: GEPA's instance-level Pareto front over all "
                              "validated candidates, or a tournament within the population")
    knn: bool = Field(True, description="let genomes use per-input nearest-neighbour demos")
    encoder: str = Field("minilm", description="embeddings for KNN demos and instruction dedupe "
                                               "('minilm', 'hashing' or a registered name)")
    dedupe_threshold: float | None = Field(
        0.97, gt=0, le=1, description="cosine above which a proposed instruction counts as a "
                                      "copy of an archived one (None: exact copies only)")
    max_tokens: int = Field(48, ge=1, description="reply length cap of task calls")

    name: Literal["evolution"] = "evolution"

    def search(self, program: Program, trainset: Sequence[Example], valset: Sequence[Example],
               **kwargs: Any) -> SearchState:
        return search(program, trainset, valset, config=self, **kwargs)


class Optimizer(Protocol):
    """What :func:`evo.optimize` needs from an optimizer: a budget, a reply cap, and a search that
    returns its final :class:`SearchState` (candidates, score matrix, population)."""

    budget: Budget
    max_tokens: int

    def search(self, program: Program, trainset: Sequence[Example], valset: Sequence[Example], *,
               task_session: LMSession, reflection_session: LMSession, metric: Metric,
               seed: int, description: str, on_event: Callback | None,
               on_cell: Callable[[int, Cell], None] | None) -> SearchState: ...


@dataclass
class Candidate:
    """A genome the engine generated: its row in the score matrix and where it came from."""

    id: int
    genome: Genome
    program: Program
    parents: tuple[int, ...]
    op: str
    iteration: int
    accepted: bool = False
    val_score: float = float("nan")  # mean over the full validation set, once validated
    note: str = ""


class _Fitness(base.Fitness):
    weights = (1.0, -1e-6)  # accuracy first; among equals, the shorter prompt


class _Individual(list):
    def __init__(self, genome: Genome, cid: int, fitness: tuple[float, float]) -> None:
        super().__init__(genome)
        self.cid = cid
        self.fitness = _Fitness(fitness)


@dataclass
class SearchState:
    """Everything the loop knows; the result is read from it."""

    archive: Archive
    matrix: ScoreMatrix
    candidates: list[Candidate] = field(default_factory=list)
    by_key: dict[G.GenomeKey, int] = field(default_factory=dict)
    population: list[int] = field(default_factory=list)
    validated: list[int] = field(default_factory=list)  # every fully validated candidate
    events: list[dict[str, Any]] = field(default_factory=list)
    evaluator: Evaluator | None = None
    iteration: int = 0
    stop_reason: str = ""

    @property
    def best(self) -> Candidate:
        validated = [self.candidates[i] for i in self.population]
        return max(validated, key=lambda c: (c.val_score, -c.program.prompt_chars(), -c.id))


Callback = Callable[[dict[str, Any]], None]


def search(base_program: Program, trainset: Sequence[Example], valset: Sequence[Example], *,
           task_session: LMSession, reflection_session: LMSession, metric: Metric,
           config: Evolution, seed: int = 0, description: str = "",
           on_event: Callback | None = None,
           on_cell: Callable[[int, Cell], None] | None = None) -> SearchState:
    """Run the evolutionary search and return its final state (see module docstring)."""
    rng = random.Random(seed)
    archive = Archive(base_program, tuple(trainset), max_demos=config.max_demos,
                      knn_encoder=config.encoder if config.knn else None,
                      dedupe=(G.InstructionDedupe(config.encoder, config.dedupe_threshold)
                              if config.dedupe_threshold is not None else None))
    state = SearchState(archive, ScoreMatrix(valset))
    evaluator = Evaluator(task_session, metric, config.budget, max_tokens=config.max_tokens,
                          on_cell=on_cell, lm_sessions=(task_session, reflection_session))
    state.evaluator = evaluator
    all_cols = list(range(len(valset)))

    def emit(kind: str, **data: Any) -> None:
        event = {"event": kind, "t": time.time(), "iteration": state.iteration,
                 "metric_calls": evaluator.metric_calls, **data}
        state.events.append(event)
        if on_event is not None:
            on_event(event)

    def add_candidate(genome: Genome, parents: tuple[int, ...], op: str, note: str = ""
                      ) -> Candidate | None:
        k = G.key(genome)
        if k in state.by_key:
            return None  # this prompt was already generated: never pay for it twice
        row = state.matrix.add_row()
        cand = Candidate(row, list(genome), archive.program(genome), parents, op,
                         state.iteration, note=note)
        state.candidates.append(cand)
        state.by_key[k] = row
        emit("candidate_generated", candidate=row, parents=list(parents), op=op,
             instruction_id=genome[G.INSTRUCTION], demos=list(k[1]), knn_k=k[2], note=note)
        return cand

    def validate(cand: Candidate) -> None:
        evaluator.evaluate(cand.program, state.matrix, cand.id, all_cols)
        cand.val_score = state.matrix.row_mean(cand.id)
        cand.accepted = True
        state.validated.append(cand.id)
        best_before = state.best.val_score if state.population else float("-inf")
        state.population.append(cand.id)
        state.population.sort(key=lambda i: (-state.candidates[i].val_score,
                                             state.candidates[i].program.prompt_chars(), i))
        del state.population[config.population_size:]
        emit("candidate_evaluated", candidate=cand.id, val_score=cand.val_score, accepted=True)
        if cand.val_score > best_before:
            emit("new_best", candidate=cand.id, val_score=cand.val_score)

    emit("start", seed=seed, budget=config.budget.metric_calls, val_size=len(valset),
         train_size=len(trainset), config=config.model_dump(mode="json", exclude={"budget"}))
    seed_cand = add_candidate(archive.seed_genome(), (), "seed")
    assert seed_cand is not None
    try:
        validate(seed_cand)
    except BudgetExhausted:
        raise ValueError(f"budget of {config.budget.metric_calls} metric calls cannot validate "
                         f"the seed program on {len(valset)} validation examples") from None

    n_init = (config.initial_demo_sets + archive.knn) if archive.max_demos else 0
    stale = 0  # proposals in a row that produced nothing new (all possible prompts seen)
    while evaluator.remaining() >= len(valset) and stale < 50:
        state.iteration += 1
        # While the first random demo sets are tried, each must beat the best so far (not just
        # the zero-shot seed), or every one of them would be paid a full validation.
        initialising = len(state.candidates) <= n_init
        parent = state.best if initialising else _select(state, config, rng)
        child_genome, op, note = _vary(parent, state, config, rng, reflection_session,
                                       description, initialising)
        if child_genome is not None and op == "reflection" and note and \
                G.key(child_genome) in state.by_key:
            child_genome = None  # a (reworded) copy of a known prompt: not paid for twice
        if child_genome is None:  # the reflection proposal failed the sanity filter
            emit("proposal_rejected", candidate=parent.id, op=op, reason=note)
            stale += 1
            continue
        child = add_candidate(child_genome, (parent.id,), op, note)
        if child is None:
            stale += 1
            continue
        stale = 0
        batch = _minibatch(state, parent, config.minibatch_size, rng)
        try:
            child_scores = evaluator.evaluate(child.program, state.matrix, child.id, batch)
        except BudgetExhausted:
            break
        parent_scores = state.matrix.scores[parent.id, batch]  # already paid at validation
        accepted = float(child_scores.sum()) > float(parent_scores.sum())
        emit("candidate_evaluated", candidate=child.id, minibatch=[int(c) for c in batch],
             minibatch_score=float(child_scores.mean()),
             parent_minibatch_score=float(parent_scores.mean()), accepted=accepted)
        if accepted:
            try:
                validate(child)
            except BudgetExhausted:  # an lm_calls cap hit by the reflection call just made
                break
    state.stop_reason = ("budget exhausted" if evaluator.remaining() < len(valset)
                         else "no new candidates")
    emit("budget_exhausted" if state.stop_reason == "budget exhausted" else "converged",
         remaining=evaluator.remaining())
    return state


def _select(state: SearchState, config: Evolution, rng: random.Random) -> Candidate:
    if config.selection == "pareto":
        rows = state.validated
        agg = np.array([state.candidates[r].val_score for r in rows])  # their full-val means
        pick = select_from_pareto_front(state.matrix.scores[rows], agg, rng)
        return state.candidates[rows[pick]]
    population = [
        _Individual(state.candidates[i].genome, i,
                    (state.candidates[i].val_score, state.candidates[i].program.prompt_chars()))
        for i in state.population
    ]
    with G.deap_random(rng):
        chosen = tools.selTournament(population, 1, min(config.tournament_size, len(population)))
    return state.candidates[chosen[0].cid]


def _vary(parent: Candidate, state: SearchState, config: Evolution, rng: random.Random,
          reflection_session: LMSession, description: str, initialising: bool
          ) -> tuple[Genome | None, str, str]:
    archive, genome = state.archive, list(parent.genome)
    if initialising:
        if archive.knn and len(state.candidates) == 1:
            # Each input's nearest training examples as its demos: the strongest demo policy
            # for a small model on most tasks, and no LM call to build.
            k = min(archive.max_demos, len(archive.pool))
            return [parent.genome[G.INSTRUCTION], 0, k] + [0] * archive.max_demos, "knn_demos", ""
        # A fresh random demo set: the first generation explores demo sets broadly, as
        # BootstrapFewShotWithRandomSearch does, before evolution refines them.
        demos = archive.random_demos(rng, archive.max_demos)
        return [parent.genome[G.INSTRUCTION], len(demos), 0] + demos + \
            [0] * (archive.max_demos - len(demos)), "random_demos", ""
    roll = rng.random()
    if roll < config.reflection_rate:
        failures = [(state.matrix.examples[col], cell)
                    for (row, col), cell in state.matrix.cells.items()
                    if row == parent.id and cell.score < 1.0]
        if failures:
            shown = rng.sample(failures, min(config.reflection_minibatch, len(failures)))
            proposal = propose(reflection_session, parent.program, shown,
                               style=config.reflection_style, description=description,
                               seed=rng.randrange(2**31))
            if proposal.instruction is None:
                return None, "reflection", f"{proposal.reason}; reply: {proposal.raw[:300]!r}"
            genome[G.INSTRUCTION], dup = archive.add_instruction(
                proposal.instruction, {"op": "reflection", "parent": parent.id,
                                       "iteration": state.iteration})
            return genome, "reflection", dup
    if roll < config.reflection_rate + config.crossover_rate and len(state.population) > 1:
        mate = state.candidates[rng.choice([i for i in state.population if i != parent.id])]
        return G.crossover(genome, mate.genome, archive, rng), "crossover", f"mate={mate.id}"
    if archive.max_demos and (len(archive.instructions) == 1 or rng.random() < 0.8):
        return G.mutate_demos(genome, archive, rng), "mutate_demos", ""
    return G.mutate_instruction(genome, archive, rng), "mutate_instruction", ""


def _minibatch(state: SearchState, parent: Candidate, size: int, rng: random.Random) -> list[int]:
    """Half the parent's failures (where a child can show it is better), half random."""
    n = len(state.matrix.examples)
    size = min(size, n)
    row = state.matrix.scores[parent.id]
    failures = [c for c in range(n) if row[c] < 1.0]
    batch = rng.sample(failures, min(len(failures), size // 2 or 1)) if failures else []
    rest = [c for c in range(n) if c not in batch]
    batch += rng.sample(rest, size - len(batch))
    return sorted(batch)
