"""The engine on a scripted LM: it improves, respects the budget, never pays twice, survives bad
cells, and a rerun with the same seed and cache replays without paid calls."""

import numpy as np
import pytest

import evo
from evo.lm import LMError, LMSession, LMUnavailableError, ScriptedLM
from evo.lm.base import LMRequest

LABELS = ("pos", "neg")


def make(i: int) -> evo.Example:
    label = LABELS[i % 2]
    word = "good" if label == "pos" else "bad"
    return evo.Example(inputs={"text": f"item {i} is {word} stuff"}, outputs={"label": label})


TRAIN = [make(i) for i in range(40)]
VAL = [make(i) for i in range(100, 130)]
TEST = [make(i) for i in range(200, 240)]


def respond(req: LMRequest) -> str:
    """A 'model' that only gets the task right with >= 2 demos or a rule that mentions 'good'."""
    if req.purpose == "reflection":
        return "- Say pos when the text says good.\n- Say neg when the text says bad."
    last = req.messages[-1].content
    system = req.messages[0].content
    n_demos = (len(req.messages) - 2) // 2
    if n_demos >= 2 or ("says good" in system):
        return "label: " + ("pos" if "good" in last else "neg")
    return "label: neg"


def program() -> evo.Program:
    return evo.Program(signature="text -> label", labels=LABELS)


def run(lm, budget=200, seed=0, **kw):
    return evo.optimize(program(), TRAIN, VAL, lm=lm, seed=seed,
                        optimizer=evo.Evolution(budget=evo.Budget(metric_calls=budget)), **kw)


def test_search_improves_on_held_out_data():
    result = run(ScriptedLM(respond), cache=False)
    assert result.baseline_val == pytest.approx(0.5)
    assert result.best_val == 1.0
    report = result.report(TEST)
    assert report.baseline == 0.5 and report.optimized == 1.0
    assert report.ci_low > 0


def test_budget_is_respected_and_no_pair_paid_twice():
    lm = ScriptedLM(respond)
    result = run(lm, budget=150, cache=False)
    assert result.metric_calls <= 150
    task_calls = [c for c in lm.calls if c.purpose == "task"]
    assert len(task_calls) == result.metric_calls
    # each (prompt, example) pair reached the LM once
    assert len({c.key("m") for c in task_calls}) == len(task_calls)
    filled = int((~np.isnan(result.matrix.scores)).sum())
    assert filled == result.metric_calls


def test_same_seed_same_result_and_different_seed_explores_differently():
    a, b = run(ScriptedLM(respond), seed=3, cache=False), run(ScriptedLM(respond), seed=3,
                                                              cache=False)
    assert a.best == b.best
    assert [c.genome for c in a.candidates] == [c.genome for c in b.candidates]
    c = run(ScriptedLM(respond), seed=4, cache=False)
    assert [x.genome for x in c.candidates] != [x.genome for x in a.candidates]


def test_rerun_with_cache_pays_nothing(tmp_path):
    cache = tmp_path / "cache.sqlite"
    first = run(ScriptedLM(respond), cache=cache)
    lm = ScriptedLM(respond)
    second = run(lm, cache=cache)
    assert second.usage.calls == 0 and lm.calls == []
    assert second.usage.cache_hits == first.usage.calls
    assert second.best == first.best


def test_killed_search_resumes_from_cache(tmp_path):
    """A search that dies midway, rerun, pays only for calls it had not made."""
    cache = tmp_path / "cache.sqlite"
    full = run(ScriptedLM(respond), cache=tmp_path / "reference.sqlite")
    n_paid = full.usage.calls

    def dies_after(limit):
        count = {"n": 0}

        def errors(req):
            count["n"] += 1
            return KeyboardInterrupt() if count["n"] > limit else None
        return errors

    with pytest.raises(KeyboardInterrupt):
        run(ScriptedLM(respond, errors=dies_after(60)), cache=cache)
    lm = ScriptedLM(respond)
    resumed = run(lm, cache=cache)
    assert resumed.best == full.best
    assert resumed.usage.cache_hits >= 59
    assert resumed.usage.calls == n_paid - resumed.usage.cache_hits


def test_lm_errors_and_metric_errors_are_recorded_not_fatal():
    def flaky(req):
        return LMError("boom") if "item 105 " in req.messages[-1].content else None

    def metric(example, prediction):
        if "item 107 " in example.inputs["text"]:
            raise ZeroDivisionError("bad metric")
        return evo.exact_match(example, prediction)

    lm = LMSession(ScriptedLM(respond, errors=flaky), backoff_s=0)
    result = run(lm, cache=False, metric=metric)
    col = {ex.id: j for j, ex in enumerate(VAL)}
    cell = result.matrix.cells[(0, col[make(105).id])]
    assert cell.score == 0 and "boom" in cell.error
    cell = result.matrix.cells[(0, col[make(107).id])]
    assert cell.score == 0 and "ZeroDivisionError" in cell.error
    assert result.best_val > result.baseline_val
    n_candidates_on_105 = sum(not np.isnan(result.matrix.scores[r, col[make(105).id]])
                              for r in range(result.matrix.n_rows))
    assert result.search_summary()["cell_errors"] == (
        n_candidates_on_105 + sum(not np.isnan(result.matrix.scores[r, col[make(107).id]])
                                  for r in range(result.matrix.n_rows)))


def test_unreachable_lm_is_one_clear_error():
    def down(req):
        return ConnectionError("Connection refused")
    with pytest.raises(LMUnavailableError, match="could not reach scripted.*Connection refused"):
        run(LMSession(ScriptedLM(respond, errors=down), backoff_s=0), cache=False)


def test_budget_too_small_for_seed_validation():
    with pytest.raises(ValueError, match="cannot validate the seed"):
        run(ScriptedLM(respond), budget=10, cache=False)


def test_events_and_run_dir(tmp_path):
    events = []
    result = run(ScriptedLM(respond), cache=False, run_dir=tmp_path / "run",
                 on_event=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "new_best" in kinds and "candidate_generated" in kinds
    assert kinds[-1] in {"budget_exhausted", "converged"}
    assert evo.Program.load(tmp_path / "run" / "best.json") == result.best
    assert (tmp_path / "run" / "events.jsonl").read_text().count("\n") == len(result.events)


def test_reflection_adds_rules_and_rejects_answers():
    from evo.reflection import propose, split_rules
    from evo.evaluate import Cell

    p = program()
    failures = [(make(1), Cell(0.0, p.parse("label: pos"), "Wrong: correct is neg"))]
    ok = propose(LMSession(ScriptedLM(lambda r: "- Say neg when the text is negative.\n- x")),
                 p, failures)
    core, rules = split_rules(ok.instruction)
    assert core == p.instruction and rules == ["Say neg when the text is negative."]
    for reply in ["neg", "- neg", "- item 1 is bad stuff, so the label is neg"]:
        bad = propose(LMSession(ScriptedLM(lambda r, reply=reply: reply)), p, failures)
        assert bad.instruction is None, reply
