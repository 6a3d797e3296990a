"""Optimize a ``dspy.Module``: every predictor's instruction and demos form the genome.

``optimize_module(module, trainset, valset, metric, lm=...)`` runs the module itself under DSPy
(on any evo LM through :func:`evo.to_dspy`, the embedded GGUF included), so the search sees
exactly what the user's program does: its adapters, its control flow, all its predictors.

* **Bootstrap** (DSPy's BootstrapFewShot): the module runs on training examples; every predictor
  call of a run the metric passes becomes a demo for that predictor (its own inputs and outputs,
  a ChainOfThought's reasoning included).
* **Evolution** (GEPA-style): a parent is drawn from the instance-level Pareto front of the
  validation score matrix (:func:`evo.kernels.pareto.select_from_pareto_front`); one predictor,
  round robin, is varied: a new demo set from its bootstrapped pool, or a reflective rules update
  of its instruction from the parent's failures (that predictor's own inputs and outputs plus the
  metric's feedback, :mod:`evo.proposers.reflection`). A child that beats its parent on a minibatch (half
  parent failures) is validated in full. Cells are paid once; the budget counts metric calls.

The result is a deep copy of the module with the best instructions and demos set: DSPy's own
``save`` / ``load`` round-trip it.

>>> # result = evo.optimize_module(MyModule(), train, val, my_metric, lm=evo.lm.local())
>>> # result.program.save("prog.json"); fresh = MyModule(); fresh.load("prog.json")
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evo.data import Example
from evo.integrations.dspy.compat import call_metric, metric_value
from evo.integrations.dspy.compat import examples as to_evo
from evo.integrations.dspy.lm import to_dspy
from evo.kernels.pareto import select_from_pareto_front
from evo.lm import session_for
from evo.lm.base import LM, LMUnavailableError
from evo.lm.session import LMSession, Usage
from evo.program import Prediction, Program
from evo.proposers.reflection import propose
from evo.search.evaluate import BudgetExhausted, Cell, ScoreMatrix, failure_minibatch

Step = tuple[str, dict[str, Any], dict[str, Any]]  # (predictor name, its inputs, its outputs)


@dataclass(frozen=True)
class ModuleGenome:
    """Per predictor (in ``named_predictors`` order): its instruction and its demo ids."""

    instructions: tuple[str, ...]
    demos: tuple[tuple[int, ...], ...]


@dataclass
class ModuleCandidate:
    id: int
    genome: ModuleGenome
    parent: int | None
    op: str
    note: str = ""
    val_score: float = math.nan  # mean over the validation set once validated

    @property
    def validated(self) -> bool:
        return not math.isnan(self.val_score)


@dataclass
class ModuleResult:
    """The optimized module (a deep copy of the input) and what the search did."""

    program: Any
    best: ModuleCandidate
    baseline_val: float
    best_val: float
    candidates: list[ModuleCandidate]
    demo_pool: dict[str, list[dict[str, Any]]]
    matrix: ScoreMatrix  # candidates x validation examples, with each cell's feedback
    metric_calls: int
    budget: int
    usage: Usage
    seconds: float
    stop_reason: str

    def summary(self) -> str:
        return (f"validation {self.baseline_val:.3f} -> {self.best_val:.3f} "
                f"({self.best.op}, candidate {self.best.id} of {len(self.candidates)}); "
                f"{self.metric_calls}/{self.budget} metric calls, {self.usage.requests} LM "
                f"calls; {self.stop_reason}\n{self.usage.efficiency_line(self.seconds)}")


class ModuleSearch:
    """The state of one module search (see the module docstring)."""

    def __init__(self, module: Any, trainset: Sequence[Any], valset: Sequence[Any],
                 metric: Callable[..., Any], session: LMSession, reflection: LMSession, *,
                 budget: int, seed: int, max_demos: int, description: str,
                 max_tokens: int) -> None:
        self.module, self.metric = module, call_metric(metric)
        self.train, self.val = list(trainset), list(valset)
        self.session, self.reflection = session, reflection
        self.budget, self.max_demos, self.description = budget, max_demos, description
        self.rng = random.Random(seed)
        self.lm = to_dspy(session, max_tokens=max_tokens)
        self.names = [name for name, _ in module.named_predictors()]
        if not self.names:
            raise ValueError("the module has no predictors (dspy.Predict / ChainOfThought ...)")
        # Each predictor's pool starts with the demos the module already has.
        self.pool: dict[str, list[dict[str, Any]]] = {
            name: [dict(d) for d in p.demos] for name, p in module.named_predictors()}
        self.matrix = ScoreMatrix(to_evo(self.val, source="valset"))
        self.traces: dict[tuple[int, int], list[Step]] = {}
        self.candidates: list[ModuleCandidate] = []
        self.seen: set[ModuleGenome] = set()
        self.metric_calls = 0
        self.programs: dict[int, Any] = {}

    # --- programs and cells --------------------------------------------------------------------
    def program(self, genome: ModuleGenome) -> Any:
        """A deep copy of the module with ``genome``'s instructions and demos."""
        import dspy

        program = self.module.deepcopy()
        for (name, predictor), text, ids in zip(program.named_predictors(), genome.instructions,
                                                genome.demos, strict=True):
            predictor.signature = predictor.signature.with_instructions(text)
            predictor.demos = [dspy.Example(**self.pool[name][i]) for i in ids]
        return program

    def run(self, program: Any, example: Any) -> tuple[float, str, list[Step], Prediction]:
        """Run ``program`` on one example and score it (one metric call): score, feedback, the
        predictor calls it made, and the outputs. A failed run scores 0 with the error."""
        import dspy

        if self.metric_calls >= self.budget:
            raise BudgetExhausted(f"{self.budget} metric calls spent")
        self.metric_calls += 1
        names = {id(p): n for n, p in program.named_predictors()}
        with dspy.context(lm=self.lm, trace=[]):
            try:
                pred = program(**example.inputs())
                trace = list(dspy.settings.trace)
                outputs = {k: str(v) for k, v in dict(pred).items()}
            except LMUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - an unparseable reply, an LM failure ...
                message = f"program failed: {type(exc).__name__}: {str(exc)[:300]}"
                return 0.0, message, [], Prediction("", None, message)
        steps = [(names.get(id(p), "?"), dict(inputs), dict(out)) for p, inputs, out in trace]
        try:
            value, feedback = metric_value(self.metric(example, pred))
        except Exception as exc:  # noqa: BLE001 - a metric bug is recorded on the cell
            return 0.0, f"metric raised {type(exc).__name__}: {exc}", steps, \
                Prediction(str(pred), outputs)
        if not feedback:
            gold = {k: example[k] for k in example.labels().keys()}
            feedback = f"score {value:g}: expected {gold}, got {outputs}"
        return value, feedback, steps, Prediction(str(pred), outputs)

    def evaluate(self, cand: ModuleCandidate, cols: Sequence[int]) -> np.ndarray:
        """Fill ``cand``'s missing validation cells at ``cols`` (all of them must fit the
        budget, so a candidate is never half-judged) and return its scores there."""
        todo = self.matrix.missing(cand.id, cols)
        if len(todo) > self.budget - self.metric_calls:
            raise BudgetExhausted(f"{len(todo)} evaluations needed, "
                                  f"{self.budget - self.metric_calls} left")
        if cand.id not in self.programs:
            self.programs[cand.id] = self.program(cand.genome)
        program = self.programs[cand.id]
        for col in todo:
            value, feedback, steps, pred = self.run(program, self.val[col])
            self.matrix.set(cand.id, col, Cell(value, pred, feedback))
            self.traces[(cand.id, col)] = steps
        return self.matrix.scores[cand.id, list(cols)]

    def add(self, genome: ModuleGenome, parent: int | None, op: str, note: str = ""
            ) -> ModuleCandidate | None:
        if genome in self.seen:
            return None
        self.seen.add(genome)
        cand = ModuleCandidate(len(self.candidates), genome, parent, op, note)
        row = self.matrix.add_row()
        assert row == cand.id
        self.candidates.append(cand)
        return cand

    def validate(self, cand: ModuleCandidate) -> float:
        self.evaluate(cand, range(len(self.val)))
        cand.val_score = self.matrix.row_mean(cand.id)
        return cand.val_score

    # --- operators -----------------------------------------------------------------------------
    def bootstrap(self, base: ModuleCandidate, limit: int) -> int:
        """DSPy's BootstrapFewShot: run the base program on shuffled training examples (at most
        ``limit`` metric calls) and keep each predictor call of a passing run as a demo."""
        program = self.program(base.genome)
        order = self.rng.sample(range(len(self.train)), len(self.train))
        found = 0
        for i in order[:limit]:
            value, _, steps, _ = self.run(program, self.train[i])
            if value >= 1.0 and steps:
                found += 1
                for name, inputs, outputs in steps:
                    if name in self.pool:
                        self.pool[name].append({**inputs, **outputs})
            if found >= 2 * self.max_demos:
                break
        return found

    def vary_demos(self, parent: ModuleCandidate, k: int) -> ModuleGenome | None:
        name = self.names[k]
        if not self.pool[name]:
            return None
        n = min(self.max_demos, len(self.pool[name]))
        ids = tuple(sorted(self.rng.sample(range(len(self.pool[name])), n)))
        demos = list(parent.genome.demos)
        demos[k] = ids
        return ModuleGenome(parent.genome.instructions, tuple(demos))

    def vary_instruction(self, parent: ModuleCandidate, k: int) -> tuple[ModuleGenome | None, str]:
        """A rules update of predictor ``k``'s instruction from the parent's failures."""
        name = self.names[k]
        failures = []
        for col in range(len(self.val)):
            cell = self.matrix.cells.get((parent.id, col))
            if cell is None or cell.score >= 1.0:
                continue
            step = next((s for s in self.traces.get((parent.id, col), []) if s[0] == name), None)
            gold = {key: str(self.val[col][key]) for key in self.val[col].labels().keys()}
            if step is None:
                inputs = {key: str(v) for key, v in self.val[col].inputs().items()}
                said = cell.prediction.text
            else:
                inputs = {key: str(v) for key, v in step[1].items()}
                said = "; ".join(f"{key}: {v}" for key, v in step[2].items())
            failures.append((Example(inputs=inputs, outputs=gold),
                             Cell(cell.score, Prediction(said, None), cell.feedback)))
        if not failures:
            return None, "no failures to reflect on"
        shown = self.rng.sample(failures, min(3, len(failures)))
        # The predictor as an evo Program, for the reflection prompt and its sanity filter
        # (the gold outputs in ``shown`` are what a rule must not simply state).
        predictor = dict(self.module.named_predictors())[name]
        fields = sorted({key for ex, _ in shown for key in ex.inputs})
        outputs = [f for f in predictor.signature.output_fields if f not in fields]
        try:
            surrogate = Program(signature=f"{', '.join(fields)} -> "
                                          f"{', '.join(outputs or ['answer'])}",
                                instruction=parent.genome.instructions[k])
        except ValueError as exc:
            return None, f"cannot show this predictor's fields: {exc}"
        proposal = propose(self.reflection, surrogate, shown, description=self.description,
                           seed=self.rng.randrange(1 << 30))
        if proposal.instruction is None:
            return None, proposal.reason
        instructions = list(parent.genome.instructions)
        instructions[k] = proposal.instruction
        return ModuleGenome(tuple(instructions), parent.genome.demos), "ok"

    def select_parent(self) -> ModuleCandidate:
        validated = [c for c in self.candidates if c.validated]
        scores = self.matrix.scores[[c.id for c in validated]]
        return validated[select_from_pareto_front(scores, None, self.rng)]

    def minibatch(self, parent: ModuleCandidate, size: int) -> list[int]:
        return failure_minibatch(self.matrix.scores[parent.id], size, self.rng)


