"""Parallel proposals: with ``parallel_proposals=K`` an Evolution or GEPA iteration proposes K
children, their reflection calls, minibatches and validations going out together. The search
depends on K, never on the concurrency: the same run at concurrency 1 and 8; K=1 is the serial
search (the replay fingerprints of tests/optimizers/test_replay.py are recorded with it); and a
run made before the field existed still resumes (the field stays out of the spec at its
default)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import evo
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.runs.runner import optimizer_spec
from evo.testing import HASHED, assert_same_run


class PeakLM(ScriptedLM):
    """The hash-scripted model, counting the most calls it had in flight at once per purpose."""

    def __init__(self, **kw) -> None:
        super().__init__(HASHED.respond, delay_s=0.002, **kw)
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._count = threading.Lock()

    def complete(self, request: LMRequest):
        kind = "task" if request.purpose == "task" else "proposal"
        with self._count:
            self.now[kind] = self.now.get(kind, 0) + 1
            self.peak[kind] = max(self.peak.get(kind, 0), self.now[kind])
        try:
            return super().complete(request)
        finally:
            with self._count:
                self.now[kind] -= 1


OPTIMIZERS = {
    "evolution": lambda k: evo.Evolution(budget=evo.Budget(metric_calls=200), knn=False,
                                         encoder="hashing", reflection_rate=0.8,
                                         parallel_proposals=k),
    "gepa": lambda k: evo.GEPA(budget=evo.Budget(metric_calls=200), encoder="hashing",
                               parallel_proposals=k),
}


def search(name: str, k: int, concurrency: int, run_dir=None):
    lm = PeakLM(max_concurrency=concurrency)
    result = evo.optimize(HASHED.program(), HASHED.train, HASHED.val, lm=lm,
                          optimizer=OPTIMIZERS[name](k), cache=False, run_dir=run_dir)
    return result, lm


def fingerprint(result) -> tuple:
    return (result.best.to_json(), result.best_val, result.metric_calls, result.instructions,
            [(c.op, c.parents, c.val_score) for c in result.candidates],
            result.usage.calls, result.usage.by_purpose)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_search_depends_on_k_not_on_the_concurrency(name, tmp_path):
    one, lm_one = search(name, 4, 1, tmp_path / "one")
    eight, lm_eight = search(name, 4, 8, tmp_path / "eight")
    assert fingerprint(one) == fingerprint(eight)
    assert np.array_equal(one.matrix.scores, eight.matrix.scores, equal_nan=True)
    assert_same_run(tmp_path / "one", tmp_path / "eight")
    assert lm_one.peak == {"task": 1, "proposal": 1}
    # several proposals and several children's cells were in flight at once
    assert lm_eight.peak["proposal"] > 1 and lm_eight.peak["task"] > 4
    assert eight.metric_calls <= 200


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_one_proposal_per_iteration_is_the_serial_search_at_any_concurrency(name):
    serial, _ = search(name, 1, 1)
    concurrent, lm = search(name, 1, 8)
    assert fingerprint(serial) == fingerprint(concurrent)
    assert lm.peak["proposal"] == 1  # one proposal at a time, its children's cells together


@pytest.mark.parametrize("budget", [40, 57, 90, 133])
def test_a_round_of_children_never_spends_past_the_budget(budget):
    lm = ScriptedLM(HASHED.respond, max_concurrency=8)
    result = evo.optimize(HASHED.program(), HASHED.train, HASHED.val, lm=lm, cache=False,
                          optimizer=evo.Evolution(budget=evo.Budget(metric_calls=budget),
                                                  knn=False, encoder="hashing",
                                                  reflection_rate=0.8, parallel_proposals=6))
    assert result.metric_calls <= budget
    task_calls = sum(r.purpose == "task" for r in lm.calls)
    assert task_calls == result.metric_calls  # every cell paid was counted, none twice
    assert all(c.accepted == np.isfinite(c.val_score) for c in result.candidates)


def test_the_field_stays_out_of_the_spec_at_its_default():
    assert "parallel_proposals" not in optimizer_spec(evo.Evolution())
    assert "parallel_proposals" not in optimizer_spec(evo.GEPA())
    assert optimizer_spec(evo.GEPA(parallel_proposals=3))["parallel_proposals"] == 3


def test_a_round_that_repeats_a_parent_pays_each_cell_once():
    """A round may pick one parent several times with overlapping training minibatches (always
    so with current_best and a small trainset): each (candidate, example) cell is still paid and
    charged once."""
    lm = ScriptedLM(HASHED.respond, max_concurrency=8)
    result = evo.optimize(HASHED.program(), HASHED.train[:5], HASHED.val, lm=lm, cache=False,
                          optimizer=evo.GEPA(budget=evo.Budget(metric_calls=120),
                                             candidate_selection="current_best",
                                             parallel_proposals=4, encoder="hashing"))
    task = [r.key("m") for r in lm.calls if r.purpose == "task"]
    assert len(task) == len(set(task)) == result.metric_calls
