"""Every optimizer on one task, one model, one budget: held-out accuracy, LM calls, wall time.

    python benchmarks/optimizers.py --task trec --budget 300            # all optimizers
    python benchmarks/optimizers.py --only gepa miprov2 --table         # some, then the table

Each optimizer searches with a **fresh** response cache of its own (``OUT/NAME/cache.sqlite``,
deleted first), so its LM calls and search wall time are its own. The held-out test split is then
scored through one shared test cache (``OUT/test-cache.sqlite``): the baseline is paid once, and
a program two optimizers both found is paid once (its test wall time then reads as near zero;
the ``test calls`` column says how many were paid). Results go to ``OUT/NAME/row.json``;
``--table`` prints the markdown table of every row found under ``OUT``; ``--replay`` reruns each
named search on its own cache and checks it pays no LM call and returns the same best program.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_one(name: str, args: argparse.Namespace, task, lm, out: Path) -> dict:
    import evo
    from evo.kernels.stats import paired_bootstrap_ci, paired_permutation_test
    from evo.lm import session_for
    from evo.search.evaluate import evaluate_program

    run_dir = out / name
    # A fresh measurement: no response cache and no run store (whose journal would replay). The
    # run store is a folder of its own (it accepts only an empty or evo-made folder).
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cache = run_dir / "cache.sqlite"
    program = evo.Program(signature=task.signature, labels=task.labels)
    optimizer = evo.optimizers.get(name, budget=evo.Budget(metric_calls=args.budget))
    started = time.perf_counter()
    result = evo.optimize(program, task.train, task.val, lm=lm, optimizer=optimizer,
                          seed=args.seed, cache=cache, description=task.description,
                          run_dir=run_dir / "run", progress=False)
    search_s = time.perf_counter() - started
    test_session = session_for(lm, out / "test-cache.sqlite")
    test = list(task.test)
    base, _ = evaluate_program(result.baseline, test, test_session, result.metric)
    before = test_session.usage.copy()
    t0 = time.perf_counter()
    best, _ = evaluate_program(result.best, test, test_session, result.metric)
    test_s = time.perf_counter() - t0
    low, high = paired_bootstrap_ci(base, best, seed=args.seed)
    row = {
        "optimizer": name, "task": task.name, "seed": args.seed, "budget": args.budget,
        "splits": [len(task.train), len(task.val), len(test)],
        "baseline": float(base.mean()), "test": float(best.mean()), "ci": [low, high],
        "p": paired_permutation_test(base, best, seed=args.seed),
        "val_baseline": result.baseline_val, "val_best": result.best_val,
        "metric_calls": result.metric_calls, "lm_calls": result.usage.calls,
        "lm_by_purpose": result.usage.by_purpose, "search_s": search_s,
        "test_calls": (test_session.usage - before).calls, "test_s": test_s,
        "candidates": len(result.candidates),
        "validated": sum(c.accepted for c in result.candidates),
        "best_op": next(c.op for c in result.candidates if c.program == result.best),
        "best": result.best.to_json() if hasattr(result.best, "to_json") else str(result.best),
    }
    (run_dir / "row.json").write_text(json.dumps(row, indent=1, default=str))
    return row


def replay(name: str, args: argparse.Namespace, task, lm, out: Path) -> str:
    """Rerun ``name``'s search with the same seed on its own cache: the same seed and cache must
    reproduce the same result without paying an LM call."""
    import evo

    row = json.loads((out / name / "row.json").read_text())
    program = evo.Program(signature=task.signature, labels=task.labels)
    result = evo.optimize(program, task.train, task.val, lm=lm, seed=args.seed,
                          optimizer=evo.optimizers.get(name,
                                                       budget=evo.Budget(metric_calls=args.budget)),
                          cache=out / name / "cache.sqlite", description=task.description)
    same = (result.best.to_json() == row["best"] and result.best_val == row["val_best"]
            and result.metric_calls == row["metric_calls"])
    return (f"{name}: replay paid {result.usage.calls} LM calls ({result.usage.cache_hits} "
            f"cache hits); same best program, validation score and metric calls: {same}")


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/row.json"))]
    rows.sort(key=lambda r: -r["test"])
    lines = ["| optimizer | test accuracy (Δ vs baseline, 95% CI) | val: best | metric calls "
             "| search LM calls | search wall | test calls / wall | winner |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | **{r['test']:.3f}** ({r['test'] - r['baseline']:+.3f} "
            f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]) | {r['val_best']:.3f} | "
            f"{r['metric_calls']} | {r['lm_calls']} | {r['search_s']:.0f} s | "
            f"{r['test_calls']} / {r['test_s']:.0f} s | {r['best_op']} |")
    if rows:
        r = rows[0]
        lines.append(f"\nbaseline test accuracy {r['baseline']:.3f}; splits train/val/test "
                     f"{r['splits']}; budget {r['budget']} metric calls; seed {r['seed']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="trec")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all)")
    parser.add_argument("--out", default="runs/optimizers")
    parser.add_argument("--table", action="store_true", help="print the table of all rows")
    parser.add_argument("--replay", nargs="*", metavar="NAME",
                        help="rerun these searches on their caches (default: every row)")
    args = parser.parse_args(argv)

    import evo
    from evo.lm import make_lm

    out = Path(args.out)
    names = args.only if args.only is not None else evo.optimizers.names()
    if names:
        task = evo.datasets.load(args.task, seed=args.seed, n_train=args.n_train,
                                 n_val=args.n_val, n_test=args.n_test)
        lm = make_lm(args.model)
        for name in names:
            row = run_one(name, args, task, lm, out)
            print(f"{name}: test {row['baseline']:.3f} -> {row['test']:.3f}, "
                  f"{row['lm_calls']} LM calls, search {row['search_s']:.0f} s, "
                  f"test {row['test_s']:.0f} s", flush=True)
    if args.replay is not None:
        task = evo.datasets.load(args.task, seed=args.seed, n_train=args.n_train,
                                 n_val=args.n_val, n_test=args.n_test)
        lm = make_lm(args.model)
        for name in args.replay or [p.parent.name for p in sorted(out.glob("*/row.json"))]:
            print(replay(name, args, task, lm, out), flush=True)
    if args.table:
        print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
