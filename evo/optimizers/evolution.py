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
3. **racing**: the child is scored on growing prefixes of a fixed shuffle of the validation set
   (``minibatch_size`` examples, then twice as many, ... then all of them) against the incumbent,
   the best validated candidate, whose scores there are already paid. At each rung a child whose
   mean paired difference (plus ``race_z`` standard errors; 0 by default) is below zero is
   dropped, and past the first rung so is one that beats the incumbent on no example; the
   signal is the metric's score plus the model's probability of the gold answer when both have
   it (label scoring), else the metric's score. So most children cost a few examples and full
   validation goes to contenders: a budget of 300 assesses tens of candidates;
4. **full validation**: a child that reaches the whole validation set joins the population,
   which keeps the best ``population_size`` (with two objectives, NSGA-II's survivors:
   :mod:`evo.kernels.moo`).

A share of the validation set (``holdout``, 20%) never takes part in choosing: the seed is scored
on it first and the final pick once at the end (``Result.confirmation``). The search runs until
the budget cannot start another race (less than one rung left) or nothing new can be proposed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from evo.optimizers.registry import operator, register_operator
from evo.optimizers.steps import (
    Deferred,
    Race,
    Variation,
    add_child,
    plan_reflection,
    race_many,
    reflect,
    resolve,
    screen,
)
from evo.proposers.reflection import ReflectionStyle
from evo.search import genome as G
from evo.search.engine import OMIT_DEFAULT, Candidate, Search, SearchConfig, StopReason
from evo.search.events import OperatorStats

if TYPE_CHECKING:
    from evo.optimizers.registry import Operator

__all__ = ["Evolution", "evolve", "reflect", "screen"]


class Evolution(SearchConfig):
    """evo's own optimizer: genomes of (instruction, demos) evolved with DEAP operators and
    GEPA-style reflective mutation, raced against the incumbent on growing validation subsets.

    ``operators`` adds registered variation operators (:func:`evo.optimizers.register_operator`)
    by name, each tried with its probability before the built-in mix. A subclass may change
    the class-level ``acceptance`` (:mod:`evo.search.strategies`) and ``stale_limit``.

    >>> Evolution(reflection_rate=0.5).population_size
    8
    """

    initial_demo_sets: int = Field(3, ge=0, description="random demo sets tried first")
    minibatch_size: int = Field(8, ge=1, description="validation examples of a race's first "
                                                     "rung (each next rung doubles it)")
    # race_z, settings and holdout are always in the run spec (unlike parallel_proposals): a run
    # stored before racing has none of them, so it is refused with the fields that differ
    # instead of resuming on a search it never ran
    race_z: float = Field(
        0.0, ge=0,
        description="patience of a race: a child is dropped when its mean paired difference "
                    "from the incumbent plus race_z standard errors is below zero")
    settings: bool = Field(
        True,
        description="let genomes vary the program's settings: label scoring for a closed label "
                    "set on a backend that scores choices (with contextual calibration), and a "
                    "reasoning step")
    holdout: float = Field(
        0.2, ge=0, lt=1,
        description="share of the validation set kept out of every choice, to confirm the "
                    "final pick (Result.confirmation)")
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
    parallel_proposals: int = Field(
        1, ge=1, json_schema_extra=OMIT_DEFAULT,
        description="children proposed per iteration: their reflection calls, minibatches and "
                    "validations go out together when the LM serves calls in parallel (the "
                    "search depends on this number, not on the concurrency)")

    name: ClassVar[str] = "evolution"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        # a reflective mutation for reflection_rate of the children, once the demo sets are in
        return math.ceil(super().projected_proposals(n_train, n_val) * self.reflection_rate)

    def run(self, search: Search) -> None:
        credit = Credit()
        try:
            evolve(search, self, credit=credit)
        finally:  # also when an lm_calls cap ends the search
            search.emit(OperatorStats(stats=credit.table(), note=credit.note()))


