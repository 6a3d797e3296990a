"""A loopback OpenAI-compatible chat server that answers after a set latency, serving requests in
parallel: what a hosted model looks like to a client, without the model. For the concurrency tests
and the benchmarks (issue 16). Binds 127.0.0.1 only; standard library only.

- ``POST /v1/chat/completions`` answers ``respond(messages)`` after ``latency_s`` plus a seeded
  uniform jitter in ``[0, jitter_s]``; ``GET /v1/models`` lists the one model.
- ``max_inflight``: a request that arrives while ``max_inflight`` requests are being served gets
  HTTP 429 at once, with ``Retry-After`` and an OpenAI-style error body (so no more than
  ``max_inflight`` are ever in flight).
- Counters (:meth:`LatencyServer.stats`, also at ``GET /v1/stats``; :meth:`~LatencyServer.reset`,
  also ``POST /v1/reset``): arrivals, served, throttled, peak in-flight, and the ``(start, end)``
  :func:`time.monotonic` times of each served request (the same clock in every process on Linux).

>>> with serving(latency_s=0.0) as srv:
...     import urllib.request
...     _ = urllib.request.urlopen(srv.base + "/models").read()
...     srv.stats()["requests"]
0

In its own process (its CPU then does not count as the client's)::

    python -m evo.testing.latency_server --latency 0.5 --max-inflight 16
    # prints http://127.0.0.1:PORT/v1, serves until SIGTERM / SIGINT or --max-seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[list[dict]], str]

DEFAULT_LABELS = ("pos", "neg", "neutral")
# phrases a proposal reply is built from (a hash picks three, so proposals differ by prompt)
_PHRASES = ("Read the whole input before answering.", "Prefer the most specific answer.",
            "Ignore words that do not change the meaning.", "Answer in the requested format.",
            "Look for the key noun of the question.", "Decide from the main verb.",
            "When two answers fit, pick the narrower one.", "Do not explain the answer.")


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _pick(options: Sequence[str], *key: str) -> str:
    return options[_digest(*key) % len(options)]


def _content(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _dspy_reply(last: str, key: str, labels: Sequence[str]) -> str | None:
    """A reply in DSPy's ChatAdapter format, when the prompt asks for one (so dspy parses it at
    the first try and never falls back to a second, JSON-adapter call)."""
    asked = re.search(r"Respond with the corresponding output fields, (.*)", last, re.DOTALL)
    if asked is None:
        return None
    parts = []
    for name, literal in re.findall(r"`\[\[ ## (\w+) ## \]\]`(?: \(must be formatted as a "
                                    r"valid Python Literal\[([^\]]*)\]\))?", asked.group(1)):
        if name == "completed":
            continue
        options = re.findall(r"'([^']*)'|\"([^\"]*)\"", literal)
        choices = [a or b for a, b in options] or None
        if choices:
            value = _pick(choices, key, name)
        elif name == "reasoning":
            value = _pick(_PHRASES, key, name)
        else:
            value = _pick(labels, key, name)
        parts.append(f"[[ ## {name} ## ]]\n{value}\n")
    return "\n".join(parts + ["[[ ## completed ## ]]"]) if parts else None


def _evo_reply(system: str, key: str, labels: Sequence[str]) -> str | None:
    """A reply to an evo program's format spec: ``name: value`` for each ``name: <hint>`` line
    after "Reply with exactly ... nothing else:"."""
    spec = system.rpartition("nothing else:\n")[2] if "nothing else:\n" in system else ""
    fields = re.findall(r"^(\w+): <([^>\n]*)>$", spec, re.MULTILINE)
    if not fields:
        return None
    lines = []
    for name, hint in fields:
        if hint.startswith("one of: "):
            value = _pick([c.strip() for c in hint[8:].split(",")], key, name)
        elif hint in ("an integer", "a number"):
            value = str(_digest(key, name) % 10)
        elif hint == "yes or no":
            value = _pick(("yes", "no"), key, name)
        else:
            value = _pick(labels, key, name)
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def make_respond(labels: Sequence[str] = DEFAULT_LABELS, *, whole_prompt: bool = False
                 ) -> Respond:
    """A deterministic 'model': a function of the messages, the same text for the same messages.

    "OK" to the preflight ("Reply with the single word ..."); a reply in the asked format to a
    DSPy ChatAdapter prompt (its output fields; a ``Literal`` field gets one of its values) or to
    an evo program (``name: value`` per field of its format spec, a labelled field one of its
    labels); rules or an instruction to a prompt that asks for them (evo's proposers); else one
    of ``labels``. Which value is chosen is a sha256 of the last user message, or with
    ``whole_prompt`` of every message (then each instruction and demo set scores differently, so
    a search has something to find)."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("make_respond needs at least one label")

    def respond(messages: list[dict]) -> str:
        users = [_content(m) for m in messages if m.get("role") == "user"]
        last = users[-1] if users else (_content(messages[-1]) if messages else "")
        if "Reply with the single word" in last:
            return "OK"
        key = (json.dumps([[m.get("role"), _content(m)] for m in messages]) if whole_prompt
               else last)
        system = "\n".join(_content(m) for m in messages if m.get("role") == "system")
        reply = _dspy_reply(last, key, labels) or _evo_reply(system, key, labels)
        if reply is not None:
            return reply
        if re.search(r"\brules\b", last) and '"- "' in last:
            return "\n".join(f"- {p}" for p in _three(key))
        if re.search(r"\binstructions?\b|\bdescribe\b", last, re.IGNORECASE):
            return "```\n" + " ".join(_three(key)) + "\n```"
        return _pick(labels, key)

    return respond


def _three(key: str) -> list[str]:
    start = _digest(key, "phrases")
    return [_PHRASES[(start + i * 3) % len(_PHRASES)] for i in range(3)]


default_respond: Respond = make_respond()


def _tokens(text: str) -> int:
    return len(text.split())


class LatencyServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat server on 127.0.0.1 that answers after ``latency_s`` (+ a seeded
    uniform jitter in ``[0, jitter_s]``), one thread per connection, at most ``max_inflight``
    requests served at once (the rest get 429 at once). Start it with :func:`serving`."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # 32+ clients connecting at once are queued, not refused

    def __init__(self, *, latency_s: float = 0.5, jitter_s: float = 0.0, seed: int = 0,
                 max_inflight: int | None = None, retry_after: str = "0.2",
                 respond: Respond | None = None, model: str = "latency",
                 port: int = 0) -> None:
        if latency_s < 0 or jitter_s < 0:
            raise ValueError(f"latency_s and jitter_s must be >= 0, got {latency_s}, {jitter_s}")
        if max_inflight is not None and max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1 or None, got {max_inflight}")
        super().__init__(("127.0.0.1", port), _Handler)
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.seed = seed
        self.max_inflight = max_inflight
        self.retry_after = retry_after
        self.respond: Respond = respond or default_respond
        self.model = model
        self.closing = threading.Event()  # set on shutdown: sleeping requests end at once
        self.lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.reset()

    @property
    def base(self) -> str:
        """The API base for clients: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset(self) -> None:
        """Zero the counters and re-seed the jitter (requests in flight still finish)."""
        with self.lock:
            self.rng = random.Random(self.seed)
            self.requests = 0  # chat requests that arrived
            self.served = 0  # answered 200
            self.throttled = 0  # answered 429
            self.bad = 0  # answered 400 (not JSON, no messages)
            self.inflight = 0
            self.peak_inflight = 0
            self.spans: list[tuple[float, float]] = []  # (start, end) of each served request

    def stats(self) -> dict[str, Any]:
        """The counters as a JSON-able dict: ``requests``, ``served``, ``throttled``, ``bad``,
        ``inflight``, ``peak_inflight``, ``spans`` (``[start, end]`` monotonic seconds of each
        served request, in the order they ended), ``busy_s`` (their summed durations) and
        ``mean_concurrency`` (``busy_s`` over the time from the first start to the last end)."""
        with self.lock:
            spans = [list(s) for s in self.spans]
            busy = sum((end - start for start, end in self.spans), 0.0)
            window = (max(e for _, e in self.spans) - min(s for s, _ in self.spans)
                      if self.spans else 0.0)
            return {"requests": self.requests, "served": self.served,
                    "throttled": self.throttled, "bad": self.bad, "inflight": self.inflight,
                    "peak_inflight": self.peak_inflight, "spans": spans, "busy_s": busy,
                    "mean_concurrency": busy / window if window > 0 else 0.0}

    # ---- one request's life: admit (or throttle), sleep, answer ---------------------------
    def admit(self) -> float | None:
        """Count an arrival; the latency to serve it with, or None when it is throttled."""
        with self.lock:
            self.requests += 1
            if self.max_inflight is not None and self.inflight >= self.max_inflight:
                self.throttled += 1
                return None
            self.inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            return self.latency_s + (self.rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)

    def done(self, start: float, *, served: bool) -> None:
        with self.lock:
            self.inflight -= 1
            if served:
                self.served += 1
                self.spans.append((start, time.monotonic()))

    def count_bad(self) -> None:
        with self.lock:
            self.requests += 1
            self.bad += 1

    # ---- connections: tracked so that closing ends idle keep-alive ones -------------------
    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self.lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def close(self) -> None:
        """Stop serving: sleeping requests end (503), open connections are shut."""
        self.closing.set()
        self.shutdown()
        with self.lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its client
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: LatencyServer
    protocol_version = "HTTP/1.1"  # keep-alive, as hosted APIs do: no connect per request
    # Send each reply at once: with Nagle's algorithm a keep-alive reply written in two parts
    # (headers, body) waits for the client's delayed ACK, ~40 ms a call that no real API adds.
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.track(self.connection, add=False)
        super().finish()

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, payload: dict, headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (or the server is closing)
            self.close_connection = True

    def error(self, status: int, message: str, kind: str,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.reply(status, {"error": {"message": message, "type": kind, "param": None,
                                      "code": kind}}, headers)

    def do_GET(self) -> None:  # http.server API
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self.reply(200, {"object": "list", "data": [
                {"id": self.server.model, "object": "model", "created": 0,
                 "owned_by": "latency-server"}]})
        elif path == "/v1/stats":
            self.reply(200, self.server.stats())
        else:
            self.error(404, f"no route GET {path}", "not_found")

    def do_POST(self) -> None:  # http.server API
        path = self.path.split("?")[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/v1/reset":
            self.server.reset()
            self.reply(200, {"reset": True})
            return
        if path != "/v1/chat/completions":
            self.error(404, f"no route POST {path}", "not_found")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            self.server.count_bad()
            self.error(400, f"bad request: {exc}", "invalid_request_error")
            return
        latency = self.server.admit()
        if latency is None:
            self.error(429, "Rate limit reached: too many requests in flight, retry after "
                       f"{self.server.retry_after} s", "rate_limit_exceeded",
                       (("Retry-After", self.server.retry_after),))
            return
        start = time.monotonic()
        payload = None
        try:
            if not self.server.closing.wait(latency):  # closing ends the wait at once
                payload = self.completion(body, messages)
        finally:
            # counted before the reply is sent: a client that has its answer sees it counted
            self.server.done(start, served=payload is not None)
        if payload is None:
            self.error(503, "server shutting down", "server_error")
            self.close_connection = True
        else:
            self.reply(200, payload)

    def completion(self, body: dict, messages: list[dict]) -> dict:
        text = self.server.respond(messages)
        words = text.split()
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            text, finish = " ".join(words[:max_tokens]), "length"
        prompt = sum(_tokens(_content(m)) for m in messages)
        completion = _tokens(text)
        return {"id": f"chatcmpl-{_digest(text, str(time.monotonic())) % 10**12}",
                "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.server.model),
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}


@contextmanager
def serving(**kwargs: Any) -> Iterator[LatencyServer]:
    """A :class:`LatencyServer` (``kwargs`` are its own) on a free 127.0.0.1 port for the block,
    then shut down: sleeping requests end at once, the serving thread is joined."""
    srv = LatencyServer(**kwargs)
    # a short poll interval: shutting down waits for the serve loop to notice, up to this long
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              name="latency-server", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.close()
        thread.join(timeout=5)


@contextmanager
def spawned(*args: str) -> Iterator[str]:
    """``python -m evo.testing.latency_server ARGS`` in its own process for the block (its CPU
    is then not the client's); yields its base URL, then terminates it (killed if it lingers)."""
    proc = subprocess.Popen([sys.executable, "-m", "evo.testing.latency_server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = (proc.stdout.readline() if proc.stdout else "").strip()
        if not url.startswith("http://127.0.0.1:"):
            proc.kill()
            raise RuntimeError(f"the latency server did not start (printed {url!r}): "
                               f"{proc.communicate()[1][-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evo.testing.latency_server``: print the base URL, serve until a signal or
    ``--max-seconds``; the final counters (without spans) go to stderr as one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m evo.testing.latency_server",
                                 description="A loopback OpenAI-compatible chat server with a "
                                             "set latency, for benchmarks.")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds before each reply")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="add a seeded uniform [0, JITTER] seconds to each reply")
    ap.add_argument("--max-inflight", type=int, default=None,
                    help="answer 429 to a request arriving while this many are being served")
    ap.add_argument("--retry-after", default="0.2", help="the 429's Retry-After, in seconds")
    ap.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    ap.add_argument("--whole-prompt", action="store_true",
                    help="answers depend on every message, not only the last user one")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--max-seconds", type=float, default=3600.0,
                    help="exit by itself after this long")
    args = ap.parse_args(argv)
    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set())
              for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(args, stop)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _serve(args: argparse.Namespace, stop: threading.Event) -> int:
    with serving(latency_s=args.latency, jitter_s=args.jitter, seed=args.seed,
                 max_inflight=args.max_inflight, retry_after=args.retry_after,
                 respond=make_respond(whole_prompt=args.whole_prompt), port=args.port) as srv:
        print(srv.base, flush=True)
        stop.wait(args.max_seconds)
        stats = {k: v for k, v in srv.stats().items() if k != "spans"}
    print(json.dumps(stats), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
