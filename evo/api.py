"""The one-call API: ``evo.optimize(program, train, val, lm=...)`` and what it returns."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo.analysis.compare import format_p, paired
from evo.data import Dataset, Example
from evo.errors import ConfigError
from evo.lm.base import LM, Executor
from evo.lm.cache import ResponseCache
from evo.lm.session import LMSession, on_executor, session_for
from evo.metrics import Metric, exact_match
from evo.program import Program
from evo.program.ensemble import EnsembleProgram, load_program
from evo.runs.events import Callback, progress_bar
from evo.runs.result import SAVED_FILES, SearchResult
from evo.runs.runner import optimizer_spec, run
from evo.runs.store import reopened_journal
from evo.search.engine import Optimizer
from evo.search.evaluate import (
    cell_failures,
    check_testset,
    evaluate_program,
    format_failures,
    meaningless,
)

__all__ = ["SAVED_FILES", "Evaluation", "Report", "Result", "aevaluate", "aoptimize", "evaluate",
           "evaluation", "optimize", "optimizer_spec"]

Data = Dataset | Sequence[Example]


@dataclass
class Report:
    """Baseline vs optimized program on held-out data, with what the search cost and how many
    of its cells failed.

    ``failures`` counts the failed cells (scored 0 because the LM call, the parser or the metric
    failed; :func:`evo.search.evaluate.cell_failures`) of the search's validation matrix
    (``"search"``) and of each program's test pass (``"baseline"``, ``"optimized"``), per kind.
    :attr:`meaningless` is True when more than half of the cells of any of them failed: the
    figures then say nothing about the prompts (``evo run`` exits with an error).
    """

    n: int
    baseline: float
    optimized: float
    ci_low: float
    ci_high: float
    p_value: float  # paired permutation test of the difference (two-sided)
    search: dict[str, Any]
    test_usage: dict[str, Any]
    test_seconds: float
    # per test example, in order: the scores behind the figures (for reports and A/B reruns)
    example_ids: list[str] = field(default_factory=list)
    baseline_scores: list[float] = field(default_factory=list)
    optimized_scores: list[float] = field(default_factory=list)
    # "search" / "baseline" / "optimized" -> evo.search.evaluate.cell_failures(...)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return self.optimized - self.baseline

    @property
    def failed_share(self) -> float:
        """The largest share of failed cells among the search, the baseline's test pass and
        the optimized program's test pass (0.0 when nothing failed)."""
        return max((f.get("failed_share", 0.0) for f in self.failures.values()), default=0.0)

    @property
    def meaningless(self) -> bool:
        """Whether more than half of the cells of the search or of either test pass failed."""
        return meaningless(*self.failures.values())

    def warning(self) -> str | None:
        """The warning a meaningless report ends with (None when the report means something)."""
        if not self.meaningless:
            return None
        worst = max(self.failures, key=lambda k: self.failures[k].get("failed_share", 0.0))
        return (f"most cells failed ({self.failed_share:.0%} of the {worst} "
                f"{'validation' if worst == 'search' else 'test'} cells: "
                f"{format_failures(self.failures[worst])}): these scores say nothing about the "
                "prompts; the errors are listed per cell in the run's checkpoint/result "
                "(cell_errors)")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "delta": self.delta, "failed_share": self.failed_share,
                "meaningless": self.meaningless}

    def __str__(self) -> str:
        s = self.search
        rows = [
            ("held-out examples", f"{self.n}"),
            ("baseline accuracy", f"{self.baseline:.3f}"),
            ("optimized accuracy", f"{self.optimized:.3f}"),
            ("difference (95% paired bootstrap CI)",
             f"{self.delta:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"),
            ("paired permutation test (two-sided)", format_p(self.p_value)),
            ("validation: baseline -> best", f"{s['baseline_val']:.3f} -> {s['best_val']:.3f}"),
            *([("held-out part of validation: baseline -> best",
                f"{c['seed_holdout_score']:.3f} -> {c['holdout_score']:.3f} ({c['n']} examples "
                "never used to choose)")] if (c := s.get("confirmation")) else []),
            *([("candidates raced: validated / dropped / out of budget",
                f"{r.get('validated', 0)} / {r.get('dropped', 0)} / "
                f"{r.get('out of budget', 0)}")] if (r := s.get("raced")) else []),
            ("search metric calls / budget", f"{s['metric_calls']} / {s['budget']}"),
            ("search LM calls (paid / cache hits / replayed)",
             f"{s['usage']['calls']} / {s['usage']['cache_hits']} / "
             f"{s['usage'].get('replayed', 0)} ({s['usage']['cache_hit_rate']:.0%} hit rate)"),
            ("search tokens (prompt / completion)",
             f"{s['usage']['prompt_tokens']} / {s['usage']['completion_tokens']}"),
            ("prompt tokens reused from the KV cache",
             f"{s['usage']['reused_prompt_tokens']} "
             f"({s['usage']['reused_share']:.0%})"),
            ("search wall time", f"{s['seconds']:.0f} s ({s['lm_share']:.0%} in the LM, "
                                 f"{1 - s['lm_share']:.0%} in evo's own code)"),
            ("test LM calls (paid / cache hits / replayed)",
             f"{self.test_usage['calls']} / {self.test_usage['cache_hits']} / "
             f"{self.test_usage.get('replayed', 0)}"),
            ("test wall time", f"{self.test_seconds:.0f} s"),
        ]
        labels = {"search": "failed cells, search (validation)",
                  "baseline": "failed cells, test: baseline",
                  "optimized": "failed cells, test: optimized"}
        rows += [(labels.get(k, f"failed cells, {k}"), format_failures(v))
                 for k, v in self.failures.items()]
        width = max(len(k) for k, _ in rows)
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
        warning = self.warning()
        return text + (f"\nWARNING: {warning}" if warning else "")


