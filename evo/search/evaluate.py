"""Evaluation: the score matrix, the metric-call budget and the evaluator.

The score matrix (candidates x examples, NaN = not evaluated) is the engine's one table of truth:
every selection and acceptance decision reads it, and a (candidate, example) cell is filled at
most once, so no pair is ever paid for twice. The evaluator sends one candidate's missing cells
together (same prompt prefix: a local backend reuses its KV cache, a server its prefix cache):
one after the other for a backend that serves one call at a time, else up to the session's
``max_concurrency`` at once. Either way the cells are paid for (reserved against the budget)
before any is sent and recorded in column order, so a search takes the same decisions at any
concurrency.

Label scoring (a program with ``answer_mode="rank"``) asks the backend for the log-probability
of each label instead of a reply: the cell's prediction is the most probable label and its
:attr:`Cell.dense` score the model's probability of the gold label. With ``calibrate`` the label
bias the prompt shows on content-free inputs is divided out first (contextual calibration).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from evo.data import DataError, Dataset, Example, distinct_examples
from evo.errors import ConfigError
from evo.kernels.matrix import row_stats
from evo.lm.base import (
    LMError,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    LMUnavailableError,
    scores_choices,
)
from evo.lm.router import ModelChoice
from evo.lm.session import LMSession
from evo.metrics import Metric, Score, as_score, metric_name
from evo.program import CONTENT_FREE_INPUTS, Prediction, Program
from evo.program.ensemble import EnsembleProgram

# A reasoning program (``reasoning=True``) thinks before it answers: its replies may use at least
# this many tokens, whatever the evaluator's ``max_tokens`` (a direct answer needs few).
REASONING_MAX_TOKENS = 256


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
        for name in ("metric_calls", "lm_calls"):
            value = getattr(self, name)
            if name == "lm_calls" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ConfigError(f"Budget.{name} must be a whole number above 0, got "
                                  f"{value!r}")


@dataclass(frozen=True)
class Cell:
    """What one evaluation produced: the parsed reply and the metric's feedback.

    ``error`` is set when the cell failed (scored 0): the LM call, the parser or the metric;
    :attr:`kind` says which (:func:`error_kind`)."""

    score: float
    prediction: Prediction
    feedback: str
    error: str | None = None  # LM, parser or metric failure, if any
    # The model's probability of the gold answer (label scoring, ``answer_mode="rank"``): a
    # far less noisy signal per example than the 0/1 score, used by racing and selection.
    # None when the backend gave no log-probabilities (generation).
    dense: float | None = None
    # What the cell's LM call used (0 when none answered): a candidate's cost
    # (:func:`cells_cost`). A resumed run reads them back from its journal.
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def kind(self) -> str | None:
        """``None`` for a cell that did not fail, else :func:`error_kind` of its error."""
        return None if self.error is None else error_kind(self.error)


# Cell error messages start with their kind, and an LM error with its reason in brackets
# ("LM error: [throttled] ..."), so an error read back from a checkpoint (text only) is
# classified the same as a live one, from what raised it rather than from words in the message.
_LM_PREFIX, _PARSE_PREFIX, _METRIC_PREFIX = "LM error: ", "parse failed: ", "metric "
_LM_TAGGED = re.compile(r"LM error: \[([a-z ]+)\] ")
# Untagged messages (written before reasons were recorded): words that say the reason, checked
# in this order; numbers as whole words, so a port or a token count never reads as a status.
_LM_WORDS = (
    ("request error", re.compile(r"\(request error\)|context (window|length)")),
    ("empty reply", re.compile(r"empty reply|no choices")),
    ("throttled", re.compile(r"\b429\b|rate.?limit|too many requests")),
    ("timeout", re.compile(r"timed out|\btimeout\b")),
    ("bad reply", re.compile(r"not json")),
    ("server error", re.compile(r"\bhttp 5\d\d\b|server error")),
)


def lm_cell_error(exc: LMError) -> str:
    """The cell error of a failed LM call, tagged with its reason when it has one:
    ``"LM error [timeout]: ..."``, ``"LM error [request error]: ..."``."""
    reason = (exc.reason if isinstance(exc, LMTransientError)
              else "request error" if isinstance(exc, LMRequestError) else None)
    return f"{_LM_PREFIX}[{reason}] {exc}" if reason else f"{_LM_PREFIX}{exc}"


def error_kind(error: str) -> str:
    """The kind of a cell error message: ``"metric"``, ``"parse"``, or ``"lm"`` with the reason
    when it is known (``"lm: timeout"``, ``"lm: throttled"``, ``"lm: server error"``,
    ``"lm: dropped connection"``, ``"lm: bad reply"``, ``"lm: empty reply"``,
    ``"lm: request error"``).

    >>> error_kind("LM error: [timeout] m at http://127.0.0.1:4290/v1: timed out")
    'lm: timeout'
    >>> error_kind("metric 'f' returned None: a metric must return a number")
    'metric'
    """
    if error.startswith(_METRIC_PREFIX):
        return "metric"
    if error.startswith(_PARSE_PREFIX):
        return "parse"
    tagged = _LM_TAGGED.match(error)
    if tagged:
        return "lm" if tagged.group(1) == "transient" else f"lm: {tagged.group(1)}"
    low = error.lower()
    return next((f"lm: {sub}" for sub, words in _LM_WORDS if words.search(low)), "lm")


# Above this share of failed cells (LM, parser or metric errors) a run's scores mean nothing.
MEANINGLESS_SHARE = 0.5


def meaningless(*summaries: dict[str, Any]) -> bool:
    """Whether more than :data:`MEANINGLESS_SHARE` of the cells of any of ``summaries``
    (:func:`cell_failures`) failed: its scores then say nothing about the prompts."""
    return any(s.get("failed_share", 0.0) > MEANINGLESS_SHARE for s in summaries)


def cell_failures(cells: Iterable[Cell]) -> dict[str, Any]:
    """How many of ``cells`` failed, per kind: ``{"cells": n, "failed": k, "failed_share":
    k / n, "by_kind": {"metric": ..., "lm: timeout": ...}, "unparseable": u}``. An unparseable
    reply is the program's failure at the task, not a failed cell: counted apart."""
    cells = list(cells)
    unparseable = sum(c.error is None and not c.prediction.ok for c in cells)
    return {**failures_from_errors(len(cells), (c.error for c in cells if c.error is not None)),
            "unparseable": unparseable}


