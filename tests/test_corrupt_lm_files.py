"""Damaged LM files: the shared response cache (garbage, truncated, wrong schema, a directory in
its place) is set aside with one warning and never stops a run; a run's journal in the same
states is one clear error naming the file and what to do, and is never recreated; a full disk
while journaling names the journal."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path

import pytest

import evo
from evo.errors import DamagedFileError, StorageError
from evo.lm import LMRequest, LMSession, Message, ResponseCache, ScriptedLM
from evo.lm.base import LMResponse
from evo.lm.journal import Journal

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import TRAIN, VAL, program, respond  # noqa: E402


def ask(text: str) -> LMRequest:
    return LMRequest(messages=(Message("user", text),))


def full_cache(path: Path, n: int = 300) -> None:
    """A real cache with ``n`` answers, checkpointed into the main file (no -wal left)."""
    cache = ResponseCache(path)
    for i in range(n):
        cache.put(f"k{i}", LMResponse("answer " * 40), model_id="m", request=ask(f"q{i}"))
    cache.close()
    assert not Path(f"{path}-wal").exists()


def damage(path: Path, how: str, *, make: object) -> None:
    """Put ``path`` in the state ``how``; ``make(path)`` builds the healthy file first."""
    if how == "directory":
        path.mkdir()
        (path / "something").write_text("x")
        return
    make(path)  # type: ignore[operator]
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":  # the header and schema survive, the data pages do not
        path.write_bytes(data[:8192])
    elif how == "cut_header":
        path.write_bytes(data[:60])
    elif how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "wrong_schema":
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, value BLOB)")
            conn.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, value BLOB)")
            conn.execute("INSERT INTO responses VALUES ('k', 'v')")
        conn.close()
    else:
        raise AssertionError(how)


# --- the shared response cache ---------------------------------------------------------------

@pytest.mark.parametrize("how", ["garbage", "truncated", "cut_header", "wrong_schema",
                                 "directory"])
def test_a_damaged_cache_is_set_aside_with_one_warning(tmp_path, how):
    path = tmp_path / "lm-cache.sqlite"
    damage(path, how, make=full_cache)
    lm = ScriptedLM({"": "fine"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = LMSession(lm, cache=ResponseCache(path))
        answers = [s.complete(ask(f"q{i}")).text for i in range(3)]
        again = LMSession(ScriptedLM({}), cache=s.cache).complete(ask("q2"))
    assert answers == ["fine"] * 3 and (again.text, again.cached) == ("fine", True)
    notes = [str(w.message) for w in caught if "response cache" in str(w.message)]
    assert len(notes) == 1, notes
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("lm-cache.sqlite.damaged-")]
    assert len(aside) == 1 and str(path) in notes[0] and str(aside[0]) in notes[0]
    assert s.cache is not None and s.cache.bypassed is None and path.is_file()


def test_a_damaged_cache_that_cannot_be_moved_is_bypassed(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "lm-cache.sqlite"
    path.write_bytes(b"not a database at all, just text " * 100)
    folder.chmod(0o500)  # the file cannot be renamed
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.warns(RuntimeWarning, match="not using the LM response cache"):
            s = LMSession(ScriptedLM({"": "fine"}), cache=ResponseCache(path))
        assert s.complete(ask("q")).text == "fine" and s.cache.bypassed
    finally:
        folder.chmod(0o700)


def test_a_cache_that_cannot_be_opened_is_bypassed(tmp_path):
    (tmp_path / "afile").write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="not using the LM response cache"):
        cache = ResponseCache(tmp_path / "afile" / "lm-cache.sqlite")
    s = LMSession(ScriptedLM({"": "fine"}), cache=cache)
    assert s.complete(ask("q")).text == "fine" and cache.bypassed and len(cache) == 0


def test_empty_answers_cached_by_older_versions_are_not_replayed(tmp_path):
    path = tmp_path / "lm-cache.sqlite"
    cache = ResponseCache(path)
    cache.put(ask("q").key("scripted"), LMResponse(""), model_id="scripted", request=ask("q"))
    lm = ScriptedLM({"": "fixed"})
    assert LMSession(lm, cache=cache).complete(ask("q")).text == "fixed" and len(lm.calls) == 1


# --- the run's journal -----------------------------------------------------------------------

def full_journal(path: Path) -> None:
    journal = Journal(path)
    journal.begin_sitting()
    for i in range(300):
        journal.put(f"k{i}", LMResponse("answer " * 40), source="paid")
    journal.close()
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("how", ["garbage", "truncated", "cut_header", "zero_bytes",
                                 "wrong_schema", "directory"])
def test_a_damaged_journal_is_one_clear_error_and_is_left_as_it_is(tmp_path, how):
    path = tmp_path / "journal.sqlite"
    damage(path, how, make=full_journal)
    before = None if path.is_dir() else path.read_bytes()
    with pytest.raises(DamagedFileError) as info:
        Journal(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "new run directory" in msg and "backup" in msg, msg
    assert info.value.path == str(path)
    assert before is None or path.read_bytes() == before  # never recreated behind our back


def test_a_run_with_a_damaged_journal_refuses_to_resume(tmp_path):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=40), knn=False, encoder="hashing")
    run = tmp_path / "run"
    first = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt,
                         cache=False, run_dir=run)
    if first.store is not None and not first.store.closed:
        first.store.close()
    journal = run / "journal.sqlite"
    with sqlite3.connect(journal) as conn:  # every answer into the main file, then damage it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    journal.write_bytes(b"\x00garbage" * 512)
    before = journal.read_bytes()
    lm = ScriptedLM(respond)
    with pytest.raises(DamagedFileError, match="journal.sqlite"):
        evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, cache=False, run_dir=run)
    assert journal.read_bytes() == before and not lm.calls  # nothing paid, nothing rewritten


def test_a_journal_from_before_transient_failures_opens_and_migrates(tmp_path):
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:  # the schema journals were written with before
        conn.executescript("""
            CREATE TABLE answers (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                source TEXT NOT NULL, sitting INTEGER NOT NULL, phase TEXT NOT NULL, text TEXT,
                error TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                reused_prompt_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
                created REAL NOT NULL);
            CREATE TABLE sittings (id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL,
                pid INTEGER NOT NULL);
            INSERT INTO sittings (started, pid) VALUES (0, 1);
            INSERT INTO answers VALUES (1, 'a', 'paid', 1, 'search', 'yes', NULL, 1, 1, 0, 0, 0);
            INSERT INTO answers VALUES (2, 'b', 'paid', 1, 'search', NULL, 'boom', 0, 0, 0, 0, 0);
        """)
    conn.close()
    journal = Journal(path)
    assert journal.get("a").text == "yes" and journal.get("b") == "boom"
    journal.fail("c", "throttled", transient=True)
    assert journal.get("c") is None
    journal.put("c", LMResponse("later"), source="paid")
    assert journal.get("c").text == "later" and len(journal) == 3


def test_a_full_disk_while_journaling_names_the_journal(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.begin_sitting()
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    journal._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "disk full"
    s = LMSession(ScriptedLM(lambda r: "x" * 20000))
    s.journal = journal
    with pytest.raises(StorageError) as info:
        for i in range(20):
            s.complete(ask(f"q{i}"))
    assert str(path) in str(info.value) and "full" in str(info.value)
    assert isinstance(info.value, evo.errors.EvoError)
    journal._conn.execute("PRAGMA max_page_count = 1073741823")
    assert all(isinstance(journal.get(ask(f"q{j}").key("scripted")), LMResponse | type(None))
               for j in range(20))
    assert json.dumps(journal.ledger())  # still readable
