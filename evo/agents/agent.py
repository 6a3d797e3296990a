"""An agent: a program in production that records its calls, takes grades, re-optimizes itself
when a trigger fires, and deploys a new version only when a paired test says it is better.

>>> agent = evo.Agent("router", "question -> label", lm=evo.lm.local(),  # doctest: +SKIP
...                   labels=["billing", "bug", "other"], trigger=evo.agents.every(50))
>>> reply = agent(question="I was charged twice")                      # doctest: +SKIP
>>> agent.feedback(reply.call_id, 1.0)                                 # doctest: +SKIP

Everything lives under the agent's home (``$EVO_CACHE_DIR/agents/NAME`` by default): the trace
store (``traces.sqlite``), the version registry (``versions.sqlite``) and, unless a shared
manager is given, its optimization manager (``jobs/``: the job queue and each job's run
directory). An agent built again on the same home after a crash is the same agent: the deployed
version serves, and a job the crash interrupted resumes with no paid LM call repeated.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import threading
import time
import typing
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo._io import write_json
from evo.agents.events import (
    CallServed,
    FeedbackReceived,
    RolledBack,
    TriggerFired,
    VersionDeployed,
    VersionKept,
)
from evo.agents.manager import Job, OptimizationManager
from evo.agents.redact import PIIRedactor
from evo.agents.roi import roi
from evo.agents.traces import QualityFilter, Trace, TraceStore
from evo.agents.triggers import AgentView, Trigger
from evo.agents.validators import Validator, check_outputs, refine, validated
from evo.agents.versions import (
    DeployDecision,
    Version,
    VersionRegistry,
    paired_decision,
    program_dict,
    program_from_dict,
)
from evo.data import Example
from evo.errors import ConfigError, DamagedFileError, EvoError, RunFailedError
from evo.lm.base import LM, LMError
from evo.lm.cache import ResponseCache
from evo.lm.local import local
from evo.lm.session import LMSession, session_for
from evo.metrics import Metric, exact_match
from evo.optimizers import get
from evo.paths import cache_root
from evo.program import Prediction, Program, Signature
from evo.program.ensemble import EnsembleProgram
from evo.runs.events import Callback, dispatch
from evo.runs.runner import run
from evo.runs.store import reopened_journal
from evo.search.engine import SearchConfig
from evo.search.evaluate import (
    Budget,
    Cell,
    check_rows,
    evaluate_program,
    predict_program,
)

__all__ = ["Agent", "AgentCallError", "OptimizedFunction", "Reply", "function_signature",
           "optimize_together", "optimized"]

# what a trace store redacts by default (emails, phones, cards, IBANs, IPs)
DEFAULT_REDACTOR = PIIRedactor()
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Reply:
    """What one call of an agent returns: the outputs (``reply.label`` reads a field), the call
    id to grade it by (:meth:`Agent.feedback`), the version that answered, and the error when
    there is no answer (the LM failed, or the reply could not be parsed or failed its
    validators)."""

    call_id: str
    version: int
    outputs: dict[str, str] | None
    error: str | None
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.outputs is not None

    def __getattr__(self, name: str) -> str:
        outputs = self.__dict__.get("outputs")
        if outputs and name in outputs:
            return outputs[name]
        raise AttributeError(f"the reply has no field {name!r}"
                             + (f" (it failed: {self.__dict__.get('error')})"
                                if self.__dict__.get("error") else ""))


class Agent:
    """A declared program that serves, learns from its graded calls and improves itself.

    ``signature`` is a :class:`~evo.program.Signature` text (``"query: str -> response: str"``)
    or a ready :class:`~evo.program.Program`; ``instruction`` and ``labels`` complete it.
    ``optimizer`` (a registered name or a :class:`~evo.search.engine.SearchConfig`) and
    ``budget`` (metric calls per optimization) say how it re-optimizes; ``metric`` scores a
    prediction against a gold example (default: exact match). ``trigger`` (see
    :mod:`evo.agents.triggers`; default: manual only) decides when, checked after each grade.
    ``collect`` records every call in the trace store (``redactor`` runs first; ``key``
    encrypts the stored texts; ``max_age_s`` / ``max_rows`` bound it). ``quality`` turns graded
    traces into examples. A new version is deployed only when it beats the deployed one on the
    held-out share (``holdout``) of the graded examples with a paired test at ``alpha``.
    ``validators`` score outputs during a search (fitness terms and feedback) and, with
    ``retries`` > 0, are retried with feedback at inference. ``background`` runs optimizations
    in the manager's worker thread while the agent keeps serving, and then checks the trigger
    every ``check_every_s`` seconds too (grades given by another process, a periodic trigger).
    ``max_tokens`` (default: the optimizer's) is the reply length when serving and in the
    deploy test, as in the search.
    """

    def __init__(self, name: str, signature: str | Signature | Program, *,
                 lm: LM | LMSession, instruction: str = "",
                 labels: Sequence[str] | None = None,
                 optimizer: str | SearchConfig = "evolution", budget: int = 300,
                 metric: Metric | None = None, trigger: Trigger | None = None,
                 collect: bool = True, home: str | Path | None = None,
                 manager: OptimizationManager | None = None,
                 validators: Sequence[Validator] = (), retries: int = 0,
                 quality: QualityFilter | None = None, alpha: float = 0.05,
                 holdout: float = 0.3, min_examples: int = 20,
                 redactor: Callable[[str], str] | None = DEFAULT_REDACTOR,
                 key: str | bytes | None = None, max_age_s: float | None = None,
                 max_rows: int | None = None, reflection_lm: LM | LMSession | None = None,
                 cache: ResponseCache | str | Path | bool | None = True, seed: int = 0,
                 max_tokens: int | None = None, background: bool = True,
                 check_every_s: float | None = 60.0,
                 callbacks: Sequence[Callback] = (),
                 on_event: Callable[[dict], None] | None = None) -> None:
        if not name or not set(name) <= _NAME_OK:
            raise ConfigError(f"agent name {name!r}: use letters, digits, '-', '_' and '.' "
                              "(it names the agent's folder)")
        self.name = name
        self.seed_program = _program(signature, instruction, labels)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"agent {name!r}: budget must be a whole number of metric calls "
                              f"above 0, got {budget!r}")
        if not 0.0 < holdout < 1.0:
            raise ConfigError(f"agent {name!r}: holdout must be a share in (0, 1), got "
                              f"{holdout!r}")
        if isinstance(min_examples, bool) or not isinstance(min_examples, int) \
                or min_examples < 4:
            raise ConfigError(f"agent {name!r}: min_examples must be a whole number >= 4 (a "
                              f"demo pool, a validation set and a held-out test), got "
                              f"{min_examples!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"agent {name!r}: retries must be a whole number >= 0, got "
                              f"{retries!r}")
        _check_optimizer(name, optimizer)
        self.optimizer = optimizer
        # serving and the deploy test answer at the search's reply length (the optimizer's)
        built = get(optimizer) if isinstance(optimizer, str) else optimizer
        self.budget, self.seed = budget, seed
        self.max_tokens = built.max_tokens if max_tokens is None else max_tokens
        self.alpha, self.holdout, self.min_examples = alpha, holdout, min_examples
        self.base_metric = metric or exact_match
        self.validators = tuple(validators)
        self.metric = (validated(self.base_metric, self.validators) if self.validators
                       else self.base_metric)
        self.retries = retries
        self.trigger = trigger
        self.collect = collect
        self.quality = quality or QualityFilter()
        self.lm = lm.lm if isinstance(lm, LMSession) else lm
        self.reflection_lm = reflection_lm
        self.cache = session_for(self.lm, cache).cache  # one cache for serving and searching
        self.callbacks = list(callbacks)
        self.on_event = on_event
        self.home = Path(home) if home is not None else cache_root() / "agents" / name
        self.home.mkdir(parents=True, exist_ok=True)
        _claim_home(self.home, name, self.seed_program)
        self.traces = TraceStore(self.home / "traces.sqlite", redactor=redactor, key=key,
                                 max_age_s=max_age_s, max_rows=max_rows)
        self.versions = VersionRegistry(self.home / "versions.sqlite")
        self._own_manager = manager is None
        self.manager = manager or OptimizationManager(self.home / "jobs")
        self._lock = threading.Lock()
        self._scheduling = threading.Lock()
        deployed = self.versions.deployed()
        if deployed is None:  # a new agent: its seed program is version 1, deployed
            first = self.versions.add(self.seed_program, source="seed")
            deployed = self.versions.deploy(first.number, decision={"reason": "first version"})
        self._current: tuple[int, Program | EnsembleProgram] = (deployed.number,
                                                                 self._load(deployed))
        self._checked = time.monotonic()
        self._alerted: int | None = None  # graded calls when the last degradation alert went out
        self.manager.register(name, self._run_job)
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if background:
            self.manager.start()
            if trigger is not None and check_every_s:
                # grades given elsewhere (evo agents feedback, another replica) and periodic
                # triggers fire without a grade in this process
                self._ticker = threading.Thread(target=self._tick, args=(check_every_s,),
                                                name=f"evo-agent-{name}", daemon=True)
                self._ticker.start()

    # ---- serving ------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The number of the version serving now."""
        return self._current[0]

    @property
    def program(self) -> Program | EnsembleProgram:
        """The program serving now."""
        return self._current[1]

    def __call__(self, **inputs: Any) -> Reply:
        """Answer one input with the deployed version, record the call (unless ``collect`` is
        off) and return it with its call id. An LM failure is a reply with ``error``, never an
        exception; a missing input field is a :class:`~evo.errors.ConfigError`."""
        self._refresh()
        number, program = self._current  # read once: a deploy during the call changes nothing
        texts = {k: str(v) for k, v in inputs.items()}
        signature = _signature_of(program)
        missing = [f.name for f in signature.inputs if f.name not in texts]
        unknown = [k for k in texts if k not in {f.name for f in signature.inputs}]
        if missing or unknown:
            reads = ", ".join(f.name for f in signature.inputs)
            got = ", ".join(texts) or "nothing"
            raise ConfigError(f"agent {self.name!r} reads {reads}; got {got}"
                              + (f" (missing {', '.join(missing)})" if missing else "")
                              + (f" (unknown {', '.join(unknown)})" if unknown else ""))
        example = Example(inputs=texts, outputs={f.name: "?" for f in signature.outputs})
        session = LMSession(self.lm, cache=self.cache)  # per call: its own token count
        started = time.perf_counter()
        prediction, error = self._answer(program, example, session)
        latency = time.perf_counter() - started
        usage = session.usage
        call_id = self.traces.record(
            agent=self.name, version=number, inputs=texts,
            outputs=prediction.outputs,
            error=error, latency_s=latency, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens) if self.collect else _call_id()
        self._emit(CallServed(agent=self.name, call_id=call_id, version=number,
                              latency_s=round(latency, 4), error=error))
        return Reply(call_id, number, prediction.outputs, error, latency)

    def _refresh(self, interval_s: float = 1.0) -> None:
        """Serve what the registry says is deployed, read at most once per ``interval_s``: a
        deploy or rollback by another process (``evo agents rollback``, another replica) is
        followed within a second."""
        now = time.monotonic()
        if now - self._checked < interval_s:
            return
        self._checked = now
        with self._lock:  # (read under the lock: a local deploy cannot be swapped back)
            deployed = self.versions.deployed()
            if deployed is not None and deployed.number != self._current[0]:
                self._swap(deployed)

    def _answer(self, program: Program | EnsembleProgram, example: Example,
                session: LMSession) -> tuple[Prediction, str | None]:
        if self.retries and isinstance(program, Program) and self.validators:
            refined = refine(program, example, session, self.validators, retries=self.retries,
                             max_tokens=self.max_tokens)
            prediction = refined.prediction
        else:
            try:
                (reply,) = predict_program(program, [example], session,
                                           max_tokens=self.max_tokens)
            except LMError as exc:  # the LM cannot be used at all: still a recorded reply
                return Prediction("", None, f"lm: {exc}"), f"lm: {exc}"
            prediction = reply.prediction if isinstance(reply, Cell) else reply
            if isinstance(reply, Cell) and prediction.ok:  # a failed cell with a parse
                return prediction, reply.error or "failed"
        if not prediction.ok:
            return prediction, prediction.error or "no answer"
        failed = check_outputs(self.validators, example.inputs, prediction.outputs or {})
        if failed:
            return prediction, "failed validators: " + "; ".join(f"{n}: {m}" for n, m in failed)
        return prediction, None

    async def acall(self, **inputs: Any) -> Reply:
        """:meth:`__call__` for code inside an event loop (runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.__call__, **inputs))

    # ---- feedback and triggers ----------------------------------------------------------

    def feedback(self, call_id: str, score: float, text: str = "", *,
                 expected: Mapping[str, str] | None = None) -> Trace:
        """Grade an earlier call: ``score`` (1.0 = right), an optional ``text`` saying why and,
        when the grader knows it, the ``expected`` outputs. An unknown call id is one
        :class:`~evo.agents.traces.UnknownCallError`. The trigger is checked afterwards."""
        served = self.traces.get(call_id)  # unknown: UnknownCallError, before anything is written
        if served.agent != self.name:
            raise ConfigError(f"call {call_id!r} was served by agent {served.agent!r}, not "
                              f"{self.name!r}")
        if expected:
            outputs = [f.name for f in _signature_of(self.seed_program).outputs]
            wrong = sorted(set(expected) - set(outputs))
            missing = sorted(set(outputs) - set(expected))
            if wrong or missing:
                raise ConfigError(f"feedback for {call_id!r}: expected must name the outputs "
                                  f"{', '.join(outputs)}"
                                  + (f" (unknown: {', '.join(wrong)})" if wrong else "")
                                  + (f" (missing: {', '.join(missing)})" if missing else ""))
        trace = self.traces.feedback(call_id, score, text,
                                     expected=dict(expected) if expected else None)
        self._emit(FeedbackReceived(agent=self.name, call_id=call_id, score=float(score)))
        self.check_trigger()
        return trace

    def view(self, now: float | None = None) -> AgentView:
        """What the triggers read: the examples collected since the last optimization, the
        graded calls in all, the recent grades of the deployed version, and the scores it was
        chosen with."""
        now = time.time() if now is None else now
        last = self._last_scheduled()
        outputs = [f.name for f in _signature_of(self.seed_program).outputs]
        # only the examples graded since the last job are read (a grade arrives late: by
        # grading time); the total is a count, so a check does not read the whole store
        new = self.traces.examples(self.name, self.quality, outputs=outputs,
                                   graded_since=last)
        number, _ = self._current
        window = getattr(self.trigger, "window", 100)
        recent = self.traces.traces(self.name, graded=True, version=number, limit=window,
                                    newest_first=True)
        deployed = self.versions.get(number)
        scores = deployed.scores.get("holdout_scores") if deployed.scores else None
        return AgentView(agent=self.name, now=now, new_examples=len(new),
                         examples=self.traces.count(self.name, graded=True),
                         last_optimized=last,
                         recent_scores=tuple(t.score for t in reversed(recent)
                                             if t.score is not None),
                         deployed_scores=tuple(scores) if scores else None,
                         deployed_version=number)

    def check_trigger(self) -> Job | None:
        """Check the trigger now (it is checked after each grade): when it fires (and no job
        of this agent is waiting or running), schedule an optimization and return its job."""
        if self.trigger is None:
            return None
        view = self.view()
        alert = getattr(self.trigger, "degradation", None)
        if alert is not None and (event := alert(view)) is not None:
            # once, then again only after a window of new grades: an alert, not a stream
            graded = self.traces.count(self.name, graded=True)
            if self._alerted is None or graded >= self._alerted + getattr(self.trigger,
                                                                         "window", 50):
                self._alerted = graded
                self._emit(event)
        reason = self.trigger.check(view)
        if reason is None or view.examples < self.min_examples:
            return None  # (too few examples yet: it fires again on a later grade)
        with self._scheduling:  # grades on several threads: one job, not one each
            if self._pending():
                return None
            try:
                spec = self.collected_spec()
            except ConfigError:  # cannot be split yet (too few distinct examples)
                return None
            self._emit(TriggerFired(agent=self.name, trigger=type(self.trigger).__name__,
                                    reason=reason))
            return self.manager.schedule(self.name, spec, reason=reason)

    def _tick(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                self.check_trigger()
            except EvoError as exc:  # a store that went away: say so, keep serving
                warnings.warn(f"evo: agent {self.name!r}: trigger check failed: {exc}",
                              RuntimeWarning, stacklevel=1)

    def _pending(self) -> bool:
        """Whether a job of this agent is queued or running (asked by status: the queue's
        finished jobs, each with its examples, are not read)."""
        return any(self.manager.history(self.name, status=s, limit=1)
                   for s in ("queued", "running"))

    def _last_scheduled(self) -> float | None:
        """When this agent's last optimization was scheduled (else when it was created: a
        periodic trigger counts from there)."""
        jobs = self.manager.history(self.name, limit=1)
        if jobs:
            return jobs[0].created
        history = self.versions.history()
        return history[0].created if history else None

    # ---- optimization -------------------------------------------------------------------

    def examples(self) -> list[Example]:
        """The examples the graded traces give, through the quality filter."""
        outputs = [f.name for f in _signature_of(self.seed_program).outputs]
        return self.traces.examples(self.name, self.quality, outputs=outputs)

    def optimize_now(self, *, reason: str = "manual") -> Job:
        """Schedule an optimization on the examples collected so far (the manual trigger).
        Fewer than ``min_examples`` usable examples is a :class:`~evo.errors.ConfigError`."""
        return self.manager.schedule(self.name, self.collected_spec(), reason=reason)

    def train(self, trainset: Sequence[Example], valset: Sequence[Example], *,
              holdout: Sequence[Example] | None = None, wait: bool = True) -> Job:
        """Optimize on data you give: ``trainset`` (demo pool) and ``valset`` (chooses). The
        deploy decision is a paired test on ``holdout`` (default: a ``holdout`` share split off
        ``valset``, never seen by the search). With ``wait`` (default) it returns the finished
        job (``job.result`` has the decision and the ROI)."""
        train, val, held = list(trainset), list(valset), list(holdout or ())
        if holdout is None:
            held, val = _partition(val, "holdout", self.holdout)
        for what, examples in (("trainset", train), ("valset", val), ("holdout", held)):
            check_rows(self.seed_program, examples, what)  # before a job is queued
        job = self._schedule(train, val, held, "train")
        if not wait:
            return job
        if self.manager.running:
            job = self.manager.wait(job.id)
        else:
            self.manager.run_pending()
            job = self.manager.status(job.id)
        if job.status == "failed":
            raise RunFailedError(f"agent {self.name!r}: job {job.id} failed: {job.error}")
        return job

    async def atrain(self, trainset: Sequence[Example], valset: Sequence[Example],
                     **kwargs: Any) -> Job:
        """:meth:`train` for code inside an event loop: the search runs in a worker thread."""
        return await asyncio.to_thread(functools.partial(self.train, trainset, valset,
                                                         **kwargs))

    def _schedule(self, train: list[Example], val: list[Example], held: list[Example],
                  reason: str) -> Job:
        return self.manager.schedule(self.name, self._spec(train, val, held), reason=reason)

    def _spec(self, train: list[Example], val: list[Example], held: list[Example]
              ) -> dict[str, Any]:
        """A job's spec: everything its run needs, stored with it (a crash loses nothing)."""
        if not val or not held:
            raise ConfigError(f"agent {self.name!r}: an optimization needs validation and "
                              f"held-out examples (got {len(val)} and {len(held)})")
        number, program = self._current
        return {"agent": self.name, "program": program_dict(program), "deployed": number,
                **{name: [e.model_dump(include={"inputs", "outputs"}) for e in examples]
                   for name, examples in (("trainset", train), ("valset", val),
                                          ("holdout", held))},
                "optimizer": _optimizer_spec(self.optimizer), "budget": self.budget,
                "seed": self.seed}

    def collected_spec(self) -> dict[str, Any]:
        """The spec of an optimization on the examples collected so far (see
        :meth:`optimize_now`, :func:`optimize_together`)."""
        examples = self.examples()
        if len(examples) < self.min_examples:
            raise ConfigError(f"agent {self.name!r} has {len(examples)} usable graded "
                              f"example(s); an optimization needs at least {self.min_examples} "
                              "(grade more calls with agent.feedback, or lower min_examples)")
        return self._spec(*_split(examples, self.holdout))

    def _run_job(self, job: Job, run_dir: Path, *, budget: int | None,
                 on_event: Callable[[dict], None]) -> dict:
        """The manager's runner for this agent's jobs: the search (a run store in
        ``run_dir``, so a crash resumes it), the held-out paired test of the new version
        against the one deployed when the job was scheduled, the version and the deploy."""
        spec = job.spec
        started, t0 = time.time(), time.perf_counter()
        program = self._from_dict(spec["program"])
        train, val, held = ([Example.model_validate(row) for row in spec[k]]
                            for k in ("trainset", "valset", "holdout"))
        allowed = spec["budget"] if budget is None else min(budget, spec["budget"])
        optimizer = _build_optimizer(spec["optimizer"], allowed)
        judged = getattr(self.metric, "lm_calls", 0)  # an LM judge's calls (validators)
        base = program if isinstance(program, Program) else program.members[0]
        result = run(base, train, val, lm=self.lm, optimizer=optimizer, metric=self.metric,
                     reflection_lm=self.reflection_lm, seed=spec["seed"], cache=self.cache,
                     run_dir=run_dir, on_event=on_event)
        session = session_for(self.lm, self.cache)
        with reopened_journal(run_dir, result.sitting, "test", result.spec or {}) as journal:
            session.journal = journal
            try:
                old, _ = evaluate_program(program, held, session, self.metric,
                                          max_tokens=self.max_tokens)
                new, _ = evaluate_program(result.best, held, session, self.metric,
                                          max_tokens=self.max_tokens)
            finally:
                session.journal = None
        made = [v for v in self.versions.history() if v.job == job.id]
        version = made[0] if made else self.versions.add(  # (a resumed job made it already)
            result.best, parent=spec["deployed"], source=f"job:{job.id}", job=job.id,
            scores={"val": result.best_val, "holdout": float(new.mean()),
                    "holdout_scores": new.tolist(), "deployed_holdout": float(old.mean())})
        decision = paired_decision(old, new, [e.id for e in held], alpha=self.alpha,
                                   seed=spec["seed"], version=version.number)
        # an earlier sitting that deployed it is done; a candidate is decided (again: the same
        # test on the same scores gives the same answer)
        deployed = True if made and version.status != "candidate" else \
            self._decide(version, decision)
        usage = (result.usage + session.usage).to_dict()
        judged = getattr(self.metric, "lm_calls", 0) - judged
        usage["calls"] += judged  # the judge's own session is not the run's: counted here
        served = self.traces.count(self.name, since=started)
        gain = roi(decision, usage, metric_calls=result.metric_calls,
                   wall_s=time.perf_counter() - t0, served_during=served)
        return {"metric_calls": result.metric_calls, "version": version.number,
                "deployed": deployed, "decision": decision.to_dict(), "roi": gain.to_dict(),
                "best_val": result.best_val, "baseline_val": result.baseline_val,
                "judge_calls": judged,
                "examples": {"train": len(train), "val": len(val), "holdout": len(held)}}

    def _decide(self, version: Version, decision: DeployDecision) -> bool:
        with self._lock:
            deployed = self.versions.deployed()  # another process may have deployed since
            previous = deployed.number if deployed is not None else self._current[0]
            if not decision.deploy:
                self._emit(VersionKept(agent=self.name, version=version.number,
                                       deployed=previous, decision=decision.to_dict()))
                return False
            if previous != version.parent and version.parent is not None:
                # another version was deployed while this one was searched: it was not tested
                # against that one, so it waits as a candidate
                self._emit(VersionKept(agent=self.name, version=version.number,
                                       deployed=previous,
                                       decision={**decision.to_dict(),
                                                 "reason": "the deployed version changed"}))
                return False
            self._swap(self.versions.deploy(version.number, decision=decision.to_dict()))
        self._emit(VersionDeployed(agent=self.name, version=version.number, previous=previous,
                                   decision=decision.to_dict()))
        return True

    def _swap(self, version: Version) -> None:
        self._current = (version.number, self._load(version))  # one assignment: atomic

    # The two ways a program comes back from storage (a version, a job's spec): an adapter
    # for another kind of program (a dspy.Module's, evo.integrations.dspy) overrides both.
    def _load(self, version: Version) -> Program | EnsembleProgram:
        return version.load()

    def _from_dict(self, data: dict[str, Any]) -> Program | EnsembleProgram:
        return program_from_dict(data, f"a job spec of agent {self.name!r}", None)

    # ---- versions -----------------------------------------------------------------------

    def deploy(self, number: int) -> Version:
        """Deploy a version by hand (no test; recorded as manual)."""
        with self._lock:
            previous = self._current[0]
            version = self.versions.deploy(number, decision={"reason": "deployed by hand"})
            self._swap(version)
        self._emit(VersionDeployed(agent=self.name, version=number, previous=previous,
                                   decision={"reason": "deployed by hand"}))
        return version

    def rollback(self, number: int | None = None) -> Version:
        """Serve ``number`` again (default: the version deployed before the current one)."""
        with self._lock:
            previous = self._current[0]
            version = self.versions.rollback(number)
            self._swap(version)
        self._emit(RolledBack(agent=self.name, version=version.number, previous=previous))
        return version

    def jobs(self) -> list[Job]:
        """This agent's optimization jobs, newest first."""
        return self.manager.history(self.name)

    # ---- plumbing -----------------------------------------------------------------------

    def _emit(self, event: Any) -> None:
        raw = event.to_dict() | {"t": time.time()}
        if self.callbacks:
            dispatch(self.callbacks, raw)
        if self.on_event is not None:
            self.on_event(raw)

    def close(self) -> None:
        """Stop the agent's own manager (a running job stops at its next event and resumes
        when the agent is built again) and close its stores."""
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._own_manager:
            self.manager.close()
        self.traces.close()
        self.versions.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, version {self.version}, home {self.home})"