def failures_from_errors(n_cells: int, errors: Iterable[str]) -> dict[str, Any]:
    """:func:`cell_failures` of ``n_cells`` cells from their error messages alone (a
    checkpoint's ``cell_errors``), without the ``unparseable`` count."""
    kinds = Counter(error_kind(str(e)) for e in errors)
    failed = sum(kinds.values())
    return {"cells": n_cells, "failed": failed,
            "failed_share": failed / n_cells if n_cells else 0.0,
            "by_kind": dict(sorted(kinds.items()))}


def format_failures(summary: dict[str, Any]) -> str:
    """``"3 of 40 (8%): lm: timeout 2, metric 1"``, or ``"none of 40"``."""
    n, k = summary.get("cells", 0), summary.get("failed", 0)
    if not k:
        text = f"none of {n}"
    else:
        kinds = ", ".join(f"{kind} {count}" for kind, count in summary["by_kind"].items())
        text = f"{k} of {n} ({k / n:.0%}): {kinds}" if n else f"{k}: {kinds}"
    if summary.get("unparseable"):
        text += f"; {summary['unparseable']} unparseable repl" + (
            "y" if summary["unparseable"] == 1 else "ies")
    return text


def unique_examples(examples: Iterable[Example], what: str = "examples") -> list[Example]:
    """``examples`` with each example once, in order (:func:`evo.data.distinct_examples`: a
    repeated row is dropped with one warning naming ``what``; two different examples under one
    id are a :class:`~evo.data.DataError`). Every example is scored once, never with its
    multiplicity."""
    return list(distinct_examples(examples, what))


