"""Whole runs under concurrency (issue 16): a server that throttles (429 above two requests in
flight) is survived with nothing lost and the serial result; a concurrent stored search
SIGKILLed at random moments resumes to the uninterrupted result with every request paid once;
``await evo.aoptimize`` / ``evo.aevaluate`` give the sync results while the event loop keeps
running. Loopback server (evo.testing.latency_server) on 127.0.0.1, started and stopped here;
counts only, no timed assertion."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading

import pytest

import evo
from evo.lm import LMSession, ScriptedLM
from evo.lm.base import LMRequest
from evo.testing import HASHED, assert_same_run, search_figures
from evo.testing.latency_server import make_respond, serving

needs_dspy = pytest.mark.skipif(importlib.util.find_spec("dspy") is None,
                                reason="dspy not installed (evo.lm.hosted)")


def optimizer(budget: int, name: str = "evolution"):  # type: ignore[no-untyped-def]
    return evo.optimizers.get(name, budget=evo.Budget(metric_calls=budget), encoder="hashing")


# ---- a throttling server ------------------------------------------------------------------------

RESPOND = make_respond(HASHED.labels, whole_prompt=True)  # each prompt scores differently


def hosted(base: str):  # type: ignore[no-untyped-def]
    return evo.lm.hosted("openai/latency", api_base=base, api_key="x")


@needs_dspy
@pytest.mark.usefixtures("offline")
def test_a_throttling_server_is_survived_with_nothing_lost():
    data = list(HASHED.test)
    with serving(latency_s=0.02, respond=RESPOND) as srv:  # no throttling, one at a time
        serial_eval = evo.api.evaluation(HASHED.program(), data, lm=hosted(srv.base),
                                         cache=False, max_concurrency=1)
        serial = evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
                              lm=hosted(srv.base), optimizer=optimizer(60), seed=0,
                              cache=False, max_concurrency=1)
        assert srv.stats()["peak_inflight"] == 1

    with serving(latency_s=0.02, max_inflight=2, retry_after="0", respond=RESPOND) as srv:
        evaluation = evo.api.evaluation(HASHED.program(), data, lm=hosted(srv.base),
                                        cache=False, max_concurrency=8)
        stats = srv.stats()
        assert evaluation.failures["failed"] == 0
        assert stats["throttled"] > 0 and stats["peak_inflight"] == 2
        assert stats["served"] == len(data)  # each distinct request answered once
        assert (evaluation.accuracy, evaluation.n) == (serial_eval.accuracy, serial_eval.n)

        srv.reset()
        session = LMSession(hosted(srv.base), max_concurrency=8)
        result = evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
                              lm=session, optimizer=optimizer(60), seed=0, cache=False)
        stats = srv.stats()
        assert stats["throttled"] > 0 and session.limit.decreases > 0
        assert result.search_summary()["cell_errors"] == 0
        # the preflight and each paid call, once: no request was lost or answered twice
        assert stats["served"] == 1 + result.usage.calls and result.usage.errors == 0
        assert search_figures(result) == search_figures(serial)


# ---- SIGKILL + resume under concurrency ---------------------------------------------------------

SCRIPT = r"""
import evo
from evo.lm import ScriptedLM
from evo.testing import HASHED
opt = evo.optimizers.get({name!r}, budget=evo.Budget(metric_calls=150), encoder="hashing")
evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
             lm=ScriptedLM(HASHED.respond, delay_s=0.004), optimizer=opt, seed=0, cache=False,
             run_dir={run!r}, max_concurrency={concurrency})
print("finished")
"""


@pytest.mark.parametrize("name", ["evolution", "gepa"])
def test_sigkill_under_concurrency_then_resume_repeats_no_paid_call(sigkill_resume, tmp_path,
                                                                    name):
    """Processes searching 8 calls at a time, SIGKILLed at random moments (calls in flight),
    each sitting with another hash seed: the resumed run is the uninterrupted one, every
    request paid once (the fixture's checks), and both are the serial run."""
    sigkill_resume(lambda run: SCRIPT.format(run=str(run), name=name, concurrency=8), kills=3,
                   spacing=6)
    # the serial run in a process of its own, as the sittings were
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(run=str(tmp_path / "serial"),
                                                               name=name, concurrency=1)],
                         capture_output=True, text=True, timeout=300)
    assert "finished" in out.stdout, out.stderr
    assert_same_run(tmp_path / "serial", tmp_path / "whole")
    assert_same_run(tmp_path / "serial", tmp_path / "killed")


