"""The run store: one directory holds everything a search needs to be inspected and resumed.

::

    RUN/
      run.json         what the run is: program, data digests, optimizer config, seed, models
                       (and, for `evo run`, the command line that made it)
      journal.sqlite   every LM answer the run received, committed before the search reads it
      checkpoint.json  the search state after the last evaluation: candidates with their lineage,
                       the instruction archive, the score matrix, the usage ledger per sitting
      events.jsonl     the event log, one JSON object per line, written as the run goes
      best.json, baseline.json, result.json   once the search has finished

Resuming is replaying: a resumed run rebuilds the search from the same inputs and seed, and its
sessions answer every request found in the journal without calling the LM. The search is
deterministic given its answers, so it retraces the same decisions (at the speed of evo's own
code) and continues where the killed process stopped: no paid call is repeated, and the result is
the one an uninterrupted run gives. This holds for every optimizer without each one saving its
own internal state (random generators, DEAP populations, Optuna studies); the checkpoint is for
reading, not for restoring. Files are replaced atomically and the journal is SQLite in WAL mode,
so a process killed at any moment leaves a store a resume can read.

Every file here is read as untrusted: a damaged or wrong-shaped one is one
:class:`~evo.errors.DamagedFileError` naming it, never a traceback; one that is a symbolic link
is refused, so evo never writes through it into a file elsewhere. A store is created by evo or
refused (:class:`~evo.errors.UnsafeRunDirError`): evo writes only into a new or empty folder or a
run directory it made, never into a filesystem root, the home directory or a folder above it. A
journal holding fewer answers than the checkpoint saw (a copy made without
``journal.sqlite-wal``) is refused too, rather than silently paid for again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evo._io import storage_error, write_bytes, write_json
from evo.data import Example
from evo.errors import DamagedFileError, EvoError, UnsafeRunDirError
from evo.lm.journal import Journal
from evo.paths import protected_dir
from evo.runs.record import Checkpoint, RunInfo, SearchRecord, answers_held

if TYPE_CHECKING:
    from evo.lm.session import LMSession
    from evo.search.engine import SearchState

RUN_FILE = "run.json"
JOURNAL_FILE = "journal.sqlite"
CHECKPOINT_FILE = "checkpoint.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = "lock"
# Every file evo writes into a run directory (`evo run` adds the report files). None may be a
# symbolic link: evo would write its lock, log or journal into the file it points to.
RUN_FILES = (RUN_FILE, JOURNAL_FILE, JOURNAL_FILE + "-wal", JOURNAL_FILE + "-shm",
             CHECKPOINT_FILE, EVENTS_FILE, LOCK_FILE, "result.json", "best.json",
             "baseline.json", "report.json", "report.html")
_MAX_READ = 256 * 2**20  # a run file or checkpoint larger than this is not one evo wrote
_NEW_RUN_HINT = "start a new run directory"


class RunMismatchError(EvoError, ValueError):
    """The run directory holds a different run than the one asked for."""


class RunInUseError(EvoError, OSError):
    """Another process has the run directory open."""


def run_cli(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``evo run`` settings a run directory was made with: None when it has no run file or
    was made from Python (``evo.optimize``); a damaged run file is one clear
    :class:`DamagedFileError`."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.exists() and not run_file.is_symlink():  # a dangling link is no absence
        return None
    return read_run_info(run_file).cli


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; ValueError (with the reason) when it is not readable JSON."""
    if not path.is_file():
        raise ValueError("not a regular file" + (" (a folder is in its place)"
                                                 if path.is_dir() else ""))
    if path.stat().st_size > _MAX_READ:
        raise ValueError(f"{path.stat().st_size:,} bytes, larger than any file evo writes")
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None


def read_run_file(run_file: str | os.PathLike[str]) -> dict[str, Any]:
    """The content of a run directory's ``run.json`` as a dict (:meth:`RunInfo.to_dict`; a file
    written before the record had a version reads as version 0), checked for shape as in
    :func:`read_run_info`."""
    return read_run_info(run_file).to_dict()


