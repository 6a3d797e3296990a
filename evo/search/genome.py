"""Genomes: integer vectors indexing an archive of instruction texts and a pool of demos.

Layout of a genome with room for ``K`` demos::

    [instruction_id, n_demos, knn_k, demo_0, ..., demo_{K-1}]

Only the first ``n_demos`` demo genes are expressed (in order: demo order is part of the prompt).
``knn_k > 0`` adds, per input, its ``knn_k`` nearest pool examples as further demos (see
:mod:`evo.embeddings.knn`); ``n_demos + knn_k <= K``.
Cheap variation (DEAP's integer operators) works on these vectors; LM operators add texts to the
archive and point a gene at them. Two genomes that express the same prompt share one
:func:`key`, so the engine never evaluates the same prompt twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from deap import tools

from evo.data import Example
from evo.embeddings.knn import MAX_K, KNNDemos, encoder_for
from evo.program import Program

INSTRUCTION, N_DEMOS, KNN, DEMOS = 0, 1, 2, 3  # gene positions (DEMOS: the first demo slot)

Genome = list[int]


class GenomeKey(NamedTuple):
    """The prompt a genome expresses (equal, and hashing equal, to the plain tuple)."""

    instruction: int
    demos: tuple[int, ...]  # the fixed demo ids, in order
    knn_k: int  # nearest-neighbour demos per input


def key(genome: Genome) -> GenomeKey:
    """The expressed prompt: instruction id, the ordered fixed demo ids, the KNN demo count."""
    n = genome[N_DEMOS]
    return GenomeKey(genome[INSTRUCTION], tuple(genome[DEMOS:DEMOS + n]), genome[KNN])


def with_instruction(genome: Genome, instruction: int) -> Genome:
    """A copy of ``genome`` that expresses ``instruction`` (an archive id) instead."""
    child = list(genome)
    child[INSTRUCTION] = instruction
    return child


@dataclass
class InstructionDedupe:
    """Finds an archived instruction whose embedding is within ``threshold`` cosine of a new
    text (a reworded copy that would cost a full evaluation to learn nothing)."""

    encoder: str = "minilm"
    threshold: float = 0.97
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def nearest(self, text: str, archived: list[str]) -> tuple[int | None, float]:
        if not archived:
            return None, -1.0
        missing = [t for t in dict.fromkeys([text, *archived]) if t not in self._vectors]
        if missing:
            vectors = encoder_for(self.encoder).encode(missing)
            self._vectors.update(zip(missing, vectors, strict=True))
        sims = np.stack([self._vectors[t] for t in archived]) @ self._vectors[text]
        best = int(np.argmax(sims))
        return best, float(sims[best])


@dataclass
class Archive:
    """Instruction texts (id = index) with their origin, and the demo pool (training examples)."""

    base: Program
    pool: tuple[Example, ...]
    max_demos: int = 4
    instructions: list[str] = field(default_factory=list)
    origins: list[dict] = field(default_factory=list)
    knn_encoder: str | None = None  # None: no KNN demos in this search
    dedupe: InstructionDedupe | None = None
    # Bootstrapped demos whose outputs differ from the gold ones (a teacher's passing trace on a
    # free-text task): demo ids len(pool), len(pool) + 1, ... Never retrieved as KNN demos.
    traces: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The user's own demos join the pool, so the seed genome is exactly the user's program.
        known = {ex.id for ex in self.pool}
        self.pool = self.pool + tuple(d for d in self.base.demos if d.id not in known)
        self.max_demos = max(self.max_demos, len(self.base.demos))
        if not self.instructions:
            self.add_instruction(self.base.instruction, {"op": "seed"})
        if self.max_demos and not self.pool:
            raise ValueError("the trainset (the demo pool) is empty: give training examples, or "
                             "search instructions only with max_demos=0")
        self._labels = [ex.label if len(ex.outputs) == 1 else "" for ex in self.pool]
        if self.knn_encoder is not None and self.max_demos > MAX_K:
            raise ValueError(f"KNN demos support at most {MAX_K} demo slots, got "
                             f"max_demos={self.max_demos} (lower it, or search with knn=False)")

    @property
    def knn(self) -> bool:
        return self.knn_encoder is not None and self.max_demos > 0

    def add_instruction(self, text: str, origin: dict, *, dedupe: bool = True
                        ) -> tuple[int, str]:
        """Add a text and return ``(id, note)``. A text already archived, or (with ``dedupe``) a
        near-duplicate of one, returns that text's id and a note saying so: the engine then
        finds the genome already known and does not pay for it twice."""
        text = text.strip()
        if text in self.instructions:
            return self.instructions.index(text), "identical to an archived instruction"
        if self.dedupe is not None and dedupe:
            near, cosine = self.dedupe.nearest(text, self.instructions)
            if near is not None and cosine >= self.dedupe.threshold:
                return near, (f"near-duplicate of instruction {near} (cosine {cosine:.3f} >= "
                              f"{self.dedupe.threshold})")
        self.instructions.append(text)
        self.origins.append(origin)
        return len(self.instructions) - 1, ""

    @property
    def n_demo_ids(self) -> int:
        """How many demo ids exist: the pool, then the traces."""
        return len(self.pool) + len(self.traces)

    def demo(self, i: int) -> Example:
        return self.pool[i] if i < len(self.pool) else self.traces[i - len(self.pool)]

    def demo_id(self, example: Example, outputs: dict[str, str] | None = None) -> int:
        """The demo id of ``example`` shown with ``outputs`` (default: its gold outputs): its pool
        id when the outputs are the gold ones, else a trace (added once)."""
        if outputs is None or outputs == example.outputs:
            for i, ex in enumerate(self.pool):
                if ex.id == example.id:
                    return i
            outputs = dict(example.outputs)
        trace = example.as_trace(outputs)
        for i, ex in enumerate(self.traces):
            if ex.id == trace.id and ex.outputs == trace.outputs:
                return len(self.pool) + i
        self.traces.append(trace)
        return len(self.pool) + len(self.traces) - 1

    def demo_index(self, demo: Example) -> int:
        """The id of a demo taken from another archive over the same pool (a pool example or a
        trace), adding the trace if it is new here."""
        if demo.source_id != demo.id:
            source = next(ex for ex in self.pool if ex.id == demo.source_id)
            return self.demo_id(source, dict(demo.outputs))
        return self.demo_id(demo)

    def genome(self, instruction: int, demos: list[int], knn_k: int = 0) -> Genome:
        """The genome expressing ``instruction`` with these fixed demos (in order) and ``knn_k``
        nearest-neighbour demos per input."""
        if len(demos) + knn_k > self.max_demos:
            raise ValueError(f"{len(demos)} demos + {knn_k} KNN demos exceed max_demos="
                             f"{self.max_demos}")
        return [instruction, len(demos), knn_k] + list(demos) + \
            [0] * (self.max_demos - len(demos))

    def seed_genome(self) -> Genome:
        """The user's program as given: instruction 0 and its demos."""
        ids = {ex.id: i for i, ex in enumerate(self.pool)}
        demos = [ids[d.id] for d in self.base.demos]
        return [0, len(demos), 0] + demos + [0] * (self.max_demos - len(demos))

    def program(self, genome: Genome) -> Program:
        instruction, demos, knn_k = key(genome)
        knn = None
        if knn_k:
            assert self.knn_encoder is not None
            knn = KNNDemos(k=knn_k, pool=self.pool, encoder=self.knn_encoder,
                           fields=tuple(f.name for f in self.base.signature.inputs))
        return self.base.model_copy(update={
            "instruction": self.instructions[instruction],
            "demos": tuple(self.demo(d) for d in demos),
            "knn": knn,
        })

    def random_demos(self, rng: random.Random, n: int) -> list[int]:
        """``n`` distinct pool ids; with labels, covering as many distinct labels as it can
        (a demo set of one class teaches a small model to answer that class)."""
        by_label: dict[str, list[int]] = {}
        for i, label in enumerate(self._labels):
            by_label.setdefault(label, []).append(i)
        groups = [rng.sample(ids, len(ids)) for _, ids in sorted(by_label.items())]
        rng.shuffle(groups)
        chosen: list[int] = []
        while len(chosen) < min(n, len(self.pool)):
            for group in groups:
                if group and len(chosen) < n:
                    chosen.append(group.pop())
        rng.shuffle(chosen)
        return chosen


