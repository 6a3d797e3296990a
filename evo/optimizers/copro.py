"""COPRO (DSPy's coordinate-ascent prompt optimizer) on the shared engine.

Breadth x depth: the prompt LM first writes ``breadth - 1`` instructions from the task alone
(with the seed, ``breadth`` candidates); each is validated in full. Then, ``depth`` times, it is
shown the instructions tried so far with their scores, in increasing order (best last), and
writes ``breadth`` more. Every candidate keeps the seed program's demos. With a budget of B
metric calls and V validation examples, COPRO can judge about B / V instructions in all.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import add_child, proposal_failure
from evo.proposers.instructions import copro_instruction
from evo.search import genome as G
from evo.search.engine import Search, SearchConfig
from evo.search.events import ProposalRejected


@register_optimizer
class COPRO(SearchConfig):
    """Instruction search, breadth x depth, attempts fed back sorted by score."""

    breadth: int = Field(10, ge=2)
    depth: int = Field(3, ge=1)
    init_temperature: float = Field(1.4, ge=0)
    max_demos: int = Field(0, ge=0, description="demo slots (0: the seed program's demos)")
    knn: bool = False

    name: ClassVar[str] = "copro"

    def projected_proposals(self, n_train: int, n_val: int) -> int:
        return self.breadth * (self.depth + 1) - 1  # one proposal per loop step, at most

    def run(self, search: Search) -> None:
        seed = search.seed_candidate
        base = search.archive.program(seed.genome)
        for depth in range(self.depth + 1):
            search.next_iteration()
            attempts = sorted(((search.archive.instructions[c.genome[G.INSTRUCTION]],
                                c.val_score)
                               for c in search.candidates if c.accepted and c.genome),
                              key=lambda a: a[1])[-self.breadth:]
            for _ in range(self.breadth - 1 if depth == 0 else self.breadth):
                if not search.can_validate():
                    return
                proposal = copro_instruction(
                    search.reflection_session, base, attempts=attempts if depth else (),
                    description=search.description, seed=search.rng.randrange(2**31),
                    temperature=self.init_temperature)
                if proposal.instruction is None:
                    search.emit(ProposalRejected(candidate=seed.id, op="copro",
                                                 reason=proposal_failure(proposal)))
                    continue
                iid, dup = search.archive.add_instruction(
                    proposal.instruction, {"op": "copro", "depth": depth})
                cand = add_child(search, G.with_instruction(seed.genome, iid), (seed.id,),
                                 "copro", f"depth {depth}",
                                 repeat=dup or "instruction already tried")
                if cand is not None:
                    search.validate(cand)
