"""A ``dspy.Module`` as a self-improving agent: :class:`evo.Agent` for a module you already have.

The agent's programs are :class:`~evo.integrations.dspy.module.ModuleProgram` s (the module's
instructions and demos as an evo program that runs the module itself), so everything an
:class:`~evo.agents.Agent` does works the same way: each call is served by the deployed version
and recorded, grades turn into examples, a trigger schedules an optimization of every
predictor's instruction and demos on the job manager, and the new version is deployed only when
a paired test on held-out graded calls says it wins.

>>> qa = evo.ModuleAgent(dspy.ChainOfThought("question -> answer"), "qa",  # doctest: +SKIP
...                      "question -> answer", lm=evo.lm.local(), trigger=evo.agents.every(100))
>>> pred = qa.forward(question="Who wrote Hamlet?")  # a dspy.Prediction  # doctest: +SKIP
>>> qa.feedback(pred.call_id, 1.0)                                     # doctest: +SKIP
>>> best = qa.to_module()  # the deployed version as a dspy.Module     # doctest: +SKIP

What a version stores is the module's (joint) instruction text, its demos (evo examples) and,
for each demo, the predictor calls of the run that produced it (``demo_steps``: a
ChainOfThought's reasoning, an inner predictor's inputs), so a version rebuilt after a restart
is the module that was tested, not an approximation of it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from evo.agents.agent import Agent, AgentCallError
from evo.agents.manager import Job
from evo.agents.versions import Version
from evo.data import Example
from evo.errors import ConfigError, DamagedFileError, config_error
from evo.integrations.dspy.compat import examples as to_evo_examples
from evo.integrations.dspy.compat import metric as to_evo_metric
from evo.integrations.dspy.lm import to_dspy
from evo.integrations.dspy.module import (
    Bridge,
    ModuleProgram,
    book_key,
    joint_instruction,
    module_optimizer,
)
from evo.lm.base import LM
from evo.lm.session import LMSession
from evo.metrics import Metric
from evo.program import Prediction, Program, Signature, check_format, validate_file_data
from evo.program.ensemble import EnsembleProgram
from evo.search.engine import Optimizer

__all__ = ["AgentModuleProgram", "ModuleAgent", "agent"]

_KEEP_BUILT = 8  # serving keeps this many built modules (the version's own, refine's retries)


class AgentModuleProgram(ModuleProgram):
    """A :class:`ModuleProgram` whose saved form also holds, for each demo, the predictor calls
    that made it (``demo_steps``), so a stored version rebuilds into the module it was."""

    def to_json(self) -> dict:
        data = super().to_json()
        steps = [self.bridge.book.get(book_key(d.source_id, d.outputs)) for d in self.demos]
        if any(steps):
            data["demo_steps"] = json.loads(json.dumps(
                [None if s is None else [list(step) for step in s] for s in steps], default=str))
        return data


class _ServingBridge(Bridge):
    """The bridge of a version that serves: its calls never become demos (no trace book growing
    with every input), each call's session gets its own dspy LM (none kept after the call), and
    at most :data:`_KEEP_BUILT` built modules are kept (refine's retries build one each)."""

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self._lock = threading.Lock()

    def lm(self, session: LMSession, max_tokens: int) -> Any:
        return to_dspy(session, max_tokens=max_tokens)

    def record(self, example: Example, outputs: dict[str, Any], steps: list) -> None:
        return None

    def build(self, instruction: str, demos: Sequence[Example]) -> Any:
        with self._lock:
            program = super().build(instruction, demos)
            (key,) = [k for k, v in self.built.items() if v is program]
            self.built[key] = self.built.pop(key)  # most recently used last
            while len(self.built) > _KEEP_BUILT:
                self.built.pop(next(iter(self.built)))
            return program


class ModuleAgent(Agent):
    """An :class:`~evo.agents.Agent` whose program is ``module`` (a ``dspy.Module``).

    ``signature`` names the module's inputs and labeled outputs (``"question -> answer"``, or a
    ``dspy.Signature`` whose field names are used): calls take those inputs, grades and
    ``expected`` outputs use those outputs. ``metric`` is a DSPy metric
    ``metric(example, prediction, trace=None)`` (converted with
    :func:`evo.integrations.dspy.compat.metric`: it gets a ``dspy.Example`` and the module's
    own ``dspy.Prediction``) or an evo metric ``metric(example, prediction)`` (taken as is; a
    two-argument function is read as an evo metric: give a DSPy metric its ``trace=None``);
    default exact match on the outputs. ``optimizer`` is as :func:`~evo.optimize_module` takes
    it (default: Evolution without KNN demos, replies of up to 256 tokens; KNN demos and an
    Ensemble vote are a :class:`~evo.errors.ConfigError`). Every other keyword is
    :class:`~evo.agents.Agent`'s (``trigger``, ``budget``, ``home``, ``validators`` …);
    ``max_tokens`` (each predictor's reply cap when serving and in the deploy test) defaults to
    the optimizer's. The module's predictors hold its instructions, so ``instruction`` and
    ``labels`` are refused.

    ``agent(**inputs)`` returns an evo :class:`~evo.agents.agent.Reply`;
    :meth:`forward` returns a ``dspy.Prediction`` (with ``call_id`` and ``version``) for DSPy
    code; :meth:`to_module` is the deployed version as a ``dspy.Module``.
    """

    def __init__(self, module: Any, name: str, signature: Any, *, lm: LM | LMSession,
                 metric: Callable[..., Any] | None = None,
                 optimizer: Optimizer | str | None = None, **agent_kw: Any) -> None:
        for key in ("instruction", "labels"):
            if key in agent_kw:
                raise ConfigError(f"agent {name!r}: {key}= is the module's own (its predictors' "
                                  "signatures); drop the argument")
        named = getattr(module, "named_predictors", None)
        if not callable(named):
            raise ConfigError(f"agent {name!r}: module must be a dspy.Module, got "
                              f"{type(module).__name__}")
        opt = module_optimizer(optimizer, None, None, None)
        agent_kw.setdefault("max_tokens", getattr(opt, "max_tokens", 256))
        self.module = module
        self._local = threading.local()  # the last prediction of this thread's call
        seed = self._program(_ServingBridge(module), _signature_text(name, signature), None,
                             f"agent {name!r}")
        self.module_signature = str(seed.signature)
        super().__init__(name, seed, lm=lm, optimizer=opt, metric=_evo_metric(metric),
                         **agent_kw)

    # ---- programs from storage (Agent's two hooks) ---------------------------------------

    def _load(self, version: Version) -> Program | EnsembleProgram:
        """A stored version as the module it was, on a serving bridge of its own."""
        where = f"{self.versions.path} version {version.number}"
        return self._rebuild(version.program, _ServingBridge(self.module), where)

    def _from_dict(self, data: dict[str, Any]) -> Program | EnsembleProgram:
        """A job's program (the version deployed when it was scheduled) on a bridge of the
        job's own: the search's runs become its demos' predictor calls."""
        return self._rebuild(data, Bridge(self.module), f"agent {self.name!r}'s job spec")

    def _rebuild(self, data: dict[str, Any], bridge: Bridge, where: str) -> AgentModuleProgram:
        if not isinstance(data, dict) or "evo_program" not in data:
            raise ConfigError(f"{where}: not one dspy.Module program (an ensemble, or a plain "
                              "evo program: was this home made by another agent?)")
        body = dict(data)
        described = body.pop("dspy_module", None)
        steps = body.pop("demo_steps", None)
        check_format(body, "evo_program", where)
        self._check_module(described, str(body.get("signature", "")), where)
        plain = validate_file_data(Program, body, where, what="a program")
        return self._program(bridge, plain, steps, where)

    @staticmethod
    def _program(bridge: Bridge, base: str | Program, steps: Any,
                 where: str) -> AgentModuleProgram:
        """The program of ``bridge``'s module: a new one for a signature text, else ``base``'s
        instruction and demos, with the demos' predictor calls put back in the trace book."""
        if isinstance(base, str):
            try:
                signature = Signature.parse(base)
            except ValueError as exc:
                raise ConfigError(f"{where}: signature {base!r}: {exc}") from None
            fields: dict[str, Any] = {"signature": signature, "instruction": joint_instruction(
                bridge.names, bridge.seed)}
        else:
            fields = dict(base)
        try:
            program = AgentModuleProgram.model_validate({**fields, "bridge": bridge})
        except ValidationError as exc:
            raise config_error(exc, where) from None
        if program.knn is not None:
            raise ConfigError(f"{where}: a program with KNN demos is no dspy.Module's")
        if steps is not None:
            if not isinstance(steps, list) or len(steps) != len(program.demos):
                raise DamagedFileError(where, f"demo_steps has {_count(steps)} entries for "
                                              f"{len(program.demos)} demos")
            for demo, calls in zip(program.demos, steps, strict=True):
                if calls:
                    bridge.book[book_key(demo.source_id, demo.outputs)] = [
                        (str(n), dict(i), dict(o)) for n, i, o in calls]
        return program

    def _check_module(self, described: Any, signature: str, where: str) -> None:
        """A version made for another module (other predictors or signatures), or for other
        agent inputs and outputs, is refused: its instructions and demos would not fit."""
        if not isinstance(described, dict):
            raise ConfigError(f"{where}: not a dspy.Module's program (no 'dspy_module'): was "
                              "this home made by a plain evo.Agent?")
        have = {n: p.get("signature") for n, p in (described.get("predictors") or {}).items()}
        mine = {n: p.signature.signature for n, p in self.module.named_predictors()}
        if have != mine:
            raise ConfigError(f"{where} was made for a module with predictors {have}; this "
                              f"module ({type(self.module).__name__}) has {mine}: use another "
                              "home (or name) for a changed module")
        if signature != self.module_signature:
            raise ConfigError(f"{where} has the signature {signature!r}, this agent "
                              f"{self.module_signature!r}: use another home for other fields")

    # ---- training on given data ----------------------------------------------------------

    def train(self, trainset: Sequence[Any], valset: Sequence[Any], *,
              holdout: Sequence[Any] | None = None, wait: bool = True) -> Job:
        """:meth:`Agent.train <evo.agents.Agent.train>` on ``dspy.Example`` lists (their
        ``with_inputs`` fields are the inputs) or evo examples."""
        def evo_examples(data: Sequence[Any], source: str) -> list[Example]:
            rows = list(data)
            if all(isinstance(r, Example) for r in rows):
                return rows
            return to_evo_examples(rows, source=source)

        return super().train(evo_examples(trainset, "trainset"), evo_examples(valset, "valset"),
                             holdout=None if holdout is None else evo_examples(holdout,
                                                                               "holdout"),
                             wait=wait)

    # ---- serving as a DSPy module --------------------------------------------------------

    def _answer(self, program: Program | EnsembleProgram, example: Example,
                session: LMSession) -> tuple[Prediction, str | None]:
        prediction, error = super()._answer(program, example, session)
        self._local.prediction = prediction  # for forward(): the module's own dspy.Prediction
        return prediction, error

    def forward(self, **inputs: Any) -> Any:
        """One call, as DSPy code expects it: the module's own ``dspy.Prediction`` (its output
        fields, a ChainOfThought's ``reasoning``), with ``call_id`` (to grade the call by) and
        ``version`` as attributes, not fields. A call with no usable answer is recorded, then
        raised as :class:`~evo.agents.agent.AgentCallError` (:meth:`__call__` returns it)."""
        import dspy

        self._local.prediction = None
        reply = self(**inputs)
        prediction = self._local.prediction
        self._local.prediction = None
        if not reply.ok:
            raise AgentCallError(f"{self.name}: call {reply.call_id} has no answer: "
                                 f"{reply.error}")
        pred = getattr(prediction, "dspy_prediction", None)
        if pred is None:
            pred = dspy.Prediction(**(reply.outputs or {}))
        object.__setattr__(pred, "call_id", reply.call_id)  # an attribute, not an output field
        object.__setattr__(pred, "version", reply.version)
        return pred

    module_call = forward

    async def aforward(self, **inputs: Any) -> Any:
        """:meth:`forward` for code inside an event loop (runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.forward, **inputs))

    def to_module(self) -> Any:
        """The deployed version as a ``dspy.Module`` (a deep copy of the module with its
        instructions and demos): save it with DSPy's ``save``, or run it without the agent."""
        program = self.program
        assert isinstance(program, ModuleProgram)
        return program.to_module()

    def __repr__(self) -> str:
        return (f"ModuleAgent({self.name!r}, {type(self.module).__name__}, version "
                f"{self.version}, home {self.home})")


def agent(module: Any, name: str, signature: Any, *, lm: LM | LMSession,
          **kw: Any) -> ModuleAgent:
    """``module`` (a ``dspy.Module``) as a self-improving agent: :class:`ModuleAgent`."""
    return ModuleAgent(module, name, signature, lm=lm, **kw)


def _signature_text(name: str, signature: Any) -> str:
    """A signature text from a text or a ``dspy.Signature`` (its field names)."""
    if isinstance(signature, str):
        return signature
    ins, outs = getattr(signature, "input_fields", None), getattr(signature, "output_fields", None)
    if isinstance(ins, dict) and isinstance(outs, dict):
        return f"{', '.join(ins)} -> {', '.join(outs)}"
    raise ConfigError(f"agent {name!r}: signature must be a text ('question -> answer') or a "
                      f"dspy.Signature, got {type(signature).__name__}")


def _evo_metric(metric: Callable[..., Any] | None) -> Metric | None:
    """A DSPy metric (it has a ``trace`` parameter, or three positional ones) converted; an evo
    metric (two parameters) as it is."""
    if metric is None or not _is_dspy_metric(metric):
        return metric
    return to_evo_metric(metric)


def _is_dspy_metric(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return any(p.name == "trace" for p in params) or len(positional) >= 3


def _count(value: Any) -> int | str:
    return len(value) if isinstance(value, list) else type(value).__name__

