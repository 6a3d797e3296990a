"""A server killed with SIGKILL mid-job and restarted on the same home: every job completes,
none is lost, the queued ones are kept, and no LM request answered before the kill is asked
again after it (the jobs resume from their journals).

The server runs as ``python -m evo.cli serve`` in a subprocess, its model a hosted one
(``openai/fake``) pointed at a loopback :mod:`evo.testing.latency_server` in this process,
whose replies this test records. Before the kill the replies are held (every request in flight
waits), so "answered before the kill" is exact: a request is answered before the kill, or its
reply reaches a dead process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from evo.testing import make
from evo.testing.latency_server import free_port, make_respond, serving

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("dspy")  # the hosted backend of openai/fake

START_S = 120.0  # the longest a server may take to start (it imports the hosted backend)
RUN_S = 180.0  # the longest the jobs may take to finish after the restart
JOBS = 4
WORKERS = 2
PREFLIGHT = "Reply with the single word"


class Recorder:
    """The latency server's 'model', recording each reply's request; ``hold()`` makes every
    request wait until ``release()`` (bounded)."""

    def __init__(self) -> None:
        self.respond = make_respond(("pos", "neg"), whole_prompt=True)
        self.lock = threading.Lock()
        self.open = threading.Event()
        self.open.set()
        self.waiting = 0
        self.killed = False
        self.replies: list[tuple[str, bool]] = []  # (request, answered after the kill)

    def __call__(self, messages: list[dict]) -> str:
        with self.lock:
            self.waiting += 1
        self.open.wait(RUN_S)
        with self.lock:
            self.waiting -= 1
            self.replies.append((json.dumps(messages, sort_keys=True), self.killed))
        return self.respond(messages)

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()


class Server:
    """``evo serve`` in a subprocess, its output in files."""

    def __init__(self, home: Path, base: str, tmp: Path, n: int) -> None:
        self.port = free_port()
        self.out = tmp / f"serve-{n}.out"
        self.err = tmp / f"serve-{n}.err"
        env = {**os.environ, "EVO_CACHE_DIR": str(tmp / "cache")}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evo.cli", "serve", "--home", str(home),
                 "--port", str(self.port), "--workers", str(WORKERS), "--model", "openai/fake",
                 "--api-base", base, "--api-key", "fake", "--timeout", "60"],
                stdout=out, stderr=err, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_S
        while True:
            assert self.proc.poll() is None, f"evo serve exited: {self.err.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no server: {self.err.read_text()[-3000:]}"
            time.sleep(0.1)

    def secret(self) -> str | None:
        return next((line for line in self.out.read_text().splitlines()
                     if line.startswith("evo_k-")), None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _body(i: int) -> dict[str, Any]:
    # distinct rows per job: no two jobs ask the same prompt
    rows = [{"inputs": ex.inputs, "outputs": ex.outputs}
            for ex in (make(1000 * i + j) for j in range(16))]
    return {"program": {"signature": "text -> label", "labels": ["pos", "neg"]},
            "data": {"rows": rows}, "budget": 40, "name": f"job-{i}", "seed": i}


def _until(what: str, check, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_sigkilled_server_resumes_every_job_paying_nothing_twice(tmp_path):
    home = tmp_path / "svc"
    recorder = Recorder()
    servers: list[Server] = []
    with serving(latency_s=0.05, respond=recorder) as lm_server:
        try:
            first = Server(home, lm_server.base, tmp_path, 1)
            servers.append(first)
            first.wait_up()
            secret = first.secret()
            assert secret is not None
            client = httpx.Client(base_url=first.url, timeout=30,
                                  headers={"Authorization": f"Bearer {secret}"})
            ids = []
            for i in range(JOBS):
                r = client.post("/api/v1/optimize", json=_body(i))
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])

            def progressed() -> list[str]:
                running = []
                for job in ids:
                    items = client.get(f"/api/v1/optimizations/{job}/events").json()["items"]
                    if any((e.get("metric_calls") or 0) > 0 for e in items):
                        running.append(job)
                return running

            _until("a job's progress", progressed, START_S)
            # hold every reply; once each request in flight is waiting, nothing is half-answered
            recorder.hold()
            _until("the requests in flight to wait",
                   lambda: recorder.waiting == lm_server.stats()["inflight"], 30)
            time.sleep(0.5)  # the answers already sent reach the journals
            before = client.get("/api/v1/optimizations", params={"limit": 50}).json()
            client.close()
            with recorder.lock:
                recorder.killed = True
            first.stop(signal.SIGKILL)
            recorder.release()
            statuses = {item["id"]: item["status"] for item in before["items"]}
            assert set(statuses) == set(ids)
            assert "running" in statuses.values()
            killed_running = [j for j, s in statuses.items() if s == "running"]
            queued = [j for j, s in statuses.items() if s == "queued"]

            second = Server(home, lm_server.base, tmp_path, 2)
            servers.append(second)
            second.wait_up()
            assert second.secret() is None  # the key of the first start still stands
            client = httpx.Client(base_url=second.url, timeout=30,
                                  headers={"Authorization": f"Bearer {secret}"})

            def finished() -> list[dict[str, Any]]:
                items = client.get("/api/v1/optimizations", params={"limit": 50}).json()
                done = [i for i in items["items"] if i["status"] in ("done", "failed",
                                                                       "cancelled")]
                return items["items"] if len(done) == JOBS else []

            final = {i["id"]: i for i in _until("every job to finish", finished, RUN_S)}
            client.close()
        finally:
            for server in servers:
                server.stop()
            recorder.release()
    assert set(final) == set(ids)  # none lost
    assert all(s["status"] == "done" for s in final.values()), final
    for job in killed_running:
        assert final[job]["sittings"] == 2  # resumed
    for job in queued:
        assert final[job]["sittings"] == 1  # kept in the queue, run once
    answered_before = {req for req, after in recorder.replies if not after}
    asked_again = [req for req, after in recorder.replies
                   if after and req in answered_before and PREFLIGHT not in req]
    assert asked_again == []  # no LM request answered before the kill was paid again
    assert len(answered_before) > 0 and any(after for _, after in recorder.replies)
