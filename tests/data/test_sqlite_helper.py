"""evo._sqlite: the opening check and the error mapping every SQLite store of evo shares."""

from __future__ import annotations

import sqlite3

import pytest

from evo._sqlite import check_store, refuse_links, store_errors
from evo.errors import ConfigError, DamagedFileError, StorageError

COLUMNS = {"items": {"id", "name"}}
SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"


def test_a_table_without_the_columns_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE items (id INTEGER)")
    with pytest.raises(DamagedFileError, match=r"is not an evo test store \(its items table "
                                               r"lacks name\)"):
        check_store(conn, path, COLUMNS, what="test store", hint="h", schema=SCHEMA)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
    conn.close()


def mapped(path, exc: Exception, **advice) -> BaseException:
    """What ``exc``, raised inside store_errors, comes out as."""
    try:
        with store_errors(path, what="test store", hint="h", **advice):
            raise exc
    except BaseException as out:  # noqa: BLE001 - the test looks at whatever comes out
        return out
    raise AssertionError("store_errors swallowed the error")


def test_store_errors_name_the_file_and_keep_integrity_errors(tmp_path):
    path = tmp_path / "s.sqlite"
    missing = mapped(path, sqlite3.OperationalError("no such table: nothing"))
    assert isinstance(missing, DamagedFileError)
    assert "is not an evo test store (no such table: nothing)" in str(missing)
    duplicate = sqlite3.IntegrityError("UNIQUE constraint failed")
    assert mapped(path, duplicate) is duplicate
    full = mapped(path, sqlite3.OperationalError("database or disk is full"), full="free space")
    assert isinstance(full, StorageError)
    assert str(full) == f"{path}: the disk is full (database or disk is full); free space"
    locked = sqlite3.OperationalError("database is locked")
    assert str(mapped(path, locked, busy="wait")) == f"{path}: database is locked (wait)"
    assert str(mapped(path, locked)) == f"{path}: database is locked"
    assert mapped(path, locked, busy=None) is locked
    damaged = mapped(path, sqlite3.DatabaseError("file is not a database"))
    assert isinstance(damaged, DamagedFileError) and "is damaged (file is not a database)" in str(
        damaged)


def test_a_link_in_place_of_the_wal_file_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / "s.sqlite-wal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"s\.sqlite-wal is a symbolic link .*: evo does not "
                                          r"open a test store through links.*itself, or not$"):
        refuse_links(path, doing="open a test store", advice=", or not")
