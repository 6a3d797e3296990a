"""The one-call API: ``evo.optimize(program, train, val, lm=...)`` and what it returns."""

from __future__ import annotations

import contextlib
import inspect
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evo._io import write_json, write_text
from evo.analysis.compare import format_p, paired
from evo.data import DataError, Dataset, Example
from evo.errors import ConfigError, UnsafeRunDirError
from evo.kernels.moo import nondominated_ranks
from evo.lm.base import LM
from evo.lm.cache import ResponseCache, default_cache_path
from evo.lm.session import LMSession, Usage, session_for
from evo.metrics import Metric, exact_match
from evo.optimizers import get
from evo.optimizers.evolution import Evolution
from evo.paths import protected_dir
from evo.program import Program
from evo.program.ensemble import EnsembleProgram, load_program
from evo.runs.events import Callback, ProgressBar, dispatch, progress_bar
from evo.runs.store import (
    EVENTS_FILE,
    RUN_FILE,
    RunStore,
    check_run_dir,
    data_digest,
    state_record,
)
from evo.search.engine import Candidate, Optimizer, SearchConfig, jsonable
from evo.search.evaluate import (
    ScoreMatrix,
    cell_failures,
    check_testset,
    evaluate_program,
    format_failures,
    meaningless,
    unique_examples,
)

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
class Result:
    """What a search returns: the best program, the baseline, every candidate and the matrix."""

    best: Program | EnsembleProgram
    baseline: Program
    best_val: float
    baseline_val: float
    candidates: list[Candidate]
    matrix: ScoreMatrix
    usage: Usage
    metric_calls: int
    budget: int
    seconds: float
    stop_reason: str
    events: list[dict[str, Any]]
    instructions: list[str]
    instruction_origins: list[dict[str, Any]]  # how each archived text came to be (op, parent)
    seed: int
    session: LMSession = field(repr=False)
    metric: Metric = field(repr=False)
    max_tokens: int = 48
    optimizer: str = ""
    # the state as JSON data (evo.runs.store.state_record): instructions, lineage, score matrix
    record: dict[str, Any] = field(default_factory=dict, repr=False)
    # per sitting of a stored run (evo.runs.store): what each process received and paid for
    sittings: list[dict[str, Any]] = field(default_factory=list)
    best_id: int = 0  # the best candidate's row in the score matrix
    store: RunStore | None = field(default=None, repr=False)  # the run store, if any

    def tradeoff(self) -> list[Candidate]:
        """The validated candidates no other beats on both validation accuracy and prompt length
        (non-dominated sort, :mod:`evo.kernels.moo`), shortest prompt first: the candidates to
        choose from when prompt tokens cost time or money."""
        validated = [c for c in self.candidates if c.accepted]
        if not validated:
            return []
        objectives = np.array([[c.val_score, c.program.prompt_chars()] for c in validated])
        ranks = nondominated_ranks(objectives, np.array([1.0, -1.0]))
        front = [c for c, r in zip(validated, ranks, strict=True) if r == 0]
        return sorted(front, key=lambda c: (c.program.prompt_chars(), c.id))

    def pareto_front(self) -> list[Candidate]:
        """The multi-objective result: the (validation accuracy, prompt length) Pareto set
        (:meth:`tradeoff`), shortest prompt first."""
        return self.tradeoff()

    def search_summary(self) -> dict[str, Any]:
        failures = cell_failures(self.matrix.cells.values())
        return {"baseline_val": self.baseline_val, "best_val": self.best_val,
                "metric_calls": self.metric_calls, "budget": self.budget,
                "usage": self.usage.to_dict(), "seconds": self.seconds,
                "lm_share": self.usage.lm_share(self.seconds),
                "candidates": len(self.candidates),
                "accepted": sum(c.accepted for c in self.candidates),
                # cells scored 0 because the LM call, the parser or the metric failed (each is
                # listed in result.json's cell_errors); per kind in cell_failures
                "cell_errors": failures["failed"], "cell_failures": failures,
                "stop_reason": self.stop_reason, "seed": self.seed, "optimizer": self.optimizer,
                "sittings": self.sittings,
                "paid_calls_all_sittings": (sum(s["paid"] for s in self.sittings)
                                            if self.sittings else self.usage.calls)}

    def report(self, testset: Data, *, progress: bool = False) -> Report:
        """Score baseline and best on held-out examples (outside the search budget). In a run
        store, the test pass is journaled (phase 'test'): a resumed run replays it too.

        The test set is checked first (:func:`check_testset`: not empty, the program's fields
        and labels; a repeated example is scored once, with a warning). The report counts the
        failed cells of the search and of both test passes; when most of them failed it warns
        (and :attr:`Report.meaningless` is True)."""
        examples = check_testset(self.baseline, testset)
        before = self.session.usage.copy()
        started = time.perf_counter()
        members = len(self.best.members) if isinstance(self.best, EnsembleProgram) else 1
        bar = _bar((1 + members) * len(examples), "test", progress)
        journaled = contextlib.nullcontext()
        if self.store is not None and not self.store.closed:
            self.store.attach(self.session)
            journaled = self.store.phase("test")
        try:
            with journaled:
                base, base_cells = evaluate_program(
                    self.baseline, examples, self.session, self.metric,
                    max_tokens=self.max_tokens, progress=bar.update if bar else None)
                best, best_cells = evaluate_program(
                    self.best, examples, self.session, self.metric,
                    max_tokens=self.max_tokens, progress=bar.update if bar else None)
        finally:
            if self.store is not None:
                self.store.detach(self.session)
            if bar:
                bar.close()
        ab = paired("baseline", "best", base, best, [ex.id for ex in examples], seed=self.seed)
        summary = self.search_summary()
        report = Report(len(examples), ab.accuracy_a, ab.accuracy_b, ab.ci_low, ab.ci_high,
                        ab.p_value, summary, (self.session.usage - before).to_dict(),
                        time.perf_counter() - started, ab.example_ids, ab.scores_a, ab.scores_b,
                        failures={"search": summary["cell_failures"],
                                  "baseline": cell_failures(base_cells),
                                  "optimized": cell_failures(best_cells)})
        if report.meaningless:
            warnings.warn(f"evo: {report.warning()}", RuntimeWarning, stacklevel=2)
        return report

    def save(self, run_dir: str | Path) -> Path:
        """Write best.json, baseline.json, result.json (summary, candidates, matrix) and
        events.jsonl into ``run_dir``: the run's own directory, a new or empty folder, or one an
        earlier ``save`` wrote. Anything else is refused before anything is written
        (:class:`~evo.errors.UnsafeRunDirError`): another run's directory, whose files would be
        replaced, and any folder evo did not make (:func:`evo.runs.store.check_run_dir`)."""
        run_dir = Path(run_dir)
        elsewhere = self.store is None or run_dir.resolve() != self.store.path.resolve()
        if elsewhere:
            _check_save_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.best.save(run_dir / "best.json")
        self.baseline.save(run_dir / "baseline.json")
        best_id = self.best_id
        def replies(row: int) -> list[str | None]:
            cells = self.matrix.cells
            return [cells[(row, j)].prediction.text if (row, j) in cells else None
                    for j in range(len(self.matrix.examples))]

        payload = {
            "evo_result": 1,  # (a folder of saved files is recognised by it: _saved_by_evo)
            "summary": self.search_summary(),
            "tradeoff": [{"candidate": c.id, "val_score": c.val_score,
                          "prompt_chars": c.program.prompt_chars()} for c in self.tradeoff()],
            "prompt_chars": {c.id: c.program.prompt_chars() for c in self.candidates
                             if c.accepted},
            **self.record,
            # what a report shows per validation example: the text, the gold answer, and the
            # baseline's and the best candidate's replies
            "val_examples": [{"id": ex.id, "inputs": ex.inputs, "outputs": ex.outputs}
                             for ex in self.matrix.examples],
            "best_candidate": best_id,
            "replies": {"baseline": replies(0), "best": replies(best_id)},
        }
        write_json(run_dir / "result.json", payload, indent=1, default=str)
        if elsewhere:  # (a run store wrote its own log as the run went)
            write_text(run_dir / EVENTS_FILE,
                       "".join(json.dumps(event, default=str) + "\n" for event in self.events))
        return run_dir


