"""evo optimizes a two-predictor dspy.Module (ChainOfThought classifier + verifier) on a scripted
LM that speaks DSPy's ChatAdapter format, on the one engine: any optimizer, events, the run store
with kill-and-resume, dry run; the result round-trips through DSPy's save/load."""

import json
import re
from pathlib import Path

import pytest

import evo
from evo.integrations.dspy.module import (
    ModuleProgram,
    joint_instruction,
    module_program,
    split_instruction,
)
from evo.lm import LMSession, ScriptedLM
from evo.runs.events import JSONLLog
from evo.search.evaluate import evaluate_program
from evo.testing import Killed, assert_same_run, dspy_field, dying_lm

dspy = pytest.importorskip("dspy")



def parity(text: str) -> str:
    return "even" if int(re.search(r"\d+", text).group()) % 2 == 0 else "odd"


def respond(req) -> str:
    """The classifier (a ChainOfThought) is right only when it is shown demos; the verifier
    copies the draft label, except that it calls every multiple of 3 odd, unless its
    instruction carries a rule about parity. Instruction proposals get a short instruction."""
    system = req.messages[0].content
    user = req.messages[-1].content
    if req.purpose == "reflection":
        return "- Check the parity of the number before you answer.\n- Use lowercase labels."
    if req.purpose not in ("task", "dspy"):
        return "Decide whether the number in the text is even or odd."
    if "`final_label`" in system:
        text = dspy_field(user, "text")
        label = dspy_field(user, "label") or "odd"
        if int(re.search(r"\d+", text).group()) % 3 == 0:
            label = "odd"
        if "Rules:" in system and "parity" in system:
            label = parity(text)
        return f"[[ ## final_label ## ]]\n{label}\n\n[[ ## completed ## ]]"
    shown_demos = sum(m.role == "user" for m in req.messages) > 1
    label = parity(dspy_field(user, "text")) if shown_demos else "odd"
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


TRAIN, VAL = data(range(100, 130)), data(range(1, 21))


def metric(gold, pred, trace=None):
    return gold.final_label == pred.final_label


def optimizer(name="evolution", budget=150, **kw):
    """An optimizer by name, offline (hashing embeddings, no KNN demos)."""
    return evo.optimizers.get(name, budget=evo.Budget(metric_calls=budget), knn=False,
                              encoder="hashing", max_tokens=256, **kw)


def run(tmp_path=None, lm=None, **kw):
    lm = lm or ScriptedLM(respond)
    cache = tmp_path / "cache.sqlite" if tmp_path is not None else False
    result = evo.optimize_module(ClassifyThenVerify(), TRAIN, VAL, metric, lm=lm, cache=cache,
                                 **{"budget": 150, **kw})
    return result, lm


# ---- the adapter ------------------------------------------------------------------------------

def test_the_joint_instruction_names_each_predictor_and_parses_back():
    names, seed = ["classify.predict", "verify"], ["Classify.", "Verify."]
    text = joint_instruction(names, seed)
    assert "[predictor: verify]" in text
    assert split_instruction(text, names, seed) == seed
    # a rewrite of one section, and reflection's rules appended at the end (for every predictor)
    edited = text.replace("Verify.", "Verify the parity.") + "\n\nRules:\n- Be careful."
    assert split_instruction(edited, names, seed) == [
        "Classify.\n\nRules:\n- Be careful.", "Verify the parity.\n\nRules:\n- Be careful."]
    # a text without sections is shared guidance before each predictor's own instruction
    assert split_instruction("Think.", names, seed) == ["Think.\n\nClassify.", "Think.\n\nVerify."]
    assert split_instruction("Only one.", ["p"], ["Old."]) == ["Only one."]


def test_the_evaluator_runs_a_module_program_through_the_session():
    train = evo.integrations.dspy.compat.examples(TRAIN)
    program = module_program(ClassifyThenVerify(), train)
    assert isinstance(program, ModuleProgram) and str(program.signature) == "text -> final_label"
    lm = ScriptedLM(respond)
    session = LMSession(lm)
    scores, cells = evaluate_program(program, train[:4], session,
                                     evo.integrations.dspy.compat.metric(metric), max_tokens=99)
    assert len(lm.calls) == 8 and session.usage.requests == 8  # two predictors per example
    assert all(r.max_tokens == 99 for r in lm.calls)
    assert cells[0].prediction.outputs == {"final_label": "odd"}
    assert "classify.predict -> reasoning: Look at the number." in cells[0].prediction.text
    # with demos each predictor sees its own call of a run that gave the demo's outputs
    demo = next(ex for ex, c in zip(train[:4], cells, strict=True)
                if c.prediction.outputs == ex.outputs)
    module = program.model_copy(update={"demos": (demo,)}).to_module()
    shown = {name: [dict(d) for d in p.demos] for name, p in module.named_predictors()}
    assert set(shown["classify.predict"][0]) == {"text", "reasoning", "label"}
    assert set(shown["verify"][0]) == {"text", "label", "final_label"}
    # a demo no run gave: the labeled fields each predictor has
    other = train[10]
    module = program.model_copy(update={"demos": (other,)}).to_module()
    assert [dict(d) for d in dict(module.named_predictors())["verify"].demos] == [
        {"text": other.inputs["text"], "final_label": other.outputs["final_label"]}]
    assert program.to_json()["dspy_module"]["predictors"]["verify"]["signature"] == \
        "text, label -> final_label"


