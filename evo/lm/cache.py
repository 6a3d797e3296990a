"""Persistent response cache: one SQLite file shared by every run, thread and process.

A cached answer is free and instant, so re-running an experiment (or resuming a killed one)
replays every LM call it already paid for. The key is :meth:`evo.lm.base.LMRequest.key`, which
names the exact model id (and the server, for a hosted model), so different models never share
answers.

Concurrency: WAL journal (readers never block the writer), a short busy timeout, one
autocommitted ``INSERT OR REPLACE`` per ``put`` (an entry is either fully there or absent), and
a lock around the connection for threads. A connection inherited through ``fork`` is never
reused: SQLite forbids that, so the child opens its own.

The cache is a convenience, never a reason to stop a run: a file locked by another process is a
miss (get) or a skipped write (put, one warning); a damaged file (SQLite says corrupt or not a
database, or it has the wrong schema, or a directory is in its place) is set aside as
``<name>.damaged-<time>`` with one warning and a fresh cache takes its place; if it cannot be
moved, the cache is bypassed with a warning. Any other error (a read-only file, a passing I/O
error) is no sign of damage: the user's cache is never moved for it, only bypassed (or, for
writes, skipped) with one warning.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from evo.errors import DamagedFileError
from evo.lm.base import LMRequest, LMResponse
from evo.paths import cache_root

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL
)
"""


# A label-scoring answer's log-probabilities (JSON list), beside its row in ``responses``: a
# table of its own, so caches stay readable and writable by evo versions from before it (they
# insert 8 positional values into ``responses``). Written before the response row, so a row
# that is there has its scores (a leftover scores row is harmless and overwritten).
_SCORES_SCHEMA = """
CREATE TABLE IF NOT EXISTS choice_logprobs (
    key TEXT PRIMARY KEY,
    logprobs TEXT NOT NULL
)
"""

_COLUMNS = {"key", "model_id", "text", "prompt_tokens", "completion_tokens", "seconds", "request",
            "created"}
LOCK_COOLDOWN_S = 10.0  # after a write found the file locked, skip writes this long without waiting

evo_cache_dir = cache_root  # the name the LM modules use


Identity = tuple[int, int]  # (st_dev, st_ino): which file a path named when we looked


class _Damaged(Exception):
    """The file at the cache path is not a usable cache (internal). ``found`` is the identity
    of the file found damaged, or None when the path changed while we looked."""

    def __init__(self, problem: str, found: Identity | None) -> None:
        super().__init__(problem)
        self.found = found


def _code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc`` (None when it has none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        _code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        or "locked" in str(exc).lower() or "busy" in str(exc).lower())


