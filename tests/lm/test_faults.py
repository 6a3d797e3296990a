"""Fault injection: a real loopback OpenAI-compatible server whose fault is chosen per request
(5xx, 429 with Retry-After, hangs, empty and garbage bodies, no choices, null content, dropped
connections), driven through the real client (``evo.lm.hosted`` → dspy → HTTP).

Every failure is visible (a failed cell with a message that says what happened), retried, never
cached, and a resumed run asks transient failures again while paying nothing twice. Loopback only;
every wait is bounded (client timeouts of a fraction of a second; a hang lasts until the client
gives up or the server shuts down). Time bounds are generous (2 busy shared cores run these):
a hang lasts far longer than any bound, and the server's hits are counted.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
import time
from collections import deque

import pytest

import evo
from evo.lm import LMError, LMRequest, LMSession, LMUnavailableError, Message, ResponseCache
from evo.lm.base import LMRequestError, LMResponse, LMTransientError
from evo.lm.journal import Journal
from evo.search.evaluate import evaluate_program
from evo.testing.fault_server import LENGTH_TOKENS, FaultServer

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("dspy") is None,
                                 reason="dspy not installed"),
              pytest.mark.usefixtures("offline")]  # the fault server's fixtures: conftest.py

TIMEOUT_S = 0.5  # the client's per-attempt timeout in these tests
HANG_S = 120.0  # a hang: what a client without a timeout would wait (per attempt)
SLOW_S = 30.0  # a generous bound on the wall time of a few bounded attempts on busy cores


def client(srv: FaultServer, **kw: object) -> evo.lm.DSPyLM:
    return evo.lm.hosted("openai/fault", api_base=srv.base, api_key="x",
                         timeout=kw.pop("timeout", TIMEOUT_S), **kw)  # type: ignore[arg-type]


def session(srv: FaultServer, *, retries: int = 0, cache: ResponseCache | None = None,
            **kw: object) -> LMSession:
    s = LMSession(client(srv), retries=retries, backoff_s=0.01, cache=cache,
                  **kw)  # type: ignore[arg-type]
    s.preflight()  # like every run: the first call succeeds, the LM is known to answer
    return s


def ask(text: str) -> LMRequest:
    return LMRequest(messages=(Message("system", "Classify."), Message("user", text)))


# --- one request, one fault ----------------------------------------------------------------

FAULTS = {  # fault -> what the error must say
    "500": r"upstream exploded.*HTTP 500",
    "503": r"upstream exploded.*HTTP 503",
    "garbage": r"HTTP 200, text/html.*not JSON.*<html>",
    "empty_body": r"not JSON",
    "no_choices": r"empty reply from openai/fault at http://127\.0\.0\.1:\d+/v1",
    "null_content": r"empty reply from openai/fault at http://127\.0\.0\.1",
    "empty_content": r"empty reply from openai/fault at http://127\.0\.0\.1",
    "drop": r"(?i)closed|disconnect|connection",
    "hang": r"(?i)timed out|timeout",
    "429": r"slow down",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_a_transient_failure_that_says_what_happened(server, tmp_path, fault):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    # (a throttled try is retried apart from ``retries``: none here, to see the failure)
    s = session(server, cache=cache, max_wait_s=0.05, throttle_retries=0)
    server.queue.append(fault)
    server.hang_s = HANG_S
    t0 = time.perf_counter()
    with pytest.raises(LMTransientError, match=FAULTS[fault]) as info:
        s.complete(ask("item 1 is good stuff"))
    assert time.perf_counter() - t0 < SLOW_S
    assert "call failed after 1 attempt" in str(info.value)
    assert not isinstance(info.value, LMUnavailableError) and s.unavailable is None
    # one request reached the server: neither dspy nor litellm retried on their own
    assert server.asked("item 1 ") == [fault]
    assert len(cache) == 1  # only the preflight's answer: no failure was cached
    assert (s.usage.calls, s.usage.errors) == (1, 1)
    # the server works again: the same request is asked again, answered and cached
    assert s.complete(ask("item 1 is good stuff")).text == "label: pos"
    assert server.asked("item 1 ") == [fault, "ok"] and len(cache) == 2


def test_failed_attempts_are_retried_until_an_answer(server, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    s = session(server, retries=4, cache=cache)
    server.queue.extend(["503", "empty_body", "null_content", "drop"])
    assert s.complete(ask("item 2 is bad stuff")).text == "label: neg"
    assert server.asked("item 2 ") == ["503", "empty_body", "null_content", "drop", "ok"]
    assert (s.usage.calls, s.usage.retries, s.usage.errors) == (2, 4, 0)
    assert s.complete(ask("item 2 is bad stuff")).cached  # the answer, not a failure, is cached


def test_retry_after_is_waited_for_and_capped(server):
    s = session(server, retries=1)
    server.retry_after = "1"
    server.queue.append("429")
    t0 = time.perf_counter()
    assert s.complete(ask("item 3 is good stuff")).text == "label: pos"
    assert time.perf_counter() - t0 >= 0.95  # backoff alone (0.01 s) would not wait this long
    assert server.asked("item 3 ") == ["429", "ok"]

    capped = session(server, retries=1, max_wait_s=0.2)
    server.retry_after = "3600"  # an hour: the cap bounds it
    server.queue.append("429")
    t0 = time.perf_counter()
    assert capped.complete(ask("item 4 is good stuff")).text == "label: pos"
    assert time.perf_counter() - t0 < SLOW_S and server.asked("item 4 ") == ["429", "ok"]


def test_a_hung_endpoint_costs_bounded_time(server):
    s = session(server, retries=1)
    server.queue.extend(["hang", "hang"])
    server.hang_s = HANG_S
    t0 = time.perf_counter()
    with pytest.raises(LMTransientError, match="call failed after 2 attempt"):
        s.complete(ask("item 5 is good stuff"))
    assert time.perf_counter() - t0 < SLOW_S  # each attempt gave up long before the hang ended
    assert server.asked("item 5 ") == ["hang", "hang"]  # one request per attempt
    assert evo.lm.hosted("openai/fault", api_base=server.base).dspy_lm.kwargs["timeout"] == 60
    assert client(server, timeout=7).dspy_lm.kwargs["timeout"] == 7
    with pytest.raises(evo.errors.ConfigError, match="timeout"):
        evo.lm.hosted("openai/fault", api_base=server.base, timeout=-1)


def test_the_litellm_engine_adds_no_retries_and_reads_retry_after(server):
    lm = client(server, engine="litellm")
    s = LMSession(lm, retries=1, backoff_s=0.01)
    s.preflight()
    server.retry_after = "1"
    server.queue.append("429")
    t0 = time.perf_counter()
    assert s.complete(ask("item 6 is good stuff")).text == "label: pos"
    assert time.perf_counter() - t0 >= 0.95 and server.asked("item 6 ") == ["429", "ok"]
    server.queue.extend(["500", "500"])
    with pytest.raises(LMTransientError, match="call failed after 2 attempt"):
        s.complete(ask("item 7 is good stuff"))
    assert server.asked("item 7 ") == ["500", "500"]  # one request per attempt


def test_a_non_json_body_at_preflight_is_unavailable_and_says_why(server):
    server.rule = lambda body: "garbage"
    s = LMSession(client(server), retries=1, backoff_s=0.01)
    with pytest.raises(LMUnavailableError) as info:
        s.preflight()
    msg = str(info.value)
    assert msg.startswith(f"could not reach openai/fault at {server.base}: "), msg
    assert "not JSON" in msg and "text/html" in msg and not msg.endswith(": 0"), msg
    assert msg.count("openai/fault at") == 1, msg


def test_a_custom_lm_returning_no_text_is_a_failure_not_a_zero(tmp_path):
    class Broken:
        model_id = "custom"

        def __init__(self, text: object) -> None:
            self.text, self.calls = text, 0

        def complete(self, request: LMRequest) -> LMResponse:
            self.calls += 1
            return LMResponse(text=self.text)  # type: ignore[arg-type]

    cache = ResponseCache(tmp_path / "cache.sqlite")
    for text, message in ((None, "empty reply from custom"), (42, "text of type int")):
        lm = Broken(text)
        s = LMSession(lm, retries=1, backoff_s=0.0, cache=cache)
        with pytest.raises(LMError, match=message):
            s.complete(ask("x"))
        assert lm.calls == 2 and len(cache) == 0


# --- empty replies that were paid for -------------------------------------------------------

def test_an_empty_reply_that_spent_max_tokens_fails_for_good_and_is_booked(server, tmp_path):
    """A reasoning model that spends all of max_tokens thinking answers nothing (finish reason
    'length') and is billed for it; asking again would get the same. Not retried; its tokens
    are booked in the session's usage and the run's journal; never cached; a resumed run
    replays the failure instead of paying for it again."""
    cache = ResponseCache(tmp_path / "cache.sqlite")
    journal = Journal(tmp_path / "journal.sqlite")
    journal.begin_sitting()
    s = session(server, retries=2, cache=cache)
    s.journal = journal
    before = s.snapshot()
    server.queue.append("length_empty")
    with pytest.raises(LMRequestError, match=r"empty reply from openai/fault at http://127\.0\."
                       r"0\.1:\d+/v1: finish reason 'length' after 64 completion tokens: "
                       r"raise max_tokens"):
        s.complete(ask("item 20 is good stuff"))
    assert server.asked("item 20 ") == ["length_empty"]  # not retried: it would be billed again
    spent = s.snapshot() - before
    assert (spent.calls, spent.retries, spent.errors) == (0, 0, 1)
    assert (spent.prompt_tokens, spent.completion_tokens) == (5, LENGTH_TOKENS)
    assert len(cache) == 1  # the preflight's answer only
    booked = journal.ledger()[0]
    assert (booked["failed"], booked["completion_tokens"]) == (1, LENGTH_TOKENS)
    # the resumed run meets the same failure from the journal and pays nothing
    again = session(server, retries=2)
    again.journal = journal
    with pytest.raises(LMError, match="raise max_tokens"):
        again.complete(ask("item 20 is good stuff"))
    assert server.asked("item 20 ") == ["length_empty"]


def test_empty_replies_are_retried_and_each_attempt_is_booked(server):
    """No content and no completion tokens (a glitch): transient, retried, and the prompt
    tokens every attempt was billed for are in the ledger."""
    s = session(server, retries=2)
    before = s.snapshot()
    server.queue.extend(["null_content", "no_choices", "empty_content"])
    with pytest.raises(LMTransientError, match="after 3 attempt.*empty reply") as info:
        s.complete(ask("item 21 is good stuff"))
    assert info.value.reason == "empty reply"
    assert server.asked("item 21 ") == ["null_content", "no_choices", "empty_content"]
    spent = s.snapshot() - before
    assert (spent.calls, spent.retries, spent.errors) == (0, 2, 1)
    assert (spent.prompt_tokens, spent.completion_tokens) == (3 * 5, 0)


# --- the cache key names the server, the journal key does not --------------------------------

def test_two_servers_under_one_model_name_do_not_share_answers(server, server_b, tmp_path):
    server.tag, server_b.tag, server_b.name = True, True, "B"
    cache = ResponseCache(tmp_path / "cache.sqlite")
    a = session(server, cache=cache).complete(ask("item 8 is good stuff"))
    b = session(server_b, cache=cache).complete(ask("item 8 is good stuff"))
    assert (a.text, b.text, b.cached) == ("label: pos [A]", "label: pos [B]", False)
    again = session(server_b, cache=cache).complete(ask("item 8 is good stuff"))
    assert (again.text, again.cached) == ("label: pos [B]", True)
    # a backend without a URL (a local model file) keeps the key older caches were written with
    local = LMSession(evo.lm.ScriptedLM({}, model_id="m.gguf:1", endpoint="/models/m.gguf"))
    assert local.cache_scope is None
    assert session(server).cache_scope == server.base


# --- the session with a run's journal --------------------------------------------------------

def test_transient_failures_are_journaled_but_not_replayed(server, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    journal.begin_sitting()
    s = session(server)
    s.journal = journal
    server.queue.append("503")
    with pytest.raises(LMTransientError):
        s.complete(ask("item 9 is good stuff"))
    assert journal.ledger()[0]["failed"] == 1  # visible in the run's ledger
    # the next sitting asks it again, and its answer takes the failure's place
    s2 = session(server)
    s2.journal = journal
    assert s2.complete(ask("item 9 is good stuff")).text == "label: pos"
    assert server.asked("item 9 ") == ["503", "ok"] and len(journal) == 1
    assert s2.complete(ask("item 9 is good stuff")).cached  # now replayed from the journal
    # a request error (the prompt is too long) is still journaled for good and replayed
    key = ask("long").key("openai/fault")
    journal.fail(key, "context window exceeded")
    with pytest.raises(LMError, match="context window"):
        s2.complete(ask("long"))
    assert server.asked("long") == []
    # and the journal's unique key still proves nothing is paid twice
    with pytest.raises(sqlite3.IntegrityError):
        journal.put(key, LMResponse("late"), source="paid")


# --- a response cache another process holds locked -------------------------------------------

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin (or 20 s pass)
"""


