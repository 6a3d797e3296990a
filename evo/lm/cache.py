"""Persistent response cache: one SQLite file shared by every run, thread and process.

A cached answer is free and instant, so re-running an experiment (or resuming a killed one)
replays every LM call it already paid for. The key is :meth:`evo.lm.base.LMRequest.key`, which
includes the exact model id, so different models never share answers.

Concurrency: WAL journal (readers never block the writer), a generous busy timeout (writers in
other processes wait instead of failing), one autocommitted ``INSERT OR REPLACE`` per ``put``
(an entry is either fully there or absent), and a lock around the connection for threads. A
connection inherited through ``fork`` is never reused: SQLite forbids that, so the child opens
its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from evo.paths import cache_root
from evo.lm.base import LMRequest, LMResponse

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


evo_cache_dir = cache_root  # the name the LM modules use


def default_cache_path() -> Path:
    """The default response cache file: ``evo_cache_dir() / "lm-cache.sqlite"``."""
    return evo_cache_dir() / "lm-cache.sqlite"


class ResponseCache:
    """A key → :class:`LMResponse` store in SQLite, safe for concurrent threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout_s = timeout_s
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # isolation_level=None: autocommit, so each statement is its own short transaction and no
        # write lock is held between calls (other processes would otherwise time out on it).
        conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
        # Switching to WAL needs a brief exclusive lock; a racing opener may see "locked" even
        # with the busy timeout, so retry a little (the mode is persistent once set).
        for attempt in range(50):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL; much faster
                conn.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    conn.close()
                    raise
                time.sleep(0.05 * (attempt + 1))
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get(self, key: str) -> LMResponse | None:
        """The stored response for ``key`` (marked ``cached=True``, ``seconds=0``), or ``None``."""
        with self._lock:
            row = self._connect().execute(
                "SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key = ?",
                (key,)).fetchone()
        if row is None:
            return None
        return LMResponse(text=row[0], prompt_tokens=row[1], completion_tokens=row[2],
                          seconds=0.0, cached=True)

    def put(self, key: str, response: LMResponse, *, model_id: str, request: LMRequest) -> None:
        """Store ``response`` under ``key``. The request is kept (as JSON) for inspection only."""
        req = {"messages": [[m.role, m.content] for m in request.messages],
               "max_tokens": request.max_tokens, "temperature": request.temperature,
               "stop": list(request.stop), "seed": request.seed, "purpose": request.purpose}
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model_id, response.text, response.prompt_tokens, response.completion_tokens,
                 response.seconds, json.dumps(req), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

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
