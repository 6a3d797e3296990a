"""The loopback latency server (evo.testing.latency_server): answers evo's hosted client and DSPy
in their formats, deterministically; serves in parallel; throttles above max_inflight with 429 +
Retry-After; counts; runs as its own process. Counts only, no timed assertion: where a test needs
requests in flight together, the server's ``respond`` waits on a barrier or a gate."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import evo
from evo.data import Example
from evo.lm import LMRequest, LMSession, Message
from evo.program import Program
from evo.testing.latency_server import LatencyServer, default_respond, main, make_respond, serving

needs_dspy = pytest.mark.skipif(importlib.util.find_spec("dspy") is None,
                                reason="dspy not installed")
BOUND_S = 20.0  # a generous bound on any wait here (never reached when things work)


def post(base: str, messages: list[dict], **extra: object
         ) -> tuple[int, dict, dict[str, str]]:
    """One raw chat request: (status, body, headers)."""
    data = json.dumps({"model": "m", "messages": messages, **extra}).encode()
    req = urllib.request.Request(base + "/chat/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=BOUND_S) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "Classify."}, {"role": "user", "content": text}]


def until(condition) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it holds (a bound, not a timing: it fails only if it never does)."""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.01)


def in_threads(fn, args: list) -> list:  # type: ignore[no-untyped-def]
    out: list = [None] * len(args)

    def run(i: int) -> None:
        out[i] = fn(args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S)
    assert not any(t.is_alive() for t in threads)
    return out


@needs_dspy
@pytest.mark.usefixtures("offline")
def test_evo_hosted_client_gets_stable_answers_and_passes_preflight() -> None:
    with serving(latency_s=0.05) as srv:
        session = LMSession(evo.lm.hosted("openai/m", api_base=srv.base, api_key="x"))
        session.preflight()  # "Reply with the single word: OK" -> OK
        ask = [LMRequest((Message("system", "Classify."), Message("user", f"text {i}")))
               for i in range(6)]
        first = [session.complete(r).text for r in ask]
        again = [session.complete(r).text for r in ask]  # no cache: asked again, same answers
        assert first == again
        assert set(first) <= {"pos", "neg", "neutral"} and len(set(first)) > 1
        stats = srv.stats()
        assert stats["served"] == stats["requests"] == 1 + 12
        assert stats["throttled"] == 0 and len(stats["spans"]) == 13
        assert session.usage.prompt_tokens > 0 and session.usage.completion_tokens >= 13


def test_replies_follow_an_evo_program_format() -> None:
    program = Program(signature="text -> label", labels=["alpha", "beta", "gamma"])
    answers = set()
    for i in range(8):
        example = Example(inputs={"text": f"t{i}"}, outputs={"label": "alpha"})
        msgs = [{"role": m.role, "content": m.content} for m in program.messages(example)]
        text = default_respond(msgs)
        assert text == default_respond(msgs)
        answers.add(program.parse(text).outputs["label"])  # type: ignore[index]
    assert answers <= {"alpha", "beta", "gamma"} and len(answers) > 1


def test_whole_prompt_answers_depend_on_the_instruction() -> None:
    last_only, whole = make_respond(), make_respond(whole_prompt=True)
    prompts = [[{"role": "system", "content": f"Instruction {i}."},
                {"role": "user", "content": "same question"}] for i in range(8)]
    assert len({last_only(p) for p in prompts}) == 1
    assert len({whole(p) for p in prompts}) > 1


@needs_dspy
@pytest.mark.usefixtures("offline")
def test_dspy_parses_the_replies_at_the_first_call() -> None:
    import dspy

    with serving(latency_s=0.0) as srv:
        lm = dspy.LM("openai/m", api_base=srv.base, api_key="x", cache=False)
        with dspy.context(lm=lm):
            pred = dspy.Predict("question -> label")(question="What is X?")
            cot = dspy.ChainOfThought("question -> answer")(question="Why?")
        assert pred.label in ("pos", "neg", "neutral") and cot.reasoning and cot.answer
        assert srv.stats()["served"] == 2  # no JSON-adapter fallback: one call each


@needs_dspy
@pytest.mark.usefixtures("offline")
def test_parallel_requests_are_served_together() -> None:
    together = threading.Barrier(8, timeout=BOUND_S)  # breaks unless 8 are in flight at once
    respond = make_respond()

    def answer_when_all_in(messages: list[dict]) -> str:
        if "single word" not in str(messages):
            together.wait()
        return respond(messages)

    with serving(latency_s=0.05, respond=answer_when_all_in) as srv:
        lm = evo.lm.hosted("openai/m", api_base=srv.base, api_key="x")
        LMSession(lm).preflight()
        texts = in_threads(lambda i: lm.complete(LMRequest((Message("user", f"q{i}"),))).text,
                           list(range(8)))
        assert texts == [respond([{"role": "user", "content": f"q{i}"}]) for i in range(8)]
        stats = srv.stats()
        assert stats["peak_inflight"] == 8 and stats["served"] == 9 and stats["inflight"] == 0


