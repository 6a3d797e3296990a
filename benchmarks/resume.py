"""Kill a real `evo run` with SIGKILL at random moments, resume it, and compare it with the same
run left alone: same result? every request paid once? what does a resume cost?

    python benchmarks/resume.py --task trec --budget 100 --kills 3        # prints a table

Both runs pay every LM call (``--no-cache``: no shared response cache), so the ledger counts
what each sitting really paid. A sitting is killed once it has received a random number of new
answers (1 to a fifth of the whole run's), plus a random fraction of a call; the last sitting is
``evo run --resume``. Compared: best.json, every candidate with its lineage, the score matrix and
the held-out scores (per example). The resumed sitting's wall time, next to the whole run's, is
the price of replaying the journal (evo's own code, process start and model load included).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def answers(run: Path) -> int:
    """Answers in a run's journal (read-only; 0 before the journal exists)."""
    try:
        with sqlite3.connect(f"file:{run / 'journal.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_at_random_moments(start: Callable[[Path, int], subprocess.Popen], run: Path,
                           rng: random.Random, sittings: int, most: int) -> int:
    """Start a sitting, SIGKILL it once it has received 1..``most`` new answers (plus a random
    fraction of a call), ``sittings`` times; returns how many were killed before finishing.
    After each kill the store must be readable (its checkpoint parses)."""
    kills = 0
    for i in range(sittings):
        proc = start(run, i)
        target = answers(run) + rng.randint(1, max(1, most))
        while proc.poll() is None and answers(run) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (run / "checkpoint.json").exists():
            json.loads((run / "checkpoint.json").read_text())
    return kills


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="trec")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill moments")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "resume-bench")
    args = ap.parse_args()
    from evo.lm.journal import Journal

    shutil.rmtree(args.out, ignore_errors=True)
    flags = ["--task", args.task, "--budget", str(args.budget), "--n-train", str(args.n_train),
             "--n-val", str(args.n_val), "--n-test", str(args.n_test), "--seed", str(args.seed),
             "--model", args.model, "--no-cache", "--quiet"]

    def start(run: Path, _: int = 0) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "evo.cli", "run", *flags, "--out", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    whole, killed = args.out / "whole", args.out / "killed"
    t0 = time.perf_counter()
    proc = start(whole)
    _, err = proc.communicate()
    whole_s = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the uninterrupted run failed:\n{err[-2000:]}")
    paid_whole = sum(s["paid"] for s in Journal(whole / "journal.sqlite").ledger(None))
    kills = kill_at_random_moments(start, killed, random.Random(args.seed), args.kills,
                                   paid_whole // 5)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", "--resume", str(killed),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate()
    last_s = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the resumed run failed:\n{err[-2000:]}")

    def read(d: Path) -> tuple:
        r = json.loads((d / "result.json").read_text())
        t = json.loads((d / "report.json").read_text())
        return ((d / "best.json").read_text(), r["candidates"], r["scores"], r["instructions"],
                t["baseline_scores"], t["optimized_scores"])

    same = read(whole) == read(killed)
    ledger = Journal(killed / "journal.sqlite").ledger(None)
    report = json.loads((killed / "report.json").read_text())
    print(f"{args.task}, budget {args.budget}, val {args.n_val}, test {args.n_test}, "
          f"seed {args.seed}, {args.model}: {kills} SIGKILLs, then --resume\n")
    print("| sitting | answers received | paid | of them for the test pass |")
    print("|---|---|---|---|")
    tests = {s["sitting"]: s["paid"]
             for s in Journal(killed / "journal.sqlite").ledger("test")}
    for s in ledger:
        print(f"| {s['sitting']} | {s['answers']} | {s['paid']} | {tests.get(s['sitting'], 0)} |")
    print(f"\nthe uninterrupted run paid {paid_whole}; the killed run's sittings together paid "
          f"{sum(s['paid'] for s in ledger)}")
    print(f"result identical (best.json, candidates and lineage, score matrix, test scores): "
          f"{same}")
    print(f"test: baseline {report['baseline']:.3f} -> best {report['optimized']:.3f}")
    print(f"wall: uninterrupted {whole_s:.0f} s; the resuming sitting {last_s:.0f} s, of which "
          f"it paid {ledger[-1]['paid']} calls ({ledger[-1]['lm_seconds']:.0f} s in the LM)")


if __name__ == "__main__":
    main()