def read_run_info(run_file: str | os.PathLike[str]) -> RunInfo:
    """A run directory's ``run.json`` (:class:`~evo.runs.record.RunInfo`), checked for shape: an
    object with the ``evo_run`` marker, a ``spec`` object and a ``cli`` object (or null).
    Anything else is one :class:`DamagedFileError` naming the file."""
    run_file = Path(run_file)
    _refuse_link(run_file)
    hint = (f"if {run_file.parent} is an evo run directory, its run file is damaged: "
            f"{_NEW_RUN_HINT}; otherwise choose another folder")
    try:
        info = _read_json(run_file)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise DamagedFileError(run_file, f"not a readable run file ({exc})", hint=hint) from None
    try:
        return RunInfo.from_dict(info)
    except ValueError as exc:
        raise DamagedFileError(run_file, f"not a readable evo run file ({exc})",
                               hint=hint) from None


def _refuse_link(path: Path) -> None:
    """Refuse a symbolic link in place of a run file (:class:`UnsafeRunDirError` naming it)."""
    if path.is_symlink():
        raise UnsafeRunDirError(
            f"{path} is a symbolic link (to {os.readlink(path)}): evo does not read or write "
            "run files through links, which could overwrite the file they point to; replace "
            f"it with the file itself, or {_NEW_RUN_HINT}")


def _open_run_file(path: Path, flags: int, mode: str) -> Any:
    """``path`` opened with ``flags`` (plus O_CREAT, O_NOFOLLOW) as a text file in ``mode``:
    never through a link, even one made after :func:`check_run_dir` looked."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_link(path)
        raise storage_error(path, exc, "open") from exc
    return os.fdopen(fd, mode, errors="replace")


def _is_leftover(path: Path) -> bool:
    """Whether ``path`` is a file evo leaves in a run directory before its run file: the lock
    (empty or ``pid N``) of a run killed at its start, or a half-written run file. A link is
    never one."""
    if path.is_symlink():
        return False
    if path.name == RUN_FILE + ".tmp":
        return path.is_file()
    if path.name != LOCK_FILE or not path.is_file() or path.stat().st_size > 64:
        return False
    return re.fullmatch(r"(pid \d+)?", path.read_bytes().decode("latin-1").strip()) is not None


def check_run_dir(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Check, before anything is written, that ``path`` may be a run directory, and return its
    run file's content if it is one already (None for a new or empty folder).

    Refused with :class:`UnsafeRunDirError`: a filesystem root, the home directory or a folder
    above it or above the current directory; a file; a folder evo did not make that is not
    empty; a run file that is a symbolic link. A run file of the wrong shape is a
    :class:`DamagedFileError`. The directory itself may be a link (``runs -> /data/runs``):
    where it leads is what is checked."""
    path = Path(path)
    why = protected_dir(path)  # resolved: a link to home or a root is refused too
    if why is not None:
        raise UnsafeRunDirError(f"{path} is {why}: evo will not write its run files there "
                                "(give a new folder for the run, e.g. runs/NAME)")
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_dir():  # a file, or a link to nowhere
        raise UnsafeRunDirError(f"{path} exists and is not a folder: a run directory is a "
                                "folder (choose another path)")
    if (path / RUN_FILE).exists() or (path / RUN_FILE).is_symlink():
        for name in RUN_FILES:
            _refuse_link(path / name)
        info = read_run_file(path / RUN_FILE)
        for name in (JOURNAL_FILE, JOURNAL_FILE + "-wal", JOURNAL_FILE + "-shm",
                     CHECKPOINT_FILE, EVENTS_FILE, LOCK_FILE):
            if (path / name).exists() and not (path / name).is_file():
                raise DamagedFileError(path / name, "not a regular file (a folder is in its "
                                       "place?)", hint=f"move it away, or {_NEW_RUN_HINT}")
        return info
    try:
        foreign = sorted(p.name for p in path.iterdir() if not _is_leftover(p))
    except OSError as exc:
        raise storage_error(path, exc, "read") from exc
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                          if len(foreign) > 5 else "")
        raise UnsafeRunDirError(
            f"{path} is not an evo run directory (no {RUN_FILE}) and is not empty ({shown}): "
            "evo writes only into a new or empty folder or a run directory it made; "
            "choose another folder")
    return None


