"""Provider limits (evo.lm.limits) and the session's use of them: the adaptive in-flight limit
never lets more calls through than it allows, halves once per throttled burst and grows back to
its ceiling; the token buckets pace calls on an injected clock; LMSession picks a sensible
concurrency per backend, refuses bad settings, and retries a throttled call apart from its
ordinary retries. Counts only, no timed assertion (the buckets run on a fake clock)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evo
from evo.errors import ConfigError
from evo.lm import LMSession, ScriptedLM
from evo.lm.base import LMRequest, LMResponse, LMTransientError, Message
from evo.lm.limits import ConcurrencyLimit, TokenBucket
from evo.lm.session import DEFAULT_CONCURRENCY, default_concurrency, on_executor
from evo.testing import HASHED

BOUND_S = 20.0  # a bound on any wait here (never reached when things work)


def ask(text: str = "text: x") -> LMRequest:
    return LMRequest(messages=(Message("user", text),))


# ---- ConcurrencyLimit -------------------------------------------------------------------------

def test_acquire_never_lets_more_than_the_limit_in_flight():
    """32 threads, limit 4: each holder waits (boundedly) until the limit is reached, so the
    limit is reached, and nobody is ever let in beyond it."""
    lim = ConcurrencyLimit(4)
    lock = threading.Lock()
    full = threading.Event()
    state = {"now": 0, "most": 0, "done": 0}

    def work() -> None:
        lim.acquire()
        try:
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                if state["now"] >= 4:
                    full.set()
            full.wait(BOUND_S)  # hold the slot until the others fill the limit
            with lock:
                state["now"] -= 1
                state["done"] += 1
        finally:
            lim.release()

    threads = [threading.Thread(target=work) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S)
    assert not any(t.is_alive() for t in threads)
    assert state["done"] == 32 and full.is_set()
    assert state["most"] == 4 and lim.peak == 4 and lim.in_flight == 0


def test_a_lowered_limit_holds_back_new_calls_until_a_success_raises_it():
    lim = ConcurrencyLimit(2)
    lim.throttled(lim.epoch)
    assert lim.limit == 1
    lim.acquire()  # the one allowed call
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (lim.acquire(), got.set()))
    waiter.start()
    assert not got.wait(0.05)  # (not a timing: it must not get in at all while limit is 1)
    lim.succeeded()  # one success at limit 1: the limit becomes 2, the waiter gets in
    assert got.wait(BOUND_S) and lim.limit == 2 and lim.in_flight == 2
    waiter.join(BOUND_S)
    lim.release()
    lim.release()
    assert lim.in_flight == 0


def test_two_429s_from_one_burst_halve_the_limit_once():
    lim = ConcurrencyLimit(8)
    first, second = lim.acquire(), lim.acquire()  # two calls sent under the same limit
    lim.throttled(first)
    lim.throttled(second)
    assert (lim.limit, lim.decreases, lim.epoch) == (4, 1, 1)
    later = lim.acquire()  # sent after the decrease: its 429 halves again
    lim.throttled(later)
    assert (lim.limit, lim.decreases) == (2, 2)
    lim.throttled(lim.epoch)
    lim.throttled(lim.epoch)
    assert lim.limit == 1  # never below one
    lim.throttled(lim.epoch)
    assert lim.limit == 1


def test_successes_grow_the_limit_back_to_the_ceiling_never_above():
    lim = ConcurrencyLimit(8)
    for _ in range(3):
        lim.throttled(lim.epoch)
    assert lim.limit == 1
    # at limit L, L successes in a row raise it by one: 1 + 2 + ... + 7 = 28 back to 8
    for _ in range(27):
        lim.succeeded()
    assert lim.limit == 7
    lim.succeeded()
    assert lim.limit == 8
    for _ in range(100):
        lim.succeeded()
    assert lim.limit == 8 == lim.ceiling


def test_a_throttle_resets_the_run_of_successes():
    lim = ConcurrencyLimit(8)
    lim.throttled(lim.epoch)  # 4
    for _ in range(3):
        lim.succeeded()
    lim.throttled(lim.epoch)  # 2, and the three successes no longer count
    lim.succeeded()
    assert lim.limit == 2
    lim.succeeded()
    assert lim.limit == 3


@settings(max_examples=200, deadline=None)
@given(ceiling=st.integers(1, 64),
       ops=st.lists(st.tuples(st.sampled_from(["throttled", "stale", "succeeded"]),
                              st.integers(0, 3)), max_size=200))
def test_the_limit_stays_between_one_and_the_ceiling(ceiling, ops):
    lim = ConcurrencyLimit(ceiling)
    assert lim.limit == ceiling
    for op, back in ops:
        before = lim.limit
        if op == "succeeded":
            lim.succeeded()
            assert lim.limit in (before, before + 1)
        elif op == "throttled":
            lim.throttled(lim.epoch)
            assert lim.limit == max(1, before // 2)
        else:  # a 429 of a call sent before the last decrease: no change
            if lim.epoch:
                lim.throttled(max(0, lim.epoch - 1 - back))
                assert lim.limit == before
        assert 1 <= lim.limit <= ceiling
        assert lim.decreases == lim.epoch


# ---- TokenBucket ------------------------------------------------------------------------------

class FakeTime:
    """A clock that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_60_rpm_lets_a_burst_of_60_through_and_the_61st_waits_a_second():
    t = FakeTime()
    bucket = TokenBucket(60, clock=t.clock, sleep=t.sleep)
    assert [bucket.take(1) for _ in range(60)] == [0.0] * 60
    assert t.slept == []
    waited = bucket.take(1)
    assert waited == pytest.approx(1.0) and sum(t.slept) == pytest.approx(1.0)
    assert t.now == pytest.approx(1001.0)