class ScoreMatrix:
    """Scores of candidates (rows) on a fixed list of examples (columns); NaN = not evaluated."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = tuple(examples)
        self.column = {ex.id: j for j, ex in enumerate(self.examples)}
        if len(self.column) != len(self.examples):
            raise ValueError("score matrix examples must have distinct ids")
        self._scores = np.full((8, len(self.examples)), np.nan)
        # the cells' dense scores (Cell.dense), NaN where a cell has none or is not evaluated
        self._dense = np.full((8, len(self.examples)), np.nan)
        self.n_rows = 0
        self.cells: dict[tuple[int, int], Cell] = {}

    @property
    def scores(self) -> np.ndarray:
        return self._scores[: self.n_rows]

    @property
    def dense(self) -> np.ndarray:
        """The cells' dense scores (:attr:`Cell.dense`): NaN where a cell has none."""
        return self._dense[: self.n_rows]

    def add_row(self) -> int:
        if self.n_rows == len(self._scores):
            grown = np.full((2 * len(self._scores), len(self.examples)), np.nan)
            grown[: self.n_rows] = self._scores[: self.n_rows]
            self._scores = grown
            dense = np.full(grown.shape, np.nan)
            dense[: self.n_rows] = self._dense[: self.n_rows]
            self._dense = dense
        self.n_rows += 1
        return self.n_rows - 1

    def set(self, row: int, col: int, cell: Cell) -> None:
        self._scores[row, col] = cell.score
        self._dense[row, col] = np.nan if cell.dense is None else cell.dense
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


