"""Metrics: ``(example, prediction) -> float | (float, feedback) | Score``.

Feedback text is what reflective mutation reads, so the built-in metrics say what went wrong in
words ("expected X, got Y"), not only a number.

Built-in metrics also score many pairs at once: ``metric.batch(examples, predictions)`` returns
the same scores as calling ``metric`` on each pair, through the kernels of
:mod:`evo.kernels.text` (the evaluator uses ``batch`` when a metric has one). ``exact_match``
compares labels (case and punctuation folded); :data:`f1`, :data:`contains`,
:data:`numeric_match` and :data:`normalized_exact_match` are :class:`TokenMetric` answer metrics
(SQuAD normalization, as dspy). For generative tasks, :data:`numeric_match` reads the reply's
final number, written in digits or words ("so there are seven" -> 7), and
:data:`normalized_exact_match` drops a leading "the answer is" before comparing. With several
output fields ``exact_match`` needs every field right and a :class:`TokenMetric` scores the mean
over fields; an unusable reply scores 0.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evo.data import Example
from evo.kernels import text as _text
from evo.program import Prediction

__all__ = ["Metric", "Score", "TokenMetric", "as_score", "contains", "exact_match", "f1",
           "metric_name", "normalized_exact_match", "numeric_match"]


@dataclass(frozen=True)
class Score:
    """A metric's verdict on one example: ``value`` (1.0 = fully right; the engine treats a cell
    below 1.0 as a failure worth reflecting on) and ``feedback`` text for the reflection LM."""

    value: float
    feedback: str = ""


Metric = Callable[[Example, Prediction], "float | tuple[float, str] | Score"]


def as_score(result: object) -> Score:
    """Normalize what a user metric returned: a finite real number (Python or numpy), a
    ``(number, feedback)`` pair or a :class:`Score`. Raises TypeError / ValueError saying what
    is wrong with the value (the evaluator records it as a metric error on that cell, naming
    the metric and the value)."""
    if isinstance(result, Score):
        value, feedback = result.value, result.feedback
    elif isinstance(result, tuple):
        if len(result) != 2 or not isinstance(result[1], str):
            raise TypeError(f"a metric's tuple must be (number, feedback text), got "
                            f"{len(result)} item(s)" + (f" ending in {type(result[1]).__name__}"
                                                        if len(result) == 2 else ""))
        value, feedback = result
    else:
        value, feedback = result, ""
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        value = float(value)
        if math.isfinite(value):
            return Score(value, feedback if isinstance(feedback, str) else str(feedback))
        raise ValueError(f"scores must be finite, got {value}")
    raise TypeError(f"a metric must return a number, (number, feedback) or Score; the score "
                    f"was {type(value).__name__}")


def metric_name(metric: object) -> str:
    """How a metric is named in messages: its function name, quoted (``'exact_match'``)."""
    name = getattr(metric, "__name__", None) or type(metric).__name__
    return repr(str(name))


def exact_match_key(text: str) -> str:
    """What :func:`exact_match` compares: lowercase, punctuation but ``.`` and ``-`` removed
    (``"3.5"`` and ``"e-mail"`` stay distinct from ``"35"`` and ``"email"``), whitespace collapsed.
    Stricter than label parsing's :func:`evo.program.label_key`, which only has to find a label."""
    return " ".join(re.sub(r"[^\w\s.-]", " ", text.lower()).split())


def exact_match(example: Example, prediction: Prediction) -> Score:
    """1.0 when every output field matches the gold text (case and punctuation folded).
    ``exact_match.batch(examples, predictions)`` scores many pairs at once, identically."""
    if not prediction.ok:
        return _unusable(example, prediction)
    wrong = [name for name, gold in example.outputs.items()
             if exact_match_key(prediction.outputs.get(name, "")) != exact_match_key(gold)]
    return _exact_verdict(example, prediction, wrong)


def _exact_match_batch(examples: Sequence[Example], predictions: Sequence[Prediction]
                       ) -> list[Score]:
    """:func:`exact_match` on each pair, through the exact-match kernel
    (:func:`exact_match_key`)."""
    pairs = _FieldPairs(examples, predictions)
    equal = _text.exact_match_batch(pairs.said, pairs.gold, normalize=exact_match_key)
    scores = []
    for k, (example, prediction) in enumerate(zip(examples, predictions)):
        if not prediction.ok:
            scores.append(_unusable(example, prediction))
            continue
        wrong = [name for name, j in zip(example.outputs, pairs.rows(k)) if equal[j] != 1.0]
        scores.append(_exact_verdict(example, prediction, wrong))
    return scores


exact_match.batch = _exact_match_batch  # type: ignore[attr-defined]


def _exact_verdict(example: Example, prediction: Prediction, wrong: list[str]) -> Score:
    if not wrong:
        return Score(1.0, f"Correct: {_gold(example)}.")
    assert prediction.outputs is not None
    said = "; ".join(f"{n} = {prediction.outputs.get(n, '')!r}" for n in wrong)
    return Score(0.0, f"Wrong: the program answered {said}, but the correct answer is "
                      f"{_gold(example)}.")


def _unusable(example: Example, prediction: Prediction) -> Score:
    return Score(0.0, f"The reply could not be used: {prediction.error}. "
                      f"Expected: {_gold(example)}.")


