"""Examples and datasets: validated rows, stable ids, seeded stratified splits.

An :class:`Example` is one row of a task: named input texts and named gold outputs. A
:class:`Dataset` is a list of examples that share the same fields (and, for classification, a
label set). Bad input is rejected where it enters with a :class:`DataError` naming the source,
the row and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator

from evo.errors import EvoError


class DataError(EvoError, ValueError):
    """Bad input data. The message names the source (file or dataset), the row and the field."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        where = ", ".join(
            part for part in (
                source,
                f"row {row}" if row is not None else None,
                f"field {field!r}" if field is not None else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.source, self.row, self.field = source, row, field


TRACE_SUFFIX = ":trace"


class Example(BaseModel):
    """One task row: ``inputs`` (field -> text) and gold ``outputs`` (field -> text).

    ``id`` is stable across runs (content hash unless given), so caches and score matrices can key
    on it.

    >>> ex = Example(inputs={"question": "Who wrote Hamlet?"}, outputs={"label": "human"})
    >>> ex.id == Example(inputs={"question": "Who wrote Hamlet?"}, outputs={"label": "human"}).id
    True
    """

    model_config = ConfigDict(frozen=True)

    inputs: dict[str, str]
    outputs: dict[str, str]
    id: str = ""

    @field_validator("inputs", "outputs")
    @classmethod
    def _non_empty_texts(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must name at least one field")
        for name, text in value.items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"field {name!r} is empty")
        return value

    def model_post_init(self, __context: object) -> None:
        if not self.id:
            digest = hashlib.sha256(
                json.dumps([self.inputs, self.outputs], sort_keys=True).encode()
            ).hexdigest()[:16]
            object.__setattr__(self, "id", digest)

    def as_trace(self, outputs: dict[str, str]) -> Example:
        """This example's inputs shown with other ``outputs`` (a teacher's bootstrapped run),
        under the id ``<id>:trace`` so it stays recognisable as the same example."""
        return Example(inputs=self.inputs, outputs=outputs, id=f"{self.id}{TRACE_SUFFIX}")

    @property
    def source_id(self) -> str:
        """The id of the example this one is a trace of (its own id otherwise)."""
        return self.id.removesuffix(TRACE_SUFFIX)

    @property
    def label(self) -> str:
        """The gold text of the single output field (classification tasks)."""
        if len(self.outputs) != 1:
            raise ValueError(f"example {self.id} has {len(self.outputs)} outputs, not one")
        return next(iter(self.outputs.values()))


@dataclass(frozen=True)
class Dataset:
    """Examples sharing one schema. ``labels`` is the allowed set for a single class output.

    Repeats of an example are dropped with one warning (:func:`distinct_examples`): the score
    matrix keys on ids, and a repeat could otherwise land in two splits.
    """

    name: str
    examples: tuple[Example, ...]
    input_fields: tuple[str, ...]
    output_fields: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "examples", distinct_examples(self.examples, self.name))
        for row, ex in enumerate(self.examples):  # rows reported 1-based, like the file loaders
            for field in self.input_fields:
                if field not in ex.inputs:
                    raise DataError("missing input field", source=self.name, row=row + 1,
                                    field=field)
            for field in self.output_fields:
                if field not in ex.outputs:
                    raise DataError("missing output field", source=self.name, row=row + 1,
                                    field=field)
            if self.labels is not None:
                gold = ex.outputs[self.output_fields[0]]
                if gold not in self.labels:
                    raise DataError(f"label {gold!r} is not one of {list(self.labels)}",
                                    source=self.name, row=row + 1, field=self.output_fields[0])

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    @property
    def signature(self) -> str:
        """The task signature, e.g. ``"question -> label"``."""
        return f"{', '.join(self.input_fields)} -> {', '.join(self.output_fields)}"

    def with_examples(self, examples: Iterable[Example], name: str | None = None) -> Dataset:
        return Dataset(name or self.name, tuple(examples), self.input_fields, self.output_fields,
                       self.labels, self.description)

    def split(self, sizes: Sequence[int], *, seed: int = 0, stratify: bool = True
              ) -> list[Dataset]:
        """Seeded, disjoint splits of the given sizes (stratified by label when there are labels).

        Stratification keeps each label's share in every split as close as the sizes allow.
        """
        total = sum(sizes)
        if total > len(self.examples):
            raise DataError(f"splits of {list(sizes)} need {total} examples, dataset has "
                            f"{len(self.examples)}", source=self.name)
        rng = random.Random(seed)
        if not (stratify and self.labels):
            order = list(self.examples)
            rng.shuffle(order)
            parts, start = [], 0
            for size in sizes:
                parts.append(order[start:start + size])
                start += size
        else:
            parts = _stratified(self.examples, self.output_fields[0], sizes, rng)
        suffixes = ["train", "val", "test"] + [f"part{i}" for i in range(3, len(sizes))]
        return [self.with_examples(p, f"{self.name}:{suffixes[i]}") for i, p in enumerate(parts)]


