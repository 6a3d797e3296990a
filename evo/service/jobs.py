"""What the service's routes call: submit, watch, cancel and read optimizations and experiments
of one tenant, on the optimization manager's persistent job queue.

A request is resolved when it is submitted, never later: the program (an agent's deployed one
included), the data (inline rows, a registered or public dataset, an agent's graded traces),
every row checked against the program's fields, and the optimizer (a built-in or the tenant's
declarative algorithm, built once with its parameters). What is wrong is one
:class:`ServiceError` naming the field; what is right is frozen into the job's spec (rows
included), so a job needs nothing but its spec to run, and to resume after a restart.

Two runners serve the queue (:class:`~evo.agents.manager.OptimizationManager`, in
``HOME/jobs``): ``optimize`` runs one search in the job's run directory (:func:`evo.runs.runner.
run`, so a resumed job replays its journal and pays nothing twice), ``experiment`` scores two
programs on the same examples through one journaled session and compares them with a paired
test (:func:`evo.agents.versions.paired_decision`). Each job's progress lives in memory, updated
from its events, so :meth:`ServiceJobs.status` is a small query and a dict copy, however often
it is polled.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from evo.agents.agent import AGENT_FILE
from evo.agents.manager import FINISHED, Job, OptimizationManager, UnknownJobError
from evo.agents.traces import QualityFilter, TraceStore
from evo.agents.versions import (
    UnknownVersionError,
    VersionRegistry,
    paired_decision,
    program_dict,
    program_from_dict,
)
from evo.data import Example
from evo.datasets import DatasetUnavailableError
from evo.datasets import load as load_dataset
from evo.datasets import names as public_datasets
from evo.errors import ConfigError, DamagedFileError, EvoError
from evo.lm.base import LM, Executor
from evo.lm.cache import ResponseCache
from evo.lm.session import LMSession, on_executor, session_for
from evo.metrics import exact_match
from evo.optimizers import names as optimizer_names
from evo.optimizers import optimizer_class
from evo.optimizers.registry import operator
from evo.program import ExampleMismatch, Program
from evo.program.ensemble import EnsembleProgram
from evo.runs.events import Callback
from evo.runs.runner import run
from evo.runs.store import RunStore, data_digest
from evo.search.engine import SearchConfig
from evo.search.evaluate import Budget, evaluate_program, unique_examples
from evo.search.events import (
    CandidateEvaluated,
    Event,
    NewBest,
    SearchCompleted,
    SearchStarted,
)
from evo.service.events import ExperimentCompleted, ExperimentProgress, ExperimentStarted
from evo.service.specs import (
    NAME,
    AlgorithmRequest,
    DatasetRequest,
    DataSpec,
    ExperimentRequest,
    JobRef,
    OptimizeRequest,
    ProgramSpec,
    VersionRef,
)
from evo.service.store import ApiKey, ServiceStore

__all__ = ["ServiceError", "ServiceJobs"]

AnyProgram = Program | EnsembleProgram
_START_KINDS = ("start", "experiment_start")
_CHUNKS = 10  # an experiment scores its examples in this many steps (each a cancel point)


class ServiceError(EvoError):
    """What a route answers with an HTTP error: ``status`` (400, 404, 409, 422 …), the message,
    and ``where`` the fault is in the request (``body.data.rows[3].inputs.question``), if in one.
    """

    def __init__(self, status: int, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.where = status, message, where


# ---- progress, kept in memory per job ----------------------------------------------------------

@dataclass
class _Progress:
    """A job's progress as its events tell it (this sitting's: a resumed run replays its earlier
    events first, and its ``start`` resets this)."""

    budget: int | None = None
    metric_calls: int = 0
    lm_calls: int = 0
    best_score: float | None = None
    baseline_score: float | None = None
    tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0  # events seen: the seq of the last one
    curve: list[list[float]] = field(default_factory=list)
    started: float | None = None  # monotonic time of this sitting's first event

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in _START_KINDS:
            self.__init__()  # type: ignore[misc]  # a sitting starts from its first event
            self.budget = _int(event.get("budget"))
            self.started = time.monotonic()
        self.events += 1
        self.metric_calls = _int(event.get("metric_calls")) or self.metric_calls
        self.lm_calls = _int(event.get("lm_calls")) or self.lm_calls
        score = _num(event.get("val_score"))
        if kind == "candidate_evaluated" and score is not None and event.get("candidate") == 0:
            self.baseline_score = score
        elif kind == "new_best" and score is not None:
            self.best_score = score
            self.curve.append([self.metric_calls, score])
        elif kind in ("complete", "experiment_complete"):
            self.best_score = _num(event.get("best_val"), self.best_score)
            self.baseline_score = _num(event.get("baseline_val"), self.baseline_score)
            usage = event.get("usage") or {}
            if usage:
                self.prompt_tokens = int(usage.get("prompt_tokens", 0))
                self.completion_tokens = int(usage.get("completion_tokens", 0))
                self.tokens = self.prompt_tokens + self.completion_tokens

    def snapshot(self) -> dict[str, Any]:
        return {"budget": self.budget, "metric_calls": self.metric_calls,
                "lm_calls": self.lm_calls, "best_score": self.best_score,
                "baseline_score": self.baseline_score, "tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "events": self.events}


_FIGURES = ("metric_calls", "best_score", "baseline_score", "lm_calls", "tokens",
            "prompt_tokens", "completion_tokens")


def _tokens(usage: dict[str, Any]) -> dict[str, int]:
    """A run's token counts for its result: prompt, completion and their sum."""
    prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    return {"tokens": prompt + completion, "prompt_tokens": prompt,
            "completion_tokens": completion}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


# ---- MLflow: one run per job, by its tag -------------------------------------------------------

