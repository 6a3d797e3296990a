"""The run record: what a run directory's JSON files hold, defined once.

::

    run.json         RunInfo      what the run is (spec) and the `evo run` command line (cli)
    checkpoint.json  Checkpoint   the search state after the last evaluation, while it runs
    result.json      ResultRecord the finished search: summary, trade-off, state, replies

Each is a frozen dataclass with ``to_dict`` (the JSON object written, keys in the order the files
have always had) and ``from_dict`` (the object read back, checked for shape: a wrong one raises
:class:`ValueError` saying which field, which the run store turns into a
:class:`~evo.errors.DamagedFileError` naming the file). The three share :class:`SearchRecord`,
the search state as JSON data (instructions with their origin, candidates with their lineage,
the validation example ids, the failed cells and the score matrix).

Every file carries ``version`` (:data:`VERSION`). Files written before it existed have none and
read as version 0: the same fields, so they load unchanged (``from_dict`` is where a later
version migrates older files). Keys a reader does not know are kept in ``extra`` and written
back, so a file from a newer evo is not stripped by an older one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evo.search.engine import SearchState

VERSION = 1  # 0: the files written before the record had a version (same fields)
RUN_MARKER = "evo_run"  # run.json's marker key
RESULT_MARKER = "evo_result"  # result.json's: a folder Result.save wrote is recognised by it


def _check(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ValueError(f'"{where}" {what}')


def _obj(raw: Any, where: str) -> dict[str, Any]:
    _check(isinstance(raw, dict), where, "is not an object")
    return raw


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    _check(isinstance(raw.get(key), list), key, "is missing or not a list")
    return raw[key]


def _version(raw: Mapping[str, Any]) -> int:
    version = raw.get("version", 0)
    _check(isinstance(version, int) and not isinstance(version, bool) and version >= 0,
           "version", f"is not a record version ({version!r})")
    return version


def _text(value: Any) -> Any:
    """An enum's value (a stop reason), anything else as it is."""
    return getattr(value, "value", value)


