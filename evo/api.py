"""The one-call API: ``evo.optimize(program, train, val, lm=...)`` and what it returns."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evo._io import write_json
from evo.data import DataError, Dataset, Example
from evo.engine import Candidate, Evolution, Optimizer
from evo.ensemble import EnsembleProgram
from evo.evaluate import ScoreMatrix, evaluate_program
from evo.kernels.moo import nondominated_ranks
from evo.kernels.stats import paired_bootstrap_ci, paired_permutation_test
from evo.lm.base import LM
from evo.lm.cache import ResponseCache, default_cache_path
from evo.lm.session import LMSession, Usage
from evo.metrics import Metric, exact_match
from evo.program import Program

Data = Dataset | Sequence[Example]


def session_for(lm: LM | LMSession, cache: ResponseCache | str | Path | None | bool = True
                ) -> LMSession:
    """Wrap a backend in a session with the persistent response cache (``True``: the default
    user cache; a path: that file; ``False``/``None``: no cache)."""
    if isinstance(lm, LMSession):
        return lm
    if cache is True:
        cache = ResponseCache(default_cache_path())
    elif isinstance(cache, str | Path):
        cache = ResponseCache(cache)
    # (an empty ResponseCache is falsy: test for the sentinels, not truthiness)
    return LMSession(lm, cache=None if cache is False or cache is None else cache)


@dataclass
class Report:
    """Baseline vs optimized program on held-out data, with what the search cost."""

    n: int
    baseline: float
    optimized: float
    ci_low: float
    ci_high: float
    p_value: float  # paired permutation test of the difference (two-sided)
    search: dict[str, Any]
    test_usage: dict[str, Any]
    test_seconds: float

    @property
    def delta(self) -> float:
        return self.optimized - self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "delta": self.delta}

    def __str__(self) -> str:
        s = self.search
        rows = [
            ("held-out examples", f"{self.n}"),
            ("baseline accuracy", f"{self.baseline:.3f}"),
            ("optimized accuracy", f"{self.optimized:.3f}"),
            ("difference (95% paired bootstrap CI)",
             f"{self.delta:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"),
            ("paired permutation test (two-sided)",
             "p < 0.0001" if self.p_value <= 1 / 10_001 else f"p = {self.p_value:.4f}"),
            ("validation: baseline -> best", f"{s['baseline_val']:.3f} -> {s['best_val']:.3f}"),
            ("search metric calls / budget", f"{s['metric_calls']} / {s['budget']}"),
            ("search LM calls (paid / cache hits)",
             f"{s['usage']['calls']} / {s['usage']['cache_hits']} "
             f"({s['usage']['cache_hit_rate']:.0%} hit rate)"),
            ("search tokens (prompt / completion)",
             f"{s['usage']['prompt_tokens']} / {s['usage']['completion_tokens']}"),
            ("prompt tokens reused from the KV cache",
             f"{s['usage']['reused_prompt_tokens']} "
             f"({s['usage']['reused_share']:.0%})"),
            ("search wall time", f"{s['seconds']:.0f} s ({s['lm_share']:.0%} in the LM, "
                                 f"{1 - s['lm_share']:.0%} in evo's own code)"),
            ("test LM calls (paid / cache hits)",
             f"{self.test_usage['calls']} / {self.test_usage['cache_hits']}"),
            ("test wall time", f"{self.test_seconds:.0f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


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
        return {"baseline_val": self.baseline_val, "best_val": self.best_val,
                "metric_calls": self.metric_calls, "budget": self.budget,
                "usage": self.usage.to_dict(), "seconds": self.seconds,
                "lm_share": self.usage.lm_share(self.seconds),
                "candidates": len(self.candidates),
                "accepted": sum(c.accepted for c in self.candidates),
                # cells scored 0 because the LM call or the metric failed (see result.json)
                "cell_errors": sum(cell.error is not None for cell in self.matrix.cells.values()),
                "stop_reason": self.stop_reason, "seed": self.seed, "optimizer": self.optimizer}

    def report(self, testset: Data, *, progress: bool = False) -> Report:
        """Score baseline and best on held-out examples (outside the search budget)."""
        examples = list(testset)
        before = self.session.usage.copy()
        started = time.perf_counter()
        members = len(self.best.members) if isinstance(self.best, EnsembleProgram) else 1
        bar = _bar((1 + members) * len(examples), "test", progress)
        base, _ = evaluate_program(self.baseline, examples, self.session, self.metric,
                                   max_tokens=self.max_tokens, progress=bar.update if bar else None)
        best, _ = evaluate_program(self.best, examples, self.session, self.metric,
                                   max_tokens=self.max_tokens, progress=bar.update if bar else None)
        if bar:
            bar.close()
        low, high = paired_bootstrap_ci(base, best, seed=self.seed)
        p_value = paired_permutation_test(base, best, seed=self.seed)
        return Report(len(examples), float(base.mean()), float(best.mean()), low, high, p_value,
                      self.search_summary(), (self.session.usage - before).to_dict(),
                      time.perf_counter() - started)

    def save(self, run_dir: str | Path) -> Path:
        """Write best.json, baseline.json, result.json (summary, candidates, matrix) and
        events.jsonl into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.best.save(run_dir / "best.json")
        self.baseline.save(run_dir / "baseline.json")
        payload = {
            "summary": self.search_summary(),
            "instructions": [{"text": text, "origin": origin} for text, origin
                             in zip(self.instructions, self.instruction_origins, strict=True)],
            "candidates": [{"id": c.id, "genome": c.genome, "parents": list(c.parents),
                            "op": c.op, "iteration": c.iteration, "accepted": c.accepted,
                            "val_score": None if np.isnan(c.val_score) else c.val_score,
                            "note": c.note} for c in self.candidates],
            "tradeoff": [{"candidate": c.id, "val_score": c.val_score,
                          "prompt_chars": c.program.prompt_chars()} for c in self.tradeoff()],
            "val_example_ids": [ex.id for ex in self.matrix.examples],
            "cell_errors": [{"candidate": row, "example": self.matrix.examples[col].id,
                             "error": cell.error}
                            for (row, col), cell in sorted(self.matrix.cells.items())
                            if cell.error is not None],
            "scores": [[None if np.isnan(v) else v for v in row]
                       for row in self.matrix.scores.tolist()],
        }
        write_json(run_dir / "result.json", payload, indent=1, default=str)
        with open(run_dir / "events.jsonl", "w") as fh:
            for event in self.events:
                fh.write(json.dumps(event, default=str) + "\n")
        return run_dir


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    # In a log file (CI, nohup) a bar redrawn 10 times a second floods it: redraw every 10 s.
    quiet_log = not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="call", file=sys.stderr, dynamic_ncols=True,
                mininterval=10 if quiet_log else 0.1)


