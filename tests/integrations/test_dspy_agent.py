"""A dspy.Module as a self-improving agent (evo.ModuleAgent) on a scripted LM that speaks DSPy's
ChatAdapter format: serving records traces, grades feed an optimization whose version deploys
after a paired test, a rebuilt agent serves the stored version as the module it was, and
to_module / forward drop it back into DSPy code."""

from __future__ import annotations

import re
import threading

import pytest

import evo
from evo.agents.agent import AgentCallError
from evo.errors import ConfigError
from evo.integrations.dspy.agent import AgentModuleProgram, ModuleAgent, agent
from evo.lm import ScriptedLM
from evo.testing import dspy_field

dspy = pytest.importorskip("dspy")


def parity(text: str) -> str:
    return "even" if int(re.search(r"\d+", text).group()) % 2 == 0 else "odd"


def respond(req) -> str:
    """A parity task: the labeler is right when it is shown demos or told about parity (a
    reflection rule), else it says "odd". A verifier (two-predictor module) copies the draft."""
    system, user = req.messages[0].content, req.messages[-1].content
    if req.purpose == "reflection":
        return "- Check the parity of the number before you answer."
    if req.purpose not in ("task", "dspy"):
        return "Label the text."
    if "`final_label`" in system:
        return f"[[ ## final_label ## ]]\n{dspy_field(user, 'label')}\n\n[[ ## completed ## ]]"
    shown_demos = sum(m.role == "user" for m in req.messages) > 1
    label = parity(dspy_field(user, "text")) if shown_demos or "parity" in system else "odd"
    reasoning = ("[[ ## reasoning ## ]]\nLook at the number.\n\n" if "`reasoning`" in system
                 else "")
    return f"{reasoning}[[ ## label ## ]]\n{label}\n\n[[ ## completed ## ]]"


class ClassifyThenVerify(dspy.Module):
    def __init__(self):
        super().__init__()
        self.classify = dspy.ChainOfThought("text -> label")
        self.verify = dspy.Predict("text, label -> final_label")

    def forward(self, text):
        draft = self.classify(text=text)
        return self.verify(text=text, label=draft.label)


def text(n: int) -> str:
    return f"the number {n} is here"


def dspy_metric(gold, pred, trace=None):
    return gold.label == pred.label


def make(tmp_path, module=None, lm=None, **kw) -> ModuleAgent:
    kw.setdefault("background", False)
    kw.setdefault("budget", 120)
    kw.setdefault("min_examples", 20)
    return ModuleAgent(module if module is not None else dspy.Predict("text -> label"),
                       "parity", "text -> label", lm=lm or ScriptedLM(respond),
                       home=tmp_path / "agent", cache=False, **kw)


def serve_and_grade(a: ModuleAgent, numbers) -> list:
    replies = []
    for n in numbers:
        reply = a(text=text(n))
        a.feedback(reply.call_id, float(reply.outputs == {"label": parity(text(n))}),
                   expected={"label": parity(text(n))})
        replies.append(reply)
    return replies


def test_serving_records_each_call_with_its_version_and_module_reply_cap(tmp_path):
    lm = ScriptedLM(respond)
    a = make(tmp_path, lm=lm)
    reply = a(text=text(4))
    assert reply.ok and reply.outputs == {"label": "odd"} and reply.version == 1
    assert isinstance(a.program, AgentModuleProgram)
    assert str(a.program.signature) == "text -> label"
    assert [r.max_tokens for r in lm.calls] == [256]  # a module's replies get room
    (trace,) = a.traces.traces("parity")
    assert trace.inputs == {"text": text(4)} and trace.outputs == {"label": "odd"}
    assert trace.version == 1 and trace.call_id == reply.call_id
    with pytest.raises(ConfigError, match="missing text"):
        a(txt="typo")
    a.close()


def test_forward_returns_the_modules_prediction_with_the_call_id(tmp_path):
    a = make(tmp_path, module=dspy.ChainOfThought("text -> label"))
    pred = a.forward(text=text(7))
    assert isinstance(pred, dspy.Prediction)
    assert pred.label == "odd" and pred.reasoning == "Look at the number."
    assert pred.call_id.startswith("c-") and pred.version == 1
    assert set(pred.keys()) == {"reasoning", "label"}  # call_id: an attribute, not a field
    assert a.feedback(pred.call_id, 1.0).score == 1.0
    assert a.module_call(text=text(9)).label == "odd"
    a.close()


