"""SIMBA on the scripted tasks: DSPy's two strategies (append a successful demo, append a rule
from a better and a worse run of one example), minibatches paid once in the training matrix,
the budget kept for any size, the same search for a seed, and resume after a kill."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evo
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers.simba import SIMBA, parse_rules, simba_rule
from evo.program import Prediction
from evo.search.evaluate import Cell
from evo.testing import HASHED, SENTIMENT, search_figures
from evo.testing.conformance import OptimizerContract


def optimize(task=SENTIMENT, budget=300, lm=None, seed=0, **params):
    lm = lm or task.lm()
    opt = SIMBA(budget=evo.Budget(metric_calls=budget), encoder="hashing", **params)
    result = evo.optimize(task.program(), list(task.train), list(task.val), lm=lm,
                          optimizer=opt, seed=seed, cache=False)
    return result, lm


def task_requests(lm):
    return [r for r in lm.calls if r.purpose == "task"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(8, 400), seed=st.integers(0, 3))
def test_any_budget_is_kept_each_cell_paid_once_and_the_search_repeats(budget, seed):
    a, lm = optimize(HASHED, budget, seed=seed)
    b, _ = optimize(HASHED, budget, seed=seed)
    assert a.metric_calls <= budget
    keys = [r.key("scripted") for r in task_requests(lm)]
    assert len(keys) == len(set(keys)) and len(keys) <= a.metric_calls
    assert search_figures(a) == search_figures(b)


def test_small_budgets_still_take_several_steps_and_end_better():
    result, lm = optimize(budget=200)
    steps = [e for e in result.events if e["event"] == "candidate_evaluated"
             and e.get("train_minibatch") is not None]
    assert len({e["iteration"] for e in steps}) >= 2
    assert all(len(e["train_minibatch"]) <= 32 for e in steps)
    assert result.baseline_val == 0.5 and result.best_val == 1.0
    assert evo.evaluate(result.best, list(SENTIMENT.test), lm=lm, cache=False) == 1.0


def test_a_demo_is_the_best_run_with_the_programs_own_outputs():
    # the seed answers "neg" always: its right answers (neg examples) are the only demos
    result, _ = optimize(budget=200, max_steps=1)
    demo_children = [c for c in result.candidates if c.op == "simba_demo"]
    assert demo_children
    for child in demo_children:
        (demo,) = child.program.demos
        assert demo.outputs == {"label": "neg"} and "bad" in demo.inputs["text"]


def test_rules_come_from_a_better_and_a_worse_run_and_join_the_rules_list():
    seen = []

    def respond(req: LMRequest) -> str:
        if req.purpose == "reflection":
            seen.append(req.messages[-1].content)
        return SENTIMENT.respond(req)

    result, _ = optimize(budget=600, lm=ScriptedLM(respond), max_demos=0)  # rules only
    assert seen, "no rule was asked for"
    # the first step has the seed alone: its failed run is set against the correct output
    assert "A better attempt answered: (not available)" in seen[0]
    assert "A worse attempt answered: label: neg" in seen[0]
    assert "Correct output: label: pos" in seen[0]
    ruled = [c for c in result.candidates if c.op == "simba_rule"]
    assert ruled and all("\n\nRules:\n- " in c.program.instruction for c in ruled)
    assert result.best_val == 1.0 and "says good" in result.best.instruction


def test_where_the_pool_disagrees_a_rule_contrasts_a_better_and_a_worse_run():
    seen = []

    def respond(req: LMRequest) -> str:
        if req.purpose == "reflection":
            seen.append(req.messages[-1].content)
        return HASHED.respond(req)

    optimize(HASHED, budget=600, lm=ScriptedLM(respond), max_demos=0)
    both = [p for p in seen if "A better attempt answered: label: " in p
            and "A worse attempt answered: label: " in p]
    assert both and all("(score 1;" in p.split("A better")[1].split("\n")[0] for p in both)


def test_a_rule_that_is_a_label_or_a_copy_is_refused_and_costs_no_metric_call():
    def respond(req: LMRequest) -> str:
        if req.purpose == "reflection":
            return "- The pos label is right."
        return SENTIMENT.respond(req)

    result, _ = optimize(budget=600, lm=ScriptedLM(respond), max_demos=0)
    rejected = [e for e in result.events if e["event"] == "proposal_rejected"]
    assert rejected and all("an answer, not an instruction" in e["reason"] for e in rejected)
    assert not [c for c in result.candidates if c.op == "simba_rule"]
    assert result.best_val == result.baseline_val


def test_parse_rules_filters_labels_quotes_and_repeats():
    program = SENTIMENT.program()
    example = SENTIMENT.train[0]
    cell = Cell(1.0, Prediction("label: pos", {"label": "pos"}), "")
    raw = ("- pos\n- The pos label is right\n- If the text says good, answer pos.\n"
           "- if the text says good, answer pos\n"
           f"- {example.inputs['text']} is a hint\n")
    rules, reasons = parse_rules(raw, program, [(example, cell)], 5)
    assert rules == ["If the text says good, answer pos."]
    assert sorted(reasons) == ["an answer, not an instruction", "quotes an example",
                               "repeats a rule", "too short"]


def test_simba_rule_keeps_the_last_six_rules():
    lm = ScriptedLM(lambda req: "- When the input is long, read all of it first.")
    text = "Classify.\n\nRules:\n" + "\n".join(f"- Old rule number {i} about topic {i}."
                                                for i in range(6))
    program = SENTIMENT.program().model_copy(update={"instruction": text})
    session = evo.lm.session_for(lm)
    proposal = simba_rule(session, program, SENTIMENT.train[0], None, None)
    assert proposal.instruction is not None
    lines = proposal.instruction.splitlines()
    assert lines[0] == "Classify." and len([x for x in lines if x.startswith("- ")]) == 6
    assert "Old rule number 0" not in proposal.instruction
    assert lines[-1] == "- When the input is long, read all of it first."


def test_the_final_pick_validates_step_winners_evenly_spaced():
    result, _ = optimize(HASHED, budget=1000)
    winners = [e["candidate"] for e in result.events if e["event"] == "candidate_evaluated"
               and e.get("train_minibatch") is not None and e.get("accepted")]
    validated = [c.id for c in result.candidates if c.accepted and c.id != 0]
    assert 1 <= len(validated) <= 6 and set(validated) <= set(winners)
    assert validated[-1] == winners[-1]  # DSPy's spacing always includes the last winner


def test_cli_builds_simba_by_name_with_dspy_parameter_names():
    from evo.cli import build_optimizer, build_parser

    args = build_parser().parse_args(["run", "--task", "trec", "--optimizer", "simba",
                                      "--set", "bsize=8", "--set", "max_steps=3",
                                      "--set", "temperature_for_candidates=0.5"])
    opt = build_optimizer(args)
    assert isinstance(opt, SIMBA) and (opt.bsize, opt.max_steps) == (8, 3)
    assert opt.temperature_for_candidates == 0.5 and evo.optimizers.get("SIMBA").name == "simba"


def test_an_empty_trainset_is_refused():
    opt = SIMBA(budget=evo.Budget(metric_calls=100), encoder="hashing", max_demos=0)
    with pytest.raises(ValueError, match="SIMBA needs a trainset"):
        evo.optimize(SENTIMENT.program(), [], list(SENTIMENT.val), lm=SENTIMENT.lm(),
                     optimizer=opt, cache=False)


class TestSIMBAContract(OptimizerContract):
    """The conformance suite (budget, reproducible, resume, events) at a budget of several
    steps."""

    optimizer = SIMBA
    budget = 150
