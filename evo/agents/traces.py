"""The trace store: every call an agent served, its grade when one arrives, and the examples a
quality filter makes of them.

One SQLite file (WAL, a busy timeout) that threads of one process and several processes on one
host can write at once. Each text (inputs, outputs, error, feedback, expected outputs) is
redacted before it is stored (:mod:`evo.agents.redact`) and, with a ``key``, encrypted
(:mod:`evo.agents.crypto`); ids, versions, numbers and times stay in clear, so counting and
filtering need no key. Retention (``max_age_s``, ``max_rows``) runs every 100 recorded calls
and on :meth:`TraceStore.apply_retention`. A damaged file is one
:class:`~evo.errors.DamagedFileError` naming it, never recreated behind the user's back.

::

    store = TraceStore(home / "traces.sqlite", key=os.environ["EVO_TRACE_KEY"])
    cid = store.record(agent="qa", version=1, inputs={"q": "2+2?"}, outputs={"a": "4"})
    store.feedback(cid, 1.0)
    store.examples("qa", QualityFilter(), outputs=["a"])   # [Example(inputs=..., outputs=...)]
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evo._io import write_text
from evo._sqlite import check_store, immediate, refuse_links, store_errors
from evo.agents.crypto import TextCipher, new_salt
from evo.agents.redact import PIIRedactor
from evo.data import DataError, Example
from evo.errors import ConfigError, DamagedFileError, EvoError, StorageError

__all__ = ["QualityFilter", "Trace", "TraceStore", "UnknownCallError"]

_FORMAT = "evo-traces-1"
_CHECK = "evo trace store key check"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL UNIQUE,
    agent TEXT NOT NULL,
    version INTEGER NOT NULL,
    t REAL NOT NULL,
    latency_s REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    inputs TEXT NOT NULL,        -- JSON object (encrypted with a key), as every text below
    outputs TEXT,
    error TEXT,
    score REAL,
    feedback TEXT,
    expected TEXT,
    graded_t REAL
);
CREATE INDEX IF NOT EXISTS traces_agent_t ON traces (agent, t);
"""
_COLUMNS = ("call_id", "agent", "version", "t", "latency_s", "prompt_tokens",
            "completion_tokens", "inputs", "outputs", "error", "score", "feedback", "expected",
            "graded_t")
_HINT = "restore it (with its -wal file) from a backup, or move it away to start a new store"
_DEFAULT_REDACTOR = PIIRedactor()


