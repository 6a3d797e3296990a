"""Damaged LM files: the shared response cache (garbage, truncated, wrong schema, a directory in
its place) is set aside with one warning and never stops a run, while a healthy one that cannot
be written (read-only) is left where it is; a run's journal in the same states is one clear error
naming the file and what to do, and is never recreated (an empty one, as a kill leaves it before
its header, is an empty journal); a full disk while journaling names the journal, and the
answer paid last is still in the shared cache."""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from pathlib import Path

import pytest

import evo
from evo.errors import DamagedFileError, StorageError
from evo.lm import LMRequest, LMSession, Message, ResponseCache, ScriptedLM
from evo.lm.base import LMResponse
from evo.lm.journal import Journal
from evo.testing import TRAIN, VAL, program, respond


@pytest.fixture(autouse=True)
def _default_cache_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tmp_path / "lm-cache.sqlite"`` is the default cache, the one evo may set aside."""
    monkeypatch.setenv("EVO_CACHE_DIR", str(tmp_path))


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
    elif how == "other_database":  # the user's own: no responses table at all
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
        conn.close()
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


@pytest.mark.parametrize("how", ["garbage", "wrong_schema", "directory", "other_database"])
def test_a_cache_file_the_user_named_is_never_moved(tmp_path, how):
    """`--cache PATH` naming something that is not a usable evo cache (the user's own database,
    a folder, a damaged file) is one clear error before anything is paid; PATH is untouched."""
    path = tmp_path / "mine" / "notes.db"
    path.parent.mkdir()
    damage(path, how, make=full_cache)
    before = sorted((str(p), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))
    with pytest.raises(DamagedFileError, match="not a usable evo LM response cache") as info:
        ResponseCache(path)
    assert str(path) in str(info.value)
    assert sorted((str(p), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*")) == before


def test_a_named_cache_damaged_during_a_run_is_bypassed_and_left(tmp_path):
    path = tmp_path / "mine.sqlite"
    full_cache(path)
    cache = ResponseCache(path)
    with open(path, "r+b") as f:  # damaged under the running process
        f.truncate(8192)
    with pytest.warns(RuntimeWarning, match="left as it is"):
        assert cache.get("k250") is None
    s = LMSession(ScriptedLM({"": "fine"}), cache=cache)
    assert s.complete(ask("q")).text == "fine" and cache.bypassed
    assert path.stat().st_size == 8192 and not list(tmp_path.glob("*.damaged-*"))


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


def read_only_by_sqlite(cache: ResponseCache) -> None:
    """SQLite refuses every write on the cache's connection, as on a file opened read-only."""
    assert cache._conn is not None
    cache._conn.execute("PRAGMA query_only = ON")


