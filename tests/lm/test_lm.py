"""Fast tests of the LM layer: cache, session (retries, fail-fast, ledger, preflight), scripted LM.

The hosted-unreachable test needs dspy (skipped without it) but no network: it targets a closed
local port.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from evo.lm import (
    LMError,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMSession,
    LMTransientError,
    LMUnavailableError,
    Message,
    ResponseCache,
    ScriptedLM,
    Usage,
    default_cache_path,
)


def req(text: str, purpose: str = "task", **kw: object) -> LMRequest:
    return LMRequest(messages=(Message("system", "Be brief."), Message("user", text)),
                     purpose=purpose, **kw)  # type: ignore[arg-type]


def test_package_exports_are_light_and_callable() -> None:
    import subprocess
    import sys

    code = ("import sys, evo.lm.local, evo.lm.hosted, evo.lm as L; "
            "m = sys.modules; assert L.local is m['evo.lm.local'].local; "
            "assert L.hosted is m['evo.lm.hosted'].hosted; "
            "assert callable(L.local) and callable(L.hosted) and callable(L.from_dspy); "
            "assert 'llama_cpp' not in sys.modules and 'dspy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- cache ---------------------------------------------------------------------------------

def test_cache_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    r = req("hello")
    with ResponseCache(path) as cache:
        assert cache.get("k") is None
        cache.put("k", LMResponse("hi", prompt_tokens=3, completion_tokens=1, seconds=1.5),
                  model_id="m", request=r)
        assert len(cache) == 1
    reopened = ResponseCache(path)
    got = reopened.get("k")
    assert got == LMResponse("hi", prompt_tokens=3, completion_tokens=1, seconds=0.0, cached=True)
    assert "k" in reopened and "other" not in reopened
    reopened.close()


def test_default_cache_path_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVO_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "lm-cache.sqlite"
    monkeypatch.delenv("EVO_CACHE_DIR")
    assert default_cache_path() == Path.home() / ".cache" / "evo" / "lm-cache.sqlite"


def _write_many(path: str, prefix: str, n: int) -> None:
    cache = ResponseCache(path)
    r = req(prefix)
    for i in range(n):
        cache.put(f"{prefix}-{i}", LMResponse(f"{prefix} answer {i}", prompt_tokens=i),
                  model_id="m", request=r)
    cache.close()


def test_cache_concurrent_writers_threads_and_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path).close()  # create it (and switch to WAL) before the race
    n = 150
    ctx = mp.get_context("spawn")  # fresh interpreters: real separate SQLite connections
    procs = [ctx.Process(target=_write_many, args=(path, f"proc{j}", n)) for j in range(2)]
    for p in procs:
        p.start()
    shared = ResponseCache(path)  # one object shared by threads, as the session uses it

    def write(j: int) -> None:
        for i in range(n):
            shared.put(f"thr{j}-{i}", LMResponse(f"thr{j} answer {i}", prompt_tokens=i),
                       model_id="m", request=req("t"))

    threads = [threading.Thread(target=write, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(shared) == 6 * n
    for who in ("proc0", "proc1", "thr0", "thr3"):
        got = shared.get(f"{who}-{n - 1}")
        assert got is not None and got.text == f"{who} answer {n - 1}"
        assert got.prompt_tokens == n - 1
    shared.close()


def test_cache_survives_fork(tmp_path: Path) -> None:
    """A cache object inherited through fork reopens its connection instead of sharing it."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    cache = ResponseCache(tmp_path / "f.sqlite")
    cache.put("parent", LMResponse("p"), model_id="m", request=req("x"))
    child = mp.get_context("fork").Process(
        target=lambda: cache.put("child", LMResponse("c"), model_id="m", request=req("y")))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert cache.get("child") is not None and cache.get("parent") is not None
    cache.close()


# --- session -------------------------------------------------------------------------------

def failing_first(n: int, exc: type[Exception] = ConnectionError) -> ScriptedLM:
    """A scripted LM whose first ``n`` calls raise ``exc``."""
    lm = ScriptedLM({"": "ok"})
    lm.errors = lambda r: exc("boom") if len(lm.calls) <= n else None
    return lm


