"""Genomes: integer vectors indexing an archive of instruction texts and a pool of demos.

Layout of a genome with room for ``K`` demos::

    [instruction_id, n_demos, knn_k, demo_0, ..., demo_{K-1}]

Only the first ``n_demos`` demo genes are expressed (in order: demo order is part of the prompt).
``knn_k > 0`` adds, per input, its ``knn_k`` nearest pool examples as further demos (see
:mod:`evo.embeddings.knn`); ``n_demos + knn_k <= K``.

An archive that varies the program's settings (:class:`SettingsSpace`: label scoring, calibration,
a reasoning step) adds a trailer of settings genes::

    [..., demo_{K-1}, SETTINGS_MARK, rank, calibrate, reasoning]

``SETTINGS_MARK`` (-1) is never a demo id, so :func:`key` finds the trailer without the archive.
Without settings a genome has no trailer and everything is as it was (keys, replays, stored runs).
When the task LM is a model choice (:class:`evo.lm.ModelChoice` of two models or more) the
trailer ends with one more gene, the chosen model's index among its names (0: the default)::

    [..., demo_{K-1}, SETTINGS_MARK, rank, calibrate, reasoning, model]

Cheap variation (DEAP's integer operators) works on these vectors; LM operators add texts to the
archive and point a gene at them. Two genomes that express the same prompt share one
:func:`key`, so the engine never evaluates the same prompt twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal

import numpy as np
from deap import tools

from evo.data import Example
from evo.embeddings.knn import MAX_K, KNNDemos, encoder_for, query_text
from evo.program import Program

INSTRUCTION, N_DEMOS, KNN, DEMOS = 0, 1, 2, 3  # gene positions (DEMOS: the first demo slot)
SETTINGS_MARK = -1  # the gene before the settings genes (never a demo id, so key() finds them)
N_SETTINGS = 3  # settings genes after the mark: rank, calibrate, reasoning (0/1 each)
# ... and, in an archive with a model choice, one model gene after them

Genome = list[int]


class Settings(tuple[Any, ...]):
    """The :data:`~evo.program.SETTINGS_GENES` of a program, as a genome expresses them:
    ``(answer_mode, calibrate, reasoning)``, and ``model`` last (the index of the program's
    model among a model choice's names) only in an archive with a model gene, so a settings
    key without one is the 3-tuple it always was."""

    __slots__ = ()
    _fields = ("answer_mode", "calibrate", "reasoning", "model")

    def __new__(cls, answer_mode: Literal["generate", "rank"] = "generate",
                calibrate: bool = False, reasoning: bool = False,
                model: int | None = None) -> Settings:
        return super().__new__(cls, (answer_mode, calibrate, reasoning)
                               + (() if model is None else (model,)))

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle through __new__'s own arguments
        return tuple(self)

    @property
    def answer_mode(self) -> Literal["generate", "rank"]:
        return self[0]

    @property
    def calibrate(self) -> bool:
        return self[1]

    @property
    def reasoning(self) -> bool:
        return self[2]

    @property
    def model(self) -> int | None:
        return self[3] if len(self) > 3 else None

    def _asdict(self) -> dict[str, Any]:
        """The fields by name (``model`` only when the settings have one)."""
        return dict(zip(self._fields, self, strict=False))

    def _replace(self, **changes: Any) -> Settings:
        return type(self)(**{**self._asdict(), **changes})

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._asdict().items())})"

    @classmethod
    def of(cls, program: Program, models: Sequence[str] = ()) -> Settings:
        """``program``'s settings; with ``models`` (a model choice's names) the index of its
        model among them (0, the default, for a program that names none)."""
        model = None
        if models:
            if program.model is not None and program.model not in models:
                raise ValueError(f"the program's model {program.model!r} is not one of the task "
                                 f"LM's models {list(models)}")
            model = 0 if program.model is None else list(models).index(program.model)
        return cls(program.answer_mode, program.calibrate, program.reasoning, model)

    @classmethod
    def from_genes(cls, genes: Sequence[int]) -> Settings:
        rank, calibrate, reasoning, *model = genes
        return cls("rank" if rank else "generate", bool(calibrate), bool(reasoning),
                   model[0] if model else None)

    def genes(self) -> list[int]:
        flags = [int(self.answer_mode == "rank"), int(self.calibrate), int(self.reasoning)]
        return flags if self.model is None else [*flags, self.model]

    def describe(self, models: Sequence[str] = ()) -> str:
        """``"answer_mode=rank, calibrate=False, reasoning=False"`` (and ``model=<name>``)."""
        parts = [f"{k}={v}" for k, v in self._asdict().items() if k != "model"]
        if self.model is not None:
            name = models[self.model] if self.model < len(models) else self.model
            parts.append(f"model={name}")
        return ", ".join(parts)


@dataclass(frozen=True)
class SettingsSpace:
    """Which settings a search may vary. ``rank`` (answer by label scoring) only for a program
    with labels on a backend that scores choices; ``calibrate`` only together with rank; a
    reasoning step never with rank (label scoring reads no reasoning line).

    ``models``: the names of a model choice (:class:`evo.lm.ModelChoice`) a genome picks one
    of (a model gene, with two names or more). ``flags=False`` varies the model only: every
    genome keeps the program's own answer mode, calibration and reasoning."""

    rank: bool = False
    calibrate: bool = True
    reasoning: bool = False
    models: tuple[str, ...] = ()
    flags: bool = True

    @classmethod
    def for_program(cls, program: Program, *, scores_choices: bool, reasoning: bool = True,
                    calibrate: bool = True, models: Sequence[str] = (),
                    flags: bool = True) -> SettingsSpace:
        """The space a search over ``program`` may use (``scores_choices``: the task backend's
        :func:`~evo.lm.base.scores_choices`; ``models``: its model choice's names, if any)."""
        return cls(rank=program.labels is not None and scores_choices, calibrate=calibrate,
                   reasoning=reasoning, models=tuple(models) if len(models) > 1 else (),
                   flags=flags)

    @property
    def enabled(self) -> bool:
        return (self.flags and (self.rank or self.reasoning)) or len(self.models) > 1

    def allows(self, settings: Settings) -> bool:
        rank = settings.answer_mode == "rank"
        model = settings.model is None if not self.models else \
            settings.model is not None and 0 <= settings.model < len(self.models)
        return (model and not (rank and settings.reasoning) and (rank or not settings.calibrate)
                and (self.rank or not rank) and (self.calibrate or not settings.calibrate)
                and (self.reasoning or not settings.reasoning))

    def options(self) -> list[Settings]:
        """Every allowed combination, the default first."""
        models: list[int | None] = list(range(len(self.models))) if self.models else [None]
        every = (Settings.from_genes(g)._replace(model=m)
                 for g in product((0, 1), repeat=N_SETTINGS) for m in models)
        return [s for s in every if self.allows(s)]