def data_digest(examples: Sequence[Example]) -> str:
    """A content hash of a split (ids, inputs and gold outputs, in order)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.inputs, ex.outputs], sort_keys=True).encode())
    return f"{len(examples)}:{h.hexdigest()[:16]}"


def _signature(event: dict[str, Any]) -> tuple[str, Any]:
    return event.get("event", ""), event.get("candidate")


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths at which two specs differ, with both values when they are short."""
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
            continue
        short = all(isinstance(v, int | float | str | None) and len(str(v)) <= 40 for v in (a, b))
        out.append(f"{name} ({a!r} -> {b!r})" if short else name)
    return out


def _answers_seen(checkpoint: Path) -> int | None:
    """How many answers the journal held when the checkpoint was written (None if there is no
    readable checkpoint: it is for reading, so a damaged one is a warning, not an error)."""
    if not checkpoint.exists() and not checkpoint.is_symlink():
        return None
    try:
        return Checkpoint.from_dict(_read_json(checkpoint)).answers_held()
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        warnings.warn(f"evo: {checkpoint} is damaged ({str(exc)[:200]}); the run resumes, "
                      "but cannot check that its journal is complete", RuntimeWarning,
                      stacklevel=5)
        return None


def _lost_answers(path: Path, seen: int, have: int) -> DamagedFileError:
    return DamagedFileError(
        path, f"holds {have} answers, but {CHECKPOINT_FILE} saw {seen}: {seen - have} answers "
        "are missing and resuming would pay for them again",
        hint="was the run directory copied without journal.sqlite-wal (or the machine cut "
        "off)? Copy journal.sqlite-wal too, from the original directory with no evo process "
        f"running, or {_NEW_RUN_HINT}; to resume anyway and pay again for what is missing, "
        f"delete {CHECKPOINT_FILE}")