def _mlflow_client(uri: str) -> Any:
    # deferred: heavy optional dependency (mlflow, only with --mlflow)
    from mlflow.tracking import MlflowClient

    if "://" not in uri or uri.startswith("file:"):
        # MLflow >= 3.7 refuses a file store unless told it is wanted: asking for one by its
        # URI is saying so
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _mlflow_experiment(uri: str, name: str = "evo-service") -> str:
    """The id of MLflow experiment ``name``, made if need be (once, before any worker runs:
    two threads making it at once could make two)."""
    client = _mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found is not None else client.create_experiment(name))


class _MLflowRun(Callback):
    """Logs one job's search to MLflow through a client with the run's id (no global active
    run, so concurrent jobs in worker threads never log into each other's run). The run is
    found by its tag ``evo.job``: a resumed job continues its run, and the events it replays
    are not logged twice."""

    def __init__(self, uri: str, experiment: str, job: Job, label: str) -> None:
        self.client = _mlflow_client(uri)
        self.job, self.label, self.experiment = job, label, experiment
        self.run_id: str | None = None

    def on_start(self, event: SearchStarted) -> None:
        exp = self.experiment
        runs = self.client.search_runs([exp], filter_string=f"tags.`evo.job` = '{self.job.id}'",
                                       max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run_ = self.client.create_run(exp, run_name=self.label,
                                      tags={"evo.job": self.job.id, "evo.label": self.label})
        self.run_id = run_.info.run_id
        spec = self.job.spec
        params = {"optimizer": spec["optimizer"]["name"], "budget": event.budget,
                  "seed": event.seed, "val_size": event.val_size,
                  "train_size": event.train_size,
                  **{f"params.{k}": json.dumps(v) for k, v in spec["optimizer"]["params"].items()},
                  **({"operators": json.dumps(spec["optimizer"]["operators"])}
                     if spec["optimizer"].get("operators") else {})}
        for k, v in params.items():
            self.client.log_param(self.run_id, k, str(v)[:6000])

    def on_candidate_evaluated(self, event: CandidateEvaluated) -> None:
        if self.run_id and not event.replayed and event.val_score is not None:
            self.client.log_metric(self.run_id, "val_score", float(event.val_score),
                                   step=event.metric_calls)

    def on_new_best(self, event: NewBest) -> None:
        if self.run_id and not event.replayed:
            self.client.log_metric(self.run_id, "best_val", float(event.val_score),
                                   step=event.metric_calls)

    def on_complete(self, event: SearchCompleted) -> None:
        if not self.run_id:
            return
        for k, v in {"final_best_val": event.best_val, "baseline_val": event.baseline_val,
                     "metric_calls": event.metric_calls}.items():
            self.client.log_metric(self.run_id, k, float(v), step=event.metric_calls)
        if event.best_program is not None:
            self.client.log_dict(self.run_id, event.best_program, "best.json")
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_error(self, error: BaseException) -> None:
        if self.run_id:
            self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            self.client.set_terminated(self.run_id, "KILLED")


class _Schema(GenerateJsonSchema):
    """Optimizer parameters as JSON Schema: a Python callable (a custom fitness) is no JSON
    value, so it is shown as not settable over the API."""

    def callable_schema(self, schema: Any) -> dict[str, Any]:
        return {"description": "a Python callable: not settable over the API"}


# ---- the service's jobs ------------------------------------------------------------------------

class ServiceJobs:
    """The service's optimizations and experiments, for every tenant, on one job queue in
    ``home / "jobs"`` (``workers`` threads run it; ``start=False`` leaves it idle). ``lm`` (and
    ``reflection_lm``) answer every job, each job in its own session over one response cache
    (``cache``); ``executor`` runs the LM calls elsewhere (a Ray executor); with
    ``mlflow_uri`` each optimization is logged to MLflow; with ``price`` (dollars per million
    prompt and completion tokens) a job's status and result say what it cost."""

    def __init__(self, home: Path, store: ServiceStore, *, lm: LM | LMSession,
                 reflection_lm: LM | LMSession | None = None, workers: int = 2,
                 cache: ResponseCache | str | Path | bool | None = True,
                 executor: Executor | None = None, mlflow_uri: str | None = None,
                 price: tuple[float, float] | None = None, start: bool = True) -> None:
        self.home, self.store = Path(home), store
        # a backend, not a session: each job opens its own session (one journal per run)
        backend = lm.lm if isinstance(lm, LMSession) else lm
        # wrapped once: every job's calls go to the same Ray workers (a wrap per job would start
        # new actors for each)
        self.lm = on_executor(backend, executor)
        self.reflection_lm = (reflection_lm.lm if isinstance(reflection_lm, LMSession)
                              else reflection_lm)
        self.cache = session_for(backend, cache).cache  # one cache for every job
        self.executor, self.mlflow_uri = executor, mlflow_uri
        self.price = price  # dollars per million prompt and completion tokens, for cost_usd
        self._mlflow_experiment = _mlflow_experiment(mlflow_uri) if mlflow_uri else ""
        self.manager = OptimizationManager(self.home / "jobs", workers=workers)
        self._lock = threading.Lock()
        self._progress: dict[str, _Progress] = {}
        self._meta: dict[str, dict[str, Any]] = {}   # kind, name, budget (from the spec)
        self._final: dict[str, dict[str, Any]] = {}  # a done job's figures (from its result)
        self.manager.register("optimize", self._run_optimize)
        self.manager.register("experiment", self._run_experiment)
        if start:
            self.manager.start()

    def start(self) -> None:
        """Start the worker threads (if ``start=False`` was given)."""
        self.manager.start()

    # ---- submitting --------------------------------------------------------------------------
    def submit(self, key: ApiKey, request: OptimizeRequest) -> dict[str, Any]:
        """Resolve and queue an optimization: ``{"id", "status": "queued"}``."""
        tenant = key.tenant
        program = self._program(tenant, request.program, "body.program")
        train, val, source = self._data(tenant, request.data, program, request.seed)
        optimizer = self._optimizer(tenant, request.optimizer, request.params,
                                    request.budget, request.objectives)
        label = request.name or str(_signature(program))
        spec = {"tenant": tenant, "label": label, "program": program_dict(program),
                "trainset": _rows(train), "valset": _rows(val), "source": source,
                "optimizer": optimizer, "budget": request.budget, "seed": request.seed,
                "objectives": list(request.objectives)}
        return self._schedule(key, "optimize", label, spec)

    def submit_experiment(self, key: ApiKey, request: ExperimentRequest) -> dict[str, Any]:
        """Resolve and queue an experiment (a job of kind "experiment"): ``{"id", "status"}``."""
        tenant = key.tenant
        a = self._program_ref(tenant, request.a, "body.a")
        b = self._program_ref(tenant, request.b, "body.b")
        examples, source = self._examples(tenant, request.data, a, request.seed)
        self._check_rows(b, examples, source["where"], source["what"])
        label = request.name or f"{source['what']}: a vs b"
        spec = {"tenant": tenant, "label": label, "a": program_dict(a), "b": program_dict(b),
                "refs": {"a": _ref(request.a), "b": _ref(request.b)}, "source": source,
                "examples": _rows(examples), "alpha": request.alpha, "seed": request.seed,
                "budget": 2 * len(examples)}
        return self._schedule(key, "experiment", label, spec)

    def _schedule(self, key: ApiKey, kind: str, label: str, spec: dict[str, Any]
                  ) -> dict[str, Any]:
        job = self.manager.schedule(kind, spec, reason=f"service key {key.id}")
        with self._lock:
            self._meta[job.id] = {"kind": kind, "name": label, "budget": spec["budget"]}
        try:
            self.store.add_job(job.id, tenant=key.tenant, key_id=key.id, kind=kind, label=label,
                               created=job.created)
        except BaseException:  # an unindexed job would run for nobody
            self.manager.cancel(job.id)
            raise
        return {"id": job.id, "status": "queued"}

    def register_algorithm(self, key: ApiKey, request: AlgorithmRequest) -> dict[str, Any]:
        """Store the tenant's custom algorithm after building it once (its base, parameters and
        operators checked): 409 if the tenant has one of that name."""
        try:
            cls = optimizer_class(request.base)
        except ConfigError:
            raise ServiceError(422, f"unknown base optimizer {request.base!r}: choose one of "
                               f"{', '.join(optimizer_names())}", where="body.base") from None
        _check_finite(request.params, "body.params")
        doc = {"base": cls.name, "params": dict(request.params),
               "operators": dict(request.operators), "description": request.description}
        self._build({"name": cls.name, "params": doc["params"], "operators": doc["operators"]},
                    1, where="body")
        self._put(key.tenant, "algorithm", request.name, doc)
        return {"name": request.name, **doc}

    def _put(self, tenant: str, kind: Any, name: str, doc: dict[str, Any]) -> None:
        """Store a new named document: 409 only when the tenant has one of that name, any
        other refusal of the store a 422."""
        try:
            self.store.put(kind, tenant, name, doc)
        except ConfigError as exc:
            if self.store.get(kind, tenant, name) is not None:
                raise ServiceError(409, str(exc), where="body.name") from None
            raise ServiceError(422, str(exc), where="body") from None

    def register_dataset(self, key: ApiKey, request: DatasetRequest) -> dict[str, Any]:
        """Store the tenant's dataset: 409 if the tenant has one of that name."""
        rows = [r.model_dump() for r in request.rows]
        self._put(key.tenant, "dataset", request.name,
                  {"rows": rows, "description": request.description})
        return {"name": request.name, "rows": len(rows), "description": request.description}

    # ---- resolving ---------------------------------------------------------------------------
    def _program(self, tenant: str, spec: ProgramSpec, where: str) -> AnyProgram:
        if spec.agent is not None:
            return self._deployed(tenant, spec.agent, f"{where}.agent")
        try:
            return Program(signature=spec.signature, instruction=spec.instruction or "",
                           demos=tuple(Example(**d.model_dump()) for d in spec.demos),
                           labels=spec.labels)
        except (ValidationError, ValueError) as exc:
            raise ServiceError(422, f"{where[5:]}: {_first_error(exc)}", where=where) from None

    def _program_ref(self, tenant: str, ref: ProgramSpec | JobRef | VersionRef,
                     where: str) -> AnyProgram:
        if isinstance(ref, ProgramSpec):
            return self._program(tenant, ref, where)
        if isinstance(ref, VersionRef):
            home = self._agent_home(tenant, ref.agent, f"{where}.agent")
            if not (home / "versions.sqlite").is_file():
                raise ServiceError(404, f"agent {ref.agent!r} has no versions",
                                   where=f"{where}.agent")
            with VersionRegistry(home / "versions.sqlite") as registry:
                try:
                    return registry.get(ref.version).load()
                except UnknownVersionError:
                    raise ServiceError(404, f"agent {ref.agent!r} has no version {ref.version}",
                                       where=f"{where}.version") from None
        self._own(tenant, ref.job, where=f"{where}.job")
        job = self.manager.status(ref.job)
        if job.name != "optimize" or job.status != "done" or not job.result:
            state = f"an {job.name}" if job.name != "optimize" else job.status
            raise ServiceError(409, f"job {ref.job} is {state}: only a done optimization has "
                               "a best program",
                               where=f"{where}.job")
        return program_from_dict(job.result["best_program"], f"job {ref.job}", None)

    def _agent_names(self, tenant: str) -> list[str]:
        """The names of ``tenant``'s agents (those :meth:`_agent_home` finds)."""
        root = (self.home / "agents" / tenant).resolve()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if re.fullmatch(NAME, p.name)
                      and p.resolve().parent == root and (p / AGENT_FILE).is_file())

    def _agent_home(self, tenant: str, name: str, where: str) -> Path:
        """The home of ``tenant``'s agent ``name``: 422 unless ``name`` is a plain name (no
        path: it is joined to the tenant's folder), 404 unless that agent exists there."""
        if not isinstance(name, str) or not re.fullmatch(NAME, name):
            raise ServiceError(422, f"bad agent name {str(name)[:80]!r}: a name is 1-64 "
                               "letters, digits, '_', '.' or '-', starting with a letter or "
                               "digit", where=where)
        root = (self.home / "agents" / tenant).resolve()
        home = (root / name).resolve()
        # a link in the tenant's folder must not lead out of it either
        if home.parent != root or not (home / AGENT_FILE).is_file():
            raise ServiceError(404, f"no agent {name!r}", where=where)
        return home

    def _agent_name(self, home: Path) -> str:
        try:
            return str(json.loads((home / AGENT_FILE).read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            raise DamagedFileError(home / AGENT_FILE, "not the agent file evo writes") from None

    def _deployed(self, tenant: str, name: str, where: str) -> AnyProgram:
        home = self._agent_home(tenant, name, where)
        if (home / "versions.sqlite").is_file():
            with VersionRegistry(home / "versions.sqlite") as registry:
                deployed = registry.deployed()
            if deployed is not None:
                return deployed.load()
        raise ServiceError(404, f"agent {name!r} has no deployed version", where=where)

    def _agent_examples(self, tenant: str, name: str, program: AnyProgram,
                        where: str) -> list[Example]:
        home = self._agent_home(tenant, name, where)
        if not (home / "traces.sqlite").is_file():
            return []
        outputs = [f.name for f in _signature(program).outputs]
        try:
            with TraceStore(home / "traces.sqlite", redactor=None) as traces:
                return traces.examples(self._agent_name(home), QualityFilter(), outputs=outputs)
        except ConfigError as exc:  # e.g. encrypted traces, and no key here
            raise ServiceError(422, f"agent {name!r}: {exc}", where=where) from None

    def _examples(self, tenant: str, data: DataSpec, program: AnyProgram, seed: int
                  ) -> tuple[list[Example], dict[str, Any]]:
        """Every example the data names (an experiment's), checked against ``program``."""
        if data.rows is not None or data.trainset is not None:
            parts = ([("rows", data.rows)] if data.rows is not None
                     else [("trainset", data.trainset), ("valset", data.valset)])
            examples = []
            for part, rows in parts:
                made = _examples(rows or [], f"body.data.{part}")
                self._check_rows(program, made, f"body.data.{part}", f"data.{part}")
                examples += made
            return unique_examples(examples), {"what": "inline rows", "where": "body.data"}
        if data.agent is not None:
            where = "body.data.agent"
            examples = self._agent_examples(tenant, data.agent, program, where)
            what = f"agent {data.agent!r}'s graded traces"
        else:
            where, name = "body.data.dataset", data.dataset or ""
            doc = self.store.get("dataset", tenant, name)
            if doc is not None:
                examples, what = _examples(doc["rows"], where), f"dataset {name!r}"
            else:
                task = self._public(name, seed, data)
                examples, what = list(task.test.examples), f"public dataset {name!r} (test)"
        if len(examples) < 2:
            raise ServiceError(422, f"{what}: {len(examples)} usable example(s); a paired "
                               "comparison needs at least 2", where=where)
        self._check_rows(program, examples, where, what)
        return unique_examples(examples), {"what": what, "where": where}

    def _data(self, tenant: str, data: DataSpec, program: AnyProgram, seed: int
              ) -> tuple[list[Example], list[Example], dict[str, Any]]:
        """The (train, val) split of the data an optimization names, checked against
        ``program``, and a note of where it came from."""
        if data.trainset is not None:
            train = _examples(data.trainset, "body.data.trainset")
            val = _examples(data.valset or [], "body.data.valset")
            self._check_rows(program, train, "body.data.trainset", "data.trainset")
            self._check_rows(program, val, "body.data.valset", "data.valset")
            return _cap(train, data.n_train), _cap(val, data.n_val), {"rows": "explicit split"}
        if data.dataset is not None and self.store.get("dataset", tenant,
                                                       data.dataset) is None:
            task = self._public(data.dataset, seed, data)
            train, val = list(task.train.examples), list(task.val.examples)
            what = f"public dataset {data.dataset!r}"
            for part, examples in (("train", train), ("val", val)):
                self._check_rows(program, examples, "body.data.dataset", f"{what} ({part})")
            return train, val, {"dataset": data.dataset, "public": True}
        if data.rows is not None:
            where, what = "body.data.rows", "data.rows"
            examples = _examples(data.rows, where)
            source: dict[str, Any] = {"rows": "inline"}
        elif data.agent is not None:
            where, what = "body.data.agent", f"agent {data.agent!r}'s graded traces"
            examples = self._agent_examples(tenant, data.agent, program, where)
            source = {"agent": data.agent}
        else:
            where, what = "body.data.dataset", f"dataset {data.dataset!r}"
            doc = self.store.get("dataset", tenant, data.dataset or "") or {"rows": []}
            examples = _examples(doc["rows"], where)
            source = {"dataset": data.dataset}
        self._check_rows(program, examples, where, what)
        train, val = _split(unique_examples(examples), data.val_share, seed, what, where)
        return _cap(train, data.n_train), _cap(val, data.n_val), source

    def _public(self, name: str, seed: int, data: DataSpec) -> Any:
        if name not in public_datasets():  # never a path: a request names no file here
            raise ServiceError(404, f"no dataset {name!r}: register it (POST /api/v1/datasets) "
                               f"or name a public one ({', '.join(public_datasets())})",
                               where="body.data.dataset")
        try:
            return load_dataset(name, seed=seed, n_train=data.n_train, n_val=data.n_val)
        except DatasetUnavailableError as exc:
            raise ServiceError(503, f"public dataset {name!r} is unavailable here: {exc}",
                               where="body.data.dataset") from None

    @staticmethod
    def _check_rows(program: AnyProgram, examples: Sequence[Example], where: str,
                    what: str) -> None:
        """Each example has every field the program reads and answers, and a gold label of
        the program's labels (:meth:`Program.check_example`): the first that has not is a 422
        naming row and field."""
        for i, ex in enumerate(examples):
            try:
                program.check_example(ex, outputs=True)
            except ExampleMismatch as exc:
                at = f"{where}[{i}].{exc.side}.{exc.field}"
                if exc.gold is not None:
                    labels = list(program.labels or ()) if isinstance(program, Program) \
                        else list(program.members[0].labels or ())
                    raise ServiceError(422, f"{what}[{i}]: gold label {exc.gold!r} is not one "
                                       f"of the program's labels {labels}", where=at) from None
                sig = _signature(program)
                specs = sig.inputs if exc.side == "inputs" else sig.outputs
                raise ServiceError(
                    422, f"{what}[{i}]: no {exc.side[:-1]} {exc.field!r} (the program '{sig}' "
                    f"{'reads' if exc.side == 'inputs' else 'answers'} "
                    f"{[f.name for f in specs]})", where=at) from None

    def _optimizer(self, tenant: str, name: str, params: dict[str, Any], budget: int,
                   objectives: Sequence[str]) -> dict[str, Any]:
        """The optimizer as a job spec holds it: ``{"name", "params", "operators"}`` (a custom
        algorithm as its base with its parameters under the request's), built once here."""
        custom = self.store.get("algorithm", tenant, name)
        if custom is None:
            try:
                base, fixed, ops = optimizer_class(name).name, {}, {}
            except ConfigError:
                mine = self.store.names("algorithm", tenant)
                raise ServiceError(422, f"unknown optimizer {name!r}: choose one of "
                                   f"{', '.join(optimizer_names())}"
                                   + (f", or your algorithms {', '.join(mine)}" if mine else ""),
                                   where="body.optimizer") from None
        else:
            base, fixed, ops = custom["base"], custom["params"], custom["operators"]
        if "budget" in params:
            raise ServiceError(422, "params.budget: the budget is the request's 'budget'",
                               where="body.params.budget")
        _check_finite(params, "body.params")
        merged = {**fixed, **params}
        if "cost" in objectives and "objectives" not in merged:
            merged["objectives"] = ["accuracy", "cost"]
        spec = {"name": base, "params": merged, "operators": dict(ops),
                "algorithm": name if custom is not None else None}
        self._build(spec, budget, where="body")
        return spec

    @staticmethod
    def _build(spec: dict[str, Any], budget: int, *, where: str = "body") -> SearchConfig:
        """The optimizer of a job spec with ``budget`` metric calls; a bad parameter or an
        unregistered operator is a 422 naming it."""
        cls = optimizer_class(spec["name"])
        params = dict(spec["params"])
        given = params.pop("operators", {})
        if not isinstance(given, dict):
            raise ServiceError(422, "params.operators: an object of operator names to "
                               f"probabilities (got {type(given).__name__})",
                               where=f"{where}.params.operators")
        ops = {**spec.get("operators", {}), **given}
        if ops:
            if "operators" not in cls.model_fields:
                at = f"{where}.params.operators" if given else f"{where}.operators"
                raise ServiceError(422, f"optimizer {cls.name!r} takes no operators (only "
                                   "Evolution-based ones do)", where=at)
            for op in ops:
                at = f"params.operators.{op}" if op in given else f"operators.{op}"
                try:
                    operator(op)
                except ConfigError as exc:
                    raise ServiceError(422, f"{at}: {exc}", where=f"{where}.{at}") from None
            params["operators"] = ops
        try:
            return cls(budget=Budget(metric_calls=budget), **params)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ServiceError(422, f"params.{loc}: {err['msg']} (optimizer {cls.name!r})",
                               where=f"{where}.params.{loc}") from None
        except (ConfigError, ValueError, TypeError) as exc:
            raise ServiceError(422, f"params: {exc} (optimizer {cls.name!r})",
                               where=f"{where}.params") from None

    # ---- the runners -------------------------------------------------------------------------
    def _hook(self, job: Job, on_event: Callable[[dict], None]) -> Callable[[dict], None]:
        progress = _Progress()
        with self._lock:
            self._progress[job.id] = progress

        def hook(event: dict) -> None:
            with self._lock:
                progress.update(event)
            on_event(event)  # the manager's: cancels and pauses raise here

        return hook

    def _run_optimize(self, job: Job, run_dir: Path, *, budget: int | None,
                      on_event: Callable[[dict], None]) -> dict[str, Any]:
        """The "optimize" runner: the job's search in its run directory (a resumed job replays
        its journal), then its summary (the job's result)."""
        spec = job.spec
        program = program_from_dict(spec["program"], f"job {job.id}'s spec", None)
        base = program if isinstance(program, Program) else program.members[0]
        train, val = ([Example.model_validate(r) for r in spec[k]] for k in ("trainset",
                                                                            "valset"))
        allowed = spec["budget"] if budget is None else min(budget, spec["budget"])
        optimizer = self._build(spec["optimizer"], allowed)
        callbacks = ([_MLflowRun(self.mlflow_uri, self._mlflow_experiment, job, spec["label"])]
                     if self.mlflow_uri else [])
        result = run(base, train, val, lm=self.lm, optimizer=optimizer,
                     reflection_lm=self.reflection_lm, seed=spec["seed"], cache=self.cache,
                     run_dir=run_dir, on_event=self._hook(job, on_event), callbacks=callbacks)
        usage = result.usage.to_dict()
        curve = [[e["metric_calls"], e["val_score"]] for e in result.events
                 if e.get("event") == "new_best" and _num(e.get("val_score")) is not None]
        out = {"metric_calls": result.metric_calls, "best_score": _num(result.best_val),
               "baseline_score": _num(result.baseline_val), "lm_calls": int(usage["calls"]),
               **_tokens(usage), "best_program": program_dict(result.best),
               "candidates": [{"id": c.id, "parents": list(c.parents), "operator": c.op,
                               "val_score": _num(c.val_score)} for c in result.candidates],
               "curve": curve, "stop_reason": str(result.stop_reason),
               "optimizer": spec["optimizer"]["algorithm"] or spec["optimizer"]["name"]}
        if "cost" in spec["objectives"]:
            out["pareto"] = [{"id": c.id, "val_score": _num(c.val_score),
                              "cost": _num(result.cost(c))}
                             for c in result.pareto_front(objective="cost")]
        return out

    def _run_experiment(self, job: Job, run_dir: Path, *, budget: int | None,
                        on_event: Callable[[dict], None]) -> dict[str, Any]:
        """The "experiment" runner: programs a and b answer the same examples through one
        session journaled in the job's run directory (a resumed job replays what it paid),
        then the paired test of b against a."""
        spec = job.spec
        a, b = (program_from_dict(spec[k], f"job {job.id}'s spec", None) for k in ("a", "b"))
        examples = [Example.model_validate(r) for r in spec["examples"]]
        session = session_for(self.lm, self.cache)
        run_spec = {"experiment": 1, "a": spec["a"], "b": spec["b"],
                    "examples": data_digest(examples), "model": session.model_id,
                    "seed": spec["seed"]}
        hook = self._hook(job, on_event)
        store = RunStore(run_dir, run_spec)
        max_tokens = SearchConfig.model_fields["max_tokens"].default
        done = 0

        def emit(kind: type[Event], **data: Any) -> None:
            event = kind(t=time.time(), metric_calls=done, lm_calls=session.usage.calls,
                         **data).to_dict()
            store.record(event)
            hook(event)

        store.attach(session)
        try:
            emit(ExperimentStarted, budget=2 * len(examples), n=len(examples))
            scores: dict[str, list[float]] = {"a": [], "b": []}
            step = max(1, math.ceil(len(examples) / _CHUNKS))
            for name, program in (("a", a), ("b", b)):
                for i in range(0, len(examples), step):
                    part, _ = evaluate_program(program, examples[i:i + step], session,
                                               exact_match, max_tokens=max_tokens)
                    scores[name] += part.tolist()
                    done += len(part)
                    emit(ExperimentProgress, program=name)
            decision = paired_decision(scores["a"], scores["b"], [e.id for e in examples],
                                       alpha=spec["alpha"], seed=spec["seed"])
            usage = session.usage.to_dict()
            emit(ExperimentCompleted, best_val=decision.candidate_mean,
                 baseline_val=decision.deployed_mean, usage=usage)
        finally:
            store.detach(session)
            store.close()
        if decision.n >= 2 and decision.p_value < spec["alpha"]:
            verdict = "b better" if decision.difference > 0 else "a better"
        else:
            verdict = "no significant difference"
        return {"metric_calls": done, "a": decision.deployed_mean, "b": decision.candidate_mean,
                "diff": decision.difference, "ci": [decision.ci_low, decision.ci_high],
                "p_value": decision.p_value, "n": decision.n, "alpha": spec["alpha"],
                "decision": verdict, "lm_calls": int(usage["calls"]),
                **_tokens(usage), "refs": spec["refs"], "source": spec["source"]["what"]}

    # ---- reading -----------------------------------------------------------------------------
    def _own(self, tenant: str, job_id: str, *, where: str | None = None) -> None:
        """404 unless ``job_id`` is one of ``tenant``'s (another tenant's is not told apart
        from an unknown one)."""
        if not isinstance(job_id, str) or self.store.job_tenant(job_id) != tenant:
            raise ServiceError(404, f"no job {job_id!r}", where=where)

    def _meta_of(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            meta = self._meta.get(job_id)
        if meta is None:
            spec = self.manager.status(job_id).spec  # once per job in this process
            meta = {"kind": None, "name": spec.get("label"), "budget": spec.get("budget")}
            meta["kind"] = "experiment" if "examples" in spec else "optimize"
            with self._lock:
                self._meta[job_id] = meta
        return meta

    def _progress_of(self, job_id: str, row: dict[str, Any]) -> _Progress:
        with self._lock:
            progress = self._progress.get(job_id)
        if progress is not None:
            return progress
        progress = _Progress()
        if row["sittings"]:  # ran before, not in this process: its events tell, once
            for event in self.manager.events(job_id):
                progress.update(event)
        with self._lock:
            return self._progress.setdefault(job_id, progress)

    def _final_of(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            final = self._final.get(job_id)
        if final is None:
            result = self.manager.result(job_id) or {}
            final = {k: result.get(k) for k in _FIGURES}
            if "diff" in result:  # an experiment: b's mean is its "best", a's the baseline
                final.update(best_score=result.get("b"), baseline_score=result.get("a"))
            with self._lock:
                self._final[job_id] = final
        return final

    def _status(self, job_id: str, row: dict[str, Any]) -> dict[str, Any]:
        meta = self._meta_of(job_id)
        progress = self._progress_of(job_id, row)
        with self._lock:
            p = progress.snapshot()
            started_mono = progress.started
        budget = row["budget"] or meta["budget"]
        figures = {k: p[k] for k in _FIGURES}
        if row["status"] == "done":
            figures.update({k: v for k, v in self._final_of(job_id).items() if v is not None})
        frac = 1.0 if row["status"] == "done" else (
            min(1.0, figures["metric_calls"] / budget) if budget else 0.0)
        eta = None
        if row["status"] == "running" and frac > 0 and started_mono is not None:
            eta = (time.monotonic() - started_mono) / frac * (1 - frac)
        elif row["status"] == "done":
            eta = 0.0
        return {"id": job_id, "kind": meta["kind"], "name": meta["name"],
                "status": row["status"], "created": row["created"], "started": row["started"],
                "finished": row["finished"], "progress": frac, "budget": budget, **figures,
                "cost_usd": self._cost(figures), "eta_s": eta, "error": row["error"],
                "sittings": row["sittings"], "last_event_seq": p["events"]}

    def _cost(self, figures: dict[str, Any]) -> float | None:
        """Dollars for the job's tokens at the service's ``price`` (None without a price, or
        before the job's usage is known: it is counted when the search completes)."""
        if self.price is None or figures.get("prompt_tokens") is None:
            return None
        return (figures["prompt_tokens"] * self.price[0]
                + (figures.get("completion_tokens") or 0) * self.price[1]) / 1e6

    def _row(self, job_id: str) -> dict[str, Any]:
        row = self.manager.summaries([job_id]).get(job_id)
        if row is None:
            raise ServiceError(404, f"no job {job_id!r}")
        return row

    def status(self, tenant: str, job_id: str) -> dict[str, Any]:
        """The job's state, progress (0..1 of its budget), figures so far and ETA."""
        self._own(tenant, job_id)
        return self._status(job_id, self._row(job_id))

    def result(self, tenant: str, job_id: str) -> dict[str, Any]:
        """A done job's result (409 while it is not done)."""
        self._own(tenant, job_id)
        row = self._row(job_id)
        if row["status"] != "done":
            why = f": {row['error']}" if row["error"] else ""
            raise ServiceError(409, f"job {job_id} is {row['status']}{why}: no result")
        result = self.manager.result(job_id) or {}
        return {**result, "cost_usd": self._cost(result)}

    def cancel(self, tenant: str, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, a running one at its next event; 409 once finished."""
        self._own(tenant, job_id)
        try:
            self.manager.cancel(job_id)
        except ConfigError as exc:
            raise ServiceError(409, str(exc)) from None
        return self.status(tenant, job_id)

    def list(self, tenant: str, *, status: str | None = None, kind: str | None = None,
             name: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of the tenant's jobs, newest first: ``{"items", "total", "limit",
        "offset"}``."""
        if status is not None and status not in ("queued", "running", *FINISHED):
            raise ServiceError(422, f"unknown status {status!r}: queued, running, "
                               f"{', '.join(FINISHED)}", where="query.status")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ServiceError(422, f"limit must be 1..1000 (got {limit!r})", where="query.limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ServiceError(422, f"offset must be >= 0 (got {offset!r})",
                               where="query.offset")
        if status is None:
            ids, total = self.store.job_ids(tenant, kind=kind, label=name, limit=limit,
                                            offset=offset)
        else:  # the tenant's ids in order, kept where the queue has that status
            matching = self.manager.ids_with_status(status)
            mine: list[str] = []
            start = 0
            while True:
                page, count = self.store.job_ids(tenant, kind=kind, label=name, limit=1000,
                                                 offset=start)
                mine += [i for i in page if i in matching]
                start += len(page)
                if not page or start >= count:
                    break
            ids, total = mine[offset:offset + limit], len(mine)
        rows = self.manager.summaries(ids)
        items = [self._status(i, rows[i]) for i in ids if i in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def events(self, tenant: str, job_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        """The job's events after seq ``after``, each with its ``"seq"``."""
        self._own(tenant, job_id)
        try:
            return list(self.manager.events(job_id, after=after))
        except UnknownJobError:
            raise ServiceError(404, f"no job {job_id!r}") from None

    def finished(self, job_id: str) -> bool:
        """Whether the job has finished (done, failed or cancelled)."""
        row = self.manager.summaries([job_id]).get(job_id)
        return row is not None and row["status"] in FINISHED

    def counts(self) -> dict[str, int]:
        """Jobs queued and running, all tenants (the health route's figures)."""
        return {s: len(self.manager.ids_with_status(s)) for s in ("queued", "running")}

    # ---- analytics and listings --------------------------------------------------------------
    def analytics(self, tenant: str, *, agent: str | None = None,
                  name: str | None = None, buckets: int = 20) -> dict[str, Any]:
        """Performance over time: per program name, the tenant's done optimizations
        (``{"t", "job", "best_score", "baseline_score", "metric_calls"}``, oldest first); per
        agent of the tenant, its graded traces' mean score per time bucket and version, its
        versions, and the ROI of its own jobs."""
        programs: dict[str, list[dict[str, Any]]] = {}
        if agent is None:
            ids, start = [], 0
            while True:
                page, count = self.store.job_ids(tenant, kind="optimize", label=name,
                                                 limit=1000, offset=start)
                ids += page
                start += len(page)
                if not page or start >= count:
                    break
            rows = self.manager.summaries(ids)
            for job_id in reversed(ids):  # oldest first
                row = rows.get(job_id)
                if row is None or row["status"] != "done":
                    continue
                final = self._final_of(job_id)
                programs.setdefault(self._meta_of(job_id)["name"], []).append(
                    {"t": row["finished"], "job": job_id, "best_score": final["best_score"],
                     "baseline_score": final["baseline_score"],
                     "metric_calls": final["metric_calls"]})
        agents = {}
        names = [agent] if agent is not None else self._agent_names(tenant)
        if name is None or agent is not None:
            for a in names:
                agents[a] = self._agent_analytics(tenant, a, buckets)
        return {"programs": programs, "agents": agents}

    def _agent_analytics(self, tenant: str, name: str, buckets: int) -> dict[str, Any]:
        home = self._agent_home(tenant, name, "query.agent")
        out: dict[str, Any] = {"series": [], "versions": [], "roi": []}
        if (home / "versions.sqlite").is_file():
            with VersionRegistry(home / "versions.sqlite") as registry:
                out["versions"] = [{k: v for k, v in ver.to_dict().items() if k != "program"}
                                   for ver in registry.history()]
        if (home / "traces.sqlite").is_file():
            try:
                with TraceStore(home / "traces.sqlite", redactor=None) as store:
                    graded = [(t.t, t.version, t.score) for t in
                              store.traces(self._agent_name(home), graded=True)]
            except ConfigError:  # encrypted: the scores are not, but the reader needs the key
                graded = []
            out["series"] = _bucketed(graded, buckets)
        if (home / "jobs" / "jobs.sqlite").is_file():
            with OptimizationManager(home / "jobs") as queue:
                out["roi"] = [{"job": j.id, "finished": j.finished, **(j.result or {})["roi"]}
                              for j in queue.history(status="done")
                              if isinstance((j.result or {}).get("roi"), dict)]
        return out

    def algorithms(self, tenant: str) -> dict[str, Any]:
        """The built-in optimizers with their parameters' JSON Schema (the budget is the
        request's), and the tenant's custom algorithms."""
        builtin = []
        for n in optimizer_names():
            cls = optimizer_class(n)
            schema = cls.model_json_schema(schema_generator=_Schema)
            schema.get("properties", {}).pop("budget", None)
            doc = (cls.__doc__ or "").strip().split("\n\n")[0]
            builtin.append({"name": n, "description": " ".join(doc.split()),
                            "params": schema})
        custom = [{"name": n, **(self.store.get("algorithm", tenant, n) or {})}
                  for n in self.store.names("algorithm", tenant)]
        return {"builtin": builtin, "custom": custom}

    def close(self) -> None:
        """Stop the workers (a running job goes back to the queue and resumes from its
        journal when a ServiceJobs on this home runs it again), close the queue and stop the
        executor's workers."""
        try:
            self.manager.close()
        finally:
            stop = getattr(self.executor, "shutdown", None)  # (not in the Executor protocol)
            if stop is not None:
                stop()

    def __enter__(self) -> ServiceJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- helpers -----------------------------------------------------------------------------------

def _signature(program: AnyProgram) -> Any:
    return program.signature if isinstance(program, Program) else program.members[0].signature


def _rows(examples: Sequence[Example]) -> list[dict[str, Any]]:
    return [e.model_dump(include={"inputs", "outputs"}) for e in examples]


def _ref(ref: BaseModel) -> dict[str, Any]:
    if isinstance(ref, ProgramSpec):
        return {"agent": ref.agent} if ref.agent else {"signature": ref.signature}
    return ref.model_dump()


def _check_finite(value: Any, where: str) -> None:
    """422 at the first number in ``value`` that is NaN or infinite (JSON has none: a job's
    spec could not be stored, nor a parameter compared). Iterative: a body nested as deep as
    the JSON decoder allows is walked without recursion."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ServiceError(422, f"{at[5:]}: {item} is not a finite number", where=at)
        if isinstance(item, dict):
            stack += [(v, f"{at}.{k}") for k, v in reversed(item.items())]
        elif isinstance(item, list | tuple):
            stack += [(v, f"{at}[{i}]") for i, v in reversed(list(enumerate(item)))]


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc + ': ' if loc else ''}{err['msg']}"
    return str(exc)


def _examples(rows: Sequence[Any], where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        data = row.model_dump() if isinstance(row, BaseModel) else row
        try:
            out.append(Example(inputs=data["inputs"], outputs=data["outputs"]))
        except (ValidationError, KeyError, TypeError) as exc:
            raise ServiceError(422, f"{where[5:]}[{i}]: {_first_error(exc)}",
                               where=f"{where}[{i}]") from None
    return out


def _split(examples: list[Example], share: float, seed: int, what: str, where: str
           ) -> tuple[list[Example], list[Example]]:
    """A seeded split: ``share`` of the examples (at least one) for validation, the rest (at
    least one) for training."""
    if len(examples) < 2:
        raise ServiceError(422, f"{what}: {len(examples)} distinct usable example(s) cannot be "
                           "split into a training and a validation set (at least 2 are needed)",
                           where=where)
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * share)))
    return order[n_val:], order[:n_val]


def _cap(examples: list[Example], n: int | None) -> list[Example]:
    return examples if n is None else examples[:n]


def _bucketed(graded: Sequence[tuple[float, int, float]], buckets: int
              ) -> list[dict[str, Any]]:
    """Graded calls (time, version, score) as mean scores per time bucket and version:
    ``buckets`` equal spans from the first call to the last."""
    if not graded:
        return []
    t0, t1 = min(t for t, _, _ in graded), max(t for t, _, _ in graded)
    width = max((t1 - t0) / max(1, buckets), 1e-9)
    sums: dict[tuple[int, int], list[float]] = {}
    for t, version, score in graded:
        b = min(int((t - t0) / width), buckets - 1)
        acc = sums.setdefault((b, version), [0.0, 0])
        acc[0] += score
        acc[1] += 1
    return [{"t": t0 + b * width, "version": v, "mean": s / n, "n": int(n)}
            for (b, v), (s, n) in sorted(sums.items())]
