"""The default search's settings genes and operator mix: the openings (label scoring for a
closed label set on a backend that scores choices, a reasoning step for a generative task), the
demo operators in use, and the operator credit that moves the budget away from reflection when
it never helps."""

import evo
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers.evolution import Credit
from evo.optimizers.steps import Race
from evo.search import genome as G
from evo.testing import hashed_example, hashed_respond

TRAIN = [hashed_example(i) for i in range(60)]
VAL = [hashed_example(i) for i in range(1000, 1040)]


def labelled():
    return evo.Program(signature="text -> label", labels=["pos", "neg", "other"])


def run(program, lm, budget=200, **config):
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=budget),
                              **{"encoder": "hashing", **config})
    return evo.optimize(program, TRAIN, VAL, lm=lm, optimizer=optimizer, cache=False)


class NoScoring(ScriptedLM):
    scores_choices = False


def test_a_labelled_task_on_a_scoring_backend_opens_with_label_scoring():
    lm = ScriptedLM(hashed_respond)
    result = run(labelled(), lm)
    first = result.candidates[1]
    assert first.op == "settings" and first.program.answer_mode == "rank"
    assert first.program.instruction == result.candidates[0].program.instruction
    assert any(r.choices == ("pos", "neg", "other") for r in lm.calls)
    # every genome carries the settings genes
    assert all(G.settings_of(c.genome) is not None for c in result.candidates)


def test_a_backend_that_cannot_score_never_gets_a_rank_program():
    lm = NoScoring(hashed_respond)
    result = run(labelled(), lm)
    assert all(c.program.answer_mode == "generate" for c in result.candidates)
    assert not any(r.choices for r in lm.calls)
    assert result.candidates[1].op != "settings" or result.candidates[1].program.reasoning


def test_a_generative_task_opens_with_a_reasoning_step():
    # a 'model' that gets the sum right only when it reasons first
    def respond(request: LMRequest) -> str:
        system, last = request.messages[0].content, request.messages[-1].content
        if "add " not in last:  # the preflight, a reflection
            return "ok"
        a, b = (int(x) for x in last.split("add ")[1].split(" and "))
        if "reasoning" in system:
            return f"reasoning: {a} plus {b} is {a + b}\nanswer: {a + b}"
        return f"answer: {a + b + 1}"

    data = [evo.Example(inputs={"question": f"add {i} and {i + 3}"},
                        outputs={"answer": str(2 * i + 3)}) for i in range(60)]
    program = evo.Program(signature="question -> answer: int")
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=120), encoder="hashing")
    result = evo.optimize(program, data[:30], data[30:], lm=ScriptedLM(respond),
                          optimizer=optimizer, cache=False)
    first = result.candidates[1]
    assert first.op == "settings" and first.program.reasoning
    assert result.baseline_val == 0.0 and result.best_val == 1.0 and result.best.reasoning


def test_the_demo_operators_are_all_drawn_in_a_long_search():
    result = run(labelled(), ScriptedLM(hashed_respond), budget=1200)
    ops = {c.op for c in result.candidates}
    for op in ("swap_for_neighbour", "reorder_demos", "resize_demos", "mutate_knn",
               "mutate_settings", "mutate_demos", "balance_classes"):
        assert op in ops, op
    stats = next(e for e in result.events if e["event"] == "operator_stats")["stats"]
    assert sum(row[0] for row in stats.values()) == sum(
        e["event"] == "candidate_raced" for e in result.events)


def _race(op, rungs, outcome):
    cand = type("C", (), {"op": op})()
    return Race(cand, [[8, 0.5, 0.5]] * rungs, outcome)


def test_credit_moves_weight_away_from_an_operator_that_never_passes_a_rung():
    credit = Credit()
    assert credit.weight("reflection") == credit.weight("mutate_demos") == 1.0
    for _ in range(4):
        credit.record(_race("reflection", 1, "dropped"))
        credit.record(_race("mutate_demos", 2, "dropped"))
    credit.record(_race("mutate_demos", 4, "validated"))
    assert credit.weight("reflection") < 0.5 < 1.0 < credit.weight("mutate_demos")
    assert credit.table() == {"mutate_demos": [5, 5, 1], "reflection": [4, 0, 0]}
    assert "reflection LM could not help" in credit.note()
    assert Credit().note() == ""