# ---- optimize_module on the engine -----------------------------------------------------------

@pytest.mark.parametrize("name", ["evolution", "gepa", "miprov2", "bootstrap_fewshot"])
def test_any_optimizer_runs_on_a_two_predictor_module(name):
    seen = []
    result, lm = run(optimizer=optimizer(name), on_event=seen.append)
    assert result.metric_calls <= result.budget == 150
    # half the validation labels are right for the seed; evolution holds a fifth of them out
    held = 0 if result.confirmation is None else result.confirmation["n"]
    assert result.baseline_val == pytest.approx(0.5, abs=held / 20)
    assert result.best_val > result.baseline_val
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "start" and kinds[-1] == "complete" and "candidate_evaluated" in kinds
    assert result.events[-1]["event"] == "complete"
    assert isinstance(result.program, ClassifyThenVerify)


def test_bootstrapped_demos_are_each_predictors_own_trace():
    result, _ = run(optimizer=optimizer("bootstrap_fewshot"))
    demos = {n: [dict(d) for d in p.demos] for n, p in result.program.named_predictors()}
    assert demos["classify.predict"] and demos["verify"]
    assert {"text", "reasoning", "label"} <= set(demos["classify.predict"][0])
    assert {"text", "label", "final_label"} <= set(demos["verify"][0])


def test_reflection_updates_the_module_instructions(tmp_path):
    result, lm = run(tmp_path, budget=300)
    asks = [r for r in lm.calls if r.purpose == "reflection"]
    assert asks, "no reflection was asked for"
    # reflection is shown the joint instruction (each predictor named) and the predictor calls
    assert any("[predictor: verify]" in r.messages[-1].content for r in asks)
    assert any("verify -> final_label:" in r.messages[-1].content for r in asks)
    assert result.best_val == 1.0  # the rule fixed the verifier's multiples of 3
    verify = dict(result.program.named_predictors())["verify"]
    assert "Rules:" in verify.signature.instructions


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
        right = sum(fresh(text=ex.text).final_label == ex.final_label for ex in data(range(40, 60)))
    assert right / 20 == pytest.approx(result.best_val, abs=0.2)


def test_rerun_on_the_cache_replays_the_same_search(tmp_path):
    first, _ = run(tmp_path)
    second, lm = run(tmp_path)
    assert not lm.calls  # every call came from the cache
    assert [c.genome for c in first.candidates] == [c.genome for c in second.candidates]
    assert second.best_val == first.best_val


def test_bad_input_is_one_clear_error():
    lm = ScriptedLM(respond)
    raw = [dspy.Example(text="the number 3", final_label="odd")]  # no with_inputs
    with pytest.raises(ValueError, match="valset row 1: call .with_inputs"):
        evo.optimize_module(ClassifyThenVerify(), data([1]), raw, metric, lm=lm, cache=False)
    with pytest.raises(ValueError, match="budget 5 cannot validate"):
        evo.optimize_module(ClassifyThenVerify(), data([1]), data(range(10)), metric, lm=lm,
                            budget=5, cache=False)
    assert not lm.calls


def test_lm_failures_are_scored_not_fatal():
    lm = ScriptedLM(respond, fail_every=7)
    result = evo.optimize_module(ClassifyThenVerify(), TRAIN, VAL, metric,
                                 lm=LMSession(lm, retries=0), budget=80, cache=False)
    assert result.metric_calls <= 80
    failed = [c for c in result.matrix.cells.values() if c.error is not None]
    assert failed and all(c.score == 0.0 and c.kind.startswith("lm") for c in failed)


def test_a_two_argument_metric_is_accepted():
    result = evo.optimize_module(ClassifyThenVerify(), TRAIN, VAL,
                                 lambda gold, pred: gold.final_label == pred.final_label,
                                 lm=ScriptedLM(respond), budget=60, cache=False)
    held = 0 if result.confirmation is None else result.confirmation["n"]
    assert result.baseline_val == pytest.approx(0.5, abs=held / len(VAL))
    assert not any(c.error for c in result.matrix.cells.values())


