"""A/B comparison of two programs on the same examples, with its statistics.

``evo compare A.json B.json --task trec --split test`` (or :func:`compare`) runs both programs on
every example of the split and reports the accuracy of each, the paired difference B - A with a
95% bootstrap confidence interval, a paired permutation-test p-value (kernels in
:mod:`evo.kernels.stats`) and the examples each one wins. The pairing matters: both programs see
the same examples, so the test reads the per-example differences, not two noisy means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evo.data import Example
from evo.errors import RunFailedError
from evo.kernels.stats import paired_bootstrap_ci, paired_permutation_test
from evo.lm import session_for
from evo.lm.base import LM
from evo.lm.session import LMSession
from evo.metrics import Metric, exact_match
from evo.program import Program
from evo.program.ensemble import EnsembleProgram, load_program
from evo.search.evaluate import (
    cell_failures,
    check_testset,
    evaluate_program,
    format_failures,
    meaningless,
)


@dataclass(frozen=True)
class Comparison:
    """B against A on ``n`` shared examples (``b_minus_a`` > 0: B is better)."""

    a: str
    b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    b_minus_a: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired permutation test
    b_wins: list[str]  # example ids where B scores higher
    a_wins: list[str]
    scores_a: list[float]
    scores_b: list[float]
    example_ids: list[str]
    # Failed cells of each program ({"a": ..., "b": ...}, :func:`evo.search.evaluate.cell_failures`)
    # and the examples left out of the pairing because a cell of either program failed there.
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)

    @property
    def meaningless(self) -> bool:
        """Whether more than half of either program's cells failed."""
        return meaningless(*self.failures.values())

    @property
    def significant(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}

    def __str__(self) -> str:
        p = format_p(self.p_value)
        verdict = ("B is better" if self.ci_low > 0 else "A is better" if self.ci_high < 0
                   else "no significant difference")
        rows = [("examples (paired)", f"{self.n}"),
                (f"A  {self.a}", f"{self.accuracy_a:.3f}"),
                (f"B  {self.b}", f"{self.accuracy_b:.3f}"),
                ("B - A (95% paired bootstrap CI)",
                 f"{self.b_minus_a:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"),
                ("paired permutation test (two-sided)", p),
                ("examples B wins / A wins / ties",
                 f"{len(self.b_wins)} / {len(self.a_wins)} / "
                 f"{self.n - len(self.b_wins) - len(self.a_wins)}"),
                ("verdict (95%)", verdict)]
        for side, name in (("a", "A"), ("b", "B")):
            if side in self.failures:
                rows.append((f"failed cells {name}", format_failures(self.failures[side])))
        if self.left_out:
            rows.append(("left out (a cell failed)", f"{len(self.left_out)} examples"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_p(p: float) -> str:
    """A permutation-test p-value as printed (its resolution is 1 / 10,001 resamples)."""
    return "p < 0.0001" if p <= 1 / 10_001 else f"p = {p:.4f}"


def paired(a_name: str, b_name: str, scores_a: np.ndarray, scores_b: np.ndarray,
           example_ids: Sequence[str], *, seed: int = 0) -> Comparison:
    """The statistics of two score rows over the same examples (no LM call)."""
    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired scores need two rows of the same non-zero length, got "
                         f"{len(a)} and {len(b)}")
    low, high = paired_bootstrap_ci(a, b, seed=seed)
    return Comparison(
        a=a_name, b=b_name, n=len(a), accuracy_a=float(a.mean()), accuracy_b=float(b.mean()),
        b_minus_a=float(b.mean() - a.mean()), ci_low=low, ci_high=high,
        p_value=paired_permutation_test(a, b, seed=seed),
        b_wins=[i for i, x, y in zip(example_ids, a, b, strict=True) if y > x],
        a_wins=[i for i, x, y in zip(example_ids, a, b, strict=True) if x > y],
        scores_a=a.tolist(), scores_b=b.tolist(), example_ids=list(example_ids))


def compare(a: Program | EnsembleProgram | str | Path, b: Program | EnsembleProgram | str | Path,
            dataset: Sequence[Example], *, lm: LM | LMSession, metric: Metric | None = None,
            cache: Any = True, max_tokens: int = 48, seed: int = 0) -> Comparison:
    """Evaluate programs ``a`` and ``b`` (objects or saved program files) on every example of
    ``dataset`` and compare them, paired by example. The data is checked first for both
    programs (:func:`evo.search.evaluate.check_testset`): an empty set or gold labels a program
    cannot answer is a :class:`~evo.errors.ConfigError` before any LM call; a repeated example is
    compared once, with a warning.

    >>> # print(evo.compare("runs/trec-s0/baseline.json", "runs/trec-s0/best.json", task.test,
    >>> #                   lm=evo.lm.local()))
    """
    def load(p):
        return (load_program(p), str(p)) if isinstance(p, str | Path) else (p, "program")

    (pa, name_a), (pb, name_b) = load(a), load(b)
    # (checked before any LM call; a repeated example is compared once, with a warning)
    examples = check_testset(pa, dataset, what=f"the data for {name_a}")
    check_testset(pb, examples, what=f"the data for {name_b}")
    session = session_for(lm, cache)
    session.preflight()
    metric = metric or exact_match
    sa, cells_a = evaluate_program(pa, examples, session, metric, max_tokens=max_tokens)
    sb, cells_b = evaluate_program(pb, examples, session, metric, max_tokens=max_tokens)
    # A failed cell (the LM or the metric failed) says nothing about either prompt: that
    # example is left out of the pairing rather than counted as a win for the other side.
    keep = [i for i, (x, y) in enumerate(zip(cells_a, cells_b, strict=True))
            if x.error is None and y.error is None]
    failures = {"a": cell_failures(cells_a), "b": cell_failures(cells_b)}
    kept = set(keep)
    left_out = [ex.id for i, ex in enumerate(examples) if i not in kept]
    if not keep:
        raise RunFailedError(f"every example had a failed cell (A: "
                             f"{format_failures(failures['a'])}; B: "
                             f"{format_failures(failures['b'])}): nothing to compare")
    result = paired(name_a, name_b, sa[keep], sb[keep], [examples[i].id for i in keep],
                    seed=seed)
    return dataclasses.replace(result, failures=failures, left_out=left_out)
