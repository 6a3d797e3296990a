"""MIPROv2 (Opsahl-Ong et al., 2024; DSPy's ``MIPROv2``) on the shared engine.

1. **Demo-set candidates**, as DSPy's ``create_n_fewshot_demo_sets``: zero-shot, labeled-only,
   bootstrapped in training order, then bootstraps of the shuffled training set with a random
   number of demos.
2. **Grounded instruction proposals**: the reflection (prompt) LM writes ``num_candidates - 1``
   instructions from a dataset summary (data-aware), the program's description
   (program-aware), one demo set's examples (few-shot-aware), the instructions proposed so far,
   and a random tip (tip-aware); the seed instruction is candidate 0.
3. **Search over (instruction, demo set) choices**: DSPy runs Optuna's TPE sampler; here an
   evolutionary search does the same job on the score matrix. Each trial draws a combination by
   tournament on the estimated score, mutates one choice or crosses two combinations, and
   scores it on a random validation minibatch (cells it already has are free, so the estimate
   of a combination sharpens as it is drawn again). Every ``minibatch_full_eval_steps`` trials
   the combination with the best estimate is validated in full, as DSPy does.

``auto`` sets the number of candidates and trials as DSPy does: light 6 candidates / 10
trials, medium 12 / 18, heavy 18 / 27 (trials = int(max(2 · V · log2 N, 1.5 N)) with V = 2
variables, instruction and demo set, for one module; V = 1 without demo slots).
"""

from __future__ import annotations

import math
import random
from typing import ClassVar, Literal

from pydantic import Field

from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import demo_set, proposal_failure
from evo.proposers.instructions import TIPS, grounded_instruction, summarize_dataset
from evo.search.engine import Candidate, Search, SearchConfig, StopReason
from evo.search.events import (
    CandidateEvaluated,
    DemoSetsProposed,
    InstructionsProposed,
    ProposalRejected,
)
from evo.search.genome import INSTRUCTION, Genome, key

AUTO = {"light": 6, "medium": 12, "heavy": 18}
DRAWS = 20  # tournament draws for an open (not yet validated) combination before a random one


