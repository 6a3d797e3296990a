"""DSPy-style data and metrics for evo: ``dspy.Example`` lists and ``(gold, pred, trace)`` metrics.

>>> # train = evo.integrations.dspy.compat.examples(dspy_trainset)   # dspy.Example -> evo.Example
>>> # metric = evo.integrations.dspy.compat.metric(my_dspy_metric)   # (gold, pred, trace) -> evo
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from evo.data import DataError, Example
from evo.metrics import Score
from evo.program import Prediction


def examples(data: Iterable[Any], *, inputs: Iterable[str] | None = None,
             source: str = "dspy data",
             originals: MutableMapping[str, Any] | None = None) -> list[Example]:
    """evo examples from ``dspy.Example`` objects (their ``with_inputs`` fields are the inputs,
    the rest the gold outputs; ``inputs`` overrides). Values are turned into text; with
    ``originals``, each evo example's id is mapped to its ``dspy.Example`` (the first one, when
    two have the same text), so :func:`metric` can give the DSPy metric the typed original. A
    row without inputs or outputs is a :class:`DataError` naming the row."""
    out = []
    for row, item in enumerate(data, 1):
        fields = {k: v for k, v in dict(item).items() if not k.startswith("dspy_")}
        names = set(inputs) if inputs is not None else set(getattr(item, "_input_keys", None) or ())
        if not names:
            raise DataError("no input fields: call .with_inputs(...) on the dspy.Example or pass "
                            "inputs=[...]", source=source, row=row)
        ins = {k: str(v) for k, v in fields.items() if k in names}
        outs = {k: str(v) for k, v in fields.items() if k not in names}
        if not outs:
            raise DataError(f"no gold output fields besides the inputs {sorted(names)}",
                            source=source, row=row)
        try:
            out.append(Example(inputs=ins, outputs=outs))
        except ValueError as exc:
            raise DataError(str(exc).splitlines()[0], source=source, row=row) from None
        if originals is not None:
            originals.setdefault(out[-1].id, item)
    return out


def call_metric(fn: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """``fn(gold, pred)`` for a DSPy metric, passing DSPy's ``trace=None`` only to metrics that
    take a third argument (``dspy.Evaluate`` accepts two-argument metrics too)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return lambda gold, pred: fn(gold, pred, None)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return lambda gold, pred: fn(gold, pred, None)
    return lambda gold, pred: fn(gold, pred)


def metric_value(result: Any) -> tuple[float, str]:
    """What a DSPy metric returned, as (value, feedback): a bool / number, or a Prediction with
    ``score`` and ``feedback`` (GEPA's feedback metrics). A non-finite value is a ValueError."""
    feedback = ""
    if hasattr(result, "score"):
        feedback = str(getattr(result, "feedback", "") or "")
        result = result.score
    value = float(result)
    if not math.isfinite(value):
        raise ValueError(f"the DSPy metric returned {value}")
    return value, feedback


def metric(fn: Callable[..., Any], *, name: str | None = None,
           originals: Mapping[str, Any] | None = None) -> Callable[[Example, Prediction], Score]:
    """An evo metric from a DSPy metric ``fn(gold, pred, trace=None)`` (or ``fn(gold, pred)``).

    ``gold`` is the example's own ``dspy.Example`` when ``originals`` maps its id to one (see
    :func:`examples`), else one rebuilt from the example's text fields. ``pred`` is the module's
    own ``dspy.Prediction`` when the evo prediction carries one (``dspy_prediction``, set by
    :class:`~evo.integrations.dspy.module.ModuleProgram`: typed values, ``reasoning``), else a
    ``dspy.Prediction`` of the parsed text outputs. ``fn`` may return a bool / number, or a
    ``dspy.Prediction`` with ``score`` and ``feedback`` (GEPA's feedback metrics); the feedback
    reaches evo's reflection. An unparseable reply scores 0 without calling ``fn``."""
    import dspy

    call = call_metric(fn)
    originals = {} if originals is None else originals

    def evo_metric(example: Example, prediction: Prediction) -> Score:
        if not prediction.ok:
            return Score(0.0, f"unusable reply: {prediction.error}")
        gold = originals.get(example.id)
        if gold is None:
            gold = dspy.Example(**example.inputs, **example.outputs).with_inputs(*example.inputs)
        pred = getattr(prediction, "dspy_prediction", None)
        if pred is None:
            pred = dspy.Prediction(**prediction.outputs)
        value, feedback = metric_value(call(gold, pred))
        if not feedback:
            said = ", ".join(f"{k}={v!r}" for k, v in prediction.outputs.items())
            gold_text = ", ".join(f"{k}={v!r}" for k, v in example.outputs.items())
            feedback = f"score {value:g}: expected {gold_text}, got {said}"
        return Score(value, feedback)

    evo_metric.__name__ = name or getattr(fn, "__name__", "dspy_metric")
    # a run spec names the metric by module and qualified name: the user's, not this wrapper's
    evo_metric.__qualname__ = name or getattr(fn, "__qualname__", evo_metric.__name__)
    evo_metric.__module__ = getattr(fn, "__module__", None) or __name__
    return evo_metric
