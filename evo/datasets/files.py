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
* Every file is untrusted: a byte that is not UTF-8 is reported on its line and column, a line
  over :data:`MAX_LINE_BYTES` or JSON nested too deeply is one error, and a CSV quote that never
  closes (the csv module would silently merge the rows after it into one field) is refused,
  naming the line where it opened. Legal multi-line quoted fields load as they are.

Exact duplicate inputs are then removed (first kept) and inputs that occur with conflicting
outputs are dropped altogether (see :func:`dedupe`): a repeated input could land in both train
and test, and a conflicting one has no single right answer.
"""

from __future__ import annotations

import csv
import json
import math
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from evo.data import DataError, Dataset, Example, warn_dropped
from evo.errors import ConfigError

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


def dedupe(rows: Iterable[Row], *, what: str | None = None) -> tuple[list[Row], int, int]:
    """Drop repeated inputs: keep the first of identical rows, drop every row of a conflict.

    Returns ``(kept, n_duplicates_removed, n_conflicting_rows_removed)``; order is preserved.
    With ``what`` (the file or dataset) anything dropped is said in one warning, as
    :func:`evo.data.distinct_examples` says it.

    This rule is stricter than :func:`~evo.data.distinct_examples` (which drops only repeats of
    a whole example) because a file can hold one text twice with two labels: that text has no
    single right answer, and keeping either row would let the other label land in another split.
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
    if what is not None and (duplicates or conflicts):
        said = []
        if duplicates:
            said.append(f"{duplicates} duplicate example{'s' * (duplicates > 1)} dropped (the "
                        "same inputs and outputs as an earlier row)")
        if conflicts:
            said.append(f"{conflicts} example{'s' * (conflicts > 1)} dropped whose inputs "
                        "repeat with a different output (no single right answer)")
        warn_dropped(f"{what}: {'; '.join(said)}; {len(kept)} left")
    return kept, duplicates, conflicts


def _check_schema(path: Path, inputs: Sequence[str], outputs: Sequence[str],
                  labels: Sequence[str] | None) -> None:
    # Programming mistakes in the call, not bad rows: caught before the file is read.
    if isinstance(inputs, str) or isinstance(outputs, str):
        raise TypeError("inputs and outputs are lists of field names, not strings")
    if not inputs or not outputs:
        raise ConfigError("name at least one input field and one output field")
    for kind, names in (("input", inputs), ("output", outputs)):
        if any(not isinstance(n, str) or not n.strip() for n in names):
            raise ConfigError(f"{kind} field names must be non-empty: {list(names)}")
        if len(set(names)) < len(names):
            raise ConfigError(f"{kind} fields {list(names)} name one field twice")
    if set(inputs) & set(outputs):
        raise ConfigError(f"fields {sorted(set(inputs) & set(outputs))} are both input and "
                          "output")
    if labels is not None:
        if len(outputs) != 1:
            raise ConfigError("labels need exactly one output field")
        if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
            raise ConfigError(f"labels must be non-empty strings: {list(labels)}")
        if len(set(labels)) < len(labels):
            raise ConfigError(f"labels {list(labels)} name one label twice")
    if path.is_dir():
        raise DataError("is a folder, not a data file", source=str(path))
    if path.exists() and not path.is_file():
        raise DataError("is not a regular file (a pipe or a device?): evo reads data files",
                        source=str(path))
    if not path.exists():
        raise DataError("file not found", source=str(path))


MAX_LINE_BYTES = 16 << 20
"""A JSONL line or CSV line longer than this (16 MiB) is refused: no text field needs it."""

_PREVIEW = reprlib.Repr()
_PREVIEW.maxstring, _PREVIEW.maxother, _PREVIEW.maxlevel = 60, 60, 2


def _preview(value: object) -> str:
    """A short repr for error messages: huge or deeply nested values stay one readable line."""
    return _PREVIEW.repr(value)


def _lines(handle: BinaryIO, path: Path, *, bare_cr: bool) -> Iterator[tuple[int, str]]:
    """``(line_no, text)`` per physical line (ends kept), decoded one line at a time, so a bad
    byte or an overlong line is reported on its own line. Lines end at \\n (and \\r\\n); with
    ``bare_cr`` (CSV, whose reader takes a lone \\r as a line end) at a lone \\r too. In JSON a
    lone \\r is whitespace, so a JSONL line keeps it."""
    line_no = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"line longer than {MAX_LINE_BYTES:,} bytes", source=str(path),
                            row=line_no + 1)
        for piece in raw.splitlines(keepends=True) if bare_cr else (raw,):
            line_no += 1
            try:
                yield line_no, piece.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                column = len(piece[:err.start].decode("utf-8", "replace")) + 1
                raise DataError(f"not UTF-8 ({err.reason}: byte 0x{piece[err.start]:02x} at "
                                f"column {column})", source=str(path), row=line_no) from None


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, object]]]:
    with path.open("rb") as handle:
        for line_no, text in _lines(handle, path, bare_cr=False):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON: {err.msg} (column {err.colno})",
                                source=str(path), row=line_no) from None
            except RecursionError:
                raise DataError("JSON nested too deeply", source=str(path), row=line_no) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}",
                                source=str(path), row=line_no)
            yield line_no, record


