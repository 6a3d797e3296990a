"""EvoPrompt (Guo et al., 2024): a genetic algorithm or differential evolution whose operators on
instructions are LM calls, on the shared engine, with DEAP's integer operators on the demo genes.

* **GA**: parents drawn by roulette wheel on validation fitness; the LM crosses their
  instructions over and mutates the result; the demo genes get DEAP's uniform crossover and a
  demo mutation. The population keeps the best ``population_size``.
* **DE**: each member in turn is the base: the LM mutates the parts where two other members'
  instructions differ, combines them with the best member's and crosses the result over with
  the base; demo genes: uniform crossover of the base with the best, then a mutation. A child
  that beats its base replaces it. With fewer than three members DE makes GA children.

The population is seeded with the seed program and LM paraphrases of its instruction, each with
a random demo set. EvoPrompt validates every child on the whole dev set; here a child must first
beat its parent on a validation minibatch (the engine's acceptance test), so a budget judges
more children.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from evo.optimizers.registry import register_optimizer
from evo.optimizers.steps import add_child, proposal_failure, screen
from evo.proposers.instructions import evoprompt_instruction, paraphrase
from evo.search import genome as G
from evo.search.engine import Candidate, Search, SearchConfig
from evo.search.events import ProposalRejected
from evo.search.strategies import roulette_pair


class EvoPrompt(SearchConfig):
    """EvoPrompt GA or DE on (instruction, demos) genomes."""

    variant: Literal["ga", "de"] = "ga"
    population_size: int = Field(4, ge=2)
    demo_mutation_rate: float = Field(0.3, ge=0, le=1)
    minibatch_size: int = Field(6, ge=1)
    temperature: float = Field(0.5, ge=0)
    knn: bool = False

    name: ClassVar[str] = "evoprompt"

    def run(self, search: Search) -> None:
        archive, rng = search.archive, search.rng
        seed = search.seed_candidate
        attempts = 0
        while len(search.population) < self.population_size and \
                attempts < 3 * self.population_size and search.can_validate():
            attempts += 1
            search.next_iteration()
            source = search.candidates[rng.choice(search.population)]
            proposal = paraphrase(search.reflection_session, search.archive.base,
                                  archive.instructions[source.genome[G.INSTRUCTION]],
                                  seed=rng.randrange(2**31))
            iid = seed.genome[G.INSTRUCTION]
            if proposal.instruction is not None:
                iid, _ = archive.add_instruction(proposal.instruction, {"op": "paraphrase"})
            demos = archive.random_demos(rng, archive.max_demos) if archive.max_demos else []
            genome = archive.genome(iid, demos)
            if not search.known(genome):
                cand = search.add(genome, (source.id,), "evoprompt_init")
                assert cand is not None
                search.validate(cand)
        stale = step = 0
        while search.can_validate() and stale < self.stale_limit:
            search.next_iteration()
            step += 1
            parent, child = self._offspring(search, step)
            if child is None:
                stale += 1
                continue
            stale = 0
            if screen(search, child, parent, search.minibatch(parent, self.minibatch_size),
                      acceptance=self.acceptance) \
                    and self.variant == "de" and child.val_score > parent.val_score:
                search.replace_in_population(parent, child)  # DE: the child replaces its base

    def _offspring(self, search: Search, step: int) -> tuple[Candidate, Candidate | None]:
        archive, rng = search.archive, search.rng
        pop = [search.candidates[i] for i in search.population]
        text = lambda c: archive.instructions[c.genome[G.INSTRUCTION]]  # noqa: E731
        if self.variant == "ga" or len(pop) < 3:
            a, b = (search.candidates[i] for i in roulette_pair(search, search.population))
            parent = max((a, b), key=lambda c: c.val_score)
            parents, mate = (text(a), text(b)), (b if parent is a else a)
        else:
            parent = sorted(pop, key=lambda c: c.id)[step % len(pop)]  # each member in turn
            others = [c for c in pop if c.id != parent.id]
            x, y = rng.sample(others, 2)
            best = max(pop, key=lambda c: c.val_score)
            parents, mate = (text(x), text(y), text(best), text(parent)), best
        proposal = evoprompt_instruction(search.reflection_session, search.archive.base,
                                         parents, variant=self.variant,
                                         seed=rng.randrange(2**31), temperature=self.temperature)
        genome = G.crossover(list(parent.genome), mate.genome, archive, rng) \
            if archive.max_demos else list(parent.genome)
        if archive.max_demos and rng.random() < self.demo_mutation_rate:
            genome = G.mutate_demos(genome, archive, rng)
        note = ""
        if proposal.instruction is None:  # the demo genes still make a child
            search.emit(ProposalRejected(candidate=parent.id, op=f"evoprompt_{self.variant}",
                                         reason=proposal_failure(proposal)))
        else:
            genome[G.INSTRUCTION], note = archive.add_instruction(
                proposal.instruction, {"op": f"evoprompt_{self.variant}", "parent": parent.id})
        return parent, add_child(search, genome, (parent.id, mate.id),
                                 f"evoprompt_{self.variant}", note)


@register_optimizer
class GA(EvoPrompt):
    """EvoPrompt-GA (see :class:`EvoPrompt`)."""

    variant: Literal["ga", "de"] = "ga"
    name: ClassVar[str] = "ga"


@register_optimizer
class DE(EvoPrompt):
    """EvoPrompt-DE (see :class:`EvoPrompt`)."""

    variant: Literal["ga", "de"] = "de"
    name: ClassVar[str] = "de"
