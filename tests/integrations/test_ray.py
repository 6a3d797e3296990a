"""A run through Ray actors (evo.integrations.ray) on a local two-CPU cluster: the same answers,
the same errors and the same result as the serial run; the journal the driver writes is
complete (an in-process replay of a Ray run pays nothing). No model is loaded."""

from __future__ import annotations

import inspect
import json
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import evo
from evo.integrations.ray import RayExecutor
from evo.lm import ScriptedLM
from evo.lm.base import (
    LMRequest,
    LMRequestError,
    LMTransientError,
    LMUnavailableError,
    Message,
)
from evo.lm.local import LocalLM
from evo.service import Service, ServiceConfig
from evo.service.specs import OptimizeRequest
from evo.testing import HASHED, assert_same_run, hashed_respond

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    # This module's functions (scripted_errors) travel by value: workers cannot import tests/.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # address="local": a fresh cluster of our own, even where `ray start` runs one
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def ask(text: str, purpose: str = "task") -> LMRequest:
    return LMRequest((Message("system", "answer"), Message("user", text)), purpose=purpose)


def scripted_errors(request: LMRequest) -> BaseException | None:
    """What the backend raises, by the request's text."""
    text = request.messages[-1].content
    if "throttle" in text:
        return LMTransientError("slow down", reason="throttled", retry_after=0.1)
    if "too long" in text:
        return LMRequestError("the prompt is longer than the context window")
    if "bug" in text:
        return KeyError("a bug in the backend")
    return None


def optimizer(budget: int = 60):
    return evo.Evolution(budget=evo.Budget(metric_calls=budget), encoder="hashing")


def figures(result) -> dict:
    """What a run through Ray must repeat of the serial run."""
    return {"best": json.dumps(result.best.to_json(), sort_keys=True, default=str),
            "best_val": result.best_val, "baseline_val": result.baseline_val,
            "metric_calls": result.metric_calls, "stop_reason": str(result.stop_reason),
            "instructions": list(result.instructions),
            "candidates": [(json.dumps(c.genome, sort_keys=True, default=str), c.op, c.val_score)
                           for c in result.candidates],
            "calls": result.usage.calls, "prompt_tokens": result.usage.prompt_tokens,
            "by_purpose": result.usage.by_purpose}


def run(lm, run_dir: Path | None = None, **kw):
    return evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val), lm=lm,
                        optimizer=optimizer(), seed=0, cache=False, run_dir=run_dir, **kw)


def test_ray_lm_answers_and_fails_as_the_backend(cluster):
    backend = ScriptedLM(hashed_respond, errors=scripted_errors, endpoint="http://127.0.0.1:9")
    with RayExecutor(num_workers=2, concurrency_per_worker=3) as executor:
        lm = executor.wrap(backend)
        assert (lm.model_id, lm.endpoint, lm.concurrent, lm.max_concurrency) == (
            "scripted", "http://127.0.0.1:9", True, 6)
        requests = [ask(f"item {i} is nice", purpose="task" if i % 3 else "reflection")
                    for i in range(40)]
        with ThreadPoolExecutor(8) as pool:  # many driver threads at once, as the evaluator
            answers = list(pool.map(lm.complete, requests))
        assert answers == [ScriptedLM(hashed_respond).complete(r) for r in requests]
        assert backend.calls == []  # every call ran in an actor
        assert lm._in_flight == [0, 0]

        with pytest.raises(LMTransientError) as throttled:
            lm.complete(ask("throttle me"))
        assert (throttled.value.reason, throttled.value.retry_after) == ("throttled", 0.1)
        with pytest.raises(LMRequestError, match="context window"):
            lm.complete(ask("too long"))
        with pytest.raises(KeyError, match="a bug"):  # not an evo error: raised as it was
            lm.complete(ask("bug"))

        ray.kill(lm._actors[0], no_restart=True)  # none in flight: the next call goes there
        with pytest.raises(LMTransientError) as gone:
            lm.complete(ask("hello"))
        assert gone.value.reason == "dropped connection"
    assert ray.is_initialized()  # the executor did not start Ray: it leaves it running
    with pytest.raises(LMUnavailableError, match="shut down"):
        lm.complete(ask("hello"))


