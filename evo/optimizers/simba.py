"""SIMBA (DSPy's Stochastic Introspective Mini-Batch Ascent) on the shared engine.

Each of ``max_steps`` steps takes the next minibatch of ``bsize`` training examples
(epoch-shuffled, as DSPy), and for each example draws ``num_candidates`` programs from the top
programs so far (softmax over their mean training score, ``temperature_for_sampling``; the seed
always among them). Each draw is a *trajectory*: the program's cell on that example in the
search's training score matrix, paid once however often it is drawn. Examples are sorted by how
much their trajectories disagree (max - min score, then max score, then max - mean), and for the
most variable ones a child is built from a source program (softmax, ``temperature_for_candidates``)
after dropping a few of its demos at random (Poisson, as DSPy), by one of two strategies:

* **append a demo**: the best trajectory on that example, with the program's own outputs, becomes
  the last demo (skipped when its score is at or below the step's 10th percentile);
* **append a rule**: the reflection LM compares the better and the worse trajectory on that
  example and writes one rule ("if the input ..., then ..."), added to the instruction's rules
  list (skipped unless the better one is above the 10th and the worse below the 90th percentile).

Up to ``num_candidates + 1`` children per step are scored on the step's minibatch; the best is the
step's winner. At the end, winners evenly spaced over the steps (DSPy's choice, at most
``num_candidates`` besides the seed) are validated in full and the engine keeps the best.

Where evo differs from DSPy (``dspy/teleprompt/simba.py``), and why:

* the budget is metric calls. A step's minibatch is the largest (up to ``bsize``) whose worst-case
  cost fits an even share of what is left after reserving the final validations, so a budget of a
  few hundred calls still takes several steps; DSPy's defaults cost ~3,300 calls;
* DSPy samples each trajectory at temperature 1.0 (``num_candidates`` rollouts of one program
  differ); evo's cells are deterministic and paid once, so the variance comes from drawing
  different programs, as the later steps' pools do. Where an example's runs all agree and fail
  (on the first step, the seed alone, every example), the rule strategy contrasts the failed run
  with the correct output instead of skipping, as DSPy's one-sided case does;
* a program's score for sampling is its mean over every training cell it has (DSPy: its scores on
  the minibatch it was created on, 0 for the seed);
* the final choice is on the validation set (DSPy: the whole training set);
* a rule is one bullet of the instruction's ``Rules:`` list (at most :data:`MAX_RULES`, oldest
  dropped), written from a short meta-prompt a small model can follow, and refused (a
  ``proposal_rejected`` event, no child) when it is a label, an answer, a quote of the example or
  a copy of a rule already there (:func:`evo.proposers.reflection.bad_text`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field

from evo.data import Example
from evo.lm.base import LMError, LMRequest, LMUnavailableError
from evo.lm.session import LMSession
from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import Deferred, Variation, add_child, resolve
from evo.program import Program
from evo.proposers.reflection import (
    Proposal,
    bad_text,
    describe_task,
    jaccard,
    join_rules,
    rule_writer_request,
    split_rules,
)
from evo.search import genome as G
from evo.search.engine import Candidate, Search, SearchConfig
from evo.search.evaluate import Cell
from evo.search.events import CandidateEvaluated

__all__ = ["MAX_RULES", "SIMBA", "parse_rules", "simba_rule"]

MAX_RULES = 6  # rules an instruction keeps (the oldest go first), as reflection's default
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)")


def parse_rules(raw: str, program: Program, shown: Sequence[tuple[Example, Cell | None]],
                n: int) -> tuple[list[str], list[str]]:
    """Up to ``n`` usable rules in an LM reply (bullet lines; a reply without bullets is read as
    one rule per line) and why the others were refused: a label or an answer, a quote of an
    example in ``shown``, longer than 300 characters, or a copy of a rule ``program`` already
    has (or of another in the reply)."""
    lines = [m.group(1) for m in map(_BULLET.match, raw.splitlines()) if m]
    if not lines:
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
    core, old = split_rules(program.instruction)
    rules: list[str] = []
    reasons: list[str] = []
    for line in lines:
        rule = line.strip().strip('"').strip()
        problem = bad_text(rule, program, shown)  # type: ignore[arg-type]
        if problem is None and len(rule) > 300:
            problem = "too long"
        if problem is None and any(jaccard(rule, r) > 0.8 for r in [core, *old, *rules]):
            problem = "repeats a rule"
        if problem:
            reasons.append(problem)
        elif len(rules) < n:
            rules.append(rule[0].upper() + rule[1:])
    return rules, reasons


def _answer(cell: Cell | None) -> str:
    if cell is None:
        return "(not available)"
    text = cell.prediction.text.strip().replace("\n", " ")[:200] or "(empty)"
    feedback = f"; {cell.feedback}" if cell.feedback else ""
    return f"{text} (score {cell.score:g}{feedback})"


def rule_request(program: Program, example: Example, better: Cell | None, worse: Cell | None, *,
                 description: str, seed: int, temperature: float = 0.7) -> LMRequest:
    """SIMBA's rule meta-prompt (DSPy's ``OfferFeedback``, cut to what a small model follows):
    the task, the instruction, one input with its correct output, a better and a worse answer to
    it; the reply is one general rule."""
    gold = "; ".join(f"{k}: {v}" for k, v in example.outputs.items())
    prompt = (
        f"An assistant does this task:\n{describe_task(program, description)}\n\n"
        f"Its current instruction is:\n\"\"\"\n{program.instruction.strip()}\n\"\"\"\n\n"
        f"Input:\n{program.render_inputs(example)}\nCorrect output: {gold}\n\n"
        f"A better attempt answered: {_answer(better)}\n"
        f"A worse attempt answered: {_answer(worse)}\n\n"
        "Write one rule that would make the assistant answer like the better attempt. The rule "
        "is one sentence of the form \"If the input ..., then ...\" and general: it must help "
        "with many other inputs of this kind, so do not mention this particular input.\n"
        "Reply with the rule only, on one line starting with \"- \"."
    )
    return rule_writer_request(prompt, max_tokens=120, temperature=temperature, seed=seed)


def simba_rule(session: LMSession, program: Program, example: Example, better: Cell | None,
               worse: Cell | None, *, description: str = "", seed: int = 0) -> Proposal:
    """SIMBA's ``append_a_rule``: ``program``'s instruction with one rule the reflection LM drew
    from comparing ``better`` and ``worse`` (cells on ``example``; one may be None), or None with
    the reason the reply was refused."""
    try:
        raw = session.complete(rule_request(program, example, better, worse,
                                            description=description, seed=seed)).text
    except LMUnavailableError:
        raise
    except LMError as exc:
        return Proposal(None, f"reflection LM failed: {exc}", "")
    rules, reasons = parse_rules(raw, program, [(example, better or worse)], 1)
    if not rules:
        why = ", ".join(sorted(set(reasons))) or "no rule in the reply"
        return Proposal(None, f"no usable rule ({why})", raw)
    core, old = split_rules(program.instruction)
    return Proposal(join_rules(core, (old + rules)[-MAX_RULES:]), "ok", raw)


@dataclass(frozen=True)
class _Draw:
    """One trajectory: a program of the pool (its index there) and its cell on the example."""

    program: int
    cell: Cell


@register_optimizer
class SIMBA(SearchConfig):
    """Stochastic introspective mini-batch ascent: append demos and rules where trajectories
    disagree (DSPy's SIMBA; its parameter names and defaults)."""

    bsize: int = Field(32, ge=1, description="minibatch size (cut to fit the budget)")
    num_candidates: int = Field(6, ge=1, description="trajectories per example and new "
                                                     "candidates per step (plus one)")
    max_steps: int = Field(8, ge=1)
    max_demos: int = Field(4, ge=0, description="demos a program holds before some are dropped "
                                                "(0: rules only)")
    temperature_for_sampling: float = Field(0.2, gt=0, description="softmax temperature of "
                                            "the programs drawn for trajectories")
    temperature_for_candidates: float = Field(0.2, gt=0, description="softmax temperature of "
                                              "the source program of a new candidate")
    knn: bool = False

    name: ClassVar[str] = "simba"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return self.max_steps * (self.num_candidates + 1)  # a rule per child, at most

    def run(self, search: Search) -> None:
        if not search.trainset:
            raise ValueError("SIMBA needs a trainset: its minibatches are drawn from it")
        _Simba(self, search).run()


class _Simba:
    """One SIMBA run: the program pool, the data order and the random streams."""

    def __init__(self, config: SIMBA, search: Search) -> None:
        self.c, self.s = config, search
        self.rng = search.rng
        self.np_rng = np.random.default_rng(search.rng.randrange(2**32))
        self.programs: list[Candidate] = [search.seed_candidate]
        self.winners: list[Candidate] = [search.seed_candidate]
        self.order = list(range(len(search.trainset)))
        self.rng.shuffle(self.order)
        self.at = 0
        self.strategies = ["demo", "rule"] if search.archive.max_demos > 0 else ["rule"]
        self.val_size = max(1, len(search.all_cols))

    # ---- scores and sampling (DSPy's calc_average_score, top_k_plus_baseline, softmax) --------
    def mean(self, cand: Candidate) -> float:
        known = [i for i in range(len(self.s.trainset)) if self.s.train_known(cand, i)]
        return float(np.mean([self.s.train_cell(cand, i).score for i in known])) if known else 0.0

    def top(self, means: dict[int, float]) -> list[int]:
        """Indices of the ``num_candidates`` best programs, the seed (0) always among them."""
        ranked = sorted(range(len(self.programs)), key=lambda p: means[p], reverse=True)
        top = ranked[:self.c.num_candidates]
        if 0 not in top:
            top[-1] = 0
        return list(dict.fromkeys(top))

    def softmax(self, idxs: list[int], means: dict[int, float], temperature: float) -> int:
        exps = [math.exp(means[i] / temperature) for i in idxs]
        return self.rng.choices(idxs, weights=[e / sum(exps) for e in exps], k=1)[0]

    # ---- the budget ---------------------------------------------------------------------------
    def batch_size(self, steps_left: int, reserve: int, pool: int) -> int:
        """The largest minibatch (up to ``bsize``) whose worst-case cost, ``b`` trajectories per
        drawn program plus ``min(b, num_candidates + 1)`` children on ``b`` examples, fits an
        even share of the budget left after ``reserve``; 0 when not even one example fits."""
        left = self.s.remaining() - reserve
        t, c = min(self.c.num_candidates, pool), self.c.num_candidates + 1

        def cost(b: int) -> int:
            return b * t + min(b, c) * b

        share = max(left / steps_left, cost(1))
        b = min(self.c.bsize, len(self.s.trainset))
        while b > 0 and (cost(b) > share or cost(b) > left):
            b -= 1
        return b

    def next_batch(self, b: int) -> list[int]:
        if self.at + b > len(self.order):
            self.rng.shuffle(self.order)
            self.at = 0
        batch = self.order[self.at:self.at + b]
        self.at += b
        return batch

    # ---- one step -----------------------------------------------------------------------------
    def run(self) -> None:
        s, c = self.s, self.c
        finals = max(1, min(c.num_candidates, c.max_steps, s.remaining() // 2 // self.val_size))
        reserve = finals * self.val_size
        for step in range(c.max_steps):
            means = {i: self.mean(p) for i, p in enumerate(self.programs)}
            top = self.top(means)
            b = self.batch_size(c.max_steps - step, reserve, len(top))
            if b == 0:
                break
            s.next_iteration()
            self.step(self.next_batch(b), top, means)
        self.validate_winners()

    def step(self, batch: list[int], top: list[int], means: dict[int, float]) -> None:
        s, c = self.s, self.c
        # trajectories: DSPy's loop order (each rollout model, then each example)
        draws = [(j, self.softmax(top, means, c.temperature_for_sampling))
                 for _ in range(c.num_candidates) for j in range(len(batch))]
        jobs = {(p, batch[j]): None for j, p in draws}
        s.train_scores_many([(self.programs[p], [i]) for p, i in jobs])
        buckets = [[_Draw(p, s.train_cell(self.programs[p], batch[j])) for jj, p in draws
                    if jj == j] for j in range(len(batch))]
        scores = [d.cell.score for bucket in buckets for d in bucket]
        p10, p90 = np.percentile(scores, 10), np.percentile(scores, 90)
        ranked = []
        for j, bucket in enumerate(buckets):
            bucket.sort(key=lambda d: d.cell.score, reverse=True)
            hi, lo = bucket[0].cell.score, bucket[-1].cell.score
            avg = sum(d.cell.score for d in bucket) / len(bucket)
            ranked.append(((hi - lo, hi, hi - avg), j, bucket))
        ranked.sort(key=lambda r: r[0], reverse=True)

        means = {i: self.mean(p) for i, p in enumerate(self.programs)}
        children: list[Candidate] = []
        todo = [(batch[j], bucket) for _, j, bucket in ranked]
        while todo and len(children) < c.num_candidates + 1:
            round_, todo = todo[:c.num_candidates + 1 - len(children)], \
                todo[c.num_candidates + 1 - len(children):]
            plans = [self.plan(i, bucket, p10, p90, self.top(means), means)
                     for i, bucket in round_]
            for (source, note), (genome, op, why) in zip(
                    [(src, note) for src, note, _ in plans],
                    resolve(s, [plan for *_, plan in plans]), strict=True):
                child = add_child(s, genome, (source.id,), op, why or note,
                                  repeat=why or None)
                if child is not None:
                    children.append(child)
        if not children:
            return
        results = s.train_scores_many([(child, batch) for child in children])
        means_now = [float(r.mean()) for r in results]
        best = int(np.argmax(means_now))
        for k, (child, score) in enumerate(zip(children, means_now, strict=True)):
            s.emit(CandidateEvaluated(candidate=child.id, train_minibatch=list(batch),
                                      minibatch_score=score, accepted=k == best))
        self.programs += children
        self.winners.append(children[best])

    def plan(self, example: int, bucket: list[_Draw], p10: float, p90: float, top: list[int],
             means: dict[int, float]) -> tuple[Candidate, str, Variation | Deferred]:
        """The child of one bucket: its source, a note, and its variation (a rule's LM call
        deferred). Every random draw is made here, in order."""
        s, archive = self.s, self.s.archive
        source = self.programs[self.softmax(top, means, self.c.temperature_for_candidates)]
        instruction, demos, knn_k = G.key(source.genome)
        demos = list(demos)
        cap = self.c.max_demos if self.c.max_demos > 0 else 3
        n_drop = min(max(int(self.np_rng.poisson(len(demos) / cap)), int(len(demos) >= cap)),
                     len(demos))
        dropped = {self.rng.randrange(len(demos)) for _ in range(n_drop)}
        demos = [d for k, d in enumerate(demos) if k not in dropped]
        strategy = self.rng.choice(self.strategies)
        good, bad = bucket[0], bucket[-1]
        note = f"{strategy} on train example {example}" + \
            (f", {len(dropped)} demos dropped" if dropped else "")
        slots = archive.max_demos - knn_k

        def genome(iid: int, ids: list[int]) -> G.Genome:
            return archive.genome(iid, ids[-slots:] if slots > 0 else [], knn_k)

        if strategy == "demo":
            pred = good.cell.prediction
            if good.cell.score > p10 and pred.ok and slots > 0:
                demo = archive.demo_id(s.trainset[example], pred.outputs)
                if demo not in demos:
                    return source, note, (genome(instruction, demos + [demo]), "simba_demo", "")
            # DSPy keeps the candidate of a skipped strategy: the source less its dropped demos
            return source, note, (genome(instruction, demos), "simba_drop", "")
        # evo's cells do not vary as DSPy's temperature-1.0 rollouts do: runs that agree and
        # fail get a rule from the failed run against the correct output
        agree_and_fail = good.cell.score == bad.cell.score < 1.0
        if (good.cell.score <= p10 or bad.cell.score >= p90) and not agree_and_fail:
            return source, note, (genome(instruction, demos), "simba_drop", "")  # DSPy skips
        better, worse = good.cell, bad.cell
        if good.cell.score <= bad.cell.score:  # one trajectory only: show it on its side
            better, worse = (better, None) if good.cell.score > p90 else (None, worse)
        program = archive.program(source.genome)
        session, description = s.reflection_session, s.description
        seed, ex = self.rng.randrange(2**31), s.trainset[example]

        def call() -> Proposal:
            return simba_rule(session, program, ex, better, worse, description=description,
                              seed=seed)

        def finish(proposal: Proposal) -> Variation:
            if proposal.instruction is None:
                return None, "simba_rule", f"{proposal.reason}; reply: {proposal.raw[:300]!r}"
            iid, dup = archive.add_instruction(proposal.instruction, {
                "op": "simba_rule", "parent": source.id, "iteration": s.iteration})
            return genome(iid, demos), "simba_rule", dup

        return source, note, Deferred(call, finish)

    def validate_winners(self) -> None:
        """DSPy's final pick: ``num_candidates + 1`` winners evenly spaced over the steps (the
        seed first), as many as the budget validates."""
        m = len(self.winners) - 1
        n = 1 + min(self.c.num_candidates, self.s.remaining() // self.val_size)
        if m < 1 or n < 2:
            return
        idxs = dict.fromkeys(round(i * m / (n - 1)) for i in range(n))
        self.s.validate_many([self.winners[i] for i in idxs if i != 0])
