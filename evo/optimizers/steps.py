"""The steps optimizers share, each written once.

* **children**: :func:`add_child` registers a proposed genome (a failed proposal, or one that
  repeats a known prompt, is reported as ``proposal_rejected`` and costs nothing);
  :func:`reflect` is GEPA's reflective mutation; :func:`proposal_failure` says why an LM's
  proposal was refused; :func:`plan_reflection` defers its LM call (a :class:`Deferred`) and
  :func:`resolve` makes a round's deferred calls together, finishing them in order;
* **acceptance**: :func:`screen` scores a child on a validation minibatch and validates it in
  full when the acceptance strategy (:mod:`evo.search.strategies`) lets it through;
  :func:`screen_many` does it for a round of children, their calls together;
* **racing**: :func:`race_many` compares a round of children with the incumbent on growing
  prefixes of validation (successive rungs), dropping each as soon as it is confidently worse,
  so full validation is spent only on contenders;
* **demo sets**: :func:`labeled_demos`, :func:`bootstrap` and :func:`compile_bootstrap` (DSPy's
  BootstrapFewShot), and :func:`demo_set`, DSPy's schedule of candidate demo sets that
  BootstrapFewShotWithRandomSearch and MIPROv2 both draw from; :func:`try_validate`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evo.data import Example
from evo.program import Program
from evo.proposers.reflection import Proposal, ReflectionStyle, propose
from evo.search import genome as G
from evo.search.engine import Candidate, Search
from evo.search.evaluate import BudgetExhausted, Cell
from evo.search.events import CandidateEvaluated, CandidateRaced, ProposalRejected
from evo.search.genome import Genome
from evo.search.strategies import Acceptance, StrictImprovement

STRICT = StrictImprovement()
# ---- children ---------------------------------------------------------------------------------


def proposal_failure(proposal: Proposal) -> str:
    """Why an LM's proposal was refused, with the start of its reply (an event's ``reason``)."""
    return f"{proposal.reason}; reply: {proposal.raw[:300]!r}"


def add_child(search: Search, genome: Genome | None, parents: tuple[int, ...], op: str,
              note: str = "", *, repeat: str | None = None) -> Candidate | None:
    """Register ``genome``, proposed from ``parents`` by ``op``, as a new candidate, or None:

    * ``genome`` None (the proposal failed; ``note`` says why): a ``proposal_rejected`` event;
    * its prompt was generated before: nothing is paid; with ``repeat``, a ``proposal_rejected``
      event with that reason (an LM proposal that brought nothing new), without it, silently
      (a cheap operator's repeat is routine).
    """
    if genome is None:
        search.emit(ProposalRejected(candidate=parents[0], op=op, reason=note))
        return None
    if search.known(genome):
        if repeat is not None:
            search.emit(ProposalRejected(candidate=parents[0], op=op, reason=repeat))
        return None
    return search.add(genome, parents, op, note)


Variation = tuple[Genome | None, str, str]  # (child genome or None, operator, note)


@dataclass(frozen=True)
class Deferred:
    """A proposal whose LM call is still to be made: :attr:`call` asks the LM and changes no
    search state (it may run in a thread, beside other proposals); :attr:`finish` turns its
    answer into the child's :data:`Variation`, in order (archiving the new instruction)."""

    call: Callable[[], Any]
    finish: Callable[[Any], Variation]


def resolve(search: Search, plans: Sequence[Variation | Deferred]) -> list[Variation]:
    """The variations of ``plans``: the deferred ones' LM calls made together
    (:meth:`Search.concurrently`), then each finished in order, so the archive and the
    children are the same at any concurrency."""
    deferred = [p for p in plans if isinstance(p, Deferred)]
    answers = iter(search.concurrently([d.call for d in deferred]))
    return [p.finish(next(answers)) if isinstance(p, Deferred) else p for p in plans]


def plan_reflection(search: Search, parent: Candidate, shown: Sequence[tuple[Example, Cell]],
                    style: ReflectionStyle) -> Deferred:
    """:func:`reflect`, deferred: its seed is drawn now (from the search's stream, in order),
    the reflection LM is asked when :attr:`Deferred.call` runs."""
    assert isinstance(parent.program, Program)
    program, session = parent.program, search.reflection_session
    description, seed = search.description, search.rng.randrange(2**31)

    def call() -> Proposal:
        return propose(session, program, shown, style=style, description=description, seed=seed)

    def finish(proposal: Proposal) -> Variation:
        if proposal.instruction is None:
            return None, "reflection", proposal_failure(proposal)
        iid, dup = search.archive.add_instruction(
            proposal.instruction, {"op": "reflection", "parent": parent.id,
                                   "iteration": search.iteration})
        return G.with_instruction(parent.genome, iid), "reflection", dup

    return Deferred(call, finish)


def reflect(search: Search, parent: Candidate, shown: Sequence[tuple[Example, Cell]],
            style: ReflectionStyle) -> Variation:
    """GEPA's reflective mutation of ``parent``'s instruction from ``shown`` (example, cell)
    pairs: the child genome (None if the proposal failed the sanity filter), "reflection", and
    a note (why it failed, or that it repeats an archived text)."""
    plan = plan_reflection(search, parent, shown, style)
    return plan.finish(plan.call())


# ---- acceptance -------------------------------------------------------------------------------

def screen(search: Search, child: Candidate, parent: Candidate, batch: list[int], *,
           acceptance: Acceptance = STRICT) -> bool:
    """Minibatch acceptance: score ``child`` on validation columns ``batch`` (the parent's cells
    there are already paid) and validate it in full when ``acceptance`` lets it through (by
    default a strict improvement). Returns whether it was accepted. Raises
    :class:`~evo.search.evaluate.BudgetExhausted` when the budget cannot pay for it."""
    child_scores = search.evaluate(child, batch)
    parent_scores = search.matrix.scores[parent.id, batch]
    accepted = acceptance.accepts(child_scores, parent_scores)
    search.emit(CandidateEvaluated(candidate=child.id, minibatch=[int(c) for c in batch],
                                   minibatch_score=float(child_scores.mean()),
                                   parent_minibatch_score=float(parent_scores.mean()),
                                   accepted=accepted, cell_errors=search.cell_errors(child, batch)))
    if accepted:
        search.validate(child)
    return accepted


def screen_many(search: Search, trials: Sequence[tuple[Candidate, Candidate, list[int]]], *,
                acceptance: Acceptance = STRICT) -> list[Candidate]:
    """:func:`screen` for a round of ``(child, parent, minibatch)`` trials: the children's
    minibatch calls go out together, acceptance is decided in order, and the accepted ones are
    validated together (:meth:`Search.validate_many`). Returns the accepted children. Raises
    :class:`~evo.search.evaluate.BudgetExhausted` when the budget cannot pay for them all."""
    if not trials:
        return []
    scores = search.evaluate_many([(child, batch) for child, _, batch in trials])
    accepted = []
    for (child, parent, batch), child_scores in zip(trials, scores, strict=True):
        parent_scores = search.matrix.scores[parent.id, batch]
        ok = acceptance.accepts(child_scores, parent_scores)
        search.emit(CandidateEvaluated(
            candidate=child.id, minibatch=[int(c) for c in batch],
            minibatch_score=float(child_scores.mean()),
            parent_minibatch_score=float(parent_scores.mean()), accepted=ok,
            cell_errors=search.cell_errors(child, batch)))
        if ok:
            accepted.append(child)
    search.validate_many(accepted)
    return accepted


# ---- racing -----------------------------------------------------------------------------------

def rungs(n: int, start: int) -> list[int]:
    """Racing's rung sizes over ``n`` validation examples: ``start``, twice that, four times
    that ... and finally ``n`` (successive halving's schedule of growing subsets).

    >>> rungs(40, 8)
    [8, 16, 32, 40]
    """
    sizes, size = [], max(1, min(start, n))
    while size < n:
        sizes.append(size)
        size *= 2
    return sizes + [n]


def race_signal(search: Search, child: Candidate, incumbent: Candidate, cols: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The scores a race compares at ``cols``: the metric's score plus the model's probability
    of the gold answer when both candidates have that dense score on every column, else the
    metric's scores alone; and whether they were dense.

    The sum keeps the user's metric in charge (a right answer outweighs any change in
    probability) while the dense part grades the examples where both are right or both wrong,
    which 0/1 scores call ties: far less noise per example. P(gold) alone is not enough: a
    candidate can raise the gold label's mean probability and still answer fewer examples
    right (measured on TREC with the 0.5B model)."""
    index = list(cols)
    a, b = search.matrix.scores[child.id, index], search.matrix.scores[incumbent.id, index]
    da, db = search.matrix.dense[child.id, index], search.matrix.dense[incumbent.id, index]
    if not (np.isnan(da).any() or np.isnan(db).any()):
        return a + da, b + db, True
    return a, b, False


def keeps_racing(child: np.ndarray, incumbent: np.ndarray, z: float) -> bool:
    """The sequential test of a race: a child stays in while its paired mean difference from
    the incumbent, plus ``z`` standard errors, is not below zero (it is not confidently
    worse). ``z`` = 0 drops every child that is behind at all; a larger ``z`` is more patient.

    >>> keeps_racing(np.array([1., 0, 1, 1]), np.array([1., 1, 1, 1]), 0.5)
    False
    >>> keeps_racing(np.array([1., 0, 1, 1]), np.array([1., 1, 0, 1]), 0.5)
    True
    """
    d = np.asarray(child, dtype=np.float64) - np.asarray(incumbent, dtype=np.float64)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return float(d.mean()) + z * sd / math.sqrt(len(d)) >= -1e-12


@dataclass(frozen=True)
class Race:
    """How one child's race ended: the rungs it reached (``[examples, child mean, incumbent
    mean]`` each) and its outcome ("validated", "dropped" or "out of budget")."""

    candidate: Candidate
    rungs: list[list[float]]
    outcome: str


def race_many(search: Search, children: Sequence[Candidate], *, start: int, z: float
              ) -> list[Race]:
    """Race a round of ``children`` against the incumbent (the best validated candidate, fixed
    for the round) over growing prefixes of each child's own shuffle of the validation examples
    that choose (:meth:`Search.race_order_for`; :func:`rungs` from ``start``): at each rung the
    children still in are scored together, the ones that reached the whole validation set join
    the population, and the ones confidently worse (:func:`keeps_racing`), or past the first
    rung better on no example, are dropped. A child whose next rung no longer fits the budget
    stops there. Each child's race ends with a ``candidate_raced`` event. Returns each child's
    :class:`Race`, in the order the races ended."""
    incumbent = search.best
    orders = {child.id: search.race_order_for(child) for child in children}
    n = len(search.all_cols)
    records: dict[int, list[list[float]]] = {c.id: [] for c in children}
    dense: dict[int, bool] = {}
    ended: list[Race] = []

    def end(child: Candidate, outcome: str) -> None:
        search.emit(CandidateRaced(candidate=child.id, incumbent=incumbent.id,
                                   rungs=records[child.id], dense=dense.get(child.id, False),
                                   outcome=outcome))
        ended.append(Race(child, records[child.id], outcome))

    alive = list(children)
    schedule = rungs(n, start)
    for size in schedule:
        fit, left = [], search.remaining()
        for child in alive:
            need = len(search.matrix.missing(child.id, orders[child.id][:size]))
            if need > left:
                end(child, "out of budget")
                continue
            fit.append(child)
            left -= need
        alive, going = fit, []
        if not alive:
            break
        try:
            search.evaluate_many([(child, orders[child.id][:size]) for child in alive])
        except BudgetExhausted:  # an lm_calls cap (calibration calls) hit first: races end
            for child in alive:
                end(child, "out of budget")
            raise
        for child in alive:
            a, b, dense[child.id] = race_signal(search, child, incumbent,
                                                orders[child.id][:size])
            records[child.id].append([size, float(a.mean()), float(b.mean())])
            if size == n:
                search.accept(child)
                end(child, "validated")
            elif keeps_racing(a, b, z) and (size == schedule[0] or bool((a > b).any())):
                # past the first rung a contender must beat the incumbent somewhere: a child
                # that only ties it (the same answers so far) is not paid a full validation
                going.append(child)
            else:
                end(child, "dropped")
        alive = going
    return ended


# ---- demo sets --------------------------------------------------------------------------------

def try_validate(search: Search, genome: Genome, op: str, parents: tuple[int, ...] = (0,),
                 note: str = "") -> Candidate | None:
    """Add ``genome`` and validate it when the budget allows; None if it is known or does not
    fit."""
    if search.known(genome) or not search.can_validate():
        return None
    cand = search.add(genome, parents, op, note)
    assert cand is not None
    search.validate(cand)
    return cand


def labeled_demos(search: Search, rng: random.Random, k: int) -> list[int]:
    """``k`` distinct random pool ids (labeled training examples as demos)."""
    ids = list(range(len(search.archive.pool)))
    return rng.sample(ids, min(k, len(ids)))


def bootstrap(search: Search, teacher: Candidate, order: Sequence[int], n: int, *,
              threshold: float = 1.0, reserve: int | None = None) -> list[int]:
    """Demo ids of the first ``n`` training examples (in ``order``) on which ``teacher`` passes
    the metric (score >= ``threshold``), each with the teacher's outputs. Stops early, keeping
    ``reserve`` metric calls (default: enough to validate one candidate)."""
    reserve = len(search.valset) if reserve is None else reserve
    demos: list[int] = []
    for i in order:
        if len(demos) >= n:
            break
        if not search.train_known(teacher, i) and search.remaining() <= reserve:
            break
        score = float(search.train_scores(teacher, [i])[0])
        prediction = search.train_cell(teacher, i).prediction
        if score >= threshold and prediction.ok:
            demos.append(search.archive.demo_id(search.trainset[i], prediction.outputs))
    return demos


def compile_bootstrap(search: Search, order: Sequence[int], max_boot: int, max_labeled: int,
                      threshold: float, rng: random.Random, reserve: int | None = None) -> Genome:
    """BootstrapFewShot's compile: bootstrapped demos, then labeled ones up to ``max_labeled``
    (all within the genome's demo slots)."""
    slots = search.archive.max_demos
    boot = bootstrap(search, search.seed_candidate, order, min(max_boot, slots),
                     threshold=threshold, reserve=reserve)
    used = {search.archive.demo(d).source_id for d in boot}
    rest = [i for i, ex in enumerate(search.archive.pool) if ex.id not in used]
    fill = min(max_labeled - len(boot), slots - len(boot), len(rest))
    demos = boot + (rng.sample(rest, fill) if fill > 0 else [])
    return search.archive.genome(search.seed_candidate.genome[G.INSTRUCTION], demos)


def demo_set(search: Search, seed: int, *, max_bootstrapped: int, max_labeled: int,
             threshold: float, reserve: int | None = None) -> tuple[Genome, str]:
    """Candidate program ``seed`` of DSPy's demo-set schedule (BootstrapFewShotWithRandomSearch's
    and MIPROv2's): -3 zero-shot, -2 labeled demos only, -1 bootstrapped in training order, and
    from 0 on a bootstrap of the shuffled training set with 1..``max_bootstrapped`` demos. Each
    draws from its own stream (the search's seed and ``seed``), so a schedule is the same
    whatever ran before it. Returns the genome (the seed's instruction) and its operator name."""
    archive = search.archive
    rng = random.Random(search.seed * 10_007 + seed)
    instruction = search.seed_candidate.genome[G.INSTRUCTION]
    if seed == -3:
        return archive.genome(instruction, []), "zero_shot"
    if seed == -2:
        return archive.genome(instruction, labeled_demos(
            search, rng, min(max_labeled, archive.max_demos))), "labeled_demos"
    order = list(range(len(search.trainset)))
    size = max_bootstrapped
    if seed >= 0:
        rng.shuffle(order)
        size = rng.randint(1, max_bootstrapped)
    return compile_bootstrap(search, order, size, max_labeled, threshold, rng,
                             reserve=reserve), "bootstrapped_demos"
