"""Metrics: ``(example, prediction) -> float | (float, feedback) | Score``.

Feedback text is what reflective mutation reads, so the built-in metrics say what went wrong in
words ("expected X, got Y"), not only a number.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

from evo.data import Example
from evo.program import Prediction


@dataclass(frozen=True)
class Score:
    """A metric's verdict on one example: ``value`` (1.0 = fully right; the engine treats a cell
    below 1.0 as a failure worth reflecting on) and ``feedback`` text for the reflection LM."""

    value: float
    feedback: str = ""


Metric = Callable[[Example, Prediction], "float | tuple[float, str] | Score"]


def as_score(result: object) -> Score:
    """Normalize what a user metric returned: a finite real number (Python or numpy), a
    ``(number, feedback)`` pair or a :class:`Score`. Raises TypeError / ValueError naming the bad
    value (the evaluator records it as a metric error on that cell)."""
    if isinstance(result, Score):
        value, feedback = result.value, result.feedback
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        value, feedback = result
    else:
        value, feedback = result, ""
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        value = float(value)
        if math.isfinite(value):
            return Score(value, feedback)
        raise ValueError(f"a metric returned {value}: scores must be finite")
    raise TypeError(f"a metric must return a number, (number, feedback) or Score, got {result!r}")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s.-]", " ", text.lower()).split())


def exact_match(example: Example, prediction: Prediction) -> Score:
    """1.0 when every output field matches the gold text (case and punctuation folded)."""
    if not prediction.ok:
        return Score(0.0, f"The reply could not be used: {prediction.error}. "
                          f"Expected: {_gold(example)}.")
    wrong = [name for name, gold in example.outputs.items()
             if _norm(prediction.outputs.get(name, "")) != _norm(gold)]
    if not wrong:
        return Score(1.0, f"Correct: {_gold(example)}.")
    said = "; ".join(f"{n} = {prediction.outputs.get(n, '')!r}" for n in wrong)
    return Score(0.0, f"Wrong: the program answered {said}, but the correct answer is "
                      f"{_gold(example)}.")


def _gold(example: Example) -> str:
    return "; ".join(f"{name} = {value!r}" for name, value in example.outputs.items())
