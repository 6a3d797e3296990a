"""How evo's SQLite stores open a file and report its failures, in one place.

The run journal, the embedding cache, the version registry, the trace store, the job queue and
the service store each keep their state in one SQLite file (WAL, shared by threads and
processes). Each checks what the file holds before writing anything to it (switching to WAL
writes the header), so a damaged file or another program's database is left exactly as it was
found; each turns SQLite's errors into evo's, naming the file: a damaged file is a
:class:`~evo.errors.DamagedFileError` (with the store's hint: what the file holds, how to
recover), a full disk a :class:`~evo.errors.StorageError`; and each writes in
:func:`immediate` transactions.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Set
from contextlib import contextmanager
from pathlib import Path

from evo.errors import ConfigError, DamagedFileError, StorageError


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``conn`` (opened with ``isolation_level=None``), begun
    IMMEDIATE: the write lock is taken at once, so a read-then-write decision cannot be
    overtaken by another process and two writers queue instead of deadlocking. Committed at the
    end of the block; rolled back if it raises (unless SQLite already did, as on a full disk)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def refuse_links(path: Path, *, doing: str, advice: str = "") -> None:
    """Refuse a symbolic link in place of the store or its -wal/-shm files: writing through one
    could overwrite the file it points to. ``doing``: what evo does not do through links
    ("open a version registry"); ``advice`` follows the standard advice."""
    for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if side.is_symlink():
            raise ConfigError(f"{side} is a symbolic link (to {os.readlink(side)}): evo does not "
                              f"{doing} through links, which could overwrite the file they point "
                              f"to; replace it with the file itself{advice}")


def check_store(conn: sqlite3.Connection, path: Path, columns: Mapping[str, Set[str]], *,
                what: str, hint: str, schema: str = "", quick_check: bool = True) -> None:
    """Check the file behind ``conn``, then switch it to WAL and create ``schema``.

    ``quick_check`` reads every page (a truncated or overwritten file often opens fine and fails
    on the page it lost); a table of ``columns`` that exists must have them all. Either failure
    is a DamagedFileError naming ``path`` as "not an evo ``what``" or "damaged"."""
    if quick_check:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise DamagedFileError(path, "is damaged (" + "; ".join(problems) + ")", hint=hint)
    for table, wanted in columns.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if have and not wanted <= have:
            raise DamagedFileError(path, f"is not an evo {what} (its {table} table lacks "
                                   f"{', '.join(sorted(wanted - have))})", hint=hint)
    for attempt in range(20):  # the WAL switch takes a brief lock a racing opener may hold
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.05 * (attempt + 1))
    # NORMAL is durable against a killed process (the WAL is written before a commit returns);
    # only a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    if schema:
        conn.executescript(schema)


@contextmanager
def store_errors(path: Path, *, what: str, hint: str, full: str = "",
                 busy: str | None = "") -> Iterator[None]:
    """SQLite's errors as evo's, naming ``path``: a damaged file (or one without the store's
    tables) is a DamagedFileError with ``hint``, a full disk a StorageError followed by the
    ``full`` advice, a lock held past the busy timeout a StorageError followed by the ``busy``
    advice (``busy=None``: SQLite's own error, for a caller that retries). A constraint
    failure (IntegrityError) stays what it is: the store's proof of a duplicate key."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "full" in text:
            raise StorageError(f"{path}: the disk is full ({exc})"
                               + (f"; {full}" if full else "")) from exc
        if ("locked" in text or "busy" in text) and busy is None:
            raise
        if "no such table" in text or "no such column" in text:
            raise DamagedFileError(path, f"is not an evo {what} ({exc})", hint=hint) from exc
        advice = busy if busy and ("locked" in text or "busy" in text) else ""
        raise StorageError(f"{path}: {exc}" + (f" ({advice})" if advice else "")) from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
        raise DamagedFileError(path, f"is damaged ({exc})", hint=hint) from exc