def optimize(program: Program, trainset: Data, valset: Data, *, lm: LM | LMSession,
             optimizer: Optimizer | str | None = None, metric: Metric | None = None,
             reflection_lm: LM | LMSession | None = None, seed: int = 0,
             cache: ResponseCache | str | Path | bool | None = True,
             description: str | None = None, run_dir: str | Path | None = None,
             progress: bool = False, on_event: Callable[[dict], None] | None = None) -> Result:
    """Search for a better instruction + demos for ``program``.

    ``trainset`` is the demo pool, ``valset`` decides which candidate wins. Every LM call goes
    through one cached session, so rerunning a killed search replays its paid calls from the
    cache. The same seed and cache reproduce the same result.

    >>> # result = evo.optimize(program, task.train, task.val, lm=evo.lm.local())
    """
    if isinstance(optimizer, str):
        from evo.optimizers import get
        optimizer = get(optimizer)
    optimizer = optimizer or Evolution()
    train, val = list(trainset), list(valset)
    if not val:
        raise ValueError("valset is empty: the search needs validation examples to compare "
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
    # Fail once, clearly, if the LM cannot be reached at all, before any work is done.
    task_session.preflight()
    if reflection_session is not task_session:
        reflection_session.preflight()
    if description is None:
        description = getattr(trainset, "description", "") or ""

    sessions = [task_session] + ([reflection_session] if reflection_session is not task_session
                                 else [])
    before = [s.usage.copy() for s in sessions]
    started = time.perf_counter()
    bar = _bar(optimizer.budget.metric_calls, "search", progress)
    events: list[dict] = []

    def sink(event: dict) -> None:
        events.append(event)
        if bar is not None and event["event"] == "new_best":
            bar.set_postfix(best_val=f"{event['val_score']:.3f}")
        if on_event is not None:
            on_event(event)

    try:
        state = optimizer.search(program, train, val, task_session=task_session,
                                 reflection_session=reflection_session, metric=metric, seed=seed,
                                 description=description, on_event=sink,
                                 on_cell=(lambda _r, _c: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    usage = Usage()
    for s, b in zip(sessions, before, strict=True):
        usage = usage + (s.usage - b)
    best = state.best
    seed_cand = state.candidates[0]
    result = Result(
        best=best.program, baseline=seed_cand.program, best_val=best.val_score,
        baseline_val=seed_cand.val_score, candidates=state.candidates, matrix=state.matrix,
        usage=usage, metric_calls=state.evaluator.metric_calls,
        budget=optimizer.budget.metric_calls, seconds=time.perf_counter() - started,
        stop_reason=state.stop_reason, events=state.events,
        instructions=list(state.archive.instructions),
        instruction_origins=list(state.archive.origins), seed=seed, session=task_session,
        metric=metric, max_tokens=optimizer.max_tokens,
        optimizer=getattr(optimizer, "name", "") or type(optimizer).__name__)
    if run_dir is not None:
        result.save(run_dir)
    return result


def evaluate(program: Program | EnsembleProgram, dataset: Data, *, lm: LM | LMSession,
             metric: Metric | None = None, cache: ResponseCache | str | Path | bool | None = True,
             max_tokens: int = 48) -> float:
    """Accuracy (mean metric) of ``program`` on ``dataset``."""
    session = session_for(lm, cache)
    scores, _ = evaluate_program(program, list(dataset), session, metric or exact_match,
                                 max_tokens=max_tokens)
    return float(scores.mean()) if len(scores) else float("nan")