def test_a_call_without_an_answer_is_a_reply_with_error_and_raises_from_forward(tmp_path):
    a = make(tmp_path, lm=ScriptedLM(lambda req: "no fields here"))
    reply = a(text=text(3))
    assert not reply.ok and "program failed" in reply.error
    with pytest.raises(AgentCallError, match="has no answer"):
        a.forward(text=text(3))
    assert a.traces.count("parity") == 2  # both calls recorded, failures too
    a.close()


def test_grades_feed_an_optimization_that_deploys_version_2_and_a_rebuilt_agent_serves_it(
        tmp_path):
    events: list[dict] = []
    a = make(tmp_path, metric=dspy_metric, on_event=events.append)
    before = serve_and_grade(a, range(100, 160))
    assert {r.outputs["label"] for r in before} == {"odd"}
    job = a.optimize_now()
    (done,) = a.manager.run_pending()
    assert done.id == job.id and done.status == "done", done.error
    result = done.result
    assert result["version"] == 2 and result["deployed"], result["decision"]
    assert result["decision"]["difference"] > 0 and result["decision"]["p_value"] < 0.05
    assert a.version == 2 and isinstance(a.program, AgentModuleProgram)
    assert "version_deployed" in [e["event"] for e in events]
    stored = a.versions.get(2).program
    assert "dspy_module" in stored and stored["instruction"] == a.program.instruction
    assert all(r.outputs == {"label": parity(text(n))} and r.version == 2
               for n, r in zip(range(200, 210), [a(text=text(n)) for n in range(200, 210)],
                               strict=True))
    a.close()
    again = make(tmp_path)  # the same home after a restart
    assert again.version == 2 and isinstance(again.program, AgentModuleProgram)
    assert again.program.instruction == stored["instruction"]
    assert again(text=text(8)).outputs == {"label": "even"}
    module = again.to_module()
    assert isinstance(module, dspy.Module) and module is not again.module
    (predictor,) = [p for _, p in module.named_predictors()]
    assert predictor.signature.instructions == stored["instruction"]
    assert len(predictor.demos) == len(stored["demos"])
    # the user's module is never changed
    (own,) = [p for _, p in again.module.named_predictors()]
    assert own.demos == [] and own.signature.instructions == again.versions.get(1).program[
        "instruction"]
    assert again.rollback().number == 1 and again(text=text(8)).outputs == {"label": "odd"}
    again.close()


def test_a_two_predictor_module_trains_on_dspy_examples_and_keeps_its_demos_calls(tmp_path):
    def data(numbers):
        return [dspy.Example(text=text(n), final_label=parity(text(n))).with_inputs("text")
                for n in numbers]

    a = ModuleAgent(ClassifyThenVerify(), "verify", "text -> final_label",
                    lm=ScriptedLM(respond), home=tmp_path / "two", cache=False,
                    background=False, optimizer="bootstrap_fewshot", budget=120,
                    metric=lambda gold, pred, trace=None: gold.final_label == pred.final_label)
    job = a.train(data(range(100, 130)), data(range(1, 31)))
    assert job.status == "done" and job.result["deployed"], job.result
    stored = a.versions.get(a.version).program
    assert stored["demos"] and stored["demo_steps"]
    shown = {n: [dict(d) for d in p.demos] for n, p in a.to_module().named_predictors()}
    a.close()
    again = ModuleAgent(ClassifyThenVerify(), "verify", "text -> final_label",
                        lm=ScriptedLM(respond), home=tmp_path / "two", cache=False,
                        background=False)
    rebuilt = {n: [dict(d) for d in p.demos] for n, p in again.to_module().named_predictors()}
    # each predictor's demos are its own calls of the run that made them (the classifier's
    # reasoning, the verifier's draft label), after a restart too
    assert rebuilt == shown
    assert {"text", "reasoning", "label"} <= set(rebuilt["classify.predict"][0])
    assert {"text", "label", "final_label"} <= set(rebuilt["verify"][0])
    assert again(text=text(12)).outputs == {"final_label": "even"}
    again.close()


