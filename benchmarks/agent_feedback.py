"""What a grade costs an agent: ``agent.feedback`` (the grade and the trigger check that follows
it) against the trace store's own ``feedback`` (the grade alone, the reference), measured in the
same run, with N traces graded since the last job (what a check reads).

    python benchmarks/agent_feedback.py             # 1,000 and 5,000 graded traces
    python benchmarks/agent_feedback.py --quick     # 200 (a smoke run)

Scripted agent, no LM call: the grade's own cost, whatever the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evo.testing as T  # noqa: E402
from evo.agents import every  # noqa: E402


def measure(n: int, home: Path, repeat: int = 5) -> tuple[float, float]:
    """(seconds per agent.feedback, seconds per TraceStore.feedback) with ``n`` graded traces."""
    agent = T.sentiment_agent(home, trigger=every(10**9))  # checked on every grade, never fires
    try:
        store = agent.traces
        for i in range(n):
            ex = T.make(10_000 + i)
            call = store.record(agent=agent.name, version=1, inputs=ex.inputs,
                                outputs={"label": "neg"})
            store.feedback(call, 1.0, expected=ex.outputs)
        calls = [agent(text=f"item {k} is good stuff").call_id for k in range(2 * repeat)]
        ours, reference = [], []
        for k in range(repeat):
            t0 = time.perf_counter()
            agent.feedback(calls[k], 1.0, expected={"label": "pos"})
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.feedback(calls[repeat + k], 1.0, expected={"label": "pos"})
            reference.append(time.perf_counter() - t0)
        return min(ours), min(reference)
    finally:
        agent.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes = (200,) if args.quick else (1000, 5000)
    print("| graded traces since the last job | agent.feedback (grade + trigger check) | "
          "TraceStore.feedback (grade alone) | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            ours, reference = measure(n, Path(tmp) / f"agent-{n}")
            print(f"| {n:,} | {ours * 1000:.1f} ms | {reference * 1000:.2f} ms | "
                  f"{ours / reference:.0f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
