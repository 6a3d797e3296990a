"""Evaluation: the score matrix, the metric-call budget and the evaluator.

The score matrix (candidates x examples, NaN = not evaluated) is the engine's one table of truth:
every selection and acceptance decision reads it, and a (candidate, example) cell is filled at
most once, so no pair is ever paid for twice. The evaluator runs one candidate's missing cells
back to back (same prompt prefix, so a local backend reuses its KV cache).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evo.data import Example
from evo.ensemble import EnsembleProgram
from evo.kernels.matrix import row_stats
from evo.lm.base import LMError, LMRequest, LMUnavailableError
from evo.lm.session import LMSession
from evo.metrics import Metric, Score, as_score
from evo.program import Prediction, Program


class BudgetExhausted(Exception):
    """The metric-call budget cannot cover the requested evaluations."""


@dataclass
class Budget:
    """Limits of a search. ``metric_calls`` counts (candidate, example) evaluations, as GEPA and
    DSPy do; ``lm_calls`` (optional) caps every LM request, reflection included. Both count logical
    requests (a cache hit counts), so a resumed run makes the same decisions as the original."""

    metric_calls: int = 300
    lm_calls: int | None = None

    def __post_init__(self) -> None:
        if self.metric_calls <= 0:
            raise ValueError(f"Budget.metric_calls must be positive, got {self.metric_calls}")
        if self.lm_calls is not None and self.lm_calls <= 0:
            raise ValueError(f"Budget.lm_calls must be positive, got {self.lm_calls}")


@dataclass(frozen=True)
class Cell:
    """What one evaluation produced: the parsed reply and the metric's feedback."""

    score: float
    prediction: Prediction
    feedback: str
    error: str | None = None  # LM or metric failure, if any


class ScoreMatrix:
    """Scores of candidates (rows) on a fixed list of examples (columns); NaN = not evaluated."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = tuple(examples)
        self.column = {ex.id: j for j, ex in enumerate(self.examples)}
        if len(self.column) != len(self.examples):
            raise ValueError("score matrix examples must have distinct ids")
        self._scores = np.full((8, len(self.examples)), np.nan)
        self.n_rows = 0
        self.cells: dict[tuple[int, int], Cell] = {}

    @property
    def scores(self) -> np.ndarray:
        return self._scores[: self.n_rows]

    def add_row(self) -> int:
        if self.n_rows == len(self._scores):
            grown = np.full((2 * len(self._scores), len(self.examples)), np.nan)
            grown[: self.n_rows] = self._scores[: self.n_rows]
            self._scores = grown
        self.n_rows += 1
        return self.n_rows - 1

    def set(self, row: int, col: int, cell: Cell) -> None:
        self._scores[row, col] = cell.score
        self.cells[(row, col)] = cell

    def missing(self, row: int, cols: Sequence[int]) -> list[int]:
        return [c for c in cols if np.isnan(self._scores[row, c])]

    def row_mean(self, row: int, cols: Sequence[int] | None = None) -> float:
        """Mean of the row's observed cells (at ``cols``); NaN when none is observed."""
        index = None if cols is None else np.asarray(list(cols), dtype=np.int64)
        return float(row_stats(self._scores[row:row + 1], index).mean[0])

    def coverage(self, row: int) -> float:
        return float(row_stats(self._scores[row:row + 1]).coverage[0])


