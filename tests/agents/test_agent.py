"""evo.Agent end to end on the scripted sentiment task: serving, grades, trigger, the background
job, the paired-test deploy, rollback, restart, the decorator and its bad signatures."""

from __future__ import annotations

import threading
from typing import Literal

import pytest

import evo
import evo.testing as T
from evo.agents import Agent, AgentCallback, PerformanceDrop, every, optimized
from evo.agents.agent import function_signature
from evo.agents.traces import UnknownCallError
from evo.errors import ConfigError

FAST = evo.Evolution(knn=False, encoder="hashing")


def make_agent(tmp_path, lm=None, **kw) -> Agent:
    return T.sentiment_agent(tmp_path / "agent", lm, **kw)


serve = T.serve


def test_an_agent_serves_collects_optimizes_on_its_trigger_and_deploys_the_winner(tmp_path):
    events: list[dict] = []
    agent = make_agent(tmp_path, on_event=events.append)
    assert agent.version == 1
    before = serve(agent, [T.make(i) for i in range(300, 359)])
    assert not agent.jobs()  # 59 graded examples: the trigger (60) has not fired
    # zero-shot, the scripted model says "neg" to everything
    assert all(r.outputs == {"label": "neg"} and r.version == 1 for r in before)
    serve(agent, [T.make(359)])
    (job,) = agent.jobs()
    assert job.status == "queued" and job.reason.startswith("60")
    done = agent.manager.run_pending()
    assert [j.status for j in done] == ["done"]
    result = agent.manager.status(job.id).result
    assert result["deployed"] and result["decision"]["deploy"]
    assert result["decision"]["p_value"] < 0.05 and result["decision"]["difference"] > 0
    assert agent.version == result["version"] == 2
    after = serve(agent, [T.make(i) for i in range(400, 420)], grade=False)
    assert all(r.version == 2 and r.outputs == T.make(400 + k).outputs
               for k, r in enumerate(after))
    kinds = [e["event"] for e in events]
    assert kinds.count("agent_call") == 80 and kinds.count("agent_feedback") == 60
    assert "trigger_fired" in kinds and "version_deployed" in kinds
    assert result["roi"]["gain"] == pytest.approx(result["decision"]["difference"])
    # every call is in the trace store with the version that served it
    assert agent.traces.count("sentiment") == 80
    assert {t.version for t in agent.traces.traces("sentiment")} == {1, 2}
    agent.close()


def test_a_version_that_does_not_win_is_kept_as_a_candidate(tmp_path):
    events: list[dict] = []
    stubborn = evo.lm.ScriptedLM(lambda r: ("- be careful" if r.purpose == "reflection"
                                            else "label: neg"))
    agent = make_agent(tmp_path, lm=stubborn, on_event=events.append)
    serve(agent, [T.make(i) for i in range(300, 360)])
    (job,) = agent.manager.run_pending()
    assert job.status == "done" and job.result["deployed"] is False
    assert agent.version == 1
    assert agent.versions.get(2).status == "candidate"
    assert any(e["event"] == "version_kept" for e in events)
    agent.close()


def test_rollback_and_a_rebuilt_agent_serves_the_deployed_version(tmp_path):
    agent = make_agent(tmp_path)
    serve(agent, [T.make(i) for i in range(300, 360)])
    agent.manager.run_pending()
    assert agent.version == 2
    agent.close()
    again = make_agent(tmp_path)  # the same home: the same agent, after a restart
    assert again.version == 2 and again(text="item 1 is good stuff").outputs == {"label": "pos"}
    assert again.rollback().number == 1 and again.version == 1
    assert again(text="item 1 is good stuff").version == 1
    again.close()


def test_no_call_is_lost_while_versions_switch(tmp_path):
    agent = make_agent(tmp_path, trigger=None)
    v2 = agent.versions.add(T.program().model_copy(update={"instruction": "It says good."}))
    stop = threading.Event()
    replies: list = []

    def client() -> None:
        k = 0
        while not stop.is_set() or k < 20:
            replies.append(agent(text=f"item {k} is good stuff"))
            k += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(10):
        agent.deploy(v2.number)
        agent.rollback(1)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert all(r.ok for r in replies)
    assert agent.traces.count("sentiment") == len(replies) >= 60
    assert {r.version for r in replies} <= {1, 2}
    agent.close()


def test_feedback_for_an_unknown_call_is_one_clear_error(tmp_path):
    agent = make_agent(tmp_path)
    with pytest.raises(UnknownCallError, match="c-nope"):
        agent.feedback("c-nope", 1.0)
    agent.close()