class _FieldPairs:
    """The (answer, gold) text of every output field of every usable prediction, flattened so
    one kernel call scores them all; ``rows(k)`` are example ``k``'s positions, in field order."""

    def __init__(self, examples: Sequence[Example], predictions: Sequence[Prediction]) -> None:
        if len(examples) != len(predictions):
            raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
        self.said: list[str] = []
        self.gold: list[str] = []
        self.start: list[int] = []
        for example, prediction in zip(examples, predictions):
            self.start.append(len(self.said))
            if prediction.outputs is None:
                continue
            for name, gold in example.outputs.items():
                self.said.append(prediction.outputs.get(name, ""))
                self.gold.append(gold)

    def rows(self, k: int) -> range:
        end = self.start[k + 1] if k + 1 < len(self.start) else len(self.said)
        return range(self.start[k], end)


_PHRASES = {  # kind -> (feedback label, binary?)
    "exact_match": ("exact match", True),
    "normalized_exact_match": ("exact match", True),
    "f1": ("token F1", False),
    "contains": ("contains", True),
    "numeric": ("numeric match", True),
}


class TokenMetric:
    """An answer metric over normalized tokens, scored by the kernels of
    :mod:`evo.kernels.text`: ``kind`` is one of ``"exact_match"`` (tokens, case kept),
    ``"normalized_exact_match"``, ``"f1"``, ``"contains"`` (the gold occurs in the answer) or
    ``"numeric"`` (the last number in the answer equals the gold's, ``math.isclose``; numbers
    written in words count, :func:`evo.kernels.text.number_words_to_digits`).

    A :data:`Metric`: ``metric(example, prediction) -> Score``, plus ``metric.batch(examples,
    predictions) -> list[Score]`` (the same scores, all pairs in one kernel call). Several
    output fields score the mean over fields; an unusable reply scores 0.

    >>> from evo.program import Prediction
    >>> ex = Example(inputs={"q": "Capital of France?"}, outputs={"answer": "Paris"})
    >>> f1(ex, Prediction("", {"answer": "Paris, France"})).feedback
    "Expected 'Paris', got 'Paris, France'; token F1 0.67."
    """

    def __init__(self, kind: str, *, normalize: _text.Normalize = "squad",
                 rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> None:
        if kind not in _PHRASES:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(_PHRASES)}")
        self.kind = kind
        self.__name__ = kind
        self.options: dict[str, object] = (
            {"rel_tol": rel_tol, "abs_tol": abs_tol} if kind == "numeric"
            else {"normalize": normalize})

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"TokenMetric({self.kind!r}, {options})"

    def __call__(self, example: Example, prediction: Prediction) -> Score:
        return self.batch([example], [prediction])[0]

    def batch(self, examples: Sequence[Example], predictions: Sequence[Prediction]
              ) -> list[Score]:
        """Score every pair at once; equal to calling the metric on each pair."""
        pairs = _FieldPairs(examples, predictions)
        said, gold = pairs.said, pairs.gold
        if self.kind == "numeric":  # "twenty-one" is 21 (texts only: the kernel is unchanged)
            said, gold = _digits(said), _digits(gold)
        values = _text.score_batch(self.kind, said, gold, **self.options)
        scores = []
        for k, (example, prediction) in enumerate(zip(examples, predictions)):
            if not prediction.ok:
                scores.append(_unusable(example, prediction))
                continue
            rows = pairs.rows(k)
            value = math.fsum(values[j] for j in rows) / len(rows)
            scores.append(Score(value, self._feedback(example, [values[j] for j in rows],
                                                      [pairs.said[j] for j in rows])))
        return scores

    def _feedback(self, example: Example, values: list[float], said: list[str]) -> str:
        if all(v == 1.0 for v in values):
            return f"Correct: {_gold(example)}."
        label, binary = _PHRASES[self.kind]
        several = len(values) > 1
        parts = []
        for (name, gold), value, answer in zip(example.outputs.items(), values, said):
            if value == 1.0:
                continue
            if self.kind == "contains":
                part = f"expected an answer containing {gold!r}, got {answer!r}"
            else:
                part = f"expected {gold!r}, got {answer!r}"
            if self.kind == "numeric" and not _has_number(answer):
                part += " (no number found)"
            if not binary:
                part += f"; {label} {value:.2f}"
            parts.append(f"{name}: {part}" if several else part[0].upper() + part[1:])
        text = ". ".join(parts) + "."
        return f"{text} Mean {label} over {len(values)} fields: {sum(values) / len(values):.2f}." \
            if several else text


def _has_number(text: str) -> bool:
    return any(not math.isnan(_text.parse_number(token))
               for token in _text.number_words_to_digits(text).split())


def _digits(texts: list[str]) -> list[str]:
    """Each text with its number words in digits, each distinct text converted once."""
    memo: dict[str, str] = {}
    return [memo[t] if t in memo else memo.setdefault(t, _text.number_words_to_digits(t))
            for t in texts]


f1 = TokenMetric("f1")
"""Token F1 (SQuAD / dspy ``f1_score``) between answer and gold."""
contains = TokenMetric("contains")
"""1.0 when the gold's tokens occur contiguously in the answer (SQuAD normalization)."""
numeric_match = TokenMetric("numeric")
"""1.0 when the last number in the answer equals the gold's (``math.isclose``), numbers in
digits or words: ``"so there are seven"`` matches ``"7"``, ``"twenty-one"`` matches ``"21"``."""
normalized_exact_match = TokenMetric("normalized_exact_match", normalize="answer")
"""1.0 when answer and gold are equal after SQuAD normalization (dspy ``em_score``: case,
punctuation and the articles a/an/the dropped), a leading "the answer is" dropped first
(:func:`evo.kernels.text.normalize_answer`)."""


def _gold(example: Example) -> str:
    return "; ".join(f"{name} = {value!r}" for name, value in example.outputs.items())