def test_an_unreachable_lm_stops_the_search_instead_of_scoring_zeros():
    def down(request):
        return evo.lm.LMUnavailableError("connection refused")

    lm = ScriptedLM(respond, errors=down)
    with pytest.raises(evo.lm.LMUnavailableError):
        evo.optimize_module(ClassifyThenVerify(), data([1]), data(range(5)), metric, lm=lm,
                            budget=20, cache=False)


def test_dry_run_projects_without_any_lm_call():
    lm = ScriptedLM(respond)
    projection = evo.optimize_module(ClassifyThenVerify(), TRAIN, VAL, metric, lm=lm,
                                     budget=150, dry_run=True)
    assert not lm.calls
    assert projection.metric_calls == 150 and projection.task_calls == 300  # 2 predictors
    assert "metric calls (the budget)" in str(projection)


def test_report_on_held_out_dspy_examples(tmp_path):
    result, _ = run(tmp_path)
    report = result.report(data(range(40, 60)))
    assert report.n == 20 and report.optimized >= report.baseline


# ---- the run store: events, kill and resume --------------------------------------------------

def stored(lm, run_dir, name="evolution", **kw):
    return evo.optimize_module(ClassifyThenVerify(), TRAIN, VAL, metric, lm=lm, cache=False,
                               optimizer=optimizer(name), run_dir=run_dir, **kw)


