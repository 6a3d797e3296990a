"""Every file of a run directory damaged in every way: reopening it with ``evo.optimize`` either
resumes correctly (the result of an uninterrupted run, no answer paid twice) or stops with ONE
:class:`evo.EvoError` naming the file, before any LM call. Never a raw traceback, never a resume
that silently pays again for answers the run had received."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import evo
from evo.lm import ScriptedLM
from evo.lm.journal import Journal
from evo.runs.store import read_run_file, run_cli
from evo.testing import TRAIN, VAL, Killed, dying_lm, program, respond

BUDGET = 60
DEEP = b"[" * 100_000 + b"]" * 100_000  # nested 100k deep


def search(lm, run_dir):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=BUDGET), knn=False, encoder="hashing")
    return evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, seed=0, cache=False,
                        run_dir=run_dir)


def dies_at(n, then=None):
    """An LM that answers like ``respond`` and dies on its ``n``-th call (after ``then()``), one
    call at a time (the copy made in ``then`` sees a quiet journal)."""
    lm = dying_lm(respond, n, then)
    lm.concurrent = False
    return lm


def paid(run_dir: Path) -> int:
    journal = Journal(run_dir / "journal.sqlite")
    try:
        return sum(s["paid"] for s in journal.ledger())
    finally:
        journal.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A whole run, and a run killed mid-search (checkpoint written, no result yet)."""
    root = tmp_path_factory.mktemp("runs")
    whole = search(ScriptedLM(respond), root / "whole")
    with pytest.raises(Killed):
        search(dies_at(45), root / "killed")
    assert json.loads((root / "killed" / "checkpoint.json").read_text())["sittings"]
    return {"whole": whole, "paid_whole": paid(root / "whole"), "killed": root / "killed"}


def resumes_correctly(runs, run_dir: Path) -> None:
    """Resuming ``run_dir`` pays only what the journal lacks and gives the whole run's result."""
    before = paid(run_dir)
    assert before > 0
    lm = ScriptedLM(respond)
    result = search(lm, run_dir)
    assert len(lm.calls) == 1 + runs["paid_whole"] - before  # the preflight, then only new
    assert result.best_val == runs["whole"].best_val
    assert [c.genome for c in result.candidates] == [c.genome for c in runs["whole"].candidates]
    kinds = [json.loads(x)["event"] for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert kinds == [e["event"] for e in result.events]


def refused(run_dir: Path, name: str, match: str = "",
            kind: type[evo.EvoError] = evo.DamagedFileError) -> evo.EvoError:
    """Reopening ``run_dir`` is one error of exactly the class ``kind`` naming ``name``, with no
    LM call."""
    lm = ScriptedLM(respond)
    with pytest.raises(evo.EvoError) as info:
        search(lm, run_dir)
    assert type(info.value) is kind, repr(info.value)
    assert f"{run_dir / name}" in str(info.value), str(info.value)
    assert match in str(info.value)
    assert lm.calls == []
    return info.value


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \x89PNG\r\n\x1a\n" * 50)


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")


def deep(path: Path) -> None:
    path.write_bytes(DEEP)


def huge_line(path: Path) -> None:
    path.write_bytes(b'{"event": "' + b"a" * 30_000_000 + b'"}')


DAMAGES = {"garbage": garbage, "truncated": truncated, "empty": empty, "a folder": a_folder,
           "deeply nested": deep, "huge line": huge_line}


@pytest.fixture
def copy(runs, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(runs["killed"], dst)
    return dst


# ---- run.json: what the run is; any damage is one clear error ---------------------------------

@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_file_is_one_clear_error(copy, damage):
    DAMAGES[damage](copy / "run.json")
    refused(copy, "run.json")
    if damage != "a folder":  # run_cli (evo run --resume, evo compare) says the same
        with pytest.raises(evo.DamagedFileError, match="run.json"):
            run_cli(copy)


@pytest.mark.parametrize("shape", [
    [1, 2], "x", 3, None, {"spec": {}}, {"evo_run": 1}, {"evo_run": 1, "spec": [1]},
    {"evo_run": 1, "spec": "s"}, {"evo_run": 1, "spec": {}, "cli": [1]},
    {"evo_run": 1, "spec": {}, "cli": "x"}])
def test_a_run_file_of_the_wrong_shape_is_one_clear_error(copy, shape):
    (copy / "run.json").write_text(json.dumps(shape))
    refused(copy, "run.json")
    with pytest.raises(evo.DamagedFileError, match="run.json"):
        run_cli(copy)
    with pytest.raises(evo.DamagedFileError, match="run.json"):
        read_run_file(copy / "run.json")


# ---- checkpoint.json: for reading only; damage never blocks a resume --------------------------

@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "deeply nested",
                                    "huge line", "a list", "no sittings", "sittings of strings"])