def evolve(search: Search, config: Evolution, *, stale_limit: int | None = None,
           credit: Credit | None = None) -> None:
    """The evolutionary loop of :class:`Evolution` (module docstring, steps 1-4); it stops when
    the budget cannot pay a race's first rung or after ``stale_limit`` (default: the config's)
    proposals in a row that brought nothing new. ``credit`` collects how each operator's
    children fared (and weighs the operators by it)."""
    stale_limit = config.stale_limit if stale_limit is None else stale_limit
    archive = search.archive
    extra = {name: operator(name) for name in config.operators}  # unknown names fail here
    extra_rng = random.Random(search.seed + 1)  # user operators do not shift the default stream
    openings = _openings(search)
    n_init = len(openings) + ((config.initial_demo_sets + archive.knn) if archive.max_demos
                              else 0)
    credit = Credit() if credit is None else credit
    first_rung = min(config.minibatch_size, len(search.all_cols))
    tries = 0  # first-phase proposals made (a duplicate counts: the phase always ends)
    stale = 0  # proposals in a row that produced nothing new (all possible prompts seen)
    while search.remaining() >= first_rung and stale < stale_limit:
        search.next_iteration()
        # a round of children, no more than the budget could start racing
        room = search.remaining() // max(1, first_rung)
        plans = []
        for _ in range(max(1, min(config.parallel_proposals, room))):
            # The first children are the openings (the seed with other settings), the KNN
            # candidate and fresh random demo sets, each from the best so far.
            initialising = tries < n_init
            tries += initialising
            parent = search.select_parent("best") if initialising else search.select_parent(
                config.selection, tournament_size=config.tournament_size)
            plan: Variation | Deferred | None = None
            for name, p in config.operators.items():
                if extra_rng.random() < p:
                    plan = extra[name](parent, search), name, ""
                    break
            if plan is None:
                plan = _opening(search, openings[tries - 1]) if initialising and \
                    tries <= len(openings) else \
                    _vary(parent, search, config, initialising, first=tries == len(openings) + 1,
                          credit=credit)
            plans.append((parent, plan))
        trials = []
        for (parent, _), (child_genome, op, note) in zip(
                plans, resolve(search, [plan for _, plan in plans]), strict=True):
            # a reflection that rewords a known prompt is reported; a cheap operator's repeat
            # is not
            child = add_child(search, child_genome, (parent.id,), op, note,
                              repeat=note if op == "reflection" and note else None)
            if child is None:
                stale += 1
                continue
            stale = 0
            trials.append(child)
        for race in race_many(search, trials, start=config.minibatch_size, z=config.race_z):
            credit.record(race)
    search.stop(StopReason.CONVERGED if stale >= stale_limit else StopReason.BUDGET)


def _openings(search: Search) -> list[G.Settings]:
    """Settings the seed program is tried with first, before any demo: label scoring (no parse
    failures, and dense scores for every later race) for a closed label set on a backend that
    scores choices; a reasoning step for a generative task (a small model that answers directly
    gets multi-step problems wrong far more often)."""
    options = search.archive.settings_options
    if not options:
        return []
    own = search.archive.own_settings
    wanted = [G.Settings(answer_mode="rank", model=own.model)] \
        if search.archive.base.labels is not None else \
        [G.Settings(reasoning=True, model=own.model)]
    # With a model choice, the seed (on the default model) is then tried on each other model.
    wanted += [own._replace(model=m) for m in range(len(search.archive.models))]
    return [s for s in dict.fromkeys(wanted) if s in options and s != own]


def _opening(search: Search, settings: G.Settings) -> Variation:
    archive = search.archive
    seed = search.seed_candidate.genome
    demos = list(G.key(seed).demos)
    return archive.genome(seed[G.INSTRUCTION], demos, settings=settings), "settings", \
        settings.describe(archive.models)


