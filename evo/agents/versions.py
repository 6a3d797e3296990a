"""Every program an agent has served or could serve, as numbered versions, and the decision to
deploy one.

A :class:`VersionRegistry` is one SQLite file (WAL, shared by threads and processes on one
host): each optimized program is a :class:`Version` (who made it, from which job and parent,
its scores), exactly one of them at most is ``deployed``, and every deploy and rollback is a
row in its history. A new version replaces the deployed one only when :func:`paired_decision`
says so: a paired test on the same held-out graded examples, at a configurable alpha::

    decision = paired_decision(deployed_scores, candidate_scores, ids, alpha=0.05, version=3)
    if decision.deploy:
        registry.deploy(3, decision=decision.to_dict())
    print(decision)  # deploy v3: +0.120 [+0.050, +0.190], p = 0.0030 < alpha 0.05 on 40 ...

The registry is never recreated behind the user's back: a damaged file is one
:class:`~evo.errors.DamagedFileError` naming it, a symbolic link in its place a
:class:`~evo.errors.ConfigError`.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evo._sqlite import check_store, immediate, refuse_links, store_errors
from evo.analysis.compare import format_p, paired
from evo.errors import ConfigError, DamagedFileError, EvoError
from evo.program import (
    PROGRAM_FORMAT,
    Program,
    check_format,
    refuse_module_file,
    validate_file_data,
)
from evo.program.ensemble import EnsembleProgram

__all__ = ["DeployDecision", "UnknownVersionError", "Version", "VersionRegistry",
           "paired_decision"]

Status = Literal["deployed", "candidate", "retired"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    number INTEGER PRIMARY KEY,    -- 1, 2, ... in the order they were added
    program TEXT NOT NULL,         -- the program's JSON, as a saved program file holds it
    parent INTEGER,
    source TEXT NOT NULL,          -- 'seed', 'job:<id>', 'manual', ...
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    status TEXT NOT NULL,          -- 'deployed', 'candidate' or 'retired'
    scores TEXT NOT NULL,          -- JSON object
    decision TEXT,                 -- JSON object: why it was deployed (or kept)
    job TEXT
);
-- At most one deployed version, whatever process writes: the database refuses a second.
CREATE UNIQUE INDEX IF NOT EXISTS one_deployed ON versions(status) WHERE status = 'deployed';
CREATE TABLE IF NOT EXISTS deployments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    version INTEGER NOT NULL,
    previous INTEGER,
    kind TEXT NOT NULL             -- 'deploy' or 'rollback'
);
"""
_COLUMNS = {"versions": {"number", "program", "parent", "source", "created", "created_by",
                         "status", "scores", "decision", "job"},
            "deployments": {"seq", "time", "version", "previous", "kind"}}
HINT = ("it holds the agent's program versions: restore it (with its -wal file) from a backup, "
        "or move it aside to start a new history")