def test_session_caches_and_counts(tmp_path: Path) -> None:
    lm = ScriptedLM({"capital of France": "Paris", "2+2": "4"})
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        s = LMSession(lm, cache=cache)
        a = s.complete(req("What is the capital of France?"))
        assert (a.text, a.cached) == ("Paris", False)
        start = s.snapshot()
        b = s.complete(req("What is the capital of France?", purpose="reflection"))  # same key
        c = s.complete(req("2+2=?", purpose="reflection"))
        assert (b.text, b.cached, b.seconds) == ("Paris", True, 0.0) and c.text == "4"
        assert len(lm.calls) == 2
        u = s.usage
        assert (u.calls, u.cache_hits, u.requests, u.errors) == (2, 1, 3, 0)
        assert u.by_purpose == {"task": 1, "reflection": 1}
        assert u.prompt_tokens == 2 + 6 + 2 + 1 and u.completion_tokens == 2
        delta = u - start
        assert (delta.calls, delta.cache_hits, delta.by_purpose) == (1, 1, {"reflection": 1})
        assert delta.to_dict()["requests"] == 2 and (start + delta).to_dict() == u.to_dict()
        # A new session on the same cache (a re-run) pays nothing.
        s2 = LMSession(ScriptedLM({}), cache=cache)
        assert s2.complete(req("2+2=?")).text == "4" and s2.usage.calls == 0


def test_empty_reply_is_a_failed_attempt_never_cached(tmp_path: Path) -> None:
    lm = ScriptedLM({})  # answers "" to everything
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        s = LMSession(lm, cache=cache, retries=1, backoff_s=0.0)
        with pytest.raises(LMError, match="empty reply from scripted"):
            s.complete(req("anything"))
        assert len(lm.calls) == 2 and len(cache) == 0  # retried, nothing stored
        assert (s.usage.calls, s.usage.errors, s.usage.retries) == (0, 1, 1)
        lm.default = "fixed"  # the endpoint answers again: the next run asks, not replays
        assert LMSession(lm, cache=cache).complete(req("anything")).text == "fixed"


def test_an_empty_reply_the_model_spent_tokens_on_fails_for_good(tmp_path: Path) -> None:
    """Any backend: an empty reply with a finish reason and completion tokens was paid for and
    would come back the same: one attempt, its tokens booked, nothing cached."""
    class Thinker:
        model_id = "thinker"

        def __init__(self, finish: str | None, completion: int) -> None:
            self.finish, self.completion, self.calls = finish, completion, 0

        def complete(self, request: LMRequest) -> LMResponse:
            self.calls += 1
            return LMResponse("", prompt_tokens=7, completion_tokens=self.completion,
                              finish_reason=self.finish)

    with ResponseCache(tmp_path / "c.sqlite") as cache:
        for finish, advice in (("length", "raise max_tokens"), ("stop", "answer nothing"),
                               ("content_filter", "content filter")):
            lm = Thinker(finish, 30)
            s = LMSession(lm, cache=cache, retries=2, backoff_s=0.0)
            with pytest.raises(LMRequestError, match=f"empty reply from thinker: finish reason "
                               f"'{finish}' after 30 completion tokens: .*{advice}"):
                s.complete(req("think hard"))
            assert lm.calls == 1 and len(cache) == 0
            assert (s.usage.prompt_tokens, s.usage.completion_tokens) == (7, 30)
        lm = Thinker("length", 0)  # nothing generated: a glitch, asked again
        s = LMSession(lm, cache=cache, retries=2, backoff_s=0.0)
        with pytest.raises(LMTransientError, match="empty reply from thinker"):
            s.complete(req("think hard"))
        assert lm.calls == 3 and s.usage.prompt_tokens == 3 * 7


def test_cache_write_failure_keeps_the_answer(tmp_path: Path) -> None:
    class BrokenCache(ResponseCache):
        def put(self, *args: object, **kw: object) -> None:
            raise OSError("disk full")

    s = LMSession(ScriptedLM({"": "fine"}), cache=BrokenCache(tmp_path / "c.sqlite"))
    with pytest.warns(RuntimeWarning, match="disk full"):
        assert s.complete(req("q")).text == "fine"
    assert (s.usage.calls, s.usage.errors) == (1, 0)


def test_session_retries_then_succeeds() -> None:
    lm = failing_first(2)
    s = LMSession(lm, retries=2, backoff_s=0.0)
    assert s.complete(req("hi")).text == "ok"
    assert len(lm.calls) == 3
    assert (s.usage.calls, s.usage.retries, s.usage.errors) == (1, 2, 0)


