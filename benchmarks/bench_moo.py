"""Non-dominated sorting and crowding distance: evo's kernels against DEAP 1.4.4.

    .venv/bin/python benchmarks/bench_moo.py            # N = 200, 1000, 5000; 2 and 3 objectives
    .venv/bin/python benchmarks/bench_moo.py --quick    # N = 200 only (and the crowding row)

Random continuous objectives (seeded, maximized). Both sides produce every front (k = N): ours
``sort_nondominated`` on the array, DEAP ``tools.sortNondominated`` on individuals built beforehand
(not timed). The fronts are checked equal as sets for N <= 1000. DEAP at N = 5000 runs once
(tens of seconds; ``best_time``'s budget stops it after the first round). Two objectives take
our O(N log N) sweep; three the O(M·N²) sort.
"""

from __future__ import annotations

import numpy as np
from deap import base, tools

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_moo
    from _timing import Row, best_time, main
except ImportError:  # pragma: no cover
    from benchmarks._timing import Row, best_time, main

from evo.kernels.moo import crowding_distance, nondominated_ranks, sort_nondominated

SIZES = (200, 1000, 5000)


def deap_population(objectives: np.ndarray, weights: np.ndarray) -> list:
    """DEAP individuals in index order (a local Fitness subclass, no global ``creator``)."""
    fitness_class = type("Fit", (base.Fitness,), {"weights": tuple(float(w) for w in weights)})

    class Individual(list):
        def __init__(self, values: list[float], index: int) -> None:
            super().__init__(values)
            self.index = index
            self.fitness = fitness_class(tuple(values))

    return [Individual(row.tolist(), i) for i, row in enumerate(objectives)]


def _warm_up() -> None:
    for m in (2, 3):
        obj = np.random.default_rng(0).random((8, m))
        crowding_distance(obj, nondominated_ranks(obj, np.ones(m)))


def run(quick: bool = False) -> list[Row]:
    _warm_up()
    rows = []
    for n in SIZES[:1] if quick else SIZES:
        for m in (2, 3):
            obj = np.random.default_rng(n * 10 + m).random((n, m))
            weights = np.ones(m)
            pop = deap_population(obj, weights)
            if n <= 1000:
                ours_fronts = [set(f.tolist()) for f in sort_nondominated(obj, weights)]
                deap_fronts = [{ind.index for ind in f} for f in tools.sortNondominated(pop, n)]
                assert ours_fronts == deap_fronts, (n, m)
            ours = best_time(lambda: sort_nondominated(obj, weights), repeat=10)
            theirs = best_time(lambda: tools.sortNondominated(pop, n), repeat=3, budget_s=10.0)
            n_fronts = int(nondominated_ranks(obj, weights).max()) + 1
            rows.append(Row("non-dominated sort", f"N={n}, M={m}", ours, theirs, "DEAP 1.4.4",
                            f"{n_fronts} fronts, all sorted"))

    n, m = 1000, 2
    obj = np.random.default_rng(7).random((n, m))
    ranks = nondominated_ranks(obj, np.ones(m))
    pop = deap_population(obj, np.ones(m))
    fronts = [[pop[i] for i in np.flatnonzero(ranks == r)] for r in range(ranks.max() + 1)]

    def deap_crowding() -> None:
        for front in fronts:
            tools.emo.assignCrowdingDist(front)

    ours = best_time(lambda: crowding_distance(obj, ranks), repeat=20, number=5)
    theirs = best_time(deap_crowding, repeat=5)
    rows.append(Row("crowding distance", f"N={n}, M={m}", ours, theirs, "DEAP 1.4.4",
                    f"{len(fronts)} fronts"))
    return rows


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
