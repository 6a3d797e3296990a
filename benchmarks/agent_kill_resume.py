"""The self-improving agent example, killed with SIGKILL in the middle of its optimization and
run again: what was served, what the job paid in each sitting, what it replayed.

    python benchmarks/agent_kill_resume.py --out runs/agent-kill            # ~8 min
    python benchmarks/agent_kill_resume.py --out DIR -- --calls 90 --trigger 40 --budget 40

Arguments after ``--`` go to examples/self_improving_agent.py. The first process is killed
once the job's journal holds ``--kill-after`` answers; the second runs the same command to its
end. Prints (and writes to OUT/kill_resume.json) the example's summary with, for the job: its
sittings, the answers journaled before the kill, what the second sitting replayed and paid, and
what it paid (the journal keys each request once: a request answered before the kill is
replayed, never paid again).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from evo.lm.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "self_improving_agent.py"


def journal_rows(out: Path) -> tuple[Path | None, int]:
    """The newest job's run directory and how many answers its journal holds."""
    runs = sorted((out / "agent" / "jobs" / "runs").glob("*/journal.sqlite"))
    if not runs:
        return None, 0
    try:
        con = sqlite3.connect(f"file:{runs[-1]}?mode=ro", uri=True, timeout=5)
        try:
            (n,) = con.execute("SELECT COUNT(*) FROM answers").fetchone()
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or busy: ask again
        return runs[-1].parent, 0
    return runs[-1].parent, int(n)


def run_with_kill(out: Path, example_args: list[str], *, kill_after: int = 5,
                  timeout_s: float = 1800) -> dict:
    """Run the example, SIGKILL it once its job journaled ``kill_after`` answers, run it again
    to its end; return the second run's summary plus what the kill cost."""
    cmd = [sys.executable, str(EXAMPLE), "--out", str(out), *example_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + timeout_s
    killed_at, run_dir = 0, None
    while first.poll() is None and time.monotonic() < deadline:
        run_dir, killed_at = journal_rows(out)
        if killed_at >= kill_after:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(timeout=60)
    first_log = first.stdout.read() if first.stdout else ""
    if first.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the first run was not killed in its optimization (exit "
                           f"{first.returncode}):\n{first_log[-3000:]}")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True,
                            timeout=max(60.0, deadline - time.monotonic()))
    if second.returncode != 0:
        raise RuntimeError(f"the resumed run failed ({second.returncode}):\n"
                           f"{second.stdout[-3000:]}\n{second.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    assert run_dir is not None
    summary["kill"] = {"journaled_before_kill": killed_at, "run_dir": str(run_dir),
                       **ledger(run_dir)}
    summary["logs"] = {"first": first_log[-4000:], "second": second.stdout[-4000:]}
    (out / "kill_resume.json").write_text(json.dumps(summary, indent=2))
    return summary


def ledger(run_dir: Path) -> dict:
    """Per sitting of the job's run, what its journal received (answers, of which paid), and
    what the last sitting's search replayed from the journal instead of paying again."""
    journal = Journal(run_dir / "journal.sqlite")
    try:
        sittings = journal.ledger(phase=None)
    finally:
        journal.close()
    usage = json.loads((run_dir / "result.json").read_text())["summary"]["usage"]
    return {"sittings": [{k: s[k] for k in ("sitting", "phase", "answers", "paid",
                                            "shared_cache", "failed") if k in s}
                         for s in sittings],
            "last_sitting_replayed": usage["replayed"], "last_sitting_paid": usage["calls"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/agent-kill")
    ap.add_argument("--kill-after", type=int, default=20)
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args()
    summary = run_with_kill(Path(args.out), args.rest, kill_after=args.kill_after)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("jobs", "logs")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