def optimize_together(agents: Sequence[Agent], *, budget: int, reason: str = "batch"
                      ) -> list[Job]:
    """Schedule an optimization of each agent on what it collected, under one shared budget of
    ``budget`` metric calls split evenly between them (the agents must share one
    :class:`~evo.agents.manager.OptimizationManager`: ``Agent(..., manager=shared)``). Each job
    deploys by its own agent's paired test."""
    agents = list(agents)
    if not agents:
        raise ConfigError("optimize_together: give at least one agent")
    managers = {id(a.manager) for a in agents}
    if len(managers) != 1:
        raise ConfigError("optimize_together: the agents have different managers; build them "
                          "with one shared manager (Agent(..., manager=shared))")
    items = [(a.name, a.collected_spec()) for a in agents]
    return agents[0].manager.schedule_batch(items, budget=budget, reason=reason)


# ---- the decorator ------------------------------------------------------------------------

_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def optimized(fn: Callable[..., Any] | None = None, *, lm: LM | LMSession | None = None,
              optimizer: str | SearchConfig = "evolution", trigger: Trigger | None = None,
              collect: bool = True, metric: Metric | None = None, name: str | None = None,
              output: str = "answer", **agent_kw: Any) -> Any:
    """Turn a typed Python function into an :class:`Agent`: its docstring is the instruction,
    its parameters (annotated ``str``, ``int``, ``float`` or ``bool``) the input fields, its
    return annotation the output field ``output`` (a ``Literal[...]`` of strings gives the
    labels). The function's body is never run: the agent answers.

    >>> @evo.optimized(optimizer="miprov2", trigger=evo.agents.every(200), lm=lm)  # doctest: +SKIP
    ... def classify(question: str) -> Literal["DESC", "ENTY", "HUM", "NUM", "LOC", "ABBR"]:
    ...     "Classify the question type."
    >>> classify("Who wrote Hamlet?")                                     # doctest: +SKIP
    'HUM'
    >>> reply = classify.call("Who wrote Hamlet?")                        # doctest: +SKIP
    >>> classify.feedback(reply.call_id, 1.0)                             # doctest: +SKIP

    Calling it returns the answer (converted to the annotated type; an unanswered call raises
    :class:`~evo.errors.EvoError` with the reason); ``.call(...)`` returns the full
    :class:`Reply` with its call id. A parameter without a usable annotation, ``*args`` /
    ``**kwargs``, or a missing or unusable return annotation is one
    :class:`~evo.errors.ConfigError` naming the function and the parameter.
    """
    def wrap(func: Callable[..., Any]) -> OptimizedFunction:
        signature, labels, kind = function_signature(func, output)
        chosen = lm
        if chosen is None:  # the embedded default model (llama.cpp loads on the first call)
            chosen = local()
        agent = Agent(name or func.__name__, signature, lm=chosen,
                      instruction=inspect.getdoc(func) or "", labels=labels,
                      optimizer=optimizer, trigger=trigger, collect=collect, metric=metric,
                      **agent_kw)
        return OptimizedFunction(func, agent, kind)

    return wrap if fn is None else wrap(fn)


