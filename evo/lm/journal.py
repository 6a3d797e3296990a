"""A run's LM journal: every answer one run received, committed before the run reads it.

Where the shared :class:`~evo.lm.cache.ResponseCache` is a convenience (any run may read it, a user
may delete it or turn it off), the journal belongs to one run directory and is what makes that run
resumable: a resumed run answers each request found here without calling the LM, so it retraces
the same decisions and continues from where it stopped (:mod:`evo.runs.store`). Failed requests are
journaled too, so a replay meets the same failures the first sitting met; a *transient* failure
(throttled, 5xx, timeout, empty reply) is kept for the ledger but not replayed: a resumed run
asks it again, and its answer then takes the failure's place.

The journal is never recreated behind the user's back: a damaged file (garbage, truncated, of
the wrong shape) is a :class:`~evo.errors.DamagedFileError`, a full disk a
:class:`~evo.errors.StorageError`, each naming the file.

SQLite in WAL mode with one autocommitted statement per answer: a process killed at any moment
leaves every answer it had received either fully there or absent. ``INSERT`` (never ``REPLACE``)
on the key is the proof that no request was paid twice in one run.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

from evo._sqlite import check_store, immediate, store_errors
from evo.errors import DamagedFileError
from evo.lm.base import LMError, LMRequestError, LMResponse
from evo.lm.cache import logprobs_from_json, logprobs_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,          -- 'paid' (the backend answered) or 'cache' (the shared cache)
    sitting INTEGER NOT NULL,      -- which process of the run received it (1, 2, ...)
    phase TEXT NOT NULL,           -- 'search', or 'test' for the held-out pass after it
    text TEXT,                     -- NULL for a failed request
    error TEXT,                    -- the failure, for a request that failed
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reused_prompt_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    kind TEXT,                     -- 'transient' for a failure a resumed run asks again,
                                   -- 'request' for the request's own fault
    choice_logprobs TEXT           -- a label-scoring answer's log-probabilities (JSON list)
);
CREATE TABLE IF NOT EXISTS sittings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    pid INTEGER NOT NULL
);
"""

Source = Literal["paid", "cache"]

_COLUMNS = {"answers": {"seq", "key", "source", "sitting", "phase", "text", "error",
                        "prompt_tokens", "completion_tokens", "reused_prompt_tokens", "seconds",
                        "created"},
            "sittings": {"id", "started", "pid"}}
HINT = ("it holds the answers this run paid for: restore it (with its -wal file) from a backup, "
        "or start the run again in a new run directory")