def test_optimize_now_needs_enough_examples_and_train_uses_given_data(tmp_path):
    agent = make_agent(tmp_path, trigger=None)
    with pytest.raises(ConfigError, match="usable graded"):
        agent.optimize_now()
    job = agent.train(T.TRAIN, T.VAL, holdout=T.TEST)
    assert job.status == "done" and job.result["deployed"]
    assert agent.version == 2
    agent.close()


def test_a_degradation_alert_reaches_the_callbacks(tmp_path):
    seen = []

    class Pager(AgentCallback):
        def on_degradation_alert(self, event):
            seen.append(event)

    agent = make_agent(tmp_path, trigger=PerformanceDrop(window=20, threshold=0.8,
                                                         min_graded=20),
                       callbacks=[Pager()], min_examples=1000)
    # half right: below 0.8 once 20 grades are in; no job is scheduled (too few examples for
    # min_examples), the alert still goes out
    serve(agent, [T.make(i) for i in range(300, 320)])
    assert not agent.jobs()
    assert seen and seen[-1].agent == "sentiment" and seen[-1].recent_mean == 0.5
    agent.close()


def test_the_decorator_turns_a_typed_function_into_an_agent(tmp_path):
    @optimized(lm=evo.lm.ScriptedLM(T.respond), home=tmp_path / "fn", cache=False,
               background=False, optimizer=FAST)
    def label(text: str) -> Literal["pos", "neg"]:
        """Say whether the text is positive."""

    assert str(label.agent.program.signature) == "text -> answer"
    assert label.agent.program.labels == ("pos", "neg")
    assert label.agent.program.instruction == "Say whether the text is positive."
    assert label("item 1 is bad stuff") == "neg"
    reply = label.call(text="item 2 is bad stuff")
    assert label.feedback(reply.call_id, 1.0).score == 1.0
    assert label.__name__ == "label" and label.version == 1
    label.agent.close()


def test_broken_decorator_signatures_are_one_clear_error():
    def no_hint(text) -> str: ...
    def star(*texts: str) -> str: ...
    def no_return(text: str): ...
    def bad_type(text: list) -> str: ...
    def bad_literal(text: str) -> Literal[1, 2]: ...
    def nothing() -> str: ...
    for fn, words in ((no_hint, "parameter 'text' needs a type hint"),
                      (star, r"\*texts"), (no_return, "return annotation"),
                      (bad_type, "parameter 'text'"), (bad_literal, "Literal"),
                      (nothing, "takes no parameter")):
        with pytest.raises(ConfigError, match=words):
            function_signature(fn)
    assert function_signature(lambda_free)[0] == "question, n: int -> answer: float"


def lambda_free(question: str, n: int) -> float: ...


def test_bad_agent_configuration_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="agent name"):
        Agent("../x", "a -> b", lm=evo.lm.ScriptedLM({}), home=tmp_path)
    with pytest.raises(ConfigError, match="signature"):
        Agent("x", "a b", lm=evo.lm.ScriptedLM({}), home=tmp_path)
    with pytest.raises(ConfigError, match="budget"):
        Agent("x", "a -> b", lm=evo.lm.ScriptedLM({}), home=tmp_path, budget=0)
    with pytest.raises(ConfigError):
        Agent("x", "a -> b", lm=evo.lm.ScriptedLM({}), home=tmp_path, optimizer="nope")
    agent = make_agent(tmp_path)
    with pytest.raises(ConfigError, match="missing text"):
        agent(txt="typo")
    agent.close()


def test_validators_retry_with_feedback_at_inference_and_score_during_the_search(tmp_path):
    from evo.agents import OneOf

    asked: list[str] = []

    def respond(request):
        asked.append(request.messages[0].content)
        # answers "pos" only once told that its last answer failed the check
        return "label: pos" if "failed" in request.messages[0].content.lower() else "label: neg"

    agent = make_agent(tmp_path, lm=evo.lm.ScriptedLM(respond), trigger=None,
                       validators=[OneOf("label", ["pos"], name="only_pos")], retries=1)
    reply = agent(text="item 1 is bad stuff")
    assert reply.ok and reply.outputs == {"label": "pos"} and len(asked) == 2
    assert agent.traces.get(reply.call_id).error is None
    # without retries the failing reply is recorded as such, never as training data
    plain = make_agent(tmp_path / "plain", lm=evo.lm.ScriptedLM(lambda r: "label: neg"),
                       trigger=None, validators=[OneOf("label", ["pos"], name="only_pos")])
    failed = plain(text="item 1 is bad stuff")
    assert not failed.ok and "only_pos" in failed.error
    assert plain.traces.get(failed.call_id).error == failed.error
    # during a search the validators are fitness terms of the metric
    assert "only_pos" in evo.runs.runner.name_of(plain.metric)
    agent.close()
    plain.close()