SAVED_FILES = ("best.json", "baseline.json", "result.json", EVENTS_FILE, "report.json",
               "report.html")  # what Result.save (and `evo run`, `evo report`) write


def _saved_by_evo(folder: Path) -> bool:
    """Whether ``folder`` holds only what an earlier :meth:`Result.save` wrote there (no run
    store: that is a run's directory)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    files = list(folder.iterdir())
    names = {f.name for f in files}
    if "result.json" not in names or not names <= set(SAVED_FILES):
        return False
    if any(f.is_symlink() or not f.is_file() for f in files):
        return False
    try:
        return json.loads((folder / "result.json").read_text()).get("evo_result") == 1
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def _check_save_dir(folder: Path) -> None:
    why = protected_dir(folder)
    if why is None and _saved_by_evo(folder):
        return
    if check_run_dir(folder) is not None:  # (also refuses a protected or foreign folder)
        raise UnsafeRunDirError(f"{folder} holds another run ({RUN_FILE}): saving there would "
                                "replace its files; save into a new folder")


def _bar(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc) if enabled else None


def optimize(program: Program, trainset: Data, valset: Data, *, lm: LM | LMSession,
             optimizer: Optimizer | str | None = None, metric: Metric | None = None,
             reflection_lm: LM | LMSession | None = None, seed: int = 0,
             cache: ResponseCache | str | Path | bool | None = True,
             description: str | None = None, run_dir: str | Path | None = None,
             progress: bool = False, on_event: Callable[[dict], None] | None = None,
             callbacks: Sequence[Callback] = (), cli: dict[str, Any] | None = None) -> Result:
    """Search for a better instruction + demos for ``program``.

    ``trainset`` is the demo pool, ``valset`` decides which candidate wins. Every LM call goes
    through one cached session. The same seed and answers reproduce the same result.

    ``callbacks`` receive typed events as the search goes (:mod:`evo.runs.events`: start, candidate
    generated / evaluated, new best, budget exhausted, complete); ``on_event`` receives the same
    events as JSON-ready dicts; ``progress`` adds a progress bar.

    With ``run_dir`` the run lives in a run store (:mod:`evo.runs.store`): its state, event log and
    LM journal are written as it goes, and calling ``optimize`` again with the same inputs and
    ``run_dir`` resumes it (a killed run continues with no paid call repeated and ends with the
    result an uninterrupted run gives). Other inputs on the same ``run_dir`` raise
    :class:`evo.runs.store.RunMismatchError`. ``cli`` (the command line, from ``evo run``) is kept
    in the store for ``evo run --resume``. The run is known by its data as given, repeats
    included (the search itself sees each example once), so a list of examples names the run it
    named before repeats were dropped; a :class:`~evo.data.Dataset` drops its repeats when it is
    built and is known by the rows it holds. The store stays open for :meth:`Result.report`
    (its test pass is journaled too) and is closed when ``optimize`` raises.

    >>> # result = evo.optimize(program, task.train, task.val, lm=evo.lm.local())
    """
    if isinstance(optimizer, str):
        optimizer = get(optimizer)
    optimizer = optimizer or Evolution()
    train, val = unique_examples(trainset, "trainset"), unique_examples(valset, "valset")
    if not val:
        raise ConfigError("valset is empty: the search needs validation examples to compare "
                          "candidates")
    for name, examples in (("trainset", train), ("valset", val)):
        for row, ex in enumerate(examples, 1):
            try:
                program.check_example(ex, outputs=True)
            except ValueError as exc:
                raise DataError(str(exc), source=name, row=row) from None
    metric = metric or exact_match
    task_session = session_for(lm, cache)
    reflection_session = task_session if reflection_lm is None else session_for(reflection_lm,
                                                                                 cache)
    if description is None:
        description = getattr(trainset, "description", "") or ""
    sessions = [task_session] + ([reflection_session] if reflection_session is not task_session
                                 else [])
    for s in sessions:  # a journal belongs to one run: never carry one into another
        s.journal = None
    store = None
    if run_dir is not None:  # opened first: a mismatch or a busy directory costs no LM call
        # The data as the user gave it, repeats included: a store made before repeats were
        # dropped (when the digest was of the rows as given) still resumes.
        spec = {"program": program.to_json(), "trainset": data_digest(list(trainset)),
                "valset": data_digest(list(valset)), "optimizer": optimizer_spec(optimizer),
                "seed": seed, "model": task_session.model_id,
                "reflection_model": reflection_session.model_id,
                "metric": _name(metric), "description": description}
        store = RunStore(run_dir, spec, cli=cli)
    try:
        return _run(program, train, val, optimizer, metric, task_session, reflection_session,
                    sessions, store, seed=seed, description=description, progress=progress,
                    on_event=on_event, callbacks=callbacks)
    except BaseException:
        if store is not None:  # released, so the run can be resumed at once (here or elsewhere)
            store.detach(*sessions)
            store.close()
        raise


def _run(program: Program, train: list[Example], val: list[Example], optimizer: Optimizer,
         metric: Metric, task_session: LMSession, reflection_session: LMSession,
         sessions: list[LMSession], store: RunStore | None, *, seed: int, description: str,
         progress: bool, on_event: Callable[[dict], None] | None,
         callbacks: Sequence[Callback]) -> Result:
    """:func:`optimize` once its inputs are checked and its store is open."""
    # Fail once, clearly, if the LM cannot be reached at all, before any work is done
    # (not journaled: every sitting checks its LM afresh).
    for s in sessions:
        s.preflight()
    if store is not None:
        store.attach(*sessions)
    before = [s.usage.copy() for s in sessions]
    started = time.perf_counter()
    callbacks = [*callbacks, *([ProgressBar()] if progress else [])]
    live: list[Any] = []  # the search state, once the optimizer has built it

    def spent() -> Usage:
        usage = Usage()
        for s, b in zip(sessions, before, strict=True):
            usage = usage + (s.snapshot() - b)
        return usage

    def sink(event: dict) -> None:
        replayed = store.record(event) if store is not None else False
        dispatch(callbacks, event, replayed=replayed)
        if store is not None and event["event"] in ("candidate_evaluated", "new_best") and live:
            store.checkpoint(live[0], spent().to_dict())
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
            store.checkpoint(live[0], spent().to_dict(), force=True)
        raise
    usage = spent()
    best = state.best
    seed_cand = state.candidates[0]
    failed = cell_failures(state.matrix.cells.values())
    if meaningless(failed):
        warnings.warn(f"evo: most of the search's cells failed ({format_failures(failed)}): "
                      "its validation scores say nothing about the prompts",
                      RuntimeWarning, stacklevel=3)  # (the caller of optimize)
    result = Result(
        best=best.program, baseline=seed_cand.program, best_val=best.val_score,
        baseline_val=seed_cand.val_score, candidates=state.candidates, matrix=state.matrix,
        usage=usage, metric_calls=state.evaluator.metric_calls,
        budget=optimizer.budget.metric_calls, seconds=time.perf_counter() - started,
        stop_reason=state.stop_reason, events=state.events,
        instructions=list(state.archive.instructions),
        instruction_origins=list(state.archive.origins), seed=seed, session=task_session,
        metric=metric, max_tokens=optimizer.max_tokens,
        optimizer=getattr(optimizer, "name", "") or type(optimizer).__name__,
        record=state_record(state), sittings=store.ledger() if store is not None else [],
        best_id=best.id, store=store)
    done = {"event": "complete", "t": time.time(), "iteration": state.iteration,
            "metric_calls": result.metric_calls, "lm_calls": state.evaluator.lm_requests,
            "best": best.id, "best_val": best.val_score,
            "baseline_val": seed_cand.val_score, "stop_reason": state.stop_reason,
            "usage": usage.to_dict(), "cell_failures": failed,
            "best_program": {("evo_ensemble" if isinstance(best.program, EnsembleProgram)
                              else "evo_program"): 1, **best.program.to_json()}}
    state.events.append(done)
    sink(done)
    if store is not None:
        store.checkpoint(state, usage.to_dict(), force=True)
        result.save(store.path)
        store.close_events()
        # The journal stays open for Result.report(): its test pass is journaled too, so a
        # resumed `evo run` replays it. Nothing else is: the sessions leave the journal here.
        store.detach(*sessions)
    return result


def _name(fn: Any) -> str:
    """A stable name for a callable in a run spec (no memory addresses: a spec must read the
    same in the next process)."""
    import functools
    if isinstance(fn, functools.partial):
        return f"partial({_name(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '') or type(fn).__module__}.{name}"


def optimizer_spec(optimizer: Optimizer) -> dict[str, Any]:
    """An optimizer's identity for a run store: its name and every parameter, budget included."""
    if isinstance(optimizer, SearchConfig):
        return {**jsonable(optimizer, name=_name), "budget": dict(optimizer.budget.__dict__)}
    return {"optimizer": _name(type(optimizer)),
            "budget": dict(getattr(getattr(optimizer, "budget", None), "__dict__", {}))}