def distinct_examples(examples: Iterable[Example], what: str) -> tuple[Example, ...]:
    """``examples`` with each example once (the first kept, order kept), the one de-duplication
    rule of evo: a row repeating an earlier one (the same inputs and outputs, hence the same id)
    is dropped, with one warning (:func:`warn_dropped`) saying how many; two *different*
    examples under one explicit id are a :class:`DataError` naming both rows. ``what`` names the
    data in both (``"trainset"``, a dataset's name).

    A repeated example would be scored twice under one id (the score matrix keys on ids) and
    could land in two splits.

    >>> a = Example(inputs={"q": "2+2"}, outputs={"a": "4"}, id="q1")
    >>> distinct_examples([a, a], "mine") == (a,)  # (warns: 1 duplicate example dropped)
    True
    """
    examples = tuple(examples)
    seen: dict[str, tuple[int, Example]] = {}
    kept = []
    for row, ex in enumerate(examples, start=1):
        if not isinstance(ex, Example):
            raise DataError(f"expected an evo.Example, got {type(ex).__name__}", source=what,
                            row=row)
        first = seen.setdefault(ex.id, (row, ex))
        if first[0] == row:  # (not `first[1] is ex`: a list may hold one object twice)
            kept.append(ex)
        elif (first[1].inputs, first[1].outputs) != (ex.inputs, ex.outputs):
            raise DataError(f"id {ex.id!r} also names the different example in row {first[0]}",
                            source=what, row=row)
    dropped = len(examples) - len(kept)
    if dropped:
        warn_dropped(f"{what}: {dropped} duplicate example{'s' * (dropped > 1)} dropped (the "
                     f"same inputs and outputs as an earlier row); {len(kept)} left")
    return tuple(kept)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_dropped(message: str) -> None:
    """Say that data was dropped (repeated or conflicting rows, overlapping splits): one
    ``UserWarning`` ``"evo: <message>"``, the same mechanism everywhere, pointing at the first
    caller outside evo (so Python shows it once per line of the user's code and message)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR) or (
            frame.f_code.co_filename, frame.f_code.co_name) == ("<string>", "__init__")):
        frame, level = frame.f_back, level + 1  # (that __init__: a dataclass's, made by exec)
    warnings.warn(f"evo: {message}", UserWarning, stacklevel=level)


def _stratified(examples: Sequence[Example], field: str, sizes: Sequence[int],
                rng: random.Random) -> list[list[Example]]:
    """Every split holds, per label, the floor or ceil of its proportional share."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.outputs[field]].append(ex)
    labels = sorted(by_label)
    for label in labels:
        rng.shuffle(by_label[label])
    n = len(examples)
    rows = [*sizes, n - sum(sizes)]  # a leftover row: row and column sums are then exact
    totals = [len(by_label[label]) for label in labels]
    # Controlled rounding of the quota matrix rows[j] * totals[l] / n: start from the floors and
    # hand out the missing units on fractional cells by augmenting paths (a bipartite
    # b-matching between splits and labels, which always exists for such a matrix).
    counts = [[r * t // n for t in totals] for r in rows]
    open_cell = [[(r * t) % n != 0 for t in totals] for r in rows]
    row_need = [r - sum(c) for r, c in zip(rows, counts)]
    col_need = [t - sum(c[col] for c in counts) for col, t in enumerate(totals)]
    raised = [[False] * len(totals) for _ in rows]
    order = list(range(len(totals)))
    while any(row_need):
        start = next(j for j, need in enumerate(row_need) if need)
        rng.shuffle(order)  # random tie-breaking: no label is favoured for the extra unit
        parent: dict[tuple[str, int], tuple[str, int] | None] = {("r", start): None}
        frontier, end = [("r", start)], None
        while frontier and end is None:
            nxt = []
            for kind, i in frontier:
                if kind == "r":
                    steps = [("c", col) for col in order
                             if open_cell[i][col] and not raised[i][col]]
                else:
                    steps = [("r", j) for j in range(len(rows)) if raised[j][i]]
                for node in steps:
                    if node not in parent:
                        parent[node] = (kind, i)
                        if node[0] == "c" and col_need[node[1]]:
                            end = node
                            break
                        nxt.append(node)
                if end:
                    break
            frontier = nxt
        if end is None:
            raise AssertionError("no rounding found (cannot happen for a consistent matrix)")
        col_need[end[1]] -= 1
        row_need[start] -= 1
        node = end
        while parent[node] is not None:
            prev = parent[node]
            if node[0] == "c":  # row prev[1] -> column node[1]: raise that cell
                raised[prev[1]][node[1]] = True
            else:  # column prev[1] -> row node[1]: lower that cell back
                raised[node[1]][prev[1]] = False
            node = prev
    parts, taken = [], [0] * len(labels)
    for j in range(len(sizes)):
        part = []
        for col, label in enumerate(labels):
            k = counts[j][col] + raised[j][col]
            part += by_label[label][taken[col]:taken[col] + k]
            taken[col] += k
        rng.shuffle(part)
        parts.append(part)
    return parts


@dataclass(frozen=True)
class Task:
    """A ready task: train / val / test splits of one dataset plus what a program needs to know.

    No example is in two splits: one found in test is dropped from val and train, one in val
    from train (with a warning, :func:`warn_dropped`).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset

    def __post_init__(self) -> None:
        # No example in two splits: test stays as given, val loses what test holds, train what
        # val or test hold (a leak into train or val would inflate the held-out scores).
        held: set[str] = set()
        for split, later in (("test", ""), ("val", "test"), ("train", "val or test")):
            part: Dataset = getattr(self, split)
            kept = [ex for ex in part if ex.source_id not in held]
            if len(kept) < len(part):
                dropped = len(part) - len(kept)
                warn_dropped(f"{self.name}: {dropped} example{'s' * (dropped > 1)} dropped from "
                             f"{split}: also in {later}; {len(kept)} left")
                object.__setattr__(self, split, part.with_examples(kept))
            held.update(ex.source_id for ex in part)

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.train.labels

    @property
    def signature(self) -> str:
        return self.train.signature

    @property
    def description(self) -> str:
        return self.train.description