def failure_minibatch(row: np.ndarray, size: int, rng: random.Random) -> list[int]:
    """Columns for a minibatch acceptance test against a parent whose scores are ``row``: half
    the parent's failures (cells below 1.0, where a child can show it is better), the rest at
    random; sorted."""
    n = len(row)
    size = min(size, n)
    failures = [c for c in range(n) if row[c] < 1.0]
    batch = rng.sample(failures, min(len(failures), size // 2 or 1)) if failures else []
    rest = [c for c in range(n) if c not in batch]
    batch += rng.sample(rest, size - len(batch))
    return sorted(batch)


@dataclass
class Evaluator:
    """Fills score-matrix cells through one LM session, under one budget.

    An LM error (after the session's retries) or a metric exception is recorded in the cell and
    scored 0: a run never dies on one bad cell. Only an unreachable LM stops it.
    """

    session: LMSession
    metric: Metric
    budget: Budget
    max_tokens: int = 64
    metric_calls: int = 0
    on_cell: Callable[[int, Cell], None] | None = None
    # Every session whose requests count against ``budget.lm_calls`` (task and reflection).
    lm_sessions: tuple[LMSession, ...] = ()
    score_chunk: int = 8  # replies scored together (batch metrics; progress granularity)

    def __post_init__(self) -> None:
        self.lm_sessions = tuple(dict.fromkeys(self.lm_sessions or (self.session,)))
        self._lm_start = self._lm_requests_total()

    def _lm_requests_total(self) -> int:
        return sum(s.usage.requests for s in self.lm_sessions)

    @property
    def lm_requests(self) -> int:
        """LM requests (cache hits included) made since this evaluator was created."""
        return self._lm_requests_total() - self._lm_start

    def remaining(self) -> int:
        left = self.budget.metric_calls - self.metric_calls
        if self.budget.lm_calls is not None:
            left = min(left, self.budget.lm_calls - self.lm_requests)
        return max(0, left)

    def evaluate(self, program: Program, matrix: ScoreMatrix, row: int, cols: Sequence[int],
                 *, charge: bool = True) -> np.ndarray:
        """Fill the missing cells of ``row`` at ``cols`` and return the row's scores there.

        With ``charge`` the cells count against the budget; if they do not all fit, nothing is
        evaluated and :class:`BudgetExhausted` is raised, so a candidate is never half-judged.
        Replies are scored in chunks through the metric's ``batch`` method when it has one
        (the vectorized kernels of :mod:`evo.kernels.text`), else one by one.
        """
        todo = matrix.missing(row, cols)
        if charge and len(todo) > self.remaining():
            raise BudgetExhausted(f"{len(todo)} evaluations needed, {self.remaining()} left")
        program.prepare([matrix.examples[c] for c in todo])  # KNN demos: one batched search
        for start in range(0, len(todo), self.score_chunk):
            chunk = todo[start:start + self.score_chunk]
            examples = [matrix.examples[c] for c in chunk]
            replies = [self._predict(program, ex) for ex in examples]
            for col, cell in zip(chunk, self.score(examples, replies), strict=True):
                matrix.set(row, col, cell)
                if charge:
                    self.metric_calls += 1
                if self.on_cell is not None:
                    self.on_cell(row, cell)
        return matrix.scores[row, list(cols)]

    def _predict(self, program: Program, example: Example) -> Prediction | Cell:
        """The parsed reply, or the failed cell when the LM or the parser failed."""
        request = LMRequest(program.messages(example), max_tokens=self.max_tokens, purpose="task")
        try:
            response = self.session.complete(request)
        except LMUnavailableError:
            raise
        except LMError as exc:
            message = f"LM error: {exc}"
            return Cell(0.0, Prediction("", None, message), message, error=message)
        try:
            return program.parse(response.text or "")
        except Exception as exc:  # a parser bug must not end a run: record it on the cell
            message = f"parse failed: {type(exc).__name__}: {exc}"
            return Cell(0.0, Prediction(response.text or "", None, message), message,
                        error=message)

    def score(self, examples: Sequence[Example], replies: Sequence[Prediction | Cell]
              ) -> list[Cell]:
        """Cells for parsed replies (a failed :class:`Cell` passes through): the metric's
        ``batch`` when it has one, else one by one; a metric exception is recorded, scored 0."""
        cells: list[Cell | None] = [r if isinstance(r, Cell) else None for r in replies]
        todo = [i for i, c in enumerate(cells) if c is None]
        batch = getattr(self.metric, "batch", None)
        if batch is not None and len(todo) > 1:
            try:
                scores = list(batch([examples[i] for i in todo], [replies[i] for i in todo]))
                if len(scores) != len(todo):
                    raise ValueError(f"batch returned {len(scores)} scores for {len(todo)} "
                                     "predictions")
                for i, result in zip(todo, scores, strict=True):
                    score = as_score(result)
                    cells[i] = Cell(score.value, replies[i], score.feedback)
                todo = []
            except Exception:  # noqa: BLE001 - fall back to the per-cell path, which records it
                pass
        for i in todo:
            prediction = replies[i]
            try:
                score = as_score(self.metric(examples[i], prediction))
            except Exception as exc:  # a user metric's bug (or bad return value) is recorded
                message = f"metric raised {type(exc).__name__}: {exc}"
                cells[i] = Cell(0.0, prediction, message, error=message)
                continue
            cells[i] = Cell(score.value, prediction, score.feedback)
        return cells  # type: ignore[return-value]


def evaluate_program(program: Program | EnsembleProgram, examples: Sequence[Example],
                     session: LMSession, metric: Metric, *, max_tokens: int = 64,
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[Cell]]:
    """Score one program (or a voting ensemble: each member, then the vote) on examples outside
    any search budget (held-out test, baselines)."""
    if isinstance(program, EnsembleProgram):
        runs = [evaluate_program(m, examples, session, metric, max_tokens=max_tokens,
                                 progress=progress)[1] for m in program.members]
        evaluator = Evaluator(session, metric, Budget(metric_calls=1))
        cells = evaluator.score(examples, [
            program.vote_on([run[j].prediction for run in runs]) for j in range(len(examples))])
        return np.array([c.score for c in cells], dtype=np.float64), cells
    matrix = ScoreMatrix(examples)
    row = matrix.add_row()
    evaluator = Evaluator(session, metric, Budget(metric_calls=max(1, len(examples))),
                          max_tokens=max_tokens,
                          on_cell=(lambda _r, _c: progress(1)) if progress else None)
    scores = evaluator.evaluate(program, matrix, row, range(len(examples)), charge=False)
    return scores, [matrix.cells[(row, j)] for j in range(len(examples))]


__all__ = ["Budget", "BudgetExhausted", "Cell", "Evaluator", "Score", "ScoreMatrix",
           "evaluate_program"]
