"""``evo agents`` and ``evo jobs``: look after self-improving agents from the shell.

An agent's home (``$EVO_CACHE_DIR/agents/NAME`` unless it was built with ``home=``) holds its
trace store, its version registry and its job queue; these commands read and change them
directly, with no LM: a running agent follows a deploy or rollback made here within a second,
and a job cancelled here stops at its next event in the process that runs it.

    evo agents list                           evo jobs list [--agent NAME] [--status S]
    evo agents show NAME                      evo jobs show ID
    evo agents traces NAME [--graded]         evo jobs events ID [--follow] [--after SEQ]
    evo agents feedback NAME CALL SCORE       evo jobs cancel ID / evo jobs retry ID
    evo agents export NAME FILE / import NAME FILE
    evo agents deploy NAME VERSION / rollback NAME [VERSION] / prune NAME
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from evo.agents.agent import AGENT_FILE
from evo.agents.manager import OptimizationManager, UnknownJobError
from evo.agents.traces import TraceStore
from evo.agents.versions import VersionRegistry
from evo.errors import ConfigError
from evo.paths import cache_root

KEY_ENV = "EVO_TRACE_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    ag = sub.add_parser("agents", help="self-improving agents: versions, traces, feedback, "
                        "deploy and rollback")
    ag.add_argument("--root", help="folder of agents' homes (default $EVO_CACHE_DIR/agents)")
    ag.add_argument("--key-env", default=KEY_ENV, metavar="VAR",
                    help=f"environment variable holding the trace store's key, for an "
                         f"encrypted store (default {KEY_ENV})")
    cmds = ag.add_subparsers(dest="agents_command", required=True)
    cmds.add_parser("list", help="every agent: deployed version, calls, grades, jobs")
    show = cmds.add_parser("show", help="an agent's versions, deployments and jobs")
    show.add_argument("name", help="agent name (or its home folder)")
    tr = cmds.add_parser("traces", help="an agent's recorded calls, as JSON lines")
    tr.add_argument("name")
    tr.add_argument("--graded", action="store_true", help="graded calls only")
    tr.add_argument("--limit", type=int, default=20, help="newest N (default 20; 0: all)")
    fb = cmds.add_parser("feedback", help="grade a call")
    fb.add_argument("name")
    fb.add_argument("call_id")
    fb.add_argument("score", type=float)
    fb.add_argument("--text", default="", help="why (the reflection LM reads it)")
    fb.add_argument("--expected", action="append", default=[], metavar="FIELD=TEXT",
                    help="the right output, when you know it")
    ex = cmds.add_parser("export", help="write the agent's traces to a JSONL file")
    ex.add_argument("name")
    ex.add_argument("file")
    im = cmds.add_parser("import", help="read traces from a JSONL file (redacted first)")
    im.add_argument("name")
    im.add_argument("file")
    dp = cmds.add_parser("deploy", help="serve a version (by hand: no test)")
    dp.add_argument("name")
    dp.add_argument("version", type=int)
    rb = cmds.add_parser("rollback", help="serve the version deployed before (or VERSION)")
    rb.add_argument("name")
    rb.add_argument("version", type=int, nargs="?")
    pr = cmds.add_parser("prune", help="delete old traces (retention)")
    pr.add_argument("name")
    pr.add_argument("--max-age-days", type=float)
    pr.add_argument("--max-rows", type=int)
    ag.set_defaults(func=cmd_agents)

    jb = sub.add_parser("jobs", help="optimization jobs of agents: list, show, events, "
                        "cancel, retry")
    jb.add_argument("--home", action="append", default=[],
                    help="a job queue folder (default: every agent's, and $EVO_CACHE_DIR/jobs)")
    jcmds = jb.add_subparsers(dest="jobs_command", required=True)
    jl = jcmds.add_parser("list", help="jobs, newest first")
    jl.add_argument("--agent")
    jl.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"])
    for name, text in (("show", "one job in full (JSON)"),
                       ("cancel", "stop a job (a running one at its next event)"),
                       ("retry", "queue a failed or cancelled job again: it resumes")):
        jcmds.add_parser(name, help=text).add_argument("job_id")
    je = jcmds.add_parser("events", help="a job's events as JSON lines")
    je.add_argument("job_id")
    je.add_argument("--follow", action="store_true", help="until the job finishes")
    je.add_argument("--after", type=int, default=0, metavar="SEQ",
                    help="only events after this sequence number (to reconnect)")
    jb.set_defaults(func=cmd_jobs)


# ---- evo agents ---------------------------------------------------------------------------

def _root(args: argparse.Namespace) -> Path:
    return Path(args.root).expanduser() if args.root else cache_root() / "agents"


def _homes(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/versions.sqlite")) if root.is_dir() else []


def _home(args: argparse.Namespace) -> Path:
    """The agent's home: ROOT/NAME, or NAME itself when it is a folder holding an agent."""
    given = Path(args.name).expanduser()
    if (given / "versions.sqlite").is_file():
        return given
    home = _root(args) / args.name
    if not (home / "versions.sqlite").is_file():
        known = ", ".join(p.name for p in _homes(_root(args))) or "none"
        raise ConfigError(f"no agent {args.name!r} in {_root(args)} (agents there: {known}; "
                          "--root FOLDER or a home folder names another place)")
    return home