def optimize_module(module: Any, trainset: Sequence[Any], valset: Sequence[Any],
                    metric: Callable[..., Any], *, lm: LM | LMSession,
                    reflection_lm: LM | LMSession | None = None, budget: int = 300,
                    seed: int = 0, max_demos: int = 3, minibatch_size: int = 5,
                    bootstrap_share: float = 0.2, description: str = "",
                    cache: Any = True, max_tokens: int = 256,
                    log: Callable[[str], None] | None = None) -> ModuleResult:
    """Search the instructions and demos of every predictor of ``module`` (see the module
    docstring). ``trainset`` / ``valset`` are ``dspy.Example`` lists (``with_inputs`` set),
    ``metric(gold, pred, trace=None)`` a DSPy metric (a number, or a Prediction with ``score``
    and ``feedback``). ``budget`` counts metric calls, bootstrapping included."""
    if not valset:
        raise ValueError("valset is empty: the search needs validation examples")
    for name, data in (("trainset", trainset), ("valset", valset)):
        for row, ex in enumerate(data, 1):
            if not getattr(ex, "_input_keys", None):
                raise ValueError(f"{name} row {row}: call .with_inputs(...) on the dspy.Example")
    if budget < len(valset):
        raise ValueError(f"budget {budget} cannot validate the program once on "
                         f"{len(valset)} validation examples")
    session = session_for(lm, cache)
    reflection = session if reflection_lm is None else session_for(reflection_lm, cache)
    sessions = [session] if reflection is session else [session, reflection]

    def spent() -> Usage:
        return sum((s.usage.copy() for s in sessions), Usage())

    before = spent()
    started = time.perf_counter()
    search = ModuleSearch(module, trainset, valset, metric, session, reflection, budget=budget,
                          seed=seed, max_demos=max_demos, description=description,
                          max_tokens=max_tokens)
    say = log or (lambda _: None)
    instructions = tuple(p.signature.instructions for _, p in module.named_predictors())
    demos = tuple(tuple(range(len(search.pool[n]))) for n in search.names)
    base = search.add(ModuleGenome(instructions, demos), None, "seed")
    assert base is not None
    search.validate(base)
    say(f"seed: validation {base.val_score:.3f}")
    stop = "budget exhausted"
    try:
        limit = min(len(search.train), int(bootstrap_share * budget))
        found = search.bootstrap(base, limit)
        say(f"bootstrap: {found} passing runs, pool sizes "
            f"{ {n: len(p) for n, p in search.pool.items()} }")
        stale, step, n = 0, 0, len(search.names)
        while stale < 30:
            if max(c.val_score for c in search.candidates if c.validated) >= 1.0:
                stop = "perfect validation score"
                break
            parent = search.select_parent() if step else base
            k, turn = step % n, step // n  # predictors round robin; turn = k's own count
            step += 1
            # Demo sets first for each predictor (what moves a small model most), then each
            # predictor alternates reflection and demo resampling.
            if turn % 2 == 0:
                genome, op, note = search.vary_demos(parent, k), "demos", search.names[k]
            else:
                genome, note = search.vary_instruction(parent, k)
                op = "reflection"
                if genome is None:
                    genome, op = search.vary_demos(parent, k), "demos"
            child = search.add(genome, parent.id, op, f"{search.names[k]}: {note}") \
                if genome is not None else None
            if child is None:
                stale += 1
                continue
            stale = 0
            batch = search.minibatch(parent, minibatch_size)
            child_scores = search.evaluate(child, batch)
            if child_scores.sum() > search.matrix.scores[parent.id, batch].sum():
                search.validate(child)
                say(f"candidate {child.id} ({op} on {search.names[k]}): validation "
                    f"{child.val_score:.3f} (parent {parent.val_score:.3f})")
        else:
            stop = "no new candidates"
    except BudgetExhausted:
        pass
    best = max((c for c in search.candidates if c.validated),
               key=lambda c: (c.val_score, -c.id))
    usage = spent() - before
    return ModuleResult(program=search.program(best.genome), best=best,
                        baseline_val=base.val_score, best_val=best.val_score,
                        candidates=search.candidates, demo_pool=search.pool, matrix=search.matrix,
                        metric_calls=search.metric_calls, budget=budget, usage=usage,
                        seconds=time.perf_counter() - started, stop_reason=stop)
