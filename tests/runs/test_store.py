"""The run store: a killed run resumes with no paid LM call repeated and ends with the result an
uninterrupted run gives; another run on the same directory is refused; the journal replays
failures; request errors are neither retried nor taken for an unreachable LM."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import evo
from evo.lm import LMRequestError, LMSession, ScriptedLM
from evo.lm.base import LMRequest, LMResponse
from evo.lm.journal import Journal
from evo.runs.store import RunInUseError, RunMismatchError
from evo.testing import TEST, TRAIN, VAL, Killed, assert_same_run, dying_lm, program, respond


def search(lm, run_dir, *, budget=120, seed=0, cache=False, **kw):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=budget), knn=False, encoder="hashing")
    return evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, seed=seed, cache=cache,
                        run_dir=run_dir, **kw)


def search_killed_at_call(n: int, run_dir: Path, **kw) -> None:
    """A search whose LM dies on its ``n``-th call (the preflight is call 1)."""
    with pytest.raises(Killed):
        search(dying_lm(respond, n), run_dir, **kw)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    whole = search(ScriptedLM(respond), tmp_path / "whole")
    paid_whole = whole.sittings[0]["paid"]

    for stop in (7, 31, 52):  # three sittings killed mid-search, the fourth finishes
        with pytest.raises(Killed):
            search(dying_lm(respond, stop + 1), tmp_path / "killed")
    last = ScriptedLM(respond)
    resumed = search(last, tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    sittings = resumed.sittings
    assert len(sittings) == 4
    # every sitting paid only new requests, and together exactly what the whole run paid
    assert sum(s["paid"] for s in sittings) == paid_whole
    assert resumed.usage.replayed == sum(s["paid"] for s in sittings[:3])
    # the fourth sitting paid its preflight and the rest, nothing already in the journal
    assert len(last.calls) == 1 + sittings[3]["paid"]
    # the result's own accounting says the same
    summary = json.loads((tmp_path / "killed" / "result.json").read_text())["summary"]
    assert summary["paid_calls_all_sittings"] == paid_whole
    # a finished run reopened replays everything and pays nothing but the preflight
    again = ScriptedLM(respond)
    search(again, tmp_path / "killed")
    assert len(again.calls) == 1
    assert_same_run(tmp_path / "whole", tmp_path / "killed")


def test_checkpoint_tells_where_a_killed_run_stood(tmp_path):
    search_killed_at_call(41, tmp_path / "run")
    ck = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert ck["metric_calls"] >= 30 and ck["candidates"] and ck["scores"]
    # the 41st call died: the preflight (never journaled) and 39 search calls were answered
    assert ck["sittings"][0]["paid"] == 39
    assert not (tmp_path / "run" / "result.json").exists()


def test_another_run_on_the_same_directory_is_refused(tmp_path):
    search(ScriptedLM(respond), tmp_path / "run", budget=60)
    with pytest.raises(RunMismatchError, match=r"seed \(0 -> 1\)"):
        search(ScriptedLM(respond), tmp_path / "run", budget=60, seed=1)
    with pytest.raises(RunMismatchError, match="optimizer"):
        search(ScriptedLM(respond), tmp_path / "run", budget=90)
    with pytest.raises(RunMismatchError, match="valset"):
        evo.optimize(program(), TRAIN, VAL[:-1], lm=ScriptedLM(respond), cache=False,
                     optimizer=evo.Evolution(budget=evo.Budget(metric_calls=60), knn=False,
                                             encoder="hashing"),
                     run_dir=tmp_path / "run")


def test_failures_are_journaled_and_replayed(tmp_path):
    """A request that failed for good in an earlier sitting fails again on replay (the same
    zero cell), without calling the LM: the resumed result is the uninterrupted one."""
    def flaky(req):
        return None if "item 105 " not in req.messages[-1].content else ConnectionError("boom")

    lm = ScriptedLM(respond, errors=flaky)
    whole = search(lm, tmp_path / "whole", budget=90)
    errors = [c for c in json.loads((tmp_path / "whole" / "result.json").read_text())
              ["cell_errors"]]
    assert errors, "the scripted failure should have produced error cells"
    assert whole.sittings[0]["failed"] >= 1
    again = ScriptedLM(respond)  # the LM works now, but the run replays what it saw
    search(again, tmp_path / "whole", budget=90)
    assert len(again.calls) == 1  # the preflight
    assert json.loads((tmp_path / "whole" / "result.json").read_text())["cell_errors"] == errors


def test_request_errors_are_not_retried_and_do_not_look_like_an_outage():
    too_long = LMRequestError("prompt longer than the context window")
    lm = ScriptedLM(respond, errors=lambda req: too_long if "long" in req.messages[-1].content
                    else None)
    session = LMSession(lm, retries=2, backoff_s=0, fail_fast_after=3)
    for i in range(6):  # more than fail_fast_after, before any success
        with pytest.raises(LMRequestError):
            session.complete(LMRequest(messages=(evo.lm.Message("user", f"long {i}"),)))
    assert len(lm.calls) == 6 and session.usage.retries == 0 and session.usage.errors == 6
    assert session.unavailable is None
    assert session.complete(LMRequest(messages=(evo.lm.Message("user", "text: x"),))).text


def test_journal_refuses_a_second_answer_for_one_request(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.put("k", LMResponse("a"), source="paid")
    with pytest.raises(Exception, match="UNIQUE"):
        journal.put("k", LMResponse("b"), source="paid")
    assert journal.sitting == 0  # a journal opened to be read books no sitting
    assert Journal(tmp_path / "j.sqlite").begin_sitting() == 1
    assert [s["answers"] for s in journal.ledger()] == [0]  # "k" was booked to no sitting


SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from test_store import search
from evo.lm import ScriptedLM
from evo.testing import respond
search(ScriptedLM(respond, delay_s=0.004), {run!r}, budget=150)
print("finished")
"""


