"""``evo serve``: its keys and audit commands on a home with no server, and the first start
(a real server in a subprocess on a free loopback port) that prints an admin key once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo.cli import main
from evo.service.store import ServiceStore
from evo.testing.latency_server import free_port

START_S = 60.0  # the longest a server subprocess may take to start or stop


def serve(*args: str) -> list[str]:
    return ["serve", *args]


def test_keys_create_list_revoke_and_the_audit_verifies(tmp_path, capsys):
    home = str(tmp_path / "svc")
    assert main(serve("--home", home, "keys", "create", "--tenant", "team-a", "--role",
                      "operator", "--name", "ci-bot", "--rate", "30")) == 0
    out = capsys.readouterr().out.splitlines()
    key_id = out[0].split()[2]
    secret = out[1]
    assert secret.startswith(f"evo_{key_id}_")
    with ServiceStore(Path(home) / "service.sqlite") as store:
        key = store.authenticate(secret)
        assert (key.id, key.tenant, key.role, key.name, key.rate_per_min) == (
            key_id, "team-a", "operator", "ci-bot", 30)
    # --home after the subcommand works as well
    assert main(serve("keys", "list", "--home", home)) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [k["id"] for k in listed] == [key_id]
    assert secret not in json.dumps(listed)
    assert main(serve("--home", home, "keys", "revoke", key_id)) == 0
    assert "revoked" in capsys.readouterr().out
    with ServiceStore(Path(home) / "service.sqlite") as store:
        assert store.authenticate(secret) is None
    assert main(serve("--home", home, "audit")) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e["target"]) for e in entries] == [("key.create", key_id),
                                                           ("key.revoke", key_id)]
    # the key's tenant sees them in its own log (GET /api/v1/audit)
    assert {e["tenant"] for e in entries} == {"team-a"}
    assert secret not in json.dumps(entries)
    assert main(serve("--home", home, "audit", "--verify")) == 0
    assert "2 entries" in capsys.readouterr().out


def test_an_unknown_key_or_a_missing_home_is_one_clear_error(tmp_path, capsys):
    home = str(tmp_path / "svc")
    assert main(serve("--home", home, "audit")) == 2
    assert "no service at" in capsys.readouterr().err
    main(serve("--home", home, "keys", "create", "--role", "admin"))
    capsys.readouterr()
    assert main(serve("--home", home, "keys", "revoke", "k-000000000000")) == 2
    assert "k-000000000000" in capsys.readouterr().err


def _start(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evo.cli", "serve", "--home", str(home), "--port", str(port),
         "--model", "openai/fake", "--api-base", "http://127.0.0.1:9/v1", "--no-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, port


def _lines_until_started(proc: subprocess.Popen) -> list[str]:
    lines = []
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("evo serve: ") and " on http://" in line:
            return lines
    raise AssertionError(f"no start line: {lines}; stderr: {proc.stderr.read()[-2000:]}")


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=START_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=START_S)
    return proc.returncode, err


def _health(port: int, secret: str) -> int:
    httpx = pytest.importorskip("httpx")
    deadline = time.monotonic() + START_S
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/keys", timeout=5,
                          headers={"Authorization": f"Bearer {secret}"})
            return r.status_code
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.1)


def test_the_first_start_prints_an_admin_key_once(tmp_path):
    pytest.importorskip("fastapi")
    home = tmp_path / "svc"
    env = {**os.environ, "EVO_CACHE_DIR": str(tmp_path / "cache")}
    proc, port = _start(home, env)
    try:
        lines = _lines_until_started(proc)
        secret = next(line for line in lines if line.startswith("evo_k-"))
        assert _health(port, secret) == 200  # an admin key: it may list keys
    finally:
        code, err = _stop(proc)
    assert code == 0, err[-2000:]
    assert secret not in err  # logged nowhere
    with ServiceStore(home / "service.sqlite") as store:
        (key,) = store.keys()
        assert (key.tenant, key.role) == ("default", "admin")
    proc, port = _start(home, env)
    try:
        lines = _lines_until_started(proc)
        assert not any(line.startswith("evo_") for line in lines)  # not again
        assert _health(port, secret) == 200
    finally:
        code, err = _stop(proc)
    assert code == 0, err[-2000:]