def _takes(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
               max_tokens: int = 48) -> Evaluation:
    """``program`` (or a saved program file) scored on ``dataset``, with the cells that failed
    (see :func:`evaluate`)."""
    if isinstance(program, str | Path):
        program = load_program(program)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a whole number above 0, got {max_tokens!r}")
    examples = check_testset(program, dataset, what="data")
    session = session_for(lm, cache)
    scores, cells = evaluate_program(program, examples, session, metric or exact_match,
                                     max_tokens=max_tokens)
    return Evaluation(float(scores.mean()), len(examples), cell_failures(cells))


def evaluate(program: Program | EnsembleProgram | str | Path, dataset: Data, *,
             lm: LM | LMSession, metric: Metric | None = None,
             cache: ResponseCache | str | Path | bool | None = True,
             max_tokens: int = 48) -> float:
    """Accuracy (mean metric) of ``program`` on ``dataset``.

    The data is checked first (:func:`check_testset`): an empty set, or gold labels the program
    does not have, is a :class:`~evo.errors.ConfigError` before any LM call, and a repeated
    example is scored once (with a warning). When most cells fail (LM, parser or metric
    errors) a RuntimeWarning says so: the accuracy then means nothing. :func:`evaluation`
    returns the failed cells too."""
    result = evaluation(program, dataset, lm=lm, metric=metric, cache=cache,
                        max_tokens=max_tokens)
    if result.meaningless:
        warnings.warn(f"evo: most cells failed ({format_failures(result.failures)}): the "
                      "accuracy says nothing about the program", RuntimeWarning, stacklevel=2)
    return result.accuracy