def test_a_locked_cache_costs_seconds_not_minutes(tmp_path):
    path = tmp_path / "cache.sqlite"
    ResponseCache(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        lm = evo.lm.ScriptedLM({"": "fine"})
        s = LMSession(lm, cache=ResponseCache(path))
        t0 = time.perf_counter()
        with pytest.warns(RuntimeWarning, match="locked by another process") as caught:
            for i in range(5):
                assert s.complete(ask(f"q{i}")).text == "fine"
        assert time.perf_counter() - t0 < 8  # one short busy wait, then writes are skipped
        assert len([w for w in caught if "locked" in str(w.message)]) == 1
        assert (s.usage.calls, s.usage.errors) == (5, 0)
    finally:
        holder.communicate(timeout=20)
    assert LMSession(lm, cache=ResponseCache(path)).complete(ask("q0")).text == "fine"


# --- end to end: evaluate and a resumed search -----------------------------------------------

def examples(ids: range) -> list[evo.Example]:
    return [evo.Example(inputs={"text": f"item {i} is {'good' if i % 2 else 'bad'} stuff"},
                        outputs={"label": "pos" if i % 2 else "neg"}) for i in ids]


def program() -> evo.Program:
    return evo.Program(signature="text -> label", labels=("pos", "neg"))


def test_evaluate_records_failures_retries_and_caches_only_answers(server, tmp_path):
    """Item 11 fails for good (503 every time), 12 is throttled once (Retry-After), 13 gets an
    empty reply once, 14 a garbage body once: one failed cell, the rest right."""
    script = {"item 12 ": deque(["429"]), "item 13 ": deque(["empty_content"]),
              "item 14 ": deque(["garbage"])}

    def rule(body: dict) -> str | None:
        last = str(body["messages"][-1]["content"])
        if "item 11 " in last:
            return "503"
        return next((q.popleft() for k, q in script.items() if k in last and q), None)

    server.rule, server.retry_after = rule, "0.3"
    cache = ResponseCache(tmp_path / "cache.sqlite")
    s = session(server, retries=2, cache=cache)
    data = examples(range(10, 16))
    scores, cells = evaluate_program(program(), data, s, evo.metrics.exact_match)
    failed = [c for c in cells if c.error]
    assert len(failed) == 1 and "upstream exploded" in failed[0].error
    assert "call failed after 3 attempt" in failed[0].error
    assert scores.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert server.asked("item 11 ") == ["503"] * 3
    assert server.asked("item 12 ") == ["429", "ok"]
    assert len(cache) == 1 + 5  # the preflight and five answers; no failure
    # a later run with the endpoint fixed asks only the failed request again
    server.rule = None
    again = session(server, retries=0, cache=cache)
    scores, _ = evaluate_program(program(), data, again, evo.metrics.exact_match)
    assert scores.tolist() == [1.0] * 6 and again.usage.calls == 1  # item 11; the rest cached
    assert server.asked("item 11 ") == ["503"] * 3 + ["ok"]


def test_a_resumed_search_asks_transient_failures_again_and_pays_nothing_twice(
        server, server_b, tmp_path):
    """A search whose LM throttles and fails some requests for good in its first sitting; the
    resume, against the same model at another address (``--resume --api-base``), replays every
    answer, asks the transient failures again and pays for no answered request twice."""
    failing = ("item 103 ", "item 105 ")
    server.rule = lambda body: "503" if any(
        k in str(body["messages"][-1]["content"]) for k in failing) else None
    opt = evo.Evolution(budget=evo.Budget(metric_calls=40), knn=False, encoder="hashing")
    train, val = examples(range(0, 8)), examples(range(100, 108))

    def search(srv: FaultServer) -> evo.Result:
        lm = LMSession(client(srv), retries=1, backoff_s=0.01)
        return evo.optimize(program(), train, val, lm=lm, optimizer=opt, cache=False,
                            run_dir=tmp_path / "run")

    first = search(server)
    errors = json.loads((tmp_path / "run" / "result.json").read_text())["cell_errors"]
    assert errors and all("upstream exploded" in str(e) for e in errors)
    answered_first = {text for f, text in server.hits if f == "ok"}
    ledger = Journal(tmp_path / "run" / "journal.sqlite").ledger()
    assert ledger[0]["failed"] >= 1 and ledger[0]["paid"] == first.sittings[0]["paid"]

    second = search(server_b)  # the endpoint moved and works now
    asked_again = [text for _, text in server_b.hits
                   if "Reply with the single word" not in text]
    assert any(k in t for t in asked_again for k in failing)  # the failures were asked again
    assert not set(asked_again) & answered_first  # nothing answered before was paid again
    assert second.usage.replayed > 0
    assert not json.loads((tmp_path / "run" / "result.json").read_text())["cell_errors"]
