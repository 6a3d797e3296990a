"""InferRules on the scripted tasks: BootstrapFewShot's demos, then rules induced from training
examples appended to the seed instruction, the best on validation; refused rules cost no metric
call; the budget is kept for any size and the search repeats for a seed."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evo
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers.infer_rules import MAX_EXAMPLE_CHARS, InferRules
from evo.proposers.reflection import split_rules
from evo.testing import HASHED, SENTIMENT, search_figures
from evo.testing.conformance import OptimizerContract


def optimize(task=SENTIMENT, budget=300, lm=None, seed=0, **params):
    lm = lm or task.lm()
    opt = InferRules(budget=evo.Budget(metric_calls=budget), encoder="hashing", **params)
    result = evo.optimize(task.program(), list(task.train), list(task.val), lm=lm,
                          optimizer=opt, seed=seed, cache=False)
    return result, lm


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(8, 400), seed=st.integers(0, 3))
def test_any_budget_is_kept_each_cell_paid_once_and_the_search_repeats(budget, seed):
    a, lm = optimize(HASHED, budget, seed=seed)
    b, _ = optimize(HASHED, budget, seed=seed)
    assert a.metric_calls <= budget
    keys = [r.key("scripted") for r in lm.calls if r.purpose == "task"]
    assert len(keys) == len(set(keys)) and len(keys) <= a.metric_calls
    assert search_figures(a) == search_figures(b)


def test_rules_join_the_seed_instruction_and_the_bootstrapped_demos_stay():
    prompts = []

    def respond(req: LMRequest) -> str:
        if req.purpose == "reflection":
            prompts.append(req.messages[-1].content)
            n = len(prompts)
            return f"- Rule {n}: say pos when the text says good.\n- Rule {n}: else say neg."
        return SENTIMENT.respond(req)

    result, _ = optimize(budget=400, lm=ScriptedLM(respond), num_candidates=3, num_rules=2)
    ops = [c.op for c in result.candidates]
    assert ops == ["seed", "bootstrapped_demos"] + ["infer_rules"] * 3
    boot = result.candidates[1]
    assert boot.accepted and len(boot.program.demos) == 4
    seed_text = SENTIMENT.program().instruction
    for n, cand in enumerate(result.candidates[2:], 1):
        assert cand.accepted and cand.program.demos == boot.program.demos
        core, rules = split_rules(cand.program.instruction)
        assert core == seed_text and len(rules) == 2 and rules[0].startswith(f"Rule {n}:")
    # the LM sees examples with their correct outputs, bounded in length
    assert len(prompts) == 3 and "label: pos" in prompts[0] and "label: neg" in prompts[0]
    assert all(p.count("### Example") >= 2 for p in prompts)
    assert all(len(p) < MAX_EXAMPLE_CHARS + 1500 for p in prompts)
    assert result.best_val == 1.0


def test_refused_rules_cost_no_metric_call_and_the_bootstrap_is_kept():
    def respond(req: LMRequest) -> str:
        if req.purpose == "reflection":
            return "- pos\n- The neg label is right."
        return SENTIMENT.respond(req)

    result, _ = optimize(budget=400, lm=ScriptedLM(respond), num_candidates=4)
    rejected = [e for e in result.events if e["event"] == "proposal_rejected"]
    assert len(rejected) == 4 and all("no usable rule" in e["reason"] for e in rejected)
    assert [c.op for c in result.candidates] == ["seed", "bootstrapped_demos"]
    assert result.metric_calls < 2 * len(SENTIMENT.val) + len(SENTIMENT.train)
    assert result.best_val == 1.0  # BootstrapFewShot's program


def test_proposals_stop_where_the_budget_cannot_validate_them():
    result, lm = optimize(budget=100, num_candidates=10)  # seed 30 + bootstrap 30 + one more
    proposals = [r for r in lm.calls if r.purpose == "reflection"]
    validated = [c for c in result.candidates if c.accepted]
    assert len(proposals) <= 1 and len(validated) <= 3 and result.metric_calls <= 100


def test_registered_by_name_with_dspy_parameter_names():
    opt = evo.optimizers.get("InferRules", num_candidates=2, num_rules=3)
    assert isinstance(opt, InferRules) and opt.name == "infer_rules"
    assert (opt.num_candidates, opt.num_rules, opt.max_bootstrapped_demos) == (2, 3, 4)


class TestInferRulesContract(OptimizerContract):
    """The conformance suite (budget, reproducible, resume, events) with several candidates."""

    optimizer = InferRules
    budget = 120