class GenomeKey(tuple[Any, ...]):
    """The prompt a genome expresses: ``(instruction, demos, knn_k)``, and ``settings`` last when
    the genome has settings genes. Equal, and hashing equal, to the plain tuple."""

    __slots__ = ()

    def __new__(cls, instruction: int, demos: tuple[int, ...], knn_k: int,
                settings: Settings | None = None) -> GenomeKey:
        fields = (instruction, demos, knn_k) + (() if settings is None else (settings,))
        return super().__new__(cls, fields)

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle through __new__'s own arguments
        return tuple(self)

    def __repr__(self) -> str:
        tail = "" if self.settings is None else f", settings={self.settings!r}"
        return (f"GenomeKey(instruction={self.instruction!r}, demos={self.demos!r}, "
                f"knn_k={self.knn_k!r}{tail})")

    @property
    def instruction(self) -> int:
        return self[0]

    @property
    def demos(self) -> tuple[int, ...]:
        """The fixed demo ids, in order."""
        return self[1]

    @property
    def knn_k(self) -> int:
        """Nearest-neighbour demos per input."""
        return self[2]

    @property
    def settings(self) -> Settings | None:
        return self[3] if len(self) > 3 else None


def _settings_at(genome: Genome) -> int | None:
    """The position of a genome's settings mark (its trailer: three flags, and a model gene
    when the archive has a model choice), or None for a genome without settings genes."""
    for n in (N_SETTINGS, N_SETTINGS + 1):  # (every gene but the mark is >= 0: no ambiguity)
        if len(genome) > DEMOS + n and genome[-1 - n] == SETTINGS_MARK:
            return len(genome) - 1 - n
    return None