def test_a_home_belongs_to_one_agent_and_a_damaged_agent_file_is_named(tmp_path):
    make_agent(tmp_path).close()
    with pytest.raises(ConfigError, match="home of agent 'sentiment', not 'other'"):
        Agent("other", "text -> label", lm=evo.lm.ScriptedLM({}), home=tmp_path / "agent",
              background=False)
    (tmp_path / "agent" / "agent.json").write_text("{not json")
    with pytest.raises(evo.DamagedFileError, match="agent.json"):
        make_agent(tmp_path)


def test_several_agents_optimize_under_one_shared_budget(tmp_path):
    from evo.agents import OptimizationManager, optimize_together

    shared = OptimizationManager(tmp_path / "jobs")
    agents = [Agent(name, "text -> label", labels=T.LABELS, lm=evo.lm.ScriptedLM(T.respond),
                    home=tmp_path / name, cache=False, background=False, manager=shared,
                    optimizer=FAST, budget=120) for name in ("a", "b")]
    for agent in agents:
        serve(agent, [T.make(i) for i in range(300, 360)])
    jobs = optimize_together(agents, budget=150)
    assert [j.spec["budget"] for j in jobs] == [75, 75]
    done = shared.run_pending()
    assert sorted(j.name for j in done) == ["a", "b"]
    assert all(j.status == "done" and j.result["metric_calls"] <= 75 for j in done)
    with pytest.raises(ConfigError, match="one shared manager"):
        optimize_together([agents[0], make_agent(tmp_path)], budget=10)
    shared.close()


def test_an_agent_over_a_model_choice_can_deploy_the_other_model(tmp_path):
    def right(request):
        last = request.messages[-1].content
        return "label: " + ("pos" if "good" in last else "neg")

    small = evo.lm.ScriptedLM(lambda r: "label: neg", model_id="small")
    large = evo.lm.ScriptedLM(right, model_id="large")
    choice = evo.lm.ModelChoice({"small": small, "large": large},
                                prices={"small": (0.01, 0.01), "large": (1.0, 1.0)})
    agent = make_agent(tmp_path, lm=choice, trigger=None,
                       optimizer=evo.Evolution(knn=False, encoder="hashing", max_demos=0))
    job = agent.train(T.TRAIN, T.VAL, holdout=T.TEST)
    assert job.result["deployed"], job.result["decision"]
    assert agent.program.model == "large"
    before = len(large.calls)
    assert agent(text="item 3 is good stuff").outputs == {"label": "pos"}
    assert len(large.calls) == before + 1  # served by the model the search chose
    agent.close()


def test_a_grade_given_elsewhere_fires_the_trigger_on_the_agents_own_check(tmp_path):
    from evo.agents.traces import TraceStore

    agent = make_agent(tmp_path, background=True, check_every_s=0.05, trigger=every(60))
    replies = serve(agent, [T.make(i) for i in range(300, 360)], grade=False)
    other = TraceStore(tmp_path / "agent" / "traces.sqlite")  # e.g. `evo agents feedback`
    for k, r in enumerate(replies):
        other.feedback(r.call_id, 1.0, expected=T.make(300 + k).outputs)
    other.close()
    job = None
    for _ in range(200):  # bounded: the agent's own check runs every 0.05 s
        if agent.jobs():
            job = agent.manager.wait(agent.jobs()[0].id, timeout=60)
            break
        threading.Event().wait(0.05)
    assert job is not None and job.status == "done" and job.reason.startswith("60")
    agent.close()


def test_every_agent_event_kind_is_emitted_and_round_trips(tmp_path):
    from evo.search.events import Event

    events: list[dict] = []
    agent = make_agent(tmp_path, on_event=events.append)
    agent.manager.on_event = events.append  # the manager's own: job scheduled / finished
    serve(agent, [T.make(i) for i in range(300, 360)])
    agent.manager.run_pending()  # v2 deployed
    agent.rollback()
    stubborn = evo.lm.ScriptedLM(lambda r: ("- be careful" if r.purpose == "reflection"
                                            else "label: neg"))
    kept = make_agent(tmp_path / "kept", lm=stubborn, on_event=events.append,
                      trigger=evo.agents.AnyOf(every(60), PerformanceDrop(window=20,
                                                                          threshold=0.8)))
    serve(kept, [T.make(i) for i in range(300, 360)])  # half right: a degradation alert
    kept.manager.run_pending()  # its v2 is no better: kept
    kinds = {k for k, cls in Event.kinds.items() if cls.__module__ == "evo.agents.events"}
    seen = {e["event"] for e in events}
    assert kinds <= seen, kinds - seen
    for raw in events:
        typed = Event.from_dict(raw)
        assert type(typed) is Event.kinds.get(raw["event"], Event)
        assert typed.to_dict()["event"] == raw["event"]
    agent.close()
    kept.close()
