"""The README's headline table for the search (issue 17): per task and seed, held-out accuracy
of evo's default search as it is now, next to the zero-shot baseline, DSPy's optimizers run by the
same `evo bench` grid, and the earlier measurements on the very same splits (evo's search before
racing and DSPy's BootstrapFewShotWithRandomSearch, `benchmarks/results/readme-300/`).

    evo bench --config benchmarks/configs/search.toml          # the runs (resumable)
    python benchmarks/search_table.py runs/bench-search        # this table, from their results

The splits are equal because both grids draw them the same way (train 100 / val 50 / test 100 per
task and seed); the earlier grid's DSPy rows are read from its committed summary, not rerun.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from evo_bench import load_results

EARLIER = Path(__file__).parent / "results" / "readme-300" / "summary.json"


def earlier() -> dict[tuple[str, str, int], float]:
    """(task, optimizer, seed) -> test accuracy from the earlier grid's summary."""
    out = {}
    for row in json.loads(EARLIER.read_text()):
        for seed, test in zip(row["seeds"], row["per_seed"], strict=True):
            out[(row["task"], row["optimizer"], seed)] = test
    return out


def main(out: str) -> None:
    now = defaultdict(dict)
    for r in load_results(Path(out)):
        if r["budget"] in (0, 300):
            now[(r["task"], r["seed"])][r["optimizer"]] = r
    before = earlier()
    dspy = sorted({name for cell in now.values() for name in cell if name.startswith("dspy.")})
    head = ["task", "seed", "zero-shot", "**evo now**", "calls", "candidates",
            "evo before racing", "dspy.bootstrap_random_search (earlier grid)",
            *[f"{name} (this grid)" for name in dspy]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (task, seed), cell in sorted(now.items()):
        evo_run = cell.get("evolution")
        if evo_run is None:
            continue
        base = cell.get("baseline")
        row = [task, str(seed), f"{base['test']:.3f}" if base else "–",
               f"**{evo_run['test']:.3f}**", f"{evo_run['metric_calls']}",
               str(evo_run.get("candidates", "–")),
               _fmt(before.get((task, "evolution", seed))),
               _fmt(before.get((task, "dspy.bootstrap_random_search", seed)))]
        for name in dspy:
            run = cell.get(name)
            row.append("–" if run is None else
                       f"{run['test']:.3f} ({run['metric_calls']} calls, {run['lm_calls']} LM)")
        print("| " + " | ".join(row) + " |")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-search")