def test_a_damaged_checkpoint_warns_and_the_run_resumes(runs, copy, damage):
    path = copy / "checkpoint.json"
    shapes = {"a list": [1], "no sittings": {"iteration": 3},
              "sittings of strings": {"sittings": ["a", "b"]}}
    if damage in shapes:
        path.write_text(json.dumps(shapes[damage]))
    else:
        DAMAGES[damage](path)
    with pytest.warns(RuntimeWarning, match="checkpoint.json is damaged"):
        resumes_correctly(runs, copy)


def test_a_folder_in_place_of_the_checkpoint_is_one_clear_error(copy):
    a_folder(copy / "checkpoint.json")
    refused(copy, "checkpoint.json")


# ---- events.jsonl: cut at the first damaged line, continued from there -------------------------

EVENT_DAMAGES = {
    "garbage": garbage, "truncated": truncated, "empty": empty, "deeply nested line": deep,
    "huge line": lambda p: p.write_bytes(p.read_bytes() + b"a" * 30_000_000 + b"\n"),
    "binary blob": lambda p: p.write_bytes(p.read_bytes()[:300] + bytes(range(256)) * 400),
    "a list line": lambda p: p.write_bytes(b"[1, 2]\n" + p.read_bytes()),
    "a string line": lambda p: p.write_bytes(p.read_bytes() + b'"x"\n{"event": "start"}\n'),
    "a number line": lambda p: p.write_bytes(b"1\n" + p.read_bytes()),
    "a null line": lambda p: p.write_bytes(b"null\n" + p.read_bytes()),
    "deep line in the middle": lambda p: p.write_bytes(p.read_bytes() + DEEP + b"\n"),
}


@pytest.mark.parametrize("damage", EVENT_DAMAGES)
def test_a_damaged_event_log_is_cut_and_the_run_resumes(runs, copy, damage):
    EVENT_DAMAGES[damage](copy / "events.jsonl")
    resumes_correctly(runs, copy)


def test_a_folder_in_place_of_the_event_log_is_one_clear_error(copy):
    a_folder(copy / "events.jsonl")
    refused(copy, "events.jsonl")


# ---- lock: its content does not matter --------------------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "empty", "huge line"])
def test_a_lock_with_garbage_is_fine(runs, copy, damage):
    DAMAGES[damage](copy / "lock")
    resumes_correctly(runs, copy)


def test_a_folder_in_place_of_the_lock_is_one_clear_error(copy):
    a_folder(copy / "lock")
    refused(copy, "lock")


# ---- journal.sqlite: every answer the run received; a loss is never paid again silently -------

@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "a folder", "missing"])
def test_a_damaged_or_lost_journal_is_one_clear_error(copy, damage):
    path = copy / "journal.sqlite"
    if damage == "missing":
        path.unlink()
    else:
        DAMAGES[damage](path)
    err = refused(copy, "journal.sqlite")
    if damage == "missing":
        assert "answers are missing" in str(err) and "journal.sqlite-wal" in str(err)


def test_a_journal_losing_answers_is_refused_until_the_loss_is_accepted(runs, copy):
    with sqlite3.connect(copy / "journal.sqlite") as conn:
        conn.execute("DELETE FROM answers WHERE seq > 10")
    refused(copy, "journal.sqlite", "answers are missing")
    (copy / "checkpoint.json").unlink()  # what the message offers: resume and pay again
    lm = ScriptedLM(respond)
    result = search(lm, copy)
    assert len(lm.calls) == 1 + runs["paid_whole"] - 10
    assert result.best_val == runs["whole"].best_val