def test_session_gives_up_with_chained_cause() -> None:
    lm = failing_first(10, TimeoutError)
    s = LMSession(lm, retries=1, backoff_s=0.0)
    with pytest.raises(LMError) as info:
        s.complete(req("hi"))
    assert not isinstance(info.value, LMUnavailableError)
    assert isinstance(info.value.__cause__, TimeoutError) and "2 attempt" in str(info.value)
    assert (s.usage.calls, s.usage.retries, s.usage.errors) == (0, 1, 1)


def test_session_fails_fast_when_never_succeeded() -> None:
    lm = ScriptedLM({}, model_id="m1", errors=lambda r: OSError("host down"))
    s = LMSession(lm, retries=0, backoff_s=0.0, fail_fast_after=3)
    for i in range(2):
        with pytest.raises(LMError) as info:
            s.complete(req(f"q{i}"))
        assert not isinstance(info.value, LMUnavailableError)
    with pytest.raises(LMUnavailableError, match=r"m1 .*3 consecutive.*host down"):
        s.complete(req("q2"))
    with pytest.raises(LMUnavailableError):  # sticky: later calls do not hit the backend
        s.complete(req("q3"))
    assert len(lm.calls) == 3


def test_failures_after_a_success_do_not_fail_fast() -> None:
    lm = ScriptedLM({}, default="ok",
                    errors=lambda r: OSError("flaky") if "bad" in r.messages[-1].content
                    else None)
    s = LMSession(lm, retries=0, backoff_s=0.0, fail_fast_after=2)
    s.complete(req("good"))
    for i in range(5):
        with pytest.raises(LMError) as info:
            s.complete(req(f"bad {i}"))
        assert not isinstance(info.value, LMUnavailableError)
    assert s.usage.errors == 5


def test_backend_unavailable_is_not_retried() -> None:
    lm = ScriptedLM({}, errors=lambda r: LMUnavailableError("no model file"))
    s = LMSession(lm, retries=5, backoff_s=10.0)
    with pytest.raises(LMUnavailableError, match="no model file"):
        s.complete(req("hi"))
    assert len(lm.calls) == 1 and s.usage.retries == 0


def test_identical_concurrent_requests_are_paid_once(tmp_path: Path) -> None:
    lm = ScriptedLM({"": "x"}, delay_s=0.2)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        s = LMSession(lm, cache=cache)
        out: list[LMResponse] = []
        threads = [threading.Thread(target=lambda: out.append(s.complete(req("same"))))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.text for r in out] == ["x"] * 6 and len(lm.calls) == 1
        assert (s.usage.calls, s.usage.cache_hits) == (1, 5)


def test_preflight_ok_and_error_message() -> None:
    ok = LMSession(ScriptedLM({"OK": "OK"}))
    ok.preflight()
    assert ok.usage.by_purpose == {"preflight": 1}

    down = ScriptedLM({}, model_id="openai/x", endpoint="http://127.0.0.1:9/v1",
                      errors=lambda r: ConnectionRefusedError("Connection refused"))
    s = LMSession(down, retries=1, backoff_s=0.0)
    with pytest.raises(LMUnavailableError) as info:
        s.preflight()
    assert str(info.value) == (
        "could not reach openai/x at http://127.0.0.1:9/v1: Connection refused")


def test_scripted_lm_callable_and_fail_every() -> None:
    lm = ScriptedLM(lambda r: r.messages[-1].content.upper(), fail_every=2)
    assert lm.complete(req("a b")).text == "A B"
    with pytest.raises(LMError):
        lm.complete(req("c"))
    r = lm.complete(req("d e f"))
    assert (r.text, r.prompt_tokens, r.completion_tokens) == ("D E F", 5, 3)
    assert len(lm.calls) == 3


def test_usage_arithmetic() -> None:
    a = Usage(calls=3, cache_hits=2, lm_seconds=1.5, by_purpose={"task": 3})
    b = Usage(calls=1, lm_seconds=0.5, by_purpose={"task": 1})
    d = a - b
    assert (d.calls, d.cache_hits, d.lm_seconds, d.by_purpose, d.requests) == (2, 2, 1.0,
                                                                               {"task": 2}, 4)
    c = a.copy()
    c.by_purpose["task"] = 99
    assert a.by_purpose == {"task": 3}


