"""Fixtures of the service suites: a :class:`Service` on a scripted model, served by a real
uvicorn on a free 127.0.0.1 port in a background thread, keys of each role in two tenants, and
an httpx client. Jobs can be held mid-run: ``gate.clear()`` makes every LM call wait (at most
``HOLD_S``) until ``gate.set()``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import evo.testing as T
from evo.lm import ScriptedLM

HOLD_S = 20.0  # the longest an LM call waits on a closed gate (a test that forgets is slow)
WAIT_S = 60.0  # the longest a test waits for a job to finish


def rows(n: int = 16, start: int = 0) -> list[dict[str, Any]]:
    """``n`` rows of the scripted sentiment task (inline data for a request)."""
    return [{"inputs": ex.inputs, "outputs": ex.outputs}
            for ex in (T.make(i) for i in range(start, start + n))]


def optimize_body(budget: int = 30, **over: Any) -> dict[str, Any]:
    """A small optimize request on the scripted sentiment task."""
    body = {"program": {"signature": "text -> label", "labels": list(T.LABELS)},
            "data": {"rows": rows(24)}, "budget": budget, "name": "sentiment"}
    return {**body, **over}


@dataclass
class Api:
    """The running service: its URL, the service, the secrets by role of tenant "a" and "b",
    and a client."""

    url: str
    service: Any  # evo.service.app.Service
    client: Any  # httpx.Client
    keys: dict[str, str] = field(default_factory=dict)  # "viewer", "operator", "admin", "b"
    key_ids: dict[str, str] = field(default_factory=dict)

    body = staticmethod(lambda **over: optimize_body(**over))
    rows = staticmethod(lambda n=16, start=0: rows(n, start))

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def get(self, path: str, who: str = "viewer", **kw: Any) -> Any:
        return self.client.get(path, headers=self.h(who), **kw)

    def post(self, path: str, who: str = "operator", **kw: Any) -> Any:
        return self.client.post(path, headers=self.h(who), **kw)

    def delete(self, path: str, who: str = "operator", **kw: Any) -> Any:
        return self.client.delete(path, headers=self.h(who), **kw)

    def submit(self, who: str = "operator", **over: Any) -> str:
        r = self.post("/api/v1/optimize", who, json=optimize_body(**over))
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait(self, job_id: str, who: str = "viewer", timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.get(f"/api/v1/optimizations/{job_id}/status", who).json()
            if status["status"] in ("done", "failed", "cancelled"):
                return status
            assert time.monotonic() < deadline, f"job {job_id} still {status['status']}"
            time.sleep(0.05)

    def wait_running(self, job_id: str, who: str = "viewer") -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = self.get(f"/api/v1/optimizations/{job_id}/status", who).json()
            if status["status"] != "queued":
                return status
            assert time.monotonic() < deadline, f"job {job_id} never started"
            time.sleep(0.02)

    def audit(self, who: str = "admin") -> list[dict[str, Any]]:
        """The tenant's audit log, as its admin reads it."""
        return self.get("/api/v1/audit", who, params={"limit": 1000}).json()["items"]

    def all_audit(self) -> list[dict[str, Any]]:
        """Every tenant's audit entries and those of no key (401s), from the store."""
        return [e.to_dict() for e in self.service.store.audit_log(limit=1000)]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    event.set()
    yield event
    event.set()


@pytest.fixture
def scripted_lm(gate: threading.Event) -> ScriptedLM:
    def respond(request: Any) -> str:
        gate.wait(HOLD_S)
        return T.respond(request)

    return ScriptedLM(respond, max_concurrency=4)


@pytest.fixture
def config(tmp_path) -> Any:
    # the service extra (fastapi, uvicorn, httpx) only where a test asks for the app: the
    # store's suite runs without it
    pytest.importorskip("fastapi")
    from evo.service.app import ServiceConfig

    return ServiceConfig(home=tmp_path / "service", workers=2, rate_per_min=100_000,
                         max_body_bytes=2**20)


@pytest.fixture
def api(config: Any, scripted_lm: ScriptedLM, gate: threading.Event) -> Iterator[Api]:
    httpx = pytest.importorskip("httpx")
    from evo.service.app import Service
    from evo.service.server import running

    service = Service(config, lm=scripted_lm, cache=False)
    try:
        store = service.store
        keys, ids = {}, {}
        for role in ("viewer", "operator", "admin"):
            key, keys[role] = store.create_key(tenant="a", role=role, name=f"a-{role}")
            ids[role] = key.id
        key, keys["b"] = store.create_key(tenant="b", role="admin", name="b-admin")
        ids["b"] = key.id
        with running(service) as srv, httpx.Client(base_url=srv.url, timeout=15.0) as client:
            yield Api(srv.url, service, client, keys, ids)
            gate.set()
    finally:
        gate.set()
        service.close()
