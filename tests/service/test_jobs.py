"""ServiceJobs: submit-time resolution and its errors, the runners (optimize, experiment),
progress, cancel, tenant isolation, custom algorithms, resume after a restart, MLflow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import evo.datasets
import evo.testing as T
from evo.data import Dataset
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers import register_operator
from evo.search.events import Event
from evo.service.jobs import ServiceError, ServiceJobs
from evo.service.specs import (
    AlgorithmRequest,
    DatasetRequest,
    ExperimentRequest,
    OptimizeRequest,
)
from evo.service.store import ApiKey, ServiceStore

FAST = {"knn": False, "encoder": "hashing"}
SIG = {"signature": "text -> label", "labels": ["pos", "neg"]}


def rows(examples: Any) -> list[dict]:
    return [e.model_dump(include={"inputs", "outputs"}) for e in examples]


ROWS = rows(T.TRAIN[:10] + T.VAL[:10])


def optimize(data: dict | None = None, **kw: Any) -> OptimizeRequest:
    body = {"program": SIG, "data": data or {"rows": ROWS}, "budget": 40, "params": FAST, **kw}
    return OptimizeRequest.model_validate(body)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ServiceStore]:
    with ServiceStore(tmp_path / "service.sqlite") as s:
        yield s


@pytest.fixture
def key(store: ServiceStore) -> ApiKey:
    return store.create_key(tenant="acme", role="admin", name="t")[0]


@pytest.fixture
def jobs(tmp_path: Path, store: ServiceStore) -> Iterator[ServiceJobs]:
    service = ServiceJobs(tmp_path, store, lm=ScriptedLM(T.respond), cache=False, workers=2)
    yield service
    service.close()


def wait(jobs: ServiceJobs, job_id: str, tenant: str = "acme") -> dict:
    jobs.manager.wait(job_id, timeout=60)
    return jobs.status(tenant, job_id)


def paid(lm: ScriptedLM) -> int:
    return sum(r.purpose != "preflight" for r in lm.calls)


def refused(fn: Any, *args: Any) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        fn(*args)
    return info.value


# ---- optimize ------------------------------------------------------------------------------

def test_inline_rows_run_to_a_result_with_lineage_curve_and_figures(jobs, key):
    job = jobs.submit(key, optimize(name="sentiment"))
    assert job["status"] == "queued"
    status = wait(jobs, job["id"])
    assert status["status"] == "done" and status["progress"] == 1.0
    assert status["name"] == "sentiment" and status["kind"] == "optimize"
    result = jobs.result("acme", job["id"])
    assert result["metric_calls"] <= 40 and result["metric_calls"] == status["metric_calls"]
    assert result["best_score"] >= result["baseline_score"]
    assert result["best_program"]["signature"] == "text -> label"
    ids = {c["id"] for c in result["candidates"]}
    assert result["candidates"][0]["parents"] == []
    assert all(set(c["parents"]) <= ids for c in result["candidates"])
    scores = [s for _, s in result["curve"]]
    assert scores == sorted(scores) and scores[-1] == result["best_score"]
    assert result["lm_calls"] > 0 and result["tokens"] > 0
    assert status["last_event_seq"] == len(jobs.events("acme", job["id"]))
    assert jobs.events("acme", job["id"], after=3)[0]["seq"] == 4
    assert jobs.finished(job["id"])


def test_with_a_price_status_and_result_say_what_a_job_cost(tmp_path, store, key):
    with ServiceJobs(tmp_path, store, lm=ScriptedLM(T.respond), cache=False,
                     price=(0.15, 0.6)) as priced:
        job = priced.submit(key, optimize())["id"]
        status = wait(priced, job)
        result = priced.result("acme", job)
    assert result["prompt_tokens"] > 0 and result["tokens"] == (
        result["prompt_tokens"] + result["completion_tokens"])
    cost = (result["prompt_tokens"] * 0.15 + result["completion_tokens"] * 0.6) / 1e6
    assert status["cost_usd"] == result["cost_usd"] == pytest.approx(cost) and cost > 0
    with ServiceJobs(tmp_path, store, lm=ScriptedLM(T.respond), cache=False) as unpriced:
        assert unpriced.status("acme", job)["cost_usd"] is None  # no price: not guessed


def test_a_public_dataset_and_a_registered_one(jobs, key, monkeypatch):
    fake = Dataset("trec", tuple(T.TRAIN + T.VAL + T.TEST), ("text",), ("label",),
                   labels=T.LABELS)
    monkeypatch.setattr(evo.datasets, "fetch", lambda name: fake)
    public = jobs.submit(key, optimize({"dataset": "trec", "n_train": 8, "n_val": 6}))
    jobs.register_dataset(key, DatasetRequest.model_validate({"name": "mine", "rows": ROWS}))
    mine = jobs.submit(key, optimize({"dataset": "mine"}))
    for job in (public, mine):
        assert wait(jobs, job["id"])["status"] == "done"
    spec = jobs.manager.status(public["id"]).spec
    assert (len(spec["trainset"]), len(spec["valset"])) == (8, 6)
    assert len(jobs.manager.status(mine["id"]).spec["valset"]) == 10
    assert refused(jobs.register_dataset, key, DatasetRequest.model_validate(
        {"name": "mine", "rows": ROWS})).status == 409


def test_an_agents_graded_traces_are_data_and_its_deployed_program_a_program(tmp_path, jobs,
                                                                           key):
    agent = T.sentiment_agent(tmp_path / "agents" / "acme" / "sentiment", trigger=None)
    T.serve(agent, T.TRAIN[:12])
    T.serve(agent, T.VAL[:4], grade=False)  # ungraded calls are no examples
    agent.close()
    job = jobs.submit(key, OptimizeRequest.model_validate(
        {"program": {"agent": "sentiment"}, "data": {"agent": "sentiment"}, "budget": 30,
         "params": FAST}))
    assert wait(jobs, job["id"])["status"] == "done"
    spec = jobs.manager.status(job["id"]).spec
    assert len(spec["trainset"]) + len(spec["valset"]) == 12
    assert spec["program"]["labels"] == ["pos", "neg"]
    analytics = jobs.analytics("acme")
    series = analytics["agents"]["sentiment"]["series"]
    assert sum(p["n"] for p in series) == 12 and {p["version"] for p in series} == {1}
    assert analytics["agents"]["sentiment"]["versions"][0]["number"] == 1
    assert analytics["programs"]["text -> label"][0]["job"] == job["id"]
    # another tenant has no such agent
    other = jobs.store.create_key(tenant="other", role="admin")[0]
    assert refused(jobs.submit, other, OptimizeRequest.model_validate(
        {"program": SIG, "data": {"agent": "sentiment"}})).status == 404


@pytest.mark.parametrize(("body", "status", "where", "says"), [
    ({"optimizer": "nope"}, 422, "body.optimizer", "evolution"),
    ({"params": {"population_size": 0}}, 422, "body.params.population_size", "greater"),
    ({"params": {"no_such": 1}}, 422, "body.params.no_such", "Extra"),
    ({"params": {"budget": 5}}, 422, "body.params.budget", "budget"),
    ({"params": {"operators": {"nope": 0.5}}}, 422, "body.params.operators.nope",
     "no operator"),
    ({"params": {"operators": ["nope"]}}, 422, "body.params.operators", "an object"),
    ({"params": {"race_z": float("inf")}}, 422, "body.params.race_z", "not a finite"),
    ({"params": {"x": [1.0, {"y": float("nan")}]}}, 422, "body.params.x[1].y", "not a finite"),
    ({"data": {"rows": [{"inputs": {"question": "x"}, "outputs": {"label": "pos"}}] * 2}},
     422, "body.data.rows[0].inputs.text", "no input 'text'"),
    ({"data": {"rows": [{"inputs": {"text": "x"}, "outputs": {"label": "maybe"}}] * 2}},
     422, "body.data.rows[0].outputs.label", "not one of"),
    ({"data": {"rows": ROWS[:1]}}, 422, "body.data.rows", "at least 2"),
    ({"data": {"dataset": "nothing"}}, 404, "body.data.dataset", "no dataset"),
    ({"data": {"agent": "ghost"}}, 404, "body.data.agent", "no agent"),
    ({"program": {"agent": "ghost"}}, 404, "body.program.agent", "no agent"),
    ({"program": {"signature": "text -> label", "labels": ["pos"],
                  "demos": [{"inputs": {"x": "a"}, "outputs": {"label": "pos"}}]}},
     422, "body.program", "demos"),
])
def test_every_refusal_names_its_field(jobs, key, body, status, where, says):
    base = {"program": SIG, "data": {"rows": ROWS}, "params": FAST}
    err = refused(jobs.submit, key, OptimizeRequest.model_validate({**base, **body}))
    assert (err.status, err.where) == (status, where)
    assert says in err.message
    assert jobs.list("acme")["total"] == 0  # nothing was queued


def test_an_agent_name_never_leads_out_of_the_tenants_agents(tmp_path, jobs, key):
    theirs = T.sentiment_agent(tmp_path / "agents" / "other" / "bot", trigger=None)
    T.serve(theirs, T.TRAIN[:6])
    theirs.close()
    assert jobs.analytics("other", agent="bot")["agents"]["bot"]["series"]
    for name in ("../other/bot", str(tmp_path / "agents" / "other" / "bot"), "..", ""):
        err = refused(lambda n: jobs.analytics("acme", agent=n), name)
        assert (err.status, err.where) == (422, "query.agent")
    # a link in the tenant's folder that leads out of it is no agent of the tenant
    (tmp_path / "agents" / "acme").mkdir(parents=True)
    (tmp_path / "agents" / "acme" / "bot").symlink_to(tmp_path / "agents" / "other" / "bot")
    assert refused(lambda: jobs.analytics("acme", agent="bot")).status == 404
    assert jobs.analytics("acme")["agents"] == {}


def test_a_non_finite_algorithm_param_is_422_and_only_a_taken_name_409(jobs, key):
    err = refused(jobs.register_algorithm, key, AlgorithmRequest.model_validate(
        {"name": "mine", "base": "gepa", "params": {"perfect_score": float("nan")}}))
    assert (err.status, err.where) == (422, "body.params.perfect_score")
    jobs.register_algorithm(key, AlgorithmRequest.model_validate({"name": "mine",
                                                                  "base": "gepa"}))
    err = refused(jobs.register_algorithm, key, AlgorithmRequest.model_validate(
        {"name": "mine", "base": "gepa"}))
    assert (err.status, err.where) == (409, "body.name")


def test_bodies_out_of_bounds_are_validation_errors():
    for body in ({"program": SIG, "data": {"rows": ROWS}, "budget": 0},
                 {"program": SIG, "data": {"rows": ROWS, "dataset": "x"}},
                 {"program": {**SIG, "agent": "a"}, "data": {"rows": ROWS}},
                 {"program": SIG, "data": {"trainset": ROWS}},
                 {"program": SIG, "data": {"rows": ROWS}, "extra": 1},
                 {"program": SIG, "data": {"dataset": "../etc"}},
                 {"program": SIG, "data": {"rows": [{"inputs": {"t": "x" * 20_001},
                                                     "outputs": {"label": "pos"}}]}}):
        with pytest.raises(ValidationError):
            OptimizeRequest.model_validate(body)


# ---- custom algorithms -----------------------------------------------------------------------

@register_operator("service_test_identity")
def _identity(parent: Any, search: Any) -> None:
    return None  # proposes nothing (costs nothing)


def test_a_custom_algorithm_is_registered_listed_and_used(jobs, key):
    algo = AlgorithmRequest.model_validate(
        {"name": "my-evo", "base": "evolution", "params": {**FAST, "population_size": 4},
         "operators": {"service_test_identity": 0.2}, "description": "small"})
    assert jobs.register_algorithm(key, algo)["base"] == "evolution"
    listed = jobs.algorithms("acme")
    assert [a["name"] for a in listed["custom"]] == ["my-evo"]
    evolution = next(a for a in listed["builtin"] if a["name"] == "evolution")
    assert "population_size" in evolution["params"]["properties"]
    assert "budget" not in evolution["params"]["properties"]
    assert jobs.algorithms("other")["custom"] == []
    job = jobs.submit(key, optimize(optimizer="my-evo", params={}))
    assert wait(jobs, job["id"])["status"] == "done"
    spec = jobs.manager.status(job["id"]).spec["optimizer"]
    assert spec == {"name": "evolution", "params": {**FAST, "population_size": 4},
                    "operators": {"service_test_identity": 0.2}, "algorithm": "my-evo"}
    assert jobs.result("acme", job["id"])["optimizer"] == "my-evo"
    # another tenant does not see it
    other = jobs.store.create_key(tenant="other", role="admin")[0]
    assert refused(jobs.submit, other, optimize(optimizer="my-evo")).where == "body.optimizer"
    assert refused(jobs.register_algorithm, key, algo).status == 409


@pytest.mark.parametrize(("body", "where"), [
    ({"base": "nope"}, "body.base"),
    ({"base": "gepa", "params": {"population_size": -1}}, "body.params.population_size"),
    ({"base": "evolution", "operators": {"unregistered": 0.5}}, "body.operators.unregistered"),
    ({"base": "gepa", "operators": {"service_test_identity": 0.5}}, "body.operators"),
])
def test_a_bad_algorithm_is_refused(jobs, key, body, where):
    err = refused(jobs.register_algorithm, key, AlgorithmRequest.model_validate(
        {"name": "mine", **body}))
    assert (err.status, err.where) == (422, where)
    assert jobs.algorithms("acme")["custom"] == []


def test_an_algorithm_may_not_shadow_a_builtin():
    for name in ("evolution", "gepa", "miprov2"):
        with pytest.raises(ValidationError, match="built-in"):
            AlgorithmRequest.model_validate({"name": name, "base": "evolution"})
    with pytest.raises(ValidationError):
        AlgorithmRequest.model_validate({"name": "Bad Name", "base": "evolution"})


# ---- progress, cancel, isolation -----------------------------------------------------------

class Gate:
    """A scripted model that stops at its n-th call until released."""

    def __init__(self, n: int) -> None:
        self.n, self.reached, self.release = n, threading.Event(), threading.Event()
        self.lm = ScriptedLM(self.answer)

    def answer(self, req: LMRequest) -> str:
        if len(self.lm.calls) == self.n:
            self.reached.set()
            assert self.release.wait(30), "the test never released the model"
        return T.respond(req)


def test_progress_and_eta_move_while_running_and_status_reads_no_file(tmp_path, store, key,
                                                                      monkeypatch):
    gate = Gate(25)
    jobs = ServiceJobs(tmp_path, store, lm=gate.lm, cache=False, workers=1)
    try:
        job = jobs.submit(key, optimize(budget=60))
        assert gate.reached.wait(30)
        # a tracked job's status opens no file
        monkeypatch.setattr(jobs.manager, "events", lambda *a, **k: pytest.fail("read"))
        mid = jobs.status("acme", job["id"])
        assert mid["status"] == "running" and 0 < mid["progress"] < 1
        assert mid["eta_s"] is not None and mid["eta_s"] > 0
        assert mid["budget"] == 60 and mid["last_event_seq"] > 0
        gate.release.set()
        end = wait(jobs, job["id"])
        assert end["progress"] == 1.0 and end["metric_calls"] > mid["metric_calls"]
        assert end["last_event_seq"] > mid["last_event_seq"]
    finally:
        gate.release.set()
        jobs.close()


def test_cancel_a_queued_and_a_running_job(tmp_path, store, key):
    gate = Gate(5)
    jobs = ServiceJobs(tmp_path, store, lm=gate.lm, cache=False, workers=1)
    try:
        running = jobs.submit(key, optimize())
        queued = jobs.submit(key, optimize())
        assert gate.reached.wait(30)
        assert jobs.cancel("acme", queued["id"])["status"] == "cancelled"
        jobs.cancel("acme", running["id"])
        gate.release.set()
        assert wait(jobs, running["id"])["status"] == "cancelled"
        err = refused(jobs.cancel, "acme", running["id"])
        assert err.status == 409
        assert refused(jobs.result, "acme", queued["id"]).status == 409
        assert jobs.list("acme", status="cancelled")["total"] == 2
    finally:
        gate.release.set()
        jobs.close()


def test_tenants_see_only_their_own_jobs(jobs, key, store):
    mine = jobs.submit(key, optimize())
    other = store.create_key(tenant="other", role="admin")[0]
    theirs = jobs.submit(other, optimize(name="theirs"))
    for fn in (jobs.status, jobs.result, jobs.cancel, jobs.events):
        err = refused(fn, "other", mine["id"])
        assert err.status == 404 and mine["id"] in err.message
    assert refused(jobs.status, "acme", "j-no-such").status == 404
    wait(jobs, theirs["id"], "other")
    assert [i["id"] for i in jobs.list("other")["items"]] == [theirs["id"]]
    assert [i["id"] for i in jobs.list("acme")["items"]] == [mine["id"]]
    assert jobs.list("acme", name="theirs")["total"] == 0


def test_list_filters_by_status_with_paging(jobs, key):
    ids = [jobs.submit(key, optimize(name=f"n{i}"))["id"] for i in range(5)]
    for i in ids:
        wait(jobs, i)
    page = jobs.list("acme", status="done", limit=2, offset=1)
    assert page["total"] == 5 and [i["id"] for i in page["items"]] == ids[::-1][1:3]
    assert jobs.list("acme", status="running")["total"] == 0
    assert jobs.list("acme", name="n3")["items"][0]["id"] == ids[3]
    with pytest.raises(ServiceError):
        jobs.list("acme", status="bogus")


# ---- experiments -----------------------------------------------------------------------------

def test_an_experiment_on_a_dataset_compares_a_job_with_a_program(jobs, key):
    trained = jobs.submit(key, optimize(budget=60))
    wait(jobs, trained["id"])
    jobs.register_dataset(key, DatasetRequest.model_validate(
        {"name": "held", "rows": rows(T.TEST[:20])}))
    exp = jobs.submit_experiment(key, ExperimentRequest.model_validate(
        {"a": SIG, "b": {"job": trained["id"]}, "data": {"dataset": "held"}, "name": "ab"}))
    status = wait(jobs, exp["id"])
    assert status["kind"] == "experiment" and status["status"] == "done"
    result = jobs.result("acme", exp["id"])
    assert result["n"] == 20 and result["a"] == 0.5 and result["b"] == 1.0
    assert result["diff"] == 0.5 and result["ci"][0] > 0
    assert result["p_value"] < 0.05 and result["decision"] == "b better"
    assert jobs.list("acme", kind="experiment")["total"] == 1
    # its events are the service's typed kinds, each the same dict back through its class
    events = jobs.events("acme", exp["id"])
    assert [e["event"] for e in events][::len(events) - 1] == ["experiment_start",
                                                               "experiment_complete"]
    for raw in events:
        raw = {k: v for k, v in raw.items() if k != "seq"}
        typed = Event.from_dict(raw)
        assert type(typed) is Event.kinds[raw["event"]] and typed.to_dict() == raw
    # a running or foreign job is no program
    err = refused(jobs.submit_experiment, key, ExperimentRequest.model_validate(
        {"a": SIG, "b": {"job": exp["id"]}, "data": {"dataset": "held"}}))
    assert (err.status, err.where) == (409, "body.b.job")


def test_an_experiment_on_an_agents_live_traffic(tmp_path, jobs, key):
    agent = T.sentiment_agent(tmp_path / "agents" / "acme" / "sentiment", trigger=None)
    T.serve(agent, T.TEST[:16])
    better = agent.versions.add(T.program().model_copy(update={"instruction": "It says good: pos"}),
                                source="manual")
    agent.close()
    exp = jobs.submit_experiment(key, ExperimentRequest.model_validate(
        {"a": {"agent": "sentiment"}, "b": {"agent": "sentiment", "version": better.number},
         "data": {"agent": "sentiment"}}))
    assert wait(jobs, exp["id"])["status"] == "done"
    result = jobs.result("acme", exp["id"])
    assert result["n"] == 16 and result["decision"] == "b better"
    err = refused(jobs.submit_experiment, key, ExperimentRequest.model_validate(
        {"a": {"agent": "sentiment"}, "b": {"agent": "sentiment", "version": 9},
         "data": {"agent": "sentiment"}}))
    assert (err.status, err.where) == (404, "body.b.version")


# ---- restart -------------------------------------------------------------------------------

def test_a_job_cut_by_a_restart_resumes_and_pays_no_call_twice(tmp_path, store, key):
    # the whole run, uninterrupted, in another home: how many calls it pays
    with ServiceStore(tmp_path / "ref.sqlite") as ref_store:
        ref_key = ref_store.create_key(tenant="acme", role="admin")[0]
        ref_lm = ScriptedLM(T.respond)
        ref = ServiceJobs(tmp_path / "ref", ref_store, lm=ref_lm, cache=False, workers=1)
        ref_job = ref.submit(ref_key, optimize(budget=60))
        ref.manager.wait(ref_job["id"], timeout=60)
        expected = ref.result("acme", ref_job["id"])
        ref.close()

    gate = Gate(20)
    first = ServiceJobs(tmp_path, store, lm=gate.lm, cache=False, workers=1)
    job = first.submit(key, optimize(budget=60))
    assert gate.reached.wait(30)
    first.manager.stop(wait=False)  # the service shuts down mid-job
    gate.release.set()
    first.close()

    lm = ScriptedLM(T.respond)
    second = ServiceJobs(tmp_path, store, lm=lm, cache=False, workers=1, start=False)
    try:
        paused = second.status("acme", job["id"])
        assert paused["status"] == "queued" and 0 < paused["metric_calls"] < 60
        second.start()
        status = wait(second, job["id"])
        assert status["status"] == "done" and status["sittings"] == 2
        # (each sitting checks its LM once, unjournaled: the preflight is no paid work)
        assert paid(gate.lm) + paid(lm) == paid(ref_lm)
        result = second.result("acme", job["id"])
        assert result["best_program"] == expected["best_program"]
        assert result["candidates"] == expected["candidates"]
    finally:
        second.close()
    # a third process rebuilds the finished job's progress from its events, once
    third = ServiceJobs(tmp_path, store, lm=lm, cache=False, workers=1, start=False)
    try:
        again = third.status("acme", job["id"])
        assert again["last_event_seq"] == len(third.events("acme", job["id"]))
        assert again["best_score"] == result["best_score"]
    finally:
        third.close()


# ---- MLflow --------------------------------------------------------------------------------

def test_each_job_is_one_mlflow_run_with_params_metrics_and_the_best_program(tmp_path, store,
                                                                            key):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    jobs = ServiceJobs(tmp_path, store, lm=ScriptedLM(T.respond), cache=False, workers=2,
                       mlflow_uri=uri)
    try:
        ids = [jobs.submit(key, optimize(budget=40, seed=s))["id"] for s in (0, 1)]
        for i in ids:
            assert wait(jobs, i)["status"] == "done"
    finally:
        jobs.close()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("evo-service")
    for job_id in ids:
        runs = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`evo.job` = '{job_id}'")
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.params["optimizer"] == "evolution" and run.data.params["budget"] == "40"
        history = client.get_metric_history(run.info.run_id, "best_val")
        steps = [m.step for m in history]
        assert steps == sorted(steps) and steps[-1] <= 40
        local = client.download_artifacts(run.info.run_id, "best.json", str(tmp_path))
        best = json.loads(Path(local).read_text())
        assert best["signature"] == "text -> label"


def test_the_cost_objective_adds_the_pareto_front(jobs, key):
    job = jobs.submit(key, optimize(objectives=["accuracy", "cost"]))
    assert wait(jobs, job["id"])["status"] == "done"
    assert jobs.manager.status(job["id"]).spec["optimizer"]["params"]["objectives"] == [
        "accuracy", "cost"]
    pareto = jobs.result("acme", job["id"])["pareto"]
    assert pareto and all(p["cost"] is not None for p in pareto)
    costs = [p["cost"] for p in pareto]
    assert costs == sorted(costs)
