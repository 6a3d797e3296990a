"""The dry run: what a search configuration will spend, before it spends anything.

``evo run --dry-run`` prints it; :func:`project` returns it. Nothing is sent to the LM. Metric
calls are the budget itself (a search never exceeds it), and task LM calls are at most one per
metric call (the cache and the journal only lower that): those two are bounds. Proposal calls
(reflection, instruction proposals) are each optimizer's estimate from its own loop
(:meth:`evo.SearchConfig.projected_proposals`). Prompt tokens are counted on the real prompts:
the seed program's on every validation example, and the same with every demo slot filled from
the training set, so the two figures bracket what candidates send. ``evo run`` adds one
preflight call and a test pass (baseline and best on every test example).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evo.data import Example
from evo.program import Program


@dataclass(frozen=True)
class Projection:
    """Projected cost of one search (see the module docstring for how each bound is found)."""

    optimizer: str
    metric_calls: int          # the budget
    val_size: int
    full_validations: int      # candidates the budget can validate in full, the seed included
    task_calls: int            # at most
    proposal_calls: int        # about (the optimizer's estimate)
    prompt_tokens_low: int     # every task call zero-shot
    prompt_tokens_high: int    # every task call with all demo slots filled
    completion_tokens_max: int
    tokens_exact: bool         # counted with the model's tokenizer (else ~4 characters/token)
    test_calls: int = 0        # evo run's test pass: baseline and best on every test example

    @property
    def lm_calls(self) -> int:
        return self.task_calls + self.proposal_calls + self.test_calls

    def __str__(self) -> str:
        how = "the model's tokenizer" if self.tokens_exact else "~4 characters per token"
        rows = [
            ("optimizer", self.optimizer),
            ("metric calls (the budget)", f"{self.metric_calls}"),
            ("full validations", f"at most {self.full_validations} candidates on "
                                 f"{self.val_size} examples, the seed included"),
            ("task LM calls", f"at most {self.task_calls}"),
            ("proposal / reflection LM calls", f"about {self.proposal_calls} (the optimizer's "
                                               "estimate)"),
            *([("test pass LM calls", f"{self.test_calls} (baseline and best)")]
              if self.test_calls else []),
            ("LM calls in all", f"about {self.lm_calls}, plus one preflight"),
            ("task prompt tokens", f"{self.prompt_tokens_low:,} (zero-shot) to "
                                   f"{self.prompt_tokens_high:,} (all demo slots filled); {how}"),
            ("task completion tokens", f"at most {self.completion_tokens_max:,}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def project(program: Program, trainset: Sequence[Example], valset: Sequence[Example],
            optimizer, *, count_tokens: Callable[[str], int] | None = None,
            n_test: int = 0) -> Projection:
    """Project the LM calls and tokens of ``optimizer`` searching from ``program`` (no LM call).

    ``count_tokens`` counts a text's tokens (e.g. :meth:`evo.lm.LocalLM.count_tokens`); without
    it, characters / 4. ``n_test``: the test pass that follows (``evo run``'s).

    >>> # print(project(program, task.train, task.val, evo.Evolution()))
    """
    budget = optimizer.budget.metric_calls
    n_val = len(valset)
    count = count_tokens or (lambda text: math.ceil(len(text) / 4))
    max_demos = getattr(optimizer, "max_demos", 0)
    knn = getattr(optimizer, "knn", False)
    slots = max_demos + (max_demos if knn else 0)  # KNN genomes fill up to max_demos more
    pool = list(trainset)[: max(slots, 1) * 8] if slots else []

    def tokens(p: Program, ex: Example) -> int:
        return sum(count(m.content) for m in p.messages(ex)) + 4 * len(p.messages(ex))

    low = sum(tokens(program, ex) for ex in valset)
    high = low
    if slots and pool:
        per_demo = sum(count(program.render_inputs(d)) + count(program.render_outputs(d)) + 8
                       for d in pool) / len(pool)
        high = low + round(n_val * slots * per_demo)
    estimate = getattr(optimizer, "projected_proposals", None)
    proposals = estimate(len(trainset), n_val) if estimate else 0
    task_calls = budget
    if optimizer.budget.lm_calls is not None:
        task_calls = min(task_calls, optimizer.budget.lm_calls)
        proposals = min(proposals, optimizer.budget.lm_calls)
    per_call = (budget / n_val) if n_val else 0
    return Projection(
        optimizer=getattr(optimizer, "name", "") or type(optimizer).__name__,
        metric_calls=budget, val_size=n_val, full_validations=budget // max(1, n_val),
        task_calls=task_calls, proposal_calls=proposals, test_calls=2 * n_test,
        prompt_tokens_low=round(low * per_call), prompt_tokens_high=round(high * per_call),
        completion_tokens_max=budget * getattr(optimizer, "max_tokens", 48),
        tokens_exact=count_tokens is not None)