@runtime_checkable
class RunsItself(Protocol):
    """The Evaluator's extension point for programs that are not one prompt: a program with a
    ``run`` method (e.g. a ``dspy.Module`` adapter,
    :class:`evo.integrations.dspy.module.ModuleProgram`) is run by it instead of
    ``messages`` / ``parse``. Every LM call it makes must go through ``session`` (the cache,
    the run's journal and the budget's LM-call count then apply, so a killed run resumes
    without repeating a paid call), with replies of at most ``max_tokens``. It returns the
    prediction (outputs None when it has no usable reply) or a failed :class:`Cell`; an
    :class:`~evo.lm.base.LMError` or another exception it raises fails the cell."""

    def run(self, example: Example, session: LMSession, max_tokens: int
            ) -> Prediction | Cell: ...


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
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    # contextual calibration: each prompt prefix's label bias, measured once per evaluator
    _biases: dict[tuple[LMRequest, ...], np.ndarray] = field(
        default_factory=dict, init=False, repr=False)

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
        return self.evaluate_many([(program, matrix, row, cols)], charge=charge)[0]

    def evaluate_many(self, jobs: Sequence[tuple[Program, ScoreMatrix, int, Sequence[int]]], *,
                      charge: bool = True) -> list[np.ndarray]:
        """:meth:`evaluate` for several ``(program, matrix, row, cols)`` jobs (the children of
        one round of parallel proposals): every missing cell is reserved against the budget
        first (all fit, or nothing is evaluated), all their calls go out together, and the
        cells are recorded job by job, in column order, as :meth:`evaluate` would.

        A label-scoring program (``answer_mode="rank"``) needs a backend that scores choices
        (else one :class:`~evo.errors.ConfigError`, before any call); with ``calibrate`` its
        prefix's label bias is measured first, in this thread, once per evaluator (LM calls of
        purpose ``"calibration"``, not metric calls), so every concurrency sees the same bias."""
        for program, *_ in jobs:
            self.check_answer_mode(program)
        todos = self.missing(jobs)
        need = sum(map(len, todos))
        calibrations = self._calibrations(jobs, todos)
        if charge and need > self.remaining():
            raise BudgetExhausted(f"{need} evaluations needed, {self.remaining()} left")
        extra = len(CONTENT_FREE_INPUTS) * sum(key not in self._biases for key in calibrations)
        if charge and extra and self.budget.lm_calls is not None \
                and need + extra > self.budget.lm_calls - self.lm_requests:
            raise BudgetExhausted(f"{need} evaluations and {extra} calibration calls needed, "
                                  f"{self.budget.lm_calls - self.lm_requests} LM calls left")
        biases = {key: self._bias(key) for key in calibrations}
        streams, sent = [], []
        try:
            for (program, matrix, _, _), todo in zip(jobs, todos, strict=True):
                examples = [matrix.examples[c] for c in todo]
                program.prepare(examples)  # KNN demos: one batched search
                bias = biases[_calibration_key(program, self.max_tokens)] if todo and getattr(
                    program, "calibrate", False) else None
                replies, futures = self._replies(program, examples, bias)
                streams.append(replies)
                sent += futures
            for (_, matrix, row, _), todo, replies in zip(jobs, todos, streams, strict=True):
                for start in range(0, len(todo), self.score_chunk):
                    chunk = todo[start:start + self.score_chunk]
                    examples = [matrix.examples[c] for c in chunk]
                    got = [next(replies) for _ in chunk]
                    carried = [g if isinstance(g, _Ranked) else None for g in got]
                    got = [g.prediction if isinstance(g, _Ranked) else g for g in got]
                    cells = self.score(examples, got)
                    for col, cell, r in zip(chunk, cells, carried, strict=True):
                        if r is not None:
                            cell = r.onto(cell)
                        matrix.set(row, col, cell)
                        if charge:
                            self.metric_calls += 1
                        if self.on_cell is not None:
                            self.on_cell(row, cell)
        finally:  # stopped early (an unreachable LM, Ctrl-C): the calls not yet sent are not
            for future in sent:
                future.cancel()
        return [matrix.scores[row, list(cols)] for _, matrix, row, cols in jobs]

    @staticmethod
    def missing(jobs: Sequence[tuple[Program, ScoreMatrix, int, Sequence[int]]]
                ) -> list[list[int]]:
        """The cells each job must fill: its row's missing columns, each (matrix, row, column)
        once across the jobs (two jobs of one round may share a parent's cell)."""
        claimed: set[tuple[int, int, int]] = set()
        todos = []
        for _, matrix, row, cols in jobs:
            todo = [c for c in matrix.missing(row, cols) if (id(matrix), row, c) not in claimed]
            todo = list(dict.fromkeys(todo))
            claimed.update((id(matrix), row, c) for c in todo)
            todos.append(todo)
        return todos

    def check_answer_mode(self, program: object) -> None:
        """Raise :class:`~evo.errors.ConfigError` when ``program`` answers by label scoring
        (``answer_mode="rank"``) and this evaluator's LM cannot score choices: said once, before
        anything is paid, instead of a failed cell per example."""
        if getattr(program, "answer_mode", "generate") != "rank" \
                or scores_choices(self.session.lm):
            return
        setting = "answer_mode='rank'" + (", calibrate=True" if getattr(
            program, "calibrate", False) else "")
        raise ConfigError(
            f"the program answers by label scoring ({setting}), but the task LM "
            f"{self.session.model_id!r} ({type(self.session.lm).__name__}) cannot score "
            "choices (it gives no log-probabilities): use answer_mode='generate', or a backend "
            "that scores choices (scores_choices = True, e.g. a local GGUF model)")

    def predict(self, program: Program, examples: Sequence[Example]
                ) -> list[Prediction | Cell]:
        """``program``'s answers to ``examples``, got exactly as :meth:`evaluate` gets them (its
        KNN demos, label scoring with its calibration, a reasoning program's reply length),
        but with no metric, score matrix or budget: for answering new inputs. Each is the
        parsed :class:`Prediction`, or the failed :class:`Cell` when the LM call or the parser
        failed (its :attr:`Cell.kind` says which). A label-scoring program on a backend that
        cannot score choices is one :class:`~evo.errors.ConfigError` before any call."""
        self.check_answer_mode(program)
        examples = list(examples)
        if not examples:
            return []
        program.prepare(examples)
        bias = (self._bias(_calibration_key(program, self.max_tokens))
                if getattr(program, "calibrate", False) else None)
        replies, futures = self._replies(program, examples, bias)
        try:
            return [r.prediction if isinstance(r, _Ranked) else r for r in replies]
        finally:
            for future in futures:
                future.cancel()

    def _calibrations(self, jobs: Sequence[tuple[Program, ScoreMatrix, int, Sequence[int]]],
                      todos: Sequence[Sequence[int]]) -> list[tuple[LMRequest, ...]]:
        """The calibration keys (:func:`_calibration_key`) of the jobs that have cells to fill
        and calibrate, each once, in job order."""
        keys = [_calibration_key(program, self.max_tokens)
                for (program, *_), todo in zip(jobs, todos, strict=True)
                if todo and getattr(program, "calibrate", False)]
        return list(dict.fromkeys(keys))

    def _bias(self, key: tuple[LMRequest, ...]) -> np.ndarray | Cell:
        """The label bias ``p_cf`` of one prompt prefix (contextual calibration, Zhao et al.
        2021): its label distribution on each content-free input, averaged. Measured once per
        evaluator (and journaled like any request, so a resumed run replays it); a failed
        calibration call fails the program's cells (it is asked again next time)."""
        if key in self._biases:
            return self._biases[key]
        distributions = []
        for request in key:
            response = self._ask(request, note=" (calibration on a content-free input)")
            if isinstance(response, Cell):
                return response
            logprobs = self._choice_logprobs(response.choice_logprobs, len(request.choices))
            if isinstance(logprobs, str):
                return _failed(Prediction(response.text, None, logprobs),
                               logprobs + " (calibration on a content-free input)")
            distributions.append(label_probabilities(logprobs))
        bias = self._biases[key] = np.mean(distributions, axis=0)
        return bias

    def _choice_logprobs(self, logprobs: object, n: int) -> np.ndarray | str:
        """A label-scoring reply's log-probabilities, or the cell error when it has none
        usable (one per label, not NaN, at least one finite)."""
        try:
            values = np.asarray(logprobs, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if logprobs is None or values.shape != (n,) or np.isnan(values).any() \
                or not np.isfinite(values).any() or (values == math.inf).any():
            return (f"{_LM_PREFIX}[bad reply] {self.session.model_id} returned log-probabilities "
                    f"{_short(repr(logprobs), 60)} for {n} labels")
        return values

    @property
    def concurrency(self) -> int:
        """How many of a candidate's cells go out at once: the session's ``max_concurrency``."""
        return self.session.max_concurrency

    def _replies(self, program: Program, examples: Sequence[Example],
                 bias: np.ndarray | Cell | None = None
                 ) -> tuple[Iterator[Prediction | Cell | _Ranked], list[Future]]:
        """The replies to ``examples``, in their order, and the calls sent for them. With a
        concurrency above 1 every call is sent at once to a pool of that many threads (the
        session keeps at most that many in flight); a program that runs itself
        (:class:`RunsItself`) is run concurrently only when it says it may be
        (``concurrent = True``)."""
        parallel = self.concurrency > 1 and len(examples) > 1 and (
            not isinstance(program, RunsItself) or getattr(program, "concurrent", False))
        if not parallel:
            return (self._predict(program, ex, bias) for ex in examples), []
        pool = self._executor()
        futures = [pool.submit(self._predict, program, ex, bias) for ex in examples]
        return _in_order(futures), futures

    def _executor(self) -> ThreadPoolExecutor:
        n = self.concurrency
        if self._pool is None or self._pool._max_workers != n:  # noqa: SLF001 (its size)
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="evo-cell")
        return self._pool

    def close(self) -> None:
        """Stop the evaluator's threads (when it has any); it can still be used after."""
        if self._pool is not None:  # calls in flight end (and are journaled); queued ones go
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _predict(self, program: Program, example: Example,
                 bias: np.ndarray | Cell | None = None) -> Prediction | Cell | _Ranked:
        """The parsed reply, or the failed cell when the LM or the parser failed. An empty
        reply (or none) is an LM failure: no prompt asks for one. A program that runs itself
        (:class:`RunsItself`) is run by its own ``run`` instead; a label-scoring one by
        :meth:`_rank`. A reasoning program may use :data:`REASONING_MAX_TOKENS`."""
        if isinstance(program, RunsItself):
            return self._run_itself(program, example)
        if getattr(program, "answer_mode", "generate") == "rank":
            return self._rank(program, example, bias)
        max_tokens = max(self.max_tokens, REASONING_MAX_TOKENS) if getattr(
            program, "reasoning", False) else self.max_tokens
        response = self._ask(LMRequest(program.messages(example), max_tokens=max_tokens,
                                       purpose="task", model=_model(program)))
        if isinstance(response, Cell):
            return response
        text = response.text
        if not isinstance(text, str):  # (the session already refuses empty replies)
            return _failed(Prediction("", None, "empty reply"),
                           f"{_LM_PREFIX}[empty reply] {text!r} from {self.session.model_id}")
        try:
            prediction = program.parse(text)
        except Exception as exc:  # a parser bug must not end a run: record it on the cell
            return dataclasses.replace(
                _failed(Prediction(text, None, str(exc)),
                        f"{_PARSE_PREFIX}{type(exc).__name__}: {exc}"),
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens)
        return _Ranked(prediction, None, response.prompt_tokens, response.completion_tokens)

    def _ask(self, request: LMRequest, *, note: str = "") -> LMResponse | Cell:
        """The session's answer to ``request``, or the failed cell of an LM error (``note``
        added to its message); an unreachable LM ends the evaluation."""
        try:
            return self.session.complete(request)
        except LMUnavailableError:
            raise
        except LMError as exc:
            return _failed(Prediction("", None, str(exc)), lm_cell_error(exc) + note)

    def _rank(self, program: Program, example: Example, bias: np.ndarray | Cell | None
              ) -> Prediction | Cell | _Ranked:
        """Label scoring: the backend's log-probability of each label after the program's
        :meth:`~Program.rank_prefill`. The prediction is the reply parsed as usual (the most
        probable label); with a calibration ``bias`` the label of highest calibrated
        probability instead. The dense score is the gold label's (calibrated) probability."""
        if isinstance(bias, Cell):  # its calibration failed: so does every cell
            return bias
        labels = program.labels or ()
        request = LMRequest(program.messages(example), max_tokens=self.max_tokens,
                            purpose="task", choices=labels, prefill=program.rank_prefill(),
                            model=_model(program))
        response = self._ask(request)
        if isinstance(response, Cell):
            return response
        logprobs = self._choice_logprobs(response.choice_logprobs, len(labels))
        if isinstance(logprobs, str):
            return _failed(Prediction(response.text, None, logprobs), logprobs)
        probs = label_probabilities(logprobs, bias)
        if bias is None:
            prediction = program.parse(response.text)
        else:
            label = labels[int(np.argmax(probs))]
            name = program.signature.outputs[0].name
            prediction = Prediction(f"{program.rank_prefill()} {label}", {name: label})
        gold = example.outputs.get(program.signature.outputs[0].name)
        dense = None if gold is None else (
            float(probs[labels.index(gold)]) if gold in labels else 0.0)
        return _Ranked(prediction, dense, response.prompt_tokens, response.completion_tokens)

    def _run_itself(self, program: RunsItself, example: Example) -> Prediction | Cell:
        """``program.run`` on one example: an LM error after the session's retries fails the
        cell (an unreachable LM stops the run), and so does any other exception of the
        program's own (recorded as a parse failure: the program could not make a reply)."""
        try:
            return program.run(example, self.session, self.max_tokens)
        except LMUnavailableError:
            raise
        except LMError as exc:
            return _failed(Prediction("", None, str(exc)), lm_cell_error(exc))
        except Exception as exc:  # noqa: BLE001 - a program's bug must not end a run
            return _failed(Prediction("", None, str(exc)),
                           f"{_PARSE_PREFIX}{type(exc).__name__}: {exc}")

    def score(self, examples: Sequence[Example], replies: Sequence[Prediction | Cell]
              ) -> list[Cell]:
        """Cells for parsed replies (a failed :class:`Cell` passes through): the metric's
        ``batch`` when it has one, else one by one. A metric that raises or returns no usable
        score (None, a string, inf / NaN, a malformed tuple) fails that cell with a metric
        error naming the metric and what it did; the cell scores 0 for the search."""
        cells: list[Cell | None] = [r if isinstance(r, Cell) else None for r in replies]
        todo = [i for i, c in enumerate(cells) if c is None]
        batch = getattr(self.metric, "batch", None)
        if batch is not None and len(todo) > 1:
            try:
                scores = list(batch([examples[i] for i in todo], [replies[i] for i in todo]))
                if len(scores) != len(todo):
                    raise ValueError(f"batch returned {len(scores)} scores for {len(todo)} "
                                     "predictions")
                done = [as_score(result) for result in scores]
                for i, score in zip(todo, done, strict=True):
                    cells[i] = Cell(score.value, replies[i], score.feedback)
                todo = []
            except Exception:  # noqa: BLE001 - fall back to the per-cell path, which records it
                pass
        for i in todo:
            cells[i] = self._score_one(examples[i], replies[i])  # type: ignore[arg-type]
        return cells  # type: ignore[return-value]

    def _score_one(self, example: Example, prediction: Prediction) -> Cell:
        try:
            result = self.metric(example, prediction)
        except Exception as exc:  # a user metric's bug is recorded on the cell
            return _failed(prediction, f"{_METRIC_PREFIX}{metric_name(self.metric)} raised "
                                       f"{type(exc).__name__}: {exc}")
        try:
            score = as_score(result)
        except (TypeError, ValueError) as exc:
            return _failed(prediction, f"{_METRIC_PREFIX}{metric_name(self.metric)} returned "
                                       f"{_short(repr(result))}: {exc}")
        return Cell(score.value, prediction, score.feedback)