@dataclass
class Result(SearchResult):
    """What a search returns: the best program, the baseline, every candidate and the matrix
    (:class:`evo.runs.result.SearchResult`), and the held-out test (:meth:`report`).

    It holds no live handle: the run directory is released when :func:`optimize` returns, and
    :meth:`report` opens what its test pass needs (a session on the LM, with the cache, and the
    run's journal, briefly) when it is called."""

    def report(self, testset: Data, *, progress: bool = False) -> Report:
        """Score baseline and best on held-out examples (outside the search budget). In a run
        store, the test pass is journaled (phase 'test', in the search's sitting): a resumed run
        replays it too. The run directory is locked while it runs (another process holding it
        is a :class:`~evo.runs.store.RunInUseError`).

        The test set is checked first (:func:`check_testset`: not empty, the program's fields
        and labels; a repeated example is scored once, with a warning). The report counts the
        failed cells of the search and of both test passes; when most of them failed it warns
        (and :attr:`Report.meaningless` is True)."""
        examples = check_testset(self.baseline, testset)
        session = session_for(self.lm, self.cache)
        if self.max_concurrency is not None:
            session.max_concurrency = self.max_concurrency
        journaled: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.run_dir is not None and self.spec is not None:
            journaled = reopened_journal(self.run_dir, self.sitting, "test", self.spec)
        with journaled as journal:
            if journal is not None:
                session.journal = journal
            try:
                return self._test(examples, session, progress)
            finally:
                if journal is not None:
                    session.journal = None

    def _test(self, examples: list[Example], session: LMSession, progress: bool) -> Report:
        before = session.usage.copy()
        started = time.perf_counter()
        members = len(self.best.members) if isinstance(self.best, EnsembleProgram) else 1
        bar = _bar((1 + members) * len(examples), "test", progress)
        try:
            base, base_cells = evaluate_program(
                self.baseline, examples, session, self.metric,
                max_tokens=self.max_tokens, progress=bar.update if bar else None)
            best, best_cells = evaluate_program(
                self.best, examples, session, self.metric,
                max_tokens=self.max_tokens, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        ab = paired("baseline", "best", base, best, [ex.id for ex in examples], seed=self.seed)
        summary = self.search_summary()
        report = Report(len(examples), ab.accuracy_a, ab.accuracy_b, ab.ci_low, ab.ci_high,
                        ab.p_value, summary, (session.usage - before).to_dict(),
                        time.perf_counter() - started, ab.example_ids, ab.scores_a, ab.scores_b,
                        failures={"search": summary["cell_failures"],
                                  "baseline": cell_failures(base_cells),
                                  "optimized": cell_failures(best_cells)})
        if report.meaningless:
            warnings.warn(f"evo: {report.warning()}", RuntimeWarning, stacklevel=4)
        return report


def _bar(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc) if enabled else None


def optimize(program: Program, trainset: Data, valset: Data, *, lm: LM | LMSession,
             optimizer: Optimizer | str | None = None, metric: Metric | None = None,
             reflection_lm: LM | LMSession | None = None, seed: int = 0,
             cache: ResponseCache | str | Path | bool | None = True,
             description: str | None = None, run_dir: str | Path | None = None,
             progress: bool = False, on_event: Callable[[dict], None] | None = None,
             callbacks: Sequence[Callback] = (), cli: dict[str, Any] | None = None,
             max_concurrency: int | None = None, executor: Executor | None = None) -> Result:
    """Search for a better instruction + demos for ``program``.

    ``trainset`` is the demo pool, ``valset`` decides which candidate wins. Every LM call goes
    through one cached session. The same seed and answers reproduce the same result.
    ``optimizer`` is an optimizer object or a registered name (default: :class:`Evolution`);
    ``metric`` scores a prediction against the gold example (default: exact match);
    ``reflection_lm`` writes the new instructions (default: ``lm``); ``cache`` is the response
    cache (True: the default user cache; a path or a ResponseCache; False/None: none).

    ``callbacks`` receive typed events as the search goes (:mod:`evo.runs.events`: start, candidate
    generated / evaluated, new best, budget exhausted, complete); ``on_event`` receives the same
    events as JSON-ready dicts; ``progress`` adds a progress bar.

    With ``run_dir`` the run lives in a run store (:mod:`evo.runs.store`): its state, event log and
    LM journal are written as it goes, and calling ``optimize`` again with the same inputs and
    ``run_dir`` resumes it (a killed run continues with no paid call repeated and ends with the
    result an uninterrupted run gives; a finished one is replayed from its journal). Other
    inputs on the same ``run_dir`` raise :class:`evo.runs.store.RunMismatchError`. ``cli`` (the
    command line, from ``evo run``) is kept in the store for ``evo run --resume``. The run is
    known by its data as given, repeats included (the search itself sees each example once), so
    a list of examples names the run it named before repeats were dropped; a
    :class:`~evo.data.Dataset` drops its repeats when it is built and is known by the rows it
    holds. The store is closed when ``optimize`` returns or raises: the directory is free at
    once (a rerun of the same notebook cell resumes it); :meth:`Result.report` reopens its
    journal for the test pass.

    ``max_concurrency`` is how many LM calls are in flight at once (one candidate's cells go
    out together): default 8 for a backend that serves calls in parallel (a hosted or served
    model), 1 for the in-process model, which refuses more. The result does not depend on it:
    the same seed and answers give the same search at any concurrency. Throttling (HTTP 429)
    lowers it for a while; see :class:`~evo.lm.session.LMSession` for ``max_rpm`` /
    ``max_tpm`` quotas (pass such a session as ``lm``). ``executor`` runs the backend's calls
    elsewhere (:class:`evo.RayExecutor`: Ray actors, each with its own client or model
    replica); the cache, the journal and every decision stay in this process.

    The run itself is :func:`evo.runs.runner.run`; :func:`aoptimize` is the same call for an
    event loop.

    >>> # result = evo.optimize(program, task.train, task.val, lm=evo.lm.local())
    >>> # print(result.report(task.test))
    """
    return run(program, trainset, valset, lm=lm, optimizer=optimizer, metric=metric,
               reflection_lm=reflection_lm, seed=seed, cache=cache, description=description,
               run_dir=run_dir, progress=progress, on_event=on_event, callbacks=callbacks,
               cli=cli, max_concurrency=max_concurrency, executor=executor, result_type=Result)


async def aoptimize(program: Program, trainset: Data, valset: Data, *, lm: LM | LMSession,
                    **kwargs: Any) -> Result:
    """:func:`optimize` for code inside an event loop (a notebook, a web service): the search
    runs in a worker thread, so the loop keeps serving while it runs, and returns the same
    result as the sync call. Cancelling the awaiting task does not stop the search thread: it
    runs to its end (with ``run_dir``, kill the process instead; the run resumes).

    >>> # result = await evo.aoptimize(program, train, val, lm=lm, max_concurrency=16)
    """
    return await asyncio.to_thread(functools.partial(optimize, program, trainset, valset, lm=lm,
                                                     **kwargs))




@dataclass(frozen=True)
class Evaluation:
    """A program scored on a dataset: its accuracy over ``n`` examples and its failed cells
    per kind (:func:`evo.search.evaluate.cell_failures`). :attr:`meaningless` when more than half of
    the cells failed: the accuracy then says nothing about the program."""

    accuracy: float
    n: int
    failures: dict[str, Any]

    @property
    def meaningless(self) -> bool:
        return meaningless(self.failures)

    def __str__(self) -> str:
        return (f"accuracy {self.accuracy:.3f} ({self.n} examples); failed cells: "
                f"{format_failures(self.failures)}")


def evaluation(program: Program | EnsembleProgram | str | Path, dataset: Data, *,
               lm: LM | LMSession, metric: Metric | None = None,
               cache: ResponseCache | str | Path | bool | None = True,
               max_tokens: int = 48, max_concurrency: int | None = None,
               executor: Executor | None = None) -> Evaluation:
    """``program`` (or a saved program file) scored on ``dataset``, with the cells that failed
    (see :func:`evaluate`)."""
    lm = on_executor(lm, executor)
    if isinstance(program, str | Path):
        program = load_program(program)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a whole number above 0, got {max_tokens!r}")
    examples = check_testset(program, dataset, what="data")
    session = session_for(lm, cache)
    if max_concurrency is not None:
        session.max_concurrency = max_concurrency
    scores, cells = evaluate_program(program, examples, session, metric or exact_match,
                                     max_tokens=max_tokens)
    return Evaluation(float(scores.mean()), len(examples), cell_failures(cells))


def evaluate(program: Program | EnsembleProgram | str | Path, dataset: Data, *,
             lm: LM | LMSession, metric: Metric | None = None,
             cache: ResponseCache | str | Path | bool | None = True,
             max_tokens: int = 48, max_concurrency: int | None = None,
             executor: Executor | None = None) -> float:
    """Accuracy (mean metric) of ``program`` on ``dataset``.

    The data is checked first (:func:`check_testset`): an empty set, or gold labels the program
    does not have, is a :class:`~evo.errors.ConfigError` before any LM call, and a repeated
    example is scored once (with a warning). When most cells fail (LM, parser or metric
    errors) a RuntimeWarning says so: the accuracy then means nothing. :func:`evaluation`
    returns the failed cells too. ``max_concurrency`` and ``executor`` are :func:`optimize`'s:
    the calls go out that many at once, the cells are recorded in the dataset's order."""
    result = evaluation(program, dataset, lm=lm, metric=metric, cache=cache,
                        max_tokens=max_tokens, max_concurrency=max_concurrency,
                        executor=executor)
    if result.meaningless:
        warnings.warn(f"evo: most cells failed ({format_failures(result.failures)}): the "
                      "accuracy says nothing about the program", RuntimeWarning, stacklevel=2)
    return result.accuracy


async def aevaluate(program: Program | EnsembleProgram | str | Path, dataset: Data, *,
                    lm: LM | LMSession, **kwargs: Any) -> float:
    """:func:`evaluate` for code inside an event loop: it runs in a worker thread and returns
    the same accuracy as the sync call (see :func:`aoptimize`)."""
    return await asyncio.to_thread(functools.partial(evaluate, program, dataset, lm=lm,
                                                     **kwargs))
