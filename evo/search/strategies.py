"""The search's decisions as small strategy objects, one protocol per decision (as gepa's
``strategies/``): which validated candidate becomes a parent, and whether a child's minibatch
scores earn it a full validation.

A strategy reads the search through :class:`SearchView` (what :class:`evo.search.engine.Search`
offers) and returns a decision; it changes nothing. Pass one where a string would do::

    parent = search.select_parent(TournamentSelector(size=5))
    if StrictImprovement().accepts(child_scores, parent_scores): ...
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from deap import base, tools

from evo.kernels.moo import crowding_distance, nondominated_ranks
from evo.kernels.pareto import select_from_pareto_front
from evo.search.evaluate import ScoreMatrix
from evo.search.genome import deap_random


class SearchView(Protocol):
    """What a strategy may read of a search (candidates by id)."""

    rng: random.Random

    @property
    def matrix(self) -> ScoreMatrix: ...

    @property
    def population(self) -> tuple[int, ...]: ...

    @property
    def parent_pool(self) -> list[int]: ...

    def val_scores(self, ids: Sequence[int]) -> np.ndarray: ...

    def selection_scores(self, ids: Sequence[int]) -> np.ndarray: ...

    def objectives(self, ids: Sequence[int]) -> np.ndarray: ...


# ---- parent selection -----------------------------------------------------------------------

class ParentSelector(Protocol):
    """Picks the parent of the next child: a candidate id."""

    def select(self, search: SearchView) -> int: ...


@dataclass(frozen=True)
class ParetoSelector:
    """GEPA's instance-level Pareto sampling over every validated single-prompt candidate: one
    is likely to be picked in proportion to the validation examples on which it is among the
    best, after set-cover pruning (:mod:`evo.kernels.pareto`)."""

    def select(self, search: SearchView) -> int:
        rows = search.parent_pool
        pick = select_from_pareto_front(search.selection_scores(rows), search.val_scores(rows),
                                        search.rng)
        return rows[pick]


@dataclass(frozen=True)
class BestSelector:
    """The population's best: fitness, then the shorter prompt, then the earlier candidate."""

    def select(self, search: SearchView) -> int:
        pop = search.population
        obj = search.objectives(pop)
        best = max(range(len(pop)), key=lambda i: (obj[i, 0], -obj[i, 1], -pop[i]))
        return pop[best]


@dataclass(frozen=True)
class TournamentSelector:
    """A DEAP tournament of ``size`` within the population, on (fitness, shorter prompt)."""

    size: int = 3

    def select(self, search: SearchView) -> int:
        pop = search.population
        obj = search.objectives(pop)
        individuals = [Individual(cid, (float(o[0]), float(o[1]))) for cid, o in zip(pop, obj,
                                                                                     strict=True)]
        with deap_random(search.rng):
            chosen = tools.selTournament(individuals, 1, min(self.size, len(individuals)))
        return chosen[0].cid


@dataclass(frozen=True)
class CrowdedTournamentSelector:
    """NSGA-II's crowded binary tournament within the population (two objectives: accuracy up,
    prompt length down): the lower front wins, then the larger crowding distance (DEAP's
    ``selTournamentDCD``)."""

    def select(self, search: SearchView) -> int:
        pop = search.population
        if len(pop) == 1:
            return pop[0]
        obj = search.objectives(pop)
        ranks = nondominated_ranks(obj, [1.0, -1.0])
        crowd = crowding_distance(obj, ranks)
        a, b = search.rng.sample(range(len(pop)), 2)
        return pop[a if (ranks[a], -crowd[a]) <= (ranks[b], -crowd[b]) else b]


def roulette_pair(search: SearchView, ids: Sequence[int]) -> tuple[int, int]:
    """Two distinct candidates of ``ids`` (the same one if there is only one), each drawn by
    DEAP's roulette wheel on validation fitness (EvoPrompt-GA's parent selection)."""
    scores = search.val_scores(ids)
    individuals = [Individual(cid, (float(s) + 1e-6, 0.0)) for cid, s in zip(ids, scores,
                                                                            strict=True)]
    with deap_random(search.rng):
        a = tools.selRoulette(individuals, 1)[0].cid
        rest = [i for i in individuals if i.cid != a] or individuals
        b = tools.selRoulette(rest, 1)[0].cid
    return a, b


class _Fitness(base.Fitness):
    weights = (1.0, -1e-6)  # accuracy first; among equals, the shorter prompt


class Individual(list):
    """A candidate as DEAP's selection operators see it: its id and a (fitness, prompt
    length) fitness."""

    def __init__(self, cid: int, fitness: tuple[float, float]) -> None:
        super().__init__()
        self.cid = cid
        self.fitness = _Fitness(fitness)


# ---- acceptance -------------------------------------------------------------------------------

class Acceptance(Protocol):
    """Whether a child's scores on a minibatch earn it a full validation, against its parent's
    scores on the same examples (those cells are already paid)."""

    def accepts(self, child: np.ndarray, parent: np.ndarray) -> bool: ...


@dataclass(frozen=True)
class StrictImprovement:
    """gepa's default: the child must score strictly more than the parent in total."""

    def accepts(self, child: np.ndarray, parent: np.ndarray) -> bool:
        return float(child.sum()) > float(parent.sum())


@dataclass(frozen=True)
class NoWorse:
    """At least as much in total (gepa's merge acceptance, against the better parent)."""

    def accepts(self, child: np.ndarray, parent: np.ndarray) -> bool:
        return float(child.sum()) >= float(parent.sum())