def settings_of(genome: Genome) -> Settings | None:
    """The settings a genome expresses, or None for a genome without settings genes."""
    at = _settings_at(genome)
    return None if at is None else Settings.from_genes(genome[at + 1:])


def key(genome: Genome) -> GenomeKey:
    """The expressed prompt: instruction id, the ordered fixed demo ids, the KNN demo count (and
    the settings, when the genome has settings genes)."""
    n = genome[N_DEMOS]
    return GenomeKey(genome[INSTRUCTION], tuple(genome[DEMOS:DEMOS + n]), genome[KNN],
                     settings_of(genome))


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
    # The settings genomes may vary (None, or a space with nothing enabled: no settings genes).
    settings: SettingsSpace | None = None
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # The user's own demos join the pool, so the seed genome is exactly the user's program;
        # so does the pool of its KNN demos, which the seed genome retrieves from (a program
        # that an earlier search gave KNN demos, re-optimized on new data, starts as it was).
        known = {ex.id for ex in self.pool}
        own = [*self.base.demos, *(self.base.knn.pool if self._seed_knn else ())]
        for d in own:
            if d.id not in known:
                known.add(d.id)
                self.pool = (*self.pool, d)
        self.max_demos = max(self.max_demos, len(self.base.demos) + self._seed_knn)
        if not self.instructions:
            self.add_instruction(self.base.instruction, {"op": "seed"})
        if self.max_demos and not self.pool:
            raise ValueError("the trainset (the demo pool) is empty: give training examples, or "
                             "search instructions only with max_demos=0")
        self._labels = [ex.label if len(ex.outputs) == 1 else "" for ex in self.pool]
        if self.knn_encoder is not None and self.max_demos > MAX_K:
            raise ValueError(f"KNN demos support at most {MAX_K} demo slots, got "
                             f"max_demos={self.max_demos} (lower it, or search with knn=False)")
        if self.settings is not None and not self.settings.enabled:
            self.settings = None
        if self.settings is not None and self.settings.rank and self.base.labels is None:
            raise ValueError("answer_mode='rank' needs a program with labels: build the "
                             "settings space with SettingsSpace.for_program")
        self.own_settings  # a program naming a model the choice lacks fails here  # noqa: B018

    @property
    def models(self) -> tuple[str, ...]:
        """The model choice's names a genome picks among (empty: no model gene)."""
        return self.settings.models if self.settings is not None else ()

    @property
    def own_settings(self) -> Settings:
        """The user's program's settings, as this archive's genomes express them."""
        return Settings.of(self.base, self.models)

    @property
    def settings_options(self) -> list[Settings]:
        """The settings a genome may express: the space's, and always the user's own program's
        (so the seed genome is the user's program). Empty without settings genes. A space that
        varies the model only keeps the program's own flags with every model."""
        if self.settings is None:
            return []
        own = self.own_settings
        if not self.settings.flags:
            return [own, *(own._replace(model=m) for m in range(len(self.models))
                           if m != own.model)]
        options = self.settings.options()
        return options if own in options else [own, *options]

    def model_name(self, index: int) -> str | None:
        """The ``model`` a program of model gene ``index`` gets: the model's name, or the user's
        program's own value (None: the default) when it picks that same model."""
        name = self.models[index]
        return self.base.model if name == (self.base.model or self.models[0]) else name

    def label(self, demo_id: int) -> str:
        """The class of a demo ('' unless it has one output field)."""
        ex = self.demo(demo_id)
        return ex.label if len(ex.outputs) == 1 else ""

    def pool_vectors(self, encoder: str) -> np.ndarray:
        """Unit embeddings of the pool's inputs (as KNN demos embed them), computed once."""
        if encoder not in self._vectors:
            self._vectors[encoder] = _unit(encoder_for(encoder).encode(
                [query_text(ex, self._fields) for ex in self.pool]))
        return self._vectors[encoder]

    def embed(self, examples: Sequence[Example], encoder: str) -> np.ndarray:
        """Unit embeddings of ``examples``' inputs, comparable with :meth:`pool_vectors`."""
        return _unit(encoder_for(encoder).encode([query_text(ex, self._fields)
                                                   for ex in examples]))

    @property
    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.base.signature.inputs)

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

    def genome(self, instruction: int, demos: list[int], knn_k: int = 0, *,
               settings: Settings | None = None) -> Genome:
        """The genome expressing ``instruction`` with these fixed demos (in order), ``knn_k``
        nearest-neighbour demos per input and (with a settings space) ``settings``, by default
        the user's program's."""
        if len(demos) + knn_k > self.max_demos:
            raise ValueError(f"{len(demos)} demos + {knn_k} KNN demos exceed max_demos="
                             f"{self.max_demos}")
        return [instruction, len(demos), knn_k] + list(demos) + \
            [0] * (self.max_demos - len(demos)) + self._trailer(settings)

    @property
    def _seed_knn(self) -> int:
        """The user's program's KNN demos per input, when this search varies KNN demos too
        (0 otherwise: a search without KNN starts from the program's fixed demos alone)."""
        knn = self.base.knn
        return knn.k if knn is not None and self.knn_encoder is not None else 0

    def seed_genome(self) -> Genome:
        """The user's program as given: instruction 0, its demos and its KNN demos."""
        ids = {ex.id: i for i, ex in enumerate(self.pool)}
        demos = [ids[d.id] for d in self.base.demos]
        return [0, len(demos), self._seed_knn] + demos + \
            [0] * (self.max_demos - len(demos)) + self._trailer(None)

    def _trailer(self, settings: Settings | None) -> list[int]:
        if self.settings is None:
            if settings is not None and settings != self.own_settings:
                raise ValueError(f"settings {settings} given to an archive that varies none "
                                 "(build it with a SettingsSpace)")
            return []
        settings = self.own_settings if settings is None else settings
        if settings not in self.settings_options:
            raise ValueError(f"settings {settings} are not in this archive's space "
                             f"{self.settings}")
        return [SETTINGS_MARK, *settings.genes()]

    def program(self, genome: Genome) -> Program:
        k = key(genome)
        knn = None
        if k.knn_k:
            assert self.knn_encoder is not None
            knn = KNNDemos(k=k.knn_k, pool=self.pool, encoder=self.knn_encoder,
                           fields=self._fields)
        update: dict[str, Any] = {
            "instruction": self.instructions[k.instruction],
            "demos": tuple(self.demo(d) for d in k.demos),
            "knn": knn,
        }
        if k.settings is not None:
            update.update({f: v for f, v in k.settings._asdict().items() if f != "model"})
            if k.settings.model is not None:
                update["model"] = self.model_name(k.settings.model)
        return self.base.model_copy(update=update)

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
    if archive.settings is not None:
        _repair_settings(genome, archive, rng)
    return genome