def _is_damage(exc: BaseException) -> bool:
    """Only SQLite's own verdict (corrupt, not a database) says a file is damaged: a read-only
    file or an I/O error says nothing about what the file holds."""
    return _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _row(conn: sqlite3.Connection, key: str) -> Any:
    """``key``'s text, token counts and stored choice log-probabilities."""
    try:
        return conn.execute(
            "SELECT r.text, r.prompt_tokens, r.completion_tokens, s.logprobs "
            "FROM responses r LEFT JOIN choice_logprobs s ON s.key = r.key "
            "WHERE r.key = ?", (key,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table: choice_logprobs" not in str(exc):
            raise
    # a cache from before label scoring that this process may not write: no scores in it
    return conn.execute("SELECT text, prompt_tokens, completion_tokens, NULL FROM responses "
                        "WHERE key = ?", (key,)).fetchone()


def logprobs_to_json(logprobs: tuple[float, ...] | None) -> str | None:
    """A response's ``choice_logprobs`` as stored (JSON; None for a generation)."""
    return None if logprobs is None else json.dumps([float(x) for x in logprobs])


def logprobs_from_json(stored: object) -> tuple[float, ...] | None:
    """``choice_logprobs`` back from :func:`logprobs_to_json` (None for none, or for a value
    that is not a list of numbers: the session then treats a scoring answer as missing)."""
    if not isinstance(stored, str):
        return None
    try:
        values = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    return tuple(float(v) for v in values)


def default_cache_path() -> Path:
    """The default response cache file: ``evo_cache_dir() / "lm-cache.sqlite"``."""
    return evo_cache_dir() / "lm-cache.sqlite"


class ResponseCache:
    """A key → :class:`LMResponse` store in SQLite, safe for concurrent threads and processes.

    ``timeout_s`` bounds how long a call waits for a file another process has locked (then a
    get is a miss and a put is skipped); :attr:`bypassed` says why the cache is off, if it is.

    A damaged file is set aside (and a fresh cache started) only where evo owns the file: the
    default cache (``set_aside=None``, the default, means "the default cache only"). A file the
    user named that is damaged, or is not an evo cache at all (their own database, a folder), is
    a :class:`~evo.errors.DamagedFileError` and is left as it is."""

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 2.0,
                 set_aside: bool | None = None) -> None:
        self.path = Path(path).expanduser()
        self._may_set_aside = (set_aside if set_aside is not None
                               else self.path.absolute() == default_cache_path().absolute())
        self._timeout_s = timeout_s
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self.bypassed: str | None = None
        self._warned_locked = False
        self._locked_until = 0.0
        self._opened: Identity | None = None  # the file this process's connection reads
        self._no_writes: str | None = None  # why puts are skipped (a read-only file)
        self._warned_trouble = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._bypass(f"cannot create its folder ({exc})")
            return
        with self._lock:
            self._connect()

    # ---- opening, damage ------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        """This process's connection (opened on first use), or None when the cache is off."""
        if self.bypassed is not None:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            conn = self._open()
        except _Damaged as exc:
            self._set_aside(str(exc), exc.found)
            if self.bypassed is not None:
                return None
            try:
                conn = self._open()
            except (_Damaged, sqlite3.Error, OSError) as again:
                self._bypass(f"a fresh cache could not be opened either ({again})")
                return None
        except (sqlite3.Error, OSError) as exc:  # locked for longer than we wait, no permission
            self._bypass(str(exc))
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        before = _identity(self.path)
        if self.path.is_dir():
            raise _Damaged("a directory is in its place", before)
        # isolation_level=None: autocommit, so each statement is its own short transaction and no
        # write lock is held between calls (other processes would otherwise time out on it).
        conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            # Switching to WAL needs a brief exclusive lock; a racing opener may see "locked"
            # even with the busy timeout, so retry a little (the mode is persistent once set).
            for attempt in range(20):
                try:
                    # What the file holds is checked before anything is written to it (the WAL
                    # switch included): another program's database is not ours to change.
                    tables = {r[0] for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if tables and "responses" not in tables:
                        raise _Damaged("it is another database (tables: "
                                       f"{', '.join(sorted(tables)[:5])})", before)
                    have = {r[1] for r in conn.execute("PRAGMA table_info(responses)")}
                    if have and not have >= _COLUMNS:
                        raise _Damaged("it has the wrong schema (a responses table without "
                                       f"{', '.join(sorted(_COLUMNS - have))})", before)
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL; faster
                    if not have:
                        conn.execute(_SCHEMA)
                    if "choice_logprobs" not in tables:
                        self._add_scores_table(conn)
                    break
                except sqlite3.OperationalError as exc:
                    if not _locked(exc) or attempt == 19:
                        raise
                    time.sleep(0.05 * (attempt + 1))
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
            conn.close()
            if not _is_damage(exc):
                raise  # locked, read-only, an I/O error: not the file's fault
            after = _identity(self.path)
            # A path that changed while we looked (another process set the damaged file aside
            # and made a fresh one) names no file we know to be damaged.
            raise _Damaged(str(exc), before if before == after else None) from exc
        except BaseException:
            conn.close()
            raise
        self._opened = before if before == _identity(self.path) else None
        return conn

    @staticmethod
    def _add_scores_table(conn: sqlite3.Connection) -> None:
        """Add the label-scoring table to a cache from before it; a cache this process may not
        write is still read (its answers are all generations: they have no scores)."""
        try:
            conn.execute(_SCORES_SCHEMA)
        except sqlite3.OperationalError as exc:
            if _code(exc) != sqlite3.SQLITE_READONLY and "readonly" not in str(exc):
                raise

    def _set_aside(self, problem: str, found: Identity | None) -> None:
        """Move the damaged cache ``found`` (and its -wal/-shm) out of the way; bypass the cache
        if it cannot be moved. A path that names another file by now (another process moved
        the damaged one aside and started afresh) is left alone: its fresh cache is reopened."""
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        if not self._may_set_aside:  # not evo's file to move: the user says what to do
            if self._opened is None:  # found on opening: before the run pays for anything
                raise DamagedFileError(self.path, f"not a usable evo LM response cache "
                                       f"({problem})", hint="name another cache file "
                                       "(--cache), or move this one away")
            self._bypass(f"it is damaged ({problem}); it is left as it is")
            return
        if found is None or _identity(self.path) != found:
            return
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
                                    f"-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self._bypass(f"it is damaged ({problem}) and could not be moved aside ({exc})")
            return
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            try:
                if side.exists():
                    os.replace(side, Path(f"{aside}{suffix}"))
            except OSError:
                pass  # a stale -wal/-shm without its database is ignored by SQLite
        warnings.warn(f"evo: the LM response cache {self.path} was damaged ({problem}); moved it "
                      f"to {aside} and started a fresh cache", RuntimeWarning, stacklevel=4)

    def _bypass(self, why: str) -> None:
        self.bypassed = why
        self._conn = None
        warnings.warn(f"evo: not using the LM response cache {self.path}: {why}; LM answers "
                      "are not cached in this process", RuntimeWarning, stacklevel=4)

    def _failed_later(self, exc: sqlite3.DatabaseError, doing: str) -> None:
        """A read or write failed on an open cache. A damaged page (a truncated file opens fine)
        sets the file aside; a read-only file turns writes off; anything else (a passing I/O
        error) loses this one entry. One warning per cache for the latter two."""
        if _is_damage(exc):
            self._set_aside(str(exc), self._opened)
            return
        if _code(exc) == sqlite3.SQLITE_READONLY and doing == "written":
            self._no_writes = str(exc)
        if not self._warned_trouble:
            self._warned_trouble = True
            what = ("answers are not cached in this process" if self._no_writes else
                    "that entry is skipped and the cache stays in use")
            warnings.warn(f"evo: the LM response cache {self.path} could not be {doing} "
                          f"({exc}); {what}", RuntimeWarning, stacklevel=4)

    # ---- the store ------------------------------------------------------------------------
    def get(self, key: str) -> LMResponse | None:
        """The stored response for ``key`` (marked ``cached=True``, ``seconds=0``), or ``None``
        (also when the file is locked or damaged: the caller then asks the LM)."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = _row(conn, key)
            except sqlite3.DatabaseError as exc:
                if not _locked(exc):
                    self._failed_later(exc, "read")
                return None
        if row is None or not isinstance(row[0], str) or not row[0]:
            return None  # an empty answer (cached by older evo versions) is no answer
        return LMResponse(text=row[0], prompt_tokens=int(row[1] or 0),
                          completion_tokens=int(row[2] or 0), seconds=0.0, cached=True,
                          choice_logprobs=logprobs_from_json(row[3]))

    def put(self, key: str, response: LMResponse, *, model_id: str, request: LMRequest) -> None:
        """Store ``response`` under ``key``. The request is kept (as JSON) for inspection only.
        A file locked by another process skips the write (one warning per cache)."""
        req: dict[str, object] = {
            "messages": [[m.role, m.content] for m in request.messages],
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "stop": list(request.stop), "seed": request.seed, "purpose": request.purpose}
        if request.choices:
            req.update(choices=list(request.choices), prefill=request.prefill)
        scores = logprobs_to_json(response.choice_logprobs)
        with self._lock:
            if time.monotonic() < self._locked_until or self._no_writes is not None:
                return
            conn = self._connect()
            if conn is None:
                return
            try:
                if scores is not None:  # first: a response row that is there has its scores
                    conn.execute("INSERT OR REPLACE INTO choice_logprobs VALUES (?, ?)",
                                 (key, scores))
                conn.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, model_id, response.text, response.prompt_tokens,
                     response.completion_tokens, response.seconds, json.dumps(req), time.time()))
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as exc:
                if not _locked(exc):
                    if _code(exc) == sqlite3.SQLITE_FULL:
                        raise OSError(f"{self.path}: {exc}") from exc
                    self._failed_later(exc, "written")
                    return
                self._locked_until = time.monotonic() + LOCK_COOLDOWN_S
                if not self._warned_locked:
                    self._warned_locked = True
                    warnings.warn(f"evo: the LM response cache {self.path} is locked by another "
                                  f"process; answers are not cached while it is ({exc})",
                                  RuntimeWarning, stacklevel=3)

    def __len__(self) -> int:
        with self._lock:
            conn = self._connect()
            return 0 if conn is None else int(
                conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def close(self) -> None:
        """Close this process's connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