class OptimizedFunction:
    """What :func:`optimized` returns: call it like the function; ``.agent`` is the agent."""

    def __init__(self, func: Callable[..., Any], agent: Agent, kind: type) -> None:
        functools.update_wrapper(self, func)
        self.agent, self._kind = agent, kind
        self._signature = inspect.signature(func)

    def call(self, *args: Any, **kwargs: Any) -> Reply:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return self.agent(**bound.arguments)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reply = self.call(*args, **kwargs)
        if not reply.ok:
            raise AgentCallError(f"{self.agent.name}: call {reply.call_id} has no answer: "
                                 f"{reply.error}")
        (value,) = reply.outputs.values()  # type: ignore[union-attr]
        return _convert(value, self._kind)

    def feedback(self, call_id: str, score: float, text: str = "", **kw: Any) -> Trace:
        return self.agent.feedback(call_id, score, text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["agent"], name)


class AgentCallError(EvoError):
    """A call of an optimized function got no answer (the LM failed, or its reply could not
    be parsed)."""


def function_signature(func: Callable[..., Any], output: str = "answer"
                       ) -> tuple[str, list[str] | None, type]:
    """The signature text, labels and return type of a function :func:`optimized` wraps."""
    where = f"@evo.optimized {getattr(func, '__qualname__', func)!r}"
    if not callable(func) or not hasattr(func, "__code__"):
        raise ConfigError(f"{where}: decorate a plain Python function")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # a hint that does not resolve (a typo, an undefined name)
        raise ConfigError(f"{where}: its type hints do not resolve: {exc}") from None
    fields = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"{where}: *{p.name} / **{p.name} cannot be an input field; "
                              "name each input")
        kind = hints.get(p.name)
        if kind not in _TYPES:
            raise ConfigError(f"{where}: parameter {p.name!r} needs a type hint of str, int, "
                              f"float or bool (got {getattr(kind, '__name__', kind)!r})")
        fields.append(p.name if kind is str else f"{p.name}: {_TYPES[kind]}")
    if not fields:
        raise ConfigError(f"{where}: the function takes no parameter: an agent needs an input")
    if "return" not in hints:
        raise ConfigError(f"{where}: it needs a return annotation (str, int, float, bool or "
                          "Literal[...] of strings)")
    ret, labels = hints["return"], None
    if typing.get_origin(ret) is typing.Literal:
        labels = [str(a) for a in typing.get_args(ret)]
        if not labels or not all(isinstance(a, str) for a in typing.get_args(ret)):
            raise ConfigError(f"{where}: a Literal return type must list strings")
        ret = str
    if ret not in _TYPES:
        raise ConfigError(f"{where}: return type {getattr(ret, '__name__', ret)!r} is not "
                          "str, int, float, bool or Literal[...] of strings")
    if output in [f.split(":")[0] for f in fields]:
        raise ConfigError(f"{where}: the output field {output!r} is also a parameter name; "
                          "pass output='...'")
    text = f"{', '.join(fields)} -> {output if ret is str else f'{output}: {_TYPES[ret]}'}"
    return text, labels, ret