@pytest.mark.parametrize("name", ["evolution", "gepa", "miprov2", "bootstrap_fewshot"])
def test_a_killed_run_resumes_with_no_paid_call_repeated(tmp_path, name):
    whole = stored(ScriptedLM(respond), tmp_path / "whole", name,
                   callbacks=[JSONLLog(tmp_path / "log.jsonl")])
    paid_whole = whole.result.sittings[0]["paid"]
    logged = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text()
              .splitlines()]
    assert logged[0] == "start" and logged[-1] == "complete"
    for stop in (paid_whole // 5, paid_whole // 2):
        with pytest.raises(Killed):
            stored(dying_lm(respond, stop + 1), tmp_path / "killed", name)
    last = ScriptedLM(respond)
    resumed = stored(last, tmp_path / "killed", name)
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    sittings = resumed.result.sittings
    assert len(sittings) == 3 and sum(s["paid"] for s in sittings) == paid_whole
    assert len(last.calls) == 1 + sittings[2]["paid"]  # the preflight, then only new requests
    assert resumed.best_val == whole.best_val


def test_another_module_on_the_same_run_dir_is_refused(tmp_path):
    stored(ScriptedLM(respond), tmp_path / "run", "bootstrap_fewshot")

    class Other(ClassifyThenVerify):
        pass

    with pytest.raises(evo.runs.store.RunMismatchError, match="program"):
        evo.optimize_module(Other(), TRAIN, VAL, metric, lm=ScriptedLM(respond), cache=False,
                            optimizer=optimizer("bootstrap_fewshot"), run_dir=tmp_path / "run")


SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from test_dspy_module import respond, stored
from evo.lm import ScriptedLM
stored(ScriptedLM(respond, delay_s=0.004), {run!r}, {name!r})
print("finished")
"""


@pytest.mark.parametrize("name", ["evolution", "gepa"])
def test_sigkill_at_random_moments_then_resume(sigkill_resume, name):
    """Real processes SIGKILLed at random moments, each sitting with another hash seed: the
    resumed module search ends with the uninterrupted result, every request paid once."""
    tests = str(Path(__file__).parent)
    sigkill_resume(lambda run: SCRIPT.format(tests=tests, run=str(run), name=name), kills=3,
                   spacing=5)


# ---- what the module's user gives and gets back -----------------------------------------------

def count_reply(req) -> str:
    """A ChainOfThought counting words, in DSPy's ChatAdapter format, with typed fields."""
    if req.purpose not in ("task", "dspy"):
        return "Count the words."
    words = dspy_field(req.messages[-1].content, "text").split()
    return (f"[[ ## reasoning ## ]]\nCount them.\n\n[[ ## n ## ]]\n{len(words)}\n\n"
            f"[[ ## words ## ]]\n{json.dumps(words)}\n\n[[ ## share ## ]]\n{len(words) / 10}"
            f"\n\n[[ ## long ## ]]\n{'true' if len(words) > 3 else 'false'}\n\n"
            "[[ ## completed ## ]]")


class Count(dspy.Module):
    def __init__(self):
        super().__init__()
        self.count = dspy.ChainOfThought("text -> n: int, words: list[str], share: float, "
                                         "long: bool")

    def forward(self, text):
        return self.count(text=text)


def counted(k):
    words = ["w"] * k
    return dspy.Example(text=" ".join(words), n=k, words=words, share=k / 10,
                        long=k > 3).with_inputs("text")


def test_the_dspy_metric_gets_the_given_example_and_the_modules_typed_prediction():
    seen = []

    def metric(gold, pred, trace=None):
        seen.append((gold, {k: type(getattr(pred, k)) for k in
                            ("n", "words", "share", "long", "reasoning")}))
        return 1.0 - min(1, abs(gold.n - pred.n))  # ints, as the signature says

    data = [counted(k) for k in range(1, 9)]
    result = evo.optimize_module(Count(), data, data, metric, lm=ScriptedLM(count_reply),
                                 optimizer="bootstrap_fewshot", budget=40, cache=False)
    assert result.best_val == 1.0 and not any(c.error for c in result.matrix.cells.values())
    assert all(any(gold is ex for ex in data) for gold, _ in seen)  # the user's own examples
    assert all(types == {"n": int, "words": list, "share": float, "long": bool,
                         "reasoning": str} for _, types in seen)
    seen.clear()
    test = [counted(k) for k in (11, 12)]
    assert result.report(test).optimized == 1.0
    assert [gold for gold, _ in seen[-2:]] == test and all(g is t for (g, _), t in
                                                          zip(seen[-2:], test, strict=True))


def test_knn_demos_are_refused_or_off_since_a_modules_demos_are_fixed():
    lm = ScriptedLM(respond)
    with pytest.raises(evo.ConfigError, match="KNN demos are per input.*bootstrap_fewshot"):
        run(lm=lm, optimizer="knn_fewshot")
    with pytest.raises(evo.ConfigError, match="knn=True"):
        run(lm=lm, optimizer=evo.optimizers.Evolution(knn=True, encoder="hashing"))
    assert not lm.calls
    # an optimizer whose knn is the default: the search runs without KNN demos, so the returned
    # module holds every demo the best candidate was scored with
    result, _ = run(optimizer=evo.optimizers.get("evolution", encoder="hashing"), budget=150)
    assert all(c.program.knn is None and c.op != "knn_demos" for c in result.candidates)
    shown = {n: len(p.demos) for n, p in result.program.named_predictors()}
    assert shown["verify"] == len(result.result.best.demos)


def test_old_keywords_minibatch_size_and_bootstrap_share():
    lm = ScriptedLM(respond)
    seen = []
    run(lm=lm, optimizer="evolution", minibatch_size=3, budget=40, on_event=seen.append)
    assert seen[0]["config"]["minibatch_size"] == 3
    seen.clear()
    run(optimizer=evo.optimizers.get("miprov2", knn=False, encoder="hashing"), minibatch_size=4,
        budget=40, on_event=seen.append)
    assert seen[0]["config"]["minibatch_size"] == 4
    lm = ScriptedLM(respond)
    with pytest.raises(evo.ConfigError, match="'bootstrap_fewshot' has no minibatch_size"):
        run(lm=lm, optimizer="bootstrap_fewshot", minibatch_size=3)
    with pytest.raises(evo.ConfigError, match="bootstrap_share is gone"):
        run(lm=lm, bootstrap_share=0.2)
    assert not lm.calls


def test_a_passed_optimizer_without_max_tokens_gets_256():
    _, lm = run(optimizer=evo.optimizers.get("bootstrap_fewshot", knn=False), budget=40)
    assert lm.calls and all(r.max_tokens == 256 for r in lm.calls if r.purpose == "dspy")
    _, lm = run(optimizer=evo.optimizers.get("bootstrap_fewshot", max_tokens=99), budget=40)
    assert all(r.max_tokens == 99 for r in lm.calls if r.purpose == "dspy")


def test_an_ensemble_that_may_vote_is_refused_before_any_lm_call():
    lm = ScriptedLM(respond)
    for opt in ("ensemble", evo.optimizers.Ensemble(members=[optimizer("bootstrap_fewshot")])):
        with pytest.raises(evo.ConfigError, match="combine='best'"):
            run(lm=lm, optimizer=opt)
    assert not lm.calls
    result, _ = run(optimizer=evo.optimizers.Ensemble(
        members=[optimizer("bootstrap_fewshot")], combine="best", knn=False, encoder="hashing"),
        budget=60)
    assert isinstance(result.program, ClassifyThenVerify)


def test_a_module_runs_best_json_is_refused_by_load_program(tmp_path, capsys):
    stored(ScriptedLM(respond), tmp_path / "run", "bootstrap_fewshot")
    with pytest.raises(evo.ConfigError, match="dspy.Module's program.*module's own load"):
        evo.load_program(tmp_path / "run" / "best.json")
    from evo.cli import main
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "(evo.optimize or evo.optimize_module)" in capsys.readouterr().err


def test_program_load_refuses_a_module_runs_best_json_too(tmp_path):
    path = tmp_path / "best.json"
    path.write_text('{"evo_program": 1, "dspy_module": "m.ClassifyThenVerify", '
                    '"signature": "text -> label"}')
    with pytest.raises(evo.ConfigError, match="module's own load"):
        evo.Program.load(path)
