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
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evo._io import write_json
from evo.data import Example
from evo.errors import EvoError
from evo.lm.journal import Journal

if TYPE_CHECKING:
    from evo.engine import SearchState
    from evo.lm.session import LMSession

RUN_FILE = "run.json"
JOURNAL_FILE = "journal.sqlite"
CHECKPOINT_FILE = "checkpoint.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = "lock"


class RunMismatchError(EvoError, ValueError):
    """The run directory holds a different run than the one asked for."""


class RunInUseError(EvoError, OSError):
    """Another process has the run directory open."""


def run_cli(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``evo run`` settings a run directory was made with: None when it has no run file or
    was made from Python (``evo.optimize``); a damaged run file is one clear error."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text()).get("cli")
    except json.JSONDecodeError as exc:
        raise RunMismatchError(f"{run_file}: not a readable run file ({exc})") from None


def data_digest(examples: Sequence[Example]) -> str:
    """A content hash of a split (ids, inputs and gold outputs, in order)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.inputs, ex.outputs], sort_keys=True).encode())
    return f"{len(examples)}:{h.hexdigest()[:16]}"


def state_record(state: SearchState) -> dict[str, Any]:
    """The search state as JSON data: instructions with their origin, candidates with their
    lineage (parents, operator, iteration), the validation example ids and the score matrix."""
    archive, matrix = state.archive, state.matrix
    return {
        "instructions": [{"text": text, "origin": origin}
                         for text, origin in zip(archive.instructions, archive.origins,
                                                 strict=True)],
        "candidates": [{"id": c.id, "genome": c.genome, "parents": list(c.parents), "op": c.op,
                        "iteration": c.iteration, "accepted": c.accepted,
                        "val_score": None if np.isnan(c.val_score) else c.val_score,
                        "note": c.note} for c in state.candidates],
        "val_example_ids": [ex.id for ex in matrix.examples],
        "cell_errors": [{"candidate": row, "example": matrix.examples[col].id,
                         "error": cell.error}
                        for (row, col), cell in sorted(matrix.cells.items())
                        if cell.error is not None],
        "scores": [[None if np.isnan(v) else v for v in row] for row in matrix.scores.tolist()],
    }


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


def _replace_bytes(path: Path, data: bytes) -> None:
    """Replace a file's content atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


_OPEN: dict[Path, RunStore] = {}  # stores open in this process, by resolved path


class RunStore:
    """Open (or create) the run directory ``path`` for the run described by ``spec``.

    ``spec`` identifies the run (:func:`evo.api.optimize` builds it); reopening a directory with
    another spec raises :class:`RunMismatchError` naming what differs. ``cli`` is kept beside it
    so ``evo run --resume RUN`` can rebuild the run from the directory alone.

    >>> # store = RunStore("runs/trec-s0", spec); store.attach(session)
    """

    def __init__(self, path: str | os.PathLike[str], spec: dict[str, Any], *,
                 cli: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # One process per run: a second one would pay for the same requests and interleave the
        # log. (A store reopened in the same process, e.g. a notebook cell run again, takes
        # over from the earlier one.)
        earlier = _OPEN.pop(self.path.resolve(), None)
        if earlier is not None:
            earlier.close()
        self._lock_fh = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 (closed in close())
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.seek(0)
            holder = self._lock_fh.read().strip() or "another process"
            self._lock_fh.close()
            raise RunInUseError(f"{self.path} is in use by {holder}: one process per run "
                                "directory (wait for it, or stop it and resume)") from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(f"pid {os.getpid()}")
        self._lock_fh.flush()
        _OPEN[self.path.resolve()] = self
        try:
            self._open(spec, cli)
        except BaseException:
            self._unlock()
            raise

    def _open(self, spec: dict[str, Any], cli: dict[str, Any] | None) -> None:
        spec = json.loads(json.dumps(spec, default=str))  # compare as it will read back
        run_file = self.path / RUN_FILE
        self.resumed = run_file.exists()
        if self.resumed:
            try:
                old = json.loads(run_file.read_text())
            except json.JSONDecodeError as exc:
                raise RunMismatchError(f"{run_file}: not a readable run file ({exc}); use "
                                       "another run directory") from None
            diff = _differences(old.get("spec", {}), spec)
            if diff:
                raise RunMismatchError(
                    f"{self.path} holds another run (it differs in: {', '.join(diff)}); "
                    "resume it with the same inputs, or use another run directory")
            self.info = old
        else:
            self.info = {"evo_run": 1, "created": time.time(), "spec": spec, "cli": cli}
            write_json(run_file, self.info, indent=1)
        self.journal = Journal(self.path / JOURNAL_FILE)
        self.sitting = self.journal.begin_sitting()
        self._events_path = self.path / EVENTS_FILE
        self._on_file = self._trim_events()
        self._events_fh = open(self._events_path, "a")  # noqa: SIM115 (closed in close())
        self._seen = 0
        self._last_checkpoint = 0.0

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
        """(kind, candidate) of each event already in the log; a line cut off by a kill is
        dropped."""
        if not self._events_path.exists():
            return []
        data = self._events_path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        events = []
        for line in keep.splitlines(keepends=True):
            try:
                events.append(_signature(json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                break  # a damaged line: the log is kept up to it, and continues from there
        keep = b"".join(keep.splitlines(keepends=True)[:len(events)])
        if len(keep) != len(data):
            _replace_bytes(self._events_path, keep)
        return events

    def record(self, event: dict[str, Any]) -> bool:
        """Append ``event`` to the log. A resumed run re-emits its earlier events while it
        replays; those are on file already (with their original times) and are not written
        twice (returns True for those). Should the replay ever part from the log (an answer that was never journaled
        came back different), the log is cut there and continues with the new events."""
        i = self._seen
        self._seen += 1
        if i < len(self._on_file):
            if self._on_file[i] == _signature(event):
                return True
            self._events_fh.close()
            lines = self._events_path.read_bytes().split(b"\n")
            _replace_bytes(self._events_path, b"".join(line + b"\n" for line in lines[:i]))
            self._on_file = self._on_file[:i]
            self._events_fh = open(self._events_path, "a")  # noqa: SIM115
        self._events_fh.write(json.dumps(event, default=str) + "\n")
        self._events_fh.flush()
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
        write_json(self.path / CHECKPOINT_FILE, {
            "iteration": state.iteration,
            "metric_calls": state.evaluator.metric_calls if state.evaluator else 0,
            "best": None if best is None else {"candidate": best.id, "val_score": best.val_score},
            "stop_reason": state.stop_reason,
            "sitting": self.sitting, "usage": usage, "sittings": self.ledger(),
            **state_record(state)}, indent=1, default=str)

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

    def close_events(self) -> None:
        if not self._events_fh.closed:
            self._events_fh.close()

    @property
    def closed(self) -> bool:
        return self._lock_fh.closed

    def close(self) -> None:
        """Close the log and the journal and release the directory."""
        if getattr(self, "_events_fh", None) is not None:
            self.close_events()
        if getattr(self, "journal", None) is not None:
            self.journal.close()
        self._unlock()

    def _unlock(self) -> None:
        if not self._lock_fh.closed:
            self._lock_fh.close()  # releases the flock
        if _OPEN.get(self.path.resolve()) is self:
            del _OPEN[self.path.resolve()]

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, sitting={self.sitting})"