def _convert(value: str, kind: type) -> Any:
    if kind is bool:
        return value.strip().lower() in ("true", "yes", "1")
    return kind(value)


# ---- helpers ------------------------------------------------------------------------------

def _program(signature: str | Signature | Program, instruction: str,
             labels: Sequence[str] | None) -> Program:
    if isinstance(signature, Program):
        if instruction or labels:
            raise ConfigError("agent: a ready Program carries its own instruction and labels; "
                              "pass them only with a signature text")
        return signature
    try:
        sig = signature if isinstance(signature, Signature) else Signature.parse(signature)
        return Program(signature=sig, instruction=instruction,
                       labels=tuple(labels) if labels else None)
    except ValueError as exc:
        raise ConfigError(f"agent signature: {exc}") from None


AGENT_FILE = "agent.json"


def _claim_home(home: Path, name: str, program: Program) -> None:
    """Write (or check) the home's ``agent.json``: which agent lives here, so that ``evo
    agents`` names it and a second agent given the same home is refused before it mixes its
    traces and versions with the first one's."""
    path = home / AGENT_FILE
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link: evo does not write through links")
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            owner = data.get("name")
        except (OSError, ValueError, AttributeError):
            raise DamagedFileError(path, "not the agent file evo writes (a JSON object with "
                                         "the agent's name)") from None
        if owner != name:
            raise ConfigError(f"{home} is the home of agent {owner!r}, not {name!r}: give "
                              "each agent its own home")
        if (had := data.get("signature")) and had != str(_signature_of(program)):
            raise ConfigError(f"agent {name!r} in {home} has the signature {had!r}, not "
                              f"{str(_signature_of(program))!r}: its versions, traces and "
                              "examples are of that one; give the new program a new name")
        return
    write_json(path, {"name": name, "signature": str(_signature_of(program)),
                      "created": time.time()})


