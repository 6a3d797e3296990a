"""Optimize a ``dspy.Module`` on evo's one engine: the module is a program like any other.

gepa's ``DspyAdapter`` is the pattern: the engine knows nothing of DSPy, and an adapter tells it
how to build and run a candidate. Here that adapter is :class:`ModuleProgram`, an
:class:`evo.program.Program` that carries the module, so the archive, the genome, the search,
every optimizer, the run store (kill and resume), the events, the dry run and the reports treat
it as they treat a prompt program:

* its **instruction** is the module's instruction text: one predictor's own, or for several a
  joint text that names each predictor (``[predictor: name]`` lines) and parses back, so
  reflection can rewrite any of them (a ``Rules:`` list that reflection appends holds for every
  predictor: it was learned from the whole module's failures). Instruction proposers that
  write one text without sections (MIPROv2's, COPRO's, EvoPrompt's) cannot target one
  predictor: their text is put before every predictor's own instruction;
* its **demos** are training examples: for each predictor, the demo is that predictor's own
  inputs and outputs from a run of the module on that example that gave these outputs (a
  bootstrapped passing trace, a ChainOfThought's reasoning included), or else the example's
  labeled fields that the predictor has;
* the evaluator runs it through :meth:`ModuleProgram.run` (the extension point
  :class:`evo.search.evaluate.RunsItself`): the module runs under DSPy with every LM call
  through the evo session (:func:`~evo.integrations.dspy.lm.to_dspy`), so the cache, the run's
  journal and the budget's accounting all apply.

``optimize_module(module, trainset, valset, metric, lm=...)`` converts the DSPy data and metric
(:mod:`evo.integrations.dspy.compat`; the metric still gets the ``dspy.Example`` given and the
module's own ``dspy.Prediction``, typed) and calls :func:`evo.api.optimize`. Demos are fixed
per predictor, so the search runs without KNN (per-input) demos. The result's
``program`` is a deep copy of the module with the best instructions and demos set: DSPy's own
``save`` / ``load`` round-trip it (the run's ``best.json`` only describes the module:
:func:`evo.load_program` refuses it).

>>> # result = evo.optimize_module(MyModule(), train, val, my_metric, lm=evo.lm.local(),
>>> #                              optimizer="gepa", run_dir="runs/my-module")
>>> # result.program.save("prog.json"); fresh = MyModule(); fresh.load("prog.json")
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from evo.analysis.projection import Projection, project
from evo.api import Report, Result, optimize
from evo.data import Example
from evo.errors import ConfigError
from evo.integrations.dspy.compat import examples as to_evo
from evo.integrations.dspy.compat import metric as to_evo_metric
from evo.integrations.dspy.lm import to_dspy
from evo.lm.base import LM, LMError
from evo.lm.session import LMSession, Usage
from evo.optimizers import optimizer_class
from evo.optimizers.ensemble import Ensemble
from evo.optimizers.evolution import Evolution
from evo.optimizers.fewshot import KNNFewShot
from evo.program import Prediction, Program
from evo.proposers.reflection import join_rules, split_rules
from evo.runs.events import Callback
from evo.search.engine import Candidate, Optimizer
from evo.search.evaluate import Budget, ScoreMatrix

Step = tuple[str, dict[str, Any], dict[str, Any]]  # (predictor name, its inputs, its outputs)

_SECTION = re.compile(r"^\[predictor: ([^\]\n]+)\][ \t]*$", re.MULTILINE)


def joint_instruction(names: Sequence[str], texts: Sequence[str]) -> str:
    """One text for the instructions of several predictors (one predictor's is its own)."""
    if len(names) == 1:
        return texts[0]
    return "\n\n".join(f"[predictor: {name}]\n{text.strip()}"
                       for name, text in zip(names, texts, strict=True))


def split_instruction(text: str, names: Sequence[str], seed: Sequence[str]) -> list[str]:
    """Each predictor's instruction from a :func:`joint_instruction` text (perhaps rewritten):
    a named section replaces that predictor's seed instruction; text before the first section,
    and a ``Rules:`` list at the end (reflection's), hold for every predictor."""
    if len(names) == 1:
        return [text]
    core, rules = split_rules(text)
    parts = _SECTION.split(core)
    preamble, sections = parts[0].strip(), dict(zip(parts[1::2], parts[2::2], strict=True))
    out = []
    for name, own in zip(names, seed, strict=True):
        body = sections.get(name)
        body = own if body is None else body.strip()
        body = f"{preamble}\n\n{body}" if preamble else body
        out.append(join_rules(body, rules))
    return out


def book_key(example_id: str, outputs: dict[str, Any]) -> tuple[str, tuple]:
    """Where the trace book keeps an example's run that gave ``outputs``."""
    return example_id, tuple(sorted((k, str(v)) for k, v in outputs.items()))


class Bridge:
    """What every copy of one :class:`ModuleProgram` shares: the user's module, the trace book
    (each example's first run that gave each outputs: its predictor calls), the built dspy
    programs and the dspy LMs. Never copied (a program copy is the same module's)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        predictors = list(module.named_predictors())
        if not predictors:
            raise ConfigError("the module has no predictors (dspy.Predict, ChainOfThought ...)")
        self.names = [name for name, _ in predictors]
        self.seed = [p.signature.instructions for _, p in predictors]
        self.book: dict[tuple[str, tuple], list[Step]] = {}
        self.built: dict[tuple, Any] = {}
        self.lms: dict[tuple[int, int], tuple[LMSession, Any]] = {}

    def __deepcopy__(self, memo: dict) -> Bridge:
        return self

    def describe(self) -> dict[str, Any]:
        """The module's identity for a run spec: its class and its predictors' signatures."""
        kind = type(self.module)
        return {"class": f"{kind.__module__}.{kind.__qualname__}",
                "predictors": {name: {"signature": p.signature.signature,
                                      "instructions": p.signature.instructions,
                                      "demos": len(p.demos)}
                               for name, p in self.module.named_predictors()}}

    def lm(self, session: LMSession, max_tokens: int) -> Any:
        """One dspy LM per session (its draw counter numbers repeated sampled requests)."""
        key = (id(session), max_tokens)
        if key not in self.lms:
            self.lms[key] = (session, to_dspy(session, max_tokens=max_tokens))
        return self.lms[key][1]

    def record(self, example: Example, outputs: dict[str, Any], steps: list[Step]) -> None:
        self.book.setdefault(book_key(example.id, outputs), steps)

    def predictor_demos(self, demo: Example) -> dict[str, dict[str, Any]]:
        """Each predictor's demo from one evo demo: its own call in a run that gave the demo's
        outputs, else the demo's fields it has (at least one input and one output)."""
        out: dict[str, dict[str, Any]] = {}
        for name, inputs, outputs in self.book.get(book_key(demo.source_id, demo.outputs), ()):
            out.setdefault(name, {**inputs, **outputs})
        fields = {**demo.inputs, **demo.outputs}
        for name, predictor in self.module.named_predictors():
            if name in out:
                continue
            ins, outs = predictor.signature.input_fields, predictor.signature.output_fields
            own = {k: v for k, v in fields.items() if k in ins or k in outs}
            if any(k in ins for k in own) and any(k in outs for k in own):
                out[name] = own
        return out

    def build(self, instruction: str, demos: Sequence[Example]) -> Any:
        """A deep copy of the module with these instructions and demos (no demos: the module's
        own). Built once per (instruction, demos): a candidate's program stays the same."""
        import dspy

        key = (instruction, tuple((d.id, tuple(sorted(d.outputs.items()))) for d in demos))
        if key in self.built:
            return self.built[key]
        program = self.module.deepcopy()
        texts = split_instruction(instruction, self.names, self.seed)
        per_demo = [self.predictor_demos(d) for d in demos]
        for (name, predictor), text in zip(program.named_predictors(), texts, strict=True):
            predictor.signature = predictor.signature.with_instructions(text)
            if demos:
                predictor.demos = [dspy.Example(**d[name]) for d in per_demo if name in d]
        self.built[key] = program
        return program


def _lm_error(exc: BaseException) -> LMError | None:
    """The evo LM error behind an exception of DSPy's, if there is one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass(frozen=True)
class ModulePrediction(Prediction):
    """A module run's prediction: the outputs as text (for evo: matrix, feedback, vote keys)
    and the module's own ``dspy.Prediction`` (typed values, ``reasoning``) for the DSPy metric
    (:func:`evo.integrations.dspy.compat.metric` passes it on)."""

    dspy_prediction: Any = field(default=None, compare=False, repr=False)


class ModuleProgram(Program):
    """A ``dspy.Module`` as an evo program (see the module docstring): ``instruction`` is the
    module's (joint) instruction text, ``demos`` are training examples, ``signature`` is the
    module's inputs and labeled outputs. :meth:`run` runs it; :meth:`to_module` is the dspy
    module it stands for."""

    bridge: Any = Field(default=None, exclude=True, repr=False)

    @classmethod
    def from_module(cls, module: Any, signature: str) -> ModuleProgram:
        bridge = Bridge(module)
        return cls(signature=signature, instruction=joint_instruction(bridge.names, bridge.seed),
                   bridge=bridge)

    @property
    def module(self) -> Any:
        return self.bridge.module

    def to_module(self) -> Any:
        """A deep copy of the module with this program's instructions and demos (KNN demos,
        chosen per input, are no module's: such a program is a :class:`ConfigError`)."""
        if self.knn is not None:
            raise ConfigError(f"this program has KNN demos: {_KNN}")
        return self.bridge.build(self.instruction, self.demos).deepcopy()

    def run(self, example: Example, session: LMSession, max_tokens: int) -> Prediction:
        """Run the module on ``example`` with every LM call through ``session``. An exception
        of DSPy's (a reply its adapter cannot parse) is an unusable reply; an evo LM error is
        left to the evaluator (a failed cell)."""
        import dspy

        program = self.bridge.build(self.instruction, self.demos + self.knn_demos(example))
        names = {id(p): n for n, p in program.named_predictors()}
        with dspy.context(lm=self.bridge.lm(session, max_tokens), trace=[]):
            try:
                pred = program(**example.inputs)
            except Exception as exc:  # noqa: BLE001 - an unparseable reply, a module's bug
                cause = _lm_error(exc)
                if cause is not None:  # (DSPy wraps the engine's errors in its own)
                    raise cause from None
                message = f"program failed: {type(exc).__name__}: {str(exc)[:300]}"
                return Prediction("", None, message)
            trace = list(dspy.settings.trace)
        steps = [(names.get(id(p), "?"), dict(inputs), dict(out)) for p, inputs, out in trace]
        outputs = {k: str(v) for k, v in dict(pred).items()}
        self.bridge.record(example, outputs, steps)
        text = "\n".join(f"{name} -> " + "; ".join(f"{k}: {v}" for k, v in out.items())
                         for name, _, out in steps) if len(steps) > 1 else \
            "\n".join(f"{k}: {v}" for k, v in outputs.items())
        return ModulePrediction(text, outputs, None, pred)

    def to_json(self) -> dict:
        return {**super().to_json(), "dspy_module": self.bridge.describe()}


@dataclass
class ModuleResult:
    """The optimized module (a deep copy of the input) and evo's :class:`~evo.api.Result` of
    the search (candidates, score matrix, events, usage, the run store's sittings)."""

    program: Any
    result: Result
    originals: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def best(self) -> Candidate:
        return self.result.candidates[self.result.best_id]

    @property
    def best_val(self) -> float:
        return self.result.best_val

    @property
    def baseline_val(self) -> float:
        return self.result.baseline_val

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The final pick's held-out confirmation (:attr:`evo.api.Result.confirmation`)."""
        return self.result.confirmation

    @property
    def candidates(self) -> list[Candidate]:
        return self.result.candidates

    @property
    def matrix(self) -> ScoreMatrix:
        return self.result.matrix

    @property
    def metric_calls(self) -> int:
        return self.result.metric_calls

    @property
    def budget(self) -> int:
        return self.result.budget

    @property
    def usage(self) -> Usage:
        return self.result.usage

    @property
    def seconds(self) -> float:
        return self.result.seconds

    @property
    def stop_reason(self) -> str:
        return self.result.stop_reason

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.result.events

    def report(self, testset: Sequence[Any], *, progress: bool = False) -> Report:
        """Baseline vs the optimized module on held-out ``dspy.Example`` s
        (:meth:`evo.api.Result.report`)."""
        test = to_evo(testset, source="testset", originals=self.originals)
        return self.result.report(test, progress=progress)

    def summary(self) -> str:
        r = self.result
        return (f"validation {r.baseline_val:.3f} -> {r.best_val:.3f} "
                f"({self.best.op}, candidate {r.best_id} of {len(r.candidates)}); "
                f"{r.metric_calls}/{r.budget} metric calls, {r.usage.requests} LM calls; "
                f"{r.stop_reason}\n{r.usage.efficiency_line(r.seconds)}")


def module_program(module: Any, data: Sequence[Example]) -> ModuleProgram:
    """The :class:`ModuleProgram` of ``module`` for examples like ``data``'s (its first row
    names the inputs and the labeled outputs)."""
    first = data[0]
    return ModuleProgram.from_module(
        module, f"{', '.join(first.inputs)} -> {', '.join(first.outputs)}")


_KNN = ("KNN demos are per input; a dspy.Module's demos are fixed, so the returned module could "
        "not hold what was scored: use bootstrap_fewshot (or labeled_fewshot / "
        "bootstrap_fewshot_random_search) for demos")
_VOTE = ("an Ensemble with combine='vote' may return a vote of several programs, which is no "
         "single dspy.Module: pass Ensemble(combine='best', ...)")
_MODULE_MAX_TOKENS = 256  # a module's predictor replies (reasoning, several fields) need room


def module_optimizer(optimizer: Optimizer | str | None, budget: int | Budget | None,
                     max_tokens: int | None, max_demos: int | None,
                     minibatch_size: int | None = None) -> Optimizer:
    """The optimizer to run: by name or given (default: evo's Evolution), with the keyword
    arguments (``budget`` as metric calls, ``max_tokens``, ``max_demos``, ``minibatch_size``)
    set on it when given, ``max_tokens`` 256 unless set, and no KNN demos. What cannot give one
    dspy module (KNN demos asked for, an Ensemble vote) is a :class:`ConfigError` here, before
    any LM call."""
    update: dict[str, Any] = {}
    if budget is not None:
        update["budget"] = budget if isinstance(budget, Budget) else Budget(metric_calls=budget)
    if max_demos is not None:
        update["max_demos"] = max_demos
    if max_tokens is not None:
        update["max_tokens"] = max_tokens
    if optimizer is None or isinstance(optimizer, str):
        kind = Evolution if optimizer is None else optimizer_class(optimizer)
        if issubclass(kind, KNNFewShot):
            raise ConfigError(f"optimizer {optimizer!r}: {_KNN}")
        if minibatch_size is not None:
            update["minibatch_size"] = _minibatch_field(kind, minibatch_size)
        update.setdefault("max_tokens", _MODULE_MAX_TOKENS)
        if optimizer is None:
            opt = Evolution(knn=False, encoder="hashing", **update)
        else:
            opt = kind(**{"knn": False, **update})
        _check_one_module(opt)
        return opt
    if not hasattr(optimizer, "model_copy"):
        if update or minibatch_size is not None:
            raise ConfigError("budget / max_tokens / max_demos / minibatch_size go on the "
                              "optimizer you pass (it is not a SearchConfig that evo can copy "
                              "with them)")
        return optimizer
    if isinstance(optimizer, KNNFewShot):
        raise ConfigError(f"{type(optimizer).__name__}: {_KNN}")
    if minibatch_size is not None:
        update["minibatch_size"] = _minibatch_field(type(optimizer), minibatch_size)
    explicit = getattr(optimizer, "model_fields_set", set())
    if "max_tokens" not in update and "max_tokens" not in explicit:
        update["max_tokens"] = _MODULE_MAX_TOKENS
    if getattr(optimizer, "knn", False):
        if "knn" in explicit:
            raise ConfigError(f"{type(optimizer).__name__}(knn=True): {_KNN}")
        update["knn"] = False  # the SearchConfig default: off, as for an optimizer evo builds
    _check_one_module(optimizer)
    return optimizer.model_copy(update=update) if update else optimizer


def _minibatch_field(kind: type, value: int) -> int:
    """``minibatch_size=`` for an optimizer class that has that field (else a ConfigError)."""
    if "minibatch_size" not in getattr(kind, "model_fields", {}):
        name = getattr(kind, "name", "") or kind.__name__
        raise ConfigError(f"minibatch_size={value}: optimizer {name!r} has no minibatch_size "
                          "(evolution, miprov2 and evoprompt have one)")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"minibatch_size={value!r}: give a whole number of at least 1")
    return value