def test_a_bucket_refills_with_time():
    t = FakeTime()
    bucket = TokenBucket(120, clock=t.clock, sleep=t.sleep)  # 2 per second
    for _ in range(120):
        bucket.take(1)
    t.now += 5.0  # 10 units back
    assert [bucket.take(1) for _ in range(10)] == [0.0] * 10
    assert bucket.take(1) == pytest.approx(0.5)


def test_a_take_larger_than_the_bucket_is_capped_at_a_full_bucket():
    t = FakeTime()
    bucket = TokenBucket(100, clock=t.clock, sleep=t.sleep)  # e.g. 100 tokens per minute
    assert bucket.take(500) == 0.0  # a full bucket pays for it (it could never wait to 500)
    waited = bucket.take(500)  # empty now: one full minute to refill, not five
    assert waited == pytest.approx(60.0)


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_a_bucket_needs_a_positive_rate(rate):
    with pytest.raises(ValueError, match="above 0"):
        TokenBucket(rate)


# ---- LMSession: concurrency defaults and settings --------------------------------------------

class Concurrent:
    """A backend that serves calls in parallel and names no max_concurrency of its own."""

    concurrent = True
    model_id = "concurrent-api"

    def complete(self, request: LMRequest) -> LMResponse:
        return LMResponse("label: pos")


class OneAtATime:
    """A backend that serves one call at a time (an in-process model)."""

    model_id = "in-process-model"

    def complete(self, request: LMRequest) -> LMResponse:
        return LMResponse("label: pos")


def test_max_concurrency_defaults_per_backend():
    assert LMSession(ScriptedLM({})).max_concurrency == 1
    assert LMSession(ScriptedLM({}, max_concurrency=8)).max_concurrency == 8
    assert default_concurrency(Concurrent()) == DEFAULT_CONCURRENCY == 8
    assert LMSession(Concurrent()).max_concurrency == 8
    assert LMSession(OneAtATime()).max_concurrency == 1
    assert LMSession(Concurrent(), max_concurrency=32).max_concurrency == 32
    session = LMSession(ScriptedLM({}))
    session.max_concurrency = 4
    assert session.max_concurrency == session.limit.ceiling == session.limit.limit == 4
    session.max_concurrency = None  # back to the backend's default
    assert session.max_concurrency == 1


def test_a_one_at_a_time_backend_refuses_more_than_one_call_in_flight():
    with pytest.raises(ConfigError, match="in-process-model"):
        LMSession(OneAtATime(), max_concurrency=2)
    session = LMSession(OneAtATime())
    with pytest.raises(ConfigError, match="in-process-model"):
        session.max_concurrency = 2
    assert session.max_concurrency == 1
    session.max_concurrency = 1  # one is fine


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "4"])
def test_max_concurrency_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ConfigError, match="max_concurrency"):
        LMSession(Concurrent(), max_concurrency=value)


@pytest.mark.parametrize("name", ["max_rpm", "max_tpm"])
@pytest.mark.parametrize("value", [0, -60, float("inf"), float("nan"), True])
def test_a_rate_quota_must_be_positive(name, value):
    with pytest.raises(ConfigError, match=name):
        LMSession(Concurrent(), **{name: value})


def test_rate_quotas_pace_but_do_not_change_answers():
    lm = ScriptedLM({"x": "label: pos"})
    session = LMSession(lm, max_rpm=6000, max_tpm=10**6)
    assert session.complete(ask()).text == "label: pos"
    assert session.rpm is not None and session.tpm is not None and len(lm.calls) == 1


# ---- LMSession: throttled calls ---------------------------------------------------------------

