"""User datasets from JSONL or CSV files, validated row by row.

Each bad row raises one :class:`~evo.data.DataError` that names the file, the 1-based line where
the record starts, and the field, so a user can open the file at that line and fix it.

Value rules (the same for both formats):

* Text fields must be non-empty strings (whitespace-only counts as empty). Text is kept as is.
* JSON numbers are coerced with ``str()`` (``3`` -> ``"3"``, ``2.5`` -> ``"2.5"``): numeric
  answers and numeric class ids are common and unambiguous. Booleans, ``null``, lists and
  objects are rejected, since there is no single obvious text for them (``true`` vs ``"True"``).
* With ``labels``, the single output field must hold one of the allowed labels (exact match).
* Extra fields/columns are ignored.

Exact duplicate inputs are then removed (first kept) and inputs that occur with conflicting
outputs are dropped altogether (see :func:`dedupe`): a repeated input could land in both train
and test, and a conflicting one has no single right answer.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from evo.data import DataError, Dataset, Example

log = logging.getLogger(__name__)

Row = tuple[dict[str, str], dict[str, str]]
"""One normalized record: (inputs, outputs)."""


def load_jsonl(path: str | Path, *, inputs: Sequence[str], outputs: Sequence[str],
               labels: Sequence[str] | None = None, name: str | None = None,
               description: str = "") -> Dataset:
    """Load a JSON Lines file: one JSON object per line, blank lines skipped."""
    path = Path(path)
    _check_schema(path, inputs, outputs, labels)
    return _dataset(path, _jsonl_records(path), inputs, outputs, labels, name, description)


def load_csv(path: str | Path, *, inputs: Sequence[str], outputs: Sequence[str],
             labels: Sequence[str] | None = None, name: str | None = None,
             description: str = "", delimiter: str = ",") -> Dataset:
    """Load a CSV file with a header row naming the columns (UTF-8, a BOM is tolerated)."""
    path = Path(path)
    _check_schema(path, inputs, outputs, labels)
    return _dataset(path, _csv_records(path, [*inputs, *outputs], delimiter), inputs, outputs,
                    labels, name, description)


def load_file(path: str | Path, *, inputs: Sequence[str], outputs: Sequence[str],
              labels: Sequence[str] | None = None, name: str | None = None,
              description: str = "", delimiter: str | None = None) -> Dataset:
    """Load ``.jsonl``/``.ndjson`` or ``.csv``/``.tsv`` by suffix (``.tsv`` means tab-separated)."""
    path = Path(path)
    suffix = path.suffix.lower()
    common = dict(inputs=inputs, outputs=outputs, labels=labels, name=name,
                  description=description)
    if suffix in (".jsonl", ".ndjson"):
        if delimiter is not None:
            raise TypeError("delimiter applies to CSV files only")
        return load_jsonl(path, **common)
    if suffix in (".csv", ".tsv"):
        return load_csv(path, delimiter=delimiter or ("\t" if suffix == ".tsv" else ","),
                        **common)
    raise DataError(f"unsupported file type {suffix or '(none)'!r}: use .jsonl, .csv or .tsv",
                    source=str(path))


def dedupe(rows: Iterable[Row]) -> tuple[list[Row], int, int]:
    """Drop repeated inputs: keep the first of identical rows, drop every row of a conflict.

    Returns ``(kept, n_duplicates_removed, n_conflicting_rows_removed)``; order is preserved.
    """
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row[0], sort_keys=True), []).append(row)
    kept, duplicates, conflicts = [], 0, 0
    for group in groups.values():
        if all(outputs == group[0][1] for _, outputs in group):
            kept.append(group[0])
            duplicates += len(group) - 1
        else:
            conflicts += len(group)
    return kept, duplicates, conflicts


def _check_schema(path: Path, inputs: Sequence[str], outputs: Sequence[str],
                  labels: Sequence[str] | None) -> None:
    # Programming mistakes in the call, not bad rows: caught before the file is read.
    if isinstance(inputs, str) or isinstance(outputs, str):
        raise TypeError("inputs and outputs are lists of field names, not strings")
    if not inputs or not outputs:
        raise ValueError("name at least one input field and one output field")
    if set(inputs) & set(outputs):
        raise ValueError(f"fields {sorted(set(inputs) & set(outputs))} are both input and output")
    if labels is not None:
        if len(outputs) != 1:
            raise ValueError("labels need exactly one output field")
        if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
            raise ValueError("labels must be non-empty strings")
    if not path.is_file():
        raise DataError("file not found", source=str(path))


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, object]]]:
    # Read bytes and decode per line, so an encoding error also names its line.
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"not UTF-8 ({err.reason})", source=str(path),
                                row=line_no) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON: {err.msg} (column {err.colno})",
                                source=str(path), row=line_no) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}",
                                source=str(path), row=line_no)
            yield line_no, record


def _csv_records(path: Path, needed: Sequence[str], delimiter: str
                 ) -> Iterator[tuple[int, Mapping[str, object]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            missing = [f for f in needed if f not in header]
            if missing:
                raise DataError(f"column missing from header {header}", source=str(path), row=1,
                                field=missing[0])
            start = reader.line_num + 1  # a quoted cell may span lines: report where rows start
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    if len(cells) > len(header):
                        raise DataError(f"{len(cells)} cells but the header has {len(header)}",
                                        source=str(path), row=start)
                    # A short row leaves trailing columns absent -> "missing field" below.
                    yield start, dict(zip(header, cells))
                start = reader.line_num + 1
        except UnicodeDecodeError as err:
            raise DataError(f"not UTF-8 ({err.reason})", source=str(path),
                            row=reader.line_num + 1) from None
        except csv.Error as err:
            raise DataError(f"malformed CSV: {err}", source=str(path),
                            row=reader.line_num) from None


def _text(record: Mapping[str, object], field: str, source: str, row: int) -> str:
    if field not in record:
        raise DataError("missing field", source=source, row=row, field=field)
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"expected text, got {type(value).__name__} {value!r}", source=source,
                        row=row, field=field)
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise DataError("empty value", source=source, row=row, field=field)
    return text


def _dataset(path: Path, records: Iterable[tuple[int, Mapping[str, object]]],
             inputs: Sequence[str], outputs: Sequence[str], labels: Sequence[str] | None,
             name: str | None, description: str) -> Dataset:
    source = str(path)
    allowed = set(labels) if labels is not None else None
    rows: list[Row] = []
    for row, record in records:
        ins = {f: _text(record, f, source, row) for f in inputs}
        outs = {f: _text(record, f, source, row) for f in outputs}
        if allowed is not None and outs[outputs[0]] not in allowed:
            raise DataError(f"label {outs[outputs[0]]!r} is not one of {list(labels or ())}",
                            source=source, row=row, field=outputs[0])
        rows.append((ins, outs))
    if not rows:
        raise DataError("no data rows (empty file?)", source=source)
    kept, duplicates, conflicts = dedupe(rows)
    if duplicates or conflicts:
        log.warning("%s: removed %d duplicate rows and %d rows whose inputs repeat with a "
                    "different output", source, duplicates, conflicts)
    if not kept:
        raise DataError("no rows left after removing conflicting duplicates", source=source)
    return Dataset(name or path.stem, tuple(Example(inputs=i, outputs=o) for i, o in kept),
                   tuple(inputs), tuple(outputs), tuple(labels) if labels is not None else None,
                   description)