class _RecordLines:
    """Feeds a csv reader physical lines and keeps those of the record being read, so each
    record can be checked against its raw text (see :func:`_check_quotes`)."""

    def __init__(self, lines: Iterator[tuple[int, str]]) -> None:
        self._lines, self.line_no, self.raw = lines, 0, []

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        self.line_no, text = next(self._lines)
        self.raw.append(text)
        return text

    def take(self) -> list[str]:
        """The physical lines of the record just read (and forget them)."""
        taken, self.raw = self.raw, []
        return taken


def _csv_records(path: Path, needed: Sequence[str], delimiter: str
                 ) -> Iterator[tuple[int, Mapping[str, object]]]:
    # a long text field is legal up to the line limit (csv's own default stops at 128 KiB)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    with path.open("rb") as handle:
        lines = _RecordLines(_lines(handle, path, bare_cr=True))
        reader = csv.reader(lines, delimiter=delimiter)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                return
            _check_quotes(path, 1, header, lines.take(), header, needed, delimiter)
            missing = [f for f in needed if f not in header]
            if missing:
                raise DataError(f"column missing from header {header}", source=str(path), row=1,
                                field=missing[0])
            twice = [f for f in needed if header.count(f) > 1]
            if twice:  # which of the two would be read is a guess: the user must say
                raise DataError("the column appears twice in the header", source=str(path),
                                row=1, field=twice[0])
            start = lines.line_no + 1  # a quoted cell may span lines: report where rows start
            for cells in reader:
                _check_quotes(path, start, cells, lines.take(), header, needed, delimiter)
                if any(cell.strip() for cell in cells):
                    if len(cells) > len(header):
                        raise DataError(f"{len(cells)} cells but the header has {len(header)}",
                                        source=str(path), row=start)
                    # A short row leaves trailing columns absent -> "missing field" below.
                    yield start, dict(zip(header, cells))
                start = lines.line_no + 1
        except csv.Error as err:
            hint = " (an unterminated quote?)" if "field limit" in str(err) else ""
            raise DataError(f"malformed CSV: {err}{hint}", source=str(path),
                            row=start if hint else lines.line_no) from None


def _looks_like_row(line: str, width: int, delimiter: str) -> bool:
    """Whether one physical line, quotes taken literally, holds ``width`` non-blank cells."""
    cells = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter,
                            quoting=csv.QUOTE_NONE), [])
    return len(cells) == width and all(cell.strip() for cell in cells)


def _check_quotes(path: Path, start: int, cells: list[str], physical: list[str],
                  header: list[str], needed: Sequence[str], delimiter: str) -> None:
    """Refuse a record whose quoted field never closed.

    Python's csv reader (non-strict) reads an unclosed quote silently on to the next quote
    character or the end of the file, merging the rows in between into one field. A legal
    multi-line field is kept; a field is refused when the record ends inside the quote (end of
    file), or when the record is malformed (under strict quoting rules, or short of a
    ``needed`` column: a short row may leave out optional trailing columns) and the lines it
    took in look like rows of the header's width (all cells non-blank).
    """
    multiline = next((i for i, cell in enumerate(cells) if "\n" in cell or "\r" in cell), None)
    if multiline is None and physical and physical[-1].endswith(("\n", "\r")):
        return
    try:
        list(csv.reader(physical, delimiter=delimiter, strict=True))
        at_end = False
        if len(cells) >= len(header) or all(f in header[:len(cells)] for f in needed):
            return
    except csv.Error as err:
        at_end = "end of data" in str(err)
    index = len(cells) - 1 if at_end else multiline
    if index is None:
        return
    offset = min(sum(cell.count("\n") for cell in cells[:index]), len(physical) - 1)
    opened, taken = start + offset, physical[offset:]
    span = len(taken)
    field = header[index] if index < len(header) else f"column {index + 1}"
    if at_end:
        raise DataError(f"unterminated quote: this field runs from line {opened} over "
                        f"{span} line{'s' * (span != 1)} to the end of the file",
                        source=str(path), row=opened,
                        field=field)
    rowlike = [n for n, line in enumerate(taken[:-1])
               if _looks_like_row(line, len(header), delimiter)]
    if rowlike:  # show a swallowed line rather than the quote's own where there is one
        shown = next((n for n in rowlike if n > 0), rowlike[0])
        raise DataError(f"unterminated quote: this field runs from line {opened} over {span} "
                        f"lines and swallows lines that look like rows (line {opened + shown}: "
                        f"{_preview(taken[shown].rstrip())})", source=str(path), row=opened,
                        field=field)


def _text(record: Mapping[str, object], field: str, source: str, row: int) -> str:
    if field not in record:
        raise DataError("missing field", source=source, row=row, field=field)
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"expected text, got {type(value).__name__} {_preview(value)}",
                        source=source, row=row, field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"expected text, got the number {value}", source=source, row=row,
                        field=field)
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
            raise DataError(f"label {_preview(outs[outputs[0]])} is not one of "
                            f"{_preview(list(labels or ()))}",
                            source=source, row=row, field=outputs[0])
        rows.append((ins, outs))
    if not rows:
        raise DataError("no data rows (empty file?)", source=source)
    kept = dedupe(rows, what=source)[0]
    if not kept:
        raise DataError("no rows left after removing conflicting duplicates", source=source)
    return Dataset(name or path.stem, tuple(Example(inputs=i, outputs=o) for i, o in kept),
                   tuple(inputs), tuple(outputs), tuple(labels) if labels is not None else None,
                   description)
