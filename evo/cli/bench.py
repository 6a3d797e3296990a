"""``evo bench``: tasks x optimizers x budgets x seeds, evo vs DSPy (needs the ``bench`` extra)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from pydantic import ValidationError

from evo.errors import ConfigError, config_error

EXTRA = "pip install 'evo-prompt[bench]'"


def register(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser("bench", help="tasks x optimizers x budgets x seeds, evo vs DSPy: "
                        "JSON per run, a markdown table and a plot (resumable)")
    be.add_argument("--config", help="a TOML suite (e.g. benchmarks/configs/small.toml); "
                    "the flags below override its keys")
    be.add_argument("--tasks", nargs="+")
    be.add_argument("--optimizers", nargs="+",
                    help="evo names (see `evo optimizers`) and dspy.gepa, dspy.miprov2, "
                         "dspy.copro, dspy.bootstrap_random_search")
    be.add_argument("--budgets", nargs="+", type=int, help="metric calls per search")
    be.add_argument("--seeds", nargs="+", type=int)
    be.add_argument("--n-train", type=int)
    be.add_argument("--n-val", type=int)
    be.add_argument("--n-test", type=int)
    be.add_argument("--model", help="embedded model name, .gguf path or provider/model")
    be.add_argument("--out", type=Path, help="results directory (default runs/bench)")
    be.add_argument("--report-only", action="store_true",
                    help="write the table and plot from the results already there")
    be.set_defaults(func=cmd_bench)


def _harness(report_only: bool):
    """The bench harness, or a :class:`ConfigError` naming the extra when a package it needs is
    missing (the plot needs matplotlib; dspy.MIPROv2 needs optuna)."""
    needed = ("matplotlib",) if report_only else ("matplotlib", "optuna")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"evo bench needs the bench extra ({', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed): {EXTRA}")
    # Deferred: the harness imports dspy (seconds), which no other command needs.
    import evo_bench

    return evo_bench


def cmd_bench(args: argparse.Namespace) -> int:
    bench = _harness(args.report_only)
    overrides = {k: getattr(args, k) for k in ("tasks", "optimizers", "budgets", "seeds",
                                               "n_train", "n_val", "n_test", "model", "out")}
    if args.report_only and not args.config:  # the results folder is all a report needs
        out = args.out or bench.BenchConfig.model_fields["out"].default
    else:
        try:
            config = bench.BenchConfig.load(args.config, **overrides) if args.config else \
                bench.BenchConfig(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise config_error(exc, f"evo bench {args.config or 'flags'}") from None
        out = config.out
        if not args.report_only:
            cells = config.cells()
            print(f"evo bench: {len(cells)} runs ({len(config.tasks)} tasks x "
                  f"{len(config.seeds)} seeds x {len(config.optimizers)} optimizers x "
                  f"{len(config.budgets)} budgets, + baselines), results under {out}", flush=True)
            bench.run_suite(config, log=lambda line: print(line, flush=True))
    text, png = bench.report(out)
    print(text)
    print(f"table: {out / 'table.md'}; plot: {png}")
    return 0