class UnknownVersionError(EvoError, KeyError):
    """No version of that number in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Version:
    """One program of an agent's history. ``program`` is the dict a saved program file holds
    (with its ``evo_program`` / ``evo_ensemble`` key); :meth:`load` checks and builds it.
    ``registry`` names the file it was read from (for error messages)."""

    number: int
    program: dict[str, Any]
    parent: int | None
    source: str
    created: float
    created_by: str
    status: Status
    scores: dict[str, Any]
    decision: dict[str, Any] | None
    job: str | None
    registry: str = field(default="", compare=False, repr=False)

    def load(self) -> Program | EnsembleProgram:
        """The program, validated as :func:`evo.program.ensemble.load_program` validates a file:
        a damaged program is one :class:`DamagedFileError` naming the registry and version."""
        return program_from_dict(self.program, self.registry or "version registry",
                                 self.number)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["registry"]
        return d


def program_dict(program: Program | EnsembleProgram | dict[str, Any]) -> dict[str, Any]:
    """What a saved program file holds for ``program`` (a dict is checked and copied)."""
    if isinstance(program, EnsembleProgram):
        return {"evo_ensemble": PROGRAM_FORMAT, **program.to_json()}
    if isinstance(program, Program):
        return {"evo_program": PROGRAM_FORMAT, **program.to_json()}
    if not isinstance(program, dict):
        raise ConfigError(f"a version holds a Program, an EnsembleProgram or a program file's "
                          f"dict, not {type(program).__name__}")
    try:
        program_from_dict(program, "the program given", None)
    except DamagedFileError as exc:
        raise ConfigError(str(exc)) from None
    return json.loads(json.dumps(program))


def program_from_dict(data: dict[str, Any], where: str | Path,
                      number: int | None) -> Program | EnsembleProgram:
    """``data`` (a program file's dict) as a program; anything else is a DamagedFileError
    naming ``where`` and the version ``number``."""
    what = f"version {number}'s program" if number is not None else "the program"
    try:
        if not isinstance(data, dict):
            raise DamagedFileError(where, f"a program is a JSON object, this one a "
                                          f"{type(data).__name__}")
        data = dict(data)  # check_format takes the key out: never change the caller's dict
        refuse_module_file(data, where)
        for key, model in (("evo_ensemble", EnsembleProgram), ("evo_program", Program)):
            if key in data:
                check_format(data, key, where)
                return validate_file_data(model, data, where, what="a program")
        raise DamagedFileError(where, "not an evo program (neither an 'evo_program' nor an "
                                      "'evo_ensemble' key)")
    except DamagedFileError as exc:
        raise DamagedFileError(where, f"{what}: {exc.problem}",
                               hint=HINT if number is not None else "") from None


class VersionRegistry:
    """The versions of one agent, in one SQLite file (parent directories created).

    Safe for threads (one connection behind a lock) and processes (WAL, a 60 s busy timeout,
    every change one ``BEGIN IMMEDIATE`` transaction); a forked child opens its own connection.
    A reader never sees two deployed versions, nor none between a deploy's two updates."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._refuse_link()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise DamagedFileError(self.path, "is a directory, not a version registry",
                                   hint=HINT)
        self._connect()

    # ---- opening -----------------------------------------------------------------------------
    def _refuse_link(self) -> None:
        refuse_links(self.path, doing="open a version registry")

    def _connect(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?nofollow=1"
        with self._errors():
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.OperationalError:
                self._refuse_link()  # a link made after we looked (nofollow refused it)
                raise
        try:
            with self._errors():
                check_store(conn, self.path, _COLUMNS, what="version registry", hint=HINT,
                            schema=_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _errors(self) -> AbstractContextManager[None]:
        """SQLite's errors as evo's, naming the file."""
        return store_errors(self.path, what="version registry", hint=HINT)

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; with ``write``, inside one IMMEDIATE transaction
        (committed on success, rolled back on any error)."""
        with self._lock:
            if self._closed:
                raise ConfigError(f"the version registry {self.path} is closed")
            # SQLite forbids using a connection across fork: the child opens its own.
            conn = self._conn if self._pid == os.getpid() else self._connect()
            assert conn is not None
            with self._errors():
                if not write:
                    yield conn
                    return
                with immediate(conn):
                    yield conn

    # ---- reading -----------------------------------------------------------------------------
    def _version(self, row: Sequence[Any]) -> Version:
        number = row[0]
        try:
            program, scores = json.loads(row[1]), json.loads(row[7])
            decision = None if row[8] is None else json.loads(row[8])
        except (json.JSONDecodeError, TypeError, RecursionError) as exc:
            raise DamagedFileError(self.path, f"version {number}: its stored JSON is damaged "
                                              f"({exc})", hint=HINT) from None
        if row[6] not in ("deployed", "candidate", "retired") or not isinstance(scores, dict):
            raise DamagedFileError(self.path, f"version {number}: status {row[6]!r} / scores "
                                              "of the wrong shape", hint=HINT)
        return Version(number=number, program=program, parent=row[2], source=row[3],
                       created=row[4], created_by=row[5], status=row[6], scores=scores,
                       decision=decision, job=row[9], registry=str(self.path))

    _SELECT = ("SELECT number, program, parent, source, created, created_by, status, scores, "
               "decision, job FROM versions")

    def _get(self, conn: sqlite3.Connection, number: int) -> Version:
        row = conn.execute(self._SELECT + " WHERE number = ?", (number,)).fetchone()
        if row is None:
            raise UnknownVersionError(f"no version {number} in the version registry "
                                      f"{self.path}")
        return self._version(row)

    def get(self, number: int) -> Version:
        """Version ``number`` (:class:`UnknownVersionError` if there is none)."""
        with self._db() as conn:
            return self._get(conn, number)

    def deployed(self) -> Version | None:
        """The version that serves now, or None before the first deploy."""
        with self._db() as conn:
            row = conn.execute(self._SELECT + " WHERE status = 'deployed'").fetchone()
            return None if row is None else self._version(row)

    def history(self) -> list[Version]:
        """Every version, oldest first."""
        with self._db() as conn:
            return [self._version(r) for r in conn.execute(self._SELECT + " ORDER BY number")]

    def deployments(self) -> list[dict[str, Any]]:
        """Every deploy and rollback, oldest first: ``{"time", "version", "previous", "kind"}``
        (kind ``deploy`` or ``rollback``; previous: the version it replaced, or None)."""
        with self._db() as conn:
            rows = conn.execute("SELECT time, version, previous, kind FROM deployments "
                                "ORDER BY seq").fetchall()
        return [{"time": t, "version": v, "previous": p, "kind": k} for t, v, p, k in rows]

    # ---- writing -----------------------------------------------------------------------------
    def add(self, program: Program | EnsembleProgram | dict[str, Any], *,
            parent: int | None = None, source: str = "manual", created_by: str | None = None,
            scores: dict[str, Any] | None = None, job: str | None = None) -> Version:
        """A new candidate version (numbered one past the last); ``program`` a Program, an
        EnsembleProgram or a program file's dict (checked: a bad one is a ConfigError).
        ``created_by`` defaults to the OS user."""
        data = json.dumps(program_dict(program))
        scores_json = _json(scores or {}, "scores")
        with self._db(write=True) as conn:
            if parent is not None:
                self._get(conn, parent)
            cur = conn.execute(
                "INSERT INTO versions (program, parent, source, created, created_by, status, "
                "scores, decision, job) VALUES (?, ?, ?, ?, ?, 'candidate', ?, NULL, ?)",
                (data, parent, source, time.time(), created_by or _os_user(), scores_json, job))
            return self._get(conn, cur.lastrowid)

    def set_scores(self, number: int, scores: dict[str, Any]) -> Version:
        """Replace version ``number``'s scores (a JSON-able dict)."""
        scores_json = _json(scores, "scores")
        with self._db(write=True) as conn:
            self._get(conn, number)
            conn.execute("UPDATE versions SET scores = ? WHERE number = ?", (scores_json, number))
            return self._get(conn, number)

    def _switch(self, conn: sqlite3.Connection, number: int, kind: str,
                decision: dict[str, Any] | None) -> Version:
        target = self._get(conn, number)
        if target.status == "deployed":
            return target  # already serving: nothing to do, nothing recorded
        row = conn.execute("SELECT number FROM versions WHERE status = 'deployed'").fetchone()
        previous = None if row is None else row[0]
        conn.execute("UPDATE versions SET status = 'retired' WHERE status = 'deployed'")
        if decision is not None:
            conn.execute("UPDATE versions SET decision = ? WHERE number = ?",
                         (_json(decision, "decision"), number))
        conn.execute("UPDATE versions SET status = 'deployed' WHERE number = ?", (number,))
        conn.execute("INSERT INTO deployments (time, version, previous, kind) VALUES "
                     "(?, ?, ?, ?)", (time.time(), number, previous, kind))
        return self._get(conn, number)

    def deploy(self, number: int, *, decision: dict[str, Any] | None = None) -> Version:
        """Make version ``number`` the deployed one (the one before it becomes ``retired``), in
        one transaction, and record it; ``decision`` (e.g. :meth:`DeployDecision.to_dict`) is
        kept with the version. Deploying the deployed version changes nothing."""
        with self._db(write=True) as conn:
            return self._switch(conn, number, "deploy", decision)

    def rollback(self, number: int | None = None) -> Version:
        """Deploy version ``number`` again, or (None) the version deployed before the current
        one: repeated rollbacks walk back through the deploy history. Recorded as a rollback."""
        with self._db(write=True) as conn:
            if number is None:
                stack = _deploy_stack(conn.execute(
                    "SELECT version, kind FROM deployments ORDER BY seq").fetchall())
                current = conn.execute(
                    "SELECT number FROM versions WHERE status = 'deployed'").fetchone()
                if current is None or len(stack) < 2 or stack[-1] != current[0]:
                    what = "no version is deployed" if current is None else \
                        f"no version was deployed before version {current[0]}"
                    raise ConfigError(f"{self.path}: {what}, so there is nothing to roll back "
                                      "to; name the version: rollback(number)")
                number = stack[-2]
            return self._switch(conn, number, "rollback", None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn, self._closed = None, True

    def __enter__(self) -> VersionRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deploy_stack(rows: Sequence[tuple[int, str]]) -> list[int]:
    """The versions deployed in turn, as a stack: a deploy pushes; a rollback to the version
    under the top pops (an undo), a rollback elsewhere pushes."""
    stack: list[int] = []
    for version, kind in rows:
        if kind == "rollback" and len(stack) >= 2 and stack[-2] == version:
            stack.pop()
        elif not stack or stack[-1] != version:
            stack.append(version)
    return stack


def _json(value: Any, what: str) -> str:
    if not isinstance(value, dict):
        raise ConfigError(f"a version's {what} is a dict, not {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a version's {what} must be JSON-able: {exc}") from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


# ---- the deploy decision ---------------------------------------------------------------------
@dataclass(frozen=True)
class DeployDecision:
    """Whether a candidate beats the deployed version on the same held-out graded examples:
    ``difference`` = candidate mean - deployed mean with its 95% paired bootstrap interval,
    ``p_value`` of a two-sided paired permutation test; ``deploy`` iff difference > 0 and
    p_value < alpha. ``version`` (optional) names the candidate in :meth:`__str__`."""

    deploy: bool
    n: int
    deployed_mean: float
    candidate_mean: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float
    reason: str
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        name = f"v{self.version}" if self.version is not None else "the candidate"
        verb = f"deploy {name}" if self.deploy else f"keep {name} as a candidate"
        if self.n < 2:
            return f"{verb}: {self.reason}"
        p = format_p(self.p_value)
        cmp = "<" if self.p_value < self.alpha else ">="
        return (f"{verb}: {self.difference:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], "
                f"{p} {cmp} alpha {self.alpha:g} on {self.n} held-out graded examples")


def paired_decision(deployed_scores: Sequence[float] | np.ndarray,
                    candidate_scores: Sequence[float] | np.ndarray, example_ids: Sequence[str],
                    *, alpha: float = 0.05, seed: int = 0,
                    version: int | None = None) -> DeployDecision:
    """Deploy the candidate only if it beats the deployed version on the same held-out graded
    examples (:func:`evo.analysis.compare.paired`: bootstrap CI and two-sided paired
    permutation test): difference > 0 and p_value < ``alpha``. Fewer than 2 examples never
    deploy. Rows of different lengths, non-finite scores, or alpha outside (0, 1) are a
    ConfigError."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha!r}")
    a, b = np.asarray(deployed_scores, float), np.asarray(candidate_scores, float)
    if a.ndim != 1 or a.shape != b.shape or len(example_ids) != len(a):
        raise ConfigError(f"paired_decision needs one score per example for both versions: "
                          f"got {a.size} deployed scores, {b.size} candidate scores and "
                          f"{len(example_ids)} example ids")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("paired_decision: every score must be a finite number")
    n = len(a)
    if n < 2:
        ma, mb = (float(a[0]), float(b[0])) if n else (0.0, 0.0)
        return DeployDecision(
            deploy=False, n=n, deployed_mean=ma, candidate_mean=mb, difference=mb - ma,
            ci_low=mb - ma, ci_high=mb - ma, p_value=1.0, alpha=alpha, version=version,
            reason=f"{n} held-out graded example{'s' if n != 1 else ''}: a paired test needs "
                   "at least 2")
    c = paired("deployed", "candidate", a, b, list(example_ids), seed=seed)
    better = c.b_minus_a > 0
    deploy = better and c.p_value < alpha
    if deploy:
        reason = f"better by {c.b_minus_a:+.3f}, {format_p(c.p_value)} < alpha {alpha:g}"
    elif not better:
        reason = f"not better ({c.b_minus_a:+.3f} on {n} examples)"
    else:
        reason = (f"better by {c.b_minus_a:+.3f} but not significantly: "
                  f"{format_p(c.p_value)} >= alpha {alpha:g}")
    return DeployDecision(deploy=deploy, n=n, deployed_mean=c.accuracy_a,
                          candidate_mean=c.accuracy_b, difference=c.b_minus_a, ci_low=c.ci_low,
                          ci_high=c.ci_high, p_value=c.p_value, alpha=float(alpha),
                          reason=reason, version=version)

