"""Review of the issue-17 work (racing, held-out confirmation, settings genes, label scoring):
regression tests for what the review found, each on scripted LMs."""

import numpy as np

import evo
from evo.lm import ScriptedLM
from evo.search.engine import Search
from evo.testing import hashed_example, hashed_respond

TRAIN = [hashed_example(i) for i in range(60)]
VAL = [hashed_example(i) for i in range(1000, 1050)]


def program_hashed():
    return evo.Program(signature="text -> label", labels=["pos", "neg", "other"])


def started(config, lm=None, seed=0):
    session = evo.lm.LMSession(lm or ScriptedLM(hashed_respond, delay_s=0.0005))
    search = Search(program_hashed(), TRAIN, VAL, config=config, task_session=session,
                    reflection_session=session, metric=evo.exact_match, seed=seed)
    search.start()
    return search


# ---- held-out examples never choose: a parallel ensemble's members ------------------------------

def test_a_parallel_ensembles_members_keep_the_parents_held_out_examples_out():
    """A parallel member runs on a search of its own (seed + 1 + i): it must hold out the same
    examples as the search it is merged into, or its children are chosen on the parent's
    held-out examples (and its validated candidates lack cells the parent chooses on)."""
    config = evo.Ensemble(budget=evo.Budget(metric_calls=400), encoder="hashing",
                          parallel=True, holdout=0.2)
    search = started(config)
    held = set(search.holdout_cols)
    assert len(held) == 10
    config.run(search)
    for cand in search.candidates[1:]:
        touched = {c for (row, c) in search.matrix.cells if row == cand.id} & held
        assert not touched, f"candidate {cand.id} ({cand.op}) was scored on held-out {touched}"
        if cand.accepted:
            assert not np.isnan(search.matrix.scores[cand.id, search.all_cols]).any()
            assert np.isfinite(cand.val_score)
    assert search.evaluator.metric_calls <= 400


# ---- a holdout leaves validation examples to choose on ---------------------------------------

def test_a_large_holdout_still_leaves_examples_that_choose():
    """holdout < 1 is allowed, but round(0.95 * 6) = 6 held out left no column to choose on:
    every candidate's fitness was the mean of nothing (NaN) and races were free."""
    lm = ScriptedLM(hashed_respond)
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=60), encoder="hashing",
                              holdout=0.95, knn=False)
    result = evo.optimize(program_hashed(), TRAIN, VAL[:6], lm=lm, optimizer=optimizer,
                          cache=False)
    assert np.isfinite(result.baseline_val) and np.isfinite(result.best_val)
    assert result.confirmation is not None and 1 <= result.confirmation["n"] < 6
    assert result.metric_calls <= 60