def test_sigkill_at_random_moments_then_resume(sigkill_resume):
    """Real processes killed with SIGKILL at random moments (scripted LM with a small delay), each
    sitting with another hash seed: the store is always readable, and the resumed result is the
    uninterrupted one, with every request paid once."""
    tests = str(Path(__file__).parent)
    sigkill_resume(lambda run: SCRIPT.format(tests=tests, run=str(run)), kills=4, spacing=6)


def test_a_run_directory_is_used_by_one_process_at_a_time(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time\nfrom evo.runs.store import RunStore\n"
                                f"s = RunStore({str(tmp_path / 'run')!r}, {{'seed': 0}})\n"
                                "print('open', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        lm = ScriptedLM(respond)
        with pytest.raises(RunInUseError, match=f"in use by pid {holder.pid}"):
            search(lm, tmp_path / "run")
        assert lm.calls == []  # refused before any LM call
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    search(ScriptedLM(respond), tmp_path / "other", budget=60)
    search(ScriptedLM(respond), tmp_path / "other", budget=60)  # same process, again: fine


def test_an_outage_stops_the_run_and_resume_retries_its_requests(tmp_path):
    """After earlier successes, a long streak of failures is an outage: the run stops (nothing
    lost), the streak is not journaled, and the resume with the LM back gives the result of a
    run that never had the outage."""
    whole = search(ScriptedLM(respond), tmp_path / "whole")
    down = ScriptedLM(respond, errors=lambda req: ConnectionError("down")
                      if len(down.calls) > 30 else None)
    session = LMSession(down, retries=0, backoff_s=0, outage_after=5)
    with pytest.raises(evo.lm.LMUnavailableError, match="stopped answering: 5 consecutive"):
        search(session, tmp_path / "outage")
    assert all(s["failed"] == 0 for s in Journal(tmp_path / "outage" / "journal.sqlite").ledger())
    search(ScriptedLM(respond), tmp_path / "outage")
    assert_same_run(tmp_path / "whole", tmp_path / "outage")
    assert whole.best_val == 1.0


def test_failures_are_journaled_even_when_the_preflight_came_from_a_shared_cache(tmp_path):
    cache = tmp_path / "shared.sqlite"
    LMSession(ScriptedLM(respond), cache=evo.lm.cache.ResponseCache(cache)).preflight()

    def flaky(req):
        return ConnectionError("boom") if "item 105 " in req.messages[-1].content else None

    lm = ScriptedLM(respond, errors=flaky)
    first = search(LMSession(lm, retries=0, backoff_s=0,
                             cache=evo.lm.cache.ResponseCache(cache)), tmp_path / "run",
                   budget=90)
    assert first.sittings[0]["failed"] >= 1
    again = ScriptedLM(respond)
    search(LMSession(again, cache=evo.lm.cache.ResponseCache(cache)), tmp_path / "run",
           budget=90)
    assert not any("item 105 " in r.messages[-1].content for r in again.calls)


def test_an_lm_call_budget_replays_to_the_same_decisions(tmp_path):
    """Budget(lm_calls=...) counts requests; replayed answers and replayed failures must count
    exactly as they did when they were first received."""
    def flaky(req):
        return ConnectionError("x") if "item 11" in req.messages[-1].content else None

    def run(lm, where):
        opt = evo.Evolution(budget=evo.Budget(metric_calls=200, lm_calls=120), knn=False,
                            encoder="hashing")
        return evo.optimize(program(), TRAIN, VAL, lm=LMSession(lm, retries=0, backoff_s=0),
                            optimizer=opt, cache=False, run_dir=where)

    run(ScriptedLM(respond, errors=flaky), tmp_path / "whole")
    calls = 0

    def dies(req):
        nonlocal calls
        calls += 1
        if calls > 50:
            raise Killed
        return respond(req)

    with pytest.raises(Killed):
        run(ScriptedLM(dies, errors=flaky), tmp_path / "killed")
    run(ScriptedLM(respond, errors=flaky), tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")


def test_run_spec_reads_the_same_in_every_process():
    import functools

    from evo.runs.runner import name_of as _name
    assert "0x" not in _name(functools.partial(max, default=0))
    assert _name(respond) == "evo.testing.respond"


def test_event_log_follows_a_replay_that_parts_from_it(tmp_path):
    """An answer lost from the journal and answered differently on resume: the log is cut where
    the new sitting's events part from it, so it always tells the run that produced the result."""
    import sqlite3

    search_killed_at_call(61, tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "journal.sqlite") as conn:  # lose answers 20..
        conn.execute("DELETE FROM answers WHERE seq >= 20")
    # the checkpoint saw those answers: the loss is refused, until the user accepts it
    with pytest.raises(evo.DamagedFileError, match="journal.sqlite: holds 19 answers"):
        search(ScriptedLM(respond), tmp_path / "run")
    (tmp_path / "run" / "checkpoint.json").unlink()
    contrary = ScriptedLM(lambda req: "label: pos" if req.purpose == "task" else respond(req))
    result = search(contrary, tmp_path / "run")
    kinds = [json.loads(x)["event"] for x in
             (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert kinds == [e["event"] for e in result.events]
    cands = [json.loads(x).get("candidate") for x in
             (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert cands == [e.get("candidate") for e in result.events]


def test_a_session_reused_after_a_stored_run_does_not_write_into_its_journal(tmp_path):
    session = LMSession(ScriptedLM(respond))
    search(session, tmp_path / "a", budget=60)
    size = len(Journal(tmp_path / "a" / "journal.sqlite"))
    search(session, None, budget=90)  # same session, no store
    assert session.journal is None
    assert len(Journal(tmp_path / "a" / "journal.sqlite")) == size


def test_a_damaged_store_is_one_clear_error_or_is_mended(tmp_path):
    search(ScriptedLM(respond), tmp_path / "run", budget=60)
    log = tmp_path / "run" / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]) + "{not json\n" + "".join(lines[6:]))
    result = search(ScriptedLM(respond), tmp_path / "run", budget=60)  # log mended from line 6
    now = log.read_text().splitlines()
    assert [json.loads(x)["event"] for x in now] == [e["event"] for e in result.events]
    assert now[:5] == [x.rstrip("\n") for x in lines[:5]]  # the intact lines keep their times
    (tmp_path / "run" / "run.json").write_text("{oops")
    with pytest.raises(evo.DamagedFileError, match="run.json: not a readable run file"):
        search(ScriptedLM(respond), tmp_path / "run", budget=60)


# ---- a run directory is created by evo or refused ----------------------------------------------

def refused_untouched(where: Path, match: str) -> None:
    """Opening ``where`` as a run directory is refused before anything is written there."""
    def snapshot():
        if not where.is_dir():
            return where.read_bytes() if where.exists() else None
        return {p.name: p.read_bytes() if p.is_file() else None for p in where.iterdir()}
    before = snapshot()
    lm = ScriptedLM(respond)
    with pytest.raises(evo.UnsafeRunDirError, match=match):
        search(lm, where, budget=60)
    assert lm.calls == []
    assert snapshot() == before


def test_a_folder_evo_did_not_make_is_refused_and_left_untouched(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name, text in (("result.json", "[1]"), ("best.json", "{}"), ("report.html", "<p>"),
                       ("events.jsonl", "mine\n"), ("lock", "my lock"), ("notes.txt", "x")):
        (project / name).write_text(text)
    refused_untouched(project, r"not an evo run directory.*best\.json, events\.jsonl, lock")
    refused_untouched(project / "notes.txt", "is not a folder")  # a file
    one = tmp_path / "one"  # even a lone `lock` that evo did not write
    one.mkdir()
    (one / "lock").write_text("keep me")
    refused_untouched(one, r"not empty \(lock\)")


def test_roots_home_and_folders_above_home_or_here_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    (home / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work")
    for where, why in ((Path("/"), "filesystem root"), (home, "your home directory"),
                       (Path("~"), "your home directory"), (tmp_path / "home", "above your home"),
                       (tmp_path, "above your home"), (Path(".."), "home directory")):
        existed = {name: (where.expanduser() / name).exists()
                   for name in ("lock", "run.json", "journal.sqlite", "events.jsonl")}
        with pytest.raises(evo.UnsafeRunDirError, match=why):
            evo.RunStore(where, {"seed": 0})
        assert existed == {name: (where.expanduser() / name).exists() for name in existed}
    (home / "work" / "sub").mkdir()
    monkeypatch.chdir(home / "work" / "sub")
    with pytest.raises(evo.UnsafeRunDirError, match="above the current directory"):
        evo.RunStore(home / "work", {"seed": 0})


def test_a_new_an_empty_or_an_evo_folder_is_accepted(tmp_path):
    search(ScriptedLM(respond), tmp_path / "a" / "b" / "new", budget=60)  # parents made
    (tmp_path / "empty").mkdir()
    search(ScriptedLM(respond), tmp_path / "empty", budget=60)
    search(ScriptedLM(respond), tmp_path / "empty", budget=60)  # evo's own: resumed
    started = tmp_path / "started"  # a run killed after its lock, before its run file
    started.mkdir()
    (started / "lock").write_text("pid 12345")
    search(ScriptedLM(respond), started, budget=60)
    assert json.loads((started / "run.json").read_text())["evo_run"] == 1


def test_a_lock_or_run_file_link_in_a_new_folder_is_refused_and_its_target_untouched(tmp_path):
    """Links that look like what a killed run leaves (its lock, a half-written run file) are no
    leftovers: the folder is refused, and nothing is written through them."""
    lock, half = tmp_path / "precious.txt", tmp_path / "precious.json"
    lock.write_text("pid 7")
    half.write_text("{")
    new = tmp_path / "new"
    new.mkdir()
    (new / "lock").symlink_to(lock)
    (new / "run.json.tmp").symlink_to(half)
    refused_untouched(new, r"not empty \(lock, run\.json\.tmp\)")
    assert (lock.read_text(), half.read_text()) == ("pid 7", "{")


def test_a_symlinked_run_directory_is_used_unless_it_leads_somewhere_protected(
        tmp_path, monkeypatch):
    data = tmp_path / "data" / "runs"
    data.mkdir(parents=True)
    (tmp_path / "runs").symlink_to(data)  # e.g. runs -> /data/runs
    search(ScriptedLM(respond), tmp_path / "runs" / "a", budget=60)
    (tmp_path / "a").symlink_to(data / "a")  # the run directory itself a link: resumed
    again = ScriptedLM(respond)
    search(again, tmp_path / "a", budget=60)
    assert len(again.calls) == 1  # the preflight
    assert (data / "a" / "result.json").is_file()
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "to-home").symlink_to(home)
    refused_untouched(tmp_path / "to-home", "your home directory")
    (tmp_path / "to-root").symlink_to("/")
    with pytest.raises(evo.UnsafeRunDirError, match="filesystem root"):
        evo.RunStore(tmp_path / "to-root", {"seed": 0})


def _lock_is_free(run: Path) -> bool:
    import fcntl
    with open(run / "lock") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


def test_optimize_releases_the_run_directory_when_it_returns(tmp_path):
    """The lock is free as soon as optimize returns; the result holds no live handle (no store,
    journal or session); dropping it warns of nothing left open; close() may be called twice."""
    import gc
    import warnings

    # what earlier tests left for the collector is not this run's (a full-suite run once met
    # an unclosed event loop here whose source no single test directory reproduces)
    gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = search(ScriptedLM(respond), tmp_path / "run", budget=60)
        assert _lock_is_free(tmp_path / "run")
        assert not hasattr(result, "store") and result.run_dir == tmp_path / "run"
        assert not any(isinstance(v, evo.RunStore | Journal | LMSession)
                       for v in vars(result).values())
        del result
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
    store = evo.RunStore(tmp_path / "other", {"seed": 0})
    store.close()
    store.close()
    assert store.closed


def test_optimize_twice_on_one_run_directory_in_one_process(tmp_path):
    """A notebook cell run again: the second call resumes the finished run (replayed from its
    journal, no paid call) while the first result is still held, and gets the same result."""
    lm = ScriptedLM(respond)
    first = search(lm, tmp_path / "run", budget=60)
    paid = len(lm.calls)
    again = search(lm, tmp_path / "run", budget=60)
    assert _lock_is_free(tmp_path / "run")
    assert len(lm.calls) == paid + 1  # its preflight only
    assert again.best.to_json() == first.best.to_json()
    assert again.usage.calls == 0 and again.usage.replayed == first.usage.calls
    assert [s["sitting"] for s in again.sittings] == [1, 2]


def test_report_journals_its_test_pass_after_optimize_returned(tmp_path):
    """Result.report reopens the run's journal (under the lock, which it frees again): the test
    pass is booked to the search's sitting, phase 'test', and a resumed run replays it."""
    lm = ScriptedLM(respond)
    result = search(lm, tmp_path / "run", budget=60)
    report = result.report(TEST[:6])
    assert _lock_is_free(tmp_path / "run")
    test = Journal(tmp_path / "run" / "journal.sqlite").ledger("test")
    assert [s["paid"] for s in test] == [report.test_usage["calls"]] and report.test_usage["calls"]
    again = search(ScriptedLM(respond), tmp_path / "run", budget=60)
    replay = again.report(TEST[:6])
    assert replay.test_usage["calls"] == 0 and replay.test_usage["replayed"] > 0
    assert (replay.baseline, replay.optimized) == (report.baseline, report.optimized)


# ---- a failed write names its path and leaves no temporary file --------------------------------

def test_a_failed_atomic_write_is_a_storage_error_naming_the_path(tmp_path, monkeypatch):
    """evo._io's writers (run files, reports): a folder where the file should go, a path that
    cannot be made, a full disk. (`evo report --out DIR` itself: tests/test_failures_visible.py.)"""
    import errno

    from evo._io import write_json, write_text

    folder = tmp_path / "report.html"  # a folder where the file should go
    folder.mkdir()
    for write in (write_text, write_json):
        with pytest.raises(evo.StorageError, match=f"{folder}: cannot write.*folder is in the way"):
            write(folder, "page")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no report.html.tmp
    with pytest.raises(evo.StorageError, match="/proc/evo/x.json: cannot write"):
        write_json("/proc/evo/x.json", {})

    target = tmp_path / "best.json"
    target.write_text("old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(evo.StorageError, match=f"{target}: cannot write.*disk is full"):
        write_json(target, {"new": 1})
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "report.html"]


def test_a_full_disk_stops_the_run_naming_the_file_and_the_run_resumes(tmp_path, monkeypatch):
    import errno

    whole = search(ScriptedLM(respond), tmp_path / "whole", budget=60)
    # the event log on a full disk (the real /dev/full)
    store = evo.RunStore(tmp_path / "log", {"seed": 0})
    store.close_events()  # the log's own handle, swapped for one on the full disk
    store._handles.events = open("/dev/full", "a")  # noqa: SIM115 (closed by store.close())
    with pytest.raises(evo.StorageError, match=r"events\.jsonl: cannot write.*disk is full"):
        store.record({"event": "start"})
    store.close()
    # the disk fills up after the first checkpoint (the next is the last, the search done)
    real, writes = os.replace, []

    def replace(src, dst):
        writes.append(Path(dst).name)
        if writes.count("checkpoint.json") > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(evo.StorageError, match=r"checkpoint\.json: cannot write.*disk is full"):
        search(ScriptedLM(respond), tmp_path / "run", budget=60)
    assert not list((tmp_path / "run").glob("*.tmp"))
    monkeypatch.setattr(os, "replace", real)  # space freed: the run resumes, paying only new
    lm = ScriptedLM(respond)
    resumed = search(lm, tmp_path / "run", budget=60)
    assert resumed.best_val == whole.best_val
    assert sum(s["paid"] for s in resumed.sittings) == whole.sittings[0]["paid"]


def test_an_atomic_write_replaces_a_link_never_its_target(tmp_path):
    from evo._io import write_json, write_text

    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (tmp_path / "best.json").symlink_to(precious)
    write_json(tmp_path / "best.json", {"a": 1})  # the rename replaces the link itself
    assert precious.read_text() == "mine"
    assert not (tmp_path / "best.json").is_symlink()
    assert json.loads((tmp_path / "best.json").read_text()) == {"a": 1}
    (tmp_path / "report.html.tmp").symlink_to(precious)  # a link at the temporary name
    write_text(tmp_path / "report.html", "<p>")
    assert precious.read_text() == "mine"
    assert (tmp_path / "report.html").read_text() == "<p>"
    assert not (tmp_path / "report.html.tmp").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_atomic_write_never_replaces_a_device_or_a_pipe(tmp_path, kind):
    """`evo report RUN --out /dev/null` (as root) once replaced /dev/null with a file."""
    from evo._io import write_text

    path = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    with pytest.raises(evo.StorageError, match="not a regular file"):
        write_text(path, "<html>")
    assert not path.is_file() and (stat.S_ISFIFO if kind == "fifo" else stat.S_ISCHR)(
        path.stat().st_mode)
