"""Every kernel benchmark in one table: ours vs its reference, measured in the same run.

    python benchmarks/run.py            # full sizes (~5-10 min on 2 cores)
    python benchmarks/run.py --quick    # small sizes (a smoke run, ~1 min)
    python benchmarks/run.py --only knn pareto

Prints a Markdown table (the README's kernel table is a copy of its output) and, with
``--json PATH``, the raw rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import HEADER, Row  # noqa: E402

SUITES = ("pareto", "moo", "knn", "text", "stats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    from evo.kernels import backend

    print(f"# evo kernel benchmarks ({'quick' if args.quick else 'full'}; kernels on {backend()}; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()})", flush=True)
    rows: list[Row] = []
    print(HEADER, flush=True)
    for name in args.only:
        started = time.perf_counter()
        module = importlib.import_module(f"bench_{name}")
        for row in module.run(quick=args.quick):
            rows.append(row)
            print(row.markdown(), flush=True)
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "ratio": r.ratio} for r in rows],
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
