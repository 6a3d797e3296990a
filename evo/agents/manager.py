"""The optimization manager: a persistent queue of optimization jobs that survive a crash.

An agent asks for a new optimization by scheduling a *job* (its name, a JSON spec its runner
understands, the reason); the manager runs queued jobs, oldest first, with the runner each agent
registered, each in its own run directory::

    HOME/                     (default: cache_root()/"jobs")
      jobs.sqlite             the queue: one row per job (SQLite, WAL); every state change is
                              one transaction
      locks/<job id>.lock     the lease of a running job (an fcntl lock, held while it runs)
      runs/<job id>/          the job's run directory (evo.runs.store): journal, events, result

A job's run is a run store, so a crash loses nothing: when a manager is built on HOME, every job
left "running" whose lease nobody holds (its process died) goes back to the queue, and when it
runs again its runner opens the same run directory, whose journal replays every answer paid
before the crash (``sittings`` counts the starts: 2 after one crash and resume).

Leases: a job runs only while its process holds ``locks/<job id>.lock`` (``flock``, released by
the kernel when the process dies, even by SIGKILL). Taking a job is: take its lock, then, in
one transaction, check it is still queued and mark it running. So two managers sharing a home
(threads or processes on one host) never run the same job, and a job is recovered only when its
lease is free. The lock is local to the host: share a home between processes on one machine.

Cancelling a queued job is immediate; a running one stops at its next event (the manager's
``on_event`` raises :class:`JobCancelled` inside the run; the run store keeps what was paid). A
cancelled or failed job keeps its run directory: :meth:`OptimizationManager.retry` queues it
again under the same id and it resumes from its journal, paying nothing twice.

The shared budget (``budget=``) is one metric-call budget for every job this manager starts: a
job gets ``min(spec["budget"], what is left)``; a done job is charged what it used (its result's
``metric_calls``), a failed or cancelled one what it was allotted; a job that would get 0 fails
with an error saying so. A resumed job keeps the allotment of its first sitting (its run spec,
hence its journal, depends on it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from evo._sqlite import check_store, immediate, store_errors
from evo.agents.events import AgentCallback, JobFinished, JobScheduled
from evo.errors import ConfigError, DamagedFileError, EvoError, StorageError
from evo.paths import cache_root
from evo.runs.events import dispatch

__all__ = ["Job", "JobCancelled", "JobRunner", "OptimizationManager", "UnknownJobError"]

Status = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED = ("done", "failed", "cancelled")
DB_FILE = "jobs.sqlite"
_HINT = ("it holds the job queue: restore it from a backup, or move it away (the jobs' run "
         "directories under runs/ are kept) and schedule the jobs again")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    spec TEXT NOT NULL,            -- JSON
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result TEXT,                   -- JSON, once done
    error TEXT,
    sittings INTEGER NOT NULL DEFAULT 0,
    budget INTEGER,                -- metric calls allotted at the first start
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT                     -- 'pid N' of the process running it
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""
_COLUMNS = {"seq", "id", "name", "status", "reason", "spec", "created", "started", "finished",
            "result", "error", "sittings", "budget", "cancel_requested", "owner"}
_SUMMARY = ("id", "name", "status", "created", "started", "finished", "error", "sittings",
            "budget")
_FIELDS = ("id", "name", "status", "reason", "spec", "created", "started", "finished", "result",
           "error", "sittings", "budget")


@dataclass
class Job:
    """One optimization job, as the queue holds it."""

    id: str
    name: str
    status: Status
    reason: str
    spec: dict[str, Any]
    created: float
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    sittings: int = 0
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobRunner(Protocol):
    """Runs one job's search in ``run_dir`` as a run store (so a crash resumes by replay) and
    returns a JSON-able summary with at least ``"metric_calls"``; raising fails the job. It must
    pass every event to ``on_event`` (that is how a cancel reaches it)."""

    def __call__(self, job: Job, run_dir: Path, *, budget: int | None,
                 on_event: Callable[[dict], None]) -> dict: ...


class JobCancelled(EvoError):
    """Raised inside a running job at its next event once it was cancelled."""


class _Paused(BaseException):
    """Raised inside a running job when its manager stops: the job goes back to the queue."""


class UnknownJobError(EvoError, KeyError):
    """No job with that id in the queue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def new_job_id(now: float | None = None) -> str:
    """A new job id, sortable by time: ``j-20261129-143501-ab12cd``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"j-{stamp}-{secrets.token_hex(3)}"


def _loads(text: str | None, what: str, path: Path, job: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DamagedFileError(path, f"job {job}: its {what} is not JSON ({exc})",
                               hint=_HINT) from None


class OptimizationManager:
    """A persistent job queue in ``home`` (default ``cache_root()/"jobs"``) and the workers
    that run it. Safe to use from several threads, and from several processes on one host.

    >>> # mgr = OptimizationManager(budget=600); mgr.register("qa", runner)
    >>> # job = mgr.schedule("qa", {"budget": 200}); mgr.run_pending(); mgr.status(job.id)
    """

    def __init__(self, home: str | Path | None = None, *, workers: int = 1,
                 budget: int | None = None, on_event: Callable[[dict], None] | None = None,
                 callbacks: Sequence[AgentCallback] = (), poll_s: float = 0.2) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1 (got {workers})")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 0):
            raise ConfigError(f"budget must be a number of metric calls >= 0 or None "
                              f"(got {budget!r})")
        self.home = Path(home) if home is not None else cache_root() / "jobs"
        self.path = self.home / DB_FILE
        self.workers = workers
        self.budget = budget
        self.on_event = on_event
        self.callbacks = list(callbacks)
        self.poll_s = poll_s  # how often idle workers and followers look again
        self._runners: dict[str, Callable[..., dict]] = {}
        self._lock = threading.RLock()  # the connection, the runners, the budget ledger
        self._changed = threading.Condition(threading.Lock())  # a job of ours changed
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        for sub in ("locks", "runs"):
            try:
                (self.home / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{self.home / sub}: cannot create the folder "
                                   f"({exc.strerror or exc})") from exc
        self._conn = self._connect()
        # per thread, a read-only connection (WAL readers neither wait for nor block the
        # writer); those of threads that ended are closed when the next one is opened
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self.recover()

    # ---- the store ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.path.is_symlink():
            raise DamagedFileError(self.path, f"is a symbolic link (to {os.readlink(self.path)})"
                                   ": evo does not write its queue through links", hint=_HINT)
        if self.path.exists() and not self.path.is_file():
            raise DamagedFileError(self.path, "is not a regular file (a folder is in its place?)",
                                   hint=_HINT)
        with self._errors():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        try:
            with self._errors():
                check_store(conn, self.path, {"jobs": _COLUMNS}, what="job queue", hint=_HINT,
                            schema=_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _errors(self) -> AbstractContextManager[None]:
        """SQLite's errors as evo's, naming the queue file."""
        return store_errors(self.path, what="job queue", hint=_HINT)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN IMMEDIATE: the write lock at once, so a read-then-write
        decision cannot be overtaken by another process)."""
        with self._lock, self._errors(), immediate(self._conn) as conn:
            yield conn

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """A read on this thread's own read-only connection: polls (status pages, listings)
        from many threads run side by side and never wait for a worker's transaction."""
        me = threading.current_thread()
        conn = self._readers.get(me)
        with self._errors():
            if conn is None:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                       isolation_level=None, check_same_thread=False)
                with self._lock:
                    for thread in [t for t in self._readers if not t.is_alive()]:
                        self._readers.pop(thread).close()
                    self._readers[me] = conn
            return conn.execute(sql, args).fetchall()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock, self._errors():
            return self._conn.execute(sql, args).fetchall()

    def _job(self, row: Sequence[Any]) -> Job:
        values = dict(zip(_FIELDS, row, strict=True))
        values["spec"] = _loads(values["spec"], "spec", self.path, values["id"]) or {}
        values["result"] = _loads(values["result"], "result", self.path, values["id"])
        if values["status"] not in ("queued", "running", *FINISHED):
            raise DamagedFileError(self.path, f"job {values['id']}: unknown status "
                                   f"{values['status']!r}", hint=_HINT)
        return Job(**values)

    def _get(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"SELECT {', '.join(_FIELDS)} FROM jobs WHERE id = ?",
                           (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job {job_id!r} in the job queue {self.path}")
        return self._job(row)

    def run_dir(self, job_id: str) -> Path:
        """Where job ``job_id`` keeps its run (a run store directory)."""
        return self.home / "runs" / job_id

    def _lease_path(self, job_id: str) -> Path:
        return self.home / "locks" / f"{job_id}.lock"

    def _lease(self, job_id: str) -> Any:
        """The job's lease, taken (an open, flock-ed file), or None when another holds it."""
        path = self._lease_path(job_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DamagedFileError(path, "is a symbolic link: evo takes no lease through "
                                       "links", hint="remove it") from None
            raise StorageError(f"{path}: cannot open the job's lease ({exc.strerror})") from exc
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    # ---- events ------------------------------------------------------------------------------
    def _emit(self, event: dict[str, Any]) -> None:
        if self.callbacks:
            dispatch(self.callbacks, event)
        if self.on_event is not None:
            self.on_event(event)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ---- the public API ----------------------------------------------------------------------
    def register(self, name: str, runner: JobRunner) -> None:
        """Run the jobs of ``name`` with ``runner`` (queued ones included, e.g. those left by a
        crash: they resume when their agent is built again)."""
        if not callable(runner):
            raise ConfigError(f"the runner for {name!r} is not callable ({runner!r})")
        with self._lock:
            self._runners[name] = runner
        self._notify()

    def schedule(self, name: str, spec: dict[str, Any], *, reason: str = "manual") -> Job:
        """Queue a job for ``name`` (persisted before this returns; emits JobScheduled)."""
        return self._schedule([(name, spec)], reason)[0]

    def schedule_batch(self, items: Sequence[tuple[str, dict[str, Any]]], *, budget: int,
                       reason: str = "batch") -> list[Job]:
        """Queue several agents' jobs under one shared metric-call ``budget``, split evenly
        (the remainder to the first): each job's ``spec["budget"]`` is its share."""
        if not items:
            raise ConfigError("schedule_batch: no jobs given")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < len(items):
            raise ConfigError(f"schedule_batch: a budget of {budget!r} metric calls cannot be "
                              f"shared by {len(items)} jobs (at least 1 each)")
        share, rest = divmod(budget, len(items))
        specs = [(name, {**spec, "budget": share + (rest if i == 0 else 0)})
                 for i, (name, spec) in enumerate(items)]
        return self._schedule(specs, reason)

    def _schedule(self, items: Sequence[tuple[str, dict[str, Any]]], reason: str) -> list[Job]:
        rows = []
        for name, spec in items:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"a job needs an agent name (got {name!r})")
            if not isinstance(spec, dict):
                raise ConfigError(f"job spec for {name!r} must be a dict (got {type(spec)})")
            try:
                text = json.dumps(spec, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"job spec for {name!r} is not JSON-able ({exc})") from None
            b = spec.get("budget")
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
                raise ConfigError(f"job spec for {name!r}: budget must be a positive number of "
                                  f"metric calls (got {b!r})")
            now = time.time()
            rows.append(Job(id=new_job_id(now), name=name, status="queued", reason=str(reason),
                            spec=json.loads(text), created=now))
        with self._tx() as conn:
            for job in rows:
                conn.execute("INSERT INTO jobs (id, name, status, reason, spec, created) "
                             "VALUES (?, ?, 'queued', ?, ?, ?)",
                             (job.id, job.name, job.reason, json.dumps(job.spec), job.created))
        for job in rows:
            self._emit(JobScheduled(t=job.created, agent=job.name, job=job.id,
                                    reason=job.reason).to_dict())
        self._notify()
        return rows

    def status(self, job_id: str) -> Job:
        with self._lock, self._errors():
            return self._get(self._conn, job_id)

    def history(self, name: str | None = None, *, status: str | None = None,
                limit: int | None = None) -> list[Job]:
        """Jobs, newest first (of agent ``name``, in ``status``, at most ``limit``)."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if status is not None:
            if status not in ("queued", "running", *FINISHED):
                raise ConfigError(f"unknown job status {status!r} (queued, running, done, "
                                  "failed, cancelled)")
            where.append("status = ?")
            args.append(status)
        sql = (f"SELECT {', '.join(_FIELDS)} FROM jobs"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC"
               + (" LIMIT ?" if limit is not None else ""))
        if limit is not None:
            args.append(int(limit))
        return [self._job(r) for r in self._query(sql, tuple(args))]

    def summaries(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The state and times of jobs ``ids`` (``_SUMMARY`` fields), without their spec or
        result: what a status poll needs, without parsing a spec that holds a job's rows.
        Unknown ids are left out."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = tuple(ids[i:i + 500])
            rows = self._read(f"SELECT {', '.join(_SUMMARY)} FROM jobs WHERE id IN "
                               f"({', '.join('?' * len(chunk))})", chunk)
            out.update({row[0]: dict(zip(_SUMMARY, row, strict=True)) for row in rows})
        return out

    def ids_with_status(self, status: Status) -> set[str]:
        """The ids of the jobs in ``status``."""
        if status not in ("queued", "running", *FINISHED):
            raise ConfigError(f"unknown job status {status!r} (queued, running, done, failed, "
                              "cancelled)")
        return {row[0] for row in self._read("SELECT id FROM jobs WHERE status = ?",
                                              (status,))}

    def result(self, job_id: str) -> dict[str, Any] | None:
        """A done job's result (None before), without its spec."""
        rows = self._read("SELECT result FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise UnknownJobError(f"no job {job_id!r} in the job queue {self.path}")
        return _loads(rows[0][0], "result", self.path, job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next event (in this
        process or another); a finished one is a ConfigError."""
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job.status in FINISHED:
                raise ConfigError(f"job {job_id} has finished ({job.status}): nothing to "
                                  "cancel")
            if job.status == "queued":
                now = time.time()
                conn.execute("UPDATE jobs SET status = 'cancelled', finished = ?, error = ? "
                             "WHERE id = ?", (now, "cancelled before it started", job_id))
                job.status, job.finished, job.error = "cancelled", now, \
                    "cancelled before it started"
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        if job.status == "cancelled":
            self._finished_event(job)
            self._notify()
        return job

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again, under the same id and run directory: it
        resumes from its journal, paying nothing twice (a done job is a ConfigError)."""
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job.status not in ("failed", "cancelled"):
                raise ConfigError(f"job {job_id} is {job.status}: only a failed or cancelled "
                                  "job can be retried")
            conn.execute("UPDATE jobs SET status = 'queued', finished = NULL, error = NULL, "
                         "cancel_requested = 0 WHERE id = ?", (job_id,))
            job.status, job.finished, job.error = "queued", None, None
        self._notify()
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has finished; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job.status in FINISHED:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            with self._changed:  # woken by our own workers; polls for other processes'
                self._changed.wait(self.poll_s if left is None else min(self.poll_s, left))

    def events(self, job_id: str, *, after: int = 0, follow: bool = False,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The job's events (its run directory's ``events.jsonl``) after the first ``after``,
        each with ``"seq"``, its line number from 1 (a client that reconnects passes the last
        one it saw as ``after``); with ``follow``, new ones as they are written, until the job
        finishes (TimeoutError after ``timeout`` seconds)."""
        self.status(job_id)  # an unknown id is an error at once
        path = self.run_dir(job_id) / "events.jsonl"
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while True:
            done = self.status(job_id).status in FINISHED  # before reading: nothing missed
            for event in self._read_events(path, n):
                n = event["seq"]
                if n > after:
                    yield event
            if not follow or done:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still running after {timeout} s")
            with self._changed:
                self._changed.wait(self.poll_s / 4)

    @staticmethod
    def _read_events(path: Path, seen: int) -> list[dict[str, Any]]:
        """The complete lines of ``path`` after the first ``seen``, numbered."""
        if not path.is_file() or path.is_symlink():
            return []
        try:
            data = path.read_bytes()
        except OSError:
            return []
        lines = data[: data.rfind(b"\n") + 1].splitlines()
        out = []
        for i, line in enumerate(lines[seen:], seen + 1):
            try:
                event = json.loads(line)
            except ValueError:
                break  # a line cut by a kill: the resumed run rewrites it
            if not isinstance(event, dict):
                break
            out.append({**event, "seq": i})
        return out

    # ---- running -----------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Put back in the queue every running job whose lease nobody holds (its process
        died); returns their ids. Run at construction and before each job is taken."""
        back = []
        for (job_id,) in self._query("SELECT id FROM jobs WHERE status = 'running'"):
            lease = self._lease(job_id)
            if lease is None:
                continue  # running, in this process or another
            try:
                with self._tx() as conn:
                    # one cancelled while its process was dead is cancelled, not run again
                    if conn.execute("UPDATE jobs SET status = 'cancelled', finished = ?, "
                                    "owner = NULL, error = 'cancelled while its process was "
                                    "down' WHERE id = ? AND status = 'running' AND "
                                    "cancel_requested = 1", (time.time(), job_id)).rowcount:
                        continue
                    if conn.execute("UPDATE jobs SET status = 'queued', owner = NULL WHERE "
                                    "id = ? AND status = 'running'", (job_id,)).rowcount:
                        back.append(job_id)
            finally:
                lease.close()
        return back

    def _claim(self) -> tuple[Job, Any] | None:
        """The oldest queued job of a registered name, marked running, with its lease."""
        with self._lock:
            names = list(self._runners)
        if not names:
            return None
        marks = ", ".join("?" * len(names))
        rows = self._query(f"SELECT id FROM jobs WHERE status = 'queued' AND name IN ({marks}) "
                           "ORDER BY seq", tuple(names))
        for (job_id,) in rows:
            lease = self._lease(job_id)
            if lease is None:
                continue  # another process is taking it right now
            try:
                with self._tx() as conn:
                    job = self._get(conn, job_id)
                    if job.status != "queued":
                        lease.close()
                        continue
                    if conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?",
                                    (job_id,)).fetchone()[0]:
                        conn.execute("UPDATE jobs SET status = 'cancelled', finished = ? "
                                     "WHERE id = ?", (time.time(), job_id))
                        lease.close()
                        continue
                    now = time.time()
                    job.status, job.started, job.sittings = "running", now, job.sittings + 1
                    conn.execute("UPDATE jobs SET status = 'running', started = ?, "
                                 "sittings = ?, owner = ? WHERE id = ?",
                                 (now, job.sittings, f"pid {os.getpid()}", job_id))
            except BaseException:
                lease.close()
                raise
            return job, lease
        return None

    @staticmethod
    def _charged(conn: sqlite3.Connection, besides: str) -> tuple[int, int]:
        """What the queue's jobs other than ``besides`` are charged against a shared budget,
        read from the queue itself (so a manager rebuilt after a crash does not hand the
        budget out again): a finished job what it used, any other its whole allotment. Returns
        (metric calls, jobs)."""
        total = jobs = 0
        for job_id, status, allotted, result in conn.execute(
                "SELECT id, status, budget, result FROM jobs WHERE budget IS NOT NULL"):
            if job_id == besides:
                continue
            used = (json.loads(result) or {}).get("metric_calls") if result else None
            total += min(allotted, used) if status == "done" and isinstance(used, int) \
                else allotted
            jobs += 1
        return total, jobs

    def _allot(self, job: Job) -> int | None:
        """The job's metric-call budget from the shared one (ConfigError if none is left),
        decided and written in one transaction."""
        asked = job.spec.get("budget")
        if job.budget is not None:  # a resumed job keeps its allotment: its run spec has it
            return job.budget
        with self._tx() as conn:
            allotted: int | None = asked
            if self.budget is not None:
                spent, jobs = self._charged(conn, job.id)
                left = self.budget - spent
                allotted = left if asked is None else min(int(asked), left)
                if allotted <= 0:
                    raise ConfigError(
                        f"job {job.id} ({job.name}): the manager's shared budget of "
                        f"{self.budget} metric calls is spent ({spent} charged to {jobs} jobs)")
            if allotted is not None:
                conn.execute("UPDATE jobs SET budget = ? WHERE id = ?", (allotted, job.id))
        job.budget = allotted
        return allotted

    def run_one(self) -> Job | None:
        """Take one queued job of a registered name and run it in this thread; None if there
        is none."""
        self.recover()
        claimed = self._claim()
        if claimed is None:
            return None
        job, lease = claimed
        try:
            return self._run(job)
        finally:
            lease.close()
            self._notify()

    def run_pending(self) -> list[Job]:
        """Run queued jobs of registered names in this thread until none is left."""
        done = []
        while (job := self.run_one()) is not None:
            done.append(job)
        return done

    def _hook(self, job: Job) -> Callable[[dict], None]:
        def on_event(event: dict) -> None:
            if self.on_event is not None:
                self.on_event({**event, "job": job.id, "agent": job.name})
            if self._stopping.is_set() and threading.current_thread() in self._threads:
                raise _Paused
            (flag,) = self._query("SELECT cancel_requested FROM jobs WHERE id = ?", (job.id,))[0]
            if flag:
                raise JobCancelled(f"job {job.id} ({job.name}) was cancelled")

        return on_event

    def _run(self, job: Job) -> Job:
        with self._lock:
            runner = self._runners[job.name]
        status: Status
        result = error = None
        try:
            budget = self._allot(job)
            out = runner(job, self.run_dir(job.id), budget=budget, on_event=self._hook(job))
            if not isinstance(out, dict):
                raise ConfigError(f"the runner of {job.name!r} returned {type(out).__name__}, "
                                  "not a dict summary")
            result = json.loads(json.dumps(out, default=str))
            status = "done"
        except _Paused:
            return self._requeue(job)
        except JobCancelled as exc:
            status, error = "cancelled", str(exc)
        except Exception as exc:
            cancelled = self._query("SELECT cancel_requested FROM jobs WHERE id = ?",
                                    (job.id,))[0][0]
            status = "cancelled" if cancelled else "failed"
            error = f"{type(exc).__name__}: {exc}"
        except BaseException:  # KeyboardInterrupt, SystemExit: back to the queue, re-raised
            self._requeue(job)
            raise
        now = time.time()
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, "
                         "owner = NULL WHERE id = ?",
                         (status, now, None if result is None else json.dumps(result), error,
                          job.id))
        job.status, job.finished, job.result, job.error = status, now, result, error
        self._finished_event(job)
        return job

    def _requeue(self, job: Job) -> Job:
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET status = 'queued', owner = NULL WHERE id = ?",
                         (job.id,))
        job.status = "queued"
        return job

    def _finished_event(self, job: Job) -> None:
        self._emit(JobFinished(t=job.finished or time.time(), agent=job.name, job=job.id,
                               status=job.status, error=job.error).to_dict())

    # ---- workers -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads (daemons): each takes queued jobs of registered names,
        oldest first, and waits for more."""
        with self._lock:
            if any(t.is_alive() for t in self._threads):
                return
            self._stopping.clear()
            self._threads = [threading.Thread(target=self._work, name=f"evo-jobs-{i}",
                                              daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while not self._stopping.is_set():
            if self.run_one() is None:
                with self._changed:
                    self._changed.wait(self.poll_s)

    @property
    def running(self) -> bool:
        """Whether this manager's worker threads are running (:meth:`start`)."""
        return any(t.is_alive() for t in self._threads) and not self._stopping.is_set()

    def stop(self, wait: bool = True) -> None:
        """Stop the workers: a running job stops at its next event and goes back to the queue
        (it resumes from its journal when a manager runs it again)."""
        self._stopping.set()
        self._notify()
        if wait:
            for t in self._threads:
                t.join()

    def close(self) -> None:
        """Stop the workers and close the queue."""
        self.stop()
        with self._lock:
            self._conn.close()
            for conn in self._readers.values():
                conn.close()
            self._readers.clear()

    def __enter__(self) -> OptimizationManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OptimizationManager({str(self.home)!r}, workers={self.workers})"