def test_a_run_through_ray_is_the_serial_run(cluster, tmp_path):
    serial = run(ScriptedLM(hashed_respond), tmp_path / "serial")
    backend = ScriptedLM(hashed_respond)
    with RayExecutor(num_workers=2, concurrency_per_worker=4) as executor:
        through_ray = run(executor.wrap(backend), tmp_path / "ray")
    assert backend.calls == []
    assert figures(through_ray) == figures(serial)
    assert_same_run(tmp_path / "serial", tmp_path / "ray")

    # The driver wrote the whole journal: replayed in-process, the Ray run pays nothing.
    again = ScriptedLM(hashed_respond)
    replayed = run(again, tmp_path / "ray")
    assert [r for r in again.calls if r.purpose != "preflight"] == []
    assert figures(replayed) == {**figures(serial), "calls": 0, "prompt_tokens": 0,
                                 "by_purpose": {}}


@pytest.mark.skipif("executor" not in inspect.signature(evo.optimize).parameters,
                    reason="evo.optimize has no executor= yet")
def test_optimize_with_a_ray_executor_is_the_serial_run(cluster):
    serial = run(ScriptedLM(hashed_respond))
    with RayExecutor(num_workers=2) as executor:
        through_ray = run(ScriptedLM(hashed_respond), executor=executor)
    assert figures(through_ray) == figures(serial)


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(evo.errors.EvoError, match=r"pip install 'evo\[ray\]'"):
        RayExecutor().wrap(ScriptedLM(hashed_respond))


def test_a_local_model_travels_as_a_recipe(tmp_path):
    path = tmp_path / "tiny.gguf"  # never loaded: a LocalLM loads on its first call
    lm = LocalLM(path, n_ctx=512, model_id="tiny-q4", extra_buffers=False)
    rebuild, args = lm.__reduce__()
    assert args == (str(path), None, {"n_ctx": 512, "n_threads": None, "model_id": "tiny-q4",
                                      "verbose": False, "extra_buffers": False})
    copy = pickle.loads(pickle.dumps(lm))
    assert isinstance(copy, LocalLM) and copy._llama is None
    assert (copy.model_path, copy.model_id, copy.n_ctx, copy.endpoint) == (
        path, "tiny-q4", 512, lm.endpoint)

    path.write_bytes(b"")  # a registry model whose file is there: not fetched again
    lm.registry_name = "qwen2.5-coder-0.5b"
    copy = pickle.loads(pickle.dumps(lm))
    assert (copy.model_path, copy.registry_name, copy._llama) == (path, "qwen2.5-coder-0.5b", None)


def test_workers_that_cannot_be_placed_fail_up_front(cluster):
    executor = RayExecutor(num_workers=1, actor_options={"num_cpus": 64}, start_timeout_s=1)
    with pytest.raises(LMUnavailableError, match="did not start in 1 s"):
        executor.wrap(ScriptedLM(hashed_respond))


def _service_result(home: Path, ray_address: str | None) -> dict:
    """One optimization through the service, its LM calls on Ray workers or in this process."""
    program = HASHED.program()
    rows = {k: [{"inputs": e.inputs, "outputs": e.outputs} for e in split]
            for k, split in (("trainset", HASHED.train), ("valset", HASHED.val))}
    request = OptimizeRequest(
        program={"signature": str(program.signature), "labels": list(program.labels or [])},
        data=rows, optimizer="evolution", params={"encoder": "hashing"}, budget=40)
    with Service(ServiceConfig(home=home, workers=1, ray=ray_address),
                 lm=ScriptedLM(hashed_respond), cache=False) as service:
        key = service.store.create_key(tenant="acme", role="operator")[0]
        job = service.jobs.submit(key, request)["id"]
        service.jobs.manager.wait(job, timeout=120)
        result = service.jobs.result("acme", job)
        ray_lm = service.jobs.lm
    return {"result": {k: result[k] for k in ("best_program", "best_score", "metric_calls",
                                              "candidates", "curve")},
            "through": type(ray_lm).__name__}


def test_the_service_runs_its_jobs_lm_calls_on_ray_workers(cluster, tmp_path):
    serial = _service_result(tmp_path / "serial", None)
    through_ray = _service_result(tmp_path / "ray", "local")
    assert (serial["through"], through_ray["through"]) == ("ScriptedLM", "RayLM")
    assert through_ray["result"] == serial["result"]
