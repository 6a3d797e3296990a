"""A self-improving agent serving a stream of real questions (TREC), on the embedded model.

    python examples/self_improving_agent.py --out runs/agent-demo        # ~6 min on 2 cores

The agent starts zero-shot. Each answer is graded ``--delay`` calls later, with the gold label
(as a reviewer's correction would give it). Once ``--trigger`` usable graded examples are in,
the trigger fires: the optimization runs in the background (a job of the agent's optimization
manager) while the agent keeps serving, and the new version is deployed only if it beats the
deployed one on held-out graded calls (the paired test is printed). Kill the process at any
time, even with SIGKILL, and run the same command again: the job resumes through its run store
with no paid LM call repeated, and the stream goes on where it stopped.

What it writes in ``--out``: ``calls.jsonl`` (one line per served call: version, right or not,
time; one per grade), ``summary.json`` (accuracy per version, calls served during the
optimization, its LM cost, the paired test, time from trigger to deploy) and ``accuracy.png``
(rolling accuracy over the stream, the versions marked; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import evo
from evo.agents import Agent, every


def stream(seed: int) -> list[evo.Example]:
    """TREC questions in a fixed random order (the agent never sees the dataset itself: only
    the calls it serves and the grades it is given)."""
    task = evo.datasets.load("trec", seed=seed)
    rows = [*task.test, *task.val, *task.train]
    random.Random(seed).shuffle(rows)
    return rows


def read_log(path: Path) -> tuple[list[dict], set[str]]:
    calls, graded = [], set()
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            (graded.add(row["graded"]) if "graded" in row else calls.append(row))
    return calls, graded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/agent-demo")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--calls", type=int, default=400, help="calls to serve in all")
    ap.add_argument("--trigger", type=int, default=150,
                    help="optimize once this many usable graded examples are in")
    ap.add_argument("--delay", type=int, default=10, help="a call is graded this many calls later")
    ap.add_argument("--budget", type=int, default=200, help="metric calls per optimization")
    ap.add_argument("--alpha", type=float, default=0.05, help="the deploy test's level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--after", type=int, default=100,
                    help="once a new version serves, stop after this many of its calls")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "calls.jsonl"
    calls, graded = read_log(log_path)  # a rerun after a kill goes on where it stopped
    rows = stream(args.seed)[:args.calls]
    task = evo.datasets.load("trec", seed=args.seed)
    agent = Agent("trec-stream", task.signature, labels=task.labels, lm=evo.lm.local(args.model),
                  trigger=every(args.trigger), min_examples=min(args.trigger, 20),
                  budget=args.budget, alpha=args.alpha, seed=args.seed, home=out / "agent",
                  cache=out / "cache.sqlite")
    print(f"{agent!r}: {len(calls)} calls already served, serving {len(rows) - len(calls)} more")
    pending = [c for c in calls if c["call_id"] not in graded]
    started = time.time()
    with log_path.open("a") as log:
        def write(row: dict) -> None:
            log.write(json.dumps(row) + "\n")
            log.flush()

        def grade_due(now_i: int) -> None:
            while pending and pending[0]["i"] <= now_i - args.delay:
                call = pending.pop(0)
                ex = rows[call["i"]]
                agent.feedback(call["call_id"], float(call["correct"]), expected=ex.outputs)
                write({"graded": call["call_id"]})

        for i in range(len(calls), len(rows)):
            ex = rows[i]
            reply = agent(**ex.inputs)
            right = reply.ok and reply.outputs == ex.outputs
            row = {"i": i, "call_id": reply.call_id, "version": reply.version,
                   "correct": bool(right), "t": time.time(), "latency_s": reply.latency_s}
            write(row)
            calls.append(row)
            pending.append(row)
            grade_due(i)
            if i % 25 == 0:
                print(f"call {i}: version {reply.version}, "
                      f"{sum(c['correct'] for c in calls[-25:])}/{len(calls[-25:])} of the last "
                      f"25 right; jobs: {[(j.id, j.status) for j in agent.jobs()]}", flush=True)
            newest = [c for c in calls if c["version"] == agent.version]
            if agent.version > 1 and len(newest) >= args.after:
                break
        grade_due(len(rows) + args.delay)
    for job in agent.jobs():  # the stream ended: let a running optimization finish
        if job.status in ("queued", "running"):
            print(f"waiting for {job.id} ...", flush=True)
            agent.manager.wait(job.id)
    summary = summarize(agent, calls, time.time() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "jobs"}, indent=2))
    plot(calls, summary, out / "accuracy.png")
    agent.close()
    return 0


def summarize(agent: Agent, calls: list[dict], seconds: float) -> dict:
    per_version: dict[int, list[bool]] = {}
    for c in calls:
        per_version.setdefault(c["version"], []).append(c["correct"])
    jobs = [j.to_dict() for j in reversed(agent.jobs())]
    per_job = []
    for j in reversed(agent.jobs()):  # oldest first
        result = j.result or {}
        made = (agent.versions.get(result["version"]).created if "version" in result
                else None)
        per_job.append({
            "job": j.id, "status": j.status, "sittings": j.sittings,
            "version": result.get("version"), "deployed": result.get("deployed"),
            # from the trigger (the job scheduled) to the new version's decision, kills included
            "trigger_to_decision_s": round(made - j.created, 1) if made else None,
            "served_while_it_ran": sum(1 for c in calls
                                       if j.created <= c["t"] <= (j.finished or c["t"])),
        })
    return {
        "calls": len(calls), "traces": agent.traces.count(agent.name),
        "accuracy_per_version": {v: {"calls": len(x), "accuracy": round(sum(x) / len(x), 3)}
                                 for v, x in sorted(per_version.items())},
        "per_job": per_job,
        "served_during_optimization": [p["served_while_it_ran"] for p in per_job],
        "deployed_version": agent.version,
        "decisions": [j["result"]["decision"] for j in jobs if j.get("result")],
        "roi": [j["result"]["roi"] for j in jobs if j.get("result")],
        "jobs": jobs, "seconds_this_sitting": round(seconds, 1),
    }


def plot(calls: list[dict], summary: dict, path: Path, window: int = 25) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    xs = [c["i"] for c in calls]
    right = [float(c["correct"]) for c in calls]
    rolling = [sum(right[max(0, k - window + 1):k + 1]) / len(right[max(0, k - window + 1):k + 1])
               for k in range(len(right))]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for k, job in enumerate(summary.get("jobs", [])):  # while each optimization ran
        during = [c["i"] for c in calls
                  if job["created"] <= c["t"] <= (job.get("finished") or c["t"])]
        if during:
            ax.axvspan(min(during), max(during), color="tab:orange", alpha=0.15,
                       label="optimizing in the background" if k == 0 else None)
    ax.plot(xs, rolling, lw=1.5, label=f"accuracy, rolling {window} calls")
    for k in range(1, len(calls)):
        if calls[k]["version"] != calls[k - 1]["version"]:
            ax.axvline(xs[k], color="k", ls="--", lw=1)
            ax.text(xs[k], 0.02, f" v{calls[k]['version']} deployed", fontsize=8)
    ax.set_xlabel("call")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("A self-improving TREC agent (Qwen2.5-Coder-0.5B, llama.cpp, 2 CPU cores)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