class UnknownCallError(EvoError, KeyError):
    """No call with that id in the trace store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _is_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str)
                                       for k, x in v.items())


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _bad(problem: str, field: str | None = None) -> DataError:
    err = DataError(problem, field=field)
    err.problem = problem  # type: ignore[attr-defined]  # re-raised with the file and row
    return err


_REQUIRED = object()
# field -> (check, what it must be, default when absent)
_SHAPE: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "call_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string", _REQUIRED),
    "agent": (lambda v: isinstance(v, str) and v != "", "a non-empty string", _REQUIRED),
    "version": (_is_count, "a whole number >= 0", _REQUIRED),
    "inputs": (_is_map, "an object of strings", _REQUIRED),
    "outputs": (lambda v: v is None or _is_map(v), "an object of strings or null", None),
    "error": (lambda v: v is None or isinstance(v, str), "a string or null", None),
    "latency_s": (_is_num, "a finite number", 0.0),
    "prompt_tokens": (_is_count, "a whole number >= 0", 0),
    "completion_tokens": (_is_count, "a whole number >= 0", 0),
    "t": (_is_num, "a finite number (unix time)", _REQUIRED),
    "score": (lambda v: v is None or _is_num(v), "a finite number or null", None),
    "feedback": (lambda v: v is None or isinstance(v, str), "a string or null", None),
    "expected": (lambda v: v is None or _is_map(v), "an object of strings or null", None),
    "graded_t": (lambda v: v is None or _is_num(v), "a finite number or null", None),
}


@dataclass(frozen=True)
class Trace:
    """One call an agent served: what it was asked, what it answered (or the error), its cost,
    and the grade given later (``score``, ``feedback``, the grader's ``expected`` outputs)."""

    call_id: str
    agent: str
    version: int
    inputs: dict[str, str]
    outputs: dict[str, str] | None
    error: str | None
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    t: float
    score: float | None = None
    feedback: str | None = None
    expected: dict[str, str] | None = None
    graded_t: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the call answered: no error and outputs present."""
        return self.error is None and self.outputs is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trace:
        """A trace from :meth:`to_dict`'s shape; a wrong one is a
        :class:`~evo.data.DataError` naming the field."""
        if not isinstance(d, Mapping):
            raise _bad(f"a trace must be a JSON object, not {type(d).__name__}")
        for name in d:
            if name not in _SHAPE:
                raise _bad("unknown field (a trace has: " + ", ".join(_SHAPE) + ")", str(name))
        values = {}
        for name, (check, what, default) in _SHAPE.items():
            if name not in d and default is _REQUIRED:
                raise _bad("missing", name)
            value = d.get(name, default)
            if not check(value):
                raise _bad(f"must be {what}, got {value!r:.60}", name)
            values[name] = float(value) if name in ("latency_s", "t") else value
        return cls(**values)


@dataclass(frozen=True)
class QualityFilter:
    """Which graded traces become training examples.

    A trace graded with ``expected`` outputs becomes ``Example(inputs, expected)`` whatever its
    score (``use_expected``: the grader gave the right answer). Any other graded trace becomes
    ``Example(inputs, its outputs)`` only when ``score >= min_score`` and, with
    ``success_only``, the call answered without error. With ``dedupe``, examples of the same
    inputs are kept once: the latest graded one. Traces that cannot make an example (a missing
    or empty output field) are skipped. Example ids are content hashes (:class:`~evo.data.Example`).
    """

    min_score: float = 1.0
    success_only: bool = True
    dedupe: bool = True
    use_expected: bool = True

    def select(self, traces: Sequence[Trace], outputs: Sequence[str]) -> list[Example]:
        """The examples of ``traces`` (in their order), with the ``outputs`` fields."""
        made: list[tuple[Trace, Example]] = []
        for trace in traces:
            if trace.score is None:
                continue
            if self.use_expected and trace.expected is not None:
                gold: dict[str, str] | None = trace.expected
            elif trace.score >= self.min_score and (trace.ok or not self.success_only):
                gold = trace.outputs
            else:
                continue
            fields = list(outputs) or list(gold or {})
            if gold is None or any(not gold.get(f, "").strip() for f in fields):
                continue
            try:
                made.append((trace, Example(inputs=trace.inputs,
                                            outputs={f: gold[f] for f in fields})))
            except ValidationError:  # an empty input field: nothing to learn from
                continue
        if not self.dedupe:
            return [example for _, example in made]
        latest: dict[str, int] = {}
        for i, (trace, _) in enumerate(made):
            key = json.dumps(trace.inputs, sort_keys=True)
            j = latest.get(key)
            if j is None or (trace.graded_t or 0.0) >= (made[j][0].graded_t or 0.0):
                latest[key] = i
        keep = set(latest.values())
        return [example for i, (_, example) in enumerate(made) if i in keep]


class TraceStore:
    """An agent's calls and grades in one SQLite file, safe for threads and processes.

    ``redactor`` runs on every text before it is stored (``None``: store texts as given);
    ``key`` encrypts them at rest (the salt lives in the store; a store made with a key opened
    without it, or with another, is a :class:`~evo.errors.ConfigError`). ``max_age_s`` and
    ``max_rows`` bound what is kept (:meth:`apply_retention`).
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 redactor: Callable[[str], str] | None = _DEFAULT_REDACTOR,
                 key: str | bytes | None = None, max_age_s: float | None = None,
                 max_rows: int | None = None) -> None:
        if max_age_s is not None and not (_is_num(max_age_s) and max_age_s > 0):
            raise ConfigError(f"max_age_s must be a positive number of seconds, got {max_age_s!r}")
        if max_rows is not None and not (_is_count(max_rows) and max_rows >= 1):
            raise ConfigError(f"max_rows must be a whole number >= 1, got {max_rows!r}")
        self.path = Path(path).expanduser()
        self.redactor, self.max_age_s, self.max_rows = redactor, max_age_s, max_rows
        refuse_links(self.path, doing="read or write trace stores", advice=", or name another path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path.parent}: cannot create the folder ({exc})") from exc
        if self.path.is_dir():
            raise DamagedFileError(self.path, "is a directory, not a trace store", hint=_HINT)
        self._lock = threading.RLock()
        self._recorded = 0
        with self._errors():
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                         check_same_thread=False)
        try:
            with self._errors():
                self._open()
            self._cipher = self._unlock(key)
        except BaseException:
            self._conn.close()
            raise

    # ---- opening ---------------------------------------------------------------------------
    def _open(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 30000")
        # What the file holds is checked before anything is written to it: another program's
        # database, or a damaged file, is left exactly as it was found.
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables.discard("sqlite_sequence")
        if tables and not {"meta", "traces"} <= tables:
            raise DamagedFileError(self.path, "is not an evo trace store (its tables: "
                                   f"{', '.join(sorted(tables)[:5])})", hint=_HINT)
        # Not quick_check: a trace store grows with every call served, too big to read whole
        # on each opening; a damaged page is caught when it is read.
        check_store(conn, self.path, {"traces": set(_COLUMNS)}, what="trace store", hint=_HINT,
                    schema=_SCHEMA, quick_check=False)

    def _unlock(self, key: str | bytes | None) -> TextCipher | None:
        """The cipher for this store's texts (None: stored in clear). A new store records
        whether it is encrypted, its salt and a check token, in one transaction."""
        with self._write() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {"format": _FORMAT}
                if key is not None:
                    salt = new_salt()
                    meta |= {"salt": salt.hex(), "check": TextCipher(key, salt).encrypt(_CHECK)}
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        if meta.get("format") != _FORMAT:
            raise DamagedFileError(self.path, f"is not an evo trace store (format "
                                   f"{meta.get('format')!r})", hint=_HINT)
        if "salt" not in meta:
            if key is not None:
                raise ConfigError(f"{self.path}: this trace store was made without a key (its "
                                  "texts are in clear): open it without one, or export it and "
                                  "import it into a new store made with the key")
            return None
        if key is None:
            raise ConfigError(f"{self.path}: this trace store is encrypted: open it with its "
                              "key (key=...)")
        cipher = TextCipher(key, bytes.fromhex(meta["salt"]))
        try:
            cipher.decrypt(meta["check"])
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        return cipher

    def _errors(self) -> AbstractContextManager[None]:
        """SQLite's errors as evo's, naming the store: a full disk or a lock held too long is
        a StorageError, a damaged file a DamagedFileError."""
        return store_errors(self.path, what="trace store", hint=_HINT, full="free some space",
                            busy="another process held it for 30 s; try again")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so two writers queue instead of deadlocking)."""
        with self._lock, self._errors(), immediate(self._conn) as conn:
            yield conn

    # ---- texts in and out ------------------------------------------------------------------
    def _seal(self, text: str | None) -> str | None:
        if text is None:
            return None
        if self.redactor is not None:
            text = self.redactor(text)
        return self._cipher.encrypt(text) if self._cipher is not None else text

    def _seal_map(self, fields: Mapping[str, str] | None) -> str | None:
        if fields is None:
            return None
        if self.redactor is not None:
            fields = {k: self.redactor(v) for k, v in fields.items()}
        text = json.dumps(dict(fields), ensure_ascii=False, sort_keys=True)
        return self._cipher.encrypt(text) if self._cipher is not None else text

    def _unseal(self, stored: str | None) -> str | None:
        if stored is None or self._cipher is None:
            return stored
        try:
            return self._cipher.decrypt(stored)
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None

    def _row(self, trace: Trace) -> tuple[Any, ...]:
        return (trace.call_id, trace.agent, trace.version, trace.t, trace.latency_s,
                trace.prompt_tokens, trace.completion_tokens, self._seal_map(trace.inputs),
                self._seal_map(trace.outputs), self._seal(trace.error), trace.score,
                self._seal(trace.feedback), self._seal_map(trace.expected), trace.graded_t)

    def _trace(self, row: Sequence[Any]) -> Trace:
        d = dict(zip(_COLUMNS, row, strict=True))
        for name in ("error", "feedback"):
            d[name] = self._unseal(d[name])
        for name in ("inputs", "outputs", "expected"):
            text = self._unseal(d[name])
            d[name] = None if text is None else json.loads(text)
        return Trace(**d)

    # ---- writing ---------------------------------------------------------------------------
    def record(self, *, agent: str, version: int, inputs: dict[str, str],
               outputs: dict[str, str] | None, error: str | None = None,
               latency_s: float = 0.0, prompt_tokens: int = 0, completion_tokens: int = 0,
               t: float | None = None, call_id: str | None = None) -> str:
        """Store one served call; returns its id (a new ``c-<uuid4 hex>`` unless given).
        Every 100 calls, retention runs with ``now = t``."""
        t = time.time() if t is None else t
        try:
            trace = Trace.from_dict({
                "call_id": call_id or f"c-{uuid.uuid4().hex}", "agent": agent,
                "version": version, "inputs": inputs, "outputs": outputs, "error": error,
                "latency_s": latency_s, "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens, "t": t})
        except DataError as exc:
            raise ConfigError(f"trace store {self.path}: cannot record a call: {exc}") from None
        row = self._row(trace)
        try:
            with self._write() as conn:
                conn.execute(f"INSERT INTO traces ({', '.join(_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(_COLUMNS))})", row)
                self._recorded += 1
                due = self._recorded % 100 == 0
        except sqlite3.IntegrityError:
            raise ConfigError(f"call id {trace.call_id!r} is already in trace store "
                              f"{self.path}") from None
        if due and (self.max_age_s is not None or self.max_rows is not None):
            self.apply_retention(t)
        return trace.call_id

    def feedback(self, call_id: str, score: float, text: str = "", *,
                 expected: dict[str, str] | None = None, t: float | None = None) -> Trace:
        """Grade call ``call_id``: ``score`` (a finite number), ``text`` (what was wrong or
        right) and optionally the ``expected`` outputs. A second grade replaces the first."""
        if not _is_num(score):
            raise ConfigError(f"feedback for call {call_id!r}: the score must be a finite "
                              f"number, got {score!r}")
        if expected is not None and not _is_map(expected):
            raise ConfigError(f"feedback for call {call_id!r}: expected must map output "
                              f"fields to strings, got {expected!r:.80}")
        graded_t = time.time() if t is None else t
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE traces SET score = ?, feedback = ?, expected = ?, graded_t = ? "
                "WHERE call_id = ?", (float(score), self._seal(text or None),
                                      self._seal_map(expected), graded_t, call_id)).rowcount
        if not changed:
            raise UnknownCallError(f"no call {call_id!r} in trace store {self.path}")
        return self.get(call_id)

    # ---- reading ---------------------------------------------------------------------------
    def get(self, call_id: str) -> Trace:
        with self._lock, self._errors():
            row = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM traces "
                                     "WHERE call_id = ?", (call_id,)).fetchone()
        if row is None:
            raise UnknownCallError(f"no call {call_id!r} in trace store {self.path}")
        return self._trace(row)

    @staticmethod
    def _where(agent: str | None, since: float | None, graded: bool | None,
               version: int | None = None, graded_since: float | None = None
               ) -> tuple[str, list[Any]]:
        terms, args = ["1"], []
        for term, value in (("agent = ?", agent), ("t >= ?", since), ("version = ?", version),
                            ("graded_t >= ?", graded_since)):
            if value is not None:
                terms.append(term)
                args.append(value)
        if graded is not None:
            terms.append("score IS NOT NULL" if graded else "score IS NULL")
        return " AND ".join(terms), args

    def traces(self, agent: str | None = None, *, since: float | None = None,
               graded: bool | None = None, version: int | None = None,
               limit: int | None = None, newest_first: bool = False,
               graded_since: float | None = None) -> list[Trace]:
        """The stored calls (of ``agent``, served at ``t >= since``, graded or not, of
        ``version``, graded at ``graded_t >= graded_since``), oldest first unless
        ``newest_first``; at most ``limit``."""
        where, args = self._where(agent, since, graded, version, graded_since)
        order = "DESC" if newest_first else "ASC"
        with self._lock, self._errors():
            rows = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM traces WHERE {where} "
                f"ORDER BY t {order}, seq {order} LIMIT ?",
                (*args, -1 if limit is None else limit)).fetchall()
        return [self._trace(row) for row in rows]

    def count(self, agent: str | None = None, *, graded: bool | None = None,
              since: float | None = None, graded_since: float | None = None) -> int:
        """How many calls :meth:`traces` would return (no decryption: no key needed)."""
        where, args = self._where(agent, since, graded, None, graded_since)
        with self._lock, self._errors():
            return int(self._conn.execute(f"SELECT COUNT(*) FROM traces WHERE {where}",
                                          args).fetchone()[0])

    def examples(self, agent: str, quality: QualityFilter, *, outputs: Sequence[str],
                 since: float | None = None, graded_since: float | None = None
                 ) -> list[Example]:
        """``agent``'s graded calls as examples through ``quality`` (``outputs``: the
        signature's output fields)."""
        return quality.select(self.traces(agent, graded=True, since=since,
                                          graded_since=graded_since), outputs)

    # ---- export, import, retention ---------------------------------------------------------
    def export_jsonl(self, path: str | os.PathLike[str], *, agent: str | None = None) -> int:
        """Write the calls (decrypted, as redacted as stored) to ``path``, one
        :meth:`Trace.to_dict` per line; returns how many."""
        rows = self.traces(agent)
        write_text(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n"
                                 for t in rows))
        return len(rows)

    def import_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Add the calls of a JSONL file (as :meth:`export_jsonl` writes), redacted and
        encrypted as this store does; a call id already here is updated. A bad line is one
        :class:`~evo.data.DataError` (file, row, field) and nothing is imported."""
        source = str(path)
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeError) as exc:
            raise DataError(f"cannot read the file ({exc})", source=source) from None
        traces = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                traces.append(Trace.from_dict(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"not JSON ({exc.msg})", source=source, row=n) from None
            except DataError as exc:
                raise DataError(getattr(exc, "problem", str(exc)), source=source, row=n,
                                field=exc.field) from None
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
        with self._write() as conn:
            conn.executemany(f"INSERT INTO traces ({', '.join(_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
                             f"ON CONFLICT(call_id) DO UPDATE SET {updates}",
                             [self._row(t) for t in traces])
        return len(traces)

    def apply_retention(self, now: float | None = None) -> int:
        """Delete the calls older than ``max_age_s`` (served before ``now - max_age_s``) and the
        oldest beyond ``max_rows``; returns how many were deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with self._write() as conn:
            if self.max_age_s is not None:
                deleted += conn.execute("DELETE FROM traces WHERE t < ?",
                                        (now - self.max_age_s,)).rowcount
            if self.max_rows is not None:
                deleted += conn.execute(
                    "DELETE FROM traces WHERE seq IN (SELECT seq FROM traces "
                    "ORDER BY t DESC, seq DESC LIMIT -1 OFFSET ?)", (self.max_rows,)).rowcount
        return deleted

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