def _number(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


@dataclass(frozen=True)
class SearchRecord:
    """The search state as JSON data. ``instructions``: ``{"text", "origin"}`` per archived
    instruction; ``candidates``: ``{"id", "genome", "parents", "op", "iteration", "accepted",
    "val_score", "note"}`` (``val_score`` None until validated); ``val_example_ids`` name the
    score matrix's columns; ``cell_errors``: ``{"candidate", "example", "error"}`` per failed
    cell; ``scores``: the validation score matrix, None where a cell was not evaluated;
    ``dense``: the cells' dense scores (the model's probability of the gold answer under label
    scoring), None where a cell has none, and absent when no cell has one."""

    instructions: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    val_example_ids: list[str]
    cell_errors: list[dict[str, Any]]
    scores: list[list[float | None]]
    dense: list[list[float | None]] | None = None

    KEYS = ("instructions", "candidates", "val_example_ids", "cell_errors", "scores", "dense")

    @classmethod
    def from_state(cls, state: SearchState) -> SearchRecord:
        archive, matrix = state.archive, state.matrix
        return cls(
            instructions=[{"text": text, "origin": origin}
                          for text, origin in zip(archive.instructions, archive.origins,
                                                  strict=True)],
            candidates=[{"id": c.id, "genome": c.genome, "parents": list(c.parents),
                         "op": c.op, "iteration": c.iteration, "accepted": c.accepted,
                         "val_score": _number(c.val_score), "note": c.note}
                        for c in state.candidates],
            val_example_ids=[ex.id for ex in matrix.examples],
            cell_errors=[{"candidate": row, "example": matrix.examples[col].id,
                          "error": cell.error}
                         for (row, col), cell in sorted(matrix.cells.items())
                         if cell.error is not None],
            scores=[[_number(v) for v in row] for row in matrix.scores.tolist()],
            dense=None if np.isnan(matrix.dense).all() else
            [[_number(v) for v in row] for row in matrix.dense.tolist()])

    def to_dict(self) -> dict[str, Any]:
        # "dense" only when some cell has one: the files of runs without label scoring are as
        # they always were
        return {key: getattr(self, key) for key in self.KEYS
                if key != "dense" or self.dense is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchRecord:
        for key in ("instructions", "candidates", "val_example_ids", "scores"):
            _list(raw, key)
        for i, c in enumerate(raw["candidates"]):
            _check(isinstance(c, dict) and isinstance(c.get("id"), int), f"candidates[{i}]",
                   "is not a candidate (an object with an integer id)")
        errors = raw.get("cell_errors", [])
        _check(isinstance(errors, list), "cell_errors", "is not a list")
        dense = raw.get("dense")
        _check(dense is None or isinstance(dense, list), "dense", "is not a list")
        return cls(raw["instructions"], raw["candidates"], raw["val_example_ids"], errors,
                   raw["scores"], dense)


def _extra(raw: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in known}


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: the run's identity. ``spec`` (program, data digests, optimizer, seed,
    models, metric, description) is what a resume must match; ``cli`` the `evo run` settings
    (None for a run made from Python); ``created`` a Unix time."""

    spec: dict[str, Any]
    cli: dict[str, Any] | None = None
    created: float = 0.0
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = (RUN_MARKER, "version", "created", "spec", "cli")

    def to_dict(self) -> dict[str, Any]:
        return {RUN_MARKER: 1, "version": self.version, "created": self.created,
                "spec": self.spec, "cli": self.cli, **self.extra}

    @classmethod
    def from_dict(cls, raw: Any) -> RunInfo:
        _check(isinstance(raw, dict) and RUN_MARKER in raw, RUN_MARKER,
               "is missing: not an evo run file (not an object with that key)")
        _check(isinstance(raw.get("spec"), dict), "spec", "is missing or not an object")
        _check(raw.get("cli") is None or isinstance(raw["cli"], dict), "cli",
               "is not an object")
        created = raw.get("created", 0.0)
        _check(isinstance(created, int | float) and not isinstance(created, bool), "created",
               "is not a time")
        return cls(spec=raw["spec"], cli=raw.get("cli"), created=float(created),
                   version=_version(raw), extra=_extra(raw, cls.KEYS))


@dataclass(frozen=True)
class Checkpoint:
    """``checkpoint.json``: the search state after the last evaluation (for reading, not for
    restoring: a resume replays the journal). ``best`` is ``{"candidate", "val_score"}`` once a
    candidate is validated; ``sitting`` the process that wrote it; ``usage`` what the run's
    sessions used in it; ``sittings`` the journal's ledger (what each sitting received), which
    a resume compares with the journal to catch lost answers."""

    iteration: int
    metric_calls: int
    best: dict[str, Any] | None
    stop_reason: str | None
    sitting: int
    usage: dict[str, Any]
    sittings: list[dict[str, Any]]
    record: SearchRecord
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("version", "iteration", "metric_calls", "best", "stop_reason", "sitting", "usage",
            "sittings", *SearchRecord.KEYS)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "iteration": self.iteration,
                "metric_calls": self.metric_calls, "best": self.best,
                "stop_reason": _text(self.stop_reason), "sitting": self.sitting,
                "usage": self.usage, "sittings": self.sittings, **self.record.to_dict(),
                **self.extra}

    @classmethod
    def from_dict(cls, raw: Any) -> Checkpoint:
        raw = _obj(raw, "checkpoint")
        sittings = _list(raw, "sittings")
        for i, s in enumerate(sittings):
            _check(isinstance(s, dict) and all(isinstance(s.get(k), int | float)
                                               for k in ("answers", "failed")),
                   f"sittings[{i}]", "is not a sitting (answers and failed counts)")
        return cls(iteration=raw.get("iteration", 0), metric_calls=raw.get("metric_calls", 0),
                   best=raw.get("best"), stop_reason=raw.get("stop_reason"),
                   sitting=raw.get("sitting", 0), usage=raw.get("usage") or {},
                   sittings=sittings, record=SearchRecord.from_dict(raw),
                   version=_version(raw), extra=_extra(raw, cls.KEYS))

    def answers_held(self) -> int:
        """Answers the journal held when this was written (failures aside: an outage's are
        taken back)."""
        return answers_held(self.sittings)


def answers_held(ledger: list[dict[str, Any]]) -> int:
    """Answers received (failures aside) in a journal ledger."""
    return sum(int(s["answers"]) - int(s["failed"]) for s in ledger)


@dataclass(frozen=True)
class ResultRecord:
    """``result.json``: the finished search. ``summary`` is :meth:`evo.api.Result.search_summary`
    (scores, budget, usage, sittings, stop reason); ``tradeoff`` the (validation accuracy,
    prompt length) Pareto set as ``{"candidate", "val_score", "prompt_chars"}``;
    ``prompt_chars`` per validated candidate; ``val_examples`` the validation examples
    (``{"id", "inputs", "outputs"}``); ``best_candidate`` the best candidate's id; ``replies``
    the baseline's and the best candidate's reply per validation example."""

    summary: dict[str, Any]
    tradeoff: list[dict[str, Any]]
    prompt_chars: dict[Any, int]
    record: SearchRecord
    val_examples: list[dict[str, Any]]
    best_candidate: int
    replies: dict[str, list[str | None]]
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = (RESULT_MARKER, "version", "summary", "tradeoff", "prompt_chars", *SearchRecord.KEYS,
            "val_examples", "best_candidate", "replies")

    def to_dict(self) -> dict[str, Any]:
        return {RESULT_MARKER: 1, "version": self.version, "summary": self.summary,
                "tradeoff": self.tradeoff, "prompt_chars": self.prompt_chars,
                **self.record.to_dict(), "val_examples": self.val_examples,
                "best_candidate": self.best_candidate, "replies": self.replies, **self.extra}

    @classmethod
    def from_dict(cls, raw: Any) -> ResultRecord:
        raw = _obj(raw, "result")
        _check(raw.get(RESULT_MARKER) == 1, RESULT_MARKER, "is missing: not a saved evo result")
        summary = raw.get("summary", {})
        _check(isinstance(summary, dict), "summary", "is not an object")
        best = raw.get("best_candidate", 0)
        _check(isinstance(best, int), "best_candidate", "is not a candidate id")
        return cls(summary=summary, tradeoff=raw.get("tradeoff", []),
                   prompt_chars=raw.get("prompt_chars", {}), record=SearchRecord.from_dict(raw),
                   val_examples=raw.get("val_examples", []), best_candidate=best,
                   replies=raw.get("replies", {}), version=_version(raw),
                   extra=_extra(raw, cls.KEYS))