def copied_mid_run(where: Path, dst: Path, names: tuple[str, ...]) -> None:
    """Copy ``names`` of a live run directory (as a user copying it while it runs, or after a
    kill -9, which leaves the answers in journal.sqlite-wal)."""
    def copy_now():
        dst.mkdir()
        for name in names:  # the checkpoint first: it never claims what the journal lacks
            shutil.copy2(where / name, dst / name)
    with pytest.raises(Killed):
        search(dies_at(50, copy_now), where)


def test_a_run_copied_without_its_journal_wal_is_refused(tmp_path):
    copied_mid_run(tmp_path / "live", tmp_path / "copy",
                   ("checkpoint.json", "run.json", "events.jsonl", "lock", "journal.sqlite"))
    assert not (tmp_path / "copy" / "journal.sqlite-wal").exists()
    err = refused(tmp_path / "copy", "journal.sqlite", "answers are missing")
    assert "copied without journal.sqlite-wal" in str(err)


def test_a_run_copied_with_a_damaged_journal_wal_is_refused(tmp_path):
    copied_mid_run(tmp_path / "live", tmp_path / "copy",
                   ("checkpoint.json", "run.json", "events.jsonl", "lock", "journal.sqlite",
                    "journal.sqlite-wal"))
    garbage(tmp_path / "copy" / "journal.sqlite-wal")
    refused(tmp_path / "copy", "journal.sqlite")


def test_a_folder_in_place_of_the_journal_wal_is_one_clear_error(tmp_path):
    copied_mid_run(tmp_path / "live", tmp_path / "copy",
                   ("checkpoint.json", "run.json", "events.jsonl", "lock", "journal.sqlite"))
    (tmp_path / "copy" / "journal.sqlite-wal").mkdir()
    refused(tmp_path / "copy", "journal.sqlite-wal", "not a regular file")


def test_a_run_copied_with_its_journal_wal_resumes(runs, tmp_path):
    copied_mid_run(tmp_path / "live", tmp_path / "copy",
                   ("checkpoint.json", "run.json", "events.jsonl", "lock", "journal.sqlite",
                    "journal.sqlite-wal"))
    resumes_correctly(runs, tmp_path / "copy")


def test_a_killed_run_resumes_with_no_false_alarm(runs, copy):
    """The checkpoint lags the journal, never leads it: a killed run resumes as before."""
    seen = sum(s["answers"] - s["failed"]
               for s in json.loads((copy / "checkpoint.json").read_text())["sittings"])
    assert 0 < seen <= paid(copy)
    resumes_correctly(runs, copy)


# ---- a symbolic link in place of a run file: refused, its target never written -----------------

RUN_FILES = ("run.json", "journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm",
             "checkpoint.json", "events.jsonl", "lock", "result.json", "best.json",
             "baseline.json", "report.json", "report.html")


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_symlinked_run_file_is_refused_and_its_target_untouched(copy, tmp_path, name):
    """A link (to a copy of the real file, outside the run directory) is refused before evo
    opens anything: evo never writes its lock, journal, log or results through a link."""
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir()
    if (copy / name).exists():
        shutil.move(copy / name, target)
    elif name.startswith("journal.sqlite-"):  # a live run's WAL files, copied elsewhere
        shutil.copy2(copy / "journal.sqlite", target)
    else:
        target.write_text("precious")
    before = target.read_bytes()
    (copy / name).symlink_to(target)
    refused(copy, name, "symbolic link", kind=evo.UnsafeRunDirError)
    assert target.read_bytes() == before
    assert (copy / name).is_symlink()


def test_a_dangling_symlinked_run_file_is_one_clear_error(copy, tmp_path):
    (copy / "run.json").unlink()
    (copy / "run.json").symlink_to(tmp_path / "nowhere.json")
    refused(copy, "run.json", "symbolic link", kind=evo.UnsafeRunDirError)
    # run_cli (evo run --resume) names the file, rather than "made from Python"
    with pytest.raises(evo.EvoError, match="run.json.*symbolic link"):
        run_cli(copy)


def test_a_symlinked_journal_into_another_database_is_left_untouched(copy, tmp_path):
    """A journal.sqlite link to someone else's SQLite file: evo creates no table in it."""
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    before = other.read_bytes()
    (copy / "journal.sqlite").unlink()
    (copy / "journal.sqlite").symlink_to(other)
    refused(copy, "journal.sqlite", "symbolic link", kind=evo.UnsafeRunDirError)
    assert other.read_bytes() == before