def throttling_lm(times: int | None, **kw) -> ScriptedLM:
    """A scripted LM whose first ``times`` calls (None: every call) are HTTP 429s."""
    def errors(req: LMRequest) -> BaseException | None:
        if times is None or len(lm.calls) <= times:
            return LMTransientError("429 rate limited", reason="throttled", retry_after=0)
        return None

    lm = ScriptedLM({"x": "label: pos"}, errors=errors, **kw)
    return lm


def test_a_throttled_call_is_retried_beyond_retries_and_succeeds():
    # retries=1 alone would give up after 2 attempts; 4 throttles are retried apart from it
    lm = throttling_lm(4)
    session = LMSession(lm, retries=1, backoff_s=0, throttle_retries=4, fail_fast_after=100)
    assert session.complete(ask()).text == "label: pos"
    assert len(lm.calls) == 5
    assert session.usage.calls == 1 and session.usage.retries == 4 and session.usage.errors == 0


def test_throttling_past_throttle_retries_uses_up_the_retries_then_fails():
    lm = throttling_lm(None)
    session = LMSession(lm, retries=1, backoff_s=0, throttle_retries=3, fail_fast_after=100)
    with pytest.raises(LMTransientError) as info:
        session.complete(ask())
    assert len(lm.calls) == 3 + 1 + 1  # throttle_retries + retries + the first attempt
    assert info.value.reason == "throttled"
    assert "5 attempt(s)" in str(info.value)
    assert session.usage.calls == 0 and session.usage.errors == 1


def test_throttle_retries_plus_retries_is_the_exact_ceiling():
    lm = throttling_lm(3 + 1)  # one throttled attempt more than throttle_retries + retries - 1
    session = LMSession(lm, retries=1, backoff_s=0, throttle_retries=3, fail_fast_after=100)
    assert session.complete(ask()).text == "label: pos"  # the last allowed attempt answers
    assert len(lm.calls) == 5


def test_throttling_lowers_the_sessions_in_flight_limit():
    lm = throttling_lm(1, max_concurrency=8)
    session = LMSession(lm, backoff_s=0)
    assert session.limit.limit == 8
    assert session.complete(ask()).text == "label: pos"
    assert session.limit.limit == 4 and session.limit.decreases == 1
    assert session.max_concurrency == 8  # the ceiling stays what was set
    for i in range(4):  # four successes at limit 4: one more in flight
        session.complete(ask(f"x {i}"))
    assert session.limit.limit == 5


def test_a_session_never_has_more_calls_in_flight_than_max_concurrency():
    lock = threading.Lock()
    state = {"now": 0, "most": 0}
    gate = threading.Event()

    def respond(req: LMRequest) -> str:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            if state["now"] >= 3:
                gate.set()
        gate.wait(BOUND_S)
        with lock:
            state["now"] -= 1
        return "label: pos"

    session = LMSession(ScriptedLM(respond, max_concurrency=3))
    threads = [threading.Thread(target=session.complete, args=(ask(f"x {i}"),))
               for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S)
    assert not any(t.is_alive() for t in threads)
    assert state["most"] == 3 and session.limit.peak == 3 and session.usage.calls == 12


def test_setting_max_concurrency_while_a_call_is_in_flight_keeps_the_count():
    """The call releases the slot of the limit it acquired, not the new one's."""
    inside, go = threading.Event(), threading.Event()

    def respond(req: LMRequest) -> str:
        inside.set()
        go.wait(BOUND_S)
        return "label: pos"

    session = LMSession(ScriptedLM(respond, max_concurrency=2))
    caller = threading.Thread(target=session.complete, args=(ask(),))
    caller.start()
    assert inside.wait(BOUND_S)
    session.max_concurrency = 4  # e.g. a test pass reusing the session (Result.report)
    go.set()
    caller.join(BOUND_S)
    assert not caller.is_alive()
    assert session.limit.in_flight == 0


def test_an_executor_takes_a_backend_not_a_session():
    """executor= runs a backend's calls elsewhere: a session (whose backend would run here all
    the same) is one ConfigError before any call, from optimize and evaluate alike."""
    class Elsewhere:  # an Executor: wrap() gives the LM whose calls run elsewhere
        def wrap(self, lm):
            return lm

    lm = ScriptedLM(HASHED.respond)
    assert on_executor(lm, None) is lm and on_executor(lm, Elsewhere()) is lm
    session = LMSession(lm)
    with pytest.raises(ConfigError, match="not an LMSession"):
        evo.optimize(HASHED.program(), HASHED.train, HASHED.val, lm=session,
                     executor=Elsewhere(), cache=False)
    with pytest.raises(ConfigError, match="not an LMSession"):
        evo.evaluate(HASHED.program(), HASHED.test, lm=session, executor=Elsewhere())
    assert lm.calls == []