# ---- cheap variation operators (plain functions, DEAP-style: in place, return the genome) ----

def repair(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Clamp genes into range and make expressed demo ids distinct."""
    k, pool = archive.max_demos, archive.n_demo_ids
    genome[INSTRUCTION] = min(max(genome[INSTRUCTION], 0), len(archive.instructions) - 1)
    genome[N_DEMOS] = min(max(genome[N_DEMOS], 0), min(k, pool))
    knn_room = min(k - genome[N_DEMOS], pool - genome[N_DEMOS]) if archive.knn else 0
    genome[KNN] = min(max(genome[KNN], 0), max(knn_room, 0))
    seen: set[int] = set()
    for slot in range(DEMOS, DEMOS + k):
        value = min(max(genome[slot], 0), pool - 1) if pool else 0
        if slot < DEMOS + genome[N_DEMOS]:
            while value in seen:
                value = rng.randrange(pool)
            seen.add(value)
        genome[slot] = value
    return genome


def mutate_demos(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """One small edit of the demo genes: replace a demo, add or drop one, reorder two, or (with
    KNN) change how many nearest-neighbour demos each input gets."""
    n, k, pool = genome[N_DEMOS], archive.max_demos, len(archive.pool)
    room = n + genome[KNN] < min(k, pool)
    moves = ["replace"] * (n > 0) + ["add"] * room + ["drop"] * (n > 0) + \
        ["swap"] * (n > 1) + ["knn"] * archive.knn
    if not moves:
        return genome
    move = rng.choice(moves)
    if move == "knn":
        # More or fewer nearest neighbours (0 switches KNN demos off).
        options = [v for v in range(min(k, pool) - n + 1) if v != genome[KNN]]
        if options:
            genome[KNN] = rng.choice(options)
    elif move == "replace":
        # DEAP's uniform integer mutation, on one expressed slot.
        slot = DEMOS + rng.randrange(n)
        with deap_random(rng):
            genome[slot:slot + 1] = tools.mutUniformInt(genome[slot:slot + 1], 0, pool - 1, 1.0)[0]
    elif move == "add":
        genome[DEMOS + n] = rng.randrange(pool)
        genome[N_DEMOS] = n + 1
    elif move == "drop":
        slot = DEMOS + rng.randrange(n)
        demos = genome[DEMOS:DEMOS + k]
        del demos[slot - DEMOS]
        genome[DEMOS:DEMOS + k] = demos + [0]
        genome[N_DEMOS] = n - 1
    else:
        i, j = rng.sample(range(n), 2)
        genome[DEMOS + i], genome[DEMOS + j] = genome[DEMOS + j], genome[DEMOS + i]
    return repair(genome, archive, rng)


def mutate_instruction(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Point the instruction gene at another archived text."""
    if len(archive.instructions) > 1:
        choices = [i for i in range(len(archive.instructions)) if i != genome[INSTRUCTION]]
        genome[INSTRUCTION] = rng.choice(choices)
    return genome


def crossover(a: Genome, b: Genome, archive: Archive, rng: random.Random) -> Genome:
    """A child of two genomes: DEAP's uniform crossover on every gene, then repair."""
    child, other = list(a), list(b)
    with deap_random(rng):
        tools.cxUniform(child, other, 0.5)
    return repair(child, archive, rng)


@contextmanager
def deap_random(rng: random.Random) -> Iterator[None]:
    """DEAP's operators draw from the global ``random``: seed it from the run's own stream for the
    call, so runs stay reproducible, and give the caller's global state back afterwards."""
    state = random.getstate()
    random.seed(rng.random())
    try:
        yield
    finally:
        random.setstate(state)
