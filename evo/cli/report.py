"""``evo report``: a self-contained HTML report of a run."""

from __future__ import annotations

import argparse

from evo.analysis.report import write_report
from evo.cli.common import dollars_per_mtok


def register(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="a self-contained HTML report of a run: score vs calls, "
                        "Pareto fronts, lineage with diffs, per-example wins, usage and cost")
    rp.add_argument("run", help="run directory (written by `evo run` or evo.optimize(run_dir=))")
    rp.add_argument("--out", help="HTML file (default RUN/report.html)")
    rp.add_argument("--price", metavar="IN,OUT",
                    help="dollars per million prompt and completion tokens, for the cost line")
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    price = dollars_per_mtok(args.price) if args.price else None
    path = write_report(args.run, args.out, price=price)
    print(f"report: {path}")
    return 0