@dataclass(frozen=True)
class _Ranked:
    """A reply on its way to its cell: the prediction the metric scores, and what the cell
    carries besides (a label-scoring reply's dense score, the call's token counts)."""

    prediction: Prediction
    dense: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def onto(self, cell: Cell) -> Cell:
        """``cell`` (the metric's) with what this reply carries."""
        return dataclasses.replace(cell, dense=self.dense if self.dense is not None else cell.dense,
                                   prompt_tokens=self.prompt_tokens,
                                   completion_tokens=self.completion_tokens)


def _model(program: object) -> str:
    """The model a program's requests name (:attr:`LMRequest.model`): its ``model`` setting,
    "" (the task LM's default) without one."""
    return getattr(program, "model", None) or ""


def cell_cost(cell: Cell, lm: object, model: str | None = None) -> float:
    """What ``cell``'s LM call cost: $ at the price of ``model`` on ``lm`` (an
    :class:`~evo.lm.router.ModelChoice` or a session over one, with ``prices``), else its
    prompt + completion tokens."""
    choice = getattr(lm, "lm", lm)
    if isinstance(choice, ModelChoice) and (model or "") in ("", *choice.names):
        dollars = choice.cost(model or "", cell.prompt_tokens, cell.completion_tokens)
        if dollars is not None:
            return dollars
    return float(cell.prompt_tokens + cell.completion_tokens)