def _check_one_module(optimizer: Any) -> None:
    """An Ensemble that may vote cannot give one dspy module (nor can a member that votes)."""
    if isinstance(optimizer, Ensemble) and optimizer.combine == "vote":
        raise ConfigError(_VOTE)


def optimize_module(module: Any, trainset: Sequence[Any], valset: Sequence[Any],
                    metric: Callable[..., Any], *, lm: LM | LMSession,
                    optimizer: Optimizer | str | None = None,
                    reflection_lm: LM | LMSession | None = None,
                    budget: int | Budget | None = None, seed: int = 0,
                    max_demos: int | None = None, max_tokens: int | None = None,
                    minibatch_size: int | None = None, bootstrap_share: float | None = None,
                    description: str = "", cache: Any = True,
                    run_dir: str | Path | None = None, progress: bool = False,
                    on_event: Callable[[dict], None] | None = None,
                    callbacks: Sequence[Callback] = (), dry_run: bool = False,
                    log: Callable[[str], None] | None = None) -> ModuleResult | Projection:
    """Search the instructions and demos of every predictor of ``module`` with any evo
    optimizer (see the module docstring). ``trainset`` / ``valset`` are ``dspy.Example`` lists
    (``with_inputs`` set), ``metric(gold, pred, trace=None)`` a DSPy metric (a number, or a
    Prediction with ``score`` and ``feedback``: the feedback reaches reflection).

    ``gold`` is the ``dspy.Example`` you gave and ``pred`` the module's own ``dspy.Prediction``
    (typed values: ints, lists, ``reasoning``).

    ``optimizer`` is a name (``"gepa"``, ``"miprov2"``, ``"bootstrap_fewshot"`` …) or a
    configured optimizer (default: :class:`~evo.optimizers.evolution.Evolution`); ``budget``
    (metric calls, or a :class:`Budget`), ``max_demos``, ``max_tokens`` (reply cap of each
    predictor call: 256 unless given here or set on the optimizer you pass) and
    ``minibatch_size`` (for optimizers that have one: evolution, miprov2, evoprompt) are set on
    it when given. KNN demos are per input and a module's demos are fixed, so the search runs
    without them (``knn=False``); ``"knn_fewshot"``, an optimizer passed with ``knn=True``, and an
    :class:`~evo.optimizers.ensemble.Ensemble` that may vote (``combine="vote"``: a vote is no
    single module; pass ``combine="best"``) are a :class:`ConfigError` before any LM call.
    ``run_dir``, ``callbacks``, ``on_event``, ``progress``, ``seed`` and ``cache``
    are :func:`evo.api.optimize`'s: with ``run_dir`` a killed run resumes with no paid call
    repeated. ``dry_run`` returns the projected cost (:func:`evo.analysis.projection.project`;
    its task LM calls are per predictor) without any LM call. ``log`` receives one line per
    event.

    Changed since the module search had its own loop: ``bootstrap_share`` is gone (demos are
    the optimizer's: bootstrap_fewshot, gepa, evolution … bootstrap their own; passing it is a
    :class:`ConfigError`); ``max_demos`` defaults to the optimizer's (4, was 3); the result's
    ``best`` is the engine's :class:`~evo.search.engine.Candidate` (was a ModuleCandidate) and
    ``demo_pool`` is gone (the demos are in ``result.program``'s predictors)."""
    if bootstrap_share is not None:
        raise ConfigError("bootstrap_share is gone: demos are bootstrapped by the optimizer "
                          "(e.g. optimizer='bootstrap_fewshot', or gepa / evolution with "
                          "max_demos); drop the argument")
    for name, data in (("trainset", trainset), ("valset", valset)):
        for row, ex in enumerate(data, 1):
            if not getattr(ex, "_input_keys", None):
                raise ConfigError(f"{name} row {row}: call .with_inputs(...) on the "
                                  "dspy.Example")
    if not valset:
        raise ConfigError("valset is empty: the search needs validation examples")
    originals: dict[str, Any] = {}  # evo example id -> the user's dspy.Example, for the metric
    train = to_evo(trainset, source="trainset", originals=originals)
    val = to_evo(valset, source="valset", originals=originals)
    opt = module_optimizer(optimizer, budget, max_tokens, max_demos, minibatch_size)
    if opt.budget.metric_calls < len(val):
        raise ConfigError(f"budget {opt.budget.metric_calls} cannot validate the program once "
                          f"on {len(val)} validation examples")
    program = module_program(module, val)
    if dry_run:
        projection = project(program, train, val, opt)
        calls = projection.task_calls * len(program.bridge.names)  # a call per predictor
        return dataclasses.replace(projection, task_calls=calls)
    events = on_event
    if log is not None:
        def events(event: dict) -> None:
            log(f"{event['event']}: " + ", ".join(f"{k}={v}" for k, v in event.items()
                                                  if k in ("candidate", "op", "val_score",
                                                           "stop_reason")))
            if on_event is not None:
                on_event(event)
    result = optimize(program, train, val, lm=lm, optimizer=opt,
                      metric=to_evo_metric(metric, originals=originals),
                      reflection_lm=reflection_lm, seed=seed, cache=cache,
                      description=description, run_dir=run_dir, progress=progress,
                      on_event=events, callbacks=callbacks)
    best = result.best
    if not isinstance(best, ModuleProgram):  # (a user's optimizer that votes: refused above)
        raise ConfigError("optimize_module needs an optimizer that returns one program (an "
                          "ensemble vote has no dspy module)")
    return ModuleResult(program=best.to_module(), result=result, originals=originals)
