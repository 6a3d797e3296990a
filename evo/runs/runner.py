"""The runner: one search, start to end, as :func:`evo.api.optimize` runs it.

:func:`run` checks the inputs, opens the LM sessions (one cache), the run store (when there is a
run directory: spec check, lock, journal, event log), checks that the LM answers (preflight),
wires the event sinks (the store's log and checkpoints, typed callbacks, the progress bar,
``on_event``), runs the optimizer's search, and writes the result. The run store is closed
before it returns, whatever happens: the run directory is free at once for a resume, a rerun of
the same notebook cell, ``evo report`` or another process.

:class:`UsageMeter` is the one way to count what several LM sessions (task and reflection) used
since a point in time.
"""

from __future__ import annotations

import functools
import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from evo.data import Dataset, Example
from evo.errors import ConfigError
from evo.lm.base import LM, Executor
from evo.lm.cache import ResponseCache
from evo.lm.session import LMSession, Usage, on_executor, session_for
from evo.metrics import Metric, exact_match
from evo.optimizers import get
from evo.optimizers.evolution import Evolution
from evo.program import Program
from evo.program.ensemble import EnsembleProgram
from evo.runs.events import Callback, ProgressBar, dispatch
from evo.runs.record import SearchRecord
from evo.runs.result import SearchResult
from evo.runs.store import RunStore, data_digest
from evo.search.engine import Optimizer, SearchConfig, jsonable
from evo.search.evaluate import (
    cell_failures,
    check_rows,
    format_failures,
    meaningless,
    unique_examples,
)
from evo.search.events import SearchCompleted

Data = Dataset | Sequence[Example]
R = TypeVar("R", bound=SearchResult)


class UsageMeter:
    """What ``sessions`` used since the meter was made: paid calls, cache hits, replays,
    tokens and LM seconds, summed over the sessions (one that appears twice, as when the
    reflection LM is the task LM, counts once).

    >>> # meter = UsageMeter([task, reflection]); ...; meter.spent().calls
    """

    def __init__(self, sessions: Sequence[LMSession]) -> None:
        self.sessions = list({id(s): s for s in sessions}.values())
        self.before = [s.snapshot() for s in self.sessions]

    def spent(self) -> Usage:
        usage = Usage()
        for s, b in zip(self.sessions, self.before, strict=True):
            usage = usage + (s.snapshot() - b)
        return usage


def name_of(fn: Any) -> str:
    """A stable name for a callable in a run spec (no memory addresses: a spec must read the
    same in the next process)."""
    if isinstance(fn, functools.partial):
        return f"partial({name_of(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '') or type(fn).__module__}.{name}"


def optimizer_spec(optimizer: Optimizer) -> dict[str, Any]:
    """An optimizer's identity for a run store: its name and every parameter, budget included."""
    if isinstance(optimizer, SearchConfig):
        return {**jsonable(optimizer, name=name_of), "budget": dict(optimizer.budget.__dict__)}
    return {"optimizer": name_of(type(optimizer)),
            "budget": dict(getattr(getattr(optimizer, "budget", None), "__dict__", {}))}