def _take_lock(path: Path) -> Any:
    """The run directory's lock file, opened and locked (released when it is closed), with this
    process's id in it; :class:`RunInUseError` naming the holder when another has it."""
    lock = path / LOCK_FILE
    handle = _open_run_file(lock, os.O_RDWR, "r+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read(80).strip() or "another process"
            raise RunInUseError(f"{path} is in use by {holder}: one process per run "
                                "directory (wait for it, or stop it and resume)") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
        except OSError as exc:
            raise storage_error(lock, exc) from exc
    except BaseException:
        handle.close()
        raise
    return handle


@contextmanager
def reopened_journal(path: str | os.PathLike[str], sitting: int, phase: str,
                     spec: dict[str, Any]) -> Iterator[Journal | None]:
    """The journal of the finished run in ``path``, reopened for one block under the run's
    lock, its answers booked to ``sitting`` and ``phase`` (e.g. the test pass of
    :meth:`evo.api.Result.report`, so that a resumed ``evo run`` replays it too). Yields None,
    journaling nothing, when ``path`` no longer holds the run ``spec`` describes (moved away or
    replaced); :class:`RunInUseError` when another process has it open."""
    path = Path(path)
    run_file = path / RUN_FILE
    if not run_file.is_file() or run_file.is_symlink() or not (path / JOURNAL_FILE).is_file():
        yield None
        return
    lock = _take_lock(path)
    journal = None
    try:
        if read_run_file(run_file)["spec"] != json.loads(json.dumps(spec, default=str)):
            journal = None
        else:
            journal = Journal(path / JOURNAL_FILE)
            journal.sitting, journal.phase = sitting, phase
        yield journal
    finally:
        if journal is not None:
            journal.close()
        lock.close()  # releases the flock


# Stores open in this process, by resolved path. Weak: a store nobody holds is closed (see
# _Handles), and its directory released.
_OPEN: weakref.WeakValueDictionary[Path, RunStore] = weakref.WeakValueDictionary()


class _Handles:
    """What a store holds open: closed once, by RunStore.close() or when the store is collected
    (a Result dropped without closing its store releases the directory all the same)."""

    def __init__(self) -> None:
        self.lock: Any = None
        self.events: Any = None
        self.journal: Journal | None = None

    def close_events(self) -> None:
        if self.events is not None and not self.events.closed:
            try:
                self.events.close()
            except OSError:  # what a full disk kept from the log: a resume cuts the partial line
                pass

    def close(self) -> None:
        self.close_events()
        if self.journal is not None:
            self.journal.close()
        if self.lock is not None and not self.lock.closed:
            self.lock.close()  # releases the flock


class RunStore:
    """Open (or create) the run directory ``path`` for the run described by ``spec``.

    ``spec`` identifies the run (:func:`evo.runs.runner.run` builds it); reopening a directory with
    another spec raises :class:`RunMismatchError` naming what differs; a folder evo did not
    make (not empty, or a root, home or a folder above it) raises :class:`UnsafeRunDirError`
    before anything is written there. ``cli`` is kept beside it
    so ``evo run --resume RUN`` can rebuild the run from the directory alone.

    >>> # store = RunStore("runs/trec-s0", spec); store.attach(session)
    """

    def __init__(self, path: str | os.PathLike[str], spec: dict[str, Any], *,
                 cli: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        check_run_dir(self.path)  # before anything is written, the lock included
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(self.path, exc, "create the run directory") from exc
        # One process per run: a second one would pay for the same requests and interleave the
        # log. (A store reopened in the same process, e.g. a notebook cell run again, takes
        # over from the earlier one.)
        earlier = _OPEN.pop(self.path.resolve(), None)
        if earlier is not None:
            earlier.close()
        self._handles = _Handles()
        self._release = weakref.finalize(self, self._handles.close)
        self._handles.lock = _take_lock(self.path)
        _OPEN[self.path.resolve()] = self
        try:
            self._open(spec, cli)
        except BaseException:
            self.close()
            raise

    def _open(self, spec: dict[str, Any], cli: dict[str, Any] | None) -> None:
        spec = json.loads(json.dumps(spec, default=str))  # compare as it will read back
        # read again under the lock: another process may have made the run since the check
        old = check_run_dir(self.path)
        self.resumed = old is not None
        if old is not None:
            diff = _differences(old["spec"], spec)
            if diff:
                raise RunMismatchError(
                    f"{self.path} holds another run (it differs in: {', '.join(diff)}); "
                    "resume it with the same inputs, or use another run directory")
            self.info = old
        else:
            self.info = RunInfo(spec=spec, cli=cli, created=time.time()).to_dict()
            write_json(self.path / RUN_FILE, self.info, indent=1)
        self.journal = self._open_journal(_answers_seen(self.path / CHECKPOINT_FILE)
                                          if self.resumed else None)
        self._events_path = self.path / EVENTS_FILE
        self._on_file = self._trim_events()
        self._open_events()
        self._seen = 0
        self._last_checkpoint = 0.0

    def _open_journal(self, seen: int | None) -> Journal:
        """Open the journal and begin this sitting, after checking that it holds every answer
        the checkpoint saw (``seen``): a journal copied without its ``-wal`` file, or lost,
        would otherwise make the resume pay for all those answers again, silently."""
        path = self.path / JOURNAL_FILE
        if seen and not path.exists():
            raise _lost_answers(path, seen, 0)
        journal = None
        try:
            journal = Journal(path)
            have = answers_held(journal.ledger())
            if seen is not None and have < seen:
                raise _lost_answers(path, seen, have)
            self.sitting = journal.begin_sitting()
        except BaseException:  # (the journal turns SQLite's errors into evo's itself)
            if journal is not None:
                journal.close()
            raise
        return journal

    @property
    def finished(self) -> bool:
        """Whether an earlier sitting wrote the final result."""
        return (self.path / "result.json").exists()

    def attach(self, *sessions: LMSession) -> None:
        """Route the sessions' answers through the journal (replay first, record everything)."""
        for session in sessions:
            session.journal = self.journal

    def detach(self, *sessions: LMSession) -> None:
        for session in sessions:
            if session.journal is self.journal:
                session.journal = None

    # ---- events ---------------------------------------------------------------------------
    def _trim_events(self) -> list[tuple[str, Any]]:
        """(kind, candidate) of each event already in the log; the log is cut at its first
        damaged line (one cut off by a kill, garbage, anything but a JSON object) and continues
        from there."""
        path = self._events_path
        if not path.exists() and not path.is_symlink():
            return []
        if not path.is_file():
            raise DamagedFileError(path, "not a regular file (a folder is in its place?)",
                                   hint=f"move it away, or {_NEW_RUN_HINT}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DamagedFileError(path, f"cannot be read ({exc.strerror or exc})",
                                   hint=_NEW_RUN_HINT) from None
        keep = data[: data.rfind(b"\n") + 1]
        events: list[tuple[str, Any]] = []
        for line in keep.splitlines(keepends=True):
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
                break
            if not isinstance(event, dict):
                break
            events.append(_signature(event))
        keep = b"".join(keep.splitlines(keepends=True)[:len(events)])
        if len(keep) != len(data):
            write_bytes(path, keep)
        return events

    def _open_events(self) -> None:
        self._handles.events = _open_run_file(self._events_path, os.O_WRONLY | os.O_APPEND, "a")

    def record(self, event: dict[str, Any]) -> bool:
        """Append ``event`` to the log. A resumed run re-emits its earlier events while it
        replays; those are on file already (with their original times) and are not written
        twice (returns True for those). Should the replay ever part from the log (an answer
        that was never journaled came back different), the log is cut there and continues with
        the new events."""
        i = self._seen
        self._seen += 1
        if i < len(self._on_file):
            if self._on_file[i] == _signature(event):
                return True
            self.close_events()
            lines = self._events_path.read_bytes().split(b"\n")
            write_bytes(self._events_path, b"".join(line + b"\n" for line in lines[:i]))
            self._on_file = self._on_file[:i]
            self._open_events()
        try:
            self._handles.events.write(json.dumps(event, default=str) + "\n")
            self._handles.events.flush()
        except OSError as exc:  # a partial line is cut off on resume
            raise storage_error(self._events_path, exc) from exc
        return False

    # ---- state ----------------------------------------------------------------------------
    def checkpoint(self, state: SearchState, usage: dict[str, Any], *,
                   every_s: float = 2.0, force: bool = False) -> None:
        """Write the search state (atomically), at most every ``every_s`` seconds unless
        ``force``."""
        now = time.monotonic()
        if not force and now - self._last_checkpoint < every_s:
            return
        self._last_checkpoint = now
        best = state.best if state.validated else None
        record = Checkpoint(
            iteration=state.iteration,
            metric_calls=state.evaluator.metric_calls if state.evaluator else 0,
            best=None if best is None else {"candidate": best.id, "val_score": best.val_score},
            stop_reason=state.stop_reason, sitting=self.sitting, usage=usage,
            sittings=self.ledger(), record=SearchRecord.from_state(state))
        write_json(self.path / CHECKPOINT_FILE, record.to_dict(), indent=1, default=str)

    def ledger(self, phase: str | None = "search") -> list[dict[str, Any]]:
        """What each sitting of the run received for ``phase`` ('search', 'test', None: both):
        paid calls, failures, shared-cache answers, tokens, LM seconds."""
        return self.journal.ledger(phase)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Book the answers received inside the block to ``name`` (e.g. 'test')."""
        before, self.journal.phase = self.journal.phase, name
        try:
            yield
        finally:
            self.journal.phase = before

    # ---- handles: in self._handles, so they are closed even if close() never is -----------
    @property
    def journal(self) -> Journal:
        assert self._handles.journal is not None, "the store's journal is not open"
        return self._handles.journal

    @journal.setter
    def journal(self, journal: Journal) -> None:
        self._handles.journal = journal

    def close_events(self) -> None:
        """Close the event log (the journal stays open, e.g. for the report's test pass)."""
        self._handles.close_events()

    @property
    def closed(self) -> bool:
        return not self._release.alive

    def close(self) -> None:
        """Close the log and the journal and release the directory (again: nothing)."""
        self._release()  # runs _Handles.close once, whoever calls first (close() or the GC)
        key = self.path.resolve()
        if _OPEN.get(key) is self:
            del _OPEN[key]

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, sitting={self.sitting})"