@pytest.mark.parametrize("how", ["query_only", "chmod"])
def test_a_read_only_cache_is_read_and_never_moved_aside(tmp_path, how):
    """A shared cache this process may not write (a read-only file) is healthy: answers are
    read from it, writes are skipped with one warning, and it stays where it is."""
    path = tmp_path / "lm-cache.sqlite"
    full_cache(path, n=3)
    before = path.read_bytes()
    if how == "chmod":
        path.chmod(0o444)
        if os.access(path, os.W_OK):
            pytest.skip("running as root: a read-only file is still writable")
    try:
        cache = ResponseCache(path)
        if how == "query_only":
            read_only_by_sqlite(cache)
        lm = ScriptedLM({"": "fine"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = LMSession(lm, cache=cache)
            answers = [s.complete(ask(f"new {i}")).text for i in range(3)]
            old = cache.get("k1")
        notes = [str(w.message) for w in caught if "response cache" in str(w.message)]
        assert answers == ["fine"] * 3 and len(lm.calls) == 3
        assert old is not None and old.text.startswith("answer")
        assert len(notes) == 1 and "readonly" in notes[0] and "damaged" not in notes[0], notes
        assert sorted(p.name for p in tmp_path.iterdir() if "damaged" in p.name) == []
        assert path.read_bytes() == before and cache.bypassed is None
    finally:
        path.chmod(0o644)


def test_a_cache_set_aside_by_another_process_is_not_moved_again(tmp_path):
    """Two processes share a default cache that turns out damaged: the first sets it aside and
    starts afresh; the second, meeting the damage later, must not move the fresh one aside."""
    path = tmp_path / "lm-cache.sqlite"
    full_cache(path)
    second = ResponseCache(path)  # opened while healthy
    with open(path, "r+b") as f:  # then damaged in place: its data pages are gone
        f.truncate(8192)
    with pytest.warns(RuntimeWarning, match="was damaged"):
        first = ResponseCache(path)
    first.put("fresh", LMResponse("new answer"), model_id="m", request=ask("fresh"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert second.get("k250") is None  # the damage it meets now is the old file's
        assert second.get("fresh").text == "new answer"  # and it reads the fresh cache
    assert not [w for w in caught if "response cache" in str(w.message)]
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(tuple("0123456789"))]
    assert len(aside) == 1 and path.is_file()
    assert ResponseCache(path).get("fresh").text == "new answer"


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


@pytest.mark.parametrize("how", ["garbage", "truncated", "cut_header", "wrong_schema",
                                 "directory", "zero_bytes_with_its_wal"])
def test_a_damaged_journal_is_one_clear_error_and_is_left_as_it_is(tmp_path, how):
    path = tmp_path / "journal.sqlite"
    if how == "zero_bytes_with_its_wal":  # the answers are in a -wal whose database is gone
        damage(path, "zero_bytes", make=full_journal)
        Path(f"{path}-wal").write_bytes(os.urandom(4096))
    else:
        damage(path, how, make=full_journal)
    before = None if path.is_dir() else path.read_bytes()
    with pytest.raises(DamagedFileError) as info:
        Journal(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "new run directory" in msg and "backup" in msg, msg
    assert info.value.path == str(path)
    assert before is None or path.read_bytes() == before  # never recreated behind our back


@pytest.mark.parametrize("wal", [None, b""])
def test_an_empty_journal_opens_as_an_empty_journal(tmp_path, wal):
    """sqlite3.connect makes a 0-byte file and only the first PRAGMA writes its header: a kill in
    between leaves 0 bytes (and no or an empty -wal), which holds no answer and no damage."""
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"")
    if wal is not None:
        Path(f"{path}-wal").write_bytes(wal)
    journal = Journal(path)
    assert len(journal) == 0 and journal.ledger() == []
    journal.begin_sitting()
    journal.put("k", LMResponse("yes"), source="paid")
    journal.close()
    assert Journal(path).get("k").text == "yes"


def test_a_run_killed_before_its_journal_had_a_header_resumes(tmp_path):
    """run.json written, journal.sqlite created (0 bytes), then kill -9: the resume runs the
    search from the start and gives the result an uninterrupted run gives."""
    opt = evo.Evolution(budget=evo.Budget(metric_calls=40), knn=False, encoder="hashing")
    whole = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt,
                         cache=False, run_dir=tmp_path / "whole")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes((tmp_path / "whole" / "run.json").read_bytes())
    (run / "journal.sqlite").write_bytes(b"")
    resumed = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt,
                           cache=False, run_dir=run)
    assert resumed.best_val == whole.best_val and resumed.best == whole.best
    assert len(Journal(run / "journal.sqlite")) > 0


def test_a_run_with_a_damaged_journal_refuses_to_resume(tmp_path):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=40), knn=False, encoder="hashing")
    run = tmp_path / "run"
    evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt, cache=False,
                 run_dir=run)
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
    assert journal.get("a").text == "yes" and str(journal.get("b")) == "boom"
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


def test_on_a_full_disk_the_answer_paid_last_is_kept_in_the_shared_cache(tmp_path):
    """The journal's disk fills up: the run stops, but the answer it had just paid for reaches
    the shared cache first (often on another disk), so the resume does not pay for it again."""
    journal = Journal(tmp_path / "run" / "journal.sqlite")
    journal.begin_sitting()
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    journal._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "disk full"
    cache = ResponseCache(tmp_path / "cache" / "lm-cache.sqlite")
    lm = ScriptedLM(lambda r: "x" * 20000)
    s = LMSession(lm, cache=cache)
    s.journal = journal
    with pytest.raises(StorageError):
        for i in range(20):
            s.complete(ask(f"q{i}"))
    last = ask(f"q{len(lm.calls) - 1}")
    assert journal.get(last.key("scripted")) is None  # the journal could not take it ...
    assert cache.get(last.key("scripted")) is not None  # ... the shared cache has it
    journal._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: the resume
    resumed = LMSession(lm, cache=cache)
    resumed.journal = journal
    paid = len(lm.calls)
    assert resumed.complete(last).cached and len(lm.calls) == paid
    assert isinstance(journal.get(last.key("scripted")), LMResponse)