def _takes(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run(program: Program, trainset: Data, valset: Data, *, lm: LM | LMSession,
        optimizer: Optimizer | str | None = None, metric: Metric | None = None,
        reflection_lm: LM | LMSession | None = None, seed: int = 0,
        cache: ResponseCache | str | Path | bool | None = True,
        description: str | None = None, run_dir: str | Path | None = None,
        progress: bool = False, on_event: Callable[[dict], None] | None = None,
        callbacks: Sequence[Callback] = (), cli: dict[str, Any] | None = None,
        max_concurrency: int | None = None, executor: Executor | None = None,
        result_type: type[R] = SearchResult) -> R:  # type: ignore[assignment]
    """One search of ``program`` (the arguments are :func:`evo.api.optimize`'s, which documents
    them), returned as a ``result_type``. The run store, if any, is closed when this returns or
    raises."""
    backend = lm  # what the result keeps: its test pass runs in this process
    lm = on_executor(lm, executor)
    if isinstance(optimizer, str):
        optimizer = get(optimizer)
    optimizer = optimizer or Evolution()
    train, val = unique_examples(trainset, "trainset"), unique_examples(valset, "valset")
    if not val:
        raise ConfigError("valset is empty: the search needs validation examples to compare "
                          "candidates")
    check_rows(program, train, "trainset")
    check_rows(program, val, "valset")
    metric = metric or exact_match
    task_session = session_for(lm, cache)
    reflection_session = task_session if reflection_lm is None else session_for(reflection_lm,
                                                                                 cache)
    if max_concurrency is not None:  # (a run's result does not depend on it: not in the spec)
        task_session.max_concurrency = max_concurrency
        if reflection_session is not task_session and getattr(reflection_session.lm,
                                                               "concurrent", False):
            reflection_session.max_concurrency = max_concurrency
    if description is None:
        description = getattr(trainset, "description", "") or ""
    sessions = [task_session] + ([reflection_session] if reflection_session is not task_session
                                 else [])
    for s in sessions:  # a journal belongs to one run: a session journaling another is busy
        if s.journal is not None:
            raise ConfigError(f"{s!r} is journaling another run right now (a run store's, "
                              "e.g. an aoptimize still running): give each concurrent run its "
                              "own LM session")
    store = None
    if run_dir is not None:  # opened first: a mismatch or a busy directory costs no LM call
        # The data as the user gave it, repeats included: a store made before repeats were
        # dropped (when the digest was of the rows as given) still resumes.
        spec = {"program": program.to_json(), "trainset": data_digest(list(trainset)),
                "valset": data_digest(list(valset)), "optimizer": optimizer_spec(optimizer),
                "seed": seed, "model": task_session.model_id,
                "reflection_model": reflection_session.model_id,
                "metric": name_of(metric), "description": description}
        store = RunStore(run_dir, spec, cli=cli)
    try:
        result = _search(program, train, val, optimizer, metric, task_session,
                         reflection_session, sessions, store, seed=seed,
                         description=description, progress=progress, on_event=on_event,
                         callbacks=callbacks, result_type=result_type)
        result.lm, result.cache = backend, cache
        result.max_concurrency = max_concurrency if executor is None else None
        return result
    finally:
        if store is not None:  # released, so the run can be resumed at once (here or elsewhere)
            store.detach(*sessions)
            store.close()


def _search(program: Program, train: list[Example], val: list[Example], optimizer: Optimizer,
            metric: Metric, task_session: LMSession, reflection_session: LMSession,
            sessions: list[LMSession], store: RunStore | None, *, seed: int, description: str,
            progress: bool, on_event: Callable[[dict], None] | None,
            callbacks: Sequence[Callback], result_type: type[R]) -> R:
    """:func:`run` once its inputs are checked and its store is open."""
    # Fail once, clearly, if the LM cannot be reached at all, before any work is done
    # (not journaled: every sitting checks its LM afresh).
    for s in sessions:
        s.preflight()
    if store is not None:
        store.attach(*sessions)
    meter = UsageMeter(sessions)
    started = time.perf_counter()
    callbacks = [*callbacks, *([ProgressBar()] if progress else [])]
    live: list[Any] = []  # the search state, once the optimizer has built it

    def sink(event: dict) -> None:
        replayed = store.record(event) if store is not None else False
        dispatch(callbacks, event, replayed=replayed)
        if store is not None and event["event"] in ("candidate_evaluated", "new_best") and live:
            store.checkpoint(live[0], meter.spent().to_dict())
        if on_event is not None:
            on_event(event)

    try:
        state = optimizer.search(program, train, val, task_session=task_session,
                                 reflection_session=reflection_session, metric=metric, seed=seed,
                                 description=description, on_event=sink,
                                 on_cell=None,
                                 **({"on_state": live.append} if _takes(optimizer.search,
                                                                       "on_state") else {}))
    except BaseException as exc:
        for cb in callbacks:  # close bars, end tracking runs as failed
            cb.on_error(exc)
        if store is not None and live:
            store.checkpoint(live[0], meter.spent().to_dict(), force=True)
        raise
    usage = meter.spent()
    best = state.best
    seed_cand = state.candidates[0]
    failed = cell_failures(state.matrix.cells.values())
    if meaningless(failed):
        warnings.warn(f"evo: most of the search's cells failed ({format_failures(failed)}): "
                      "its validation scores say nothing about the prompts",
                      RuntimeWarning, stacklevel=4)  # (the caller of evo.optimize)
    result = result_type(
        best=best.program, baseline=seed_cand.program, best_val=best.val_score,
        baseline_val=seed_cand.val_score, candidates=state.candidates, matrix=state.matrix,
        usage=usage, metric_calls=state.evaluator.metric_calls,
        budget=optimizer.budget.metric_calls, seconds=time.perf_counter() - started,
        stop_reason=state.stop_reason, events=state.events,
        instructions=list(state.archive.instructions),
        instruction_origins=list(state.archive.origins), seed=seed, lm=task_session,
        metric=metric, max_tokens=optimizer.max_tokens,
        optimizer=getattr(optimizer, "name", "") or type(optimizer).__name__,
        record=SearchRecord.from_state(state),
        sittings=store.ledger() if store is not None else [], best_id=best.id,
        run_dir=store.path if store is not None else None,
        sitting=store.sitting if store is not None else 0,
        spec=store.info["spec"] if store is not None else None,
        confirmation=state.confirmation)
    done = SearchCompleted(
        t=time.time(), iteration=state.iteration, metric_calls=result.metric_calls,
        lm_calls=state.evaluator.lm_requests, best=best.id, best_val=best.val_score,
        baseline_val=seed_cand.val_score, stop_reason=state.stop_reason,
        usage=usage.to_dict(), cell_failures=failed,
        best_program={("evo_ensemble" if isinstance(best.program, EnsembleProgram)
                       else "evo_program"): 1, **best.program.to_json()}).to_dict()
    state.events.append(done)
    sink(done)
    if store is not None:
        store.checkpoint(state, usage.to_dict(), force=True)
        result.save(store.path)
    return result