def cells_cost(cells: Iterable[Cell], lm: object, model: str | None = None) -> float:
    """The mean cost per example of ``cells`` (:func:`cell_cost`; a failed call costs what it
    used, 0 when nothing answered); NaN for no cell."""
    costs = [cell_cost(c, lm, model) for c in cells]
    return float(np.mean(costs)) if costs else math.nan


def label_probabilities(logprobs: Sequence[float] | np.ndarray,
                        bias: np.ndarray | None = None) -> np.ndarray:
    """The label distribution of one label-scoring reply: the softmax of its log-probabilities,
    or with a content-free ``bias`` ``p_cf`` the calibrated ``softmax(logp - log p_cf)`` (Zhao et
    al. 2021: each label's probability divided by the prompt's bias for it, renormalized).

    >>> label_probabilities([math.log(0.6), math.log(0.4)], np.array([0.8, 0.2])).round(3)
    array([0.273, 0.727])
    """
    z = np.asarray(logprobs, dtype=np.float64)
    if bias is not None:  # a label the bias gives probability 0 would be infinitely favoured
        z = z - np.log(np.maximum(np.asarray(bias, dtype=np.float64), _TINY))
    z = np.exp(z - z.max())
    return z / z.sum()


_TINY = 1e-12


def _calibration_key(program: Program, max_tokens: int) -> tuple[LMRequest, ...]:
    """The calibration requests of ``program``'s prompt prefix, one per content-free input:
    also the key its bias is remembered under (two programs with one prefix share it)."""
    return tuple(LMRequest(program.content_free_messages(text), max_tokens=max_tokens,
                           purpose="calibration", choices=program.labels or (),
                           prefill=program.rank_prefill(), model=_model(program))
                 for text in CONTENT_FREE_INPUTS)