def _name(home: Path) -> str:
    """The agent living in ``home`` (its agent.json), else the folder's name."""
    try:
        return str(json.loads((home / AGENT_FILE).read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return home.name


def _key(args: argparse.Namespace) -> str | None:
    return os.environ.get(args.key_env) or None


def _traces(args: argparse.Namespace, home: Path, **kw: float | int | None) -> TraceStore:
    """The agent's trace store (a context manager: closed at the end of the ``with``)."""
    return TraceStore(home / "traces.sqlite", key=_key(args), **kw)  # type: ignore[arg-type]


def _registry(home: Path) -> VersionRegistry:
    return VersionRegistry(home / "versions.sqlite")


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_agents(args: argparse.Namespace) -> int:
    command = args.agents_command
    if command == "list":
        return _list_agents(args)
    home = _home(args)
    if command == "show":
        return _show_agent(args, home)
    if command == "traces":
        with _traces(args, home) as store:
            found = store.traces(_name(home), graded=True if args.graded else None,
                                 limit=args.limit or None, newest_first=True)
        for trace in reversed(found):
            print(json.dumps(trace.to_dict()))
        return 0
    if command == "feedback":
        if not math.isfinite(args.score):
            raise ConfigError(f"score {args.score}: give a finite number (1.0 = right)")
        bad = [p for p in args.expected if "=" not in p]
        if bad:
            raise ConfigError(f"--expected {bad[0]!r}: write FIELD=TEXT")
        expected = dict(p.split("=", 1) for p in args.expected) or None
        with _traces(args, home) as store:
            trace = store.feedback(args.call_id, args.score, args.text, expected=expected)
        print(f"graded {trace.call_id} ({trace.agent}, version {trace.version}): {trace.score}")
        return 0
    if command == "export":
        with _traces(args, home) as store:
            n = store.export_jsonl(args.file, agent=_name(home))
        print(f"exported {n} traces to {args.file}")
        return 0
    if command == "import":
        with _traces(args, home) as store:
            n = store.import_jsonl(args.file)
        print(f"imported {n} traces from {args.file}")
        return 0
    if command in ("deploy", "rollback"):
        with _registry(home) as registry:
            if command == "deploy":
                version = registry.deploy(args.version, decision={"reason": "deployed by hand "
                                                                  "(evo agents deploy)"})
            else:
                version = registry.rollback(args.version)
        print(f"{_name(home)}: version {version.number} deployed (a running agent follows "
              "within a second)")
        return 0
    if command == "prune":
        if args.max_age_days is None and args.max_rows is None:
            raise ConfigError("evo agents prune: give --max-age-days and/or --max-rows")
        age = None if args.max_age_days is None else args.max_age_days * 86400
        with _traces(args, home, max_age_s=age, max_rows=args.max_rows) as store:
            n = store.apply_retention()
        print(f"deleted {n} traces")
        return 0
    raise AssertionError(command)


def _list_agents(args: argparse.Namespace) -> int:
    homes = _homes(_root(args))
    if not homes:
        print(f"no agents in {_root(args)}")
        return 0
    rows = [["agent", "deployed", "versions", "calls", "graded", "jobs"]]
    for home in homes:
        with _registry(home) as registry:
            deployed = registry.deployed()
            versions = len(registry.history())
        try:
            with _traces(args, home) as store:
                name = _name(home)
                calls = str(store.count(name))
                graded = str(store.count(name, graded=True))
        except ConfigError:  # encrypted, no key given: the counts need it to open
            calls = graded = "(encrypted)"
        rows.append([_name(home), f"v{deployed.number}" if deployed else "-", str(versions),
                     calls, graded, _job_counts(home / "jobs")])
    print(_table(rows))
    return 0


def _job_counts(home: Path) -> str:
    if not (home / "jobs.sqlite").is_file():
        return "-"
    with OptimizationManager(home) as manager:
        jobs = manager.history()
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"


def _show_agent(args: argparse.Namespace, home: Path) -> int:
    with _registry(home) as registry:
        versions, deployments = registry.history(), registry.deployments()
    rows = [["version", "status", "source", "parent", "created", "holdout", "decision"]]
    for v in versions:
        scores = v.scores or {}
        holdout = f"{scores['holdout']:.3f}" if "holdout" in scores else "-"
        reason = (v.decision or {}).get("reason", "")
        rows.append([f"v{v.number}", v.status, v.source, str(v.parent or "-"),
                     _when(v.created), holdout, reason[:70]])
    print(f"agent {_name(home)} ({home})\n")
    print(_table(rows))
    if deployments:
        print("\ndeployments:")
        print(_table([["time", "kind", "version", "replaced"]]
                     + [[_when(d["time"]), d["kind"], f"v{d['version']}",
                         f"v{d['previous']}" if d["previous"] else "-"] for d in deployments]))
    if (home / "jobs" / "jobs.sqlite").is_file():
        print("\njobs:")
        with OptimizationManager(home / "jobs") as manager:
            _print_jobs([manager], agent=None, status=None)
    return 0


# ---- evo jobs -----------------------------------------------------------------------------

def _job_homes(args: argparse.Namespace) -> list[Path]:
    if args.home:
        homes = [Path(h).expanduser() for h in args.home]
        for h in homes:
            if not (h / "jobs.sqlite").is_file():
                raise ConfigError(f"{h} holds no job queue (jobs.sqlite)")
        return homes
    root = cache_root()
    homes = sorted(p.parent for p in (root / "agents").glob("*/jobs/jobs.sqlite"))
    return homes + ([root / "jobs"] if (root / "jobs" / "jobs.sqlite").is_file() else [])


def _print_jobs(managers: list[OptimizationManager], *, agent: str | None,
                status: str | None) -> None:
    jobs = sorted((j for m in managers for j in m.history(agent, status=status)),
                  key=lambda j: j.created, reverse=True)
    if not jobs:
        print("no jobs")
        return
    rows = [["job", "agent", "status", "created", "sittings", "reason / result"]]
    for j in jobs:
        r = j.result or {}
        what = (f"v{r['version']} {'deployed' if r.get('deployed') else 'kept'}: "
                f"{(r.get('decision') or {}).get('reason', '')}" if r else
                (j.error or j.reason))
        rows.append([j.id, j.name, j.status, _when(j.created), str(j.sittings), what[:80]])
    print(_table(rows))


def _find(managers: list[OptimizationManager], job_id: str) -> OptimizationManager:
    for m in managers:
        try:
            m.status(job_id)
            return m
        except UnknownJobError:
            continue
    raise ConfigError(f"no job {job_id!r} in "
                      f"{', '.join(str(m.home) for m in managers) or 'any job queue'}")


def cmd_jobs(args: argparse.Namespace) -> int:
    command = args.jobs_command
    with ExitStack() as opened:  # each queue opened once, closed at the end
        managers = [opened.enter_context(OptimizationManager(h)) for h in _job_homes(args)]
        if command == "list":
            _print_jobs(managers, agent=args.agent, status=args.status)
            return 0
        manager = _find(managers, args.job_id)
        if command == "show":
            print(json.dumps(manager.status(args.job_id).to_dict(), indent=2, default=str))
        elif command == "cancel":
            job = manager.cancel(args.job_id)
            print(f"{job.id}: {job.status}" + (" (stops at its next event)"
                                               if job.status == "running" else ""))
        elif command == "retry":
            job = manager.retry(args.job_id)
            print(f"{job.id}: {job.status} (it resumes from its journal when its agent runs)")
        elif command == "events":
            for event in manager.events(args.job_id, after=args.after, follow=args.follow):
                print(json.dumps(event), flush=True)
        else:
            raise AssertionError(command)
    sys.stdout.flush()
    return 0