# ---- the async API ------------------------------------------------------------------------------

class TickingLM(ScriptedLM):
    """A scripted LM that notes the event loop's tick count at each call (read from the
    search's worker thread)."""

    def __init__(self, *args, ticks: list[int], **kw) -> None:
        super().__init__(*args, **kw)
        self.ticks, self.seen = ticks, set()

    def complete(self, request: LMRequest):  # type: ignore[no-untyped-def]
        self.seen.add(self.ticks[0])
        return super().complete(request)


async def while_ticking(work, ticks: list[int]):  # type: ignore[no-untyped-def]
    """Await ``work`` while another task of the loop counts in ``ticks[0]``."""
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        return await work
    finally:
        stop.set()
        await task


def test_aoptimize_gives_the_sync_result_while_the_loop_keeps_running():
    sync = evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
                        lm=ScriptedLM(HASHED.respond), optimizer=optimizer(60), seed=0,
                        cache=False, max_concurrency=8)
    ticks = [0]
    lm = TickingLM(HASHED.respond, delay_s=0.002, ticks=ticks)
    loop_thread = []

    async def main():  # type: ignore[no-untyped-def]
        loop_thread.append(threading.current_thread())
        return await while_ticking(evo.aoptimize(
            HASHED.program(), list(HASHED.train), list(HASHED.val), lm=lm,
            optimizer=optimizer(60), seed=0, cache=False, max_concurrency=8), ticks)

    result = asyncio.run(main())
    assert search_figures(result) == search_figures(sync)
    assert ticks[0] > 0
    assert len(lm.seen) > 1  # the loop ticked between the search's LM calls
    assert loop_thread[0] is threading.main_thread()


def test_aoptimize_with_a_run_dir_gives_the_sync_run(tmp_path):
    evo.optimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
                 lm=ScriptedLM(HASHED.respond), optimizer=optimizer(60), seed=0, cache=False,
                 run_dir=tmp_path / "sync")

    async def main():  # type: ignore[no-untyped-def]
        return await evo.aoptimize(HASHED.program(), list(HASHED.train), list(HASHED.val),
                                   lm=ScriptedLM(HASHED.respond), optimizer=optimizer(60),
                                   seed=0, cache=False, run_dir=tmp_path / "async",
                                   max_concurrency=8)

    asyncio.run(main())
    assert_same_run(tmp_path / "sync", tmp_path / "async")


def test_aevaluate_gives_the_sync_accuracy_while_the_loop_keeps_running():
    data = list(HASHED.test)
    sync = evo.evaluate(HASHED.program(), data, lm=ScriptedLM(HASHED.respond), cache=False)
    ticks = [0]
    lm = TickingLM(HASHED.respond, delay_s=0.002, ticks=ticks)

    async def main():  # type: ignore[no-untyped-def]
        return await while_ticking(evo.aevaluate(HASHED.program(), data, lm=lm, cache=False,
                                                 max_concurrency=4), ticks)

    assert asyncio.run(main()) == sync
    assert ticks[0] > 0 and len(lm.seen) > 1
    assert len(lm.calls) == len(data)


def test_several_aevaluates_run_side_by_side_in_one_loop():
    data = list(HASHED.test)
    programs = [HASHED.program(), HASHED.program().model_copy(
        update={"instruction": "Name the label the adjective stands for."})]
    sync = [evo.evaluate(p, data, lm=ScriptedLM(HASHED.respond), cache=False) for p in programs]

    async def main():  # type: ignore[no-untyped-def]
        return await asyncio.gather(*(evo.aevaluate(p, data, lm=ScriptedLM(HASHED.respond),
                                                    cache=False, max_concurrency=8)
                                      for p in programs))

    assert asyncio.run(main()) == sync
    assert sync[0] != sync[1]  # two programs, two accuracies: each answer went to its own


