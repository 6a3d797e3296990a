"""A real loopback OpenAI-compatible chat server whose fault is chosen per request, for the
fault-injection tests (tests/lm/test_faults.py, tests/cli/test_cli_faults.py). Loopback only; a hung
request sleeps a bounded time and its thread then ends by itself."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_S = 1.5  # a hung request sleeps this long (the client gives up first), then its thread ends
LENGTH_TOKENS = 64  # completion tokens billed for a "length_empty" reply


def answer(messages: list[dict]) -> str:
    """The 'model': right on every labelled text; anything else gets a reflection-style rule."""
    last = str(messages[-1].get("content", ""))
    if "Reply with the single word" in last:
        return "OK"
    if "good" in last or "bad" in last:
        return "label: " + ("pos" if "good" in last else "neg")
    return "- Say pos when the text says good.\n- Say neg when the text says bad."


class FaultServer(ThreadingHTTPServer):
    """``POST /v1/chat/completions``; each request's fault comes from :attr:`rule` (a function
    of the request body returning a fault name or None) or else the :attr:`queue`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.queue: deque[str] = deque()
        self.rule: Callable[[dict], str | None] | None = None
        self.retry_after = "1"
        self.hits: list[tuple[str, str]] = []  # (fault or "ok", the request's messages)
        self.lock = threading.Lock()
        self.name = "A"  # answers carry no server name unless tagged (see tag)
        self.tag = False
        self.hang_s = HANG_S  # how long a "hang" lasts (at most: shutting down ends it)
        self.closing = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def fault_for(self, body: dict) -> str:
        with self.lock:
            fault = self.rule(body) if self.rule is not None else None
            if fault is None and self.queue:
                fault = self.queue.popleft()
            fault = fault or "ok"
            self.hits.append((fault, json.dumps(body["messages"], sort_keys=True)))
            return fault

    def asked(self, needle: str) -> list[str]:
        """The faults met by requests whose messages contain ``needle``."""
        with self.lock:
            return [f for f, text in self.hits if needle in text]


class Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, data: bytes, ctype: str = "application/json",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fault = self.server.fault_for(body)
        text = answer(body["messages"])
        if self.server.tag:
            text = f"{text} [{self.server.name}]"
        ok = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": text}}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
        if fault == "ok":
            self.reply(200, json.dumps(ok).encode())
        elif fault in ("500", "503"):
            self.reply(int(fault), b'{"error": {"message": "upstream exploded", '
                                   b'"type": "server_error"}}')
        elif fault == "429":
            self.reply(429, b'{"error": {"message": "slow down", "type": "rate_limit"}}',
                       headers=(("Retry-After", self.server.retry_after),))
        elif fault == "hang":
            self.server.closing.wait(self.server.hang_s)  # longer than the client waits
            self.close_connection = True
        elif fault == "empty_body":
            self.reply(200, b"")
        elif fault == "garbage":
            self.reply(200, b"<html><body>502 Bad Gateway (nginx)</body></html>", "text/html")
        elif fault == "no_choices":
            self.reply(200, json.dumps({**ok, "choices": [], "usage": {
                "prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}}).encode())
        elif fault in ("null_content", "empty_content"):  # a glitch: nothing generated
            ok["choices"][0]["message"]["content"] = None if fault == "null_content" else ""
            ok["usage"] = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
            self.reply(200, json.dumps(ok).encode())
        elif fault == "length_empty":  # a reasoning model spent max_tokens thinking: billed
            ok["choices"][0].update(finish_reason="length",
                                    message={"role": "assistant", "content": None})
            ok["usage"] = {"prompt_tokens": 5, "completion_tokens": LENGTH_TOKENS,
                           "total_tokens": 5 + LENGTH_TOKENS}
            self.reply(200, json.dumps(ok).encode())
        elif fault == "drop":  # close the socket without a reply
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise AssertionError(f"unknown fault {fault!r}")


@contextmanager
def serving() -> Iterator[FaultServer]:
    """A :class:`FaultServer` on 127.0.0.1 (a free port) for the block, then shut down."""
    srv = FaultServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.closing.set()  # hung requests end now
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
