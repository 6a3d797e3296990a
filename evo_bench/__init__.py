"""``evo bench``: tasks x optimizers x budgets x seeds, evo's optimizers and DSPy's, one ledger.

Every cell of the grid runs one optimizer on one task split (seeded) under a budget of metric
calls, on the very same LM for both sides: DSPy's optimizers get ``evo.to_dspy(session)``, so
their LM calls (task, proposals, reflection, adapter re-asks) land in the same evo session ledger
as an evo search's. Each cell then scores its program on the held-out test split and writes
``OUT/TASK/seedS/OPTIMIZER-bBUDGET/result.json``.

Resume: a cell with a ``result.json`` is done and skipped; a cell killed half-way reruns on its
own response cache (``cache.sqlite`` beside it), which replays every call it had paid, so a
stopped suite restarts where it stopped. Test scores go through one test cache per task split:
a program two optimizers both found, and the baselines, are paid once.

>>> # evo bench --config benchmarks/configs/small.toml
>>> # evo bench --tasks trec sms_spam --optimizers evolution dspy.gepa --budgets 300 --seeds 0 1
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import tomllib
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

import evo
from evo._io import write_json
from evo.analysis.compare import Comparison, format_p, paired
from evo.data import DataError, Example, Task
from evo.errors import DamagedFileError
from evo.integrations.dspy.lm import to_dspy
from evo.kernels.stats import bootstrap_means
from evo.lm import make_lm, session_for
from evo.lm.base import LMUnavailableError
from evo.lm.session import LMSession
from evo.metrics import Metric, as_score, exact_match
from evo.optimizers import names
from evo.program import (
    Prediction,
    Program,
    Signature,
    default_instruction,
    validate_file_data,
)
from evo.runs.store import data_digest
from evo.search.evaluate import evaluate_program

DSPY_PREFIX = "dspy."
# Reply cap of DSPy task calls: ChatAdapter's field markers take ~20 tokens around a short answer
# (evo's own format needs a few); a longer cap only lets a small model ramble.
TASK_TOKENS = 64
BASELINES = ("baseline", "dspy.baseline")  # the unoptimized program, evo's and DSPy's format


class BenchConfig(BaseModel):
    """One suite: the grid and the splits. Loads from a TOML file (``evo bench --config``)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1)
    optimizers: list[str] = Field(min_length=1)
    budgets: list[int] = Field(default=[300], min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    n_train: int = Field(default=100, ge=1)
    n_val: int = Field(default=50, ge=1)
    n_test: int = Field(default=200, ge=1)
    model: str = "qwen2.5-coder-0.5b"
    out: Path = Path("runs/bench")
    # Zero-shot programs scored on each split: evo's prompt format and DSPy's ChatAdapter.
    baselines: list[str] = list(BASELINES)

    @field_validator("budgets")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(b <= 0 for b in value):
            raise ValueError(f"budgets must be positive, got {value}")
        return value

    @field_validator("optimizers")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        known = set(names()) | set(DSPY_OPTIMIZERS)
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown optimizers {unknown}: choose from {sorted(known)}")
        return value

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {list(BASELINES)}")
        return value

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> BenchConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise DataError(str(exc), source=str(path)) from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def cells(self) -> list[tuple[str, int, str, int]]:
        """(task, seed, optimizer, budget) in run order: seed by seed, so a suite stopped early
        has every task at its first seeds; a split's cells back to back."""
        names = list(dict.fromkeys(self.baselines + self.optimizers))
        out = []
        for seed in self.seeds:
            for task in self.tasks:
                for name in names:
                    for budget in ([0] if name in BASELINES else self.budgets):
                        out.append((task, seed, name, budget))
        return out


# --- the DSPy side -------------------------------------------------------------------------------

def dspy_signature(task: Task, instruction: str):
    """The task's signature as a ``dspy.Signature``: a closed label set becomes a ``Literal``."""
    import typing

    import dspy

    signature = Signature.parse(task.signature)
    fields: dict[str, Any] = {f.name: (str, dspy.InputField()) for f in signature.inputs}
    for f in signature.outputs:
        kind = typing.Literal[tuple(task.labels)] if task.labels else str  # type: ignore[misc]
        fields[f.name] = (kind, dspy.OutputField())
    return dspy.make_signature(fields, instruction)


def to_dspy_examples(examples: Sequence[Example]) -> list:
    import dspy

    return [dspy.Example(**ex.inputs, **ex.outputs).with_inputs(*ex.inputs) for ex in examples]


class Counter:
    """A thread-safe count."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.n += 1


def counted_predict(signature: Any, runs: Counter):
    """A ``dspy.Predict`` that counts its runs in ``runs``: the DSPy side's metric calls, in the
    unit of evo's (one program run on one example, scored or not: DSPy skips the metric when a
    reply cannot be parsed, GEPA still counts it). The counter lives on a class made for this
    run, so every copy an optimizer makes (``deepcopy``, ``reset_copy``) counts too."""
    import dspy

    def forward(self, **kwargs):
        runs.add()
        return dspy.Predict.forward(self, **kwargs)

    cls = type("CountedPredict", (dspy.Predict,), {"forward": forward})
    return cls(signature)


class EvoMetric:
    """A DSPy metric ``(gold, pred, trace=None, ...)`` over an evo metric. ``feedback=True``
    returns GEPA's ``dspy.Prediction(score=, feedback=)``; otherwise a float."""

    def __init__(self, metric: Metric, outputs: Sequence[str], *, feedback: bool = False) -> None:
        self.metric, self.outputs, self.feedback = metric, tuple(outputs), feedback
        self.__name__ = getattr(metric, "__name__", "metric")

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        import dspy

        example = Example(inputs={k: str(gold[k]) for k in gold.inputs().keys(include_dspy=False)},
                          outputs={k: str(gold[k]) for k in self.outputs})
        score = as_score(self.metric(example, dspy_prediction(pred, self.outputs)))
        if self.feedback:
            return dspy.Prediction(score=score.value, feedback=score.feedback or
                                   f"score {score.value:g}")
        return score.value


