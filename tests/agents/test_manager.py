"""The optimization manager (evo.agents.manager): a persistent job queue whose jobs survive a
SIGKILL and resume through their run store with no paid call repeated, cancel (queued and
running) and retry, one shared metric-call budget, events streamed while a job runs, leases so
two processes never run one job, and a damaged queue file answered by one clear error.
ScriptedLM only; every wait is bounded."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import evo.testing as T
from evo.agents.events import AgentCallback
from evo.agents.manager import Job, OptimizationManager, UnknownJobError
from evo.errors import ConfigError, DamagedFileError
from evo.lm.journal import Journal

REPO = Path(__file__).parents[2]

# A real search as a job runner: the sentiment task, its LM's requests logged to a file (one
# line per request the LM was asked: replays never reach it), so several processes' paid calls
# can be counted together. Written to a file so a subprocess and this process share it.
RUNNER = r'''
import hashlib, sys, threading
import evo.testing as T
from evo.lm import ScriptedLM
from evo.optimizers.evolution import Evolution
from evo.runs.runner import run
from evo.search.evaluate import Budget

_lock = threading.Lock()


def make_runner(log, delay=0.0, gate=None):
    def respond(req):
        if req.purpose != "preflight":  # every sitting checks its LM afresh (not journaled)
            key = hashlib.sha256(req.key("scripted").encode()).hexdigest()[:16]
            with _lock, open(log, "a") as f:
                f.write(key + "\n")
            if gate is not None:
                gate()
        return T.respond(req)

    def runner(job, run_dir, *, budget, on_event):
        res = run(T.program(), T.TRAIN, T.VAL, lm=ScriptedLM(respond, delay_s=delay),
                  optimizer=Evolution(budget=Budget(metric_calls=budget), knn=False,
                                      encoder="hashing"),
                  cache=False, run_dir=run_dir, on_event=on_event)
        return {"metric_calls": res.metric_calls, "best_val": res.best_val,
                "usage": res.usage.to_dict(), "ledger": res.sittings}
    return runner


if __name__ == "__main__":
    from evo.agents.manager import OptimizationManager
    home, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    mgr = OptimizationManager(home)
    mgr.register("sentiment", make_runner(log, delay))
    print("ready", flush=True)
    mgr.run_pending()
    print("finished", flush=True)
'''


@pytest.fixture
def runner_module(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "job_runner.py"
    path.write_text(RUNNER)
    spec = importlib.util.spec_from_file_location("job_runner", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake(result: dict | None = None, seen: list | None = None):  # type: ignore[no-untyped-def]
    """A runner that records the jobs it ran and reports the budget it got as used."""
    def runner(job: Job, run_dir: Path, *, budget: int | None, on_event) -> dict:  # noqa: ANN001
        if seen is not None:
            seen.append((job.id, budget))
        on_event({"event": "note", "t": time.time()})
        return result if result is not None else {"metric_calls": budget or 0}
    return runner


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---- the queue ------------------------------------------------------------------------------

def test_jobs_persist_and_run_oldest_first_with_their_events(tmp_path):
    events: list[dict] = []
    kinds: list[str] = []

    class Hooks(AgentCallback):
        def on_job_scheduled(self, event):  # type: ignore[no-untyped-def]
            kinds.append(f"scheduled {event.job}")

        def on_job_finished(self, event):  # type: ignore[no-untyped-def]
            kinds.append(f"finished {event.job} {event.status}")

    mgr = OptimizationManager(tmp_path, on_event=events.append, callbacks=[Hooks()])
    a = mgr.schedule("qa", {"budget": 5, "x": [1, 2]}, reason="every 10")
    b = mgr.schedule("qa", {"budget": 7})
    assert a.id.startswith("j-") and a.status == "queued" and a.reason == "every 10"
    # persisted: another manager on the home sees them
    assert [j.id for j in OptimizationManager(tmp_path).history()] == [b.id, a.id]
    seen: list = []
    mgr.register("qa", fake(seen=seen))
    done = mgr.run_pending()
    assert [j.id for j in done] == [a.id, b.id] and seen == [(a.id, 5), (b.id, 7)]
    got = mgr.status(a.id)
    assert (got.status, got.sittings, got.result, got.spec) == (
        "done", 1, {"metric_calls": 5}, {"budget": 5, "x": [1, 2]})
    assert got.started is not None and got.finished is not None and got.error is None
    assert json.loads(json.dumps(got.to_dict()))["id"] == a.id
    assert kinds == [f"scheduled {a.id}", f"scheduled {b.id}", f"finished {a.id} done",
                     f"finished {b.id} done"]
    assert [e["event"] for e in events if e.get("job") == a.id] == [
        "job_scheduled", "note", "job_finished"]
    assert [j.id for j in mgr.history("qa", status="done", limit=1)] == [b.id]
    assert mgr.history("other") == []
    with pytest.raises(UnknownJobError, match="no job 'j-nope'"):
        mgr.status("j-nope")
    with pytest.raises(ConfigError, match="JSON-able"):
        mgr.schedule("qa", {"f": object()})
    with pytest.raises(ConfigError, match="budget"):
        mgr.schedule("qa", {"budget": 0})


def test_jobs_of_an_unregistered_agent_wait_in_the_queue(tmp_path):
    mgr = OptimizationManager(tmp_path)
    job = mgr.schedule("later", {})
    mgr.register("other", fake())
    assert mgr.run_pending() == [] and mgr.status(job.id).status == "queued"
    mgr.register("later", fake())
    assert [j.status for j in mgr.run_pending()] == ["done"]


def test_summaries_statuses_and_results_are_read_without_the_specs(tmp_path):
    mgr = OptimizationManager(tmp_path)
    mgr.register("qa", fake())
    done = mgr.schedule("qa", {"rows": ["x"] * 3})
    mgr.run_pending()
    waiting = mgr.schedule("later", {})
    got = mgr.summaries([done.id, waiting.id, "j-unknown"])
    assert set(got) == {done.id, waiting.id} and "spec" not in got[done.id]
    assert got[done.id]["status"] == "done" and got[waiting.id]["status"] == "queued"
    assert got[done.id]["sittings"] == 1 and got[done.id]["finished"] >= got[done.id]["created"]
    assert mgr.ids_with_status("queued") == {waiting.id}
    assert mgr.result(done.id) == mgr.status(done.id).result is not None
    assert mgr.result(waiting.id) is None
    with pytest.raises(UnknownJobError, match="j-unknown"):
        mgr.result("j-unknown")
    with pytest.raises(ConfigError, match="unknown job status 'lost'"):
        mgr.ids_with_status("lost")  # type: ignore[arg-type]
    many = [mgr.schedule("later", {}).id for _ in range(600)]  # past one IN (...) chunk
    assert set(mgr.summaries(many)) == set(many)


def test_a_runner_that_raises_fails_its_job_and_the_worker_goes_on(tmp_path):
    finished: list[dict] = []
    mgr = OptimizationManager(tmp_path, on_event=finished.append)

    def broken(job, run_dir, *, budget, on_event):  # type: ignore[no-untyped-def]
        raise RuntimeError("the optimizer fell over")

    mgr.register("bad", broken)
    mgr.register("good", fake())
    bad, good = mgr.schedule("bad", {}), mgr.schedule("good", {})
    mgr.start()
    try:
        assert mgr.wait(good.id, timeout=30).status == "done"
    finally:
        mgr.stop()
    failed = mgr.status(bad.id)
    assert failed.status == "failed" and failed.error == "RuntimeError: the optimizer fell over"
    assert {"event": "job_finished", "job": bad.id, "status": "failed"}.items() <= next(
        e for e in finished if e["event"] == "job_finished" and e["job"] == bad.id).items()


def test_several_workers_run_each_job_once(tmp_path):
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def runner(job, run_dir, *, budget, on_event):  # type: ignore[no-untyped-def]
        with lock:
            ran.append((job.id, threading.current_thread().name))
        time.sleep(0.005)
        return {"metric_calls": 0}

    with OptimizationManager(tmp_path, workers=3) as mgr:
        mgr.register("a", runner)
        jobs = [mgr.schedule("a", {}) for _ in range(12)]
        mgr.start()
        for job in jobs:
            assert mgr.wait(job.id, timeout=30).status == "done"
    assert sorted(job_id for job_id, _ in ran) == sorted(j.id for j in jobs)


def test_keyboard_interrupt_is_not_swallowed_and_the_job_stays_queued(tmp_path):
    mgr = OptimizationManager(tmp_path)

    def interrupted(job, run_dir, *, budget, on_event):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    mgr.register("a", interrupted)
    job = mgr.schedule("a", {})
    with pytest.raises(KeyboardInterrupt):
        mgr.run_pending()
    assert mgr.status(job.id).status == "queued"
    mgr.register("a", fake())
    assert mgr.run_pending()[0].sittings == 2


# ---- budget ---------------------------------------------------------------------------------

def test_one_shared_budget_across_jobs(tmp_path):
    """Budget 30, three jobs asking 20: the first gets 20, the second what is left (10), the
    third fails saying the shared budget is spent. A done job is charged what it used."""
    seen: list = []
    mgr = OptimizationManager(tmp_path, budget=30)
    mgr.register("a", fake(seen=seen))
    jobs = [mgr.schedule("a", {"budget": 20}) for _ in range(3)]
    mgr.run_pending()
    assert seen == [(jobs[0].id, 20), (jobs[1].id, 10)]
    got = [mgr.status(j.id) for j in jobs]
    assert [(j.status, j.budget) for j in got] == [("done", 20), ("done", 10), ("failed", None)]
    assert "shared budget of 30 metric calls is spent" in (got[2].error or "")

    # a job that used less than its share leaves the rest to the next one
    seen.clear()
    mgr = OptimizationManager(tmp_path / "b", budget=30)
    mgr.register("a", fake(result={"metric_calls": 4}, seen=seen))
    mgr.register("b", fake(seen=seen))
    first, second = mgr.schedule("a", {"budget": 20}), mgr.schedule("b", {})
    mgr.run_pending()
    assert seen == [(first.id, 20), (second.id, 26)]


def test_schedule_batch_splits_the_budget_evenly(tmp_path):
    mgr = OptimizationManager(tmp_path)
    jobs = mgr.schedule_batch([("a", {"k": 1}), ("b", {}), ("c", {"budget": 99})], budget=10)
    assert [(j.name, j.spec, j.reason) for j in jobs] == [
        ("a", {"k": 1, "budget": 4}, "batch"), ("b", {"budget": 3}, "batch"),
        ("c", {"budget": 3}, "batch")]
    assert [mgr.status(j.id).spec["budget"] for j in jobs] == [4, 3, 3]
    with pytest.raises(ConfigError, match="cannot be shared by 3 jobs"):
        mgr.schedule_batch([("a", {}), ("b", {}), ("c", {})], budget=2)


# ---- cancel and retry -----------------------------------------------------------------------

def test_cancel_a_queued_job_and_not_a_finished_one(tmp_path):
    mgr = OptimizationManager(tmp_path)
    job = mgr.schedule("a", {})
    assert mgr.cancel(job.id).status == "cancelled"
    mgr.register("a", fake())
    assert mgr.run_pending() == []  # never ran
    with pytest.raises(ConfigError, match="has finished \\(cancelled\\)"):
        mgr.cancel(job.id)
    done = mgr.schedule("a", {})
    mgr.run_pending()
    with pytest.raises(ConfigError, match="has finished \\(done\\)"):
        mgr.cancel(done.id)
    with pytest.raises(ConfigError, match="only a failed or cancelled"):
        mgr.retry(done.id)


def test_cancel_a_running_job_then_retry_resumes_it_from_its_journal(tmp_path, runner_module):
    """A running job stops at its next event once cancelled (here the cancel comes from inside
    its 20th LM call, in the worker thread); its run directory keeps what was paid, and retry
    resumes it: nothing is asked twice, the result is the uninterrupted one."""
    log = tmp_path / "calls.log"
    mgr = OptimizationManager(tmp_path / "home")
    other = OptimizationManager(tmp_path / "home")  # the cancel goes through the queue file
    job_id: list[str] = []

    def cancel_at_20() -> None:
        if len(lines(log)) == 20:
            assert other.cancel(job_id[0]).status == "running"

    mgr.register("sentiment", runner_module.make_runner(log, gate=cancel_at_20))
    job_id.append(mgr.schedule("sentiment", {"budget": 60}).id)
    mgr.start()
    try:
        cancelled = mgr.wait(job_id[0], timeout=60)
    finally:
        mgr.stop()
    assert cancelled.status == "cancelled" and "was cancelled" in (cancelled.error or "")
    paid_before = len(lines(log))
    assert 20 <= paid_before < 40
    journal = Journal(mgr.run_dir(job_id[0]) / "journal.sqlite")
    assert len(journal) == paid_before
    journal.close()

    mgr.register("sentiment", runner_module.make_runner(log))
    assert mgr.retry(job_id[0]).status == "queued"
    (resumed,) = mgr.run_pending()
    assert (resumed.status, resumed.sittings) == ("done", 2)
    assert resumed.result["usage"]["replayed"] == paid_before
    whole_log = tmp_path / "whole.log"
    whole = runner_module.make_runner(whole_log)(
        resumed, tmp_path / "whole", budget=60, on_event=lambda e: None)
    assert sorted(lines(log)) == sorted(lines(whole_log))  # each request asked once
    assert resumed.result["best_val"] == whole["best_val"]
    T.assert_same_run(mgr.run_dir(job_id[0]), tmp_path / "whole")


# ---- events ---------------------------------------------------------------------------------

def test_events_follow_a_running_job_in_order_until_it_finishes(tmp_path, runner_module):
    first_seen = threading.Event()
    mgr = OptimizationManager(tmp_path / "home")
    # the LM waits (bounded) until the follower has the first event: it is read while running
    mgr.register("sentiment", runner_module.make_runner(
        tmp_path / "calls.log", gate=lambda: first_seen.wait(30)))
    job = mgr.schedule("sentiment", {"budget": 40})
    mgr.start()
    streamed, status_at_first = [], None
    try:
        for event in mgr.events(job.id, follow=True, timeout=60):
            if not streamed:
                status_at_first = mgr.status(job.id).status
                first_seen.set()
            streamed.append(event)
    finally:
        first_seen.set()
        mgr.stop()
    assert status_at_first == "running"
    assert mgr.status(job.id).status == "done"  # the stream ended because the job finished
    on_file = [json.loads(line) for line in
               (mgr.run_dir(job.id) / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in streamed] == list(range(1, len(on_file) + 1))
    assert [{k: v for k, v in e.items() if k != "seq"} for e in streamed] == on_file
    assert on_file[-1]["event"] == "complete"
    later = list(mgr.events(job.id, after=len(on_file) - 2))
    assert [e["seq"] for e in later] == [len(on_file) - 1, len(on_file)]


# ---- crash and resume -----------------------------------------------------------------------

def test_a_job_killed_mid_run_resumes_with_no_paid_call_repeated(tmp_path, runner_module):
    """A process running a job is SIGKILLed once its journal holds answers; a manager built
    again on the same home puts the job back in the queue and runs it: its second sitting
    replays every answer paid before the kill, and across both processes each request was
    asked once, as many as an uninterrupted run asks."""
    home, log = tmp_path / "home", tmp_path / "calls.log"
    job = OptimizationManager(home).schedule("sentiment", {"budget": 120})
    proc = subprocess.Popen([sys.executable, str(tmp_path / "job_runner.py"), str(home),
                             str(log), "0.02"], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        journal = home / "runs" / job.id / "journal.sqlite"

        def answers() -> int:
            if not journal.exists():
                return 0
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as conn:
                    return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            except sqlite3.OperationalError:  # the table is not made yet
                return 0

        wait_until(lambda: answers() >= 15 or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    paid_before = len(lines(log))
    assert OptimizationManager(home).status(job.id).status in ("queued", "running")

    mgr = OptimizationManager(home)  # a new process's manager: recovers the job
    assert mgr.status(job.id).status == "queued"
    mgr.register("sentiment", runner_module.make_runner(log))
    (resumed,) = mgr.run_pending()
    assert (resumed.status, resumed.sittings) == ("done", 2)
    ledger = resumed.result["ledger"]
    assert [s["sitting"] for s in ledger] == [1, 2] and ledger[0]["paid"] == paid_before
    assert resumed.result["usage"]["replayed"] == paid_before > 0

    whole_log = tmp_path / "whole.log"
    runner_module.make_runner(whole_log)(resumed, tmp_path / "whole", budget=120,
                                         on_event=lambda e: None)
    paid = lines(log)
    assert len(paid) == len(set(paid))  # no request asked twice across the two processes
    assert sorted(paid) == sorted(lines(whole_log))
    T.assert_same_run(mgr.run_dir(job.id), tmp_path / "whole")


# ---- leases ---------------------------------------------------------------------------------

TWO = r'''
import os, sys, time
from evo.agents.manager import OptimizationManager

def runner(job, run_dir, *, budget, on_event):
    with open(sys.argv[2], "a") as f:
        f.write(f"{job.id} {os.getpid()}\n")
    time.sleep(0.03)
    return {"metric_calls": 0}

mgr = OptimizationManager(sys.argv[1])
mgr.register("a", runner)
print("ready", flush=True)
sys.stdin.readline()  # both start together
mgr.run_pending()
'''


def test_two_processes_on_one_home_never_run_the_same_job(tmp_path):
    home, log = tmp_path / "home", tmp_path / "ran.log"
    mgr = OptimizationManager(home)
    jobs = [mgr.schedule("a", {}) for _ in range(12)]
    (tmp_path / "two.py").write_text(TWO)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "two.py"), str(home), str(log)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(ran) == sorted(j.id for j in jobs)  # each job ran once
    assert all((j.status, j.sittings) == ("done", 1) for j in mgr.history())


def test_a_job_whose_lease_is_held_is_neither_taken_nor_recovered(tmp_path):
    mgr = OptimizationManager(tmp_path)
    job = mgr.schedule("a", {})
    lease = mgr._lease(job.id)  # another process taking it right now
    assert lease is not None
    try:
        other = OptimizationManager(tmp_path)
        other.register("a", fake())
        assert other.run_pending() == []
        with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:  # as if it were running
            conn.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (job.id,))
        assert OptimizationManager(tmp_path).status(job.id).status == "running"
    finally:
        lease.close()
    # its process died (the lease is free): the next manager puts it back in the queue
    again = OptimizationManager(tmp_path)
    assert again.status(job.id).status == "queued"
    again.register("a", fake())
    assert [j.sittings for j in again.run_pending()] == [1]


def test_stop_pauses_a_running_job_back_to_the_queue(tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow(job, run_dir, *, budget, on_event):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(30)
        on_event({"event": "note"})  # the next event: the manager is stopping
        return {"metric_calls": 0}

    mgr = OptimizationManager(tmp_path)
    mgr.register("a", slow)
    job = mgr.schedule("a", {})
    mgr.start()
    assert started.wait(30)
    mgr.stop(wait=False)
    release.set()
    mgr.stop()
    assert mgr.status(job.id).status == "queued"


# ---- a damaged queue ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"garbage " * 100, b"SQLite format 3\x00" + b"\x01" * 600])
def test_a_damaged_queue_file_is_one_clear_error(tmp_path, content):
    (tmp_path / "jobs.sqlite").write_bytes(content)
    with pytest.raises(DamagedFileError, match="jobs.sqlite") as info:
        OptimizationManager(tmp_path)
    assert info.value.path == str(tmp_path / "jobs.sqlite")
    assert (tmp_path / "jobs.sqlite").read_bytes() == content  # left as it was


def test_a_queue_of_another_shape_or_a_link_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:
        conn.execute("CREATE TABLE jobs (id TEXT)")
    with pytest.raises(DamagedFileError, match="not an evo job queue"):
        OptimizationManager(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "jobs.sqlite").symlink_to(tmp_path / "jobs.sqlite")
    with pytest.raises(DamagedFileError, match="symbolic link"):
        OptimizationManager(other)
