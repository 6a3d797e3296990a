"""Concurrent evaluation (issue 16): one candidate's cells go out together, up to the session's
max_concurrency, and are recorded in column order, so a search takes the same decisions at any
concurrency: the same best program, score matrix, metric calls and ledger at 1, 8 and 32, for
the default optimizer, GEPA and MIPROv2. The budget is reserved before cells are dispatched, so
it is never exceeded; an unreachable LM stops the run with its error and leaves no thread behind.
Scripted LMs (a few ms of simulated latency); counts only, no timed assertion."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evo
from evo.embeddings.knn import clear_retrievers
from evo.lm import LMSession, ScriptedLM
from evo.lm.base import LMRequest, LMUnavailableError
from evo.metrics import exact_match
from evo.search.evaluate import evaluate_program
from evo.testing import HASHED, assert_same_run, search_figures

BOUND_S = 20.0  # a bound on any join here (never reached when things work)


class CountingLM(ScriptedLM):
    """A scripted LM that counts how many of its calls are in flight at once (:attr:`peak`)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._count = threading.Lock()
        self.now = self.peak = 0

    def complete(self, request: LMRequest):  # type: ignore[no-untyped-def]
        with self._count:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return super().complete(request)
        finally:
            with self._count:
                self.now -= 1


def optimizer(name: str, budget: int):  # type: ignore[no-untyped-def]
    return evo.optimizers.get(name, budget=evo.Budget(metric_calls=budget), encoder="hashing")


def search(name: str, concurrency: int | None, *, budget: int = 60, lm: ScriptedLM | None = None,
           via: str = "optimize", **kw):  # type: ignore[no-untyped-def]
    """A search of the hashed task; ``via`` says where the concurrency is set: the optimize
    call (``max_concurrency=``) or the backend's own ``max_concurrency``."""
    if lm is None:
        lm = CountingLM(HASHED.respond, delay_s=0.002,
                        max_concurrency=concurrency if via == "lm" else 1)
    if via == "optimize":
        kw["max_concurrency"] = concurrency
    # each search starts from no memoized KNN neighbours (they depend on the input alone now:
    # tests/embeddings/test_knn_batch.py; this keeps the comparison independent of that too)
    clear_retrievers()
    return evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val), lm=lm,
                        optimizer=optimizer(name, budget), seed=0, cache=False, **kw), lm


def keys(lm: ScriptedLM) -> list[str]:
    return sorted(r.key("scripted") for r in lm.calls)


def assert_same_search(a, b) -> None:  # type: ignore[no-untyped-def]
    (ra, lma), (rb, lmb) = a, b
    assert search_figures(ra) == search_figures(rb)
    assert np.array_equal(ra.matrix.scores, rb.matrix.scores, equal_nan=True)
    assert keys(lma) == keys(lmb)  # the very same requests reached the model


@pytest.mark.parametrize("name,budget", [("evolution", 90), ("gepa", 90), ("miprov2", 90)])
def test_results_do_not_depend_on_concurrency(name, budget):
    serial = search(name, 1, budget=budget)
    assert serial[1].peak == 1
    for concurrency in (8, 32):
        parallel = search(name, concurrency, budget=budget)
        assert_same_search(serial, parallel)
        assert 1 < parallel[1].peak <= concurrency  # the calls really went out together
        assert parallel[0].max_concurrency == concurrency


def test_the_backends_own_max_concurrency_gives_the_same_search():
    serial = search("evolution", 1, via="lm")
    parallel = search("evolution", 8, via="lm")
    assert serial[1].peak == 1 and parallel[1].peak > 1
    assert_same_search(serial, parallel)


def test_a_session_passed_as_lm_keeps_its_concurrency_and_the_same_search():
    lm = CountingLM(HASHED.respond, delay_s=0.002, max_concurrency=1)
    session = LMSession(lm, max_concurrency=8)
    parallel = search("evolution", None, lm=session)
    assert parallel[0].max_concurrency is None and lm.peak > 1
    assert_same_search(search("evolution", 1), (parallel[0], lm))


def test_the_run_directory_is_the_same_at_any_concurrency(tmp_path):
    serial = search("evolution", 1, run_dir=tmp_path / "serial")
    parallel = search("evolution", 8, run_dir=tmp_path / "parallel")
    assert parallel[1].peak > 1
    assert_same_run(tmp_path / "serial", tmp_path / "parallel")
    ledgers = [r.sittings[0] for r in (serial[0], parallel[0])]
    assert ledgers[0]["paid"] == ledgers[1]["paid"] == serial[0].usage.calls


def test_the_test_pass_is_the_same_at_any_concurrency():
    reports = []
    for concurrency in (1, 8):
        result, lm = search("evolution", concurrency)
        before, lm.peak = len(lm.calls), 0
        report = result.report(list(HASHED.test))
        assert len(lm.calls) - before >= len(HASHED.test)
        assert (lm.peak == 1) if concurrency == 1 else (1 < lm.peak <= concurrency)
        reports.append((report.baseline, report.optimized, report.baseline_scores,
                        report.optimized_scores, report.failures, report.test_usage["calls"]))
    assert reports[0] == reports[1]


# ---- evo.evaluate -------------------------------------------------------------------------

