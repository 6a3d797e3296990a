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


# ---- the confirmation of a voting ensemble stays within an lm_calls cap ------------------------

def _vote_search(lm_calls):
    from evo.optimizers.ensemble import vote_ensemble
    from evo.testing import TRAIN as T_TRAIN
    from evo.testing import VAL as T_VAL
    from evo.testing import program

    def answer(req):  # instruction "variant k" is wrong on items whose number is k mod 3
        system, last = req.messages[0].content, req.messages[-1].content
        item = int(last.split()[2])
        right = "pos" if "good" in last else "neg"
        for k in range(3):
            if f"variant {k}" in system and item % 3 == k:
                return "label: " + ("neg" if right == "pos" else "pos")
        return "label: " + (right if "variant" in system else "neg")

    config = evo.Ensemble(budget=evo.Budget(metric_calls=1000, lm_calls=lm_calls), knn=False,
                          encoder="hashing", dedupe_threshold=None, holdout=0.2)
    session = evo.lm.LMSession(ScriptedLM(answer))
    search = Search(program(), T_TRAIN, T_VAL, config=config, task_session=session,
                    reflection_session=session, metric=evo.exact_match)
    search.start()
    for k in range(3):
        iid, _ = search.archive.add_instruction(f"Label it, variant {k}.", {})
        search.validate(search.add(search.archive.genome(iid, []), (0,), "test"))
    vote = vote_ensemble(search, size=3)
    assert vote is not None and search.best is vote and search.holdout_cols
    return search


def test_confirming_a_vote_pays_no_lm_call_beyond_the_cap():
    """A vote's held-out cells cost one LM call per member each, but the reserve kept one per
    example: under an lm_calls cap the confirmation must not go past it."""
    used = _vote_search(10_000).evaluator.lm_requests
    search = _vote_search(used + len(_vote_search(10_000).holdout_cols))
    search.confirm()
    assert search.evaluator.lm_requests <= search.config.budget.lm_calls


def test_a_winning_vote_is_confirmed_from_its_members_held_out_answers():
    """confirm() sent the EnsembleProgram itself to the evaluator (AttributeError: no
    'prepare'): a vote is confirmed as it was validated, by its members' answers."""
    search = _vote_search(None)
    before = search.evaluator.metric_calls
    search.confirm()
    conf = search.state.confirmation
    vote = search.best
    assert conf is not None and conf["candidate"] == vote.id and conf["n"] == len(
        search.holdout_cols)
    assert conf["holdout_score"] == 1.0  # the members' errors fall on different items
    members = [m for m in vote.parents if m != 0]
    assert search.evaluator.metric_calls - before == len(members) * conf["n"]
