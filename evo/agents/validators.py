"""Validators: checks on a program's outputs that become fitness terms and feedback text in a
search, and retries with advice at inference (as ``dspy.Refine`` / DSPy assertions do).

A validator is any object with a ``name`` and ``__call__(inputs, outputs) -> str | None``: None
when the outputs pass, else what is wrong, in words the reflection LM can act on ("answer is 612
characters, more than the 200 allowed"). Built in: :class:`Regex`, :class:`JSONSchema`,
:class:`Length`, :class:`OneOf`, :class:`Check` (a Python callable the user passes in code) and
:class:`LMJudge` (an LM says yes or no to a criterion). Nothing read from data is ever run as
code: a JSON schema is only validated against, by ``jsonschema``.

>>> # metric = validated(evo.metrics.f1, [Length("answer", max_chars=200)])
>>> # refine(program, example, session, [Regex("answer", r"^\\d+$")]).prediction
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from dataclasses import field as _f
from typing import Any, Protocol, runtime_checkable

import jsonschema
from referencing.exceptions import Unresolvable

from evo.data import Example
from evo.errors import ConfigError
from evo.lm.base import LM, LMError, LMRequest, Message
from evo.lm.session import LMSession, session_for
from evo.metrics import Metric, Score, as_score
from evo.program import Prediction, Program
from evo.runs.runner import name_of
from evo.search.evaluate import Cell, predict_program

__all__ = ["Check", "JSONSchema", "LMJudge", "Length", "OneOf", "Refined", "Regex", "Validated",
           "Validator", "check_outputs", "refine", "validated"]


@runtime_checkable
class Validator(Protocol):
    """A check on one call's outputs: None when they pass, else what is wrong, in words."""

    name: str

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None: ...


def _field_text(validator: Any, outputs: Mapping[str, str]) -> str:
    """The text of the validator's field; a field the outputs lack is a bad config (a typo in
    the validator, not a bad answer)."""
    name = validator.field
    if name not in outputs:
        have = ", ".join(repr(k) for k in outputs) or "none"
        raise ConfigError(f"validator {validator.name!r} checks the output field {name!r}, "
                          f"but the outputs have no such field (they have {have})")
    return outputs[name]


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _set_name(validator: Any, default: str) -> None:
    name = validator.name if validator.name is not None else default
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{type(validator).__name__}: name must be a non-empty string, "
                          f"got {name!r}")
    object.__setattr__(validator, "name", name)


def _check_field(validator: Any) -> None:
    if not isinstance(validator.field, str) or not validator.field:
        raise ConfigError(f"validator {validator.name!r}: field must be an output field's name, "
                          f"got {validator.field!r}")