def _check_optimizer(name: str, optimizer: str | SearchConfig) -> None:
    if isinstance(optimizer, str):
        get(optimizer)  # an unknown name is one ConfigError listing the known ones
    elif not isinstance(optimizer, SearchConfig):
        raise ConfigError(f"agent {name!r}: optimizer must be a registered name or an "
                          f"optimizer object, got {type(optimizer).__name__}")


def _optimizer_spec(optimizer: str | SearchConfig) -> dict[str, Any]:
    if isinstance(optimizer, str):
        return {"name": optimizer, "params": {}}
    return {"name": type(optimizer).name,
            "params": optimizer.model_dump(mode="json", exclude={"budget"})}


def _build_optimizer(spec: dict[str, Any], budget: int) -> SearchConfig:
    return get(spec["name"], budget=Budget(metric_calls=budget), **spec["params"])


def _signature_of(program: Program | EnsembleProgram) -> Signature:
    return program.signature if isinstance(program, Program) else program.members[0].signature


def _call_id() -> str:
    return f"c-{uuid.uuid4().hex}"


def _draw(example: Example, salt: str) -> float:
    """A number in [0, 1) that is the example's own (its content hash): which side of a split
    it falls on does not depend on which other examples exist."""
    digest = hashlib.sha256(f"{salt}:{example.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _partition(examples: Sequence[Example], salt: str, share: float
               ) -> tuple[list[Example], list[Example]]:
    """The examples whose own draw (``salt``) falls below ``share``, and the others."""
    below: list[Example] = []
    above: list[Example] = []
    for e in examples:
        (below if _draw(e, salt) < share else above).append(e)
    return below, above


def _split(examples: Sequence[Example], holdout: float
           ) -> tuple[list[Example], list[Example], list[Example]]:
    """Held-out (the deploy test), then the rest halved, each example by its own draw: a demo
    pool and a validation set. An example never moves from a search's data into a later
    job's test as examples accrue."""
    held, rest = _partition(examples, "holdout", holdout)
    train, val = _partition(rest, "pool", 0.5)
    return train, val, held