def test_requests_above_max_inflight_get_429_with_retry_after() -> None:
    gate = threading.Event()

    def held(messages: list[dict]) -> str:
        gate.wait(BOUND_S)
        return "OK"

    with serving(latency_s=0.0, max_inflight=2, retry_after="0.3", respond=held) as srv:
        results: list[tuple[int, dict, dict[str, str]]] = []
        admitted = [threading.Thread(target=lambda: results.append(post(srv.base, user("a"))))
                    for _ in range(2)]
        for t in admitted:
            t.start()
        until(lambda: srv.stats()["inflight"] == 2)  # both held at the gate
        refused = in_threads(lambda i: post(srv.base, user(f"b{i}")), list(range(4)))
        gate.set()
        for t in admitted:
            t.join(BOUND_S)
        for status, body, headers in refused:
            assert status == 429 and headers["Retry-After"] == "0.3"
            assert body["error"]["type"] == "rate_limit_exceeded"
        assert [r[0] for r in results] == [200, 200]
        stats = srv.stats()
        assert (stats["requests"], stats["served"], stats["throttled"]) == (6, 2, 4)
        assert stats["peak_inflight"] == 2


def test_reset_clears_the_counters_and_reseeds_the_jitter() -> None:
    srv = LatencyServer(latency_s=0.1, jitter_s=0.2, seed=7)
    try:
        drawn = [srv.admit() for _ in range(5)]
        assert all(0.1 <= d <= 0.3 for d in drawn) and len(set(drawn)) == 5  # type: ignore[operator]
        srv.reset()
        assert srv.stats() == {"requests": 0, "served": 0, "throttled": 0, "bad": 0,
                               "inflight": 0, "peak_inflight": 0, "spans": [], "busy_s": 0.0,
                               "mean_concurrency": 0.0}
        assert [srv.admit() for _ in range(5)] == drawn  # the same seed, the same latencies
        other = LatencyServer(latency_s=0.1, jitter_s=0.2, seed=8)
        assert [other.admit() for _ in range(5)] != drawn
        other.server_close()
    finally:
        srv.server_close()


def test_models_stats_reset_routes_and_a_bad_body() -> None:
    with serving(latency_s=0.0, model="tiny") as srv:
        with urllib.request.urlopen(srv.base + "/models", timeout=BOUND_S) as r:
            assert json.loads(r.read())["data"][0]["id"] == "tiny"
        status, body, _ = post(srv.base, user("x"), max_tokens=1)
        assert status == 200 and body["usage"]["prompt_tokens"] == 2  # "Classify." "x"
        bad = urllib.request.Request(srv.base + "/chat/completions", data=b"not json")
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(bad, timeout=BOUND_S)
        with urllib.request.urlopen(srv.base + "/stats", timeout=BOUND_S) as r:
            stats = json.loads(r.read())
        assert (stats["requests"], stats["served"], stats["bad"]) == (2, 1, 1)
        urllib.request.urlopen(urllib.request.Request(srv.base + "/reset", data=b""),
                               timeout=BOUND_S).read()
        assert srv.stats()["requests"] == 0


def test_closing_ends_a_sleeping_request() -> None:
    with serving(latency_s=600.0) as srv:
        client = threading.Thread(target=lambda: post(srv.base, user("x")), daemon=True)
        client.start()
        until(lambda: srv.stats()["inflight"] == 1)
    client.join(BOUND_S)  # not 600 s: closing woke the handler
    assert not client.is_alive()
    assert srv.stats()["served"] == 0


def test_main_exits_after_max_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    handler = signal.getsignal(signal.SIGINT)
    assert main(["--latency", "0", "--max-seconds", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("http://127.0.0.1:") and out.strip().endswith("/v1")
    assert json.loads(err)["requests"] == 0
    assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_command_line_serves_until_sigterm() -> None:
    root = Path(__file__).parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "evo.testing.latency_server", "--latency",
                             "0.05", "--max-seconds", "60"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(BOUND_S * 2, proc.kill)  # a hung process cannot hang the suite
    killer.start()
    try:
        base = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1")
        status, body, _ = post(base, user("hello"))
        assert status == 200 and body["choices"][0]["message"]["content"] == \
            default_respond(user("hello"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=BOUND_S)
        assert proc.returncode == 0
        assert json.loads(err.strip().splitlines()[-1])["served"] == 1
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
