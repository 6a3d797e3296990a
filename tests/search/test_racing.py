"""Racing (children compared with the incumbent on growing validation prefixes) and the held-out
confirmation of the final pick, on scripted LMs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evo
from evo.lm import ScriptedLM
from evo.optimizers.steps import keeps_racing, rungs
from evo.testing import hashed_example, hashed_respond

TRAIN = [hashed_example(i) for i in range(60)]
VAL = [hashed_example(i) for i in range(1000, 1050)]


def run(budget=300, lm=None, **config):
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=budget),
                              **{"encoder": "hashing", **config})
    lm = lm or ScriptedLM(hashed_respond)
    return evo.optimize(program_hashed(), TRAIN, VAL, lm=lm, optimizer=optimizer,
                        cache=False), lm


def program_hashed():
    return evo.Program(signature="text -> label", labels=["pos", "neg", "other"])


def raced(result):
    return [e for e in result.events if e["event"] == "candidate_raced"]


def test_rungs_double_from_the_first_and_end_at_the_whole_set():
    assert rungs(40, 8) == [8, 16, 32, 40]
    assert rungs(8, 8) == [8] and rungs(5, 8) == [5] and rungs(9, 4) == [4, 8, 9]


def test_keeps_racing_drops_a_child_confidently_behind_and_keeps_a_tie():
    same = np.array([1.0, 0.0, 1.0, 1.0])
    assert keeps_racing(same, same, 0.0)
    assert not keeps_racing(np.zeros(8), np.ones(8), 2.0)
    # one example worse in eight: dropped when impatient, kept with a wide margin
    child, inc = np.ones(8), np.ones(8)
    child[0] = 0
    assert not keeps_racing(child, inc, 0.5) and keeps_racing(child, inc, 3.0)


def test_a_budget_of_300_assesses_tens_of_candidates_and_is_spent():
    result, lm = run(300, settings=False)
    races = raced(result)
    assert len(races) >= 12  # the old minibatch + full validation loop assessed about 5
    outcomes = {e["outcome"] for e in races}
    assert "dropped" in outcomes and "validated" in outcomes
    # under 5% of the budget left, and the reason recorded
    assert result.metric_calls <= 300 and 300 - result.metric_calls < 0.05 * 300
    assert result.stop_reason == "budget exhausted"
    # a dropped child was paid exactly the rungs it reached; a validated one all of them
    n_sel = len(VAL) - result.confirmation["n"]
    for event in races:
        sizes = [int(r[0]) for r in event["rungs"]]
        assert sizes == rungs(n_sel, 8)[:len(sizes)]
        paid = sum(1 for (row, _) in result.matrix.cells if row == event["candidate"])
        held = result.confirmation["n"] if event["candidate"] == result.best_id else 0
        assert paid == sizes[-1] + held
        assert (event["outcome"] == "validated") == (sizes[-1] == n_sel)
        assert result.candidates[event["candidate"]].accepted == (event["outcome"] == "validated")


def test_the_final_pick_is_confirmed_on_examples_never_used_to_choose():
    result, lm = run(300)
    conf = result.confirmation
    assert conf is not None and conf["n"] == 10 and conf["candidate"] == result.best_id
    held = [c for c in range(len(VAL)) if (0, c) in result.matrix.cells
            and not any((r, c) in result.matrix.cells for r in range(1, len(result.candidates))
                        if r != result.best_id)]
    assert len(held) == 10
    # only the seed and the final pick were ever scored on them
    rows = {r for (r, c) in result.matrix.cells if c in held}
    assert rows == {0, result.best_id}
    assert conf["holdout_score"] == pytest.approx(
        np.mean([result.matrix.scores[result.best_id, c] for c in held]))
    assert conf["seed_holdout_score"] == pytest.approx(
        np.mean([result.matrix.scores[0, c] for c in held]))
    # no held-out example was shown to the reflection LM or chose anything
    held_text = [VAL[c].inputs["text"] for c in held]
    for request in lm.calls:
        if request.purpose != "task":
            body = "\n".join(m.content for m in request.messages)
            assert not any(text in body for text in held_text)
    summary = result.search_summary()
    assert summary["confirmation"] == conf and summary["unspent"] == 300 - result.metric_calls


def test_holdout_zero_keeps_the_whole_validation_set_choosing():
    result, _ = run(150, holdout=0.0)
    assert result.confirmation is None
    assert len(raced(result)) > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(50, 400), k=st.integers(1, 4), start=st.integers(1, 12))
def test_racing_never_exceeds_the_budget_and_pays_each_cell_once(budget, k, start):
    lm = ScriptedLM(hashed_respond)
    result, _ = run(budget, lm=lm, parallel_proposals=k, minibatch_size=start)
    assert result.metric_calls <= budget
    task = [r for r in lm.calls if r.purpose == "task"]
    assert len(task) <= result.metric_calls + 1  # + the preflight
    # the budget is used unless the search converged: less than a round of first rungs is
    # left, plus the held-out reserve when the seed stayed the pick (its held-out cells were
    # paid with its validation)
    if result.stop_reason == "budget exhausted":
        reserve = result.confirmation["n"] if result.best_id == 0 else 0
        assert budget - result.metric_calls < start * k + 1 + reserve


def test_the_same_seed_races_the_same_way():
    a, _ = run(200)
    b, _ = run(200)
    assert raced(a) and [(e["candidate"], e["rungs"], e["outcome"]) for e in raced(a)] == \
        [(e["candidate"], e["rungs"], e["outcome"]) for e in raced(b)]


def test_races_use_the_dense_signal_when_every_cell_has_one():
    # a scoring model: the gold label's probability grows with the number of demos shown
    def scores(request):
        n_demos = sum(m.role == "assistant" for m in request.messages)
        last = request.messages[-1].content
        gold = "pos" if "good" in last else "neg" if "bad" in last else "other"
        return {c: (-0.1 * (4 - n_demos) if c == gold else -1.5) for c in request.choices}

    lm = ScriptedLM(hashed_respond, scores=scores)
    seed = program_hashed().model_copy(update={"answer_mode": "rank"})
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=200), encoder="hashing")
    result = evo.optimize(seed, TRAIN, VAL, lm=lm, optimizer=optimizer, cache=False)
    races = raced(result)
    assert races and all(e["dense"] for e in races)
    dense = result.matrix.dense
    for event in races:
        child = event["candidate"]
        if child == result.best_id:  # its held-out cells joined its row after the race
            continue
        seen = ~np.isnan(dense[child])
        assert seen.sum() == int(event["rungs"][-1][0])
        # the signal: the metric's score plus P(gold), on the child's examples, for both
        scores = result.matrix.scores
        assert event["rungs"][-1][1] == pytest.approx(
            float((scores[child][seen] + dense[child][seen]).mean()))
        inc = event["incumbent"]
        assert event["rungs"][-1][2] == pytest.approx(
            float((scores[inc][seen] + dense[inc][seen]).mean()))
    assert result.best_val >= result.baseline_val


def test_dense_scores_are_kept_in_the_run_files_only_when_there_are_some(tmp_path):
    import json

    lm = ScriptedLM(hashed_respond)
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=80), encoder="hashing")
    ranked = program_hashed().model_copy(update={"answer_mode": "rank"})
    result = evo.optimize(ranked, TRAIN, VAL, lm=lm, optimizer=optimizer, cache=False,
                          run_dir=tmp_path / "rank")
    saved = json.loads((tmp_path / "rank" / "result.json").read_text())
    dense = np.array([[np.nan if v is None else v for v in row] for row in saved["dense"]])
    assert np.allclose(np.nan_to_num(dense, nan=-1), np.nan_to_num(result.matrix.dense, nan=-1))
    evo.optimize(program_hashed(), TRAIN, VAL, lm=ScriptedLM(hashed_respond),
                 optimizer=evo.Evolution(budget=evo.Budget(metric_calls=80), encoder="hashing",
                                         knn=False, settings=False),
                 cache=False, run_dir=tmp_path / "gen")
    assert "dense" not in json.loads((tmp_path / "gen" / "result.json").read_text())


def test_a_length_budget_picks_the_best_prompt_within_it():
    free, _ = run(300, settings=False)
    front = free.pareto_front()
    assert len(front) >= 1
    longest = max(c.program.prompt_chars() for c in free.candidates if c.accepted)
    limit = min(c.program.prompt_chars() for c in free.candidates if c.accepted)
    capped, _ = run(300, settings=False, max_prompt_chars=limit)
    assert capped.best.prompt_chars() <= limit < longest or limit == longest
    within = [c for c in capped.candidates if c.accepted and c.program.prompt_chars() <= limit]
    assert capped.best_val == max(c.val_score for c in within)


@pytest.mark.parametrize("cap", [70, 90, 120, 160])
def test_an_lm_call_cap_ends_every_race_on_record(cap):
    # calibration calls are LM calls the rung's fit check does not count: a cap can land in the
    # middle of a rung; every child still ends its race on record and the operator stats come out
    lm = ScriptedLM(hashed_respond)
    seed = program_hashed().model_copy(update={"answer_mode": "rank", "calibrate": True})
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=400, lm_calls=cap),
                              encoder="hashing")
    result = evo.optimize(seed, TRAIN, VAL, lm=lm, optimizer=optimizer, cache=False)
    assert len(lm.calls) <= cap + 1  # + the preflight
    raced_ids = [e["candidate"] for e in raced(result)]
    assert sorted(raced_ids) == list(range(1, len(result.candidates)))
    assert sum(e["event"] == "operator_stats" for e in result.events) == 1
