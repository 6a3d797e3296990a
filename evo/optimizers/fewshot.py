"""Demo-set optimizers, as in DSPy: LabeledFewShot, BootstrapFewShot,
BootstrapFewShotWithRandomSearch and KNNFewShot, on the shared engine.

Bootstrapping runs the teacher (the seed program unless one is given) on training examples;
each run is a cell of the search's training score matrix, paid once and reused by every later
bootstrap (a shuffled bootstrap round mostly reads cells it already has). A run that passes the
metric becomes a demo with the teacher's own outputs (its "trace").
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import (
    bootstrap,
    compile_bootstrap,
    demo_set,
    labeled_demos,
    try_validate,
)
from evo.search.engine import Search, SearchConfig
from evo.search.genome import INSTRUCTION

__all__ = ["BootstrapFewShot", "BootstrapFewShotWithRandomSearch", "KNNFewShot",
           "LabeledFewShot", "bootstrap", "compile_bootstrap", "try_validate"]


@register_optimizer
class LabeledFewShot(SearchConfig):
    """``k`` random labeled training examples as demos (DSPy's LabeledFewShot: no LM call to
    build; its default k is 16, here the genome's ``max_demos`` slots). One validation."""

    k: int | None = Field(None, ge=1, description="demos (default: max_demos)")
    knn: bool = False

    name: ClassVar[str] = "labeled_fewshot"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return 0  # demos only: no LM writes an instruction

    def run(self, search: Search) -> None:
        k = min(self.k or search.archive.max_demos, search.archive.max_demos)
        demos = labeled_demos(search, search.rng, k)
        try_validate(search, search.archive.genome(search.seed_candidate.genome[INSTRUCTION],
                                                   demos), "labeled_demos")


@register_optimizer
class BootstrapFewShot(SearchConfig):
    """DSPy's BootstrapFewShot: the teacher's passing runs on the training set, in order, become
    up to ``max_bootstrapped_demos`` demos; labeled examples fill the remaining slots up to
    ``max_labeled_demos``. One round (DSPy's ``max_rounds=1``), one validation."""

    max_bootstrapped_demos: int = Field(4, ge=0)
    max_labeled_demos: int = Field(16, ge=0)
    metric_threshold: float = Field(1.0, description="a run passes when its score reaches it")
    knn: bool = False

    name: ClassVar[str] = "bootstrap_fewshot"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return 0  # demos only: no LM writes an instruction

    def run(self, search: Search) -> None:
        genome = compile_bootstrap(search, list(range(len(search.trainset))),
                                   self.max_bootstrapped_demos, self.max_labeled_demos,
                                   self.metric_threshold, random.Random(0))
        try_validate(search, genome, "bootstrapped_demos")


@register_optimizer
class BootstrapFewShotWithRandomSearch(SearchConfig):
    """DSPy's BootstrapFewShotWithRandomSearch: candidate programs zero-shot, labeled-only,
    bootstrapped in training order, then ``num_candidate_programs`` bootstraps of the shuffled
    training set with a random number of demos (1..``max_bootstrapped_demos``); each is
    validated in full and the best kept. Stops at ``stop_at_score`` or the budget."""

    num_candidate_programs: int = Field(16, ge=0)
    max_bootstrapped_demos: int = Field(4, ge=1)
    max_labeled_demos: int = Field(4, ge=0)
    metric_threshold: float = 1.0
    stop_at_score: float | None = None
    knn: bool = False

    name: ClassVar[str] = "bootstrap_random_search"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return 0  # demos only: no LM writes an instruction

    def run(self, search: Search) -> None:
        for seed in range(-3, self.num_candidate_programs):
            search.next_iteration()
            if not search.can_validate():
                break
            genome, op = demo_set(search, seed, max_bootstrapped=self.max_bootstrapped_demos,
                                  max_labeled=self.max_labeled_demos,
                                  threshold=self.metric_threshold)
            cand = try_validate(search, genome, op, note=f"candidate program {seed}")
            if cand is not None and self.stop_at_score is not None and \
                    cand.val_score >= self.stop_at_score:
                break


@register_optimizer
class KNNFewShot(SearchConfig):
    """Per-input demos: each input gets its ``k`` nearest training examples (MiniLM embeddings,
    FAISS index: :mod:`evo.embeddings.knn`). DSPy's KNNFewShot retrieves the same way and then
    compiles BootstrapFewShot per input; here the neighbours are shown with their gold labels (no LM
    call). With ``ks`` several k are validated and the best kept."""

    k: int | None = Field(None, ge=1, description="neighbours per input (default: max_demos)")
    ks: tuple[int, ...] = Field((), description="further k values to try")

    name: ClassVar[str] = "knn_fewshot"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return 0  # demos only: no LM writes an instruction

    def run(self, search: Search) -> None:
        if not search.archive.knn:
            raise ValueError("KNNFewShot needs knn=True and max_demos > 0")
        instruction = search.seed_candidate.genome[INSTRUCTION]
        limit = min(search.archive.max_demos, len(search.archive.pool))
        for k in dict.fromkeys([self.k or limit, *self.ks]):
            if not 1 <= k <= limit:
                raise ValueError(f"KNNFewShot k={k} must be between 1 and {limit} "
                                 "(max_demos and the training set size)")
            search.next_iteration()
            try_validate(search, search.archive.genome(instruction, [], k), "knn_demos")