# --- hosted --------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("dspy") is None, reason="dspy not installed")
def test_hosted_unreachable_preflight_is_quick_and_clear() -> None:
    from evo.lm import hosted

    lm = hosted("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="x")
    assert lm.model_id == "openai/gpt-4o-mini"
    s = LMSession(lm)
    t0 = time.perf_counter()
    with pytest.raises(LMUnavailableError) as info:
        s.preflight()
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert msg.startswith("could not reach openai/gpt-4o-mini at http://127.0.0.1:9/v1: "), msg
    assert "connect" in msg.lower(), msg


@pytest.mark.skipif(importlib.util.find_spec("dspy") is None, reason="dspy not installed")
def test_hosted_against_a_fake_openai_server() -> None:
    """DSPyLM sends messages and knobs, reads text and usage, and leaves caching to the session."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import dspy

    from evo.lm import from_dspy, hosted

    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "positive"}}],
                     "usage": {"prompt_tokens": 17, "completion_tokens": 1, "total_tokens": 18}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        lm = hosted("openai/fake-model", api_base=base, api_key="x")
        assert lm.endpoint == base
        s = LMSession(lm)
        ask = LMRequest(messages=(Message("system", "Classify."), Message("user", "great!")),
                        max_tokens=7, temperature=0.0, stop=("\n",))
        r = s.complete(ask)
        assert (r.text, r.prompt_tokens, r.completion_tokens) == ("positive", 17, 1)
        s2 = LMSession(lm)  # a fresh session, no evo cache: only dspy's cache could answer
        s2.complete(ask)
        assert len(bodies) == 2  # no dspy cache underneath: both calls reached the server
        sent = bodies[0]
        assert sent["messages"][-1]["content"] == "great!" and "Classify." in json.dumps(sent)
        assert sent["temperature"] == 0.0 and 7 in (sent.get("max_tokens"),
                                                    sent.get("max_completion_tokens"))
        wrapped = from_dspy(dspy.LM("openai/fake-model", api_base=base, api_key="x"))
        assert wrapped.complete(req("hi")).text == "positive"
        assert wrapped.dspy_lm.cache is False
    finally:
        server.shutdown()


@pytest.mark.parametrize("counts", [dict(prompt_tokens=float("nan")), dict(completion_tokens=-1),
                                    dict(prompt_tokens="12"), dict(seconds=float("inf"))])
def test_a_backend_reporting_nonsense_usage_is_a_failed_call(tmp_path, counts):
    """Token counts that are not whole numbers >= 0 (a custom LM's NaN) would break the ledger
    and the journal: the reply is a failed call saying so, never booked, cached or journaled."""
    from evo.lm.journal import Journal

    class Odd:
        model_id = "odd"

        def complete(self, request):
            return LMResponse(text="label: pos", **counts)

    s = LMSession(Odd(), retries=0, cache=ResponseCache(tmp_path / "c.sqlite"))
    s.journal = Journal(tmp_path / "journal.sqlite")
    with pytest.raises(LMError, match="counts must be whole numbers"):
        s.complete(req("q"))
    assert len(s.cache) == 0 and s.usage.calls == 0


def test_a_replayed_request_error_is_still_a_request_error(tmp_path):
    """A request that failed by its own fault (context overflow, a reply cut at max_tokens) is
    replayed on resume as the same kind of failure, so its cell is counted the same."""
    from evo.lm.base import LMRequestError
    from evo.lm.journal import Journal

    class TooLong:
        model_id = "m"

        def complete(self, request):
            raise LMRequestError("m: prompt longer than the context window")

    first = LMSession(TooLong(), retries=0)
    first.journal = Journal(tmp_path / "journal.sqlite")
    with pytest.raises(LMRequestError):
        first.complete(req("q"))
    first.journal.close()
    again = LMSession(ScriptedLM({"": "never asked"}, model_id="m"), retries=0)
    again.journal = Journal(tmp_path / "journal.sqlite")
    with pytest.raises(LMRequestError, match="context window"):
        again.complete(req("q"))
    assert again.lm.calls == []


def test_a_hosted_lm_makes_dspy_read_its_bundled_price_table(monkeypatch):
    """dspy fetches a price table from the network on start (5 s at most, a warning line when
    offline) unless told not to: evo keeps its own ledger and tells it, unless the user chose."""
    pytest.importorskip("dspy")
    import os

    from evo.lm import hosted

    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    hosted("openai/x", api_base="http://127.0.0.1:9/v1", api_key="x")
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "False")
    hosted("openai/x", api_base="http://127.0.0.1:9/v1", api_key="x")
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"