@register_optimizer
class MIPROv2(SearchConfig):
    """Bootstrapped demo sets x grounded instruction proposals, searched with minibatches."""

    auto: Literal["light", "medium", "heavy"] | None = "light"
    num_candidates: int | None = Field(None, ge=1, description="instructions and demo sets "
                                                               "(default: from auto)")
    num_trials: int | None = Field(None, ge=1, description="default: from auto")
    max_bootstrapped_demos: int = Field(4, ge=0)
    max_labeled_demos: int = Field(4, ge=0)
    metric_threshold: float = 1.0
    minibatch_size: int | None = Field(
        None, ge=1, description="default: DSPy's 35, at most a third of the validation set")
    minibatch_full_eval_steps: int = Field(5, ge=1)
    data_aware: bool = True
    program_aware: bool = True
    fewshot_aware: bool = True
    tip_aware: bool = True
    init_temperature: float = Field(0.7, ge=0)
    knn: bool = False

    name: ClassVar[str] = "miprov2"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        n, _ = self.sizes()
        return n + int(self.data_aware)  # one grounded proposal per candidate (+ the summary)

    def sizes(self, demo_slots: int | None = None) -> tuple[int, int]:
        """(candidates, trials) as DSPy's ``auto`` computes them."""
        n = self.num_candidates or AUTO.get(self.auto or "light", 6)
        n_vars = 2 if (self.max_demos if demo_slots is None else demo_slots) else 1
        trials = self.num_trials or int(max(2 * n_vars * math.log2(max(n, 2)), 1.5 * n))
        return n, trials

    def run(self, search: Search) -> None:
        n, trials = self.sizes(search.archive.max_demos)
        size = self.minibatch_size or max(1, min(35, len(search.valset) // 3))
        size = min(size, len(search.valset))
        # bootstrapping must leave the trials something: a full validation and a few minibatches
        demo_sets = self._demo_sets(search, n, reserve=len(search.valset) + 3 * size)
        instructions = self._instructions(search, n, demo_sets)
        combos = [(i, d) for i in range(len(instructions)) for d in range(len(demo_sets))]
        rows: dict[tuple[int, int], Candidate] = {}
        if not key(search.seed_candidate.genome).demos:  # a zero-shot seed is combination (0, 0)
            rows[(0, 0)] = search.seed_candidate

        def genome(c: tuple[int, int]) -> Genome:
            return search.archive.genome(instructions[c[0]], demo_sets[c[1]])

        def estimate(c: tuple[int, int]) -> float:
            cand = rows.get(c)
            return float("-inf") if cand is None else search.matrix.row_mean(cand.id)

        def validate_best() -> None:
            pending = [c for c in rows if not rows[c].accepted]
            if pending:
                best = max(pending, key=lambda c: (estimate(c), -combos.index(c)))
                if search.can_validate(rows[best]):
                    search.validate(rows[best])

        for trial in range(1, trials + 1):
            if search.remaining() < size + len(search.valset):
                search.stop(StopReason.BUDGET)
                break  # keep enough to validate the best estimate in full
            search.next_iteration()
            combo = self._propose(search, combos, rows, estimate)
            if combo is None:
                break
            cand = rows.get(combo)
            if cand is None:
                genome_ = genome(combo)
                # None: the same prompt as another combination (e.g. equal demo sets)
                cand = search.add(genome_, (0,), "mipro_trial", f"instruction {combo[0]}, "
                                  f"demo set {combo[1]}") or search.candidate_for(genome_)
                assert cand is not None
                rows[combo] = cand
            batch = sorted(search.rng.sample(search.all_cols, size))
            scores = search.evaluate(cand, batch)
            search.emit(CandidateEvaluated(candidate=cand.id, minibatch=batch,
                                           minibatch_score=float(scores.mean()),
                                           estimate=estimate(combo), accepted=False,
                                           trial=trial))
            if trial % self.minibatch_full_eval_steps == 0:
                validate_best()
        validate_best()

    def _propose(self, search: Search, combos: list[tuple[int, int]],
                 rows: dict[tuple[int, int], Candidate], estimate) -> tuple[int, int] | None:
        rng = search.rng
        open_ = [c for c in combos if c not in rows or not rows[c].accepted]
        if not open_:
            return None
        scored = sorted((c for c in rows), key=lambda c: -estimate(c))
        n_i, n_d = combos[-1][0] + 1, combos[-1][1] + 1  # combos is their product, in order
        if len(scored) < 2 or rng.random() < 0.25:
            unseen = [c for c in open_ if c not in rows]
            return rng.choice(unseen or open_)
        for _ in range(DRAWS):
            contenders = rng.sample(scored, min(3, len(scored)))
            parent = max(contenders, key=lambda c: (estimate(c), -combos.index(c)))
            if rng.random() < 0.5:
                mate = rng.choice(scored)
                child = (parent[0], mate[1]) if rng.random() < 0.5 else (mate[0], parent[1])
            else:
                if rng.random() < 0.5 and n_i > 1:
                    child = (rng.choice([i for i in range(n_i) if i != parent[0]]), parent[1])
                elif n_d > 1:
                    child = (parent[0], rng.choice([d for d in range(n_d) if d != parent[1]]))
                else:
                    child = parent
            if child in open_:
                return child
        return rng.choice(open_)

    def _demo_sets(self, search: Search, n: int, reserve: int) -> list[list[int]]:
        """DSPy's ``create_n_fewshot_demo_sets``: zero-shot, labeled, then bootstraps (the
        schedule BootstrapFewShotWithRandomSearch draws from, :func:`demo_set`)."""
        sets: list[list[int]] = [[]]
        if not search.archive.max_demos:
            return sets
        for seed in range(-2, n - 2):
            if seed > -2 and self.max_bootstrapped_demos == 0:
                break  # labeled demo sets only
            genome, _ = demo_set(search, seed, max_bootstrapped=self.max_bootstrapped_demos,
                                 max_labeled=self.max_labeled_demos,
                                 threshold=self.metric_threshold, reserve=reserve)
            demos = list(key(genome).demos)
            if demos and demos not in sets:
                sets.append(demos)
        search.emit(DemoSetsProposed(sets=sets))
        return sets

    def _instructions(self, search: Search, n: int, demo_sets: list[list[int]]) -> list[int]:
        base = search.archive.base
        seed_instr = search.seed_candidate.genome[INSTRUCTION]
        program = base.model_copy(update={"instruction": search.archive.instructions[seed_instr]})
        summary = ""
        if self.data_aware and search.trainset:
            sample = random.Random(search.seed).sample(list(search.trainset),
                                                       min(10, len(search.trainset)))
            summary = summarize_dataset(search.reflection_session, program, sample,
                                        seed=search.seed)
        ids, history = [seed_instr], []
        tips = list(TIPS)
        for i in range(n - 1):
            demos = demo_sets[(i + 1) % len(demo_sets)] if self.fewshot_aware else []
            tip = search.rng.choice(tips) if self.tip_aware else "none"
            proposal = grounded_instruction(
                search.reflection_session, program, summary=summary,
                description=search.description if self.program_aware else "",
                demos=[search.archive.demo(d) for d in demos], history=history, tip=tip,
                seed=search.rng.randrange(2**31), temperature=self.init_temperature)
            if proposal.instruction is None:
                search.emit(ProposalRejected(candidate=0, op="grounded_proposal",
                                             reason=proposal_failure(proposal)))
                continue
            iid, dup = search.archive.add_instruction(
                proposal.instruction, {"op": "grounded_proposal", "tip": tip})
            if dup or iid in ids:
                search.emit(ProposalRejected(candidate=0, op="grounded_proposal",
                                             reason=dup or "identical to an archived instruction"))
                continue
            ids.append(iid)
            history.append(proposal.instruction)
        search.emit(InstructionsProposed(ids=ids, summary=summary))
        return ids

