"""evo optimizes a two-predictor dspy.Module (ChainOfThought classifier + verifier) on a scripted
LM that speaks DSPy's ChatAdapter format, and the result round-trips through DSPy's save/load."""

import re

import pytest

import evo
from evo.lm import LMSession, ScriptedLM

dspy = pytest.importorskip("dspy")


def field(text: str, name: str) -> str | None:
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|\Z)", text, re.DOTALL)
    return m.group(1).strip() if m else None


def parity(text: str) -> str:
    return "even" if int(re.search(r"\d+", text).group()) % 2 == 0 else "odd"


def respond(req) -> str:
    """The classifier (a ChainOfThought) is right only when it is shown demos; the verifier
    copies the draft label, except that it calls every multiple of 3 odd, unless its
    instruction carries a rule about parity."""
    system = req.messages[0].content
    user = req.messages[-1].content
    if req.purpose == "reflection":
        return "- Check the parity of the number before you answer.\n- Use lowercase labels."
    if "`final_label`" in system:
        text = field(user, "text")
        label = field(user, "label") or "odd"
        if int(re.search(r"\d+", text).group()) % 3 == 0:
            label = "odd"
        if "Rules:" in system and "parity" in system:
            label = parity(text)
        return f"[[ ## final_label ## ]]\n{label}\n\n[[ ## completed ## ]]"
    shown_demos = sum(m.role == "user" for m in req.messages) > 1
    label = parity(field(user, "text")) if shown_demos else "odd"
    return (f"[[ ## reasoning ## ]]\nLook at the number.\n\n[[ ## label ## ]]\n{label}\n\n"
            "[[ ## completed ## ]]")


class ClassifyThenVerify(dspy.Module):
    def __init__(self):
        super().__init__()
        self.classify = dspy.ChainOfThought("text -> label")
        self.verify = dspy.Predict("text, label -> final_label")

    def forward(self, text):
        draft = self.classify(text=text)
        return self.verify(text=text, label=draft.label)


def data(numbers):
    return [dspy.Example(text=f"the number {n} is here", final_label=parity(str(n)))
            .with_inputs("text") for n in numbers]


def metric(gold, pred, trace=None):
    return gold.final_label == pred.final_label


def run(tmp_path, **kw):
    lm = ScriptedLM(respond)
    result = evo.optimize_module(ClassifyThenVerify(), data(range(100, 130)), data(range(1, 21)),
                                 metric, lm=lm, cache=tmp_path / "cache.sqlite",
                                 **{"budget": 150, **kw})
    return result, lm


def test_both_predictors_are_optimized_within_the_budget(tmp_path):
    result, _ = run(tmp_path)
    assert result.baseline_val == pytest.approx(0.5)
    assert result.best_val >= 0.85  # demos fix the classifier (the verifier's bug remains)
    assert result.metric_calls <= result.budget
    # each predictor got a bootstrapped pool: its own inputs/outputs (the CoT's reasoning too)
    assert set(result.demo_pool) == {"classify.predict", "verify"}
    assert {"text", "reasoning", "label"} <= set(result.demo_pool["classify.predict"][0])
    assert {"text", "label", "final_label"} <= set(result.demo_pool["verify"][0])
    classify = dict(result.program.named_predictors())["classify.predict"]
    assert classify.demos  # demos on the classifier are what fixed it
    ops = {c.op for c in result.candidates}
    assert {"seed", "demos"} <= ops


def test_reflection_reads_the_predictors_own_inputs_and_updates_its_instruction(tmp_path):
    result, lm = run(tmp_path, budget=300)
    asks = [r for r in lm.calls if r.purpose == "reflection"]
    assert asks, "no reflection was asked for"
    # the verifier's reflection shows the verifier's inputs (the draft label), not only the text
    assert any("label:" in r.messages[-1].content for r in asks)
    # both predictors take turns at reflection (the classifier is predictor 0, the verifier 1)
    shown = [r.messages[-1].content for r in asks]
    assert any("produce the fields `label`" in t for t in shown)
    assert any("produce the fields `final_label`" in t for t in shown)
    reflected = [c for c in result.candidates if c.op == "reflection"]
    assert reflected and any("Rules:" in text for c in reflected
                             for text in c.genome.instructions)
    assert result.best_val == 1.0  # the verifier's rule fixed the multiples of 3


def test_result_round_trips_through_dspy_save_and_load(tmp_path):
    result, _ = run(tmp_path)
    path = tmp_path / "program.json"
    result.program.save(str(path))
    fresh = ClassifyThenVerify()
    fresh.load(str(path))
    for (name, a), (_, b) in zip(result.program.named_predictors(), fresh.named_predictors(),
                                 strict=True):
        assert a.signature.instructions == b.signature.instructions, name
        assert [dict(d) for d in a.demos] == [dict(d) for d in b.demos], name
    lm = evo.to_dspy(ScriptedLM(respond), cache=False)
    with dspy.context(lm=lm):
        for ex in data(range(40, 50)):
            assert fresh(text=ex.text).final_label == ex.final_label


def test_rerun_on_the_cache_replays_the_same_search(tmp_path):
    first, _ = run(tmp_path)
    second, lm = run(tmp_path)
    assert not lm.calls  # every call came from the cache
    assert [c.genome for c in first.candidates] == [c.genome for c in second.candidates]
    assert second.best_val == first.best_val


def test_bad_input_is_one_clear_error(tmp_path):
    lm = LMSession(ScriptedLM(respond))
    raw = [dspy.Example(text="the number 3", final_label="odd")]  # no with_inputs
    with pytest.raises(ValueError, match="valset row 1: call .with_inputs"):
        evo.optimize_module(ClassifyThenVerify(), data([1]), raw, metric, lm=lm, cache=False)
    with pytest.raises(ValueError, match="budget 5 cannot validate"):
        evo.optimize_module(ClassifyThenVerify(), data([1]), data(range(10)), metric, lm=lm,
                            budget=5, cache=False)


def test_lm_failures_are_scored_not_fatal(tmp_path):
    lm = ScriptedLM(respond, fail_every=7)
    result = evo.optimize_module(ClassifyThenVerify(), data(range(100, 130)), data(range(1, 21)),
                                 metric, lm=LMSession(lm, retries=0), budget=80, cache=False)
    assert result.metric_calls <= 80
    failed = [cell for cell in result.matrix.cells.values() if "program failed" in cell.feedback]
    assert failed and all(cell.score == 0.0 for cell in failed)
    assert result.stop_reason == "budget exhausted"


def test_a_two_argument_metric_is_accepted(tmp_path):
    result = evo.optimize_module(ClassifyThenVerify(), data(range(100, 130)), data(range(1, 21)),
                                 lambda gold, pred: gold.final_label == pred.final_label,
                                 lm=ScriptedLM(respond), budget=60, cache=False)
    assert result.baseline_val == pytest.approx(0.5)
    assert not any("metric raised" in c.feedback for c in result.matrix.cells.values())


def test_an_unreachable_lm_stops_the_search_instead_of_scoring_zeros():
    def down(request):
        return evo.lm.LMUnavailableError("connection refused")

    lm = ScriptedLM(respond, errors=down)
    with pytest.raises(evo.lm.LMUnavailableError):
        evo.optimize_module(ClassifyThenVerify(), data([1]), data(range(5)), metric, lm=lm,
                            budget=20, cache=False)
