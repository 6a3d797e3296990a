"""Shared timing helpers for the benchmark scripts: best-of-N wall time and one result row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def best_time(fn: Callable[[], Any], *, repeat: int = 5, number: int = 1,
              budget_s: float = 20.0) -> float:
    """Best (minimum) seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls.
    Stops early once ``budget_s`` is spent (slow references), keeping at least one round."""
    best = float("inf")
    spent = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        best = min(best, dt / number)
        spent += dt
        if spent > budget_s:
            break
    return best


@dataclass
class Row:
    """One benchmark line: ours vs the reference, measured in the same run."""

    benchmark: str
    size: str
    ours_s: float
    reference_s: float
    reference: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.reference_s / self.ours_s if self.ours_s > 0 else float("inf")

    def markdown(self) -> str:
        return (f"| {self.benchmark} | {self.size} | {_fmt(self.ours_s)} | "
                f"{_fmt(self.reference_s)} ({self.reference}) | {self.ratio:,.1f}x | "
                f"{self.note} |")


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


HEADER = ("| benchmark | size | evo | reference | ratio | note |\n"
          "|---|---|---|---|---|---|")


def main(run: Callable[..., list[Row]], description: str) -> None:
    """The command line of one benchmark script: ``python bench_x.py [--quick]``."""
    import argparse

    from evo.kernels import backend

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    print(f"kernels on {backend()}")
    print(HEADER)
    for row in run(quick=args.quick):
        print(row.markdown(), flush=True)