def _in_order(futures: list[Future]) -> Iterator[Prediction | Cell]:
    """The futures' results in submission order; if one raises (the LM is unreachable) or the
    caller stops early, the calls not yet started are cancelled."""
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def _failed(prediction: Prediction, message: str) -> Cell:
    return Cell(0.0, prediction, message, error=message)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def evaluate_program(program: Program | EnsembleProgram, examples: Sequence[Example],
                     session: LMSession, metric: Metric, *, max_tokens: int = 64,
                     progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, list[Cell]]:
    """Score one program (or a voting ensemble: each member, then the vote) on examples outside
    any search budget (held-out test, baselines). A repeated example is scored once
    (:func:`unique_examples`): the scores and cells follow the de-duplicated order."""
    examples = unique_examples(examples)
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
    try:
        scores = evaluator.evaluate(program, matrix, row, range(len(examples)), charge=False)
    finally:
        evaluator.close()
    return scores, [matrix.cells[(row, j)] for j in range(len(examples))]


def predict_program(program: Program | EnsembleProgram, examples: Sequence[Example],
                    session: LMSession, *, max_tokens: int = 64) -> list[Prediction | Cell]:
    """The answers of one program (or a voting ensemble: each member, then the vote) to
    ``examples``, as :func:`evaluate_program` gets them (:meth:`Evaluator.predict`): each the
    parsed :class:`Prediction`, or the failed :class:`Cell` (an LM or parser failure). An
    ensemble's example that no member answered is the first member's failed LM call when there
    is one, so an unreachable answer reads as the LM's failure, not as a bad reply.

    >>> # evo.search.evaluate.predict_program(best, [evo.Example(inputs={...})], session)
    """
    examples = list(examples)
    members = program.members if isinstance(program, EnsembleProgram) else (program,)
    evaluator = Evaluator(session, _unscored, Budget(metric_calls=1), max_tokens=max_tokens)
    try:
        for member in members:  # a member that cannot answer is found before any call
            evaluator.check_answer_mode(member)
        runs = [evaluator.predict(member, examples) for member in members]
    finally:
        evaluator.close()
    if not isinstance(program, EnsembleProgram):
        return runs[0]
    answers: list[Prediction | Cell] = []
    for j in range(len(examples)):
        got = [run[j] for run in runs]
        vote = program.vote_on([g.prediction if isinstance(g, Cell) else g for g in got])
        lm_failed = [g for g in got if isinstance(g, Cell) and (g.kind or "").startswith("lm")]
        answers.append(lm_failed[0] if not vote.ok and lm_failed else vote)
    return answers