def dspy_prediction(pred: Any, outputs: Sequence[str]) -> Prediction:
    """An evo :class:`Prediction` from a ``dspy.Prediction`` (missing fields: not ok)."""
    values = {k: getattr(pred, k, None) for k in outputs}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        return Prediction(str(pred), None, f"missing {missing}")
    return Prediction(str(pred), {k: str(v) for k, v in values.items()})


def _dspy_gepa(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    import dspy

    return dspy.GEPA(metric=metric, max_metric_calls=budget, reflection_lm=lms["prompt"],
                     num_threads=1, seed=seed, track_stats=False
                     ).compile(student, trainset=train, valset=val)


def _dspy_miprov2(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    from dspy.teleprompt import MIPROv2

    # DSPy's own auto="light" sizes (6 candidates) with the trials fitted to the budget: the
    # default program's full evaluation, ~8 calls per bootstrapped demo set, then minibatch
    # trials with a full evaluation every 5.
    n_val, candidates = len(val), 6
    batch = min(35, n_val)
    left = budget - n_val - 8 * candidates
    trials = max(1, int(left / (batch + n_val / 5)))
    optimizer = MIPROv2(metric=metric, prompt_model=lms["prompt"], task_model=lms["task"],
                        auto=None, num_candidates=candidates, num_threads=1, seed=seed,
                        verbose=False, track_stats=False)
    return optimizer.compile(student, trainset=train, valset=val, num_trials=trials,
                             minibatch_size=batch, requires_permission_to_run=False)


def _dspy_copro(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    from dspy.teleprompt import COPRO

    # COPRO scores every candidate on the set it is given: give it the validation split, and
    # breadth x depth evaluations of it fit the budget.
    depth = 2
    breadth = max(2, budget // (depth * len(val)))
    optimizer = COPRO(prompt_model=lms["prompt"], metric=metric, breadth=breadth, depth=depth,
                      init_temperature=1.0)
    return optimizer.compile(student, trainset=val, eval_kwargs={"num_threads": 1,
                                                                "display_progress": False})


def _dspy_bootstrap_rs(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    from dspy.teleprompt import BootstrapFewShotWithRandomSearch

    # Three fixed programs (zero-shot, labeled, unshuffled bootstrap) plus n random ones, each
    # scored on the whole validation split; each bootstrapped one first spends ~8 teacher runs.
    n = max(1, (budget - 3 * len(val) - 8) // (len(val) + 8))
    optimizer = BootstrapFewShotWithRandomSearch(metric=metric, max_bootstrapped_demos=4,
                                                 max_labeled_demos=4, num_candidate_programs=n,
                                                 num_threads=1)
    return optimizer.compile(student, trainset=train, valset=val)


def _dspy_simba(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    from dspy.teleprompt import SIMBA

    # SIMBA has one set: its minibatches and its final pick (every kept winner scored on the
    # whole set) come from what it is given, so give it the validation split, as COPRO. Worst
    # case per step: bsize x num_candidates trajectories + (num_candidates + 1) x bsize
    # candidate runs; at the end (num_candidates + 1) x n_val. DSPy's defaults, cut to fit:
    # at most half the budget for the final pick, the rest over up to 8 steps.
    n_val = len(val)
    candidates = max(1, min(6, budget // (2 * n_val) - 1))
    left = max(0, budget - (candidates + 1) * n_val)
    per_example = 2 * candidates + 1
    bsize = max(1, min(32, n_val, left // (8 * per_example)))
    steps = max(1, min(8, left // (bsize * per_example)))
    optimizer = SIMBA(metric=metric, bsize=bsize, num_candidates=candidates, max_steps=steps,
                      prompt_model=lms["prompt"], num_threads=1)
    return optimizer.compile(student, trainset=val, seed=seed)


def _dspy_infer_rules(student, train, val, metric: EvoMetric, budget: int, seed: int, lms):
    from dspy.teleprompt.infer_rules import InferRules

    # BootstrapFewShot first (~8 teacher runs), then each candidate's rules scored on the whole
    # validation split. The rules come from the prompt model, as every proposal here does.
    candidates = max(1, (budget - 8) // len(val))
    optimizer = InferRules(num_candidates=candidates, num_threads=1, metric=metric,
                           max_bootstrapped_demos=4, max_labeled_demos=4)
    optimizer.rules_induction_program.teacher_settings = {"lm": lms["prompt"]}
    return optimizer.compile(student, trainset=train, valset=val)


DSPY_OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "dspy.gepa": _dspy_gepa,
    "dspy.miprov2": _dspy_miprov2,
    "dspy.copro": _dspy_copro,
    "dspy.bootstrap_random_search": _dspy_bootstrap_rs,
    "dspy.simba": _dspy_simba,
    "dspy.infer_rules": _dspy_infer_rules,
}


def dspy_evaluate(program: Any, examples: Sequence[Example], lm: Any, metric: Metric,
                  outputs: Sequence[str]) -> np.ndarray:
    """Scores of a DSPy program on ``examples`` (one by one; a failed call or an unparseable
    reply scores 0, as in ``dspy.Evaluate``)."""
    import dspy


    scores = np.zeros(len(examples))
    with dspy.context(lm=lm):
        for i, ex in enumerate(examples):
            try:
                pred = program(**ex.inputs)
            except LMUnavailableError:
                raise
            except Exception:  # noqa: BLE001 - DSPy's adapter errors: the reply is unusable
                continue
            scores[i] = as_score(metric(ex, dspy_prediction(pred, outputs))).value
    return scores


def dspy_program_json(program: Any) -> dict[str, Any]:
    """What a DSPy program learned: each predictor's instruction and demos."""
    return {name: {"instruction": p.signature.instructions,
                   "demos": [dict(d) for d in p.demos]}
            for name, p in program.named_predictors()}


# --- one cell -----------------------------------------------------------------------------------

def majority_rate(examples: Sequence[Example], outputs: Sequence[str]) -> float:
    """Accuracy of always giving the most common gold output: the floor a classifier must beat
    (on SMS spam, 88% ham, it is most of the scale)."""
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for ex in examples:
        counts[tuple(ex.outputs[k] for k in outputs)] += 1
    return max(counts.values()) / len(examples) if examples else 0.0


@contextlib.contextmanager
def _chatter_to(path: Path) -> Iterator[None]:
    """DSPy's prints, progress bars and per-example error logs go to ``path``, not the terminal
    (the bench prints one summary per run; the log keeps the detail)."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        logger = logging.getLogger("dspy")
        handlers, propagate = logger.handlers[:], logger.propagate
        logger.handlers = [logging.StreamHandler(f)]  # DSPy's own handler holds sys.stderr
        logger.propagate = False
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            logger.handlers, logger.propagate = handlers, propagate


class Cell:
    """One (task, seed, optimizer, budget) run of a suite."""

    def __init__(self, config: BenchConfig, task: Task, seed: int, optimizer: str, budget: int,
                 lm: Any) -> None:
        self.config, self.task, self.seed = config, task, seed
        self.optimizer, self.budget, self.lm = optimizer, budget, lm
        split = config.out / task.name / f"seed{seed}"
        self.dir = split / (optimizer if optimizer in BASELINES else f"{optimizer}-b{budget}")
        self.test_cache = split / "test-cache.sqlite"
        self.signature = Signature.parse(task.signature)
        self.outputs = [f.name for f in self.signature.outputs]

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    def data_digests(self) -> dict[str, str]:
        return {k: data_digest(getattr(self.task, k)) for k in ("train", "val", "test")}

    def done(self) -> dict[str, Any] | None:
        """The finished result, if any. One made with another model or other split sizes is an
        error: the output folder belongs to one configuration."""
        if not self.result_path.exists():
            return None
        done = read_result(self.result_path)
        splits = [len(self.task.train), len(self.task.val), len(self.task.test)]
        if done.get("model") != self.config.model or done.get("splits") != splits:
            raise DataError(f"was made with model {done.get('model')!r} and splits "
                            f"{done.get('splits')}, not {self.config.model!r} and {splits}: "
                            "use another --out for another configuration",
                            source=str(self.result_path))
        data = self.data_digests()
        if done.get("data", data) != data:  # results from before the field are not checked
            changed = [k for k in data if done["data"].get(k) != data[k]]
            raise DataError(f"was made on other {'/'.join(changed)} data than this task's "
                            "(the dataset or its parser changed): move it away to rerun it, "
                            "or use another --out", source=str(self.result_path))
        if "majority" not in done:  # results written before the field existed
            done["majority"] = majority_rate(self.task.test, self.outputs)
            write_json(self.result_path, done)
        return done

    def run(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        resumed = (self.dir / "cache.sqlite").exists()
        session = session_for(self.lm, self.dir / "cache.sqlite")
        dspy_side = self.optimizer.startswith(DSPY_PREFIX)
        quiet = (lambda: _chatter_to(self.dir / "dspy.log")) if dspy_side else \
            contextlib.nullcontext
        started = time.perf_counter()
        with quiet():
            program, metric_calls, evaluate, learned = (
                self._run_dspy(session) if dspy_side else self._run_evo(session))
        wall = time.perf_counter() - started
        usage = session.usage.copy()
        test_session = session_for(self.lm, self.test_cache)
        t0 = time.perf_counter()
        with quiet():
            scores = evaluate(program, list(self.task.test), test_session)
        test_s = time.perf_counter() - t0
        # DSPy's evaluators swallow call errors: an LM lost mid-run would be read as zeros.
        for s in (session, test_session):
            if s.unavailable is not None:
                raise s.unavailable
        result = {
            "task": self.task.name, "seed": self.seed, "optimizer": self.optimizer,
            "side": "dspy" if dspy_side else "evo",
            "budget": self.budget, "model": self.config.model,
            "splits": [len(self.task.train), len(self.task.val), len(self.task.test)],
            "data": self.data_digests(),
            "test": float(scores.mean()), "test_scores": scores.tolist(),
            "majority": majority_rate(self.task.test, self.outputs),
            "metric_calls": metric_calls,
            "over_budget": max(0, metric_calls - self.budget) if self.budget else 0,
            "lm_calls": usage.requests, "paid_lm_calls": usage.calls,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "lm_by_purpose": usage.by_purpose, "wall_s": wall, "lm_s": usage.lm_seconds,
            "resumed": resumed, "test_s": test_s, "lm_share": usage.lm_share(wall),
            "cache_hit_rate": usage.cache_hit_rate,
            "reused_prompt_tokens": usage.reused_prompt_tokens,
            "reused_share": usage.reused_share,
            "program": learned,
        }
        write_json(self.result_path, result)
        result["efficiency"] = usage.efficiency_line(wall)
        return result

    def _metric(self) -> Metric:
        return exact_match

    def _run_evo(self, session: LMSession):
        base = Program(signature=self.task.signature, labels=self.task.labels)

        def evaluate(program, examples, test_session):
            return evaluate_program(program, examples, test_session, self._metric())[0]

        if self.optimizer == "baseline":
            return base, 0, evaluate, base.to_json()
        optimizer = evo.optimizers.get(self.optimizer,
                                       budget=evo.Budget(metric_calls=self.budget))
        result = evo.optimize(base, self.task.train, self.task.val, lm=session,
                              optimizer=optimizer, seed=self.seed, metric=self._metric(),
                              description=self.task.description, run_dir=self.dir / "search")
        best = result.best
        return best, result.metric_calls, evaluate, best.to_json()

    def _run_dspy(self, session: LMSession):
        import dspy


        instruction = default_instruction(self.signature)
        runs = Counter()
        student = counted_predict(dspy_signature(self.task, instruction), runs)
        lms = {"task": to_dspy(session, max_tokens=TASK_TOKENS),
               "prompt": to_dspy(session, purpose="proposal", max_tokens=512)}
        # GEPA reads the metric's feedback; the others want a number.
        metric = EvoMetric(self._metric(), self.outputs, feedback=self.optimizer == "dspy.gepa")

        def evaluate(program, examples, test_session):
            return dspy_evaluate(program, examples,
                                 to_dspy(test_session, max_tokens=TASK_TOKENS),
                                 self._metric(), self.outputs)

        if self.optimizer == "dspy.baseline":
            return student, 0, evaluate, dspy_program_json(student)
        run = DSPY_OPTIMIZERS[self.optimizer]
        train, val = to_dspy_examples(self.task.train), to_dspy_examples(self.task.val)
        # DSPy's Evaluate cancels a run after 10 failed examples (max_errors); a small model's
        # unparseable replies are failures the metric scores 0, not a reason to stop.
        with dspy.context(lm=lms["task"], max_errors=1 << 30):
            program = run(student, train, val, metric, self.budget, self.seed, lms)
        return program, runs.n, evaluate, dspy_program_json(program)


# --- the suite, the table and the plot ---------------------------------------------------------

def run_suite(config: BenchConfig, *, lm: Any = None,
              load: Callable[[str, int], Task] | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run every cell not done yet (in :meth:`BenchConfig.cells` order) on ``lm`` (default: the
    config's ``model``, loaded when a cell needs it); return all results. ``load(task, seed)``
    gives a task's splits (default: the public dataset at the config's sizes), e.g. your own."""
    def public(name: str, seed: int) -> Task:
        return evo.datasets.load(name, seed=seed, n_train=config.n_train, n_val=config.n_val,
                                 n_test=config.n_test)

    load = load or public
    tasks: dict[tuple[str, int], Task] = {}
    results = []
    cells = config.cells()
    for i, (task_name, seed, name, budget) in enumerate(cells, 1):
        if (task_name, seed) not in tasks:
            tasks[(task_name, seed)] = load(task_name, seed)
        cell = Cell(config, tasks[(task_name, seed)], seed, name, budget, lm)
        label = f"[{i}/{len(cells)}] {task_name} seed {seed} {name}" + \
            (f" budget {budget}" if budget else "")
        done = cell.done()
        if done is not None:
            log(f"{label}: done before (test {done['test']:.3f})")
            results.append(done)
            continue
        if lm is None:
            lm = cell.lm = make_lm(config.model)
        try:
            result = cell.run()
        except LMUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken run must not end the suite
            # Recorded beside the run (its cache keeps what it paid); a rerun retries it.
            write_json(cell.dir / "error.json", {"error": f"{type(exc).__name__}: {exc}",
                                                 "traceback": traceback.format_exc()})
            log(f"{label}: FAILED ({type(exc).__name__}: {exc}); see {cell.dir / 'error.json'}")
            continue
        over = f", {result['over_budget']} metric calls over budget" \
            if result["over_budget"] else ""
        efficiency = result.pop("efficiency")
        if name in BASELINES:
            log(f"{label}: test {result['test']:.3f} ({result['test_s']:.0f} s)")
        else:
            log(f"{label}: test {result['test']:.3f}, {result['metric_calls']} metric calls"
                f"{over}, {result['lm_calls']} LM calls, test pass {result['test_s']:.0f} s"
                f"\n    search {efficiency}")
        results.append(result)
    return results


class _ResultShape(BaseModel):
    """The fields of a run's result.json that the tables and plots read (others pass). Strict:
    ``"40"`` is not a budget, and the dict is used as read."""

    model_config = ConfigDict(extra="allow", strict=True)

    task: str
    optimizer: str
    side: str
    budget: int = Field(ge=0)
    seed: int
    test: float
    test_scores: list[float] = Field(min_length=1)
    metric_calls: float
    over_budget: float
    lm_calls: float
    prompt_tokens: float
    wall_s: float
    lm_share: float
    resumed: bool


def read_result(path: Path) -> dict[str, Any]:
    """One run's result; a damaged one (unreadable, or a field missing or of the wrong type)
    is a :class:`DamagedFileError` naming it and the field."""
    hint = "move it away and rerun that cell"
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DamagedFileError(path, f"not a readable result ({type(exc).__name__}: "
                               f"{str(exc)[:120]})", hint=hint) from None
    if not isinstance(result, dict):
        raise DamagedFileError(path, "not an evo bench result (a JSON object)", hint=hint)
    validate_file_data(_ResultShape, result, path, what="an evo bench result", hint=hint)
    return result


def load_results(out: Path) -> list[dict]:
    """Every run result under ``out`` (:func:`read_result`), with ``candidates`` (how many
    candidates an evo search assessed, from its run store's summary) where known."""
    return [{**read_result(p), **_assessed(p.parent)}
            for p in sorted(Path(out).glob("*/seed*/*/result.json"))]


def _assessed(cell: Path) -> dict[str, int]:
    """``{"candidates": n}`` from an evo cell's ``search/result.json`` summary; ``{}`` for a
    DSPy cell, a baseline, or a summary that cannot be read (the table then shows –)."""
    try:
        summary = json.loads((cell / "search" / "result.json").read_text())["summary"]
        return {"candidates": int(summary["candidates"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _mean_ci(per_seed: list[np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of the test accuracy and a 95% bootstrap CI that resamples test
    examples within each seed (each seed keeps its own split)."""
    means = np.array([s.mean() for s in per_seed])
    draws = np.mean([bootstrap_means(s - s.mean(), 4000, seed + i)
                     for i, s in enumerate(per_seed)], axis=0)
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(means.mean()), float(means.mean() + low), float(means.mean() + high)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (task, optimizer, budget) over its seeds."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r["optimizer"], r["budget"])].append(r)
    rows = []
    for (task, name, budget), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        mean, low, high = _mean_ci([np.asarray(r["test_scores"], float) for r in rs])
        rows.append({
            "task": task, "optimizer": name, "side": rs[0]["side"], "budget": budget,
            "seeds": [r["seed"] for r in rs], "per_seed": [r["test"] for r in rs],
            "test": mean, "ci": [low, high],
            "majority": float(np.mean([r.get("majority", math.nan) for r in rs])),
            "metric_calls": float(np.mean([r["metric_calls"] for r in rs])),
            "over_budget": max(r["over_budget"] for r in rs),
            "lm_calls": float(np.mean([r["lm_calls"] for r in rs])),
            "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rs])),
            "wall_s": float(np.mean([r["wall_s"] for r in rs])),
            "lm_share": float(np.mean([r["lm_share"] for r in rs])),
            "resumed": any(r["resumed"] for r in rs),
            "candidates": (float(np.mean([r["candidates"] for r in rs]))
                           if all("candidates" in r for r in rs) else None),
            "unspent": float(np.mean([max(0, budget - r["metric_calls"]) for r in rs])),
        })
    rows.sort(key=lambda r: (r["task"], r["budget"], -r["test"]))
    return rows


def _md(text: object) -> str:
    """``text`` as one markdown table cell: its pipes escaped, its line breaks folded (names
    come from result files, which may have been edited by hand)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(rows: list[dict]) -> str:
    """The markdown table: held-out accuracy (mean over seeds, 95% bootstrap CI over the test
    examples; the per-seed values show the spread between seeds) and what each search spent."""
    lines = ["| task | optimizer | budget | test accuracy [95% CI] | per seed | metric calls "
             "| unspent | candidates assessed | LM calls | prompt tokens | search wall "
             "| LM share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    resumed = False
    best: dict[str, float] = {}  # task -> the highest mean test accuracy: printed in bold
    for r in rows:
        best[r["task"]] = max(best.get(r["task"], -1.0), r["test"])
    uneven = {r["task"] for r in rows for q in rows
              if q["task"] == r["task"] and len(q["per_seed"]) != len(r["per_seed"])}
    for i, r in enumerate(rows):
        if i == 0 or rows[i - 1]["task"] != r["task"]:
            lines.append(f"| {_md(r['task'])} | *always the most common answer* | – | "
                         f"{r['majority']:.3f} | | | | | | | | |")
        over = (f" (**+{r['over_budget']} over**"
                + (", worst seed)" if len(r["per_seed"]) > 1 else ")")) if r["over_budget"] else ""
        budget = str(r["budget"]) if r["budget"] else "–"
        seeds = " / ".join(f"{v:.3f}" for v in r["per_seed"])
        mark = "†" if r["resumed"] else ""
        resumed = resumed or r["resumed"]
        low, high = max(0.0, r["ci"][0]), min(1.0, r["ci"][1])
        assessed = "–" if r.get("candidates") is None else f"{r['candidates']:.0f}"
        spent = (f"{r['metric_calls']:.0f}{over} | {r.get('unspent', 0):.0f} | {assessed} | "
                 f"{r['lm_calls']:.0f} | {r['prompt_tokens'] / 1000:.0f}k | {r['wall_s']:.0f} s "
                 f"| {r['lm_share']:.0%}"
                 if r["budget"] else "– | – | – | – | – | – | –")  # a baseline searches nothing
        acc = f"**{r['test']:.3f}**" if r["test"] == best[r["task"]] else f"{r['test']:.3f}"
        lines.append(
            f"| {_md(r['task'])} | {_md(r['optimizer'])}{mark} | {budget} | {acc} "
            f"[{low:.3f}, {high:.3f}] | {seeds} | {spent} |")
    lines.append("\nCI: resampling of test examples within each seed (test-set noise, not "
                 "seed-to-seed spread). LM calls count cache hits; metric calls = program runs on "
                 "one example, as both sides' budgets count them. Candidates assessed: prompts an "
                 "evo search scored (– where the optimizer does not report it).")
    if resumed:
        lines.append("† resumed from its cache after a stop: prompt tokens, wall time and LM "
                     "share count only what the last run paid (LM and metric calls are whole).")
    if uneven:
        lines.append(f"Not every row of {', '.join(sorted(uneven))} has run the same seeds yet: "
                     "compare those rows seed by seed (the per-seed column), not by their means.")
    return "\n".join(lines)


@dataclass(frozen=True)
class HeadToHead:
    """One evo search against one DSPy search of a task at a budget, over their shared seeds."""

    task: str
    budget: int
    seeds: tuple[int, ...]
    comparison: Comparison  # a = the DSPy optimizer, b = evo's: b_minus_a > 0 means evo is ahead


def head_to_head(results: list[dict]) -> list[HeadToHead]:
    """Each evo search against each DSPy search of the same task and budget, paired example by
    example over the seeds both have run (a seed's test split is the same for both sides)."""
    runs = {(r["task"], r["optimizer"], r["budget"], r["seed"]): r for r in results}
    searches = sorted({(r["task"], r["budget"], r["optimizer"], r["side"]) for r in results
                       if r["budget"]})
    out = []
    for task, budget, ours, side in searches:
        for theirs in (o for t, b, o, sd in searches
                       if (t, b, side, sd) == (task, budget, "evo", "dspy")):
            seeds = tuple(sorted(s for (t, o, b, s) in runs if (t, o, b) == (task, ours, budget)
                                 and (task, theirs, budget, s) in runs))
            if not seeds:
                continue
            pairs = [(runs[(task, theirs, budget, s)]["test_scores"],
                      runs[(task, ours, budget, s)]["test_scores"]) for s in seeds]
            ids = [f"seed{s}:{i}" for s, (a, _) in zip(seeds, pairs) for i in range(len(a))]
            out.append(HeadToHead(task, budget, seeds, paired(
                theirs, ours, np.concatenate([a for a, _ in pairs]),
                np.concatenate([b for _, b in pairs]), ids)))
    return out


def head_to_head_table(matches: list[HeadToHead]) -> str:
    """Markdown: evo − DSPy per task, 95% paired bootstrap CI and permutation p over the pooled
    test examples of the shared seeds, and the examples only one side got right."""
    if not matches:
        return ""
    lines = ["| task | evo − DSPy | budget | seeds | test examples | difference [95% CI] | p "
             "| only evo right | only DSPy right |", "|---|---|---|---|---|---|---|---|---|"]
    for m in matches:
        c = m.comparison
        lines.append(
            f"| {_md(m.task)} | {_md(c.b)} − {_md(c.a)} | {m.budget} | "
            f"{', '.join(map(str, m.seeds))} | {c.n} "
            f"| {c.b_minus_a:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] | {format_p(c.p_value)} "
            f"| {len(c.b_wins)} | {len(c.a_wins)} |")
    lines.append("\nPaired over the same test examples (each seed's own split, pooled over the "
                 "seeds both sides have run): 95% bootstrap CI of the difference and a two-sided "
                 "paired permutation test.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Held-out accuracy vs LM calls, one panel per task (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), squeeze=False)
    names = sorted({r["optimizer"] for r in rows})
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for ax, task in zip(axes.flat, tasks, strict=False):
        labelled = set()
        for r in (r for r in rows if r["task"] == task):
            marker = "s" if r["side"] == "dspy" else "o"
            err = [[r["test"] - r["ci"][0]], [r["ci"][1] - r["test"]]]
            ax.errorbar(r["lm_calls"], r["test"], yerr=err, fmt=marker,
                        color=colors[r["optimizer"]], capsize=3,
                        label=None if r["optimizer"] in labelled else r["optimizer"])
            labelled.add(r["optimizer"])
            if r["budget"]:
                ax.annotate(f"b{r['budget']}", (r["lm_calls"], r["test"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        majority = next((r["majority"] for r in rows if r["task"] == task), math.nan)
        if math.isfinite(majority):
            ax.axhline(majority, ls=":", color="gray", label="always the most common answer")
        for name in names:  # one optimizer at several budgets: a curve
            pts = sorted((r["lm_calls"], r["test"]) for r in rows
                         if r["task"] == task and r["optimizer"] == name)
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), "-", color=colors[name], alpha=0.5)
        ax.set_title(task)
        ax.set_xlabel("LM calls (search)")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("evo (circles) vs DSPy (squares): held-out accuracy vs LM calls\n"
                 "mean over seeds, 95% CI; bN = budget of N metric calls", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path) -> tuple[str, Path]:
    """Write ``OUT/table.md``, ``OUT/summary.json`` and ``OUT/accuracy_vs_calls.png`` from every
    result under ``out``; return the table and the plot's path."""
    results = load_results(out)
    rows = summarize(results)
    if not rows:
        raise DataError("no run results (TASK/seedS/RUN/result.json) here: run the suite first",
                        source=str(out))
    pairs = head_to_head_table(head_to_head(results))
    text = table(rows) + (f"\n\n{pairs}" if pairs else "")
    (out / "table.md").write_text(text + "\n")
    write_json(out / "summary.json", rows)
    return text, plot(rows, out / "accuracy_vs_calls.png")