def test_the_factory_and_the_top_level_name(tmp_path):
    a = agent(dspy.Predict("text -> label"), "parity", "text -> label",
              lm=ScriptedLM(respond), home=tmp_path / "f", cache=False, background=False)
    assert isinstance(a, evo.ModuleAgent) and a.max_tokens == 256
    a.close()
    sig = dspy.Signature("text -> label")
    b = agent(dspy.Predict(sig), "parity", sig, lm=ScriptedLM(respond), home=tmp_path / "f",
              cache=False, background=False)
    assert b.module_signature == "text -> label" and b.version == 1
    b.close()


def test_bad_configuration_is_one_clear_error(tmp_path):
    lm = ScriptedLM(respond)
    with pytest.raises(ConfigError, match="KNN"):
        make(tmp_path, optimizer="knn_fewshot")
    with pytest.raises(ConfigError, match="KNN"):
        make(tmp_path, optimizer=evo.Evolution(knn=True))
    with pytest.raises(ConfigError, match="instruction="):
        make(tmp_path, instruction="Say it.")
    with pytest.raises(ConfigError, match="no predictors"):
        make(tmp_path, module=dspy.Module())
    with pytest.raises(ConfigError, match="dspy.Module"):
        make(tmp_path, module=object())
    with pytest.raises(ConfigError, match="signature"):
        ModuleAgent(dspy.Predict("text -> label"), "parity", "text label", lm=lm,
                    home=tmp_path / "bad", cache=False, background=False)
    make(tmp_path).close()
    # the same home, another module: its versions would not fit
    with pytest.raises(ConfigError, match="predictors"):
        make(tmp_path, module=ClassifyThenVerify())
    with pytest.raises(ConfigError, match="signature"):
        ModuleAgent(dspy.Predict("text -> label"), "parity", "text -> label: int", lm=lm,
                    home=tmp_path / "agent", cache=False, background=False)
    # a plain agent's home is not a module agent's
    evo.Agent("plain", "text -> label", lm=lm, home=tmp_path / "plain", cache=False,
              background=False).close()
    with pytest.raises(ConfigError, match="plain evo.Agent"):
        ModuleAgent(dspy.Predict("text -> label"), "plain", "text -> label", lm=lm,
                    home=tmp_path / "plain", cache=False, background=False)
    assert not lm.calls


def test_validators_retry_a_module_call_with_advice(tmp_path):
    def vague(req) -> str:  # answers "maybe" until an earlier answer's failed check is shown
        label = parity(dspy_field(req.messages[-1].content, "text")) \
            if "failed these checks" in req.messages[0].content else "maybe"
        return f"[[ ## label ## ]]\n{label}\n\n[[ ## completed ## ]]"

    lm = ScriptedLM(vague)
    a = make(tmp_path, lm=lm, validators=[evo.agents.OneOf("label", ["even", "odd"])],
             retries=1)
    reply = a(text=text(6))
    assert reply.ok and reply.outputs == {"label": "even"} and len(lm.calls) == 2
    without = make(tmp_path / "none", lm=ScriptedLM(vague),
                   validators=[evo.agents.OneOf("label", ["even", "odd"])])
    assert "failed validators" in without(text=text(6)).error
    a.close()
    without.close()


def test_calls_from_threads_while_a_background_job_deploys_are_all_served(tmp_path):
    a = make(tmp_path, background=True, metric=dspy_metric)
    serve_and_grade(a, range(100, 160))
    job = a.optimize_now()
    replies: list = []

    def client(k: int) -> None:
        replies.extend(a(text=text(300 + 20 * k + i)) for i in range(20))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    done = a.manager.wait(job.id, timeout=120)
    for t in threads:
        t.join(timeout=60)
    assert done.status == "done" and done.result["deployed"], done.error
    assert len(replies) == 60 and all(r.ok for r in replies)
    assert {r.version for r in replies} <= {1, 2}
    assert a.traces.count("parity") == 120
    a.close()