def _unscored(example: Example, prediction: Prediction) -> float:
    """The metric of :func:`predict_program`'s evaluator, which scores nothing."""
    raise AssertionError("predict_program scores nothing")


__all__ = ["MEANINGLESS_SHARE", "REASONING_MAX_TOKENS", "Budget", "BudgetExhausted", "Cell",
           "Evaluator", "RunsItself", "Score", "ScoreMatrix", "cell_cost", "cell_failures",
           "cells_cost", "check_rows", "error_kind",
           "evaluate_program", "failures_from_errors", "format_failures", "label_probabilities",
           "meaningless", "predict_program", "unique_examples"]


def check_testset(program: Program | EnsembleProgram, testset: Dataset | Sequence[Example], *,
                  what: str = "testset") -> list[Example]:
    """The examples of ``testset`` that ``program`` can be scored on, checked before any LM call:
    a repeated example is kept once (one warning says how many were dropped); an empty set, or
    gold labels the program does not have (:meth:`Program.check_labels`), is a
    :class:`~evo.errors.ConfigError`; an example lacking a field the program reads is a
    :class:`~evo.data.DataError` naming the row.

    >>> # evo.search.evaluate.check_testset(program, task.test)  # before paying for a search
    """
    examples = unique_examples(testset, what)
    if not examples:
        raise ConfigError(f"{what} is empty: there is nothing to score the program on "
                          "(give some held-out examples, e.g. --n-test 50)")
    first = program.members[0] if isinstance(program, EnsembleProgram) else program
    if first.labels is not None:
        field_name = first.signature.outputs[0].name
        first.check_labels((ex.outputs[field_name] for ex in examples
                            if field_name in ex.outputs), source=what)
    check_rows(first, examples, what)
    return examples


def check_rows(program: Program, examples: Sequence[Example], source: str) -> None:
    """Every example of ``examples`` has the fields ``program`` reads and answers (gold
    outputs included); the first that does not is a :class:`~evo.data.DataError` naming
    ``source`` and its row (from 1), before any LM call."""
    for row, ex in enumerate(examples, 1):
        try:
            program.check_example(ex, outputs=True)
        except ValueError as exc:
            raise DataError(str(exc), source=source, row=row) from None
