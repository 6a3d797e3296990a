"""Parent selection from GEPA's instance-level Pareto front: evo's kernels against gepa 0.1.4.

    .venv/bin/python benchmarks/bench_pareto.py            # 50x300, 200x500, 400x1000
    .venv/bin/python benchmarks/bench_pareto.py --quick    # 50x300 only

One selection each. Ours starts from the score matrix (fronts built inside the timed call); gepa
starts from its precomputed ``{example: set(programs)}`` dict, since its state keeps the fronts
up to date incrementally, and spends its time in ``remove_dominated_programs``. Scores: program i
has accuracy a_i ~ U(0.3, 0.9) and each cell is Bernoulli(a_i), seeded; aggregate = row means.
"""

from __future__ import annotations

import random

import numpy as np
from gepa.gepa_utils import remove_dominated_programs, select_program_candidate_from_pareto_front

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_pareto
    from _timing import Row, best_time, main
except ImportError:  # pragma: no cover
    from benchmarks._timing import Row, best_time, main

from evo.kernels.pareto import (
    instance_fronts_reference,
    pareto_frequencies,
    select_from_pareto_front,
)

SIZES = ((50, 300), (200, 500), (400, 1000))


def score_matrix(n_programs: int, n_examples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    accuracy = rng.uniform(0.3, 0.9, n_programs)
    return (rng.random((n_programs, n_examples)) < accuracy[:, None]).astype(np.float64)


def run(quick: bool = False) -> list[Row]:
    rows = []
    select_from_pareto_front(score_matrix(4, 5), None, random.Random(0))  # compile (or load cache)
    for n_programs, n_examples in SIZES[:1] if quick else SIZES:
        scores = score_matrix(n_programs, n_examples, seed=n_programs)
        agg = scores.mean(axis=1)
        agg_list = agg.tolist()
        fronts = instance_fronts_reference(scores)  # gepa's state, built once (not timed)

        # Same survivors: gepa's pruned fronts and ours hold the same programs, and both picks
        # come from them.
        survivors = set(np.flatnonzero(pareto_frequencies(scores, agg)).tolist())
        gepa_survivors = set().union(*remove_dominated_programs(fronts, agg_list).values())
        assert survivors == gepa_survivors, (n_programs, n_examples)
        assert select_from_pareto_front(scores, agg, random.Random(1)) in survivors
        assert select_program_candidate_from_pareto_front(fronts, agg_list, random.Random(1)) \
            in survivors

        ours = best_time(lambda: select_from_pareto_front(scores, agg, random.Random(0)),
                         repeat=20, number=5)
        theirs = best_time(
            lambda: select_program_candidate_from_pareto_front(fronts, agg_list, random.Random(0)),
            repeat=5)
        rows.append(Row("pareto select", f"{n_programs}x{n_examples}", ours, theirs, "gepa 0.1.4",
                        f"{len(survivors)} survivors; ours from the matrix, fronts included"))
    return rows


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
