"""The optimizer family, each a short ``run(search)`` on the shared engine
(:mod:`evo.search.engine`), composed of the steps in :mod:`evo.optimizers.steps` and the
strategies in :mod:`evo.search.strategies`.

======================================  ============================================================
name (``evo run --optimizer``)          what it searches
======================================  ============================================================
``evolution`` (:class:`Evolution`)      evo's default: KNN + random demo sets, reflective mutation,
                                        DEAP crossover/mutation, Pareto selection, minibatch gate
``gepa`` (:class:`GEPA`)                reflective instruction evolution, Pareto front, merge
``miprov2`` (:class:`MIPROv2`)          bootstrapped demo sets x grounded instruction proposals
``copro`` (:class:`COPRO`)              instruction breadth x depth, attempts fed back by score
``simba`` (:class:`SIMBA`)              minibatch ascent: demos and rules where runs disagree
``infer_rules`` (:class:`InferRules`)   bootstrapped demos + rules induced from training examples
``labeled_fewshot``                     k random labeled demos
``bootstrap_fewshot``                   the teacher's passing traces as demos
``bootstrap_random_search``             many bootstrapped demo sets, the best on validation
``knn_fewshot`` (:class:`KNNFewShot`)   each input's nearest training examples as demos
``ensemble`` (:class:`Ensemble`)        several optimizers on one search; best or a vote
``ga`` / ``de`` (:class:`EvoPrompt`)    EvoPrompt: LM crossover/mutation of instructions
======================================  ============================================================

``evo.optimizers.get(name, **params)`` builds one by name; :func:`register_optimizer` and
:func:`register_operator` add a user's own.
"""

from evo.optimizers.copro import COPRO
from evo.optimizers.ensemble import Ensemble, vote_ensemble
from evo.optimizers.evolution import Evolution
from evo.optimizers.evoprompt import DE, GA, EvoPrompt
from evo.optimizers.fewshot import (
                                    BootstrapFewShot,
                                    BootstrapFewShotWithRandomSearch,
                                    KNNFewShot,
                                    LabeledFewShot,
)
from evo.optimizers.gepa import GEPA
from evo.optimizers.infer_rules import InferRules
from evo.optimizers.mipro import MIPROv2
from evo.optimizers.registry import (
                                    get,
                                    names,
                                    optimizer_class,
                                    register_operator,
                                    register_optimizer,
)
from evo.optimizers.simba import SIMBA
from evo.search.engine import Search, SearchConfig

register_optimizer(Evolution)

__all__ = ["COPRO", "DE", "GA", "GEPA", "SIMBA", "BootstrapFewShot",
           "BootstrapFewShotWithRandomSearch", "Ensemble", "EvoPrompt", "Evolution",
           "InferRules", "KNNFewShot", "LabeledFewShot", "MIPROv2", "Search", "SearchConfig",
           "get", "names", "optimizer_class", "register_operator",
           "register_optimizer", "vote_ensemble"]