def test_evaluate_is_the_same_at_any_concurrency_and_cells_follow_the_dataset():
    data = list(HASHED.test)
    index = {ex.inputs["text"]: i for i, ex in enumerate(data)}

    class LateFirst(CountingLM):  # the first examples answer last
        def complete(self, request):  # type: ignore[no-untyped-def]
            last = request.messages[-1].content
            i = next((n for t, n in index.items() if t in last), len(data))
            self.delay_s = 0.001 * (len(data) - i) / 4
            return super().complete(request)

    program = HASHED.program()
    results = {}
    for concurrency in (1, 8):
        lm = LateFirst(HASHED.respond, max_concurrency=concurrency)
        accuracy = evo.evaluate(program, data, lm=lm, cache=False)
        again = evo.evaluate(program, data, lm=ScriptedLM(HASHED.respond), cache=False,
                             max_concurrency=concurrency)
        session = LMSession(LateFirst(HASHED.respond), max_concurrency=concurrency)
        scores, cells = evaluate_program(program, data, session, exact_match)
        results[concurrency] = (accuracy, again, scores.tolist(),
                                [c.prediction.text for c in cells])
        expected = [HASHED.respond(LMRequest(program.messages(ex), purpose="task"))
                    for ex in data]
        assert [c.prediction.text for c in cells] == expected  # in the dataset's order
        assert (lm.peak == 1) if concurrency == 1 else (1 < lm.peak <= concurrency)
    assert results[1] == results[8]
    assert 0 < results[1][0] < 1


def test_evaluation_counts_no_failed_cell_at_concurrency():
    evaluation = evo.api.evaluation(HASHED.program(), list(HASHED.test),
                                    lm=ScriptedLM(HASHED.respond), cache=False,
                                    max_concurrency=8)
    serial = evo.api.evaluation(HASHED.program(), list(HASHED.test),
                                lm=ScriptedLM(HASHED.respond), cache=False)
    assert evaluation.failures["failed"] == 0
    assert evaluation.accuracy == serial.accuracy and evaluation.n == serial.n


# ---- the budget under concurrency -------------------------------------------------------------

def check_budget(name: str, budget: int, concurrency: int) -> None:
    result, lm = search(name, concurrency, budget=budget)
    assert result.metric_calls <= budget
    assert all(e.get("metric_calls", 0) <= budget for e in result.events)
    task = [r for r in lm.calls if r.purpose == "task"]
    # every cell paid once, none sent beyond the ones counted; the preflight apart
    assert len(task) == result.metric_calls == result.usage.by_purpose.get("task", 0)
    assert len({r.key("scripted") for r in task}) == len(task)
    assert [r.purpose for r in lm.calls].count("preflight") == 1
    serial = search(name, 1, budget=budget)[0]
    assert (result.metric_calls, result.best_val) == (serial.metric_calls, serial.best_val)


@pytest.mark.parametrize("name", ["evolution", "gepa", "miprov2"])
@pytest.mark.parametrize("budget", [9, 23, 41])
def test_the_budget_is_never_exceeded_under_concurrency(name, budget):
    check_budget(name, budget, 8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(8, 70), concurrency=st.sampled_from([2, 5, 16]))
def test_the_budget_is_never_exceeded_for_any_budget(budget, concurrency):
    check_budget("evolution", budget, concurrency)


def test_an_lm_calls_budget_holds_under_concurrency():
    budget = evo.Budget(metric_calls=200, lm_calls=37)
    lm = CountingLM(HASHED.respond, delay_s=0.002)
    opt = evo.optimizers.get("evolution", budget=budget, encoder="hashing")
    result = evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val), lm=lm,
                          optimizer=opt, seed=0, cache=False, max_concurrency=8)
    paid = [r for r in lm.calls if r.purpose != "preflight"]
    assert len(paid) <= 37 and lm.peak > 1
    assert result.metric_calls == len([r for r in paid if r.purpose == "task"])


# ---- an unreachable LM under concurrency ------------------------------------------------------

def dies_after(n: int, **kw) -> CountingLM:
    """A scripted LM whose task calls after the ``n``-th find the endpoint gone."""
    def errors(req: LMRequest) -> BaseException | None:
        if len(lm.calls) > n:
            return LMUnavailableError("127.0.0.1:9 refused the connection")
        return None

    lm = CountingLM(HASHED.respond, errors=errors, delay_s=0.002, **kw)
    return lm


def evo_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("evo-cell")]


def settled(before: int) -> int:
    """The thread count once any thread that is ending has ended (a bounded join)."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith("evo-cell"):
            t.join(BOUND_S)
    return threading.active_count() - before


def test_an_unreachable_lm_mid_search_stops_the_run_and_leaves_no_thread():
    before = threading.active_count()
    lm = dies_after(20)
    with pytest.raises(LMUnavailableError, match="refused"):
        search("evolution", 8, lm=lm)
    assert lm.peak > 1
    assert settled(before) == 0 and evo_threads() == []
    assert lm.now == 0  # no call still in flight


def test_an_unreachable_lm_mid_evaluate_stops_it_and_leaves_no_thread():
    before = threading.active_count()
    lm = dies_after(10)
    with pytest.raises(LMUnavailableError, match="refused"):
        evo.evaluate(HASHED.program(), list(HASHED.test), lm=lm, cache=False, max_concurrency=8)
    assert settled(before) == 0 and evo_threads() == [] and lm.now == 0
    # the calls not yet started when it failed were never sent
    assert len(lm.calls) < 1 + len(HASHED.test)


def test_an_interrupted_evaluation_sends_no_call_after_it_stops():
    """Ctrl-C (here: a metric raising KeyboardInterrupt) during a concurrent evaluation: the
    calls not yet sent are cancelled, so nothing more is paid once it returns."""
    lm = ScriptedLM(HASHED.respond, max_concurrency=4, delay_s=0.005)
    scored = 0

    def metric(example, prediction):
        nonlocal scored
        scored += 1
        if scored == 5:
            raise KeyboardInterrupt
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        evo.evaluate(HASHED.program(), HASHED.test, lm=lm, metric=metric, cache=False)
    sent = len(lm.calls)
    time.sleep(0.1)
    assert len(lm.calls) == sent < len(HASHED.test)
