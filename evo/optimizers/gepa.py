"""GEPA (Agrawal et al., 2025; the gepa library's ``optimize``) on the shared engine.

Each iteration picks a parent from the instance-level Pareto front of the validation matrix,
runs it on a minibatch of ``reflection_minibatch_size`` training examples (epoch-shuffled, as
gepa's batch sampler), shows the reflection LM those runs with the metric's feedback, and
scores the rewritten child on the same minibatch. A child strictly better there is validated in
full and joins the front. After a new candidate is accepted, a **merge** is scheduled: two
front candidates with a common ancestor are recombined component by component (instruction,
fixed demos, KNN demos), each component taken from the descendant that changed it from their
most recent common ancestor (gepa also skips an ancestor that beats both), and the
merge is validated when it does at least as well as both parents on a few validation examples.

evo programs have one module (one instruction), so gepa's round-robin and all-module
component selection coincide; the merge's "modules" are the genome's components.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from evo.kernels.pareto import pareto_frequencies
from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import add_child, plan_reflection, resolve
from evo.proposers.reflection import ReflectionStyle
from evo.search import genome as G
from evo.search.engine import OMIT_DEFAULT, Candidate, Search, SearchConfig, StopReason
from evo.search.events import CandidateEvaluated, ProposalRejected
from evo.search.strategies import Acceptance, NoWorse


@register_optimizer
class GEPA(SearchConfig):
    """Reflective prompt evolution with Pareto selection and merge (gepa's defaults)."""

    reflection_minibatch_size: int = Field(3, ge=1)
    candidate_selection: Literal["pareto", "current_best"] = "pareto"
    skip_perfect_score: bool = True
    perfect_score: float = 1.0
    use_merge: bool = True
    max_merge_invocations: int = Field(5, ge=0)
    merge_minibatch_size: int = Field(5, ge=1, description="validation examples a merge must "
                                                           "not lose on before full validation")
    reflection_style: ReflectionStyle = Field(
        "rules", description="'rewrite' is gepa's own meta-prompt (needs a strong reflection "
                             "LM); 'rules' asks for rules a small LM can write")
    max_demos: int = Field(0, ge=0, description="demo slots (0: gepa evolves instructions; the "
                                                "seed program's own demos are kept)")
    knn: bool = False
    parallel_proposals: int = Field(
        1, ge=1, json_schema_extra=OMIT_DEFAULT,
        description="reflective proposals per iteration (parents, minibatches and reflection "
                    "calls together, acceptance in order); the search depends on this number, "
                    "not on the concurrency")

    name: ClassVar[str] = "gepa"
    # A merge against the better of its two parents on a validation minibatch: no worse (a
    # child against its parent on the reflective minibatch: strictly better, SearchConfig's).
    merge_acceptance: ClassVar[Acceptance] = NoWorse()

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        # one reflection per child, each screened on a train minibatch first
        return math.ceil(max(0, self.budget.metric_calls - n_val)
                         / (self.reflection_minibatch_size + 1))

    def run(self, search: Search) -> None:
        k = self.reflection_minibatch_size
        if not search.trainset:
            raise ValueError("GEPA needs a trainset: its reflective minibatches are drawn from it")
        order: list[int] = []
        merges_due = merges_done = stale = 0
        tried_merges: set[tuple[int, int, int]] = set()
        k = min(k, len(search.trainset))
        while search.remaining() >= len(search.valset) + 2 * k and stale < self.stale_limit:
            search.next_iteration()
            if self.use_merge and merges_due and merges_done < self.max_merge_invocations:
                merges_due -= 1
                if _merge(search, self, tried_merges):
                    merges_done += 1
                    continue
            room = (search.remaining() - len(search.valset)) // (2 * k)
            round_: list[tuple[Candidate, list[int]]] = []
            for _ in range(max(1, min(self.parallel_proposals, room))):
                parent = search.select_parent("pareto" if self.candidate_selection == "pareto"
                                              else "best")
                if len(order) < k:  # gepa's EpochShuffledBatchSampler
                    perm = list(range(len(search.trainset)))
                    search.rng.shuffle(perm)
                    order += [i for i in perm if i not in order[:k]]  # no example twice a batch
                batch, order = order[:k], order[k:]
                round_.append((parent, batch))
            plans = []
            for (parent, batch), parent_scores in zip(
                    round_, search.train_scores_many(round_), strict=True):
                if self.skip_perfect_score and (parent_scores >= self.perfect_score).all():
                    search.emit(ProposalRejected(candidate=parent.id, op="reflection",
                                                 reason="parent is perfect on the minibatch"))
                    stale += 1
                    continue
                shown = [(search.trainset[i], search.train_cell(parent, i)) for i in batch]
                plans.append((parent, batch, parent_scores,
                              plan_reflection(search, parent, shown, self.reflection_style)))
            children = []
            for (parent, batch, parent_scores, _), (genome, op, note) in zip(
                    plans, resolve(search, [plan for *_, plan in plans]), strict=True):
                child = add_child(search, genome, (parent.id,), op, note,
                                  repeat=note or "prompt already generated")
                if child is None:
                    stale += 1
                    continue
                stale = 0
                children.append((child, batch, parent_scores))
            accepted = []
            for (child, batch, parent_scores), child_scores in zip(
                    children, search.train_scores_many([(c, b) for c, b, _ in children]),
                    strict=True):
                ok = self.acceptance.accepts(child_scores, parent_scores)
                search.emit(CandidateEvaluated(
                    candidate=child.id, train_minibatch=batch,
                    minibatch_score=float(child_scores.mean()),
                    parent_minibatch_score=float(parent_scores.mean()), accepted=ok))
                if ok:
                    accepted.append(child)
            merges_due += len(accepted)  # (validate_many validates them all, or ends the search)
            search.validate_many(accepted)
        if stale < self.stale_limit:
            search.stop(StopReason.BUDGET)


def ancestors(search: Search, cid: int) -> set[int]:
    """Every candidate ``cid`` descends from (its lineage through ``parents``)."""
    seen: set[int] = set()
    todo = list(search.candidates[cid].parents)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += search.candidates[p].parents
    return seen


def merge_genomes(a: Candidate, b: Candidate, ancestor: Candidate, search: Search
                  ) -> G.Genome | None:
    """gepa's system-aware merge: each component from the descendant that changed it from the
    common ancestor (both changed: the better one's); None if the merge equals a parent."""
    # the components are what a genome expresses: instruction, fixed demos, KNN demo count
    ca, cb, co = G.key(a.genome), G.key(b.genome), G.key(ancestor.genome)
    better = ca if a.val_score >= b.val_score else cb
    parts = [x if y == o else y if x == o else z
             for x, y, o, z in zip(ca, cb, co, better, strict=True)]
    instruction, demos, knn_k = parts
    if len(demos) + knn_k > search.archive.max_demos:
        knn_k = search.archive.max_demos - len(demos)
    genome = search.archive.genome(instruction, list(demos), knn_k)
    if G.key(genome) in (G.key(a.genome), G.key(b.genome)):
        return None
    return genome


def _merge(search: Search, config: GEPA, tried: set[tuple[int, int, int]]) -> bool:
    """Try one merge of two Pareto-front candidates; True if a merge was evaluated."""
    rows = search.parent_pool
    if len(rows) < 3:
        return False
    agg = search.val_scores(rows)
    frequencies = pareto_frequencies(search.selection_scores(rows), agg)
    front = [rows[i] for i in np.flatnonzero(frequencies)]
    pairs = [(i, j) for i in front for j in front if i < j]
    search.rng.shuffle(pairs)
    for i, j in pairs:
        common = ancestors(search, i) & ancestors(search, j)
        for o in sorted(common, reverse=True):  # the most recent (highest id) ancestor first
            anc = search.candidates[o]
            # gepa skips an ancestor that beats both descendants: nothing there to merge into
            if (i, j, o) in tried or not anc.genome or \
                    anc.val_score > max(search.candidates[i].val_score,
                                        search.candidates[j].val_score):
                continue
            tried.add((i, j, o))
            a, b, anc = search.candidates[i], search.candidates[j], search.candidates[o]
            genome = merge_genomes(a, b, anc, search)
            if genome is None or search.known(genome):
                continue
            child = search.add(genome, (i, j), "merge", f"ancestor={o}")
            assert child is not None
            disagree = [c for c in search.all_cols
                        if search.matrix.scores[i, c] != search.matrix.scores[j, c]]
            search.rng.shuffle(disagree)
            rest = [c for c in search.all_cols if c not in disagree]
            batch = sorted((disagree + search.rng.sample(rest, len(rest)))
                           [:config.merge_minibatch_size])
            scores = search.evaluate(child, batch)
            totals = {p: float(search.matrix.scores[p, batch].sum()) for p in (i, j)}
            better = max(totals, key=totals.__getitem__)
            best_parent = totals[better]
            accepted = config.merge_acceptance.accepts(scores, search.matrix.scores[better, batch])
            search.emit(CandidateEvaluated(candidate=child.id, minibatch=batch,
                                           minibatch_score=float(scores.mean()),
                                           parent_minibatch_score=best_parent / len(batch),
                                           accepted=accepted))
            if accepted:
                search.validate(child)
            return True
    return False