class Journal:
    """Append-only ``key -> answer | failure`` log of one run, safe for threads. A process that
    runs the search calls :meth:`begin_sitting` first: its answers are booked to that *sitting*
    (numbered from 1); opening the journal only to read it books nothing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise DamagedFileError(self.path, "is a directory, not a journal", hint=HINT)
        if self.path.exists() and self.path.stat().st_size == 0:
            # sqlite3.connect makes the file, the first PRAGMA below writes its header: a process
            # killed in between leaves 0 bytes, an empty journal (a loss of answers is caught
            # by the run store, which compares the journal with checkpoint.json).
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise DamagedFileError(self.path, "is empty (0 bytes) but its -wal file is not: "
                                       "truncated", hint=HINT)
        with self._errors():
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                         check_same_thread=False)
        try:
            with self._errors():
                self._open()
        except BaseException:
            self._conn.close()
            raise
        self.sitting = 0
        self.phase = "search"  # what the answers booked now are for (see ledger)

    def _open(self) -> None:
        conn = self._conn
        # A journal holds answers, not prompts: small, so every page is checked on opening.
        check_store(conn, self.path, _COLUMNS, what="journal", hint=HINT, schema=_SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(answers)")}
        if "kind" not in have:
            conn.execute("ALTER TABLE answers ADD COLUMN kind TEXT")  # journals before 0.x
        if "choice_logprobs" not in have:  # journals from before label scoring
            conn.execute("ALTER TABLE answers ADD COLUMN choice_logprobs TEXT")

    def _errors(self) -> AbstractContextManager[None]:
        """SQLite's errors as evo's: a full disk names the journal, a damaged file says what to
        do, a lock is SQLite's own error. A duplicate key (IntegrityError) stays what it is: the
        proof no call was paid twice."""
        return store_errors(self.path, what="journal", hint=HINT, busy=None,
                            full="free some space and resume the run (the answer received "
                                 "last is asked again)")

    def begin_sitting(self) -> int:
        """Start booking answers to a new sitting; returns its number."""
        with self._lock, self._errors():
            self.sitting = int(self._conn.execute(
                "INSERT INTO sittings (started, pid) VALUES (?, ?)",
                (time.time(), os.getpid())).lastrowid or 1)
        return self.sitting

    def get(self, key: str) -> LMResponse | LMError | None:
        """The journaled answer for ``key`` (``cached=True``), its failure if the request failed
        for good (an :class:`LMRequestError` when it was the request's own fault, as it was
        first raised), or ``None`` if this run never asked it or its failure was transient."""
        with self._lock, self._errors():
            row = self._conn.execute(
                "SELECT text, error, prompt_tokens, completion_tokens, kind, choice_logprobs "
                "FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None or (row[0] is None and row[4] == "transient"):
            return None
        if row[0] is None:
            return (LMRequestError if row[4] == "request" else LMError)(str(row[1]))
        return LMResponse(text=row[0], prompt_tokens=row[2], completion_tokens=row[3],
                          seconds=0.0, cached=True, choice_logprobs=logprobs_from_json(row[5]))

    def put(self, key: str, response: LMResponse, *, source: Source) -> None:
        self._insert(key, source, response.text, None, response.prompt_tokens,
                     response.completion_tokens, response.reused_prompt_tokens, response.seconds,
                     scores=logprobs_to_json(response.choice_logprobs))

    def fail(self, key: str, error: str, *, transient: bool = False, request: bool = False,
             spent: Sequence[LMResponse] = ()) -> None:
        """Record that ``key`` failed; ``spent``: the billed replies its attempts got (empty
        ones), booked in the ledger. A ``transient`` failure is not replayed (:meth:`get`
        ignores it) and a later answer or failure for ``key`` replaces it; a ``request`` failure
        (the request's own fault) is replayed as one."""
        self._insert(key, "paid", None, error, sum(r.prompt_tokens for r in spent),
                     sum(r.completion_tokens for r in spent),
                     sum(r.reused_prompt_tokens for r in spent), sum(r.seconds for r in spent),
                     kind="transient" if transient else "request" if request else None)

    def _insert(self, key: str, source: str, text: str | None, error: str | None,
                prompt: int, completion: int, reused: int, seconds: float,
                kind: str | None = None, scores: str | None = None) -> None:
        with self._lock, self._errors(), immediate(self._conn) as conn:
            # Only a transient failure gives way; any other row for the key makes the INSERT
            # fail (IntegrityError): nothing is paid twice in one run.
            conn.execute("DELETE FROM answers WHERE key = ? AND kind = 'transient'", (key,))
            conn.execute(
                "INSERT INTO answers (key, source, sitting, phase, text, error, "
                "prompt_tokens, completion_tokens, reused_prompt_tokens, seconds, created, "
                "kind, choice_logprobs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, source, self.sitting, self.phase, text, error, prompt, completion,
                 reused, seconds, time.time(), kind, scores))

    def forget(self, keys: list[str]) -> None:
        """Drop the failures of ``keys`` (an outage's): a resumed run asks them again."""
        with self._lock, self._errors():
            self._conn.executemany("DELETE FROM answers WHERE key = ? AND error IS NOT NULL",
                                   [(k,) for k in keys])

    def ledger(self, phase: str | None = "search") -> list[dict[str, float]]:
        """Per sitting, for ``phase`` (None: every phase): answers received, of which paid by
        the backend (``paid``), failed (``failed``, transient failures included) and from the
        shared cache, and the prompt / completion tokens and LM seconds paid."""
        where = "" if phase is None else "AND a.phase = ?"
        with self._lock, self._errors():
            rows = self._conn.execute(
                "SELECT s.id, s.started, COUNT(a.key), "
                "SUM(a.source = 'paid' AND a.error IS NULL), SUM(a.error IS NOT NULL), "
                "SUM(a.source = 'cache'), "
                "SUM(CASE WHEN a.source = 'paid' THEN a.prompt_tokens END), "
                "SUM(CASE WHEN a.source = 'paid' THEN a.completion_tokens END), "
                "SUM(CASE WHEN a.source = 'paid' THEN a.seconds END) "
                f"FROM sittings s LEFT JOIN answers a ON a.sitting = s.id {where} "
                "GROUP BY s.id ORDER BY s.id", () if phase is None else (phase,)).fetchall()
        return [{"sitting": r[0], "started": r[1], "answers": r[2], "paid": r[3] or 0,
                 "failed": r[4] or 0, "shared_cache": r[5] or 0, "prompt_tokens": r[6] or 0,
                 "completion_tokens": r[7] or 0, "lm_seconds": round(r[8] or 0.0, 3)}
                for r in rows]

    def __len__(self) -> int:
        with self._lock, self._errors():
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, sitting={self.sitting})"
