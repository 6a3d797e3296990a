"""evo's own optimizer, :class:`Evolution` (the default): genomes of (instruction, demos) evolved
with DEAP operators and GEPA-style reflective mutation. Each iteration:

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
   minibatch cells are reused) and joins the population, which keeps the best ``population_size``
   (with two objectives, NSGA-II's survivors: :mod:`evo.kernels.moo`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from evo.data import Example
from evo.optimizers.registry import operator
from evo.program import Program
from evo.proposers.reflection import ReflectionStyle, propose
from evo.search import genome as G
from evo.search.engine import Candidate, Search, SearchConfig
from evo.search.evaluate import Budget, Cell
from evo.search.genome import Genome


class Evolution(SearchConfig):
    """evo's own optimizer: genomes of (instruction, demos) evolved with DEAP operators and
    GEPA-style reflective mutation, minibatch acceptance, then full validation.

    ``operators`` adds registered variation operators (:func:`evo.optimizers.register_operator`)
    by name, each tried with its probability before the built-in mix.

    >>> Evolution(budget=Budget(metric_calls=300)).population_size
    8
    """

    initial_demo_sets: int = Field(3, ge=0, description="random demo sets tried first")
    minibatch_size: int = Field(6, ge=1, description="validation examples for acceptance")
    reflection_rate: float = Field(0.35, ge=0, le=1, description="share of reflective mutations")
    crossover_rate: float = Field(0.25, ge=0, le=1)
    reflection_style: ReflectionStyle = "rules"
    reflection_minibatch: int = Field(3, ge=1, description="failures shown to the reflector")
    tournament_size: int = Field(3, ge=1)
    selection: Literal["pareto", "tournament"] = Field(
        "pareto", description="parent selection: GEPA's instance-level Pareto front over all "
                              "validated candidates, or a tournament within the population")
    operators: dict[str, float] = Field(
        default_factory=dict, description="registered operator name -> probability of use")

    name: ClassVar[str] = "evolution"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        # a reflective mutation for reflection_rate of the children, once the demo sets are in
        return math.ceil(super().projected_proposals(n_train, n_val) * self.reflection_rate)

    def run(self, search: Search) -> None:
        evolve(search, self)


def evolve(search: Search, config: Evolution, *, stale_limit: int = 50) -> None:
    """The evolutionary loop of :class:`Evolution` (module docstring, steps 1-4)."""
    archive = search.archive
    extra = {name: operator(name) for name in config.operators}  # unknown names fail here
    extra_rng = random.Random(search.seed + 1)  # user operators do not shift the default stream
    n_init = (config.initial_demo_sets + archive.knn) if archive.max_demos else 0
    tries = 0  # first-phase proposals made (a duplicate counts: the phase always ends)
    stale = 0  # proposals in a row that produced nothing new (all possible prompts seen)
    while search.can_validate() and stale < stale_limit:
        search.next_iteration()
        # While the first random demo sets are tried, each must beat the best so far (not just
        # the zero-shot seed), or every one of them would be paid a full validation.
        initialising = tries < n_init
        tries += initialising
        parent = search.select_parent("best") if initialising else search.select_parent(
            config.selection, tournament_size=config.tournament_size)
        child_genome, op, note = None, "", ""
        for name, p in config.operators.items():
            if extra_rng.random() < p:
                child_genome, op, note = extra[name](parent, search), name, ""
                break
        if not op:
            child_genome, op, note = _vary(parent, search, config, initialising,
                                           first=tries == 1)
        if child_genome is not None and op == "reflection" and note and \
                search.known(child_genome):
            child_genome = None  # a (reworded) copy of a known prompt: not paid for twice
        if child_genome is None:  # the proposal failed the sanity filter
            search.emit("proposal_rejected", candidate=parent.id, op=op, reason=note)
            stale += 1
            continue
        child = search.add(child_genome, (parent.id,), op, note)
        if child is None:
            stale += 1
            continue
        stale = 0
        if not screen(search, child, parent, search.minibatch(parent, config.minibatch_size)):
            continue


def screen(search: Search, child: Candidate, parent: Candidate, batch: list[int]) -> bool:
    """Minibatch acceptance: score ``child`` on ``batch`` (the parent's cells there are already
    paid) and validate it in full when it is strictly better. Returns whether it was accepted.
    Raises :class:`BudgetExhausted` when the budget cannot pay for it."""
    child_scores = search.evaluate(child, batch)
    parent_scores = search.matrix.scores[parent.id, batch]
    accepted = float(child_scores.sum()) > float(parent_scores.sum())
    search.emit("candidate_evaluated", candidate=child.id, minibatch=[int(c) for c in batch],
                minibatch_score=float(child_scores.mean()),
                parent_minibatch_score=float(parent_scores.mean()), accepted=accepted,
                **search.cell_errors(child, batch))
    if accepted:
        search.validate(child)
    return accepted


def _vary(parent: Candidate, search: Search, config: Evolution, initialising: bool,
          first: bool) -> tuple[Genome | None, str, str]:
    archive, rng = search.archive, search.rng
    genome = list(parent.genome)
    if initialising:
        k = min(archive.max_demos, len(archive.pool))
        knn_genome = archive.genome(parent.genome[G.INSTRUCTION], [], k)
        if archive.knn and first and not search.known(knn_genome):
            # Each input's nearest training examples as its demos: the strongest demo policy
            # for a small model on most tasks, and no LM call to build.
            return knn_genome, "knn_demos", ""
        # A fresh random demo set: the first generation explores demo sets broadly, as
        # BootstrapFewShotWithRandomSearch does, before evolution refines them.
        demos = archive.random_demos(rng, archive.max_demos)
        return archive.genome(parent.genome[G.INSTRUCTION], demos), "random_demos", ""
    roll = rng.random()
    if roll < config.reflection_rate:
        failures = search.val_failures(parent)
        if failures:
            shown = rng.sample(failures, min(config.reflection_minibatch, len(failures)))
            return reflect(search, parent, shown, config.reflection_style)
    if roll < config.reflection_rate + config.crossover_rate and len(search.population) > 1:
        mate = search.candidates[rng.choice([i for i in search.population if i != parent.id])]
        return G.crossover(genome, mate.genome, archive, rng), "crossover", f"mate={mate.id}"
    if archive.max_demos and (len(archive.instructions) == 1 or rng.random() < 0.8):
        return G.mutate_demos(genome, archive, rng), "mutate_demos", ""
    return G.mutate_instruction(genome, archive, rng), "mutate_instruction", ""


def reflect(search: Search, parent: Candidate, shown: Sequence[tuple[Example, Cell]],
            style: ReflectionStyle) -> tuple[Genome | None, str, str]:
    """GEPA's reflective mutation of ``parent``'s instruction from ``shown`` (example, cell)
    pairs: the child genome (None if the proposal failed the sanity filter), "reflection", and
    a note (why it failed, or that it repeats an archived text)."""
    assert isinstance(parent.program, Program)
    proposal = propose(search.reflection_session, parent.program, shown, style=style,
                       description=search.description, seed=search.rng.randrange(2**31))
    if proposal.instruction is None:
        return None, "reflection", f"{proposal.reason}; reply: {proposal.raw[:300]!r}"
    genome = list(parent.genome)
    genome[G.INSTRUCTION], dup = search.archive.add_instruction(
        proposal.instruction, {"op": "reflection", "parent": parent.id,
                               "iteration": search.iteration})
    return genome, "reflection", dup

