"""DSPy runs on evo's LMs through one session: its calls hit evo's cache and ledger."""

import pytest

import evo
from evo.integrations.dspy import to_dspy
from evo.lm import LMSession, ScriptedLM

dspy = pytest.importorskip("dspy")


def answer(req):
    question = req.messages[-1].content
    city = "Paris" if "France" in question else "Rome"
    return f"[[ ## answer ## ]]\n{city}\n\n[[ ## completed ## ]]"


def test_dspy_predict_runs_on_an_evo_lm_and_is_counted_in_its_ledger(tmp_path):
    scripted = ScriptedLM(answer)
    lm = to_dspy(scripted, cache=tmp_path / "cache.sqlite")
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        assert predict(question="Capital of France?").answer == "Paris"
        assert predict(question="Capital of Italy?").answer == "Rome"
        assert predict(question="Capital of France?").answer == "Paris"  # evo's cache answers
    usage = lm.evo_session.usage
    assert usage.calls == 2 and usage.cache_hits == 1 and usage.by_purpose == {"dspy": 2}
    assert len(scripted.calls) == 2
    # the system message (DSPy's field description) reached the backend as a system turn
    assert scripted.calls[0].messages[0].role == "system"


def test_shared_session_counts_dspy_and_evo_calls_together():
    session = LMSession(ScriptedLM(answer))
    lm = to_dspy(session)
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="Capital of France?")
    assert session.usage.requests == 1


def test_repeated_samples_at_temperature_get_distinct_seeds_and_replay(tmp_path):
    seen = []

    def sampled(req):
        seen.append(req.seed)
        return f"[[ ## answer ## ]]\nseed {req.seed}\n\n[[ ## completed ## ]]"

    path = tmp_path / "cache.sqlite"
    outs = []
    for _ in range(2):  # the second pass replays the first from the cache
        lm = to_dspy(ScriptedLM(sampled), cache=path, temperature=1.0)
        with dspy.context(lm=lm):
            outs.append([dspy.Predict("question -> answer")(question="Pick one").answer
                         for _ in range(3)])
    assert outs[0] == outs[1] == ["seed 0", "seed 1", "seed 2"]
    assert seen == [0, 1, 2]  # paid once each


@pytest.mark.local_lm
@pytest.mark.network
def test_dspy_runs_on_the_embedded_local_model(tmp_path):
    pytest.importorskip("llama_cpp")
    lm = to_dspy(evo.lm.local("qwen2.5-coder-0.5b"), cache=tmp_path / "cache.sqlite",
                 max_tokens=64)
    classify = dspy.Predict("text -> sentiment: bool")
    with dspy.context(lm=lm):
        out = classify(text="I loved this film, a wonderful evening.")
    assert isinstance(out.sentiment, bool)
    assert lm.evo_session.usage.calls >= 1


def test_dspy_examples_and_metric_drive_an_evo_search():
    from evo.integrations.dspy import compat as dspy_compat

    raw = [dspy.Example(text=f"item {i} is {'good' if i % 2 else 'bad'} stuff",
                        label="pos" if i % 2 else "neg").with_inputs("text") for i in range(60)]
    data = dspy_compat.examples(raw)
    assert data[1].inputs == {"text": "item 1 is good stuff"}
    assert data[1].outputs == {"label": "pos"}

    def dspy_metric(gold, pred, trace=None):
        return dspy.Prediction(score=float(gold.label == pred.label),
                               feedback=f"the label is {gold.label}")

    seen = []

    def respond(req):
        if req.purpose == "reflection":
            seen.append(req.messages[-1].content)
            return "- Say pos when the text says good."
        last, system = req.messages[-1].content, req.messages[0].content
        good = "says good" in system or (len(req.messages) - 2) // 2 >= 2
        return "label: " + ("pos" if good and "good" in last else "neg")

    program = evo.Program(signature="text -> label", labels=["pos", "neg"])
    result = evo.optimize(program, data[:30], data[30:], lm=ScriptedLM(respond), cache=False,
                          metric=dspy_compat.metric(dspy_metric),
                          optimizer=evo.GEPA(budget=evo.Budget(metric_calls=150),
                                             encoder="hashing"))
    assert result.best_val == 1.0
    assert any("the label is pos" in s for s in seen)  # the DSPy feedback reached reflection


def test_dspy_examples_without_inputs_is_one_clear_error():
    from evo.integrations.dspy import compat as dspy_compat

    with pytest.raises(evo.DataError, match="row 1.*with_inputs"):
        dspy_compat.examples([dspy.Example(question="q", answer="a")])


def test_dspy_metric_may_take_two_arguments_and_must_be_finite():
    from evo.integrations.dspy import compat as dspy_compat

    ex = evo.Example(inputs={"text": "good"}, outputs={"label": "pos"})
    two = dspy_compat.metric(lambda gold, pred: gold.label == pred.label)
    assert two(ex, evo.Prediction("label: pos", {"label": "pos"})).value == 1.0
    bad = dspy_compat.metric(lambda gold, pred, trace=None: float("nan"))
    with pytest.raises(ValueError, match="the DSPy metric returned nan"):
        bad(ex, evo.Prediction("label: pos", {"label": "pos"}))
