"""InferRules (DSPy's ``dspy.teleprompt.InferRules``) on the shared engine.

BootstrapFewShot first (the teacher's passing runs on the training set become demos, labeled
examples fill the rest; :func:`evo.optimizers.steps.compile_bootstrap`); then ``num_candidates``
times the reflection LM is shown training examples with their correct outputs and induces up to
``num_rules`` natural-language rules, which are appended to the seed instruction (each candidate
starts from the seed's text, not from the previous candidate's); each candidate keeps the
bootstrapped demos and is validated in full, and the engine keeps the best.

Where evo differs from DSPy (``dspy/teleprompt/infer_rules.py``), and why:

* DSPy shows every training example and, when the prompt overflows the context, drops examples
  from the end; evo shows a random sample per candidate, as many as fit :data:`MAX_EXAMPLE_CHARS`
  characters (a small local model's context), so the candidates also differ by what they saw
  (DSPy varies them by sampling at temperature 1.0 only);
* the bootstrapped program without rules is validated too (DSPy scores only the rule
  candidates), so a run whose rules all fail never ends below BootstrapFewShot;
* rules are kept one by one, each refused when it is a label, an answer, a quote of an example or
  a repeat (:func:`evo.optimizers.simba.parse_rules`), and written as the instruction's
  ``Rules:`` list (DSPy appends the reply as it came, after "Please adhere to the following
  rules ...");
* the budget is metric calls: bootstrapping keeps enough for one validation, and a candidate is
  proposed only while the budget can validate it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from evo.data import Example
from evo.lm.base import LMError, LMRequest, LMUnavailableError
from evo.lm.session import LMSession
from evo.optimizers.registry import register_optimizer
from evo.optimizers.simba import parse_rules
from evo.optimizers.steps import Deferred, Variation, add_child, compile_bootstrap, resolve
from evo.program import Program
from evo.proposers.reflection import (
    Proposal,
    describe_task,
    join_rules,
    rule_writer_request,
    split_rules,
)
from evo.search import genome as G
from evo.search.engine import Search, SearchConfig

__all__ = ["MAX_EXAMPLE_CHARS", "InferRules", "induce_rules"]

MAX_EXAMPLE_CHARS = 4000  # examples shown to the rule-inducing LM, in characters


def _examples_text(program: Program, examples: Sequence[Example]) -> str:
    """DSPy's ``format_examples``: each example's inputs, then its correct outputs."""
    return "\n\n".join(f"### Example {i}\n{program.render_inputs(ex)}\n"
                       + "\n".join(f"{k}: {v}" for k, v in ex.outputs.items())
                       for i, ex in enumerate(examples, 1))


def rules_induction_request(program: Program, examples: Sequence[Example], *, num_rules: int,
                            description: str, seed: int, temperature: float = 1.0
                            ) -> LMRequest:
    """DSPy's rules-induction prompt, in words a small model follows: the task, examples with
    their correct outputs, and a request for ``num_rules`` general rules, one per line."""
    prompt = (
        f"An assistant does this task:\n{describe_task(program, description)}\n\n"
        f"Here are examples with their correct outputs:\n\n{_examples_text(program, examples)}"
        f"\n\nWrite {num_rules} concise, non-redundant rules that tell the assistant how to get "
        "the correct output for inputs like these. Each rule is one sentence and general: it "
        "must apply to many inputs of this kind, so do not mention particular examples.\n"
        "Reply with the rules only, one per line, each line starting with \"- \"."
    )
    return rule_writer_request(prompt, max_tokens=60 * num_rules + 40, temperature=temperature,
                               seed=seed)


def induce_rules(session: LMSession, program: Program, examples: Sequence[Example], *,
                 num_rules: int, description: str = "", seed: int = 0) -> Proposal:
    """InferRules' ``induce_natural_language_rules``: ``program``'s instruction (its own rules
    dropped) followed by up to ``num_rules`` rules the LM induced from ``examples``, or None with
    the reason every rule was refused."""
    try:
        raw = session.complete(rules_induction_request(
            program, examples, num_rules=num_rules, description=description, seed=seed)).text
    except LMUnavailableError:
        raise
    except LMError as exc:
        return Proposal(None, f"reflection LM failed: {exc}", "")
    core, _ = split_rules(program.instruction)
    bare = program.model_copy(update={"instruction": core})
    rules, reasons = parse_rules(raw, bare, [(ex, None) for ex in examples], num_rules)
    if not rules:
        why = ", ".join(sorted(set(reasons))) or "no rule lines in the reply"
        return Proposal(None, f"no usable rule ({why})", raw)
    return Proposal(join_rules(core, rules), "ok", raw)


@register_optimizer
class InferRules(SearchConfig):
    """BootstrapFewShot, then rules induced from training examples appended to the instruction;
    the best of ``num_candidates`` on validation (DSPy's InferRules; its parameter names)."""

    num_candidates: int = Field(10, ge=1, description="rule sets proposed, each validated")
    num_rules: int = Field(10, ge=1, description="rules asked for per candidate")
    max_bootstrapped_demos: int = Field(4, ge=0)
    max_labeled_demos: int = Field(16, ge=0)
    metric_threshold: float = Field(1.0, description="a teacher run passes when its score "
                                                     "reaches it")
    knn: bool = False

    name: ClassVar[str] = "infer_rules"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return self.num_candidates

    def run(self, search: Search) -> None:
        if not search.trainset:
            raise ValueError("InferRules needs a trainset: it bootstraps and induces rules "
                             "from it")
        seed = search.seed_candidate
        search.next_iteration()
        genome = compile_bootstrap(search, list(range(len(search.trainset))),
                                   self.max_bootstrapped_demos, self.max_labeled_demos,
                                   self.metric_threshold, random.Random(0))
        base = add_child(search, genome, (seed.id,), "bootstrapped_demos") or seed
        if not base.accepted and search.can_validate():
            search.validate(base)
        instruction_id = seed.genome[G.INSTRUCTION]
        program = search.archive.program(G.with_instruction(base.genome, instruction_id))
        val_size = max(1, len(search.all_cols))
        tried = 0
        while tried < self.num_candidates and search.can_validate():
            search.next_iteration()
            n = min(self.num_candidates - tried, search.remaining() // val_size)
            plans = [self._plan(search, program, base.genome, tried + k) for k in range(n)]
            tried += n
            children = []
            for genome_, op, note in resolve(search, plans):
                child = add_child(search, genome_, (base.id,), op, note,
                                  repeat=note or "rules already tried")
                if child is not None:
                    children.append(child)
            search.validate_many(children)

    def _plan(self, search: Search, program: Program, genome: G.Genome, k: int) -> Deferred:
        """Candidate ``k``'s proposal: its examples and seed drawn now, the LM asked later."""
        pool = list(search.trainset)
        search.rng.shuffle(pool)
        shown, size = [], 0
        for ex in pool:
            size += len(_examples_text(program, [ex]))
            if shown and size > MAX_EXAMPLE_CHARS:
                break
            shown.append(ex)
        seed, session = search.rng.randrange(2**31), search.reflection_session
        description, num_rules = search.description, self.num_rules

        def call() -> Proposal:
            return induce_rules(session, program, shown, num_rules=num_rules,
                                description=description, seed=seed)

        def finish(proposal: Proposal) -> Variation:
            if proposal.instruction is None:
                return None, "infer_rules", f"{proposal.reason}; reply: {proposal.raw[:300]!r}"
            iid, dup = search.archive.add_instruction(
                proposal.instruction, {"op": "infer_rules", "candidate": k})
            return G.with_instruction(genome, iid), "infer_rules", dup

        return Deferred(call, finish)