@dataclass(frozen=True)
class Regex:
    """The field's text matches ``pattern`` (``re.search``; ``fullmatch=True``: the whole
    text). A pattern that does not compile is a :class:`~evo.errors.ConfigError`."""

    field: str
    pattern: str
    name: str | None = _f(default=None, kw_only=True)
    fullmatch: bool = _f(default=False, kw_only=True)
    flags: int = _f(default=0, kw_only=True)
    _compiled: re.Pattern[str] = _f(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_name(self, "regex")
        _check_field(self)
        try:
            compiled = re.compile(self.pattern, self.flags)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"validator {self.name!r}: the pattern {self.pattern!r} is not a "
                              f"valid regular expression: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        text = _field_text(self, outputs)
        found = (self._compiled.fullmatch if self.fullmatch else self._compiled.search)(text)
        if found:
            return None
        how = "is not entirely matched by" if self.fullmatch else "does not match"
        return f"{self.field} {_short(text)} {how} the pattern {self.pattern!r}"


@dataclass(frozen=True, eq=False)
class JSONSchema:
    """The field's text parses as JSON and validates against ``schema`` (a JSON schema, as a
    dict; checked by ``jsonschema`` when the validator is made: a schema that is not valid is a
    :class:`~evo.errors.ConfigError`). Remote ``$ref`` are not fetched."""

    field: str
    schema: Mapping[str, Any] | bool
    name: str | None = _f(default=None, kw_only=True)
    _validator: Any = _f(init=False, repr=False)

    def __post_init__(self) -> None:
        _set_name(self, "json")
        _check_field(self)
        schema = dict(self.schema) if isinstance(self.schema, Mapping) else self.schema
        if not isinstance(schema, dict | bool):
            raise ConfigError(f"validator {self.name!r}: the schema must be a JSON schema (a "
                              f"dict), got {type(self.schema).__name__}")
        cls = jsonschema.validators.validator_for(schema) if isinstance(schema, dict) \
            else jsonschema.Draft202012Validator
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "top level"
            raise ConfigError(f"validator {self.name!r}: the schema is not a valid JSON schema "
                              f"({where}): {exc.message}") from None
        object.__setattr__(self, "_validator", cls(schema))

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        text = _field_text(self, outputs)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{self.field} is not valid JSON ({exc.msg} at character {exc.pos}): " \
                   f"{_short(text)}"
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except Unresolvable as exc:  # a $ref to elsewhere: never fetched
            raise ConfigError(f"validator {self.name!r}: the schema refers to {exc.ref!r}, "
                              "which is not in the schema (remote $ref are not fetched)"
                              ) from None
        if error is None:
            return None
        where = error.json_path if error.path else "the top level"
        return f"{self.field} does not follow the JSON schema at {where}: {error.message}"


@dataclass(frozen=True)
class Length:
    """The field's text has between ``min_chars`` and ``max_chars`` characters (stripped)."""

    field: str
    min_chars: int = _f(default=0, kw_only=True)
    max_chars: int | None = _f(default=None, kw_only=True)
    name: str | None = _f(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _set_name(self, "length")
        _check_field(self)
        for what, value in (("min_chars", self.min_chars), ("max_chars", self.max_chars)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ConfigError(f"validator {self.name!r}: {what} must be a whole number "
                                  f">= 0, got {value!r}")
        if self.max_chars is not None and self.min_chars > self.max_chars:
            raise ConfigError(f"validator {self.name!r}: min_chars {self.min_chars} is more "
                              f"than max_chars {self.max_chars}: no text can pass")

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        n = len(_field_text(self, outputs).strip())
        if n < self.min_chars:
            return f"{self.field} is {n} characters, fewer than the {self.min_chars} required"
        if self.max_chars is not None and n > self.max_chars:
            return f"{self.field} is {n} characters, more than the {self.max_chars} allowed"
        return None


@dataclass(frozen=True)
class OneOf:
    """The field's text is one of ``options`` (stripped; case folded unless
    ``case_sensitive``)."""

    field: str
    options: tuple[str, ...]
    name: str | None = _f(default=None, kw_only=True)
    case_sensitive: bool = _f(default=False, kw_only=True)

    def __post_init__(self) -> None:
        _set_name(self, "one_of")
        _check_field(self)
        options = (self.options,) if isinstance(self.options, str) else tuple(self.options)
        if not options or not all(isinstance(o, str) for o in options):
            raise ConfigError(f"validator {self.name!r}: options must be a non-empty list of "
                              f"strings, got {self.options!r}")
        object.__setattr__(self, "options", options)

    def _key(self, text: str) -> str:
        return text.strip() if self.case_sensitive else text.strip().casefold()

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        text = _field_text(self, outputs)
        if self._key(text) in {self._key(o) for o in self.options}:
            return None
        return f"{self.field} {_short(text)} is not one of: {', '.join(self.options)}"


@dataclass(frozen=True)
class Check:
    """A Python check the user writes in code: ``fn(inputs, outputs) -> bool`` (True passes);
    ``message`` is the feedback when it fails. Never built from data. What ``fn`` raises is
    not caught: a bug in the check shows (in a search, as a metric error on the cell)."""

    fn: Callable[[dict[str, str], dict[str, str]], bool]
    name: str = _f(kw_only=True)
    message: str = _f(kw_only=True)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"Check {self.name!r}: fn must be a callable (inputs, outputs) "
                              f"-> bool, got {type(self.fn).__name__}")
        _set_name(self, "check")
        if not isinstance(self.message, str) or not self.message.strip():
            raise ConfigError(f"validator {self.name!r}: message must say what is wrong when "
                              "the check fails")

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        result = self.fn(inputs, outputs)
        if result is None:  # a forgotten ``return``: not a silent pass
            raise ConfigError(f"validator {self.name!r}: its function returned None; it must "
                              "return True (passes) or False")
        return None if result else self.message


_JUDGE_SYSTEM = ("You judge whether an output meets a criterion. Answer with one word: yes or "
                 "no.")
_NOTES_KEPT = 100  # the most recent notes an LMJudge keeps


@dataclass(frozen=True, eq=False)
class LMJudge:
    """An LM says whether the output (``field``, or all output fields) meets ``criterion``,
    answering "yes" or "no". Its calls go through an :class:`~evo.lm.session.LMSession` (a bare
    LM is wrapped with no cache) and are counted in :attr:`lm_calls`, so the caller can add
    them to a budget or a cost. A judge whose LM fails, or whose reply is neither yes nor no,
    could not judge: the output passes, and :attr:`notes` says why.

    Given the session a search runs on (``run(..., lm=session)``), the judge's calls are in
    that run's usage and journal, so a resumed run replays them instead of paying again."""

    lm: LM | LMSession
    criterion: str
    field: str | None = _f(default=None, kw_only=True)
    name: str = _f(default="judge", kw_only=True)
    max_tokens: int = _f(default=8, kw_only=True)
    _session: LMSession = _f(init=False, repr=False)
    _lock: threading.Lock = _f(init=False, repr=False)
    _counts: dict[str, int] = _f(init=False, repr=False)
    _notes: deque[str] = _f(init=False, repr=False)

    def __post_init__(self) -> None:
        _set_name(self, "judge")
        if not isinstance(self.criterion, str) or not self.criterion.strip():
            raise ConfigError(f"validator {self.name!r}: the criterion must be a non-empty text")
        if self.field is not None:
            _check_field(self)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens < 1:
            raise ConfigError(f"validator {self.name!r}: max_tokens must be >= 1, got "
                              f"{self.max_tokens!r}")
        object.__setattr__(self, "_session", session_for(self.lm, cache=None))
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_counts", {"calls": 0, "failed": 0})
        object.__setattr__(self, "_notes", deque(maxlen=_NOTES_KEPT))

    @property
    def session(self) -> LMSession:
        """The session the judge's calls go through."""
        return self._session

    @property
    def lm_calls(self) -> int:
        """Judge requests sent so far (answered by the LM, its cache or a run's journal, or
        failed); the session's ``usage`` says which of them were paid."""
        return self._counts["calls"]

    @property
    def could_not_judge(self) -> int:
        """Outputs passed because the judge could not say (LM failure or unclear reply)."""
        return self._counts["failed"]

    @property
    def notes(self) -> list[str]:
        """Why the judge could not judge, most recent last (the last 100)."""
        with self._lock:
            return list(self._notes)

    def request(self, inputs: dict[str, str], outputs: dict[str, str]) -> LMRequest:
        """The judge's request for one call's inputs and outputs."""
        shown = {self.field: _field_text(self, outputs)} if self.field is not None else outputs
        text = (f"Criterion: {self.criterion}\n\nInputs:\n"
                + "\n".join(f"{k}: {v}" for k, v in inputs.items())
                + "\n\nOutput:\n" + "\n".join(f"{k}: {v}" for k, v in shown.items())
                + "\n\nDoes the output meet the criterion? Answer yes or no.")
        return LMRequest(messages=(Message("system", _JUDGE_SYSTEM), Message("user", text)),
                         max_tokens=self.max_tokens, purpose="judge")

    def __call__(self, inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
        request = self.request(inputs, outputs)
        with self._lock:
            self._counts["calls"] += 1
        try:
            reply = self._session.complete(request).text
        except LMError as exc:
            return self._unjudged(f"the judge's LM failed: {exc}")
        verdict = _yes_no(reply)
        if verdict is None:
            return self._unjudged(f"the judge's reply is neither yes nor no: {_short(reply)}")
        if verdict:
            return None
        what = f"{self.field}" if self.field is not None else "the output"
        return f"{what} does not meet the criterion: {self.criterion}"

    def _unjudged(self, note: str) -> None:
        with self._lock:
            self._counts["failed"] += 1
            self._notes.append(note)


def _yes_no(reply: str) -> bool | None:
    """A judge's verdict: its first word, yes or no (punctuation and case ignored)."""
    words = re.findall(r"[a-z]+", reply.casefold())
    if not words:
        return None
    return {"yes": True, "no": False}.get(words[0])


def check_outputs(validators: Sequence[Validator], inputs: dict[str, str],
                  outputs: dict[str, str]) -> list[tuple[str, str]]:
    """``(name, message)`` of each validator the outputs fail, in the validators' order."""
    failed = []
    for validator in validators:
        message = validator(inputs, outputs)
        if message is not None:
            failed.append((validator.name, message))
    return failed


def _identity(validator: Any) -> Any:
    """A validator's configuration as plain data with no memory address (a callable by its
    qualified name, an LM by its model id), so a run spec reads the same in every process."""
    if is_dataclass(validator) and not isinstance(validator, type):
        parts: dict[str, Any] = {"type": name_of(type(validator))}
        for f in fields(validator):
            if f.name.startswith("_"):
                continue
            value = getattr(validator, f.name)
            if isinstance(value, LMSession):
                value = value.model_id
            elif callable(value) or hasattr(value, "complete"):
                value = getattr(value, "model_id", None) or name_of(value)
            parts[f.name] = value
        return parts
    return {"type": name_of(type(validator)), "name": getattr(validator, "name", "")}


def _feedback_line(failed: Sequence[tuple[str, str]]) -> str:
    return " ".join(f"validator '{name}': {message}." for name, message in failed)


class Validated:
    """A metric with validators as fitness terms: the base metric's value minus ``penalty``
    times the share of validators failed (floored at 0), its feedback followed by each
    failure. Made by :func:`validated`."""

    def __init__(self, metric: Metric, validators: Sequence[Validator], *,
                 penalty: float = 1.0) -> None:
        validators = tuple(validators)
        if not validators:
            raise ConfigError("validated() needs at least one validator")
        for v in validators:
            if not isinstance(getattr(v, "name", None), str) or not callable(v):
                raise ConfigError(f"{v!r} is not a validator: it needs a name and "
                                  "__call__(inputs, outputs) -> str | None")
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) \
                or not math.isfinite(penalty) or penalty < 0:
            raise ConfigError(f"validated(): penalty must be a finite number >= 0, got "
                              f"{penalty!r}")
        self.metric = metric
        self.validators = validators
        self.penalty = float(penalty)
        base = name_of(metric)
        config = json.dumps([_identity(v) for v in validators], sort_keys=True, default=repr)
        digest = hashlib.sha256(config.encode()).hexdigest()[:12]
        names = ", ".join(v.name for v in validators)
        # name_of reads these: the run spec names the base metric and the validators' config
        self.__qualname__ = f"validated({base}, [{names}], penalty={self.penalty:g}, {digest})"
        self.__name__ = f"validated({getattr(metric, '__name__', type(metric).__name__)})"

    @property
    def lm_calls(self) -> int:
        """The LM calls its validators (each :class:`LMJudge`) have made."""
        return sum(getattr(v, "lm_calls", 0) for v in self.validators)

    def __repr__(self) -> str:
        return self.__qualname__

    def __call__(self, example: Example, prediction: Prediction) -> Score:
        return self._with_validators(example, prediction, as_score(self.metric(example,
                                                                              prediction)))

    def batch(self, examples: Sequence[Example], predictions: Sequence[Prediction]
              ) -> list[Score]:
        """Equal to calling the metric on each pair; the base metric's own ``batch`` when it
        has one."""
        base_batch = getattr(self.metric, "batch", None)
        scores = (list(base_batch(examples, predictions)) if base_batch is not None
                  else [self.metric(e, p) for e, p in zip(examples, predictions, strict=True)])
        if len(scores) != len(examples):
            raise ValueError(f"batch returned {len(scores)} scores for {len(examples)} "
                             "predictions")
        return [self._with_validators(e, p, as_score(s))
                for e, p, s in zip(examples, predictions, scores, strict=True)]

    def _with_validators(self, example: Example, prediction: Prediction, base: Score) -> Score:
        if prediction.outputs is None:  # nothing to validate: the base metric said why
            return base
        failed = check_outputs(self.validators, dict(example.inputs), dict(prediction.outputs))
        if not failed:
            return base
        value = base.value - self.penalty * len(failed) / len(self.validators)
        value = max(value, min(base.value, 0.0))  # floored at 0 (or at a negative base)
        feedback = " ".join(part for part in (base.feedback.strip(), _feedback_line(failed))
                            if part)
        return Score(value, feedback)


def validated(metric: Metric, validators: Sequence[Validator], *, penalty: float = 1.0
              ) -> Validated:
    """``metric`` with ``validators`` as fitness terms and feedback: a prediction failing
    ``k`` of ``n`` validators scores ``metric - penalty * k / n`` (floored at 0), and its
    feedback names each failure (``validator 'json': ...``) for the reflection LM. A reply
    that could not be parsed is scored by ``metric`` alone. ``.lm_calls`` counts the judges'
    LM calls (add them to what a search cost).

    >>> # evo.optimize(..., metric=validated(evo.metrics.f1, [JSONSchema("answer", schema)]))
    """
    return Validated(metric, validators, penalty=penalty)


@dataclass(frozen=True)
class Refined:
    """What :func:`refine` got: the prediction it returns, how many attempts it made, and the
    failed checks of each attempt (``(name, message)``; empty for a passing attempt)."""

    prediction: Prediction
    attempts: int
    failures: list[list[tuple[str, str]]]

    @property
    def passed(self) -> bool:
        """Whether the returned prediction passed every validator."""
        return self.prediction.ok and not self.failures[-1]


def _advice(previous: Prediction, failed: Sequence[tuple[str, str]]) -> str:
    checks = "\n".join(f"- validator '{name}': {message}" for name, message in failed)
    return ("\n\nAn earlier answer to this input failed these checks:\n" + checks
            + "\nThe earlier answer was:\n" + previous.text.strip()
            + "\nAnswer again, fixing these problems.")


def refine(program: Program, example: Example, session: LMSession,
           validators: Sequence[Validator], *, retries: int = 2, max_tokens: int = 48
           ) -> Refined:
    """Answer ``example`` with ``program``, and while the answer fails a validator (or cannot
    be parsed) ask again, at most ``retries`` more times, with the program's instruction
    followed by advice naming the failed checks and the previous answer (a new program; the
    given one is unchanged). Returns the first passing attempt, else the last. A failed LM
    call ends the attempts and is returned as a :class:`Prediction` with its ``error``, never
    raised (the session has already retried it)."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"refine(): retries must be a whole number >= 0, got {retries!r}")
    current = program
    failures: list[list[tuple[str, str]]] = []
    prediction = Prediction("", None, "no attempt")
    for _attempt in range(retries + 1):
        got = predict_program(current, [example], session, max_tokens=max_tokens)[0]
        if isinstance(got, Cell):
            prediction = got.prediction
            if (got.kind or "").startswith("lm"):
                failures.append([("lm", got.error or "the LM call failed")])
                break
            failed = [("format", got.error or prediction.error or "the reply was not usable")]
        elif got.outputs is None:
            prediction = got
            failed = [("format", got.error or "the reply could not be parsed")]
        else:
            prediction = got
            failed = check_outputs(validators, dict(example.inputs), dict(got.outputs))
        failures.append(failed)
        if not failed:
            break
        current = program.model_copy(
            update={"instruction": program.instruction + _advice(prediction, failed)})
    return Refined(prediction=prediction, attempts=len(failures), failures=failures)
