"""Ensembles of optimizers and of programs.

:class:`Ensemble` runs several optimizers one after another on **one** search: the same score
matrix, cache and budget (each member gets an equal share of what is left when its turn comes,
so a member that stops early leaves its rest to the next), and a prompt one member already
judged is never paid for again by another. The result is then either the best candidate any
member found (``combine="best"``) or a voting
:class:`~evo.program.ensemble.EnsembleProgram` of up to ``size`` validated candidates, chosen
by greedy forward selection (Caruana et al., 2004) on the
validation predictions already in the matrix, no LM call needed; the vote is kept only when it
beats the best single candidate on validation.

Members run in turn by default: the local model serves one call at a time, and sharing the
matrix as they go is what makes them cheaper together. With ``parallel=True`` and an LM that
serves calls in parallel (``lm.concurrent``, e.g. a hosted API), each member runs in its own
thread on its own search (own matrix and archive, a fixed share of the budget, the seed's
validation cells given to it free, the one cache and session shared), and their candidates and
cells are then merged into the ensemble's search before the vote. Results do not depend on the
thread timing: each member's decisions read only its own search.

The ensemble's archive settings (``max_demos``, ``knn``, ``encoder``) apply to every member;
each member's own search parameters are its own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

from pydantic import Field

from evo.optimizers.evolution import Evolution
from evo.optimizers.fewshot import BootstrapFewShotWithRandomSearch, KNNFewShot
from evo.optimizers.registry import register_optimizer
from evo.program import Program
from evo.program.ensemble import EnsembleProgram
from evo.search.engine import Candidate, Search, SearchConfig
from evo.search.evaluate import Budget, BudgetExhausted, Cell
from evo.search.events import EnsembleRejected, MemberSkipped, MemberStarted


def _default_members() -> list[SearchConfig]:
    return [KNNFewShot(), BootstrapFewShotWithRandomSearch(), Evolution()]


@register_optimizer
class Ensemble(SearchConfig):
    """Several optimizers on one shared search; the best candidate or a vote of the best."""

    members: list[SearchConfig] = Field(default_factory=_default_members)
    combine: Literal["best", "vote"] = "vote"
    size: int = Field(3, ge=3, description="programs in the vote at most (odd: the best, then "
                                           "pairs)")
    vote: Literal["majority", "weighted"] = "majority"
    parallel: bool = Field(False, description="run members in threads when the LM serves "
                                              "calls in parallel (lm.concurrent)")

    name: ClassVar[str] = "ensemble"

    def run(self, search: Search) -> None:
        if not self.members:
            raise ValueError("Ensemble needs at least one member optimizer")
        members = [m for m in self.members
                   if not (isinstance(m, KNNFewShot) and not search.archive.knn)]
        if len(members) < len(self.members):
            search.emit(MemberSkipped(
                optimizer="knn_fewshot",
                reason="this search has no KNN demos (knn=False or max_demos=0)"))
        for m in members:
            if isinstance(m, Ensemble) and m.combine == "vote":
                raise ValueError("an Ensemble member cannot itself vote (combine='vote'); the "
                                 "outer Ensemble votes over every member's candidates")
        if self.parallel:
            if getattr(search.task_session.lm, "concurrent", False):
                _run_parallel(search, members)
                members = []
            else:
                search.emit(MemberStarted(
                    member=-1, optimizer="", share=0,
                    note="parallel=True but the LM serves one call at a time: members run in "
                         "turn"))
        for i, member in enumerate(members):
            share = search.remaining() // (len(members) - i)
            search.emit(MemberStarted(member=i, optimizer=member.name, share=share))
            with search.limit(share):
                try:
                    member.run(search)
                except BudgetExhausted:
                    pass
        if self.combine == "vote":
            vote_ensemble(search, self.size, self.vote)


def _run_parallel(search: Search, members: list[SearchConfig]) -> None:
    """Each member on its own search in a thread, then merged into ``search`` (module doc)."""
    share = search.remaining() // len(members)
    # the seed's cells, held-out ones too: a member pays none of them again
    seed_cells = {col: search.matrix.cells[(0, col)]
                  for col in search.all_cols + search.holdout_cols}
    shared = {k: getattr(search.config, k) for k in
              ("max_demos", "knn", "encoder", "dedupe_threshold", "objectives", "fitness",
               "max_tokens", "holdout", "settings")}

    def one(i: int, member: SearchConfig) -> Search:
        config = member.model_copy(update={**shared, "budget": Budget(metric_calls=share)})
        sub = Search(search.archive.base, search.trainset, search.valset, config=config,
                     task_session=search.task_session,
                     reflection_session=search.reflection_session, metric=search.metric,
                     seed=search.seed + 1 + i, description=search.description,
                     holdout_cols=search.holdout_cols)  # the examples this search holds out
        try:
            sub.start(seed_cells)
            try:
                config.run(sub)
            except BudgetExhausted:
                pass
        finally:  # its calls in flight end (and are journaled) before the run store closes
            sub.evaluator.close()
        return sub

    for i, member in enumerate(members):
        search.emit(MemberStarted(member=i, optimizer=member.name, share=share, parallel=True))
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        subs = list(pool.map(one, range(len(members)), members))
    for i, sub in enumerate(subs):  # merged in member order: the result is thread-independent
        search.merge(sub, f"member {i}")


def vote_cells(search: Search, program: EnsembleProgram, members: list[Candidate]
               ) -> list[Cell]:
    """The validation cells of ``program``, a vote of ``members`` (all fully validated), from
    their predictions in the matrix: no LM call."""
    predictions = [program.vote_on([search.matrix.cells[(m.id, col)].prediction
                                    for m in members]) for col in search.all_cols]
    return search.score_replies(predictions)


def _ensemble_program(members: list[Candidate], vote: str) -> EnsembleProgram:
    return EnsembleProgram(members=tuple(m.program for m in members), vote=vote,  # type: ignore[arg-type]
                           weights=tuple(m.val_score for m in members)
                           if vote == "weighted" else None)


def vote_ensemble(search: Search, size: int, vote: str = "majority") -> Candidate | None:
    """Greedy forward selection (in pairs) of up to ``size`` validated candidates whose vote
    scores best on validation; the vote becomes a candidate when it beats the best single one."""
    pool = sorted((c for c in search.candidates
                   if c.accepted and c.genome and isinstance(c.program, Program)),
                  key=lambda c: (-c.val_score, c.id))
    if len(pool) < 2:
        return None
    # Majority votes want odd sizes: start from the best, then add the pair of candidates
    # whose vote with those chosen scores best (a single addition makes an even tie).
    chosen = [pool[0]]
    best_score, best = pool[0].val_score, None
    while len(chosen) + 2 <= size:
        rest = [c for c in pool if c not in chosen]
        trials = []
        for i, a in enumerate(rest):
            for b in rest[i + 1:]:
                program = _ensemble_program(chosen + [a, b], vote)
                cells = vote_cells(search, program, chosen + [a, b])
                trials.append((search.fitness([c.score for c in cells], program),
                               a.val_score + b.val_score, -a.id, -b.id, a, b, program, cells))
        if not trials:
            break
        score, _, _, _, a, b, program, cells = max(trials, key=lambda t: t[:4])
        chosen += [a, b]
        if score > best_score:
            best_score, best = score, (list(chosen), program, cells)
    if best is None:
        search.emit(EnsembleRejected(
            reason="no vote beats the best single candidate on validation",
            best_single=pool[0].val_score))
        return None
    members, program, cells = best
    cand = search.add_program(program, ("ensemble", tuple(m.id for m in members), vote),
                              tuple(m.id for m in members), "ensemble", f"vote={vote}")
    if cand is None:
        return None
    search.accept(cand, dict(zip(search.all_cols, cells, strict=True)))
    return cand