@dataclass
class Credit:
    """How the children of each operator fared in their races: proposed, past the first rung,
    validated. After the first children, operators (reflection and crossover included) are
    drawn in proportion to their rate times a smoothed share of their children that got past
    the first rung, so a search whose reflections never do (a reflection LM too small to help)
    spends its budget on demo and settings operators instead."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def record(self, race: Race) -> None:
        row = self.counts.setdefault(race.candidate.op, [0, 0, 0])
        row[0] += 1
        row[1] += len(race.rungs) > 1 or race.outcome == "validated"
        row[2] += race.outcome == "validated"

    def weight(self, op: str) -> float:
        tried, passed, _ = self.counts.get(op, [0, 0, 0])
        return 2.0 * (passed + 1) / (tried + 2)  # 1.0 before any evidence

    def table(self) -> dict[str, list[int]]:
        return {op: list(row) for op, row in sorted(self.counts.items())}

    def note(self) -> str:
        tried, passed, _ = self.counts.get("reflection", [0, 0, 0])
        if tried >= 3 and passed == 0:
            return (f"no reflective mutation got past the first rung ({tried} tried): the "
                    "reflection LM could not help here, so the budget went to demo and "
                    "settings operators")
        return ""


def _vary(parent: Candidate, search: Search, config: Evolution, initialising: bool,
          first: bool, credit: Credit | None = None) -> Variation | Deferred:
    archive, rng = search.archive, search.rng
    genome = list(parent.genome)
    settings = G.settings_of(parent.genome)
    if initialising:
        k = min(archive.max_demos, len(archive.pool))
        knn_genome = archive.genome(parent.genome[G.INSTRUCTION], [], k, settings=settings)
        if archive.knn and first and not search.known(knn_genome):
            # Each input's nearest training examples as its demos: the strongest demo policy
            # for a small model on most tasks, and no LM call to build.
            return knn_genome, "knn_demos", ""
        # A fresh random demo set: the first generation explores demo sets broadly, as
        # BootstrapFewShotWithRandomSearch does, before evolution refines them.
        demos = archive.random_demos(rng, archive.max_demos)
        return archive.genome(parent.genome[G.INSTRUCTION], demos, settings=settings), \
            "random_demos", ""
    credit = credit or Credit()
    failures = search.val_failures(parent)
    ops = _operators(parent, search, config, failures)
    op = rng.choices(list(ops), [w * credit.weight(name) for name, w in ops.items()])[0]
    if op == "reflection":
        shown = rng.sample(failures, min(config.reflection_minibatch, len(failures)))
        return plan_reflection(search, parent, shown, config.reflection_style)
    if op == "crossover":
        mate = search.candidates[rng.choice([i for i in search.population if i != parent.id])]
        return G.crossover(genome, mate.genome, archive, rng), "crossover", f"mate={mate.id}"
    if op == "swap_for_neighbour":
        return G.swap_for_neighbour(genome, archive, [ex for ex, _ in failures], rng), op, ""
    return CHEAP[op](genome, archive, rng), op, ""


# The cheap operators of evo.search.genome, by the name their children carry.
CHEAP = {"mutate_demos": G.mutate_demos, "balance_classes": G.balance_classes,
         "reorder_demos": G.reorder_demos, "resize_demos": G.resize_demos,
         "mutate_knn": G.mutate_knn, "mutate_settings": G.mutate_settings,
         "mutate_instruction": G.mutate_instruction}


def _usable(op: str, archive: G.Archive, n_demos: int) -> bool:
    """Whether cheap operator ``op`` can change a genome with ``n_demos`` demos."""
    return {"mutate_demos": archive.max_demos > 0,
            "balance_classes": archive.max_demos > 0 and archive.base.labels is not None
            and n_demos > 1,
            "reorder_demos": n_demos > 1,
            "resize_demos": archive.max_demos > 0,
            "mutate_knn": bool(archive.knn),
            "mutate_settings": bool(archive.settings_options),
            "mutate_instruction": len(archive.instructions) > 1}[op]


def _by_name(op: str) -> Operator:
    """Cheap operator ``op`` as a registered operator: ``Evolution(operators={op: p})`` (and a
    service's declarative algorithm) tries it with probability ``p`` before the built-in mix;
    it proposes nothing (None) where it cannot change the parent."""
    def apply(parent: Candidate, search: Search) -> G.Genome | None:
        if not _usable(op, search.archive, parent.genome[G.N_DEMOS]):
            return None
        return CHEAP[op](parent.genome, search.archive, search.rng)

    apply.__name__ = apply.__qualname__ = op
    return apply


for _op in CHEAP:
    register_operator(_op)(_by_name(_op))


def _operators(parent: Candidate, search: Search, config: Evolution,
               failures: list) -> dict[str, float]:
    """The variation operators that can change ``parent``, each with its prior rate: reflection
    and crossover at theirs, the cheap operators sharing the rest evenly."""
    archive = search.archive
    n_demos = parent.genome[G.N_DEMOS]
    ops = {"reflection": config.reflection_rate if failures else 0.0,
           "crossover": config.crossover_rate if len(search.population) > 1 else 0.0}
    cheap = [name for name in ("mutate_demos", "swap_for_neighbour", *list(CHEAP)[1:])
             if (archive.max_demos > 0 and bool(failures) if name == "swap_for_neighbour"
                 else _usable(name, archive, n_demos))]
    rest = max(0.0, 1.0 - ops["reflection"] - ops["crossover"])
    ops.update({name: rest / len(cheap) for name in cheap})
    ops = {name: w for name, w in ops.items() if w > 0}
    return ops or {"mutate_instruction": 1.0}