def _repair_settings(genome: Genome, archive: Archive, rng: random.Random) -> None:
    """Give ``genome`` a settings trailer holding an allowed combination: its own when allowed,
    else one of the allowed ones nearest to it (fewest genes changed)."""
    at = DEMOS + archive.max_demos
    own = archive.own_settings.genes()
    genes = genome[at + 1:at + 1 + len(own)]
    genes = [min(max(g, 0), 1 if i < N_SETTINGS else len(archive.models) - 1)
             for i, g in enumerate(genes)] + own[len(genes):]
    options = archive.settings_options
    settings = Settings.from_genes(genes)
    if settings not in options:
        dist = [sum(a != b for a, b in zip(o.genes(), genes, strict=True)) for o in options]
        settings = rng.choice([o for o, d in zip(options, dist, strict=True) if d == min(dist)])
    genome[at:] = [SETTINGS_MARK, *settings.genes()]


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


def mutate_settings(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Flip one setting (rank vs generate, calibration, a reasoning step, the model of a model
    choice) to another allowed combination; a genome of an archive without settings is
    returned unchanged."""
    current, at = settings_of(genome), _settings_at(genome)
    if archive.settings is None or current is None or at is None:
        return genome
    others = [o for o in archive.settings_options if o != current]
    flips = [o for o in others
             if sum(a != b for a, b in zip(o.genes(), current.genes(), strict=True)) == 1]
    if flips or others:
        genome[at + 1:] = rng.choice(flips or others).genes()
    return genome


# ---- demo operators: edits of the demo set that a small model responds to ----

def swap_for_neighbour(genome: Genome, archive: Archive, failures: Sequence[Example],
                       rng: random.Random, *, encoder: str | None = None) -> Genome:
    """Replace one fixed demo (or, with none, add one) by the pool example nearest to a failing
    input (cosine of input embeddings), so the prompt shows a case like the one it got wrong.
    ``failures``: validation examples the parent answered wrongly. On a task with labels the
    neighbour is taken among examples of the failure's gold label when there are any.
    ``encoder``: embedding name, default the archive's KNN encoder, else ``"hashing"``."""
    n = genome[N_DEMOS]
    add = n == 0 and _room(genome, archive)
    if not failures or not (n or add):
        return genome
    failure = rng.choice(list(failures))
    demos = set(genome[DEMOS:DEMOS + n])
    unused = [i for i, ex in enumerate(archive.pool) if i not in demos and ex.id != failure.id]
    if archive.base.labels is not None and len(failure.outputs) == 1:
        same = [i for i in unused if archive.label(i) == failure.label]
        unused = same or unused
    if not unused:
        return genome
    name = encoder or archive.knn_encoder or "hashing"
    sims = archive.pool_vectors(name)[unused] @ archive.embed([failure], name)[0]
    nearest = unused[int(np.argmax(sims))]
    if add:
        genome[DEMOS], genome[N_DEMOS] = nearest, 1
    else:
        genome[DEMOS + rng.randrange(n)] = nearest
    return repair(genome, archive, rng)


def balance_classes(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Make the fixed demos cover as many of the pool's labels as their number allows, in
    place: a demo of the most repeated label gives its slot to one of a missing label (a demo
    set of one class teaches a small model to answer that class). Without labels: unchanged."""
    n = genome[N_DEMOS]
    if archive.base.labels is None or n < 2:
        return genome
    pool_labels = {archive.label(i) for i in range(len(archive.pool))} - {""}
    while True:
        demos = genome[DEMOS:DEMOS + n]
        counts: dict[str, int] = {}
        for d in demos:
            counts[archive.label(d)] = counts.get(archive.label(d), 0) + 1
        missing = sorted(pool_labels - set(counts))
        top = max(counts.values())
        if not missing or top < 2:
            return repair(genome, archive, rng)
        label = rng.choice(sorted(c for c, m in counts.items() if m == top))
        slot = rng.choice([s for s, d in enumerate(demos) if archive.label(d) == label])
        want = rng.choice(missing)
        genome[DEMOS + slot] = rng.choice([i for i in range(len(archive.pool))
                                           if archive.label(i) == want and i not in demos])


ReorderMove = Literal["last", "reverse", "alternate"]


def reorder_demos(genome: Genome, archive: Archive, rng: random.Random, *,
                  by: ReorderMove | None = None) -> Genome:
    """Reorder the fixed demos (small models weigh the last ones most): ``"last"`` moves a
    random demo to the last slot, ``"reverse"`` reverses them, ``"alternate"`` interleaves the
    labels. ``by=None`` picks one of the moves that changes the order, at random."""
    n = genome[N_DEMOS]
    demos = genome[DEMOS:DEMOS + n]
    orders = {"last": lambda: _to_last(demos, rng), "reverse": lambda: demos[::-1],
              "alternate": lambda: _alternate(demos, archive, rng)}
    if by is not None and by not in orders:
        raise ValueError(f"reorder_demos: by must be one of {sorted(orders)}, got {by!r}")
    if n < 2:
        return genome
    moves = [by] if by is not None else \
        ["last", "reverse"] + ["alternate"] * (archive.base.labels is not None)
    rng.shuffle(moves)
    for move in moves:
        order = orders[move]()
        if order != demos:
            genome[DEMOS:DEMOS + n] = order
            break
    return repair(genome, archive, rng)


def _to_last(demos: list[int], rng: random.Random) -> list[int]:
    i = rng.randrange(len(demos) - 1)
    return demos[:i] + demos[i + 1:] + [demos[i]]


def _alternate(demos: list[int], archive: Archive, rng: random.Random) -> list[int]:
    groups: dict[str, list[int]] = {}
    for d in demos:
        groups.setdefault(archive.label(d), []).append(d)
    queues = sorted(groups.values(), key=len, reverse=True)  # the largest first: fewest repeats
    head, rest = queues[:1], queues[1:]
    rng.shuffle(rest)
    queues = head + rest
    order: list[int] = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def resize_demos(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Trade demos for prompt length: drop the longest fixed demo, or add the shortest unused
    pool example as the last demo (one of the two at random, among those possible)."""
    n = genome[N_DEMOS]
    demos = genome[DEMOS:DEMOS + n]
    unused = [i for i in range(len(archive.pool)) if i not in demos]
    moves = ["drop"] * (n > 0) + ["add"] * (_room(genome, archive) and bool(unused))
    if not moves:
        return genome
    if rng.choice(moves) == "drop":
        longest = max(range(n), key=lambda s: (_chars(archive.demo(demos[s])), -s))
        del demos[longest]
    else:
        demos.append(min(unused, key=lambda i: (_chars(archive.pool[i]), i)))
    genome[DEMOS:DEMOS + archive.max_demos] = demos + [0] * (archive.max_demos - len(demos))
    genome[N_DEMOS] = len(demos)
    return repair(genome, archive, rng)


def mutate_knn(genome: Genome, archive: Archive, rng: random.Random) -> Genome:
    """Change the mix of fixed and per-input nearest-neighbour demos: trade a fixed demo for a
    KNN slot or back, or take one KNN demo more or fewer (``n_demos + knn_k <= max_demos``).
    Unchanged when the archive has no KNN demos."""
    if not archive.knn:
        return genome
    n, k = genome[N_DEMOS], genome[KNN]
    demos = genome[DEMOS:DEMOS + n]
    unused = [i for i in range(len(archive.pool)) if i not in demos]
    moves = ["to_knn"] * (n > 0) + ["to_fixed"] * (k > 0 and bool(unused)) + \
        ["more"] * _room(genome, archive) + ["fewer"] * (k > 0)
    if not moves:
        return genome
    move = rng.choice(moves)
    if move == "to_knn":
        del demos[rng.randrange(n)]
    elif move == "to_fixed":
        demos.append(rng.choice(unused))
    genome[KNN] = k + (move in ("to_knn", "more")) - (move in ("to_fixed", "fewer"))
    genome[DEMOS:DEMOS + archive.max_demos] = demos + [0] * (archive.max_demos - len(demos))
    genome[N_DEMOS] = len(demos)
    return repair(genome, archive, rng)


def _room(genome: Genome, archive: Archive) -> bool:
    """Whether one more demo (fixed or KNN) fits the genome's slots and the pool."""
    return genome[N_DEMOS] + genome[KNN] < min(archive.max_demos, len(archive.pool))


def _chars(example: Example) -> int:
    """A demo's length in characters (its fields' values), as KNN prompt estimates count it."""
    return sum(len(v) for v in example.inputs.values()) + \
        sum(len(v) for v in example.outputs.values())


def crossover(a: Genome, b: Genome, archive: Archive, rng: random.Random) -> Genome:
    """A child of two genomes: DEAP's uniform crossover on every gene (settings genes too),
    then repair."""
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


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
