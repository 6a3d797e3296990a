"""The service's HTTP and WebSocket API against a real uvicorn on 127.0.0.1 (jobs answered by
a scripted model): every route, the roles, the keys, tenant isolation, the refusals (each a
clear 4xx that changes nothing) and their audit, and the event stream with reconnects."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

pytest.importorskip("fastapi")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

V1 = "/api/v1"


def ws_url(api, job_id: str, **query: Any) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return api.url.replace("http://", "ws://") + f"/ws/optimizations/{job_id}" + (
        f"?{qs}" if qs else "")


def ws_events(api, job_id: str, *, after: int = 0, limit: int | None = None,
              headers: dict[str, str] | None = None, key_message: str | None = None
              ) -> list[dict[str, Any]]:
    """The messages of one WebSocket session (at most ``limit`` events, then it disconnects)."""
    query = {"after": after}
    if headers is None and key_message is None:
        query["key"] = api.keys["viewer"]
    got = []
    with connect(ws_url(api, job_id, **query), additional_headers=headers or {},
                 open_timeout=10) as ws:
        if key_message is not None:
            ws.send(json.dumps({"key": key_message}))
        while limit is None or len(got) < limit:
            try:
                got.append(json.loads(ws.recv(timeout=60)))
            except ConnectionClosed:
                break
    return got


def ws_close_code(api, job_id: str, **query: Any) -> int:
    with connect(ws_url(api, job_id, **query), open_timeout=10) as ws, \
            pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=30)
    return info.value.rcvd.code


def last_audit(api, action: str) -> dict[str, Any]:
    return [e for e in api.audit() if e["action"] == action][-1]


# ---- health, docs, dashboard --------------------------------------------------------------
def test_health_needs_no_key_and_counts_jobs(api):
    r = api.client.get(f"{V1}/health")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "jobs": {"queued": 0, "running": 0}}


def test_the_docs_list_every_route_with_the_bearer_scheme(api):
    assert "swagger" in api.client.get("/docs").text.lower()
    spec = api.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = set(spec["paths"])
    for path in ("/optimize", "/optimizations", "/optimizations/{job_id}/status",
                 "/optimizations/{job_id}/result", "/optimizations/{job_id}/events",
                 "/optimizations/{job_id}", "/experiments", "/experiments/{job_id}",
                 "/analytics/performance", "/algorithms/custom", "/algorithms", "/datasets",
                 "/audit", "/keys", "/keys/{key_id}", "/health"):
        assert V1 + path in paths
    assert all(op.get("summary") for item in spec["paths"].values() for op in item.values())


def test_the_dashboard_is_served(api):
    r = api.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()
    # neither the page nor its files may be framed by another site
    for got in (r, api.client.get("/static/app.js")):
        assert got.status_code == 200
        assert got.headers["x-frame-options"] == "DENY"
        assert got.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert "x-frame-options" not in api.client.get(f"{V1}/health").headers


# ---- auth and roles -------------------------------------------------------------------------
def test_a_missing_wrong_or_revoked_key_is_401(api):
    c = api.client
    r = c.get(f"{V1}/optimizations")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert c.get(f"{V1}/optimizations",
                 headers={"Authorization": "Bearer evo_k-000000000000_" + "x" * 43}
                 ).status_code == 401
    assert c.get(f"{V1}/optimizations", headers={"Authorization": "Bearer nonsense"}
                 ).status_code == 401
    # X-API-Key works as well as Bearer
    assert c.get(f"{V1}/optimizations", headers={"X-API-Key": api.keys["viewer"]}
                 ).status_code == 200
    r = api.delete(f"{V1}/keys/{api.key_ids['viewer']}", "admin")
    assert r.status_code == 200 and r.json()["revoked"] is not None
    r = api.get(f"{V1}/optimizations", "viewer")
    assert r.status_code == 401 and "revoked" in r.json()["error"]


def test_a_viewer_cannot_start_or_cancel_and_nothing_changes(api, gate: threading.Event):
    gate.clear()  # the job stays running
    job = api.submit()
    api.wait_running(job)
    r = api.post(f"{V1}/optimize", "viewer", json=api.body())
    assert r.status_code == 403 and "'viewer'" in r.json()["error"]
    r = api.delete(f"{V1}/optimizations/{job}", "viewer")
    assert r.status_code == 403
    listed = api.get(f"{V1}/optimizations").json()
    assert listed["total"] == 1 and listed["items"][0]["status"] == "running"
    # the operator can cancel it
    r = api.delete(f"{V1}/optimizations/{job}", "operator")
    assert r.status_code == 200, r.text
    gate.set()
    assert api.wait(job)["status"] == "cancelled"
    audit = api.audit()
    refused = [e for e in audit if e["status"] == 403]
    assert {e["action"] for e in refused} == {"POST /api/v1/optimize",
                                             "DELETE /api/v1/optimizations/{id}"}
    assert all(e["key_id"] == api.key_ids["viewer"] for e in refused)
    assert any(e["status"] == 200 and e["target"] == job for e in audit)


def test_admin_only_routes_refuse_an_operator(api):
    for method, path, body in (("get", "/audit", None), ("get", "/keys", None),
                               ("post", "/keys", {"role": "viewer"}),
                               ("post", "/algorithms/custom",
                                {"name": "mine", "base": "evolution"})):
        r = getattr(api.client, method)(V1 + path, headers=api.h("operator"),
                                        **({} if body is None else {"json": body}))
        assert r.status_code == 403, (path, r.text)
    assert api.get(f"{V1}/keys", "admin").status_code == 200


def test_keys_are_created_listed_and_revoked_by_an_admin_of_the_tenant(api):
    r = api.post(f"{V1}/keys", "admin", json={"role": "operator", "name": "ci-bot"})
    assert r.status_code == 201
    new = r.json()
    assert new["tenant"] == "a" and new["role"] == "operator" and new["secret"].startswith("evo_")
    ok = api.client.get(f"{V1}/optimizations",
                        headers={"Authorization": f"Bearer {new['secret']}"})
    assert ok.status_code == 200
    listed = api.get(f"{V1}/keys", "admin").json()["items"]
    assert new["id"] in {k["id"] for k in listed}
    assert api.key_ids["b"] not in {k["id"] for k in listed}  # another tenant's
    assert not any("secret" in k or "hash" in k for k in listed)
    assert api.delete(f"{V1}/keys/{api.key_ids['b']}", "admin").status_code == 404
    assert api.delete(f"{V1}/keys/{new['id']}", "admin").status_code == 200
    entry = last_audit(api, "POST /api/v1/keys")
    assert entry["target"] == new["id"] and entry["status"] == 201
    assert new["secret"] not in json.dumps(api.audit())


def test_the_rate_limit_answers_429_with_retry_after(api):
    key, secret = api.service.store.create_key(tenant="a", role="operator", rate_per_min=12)
    headers = {"Authorization": f"Bearer {secret}"}
    codes = [api.client.get(f"{V1}/optimizations", headers=headers).status_code
             for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = api.client.post(f"{V1}/optimize", headers=headers, json=api.body())
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["error"]
    assert api.get(f"{V1}/optimizations").json()["total"] == 0
    entry = last_audit(api, "POST /api/v1/optimize")
    assert entry["status"] == 429 and entry["key_id"] == key.id


def test_each_mutating_request_takes_one_token_refused_bodies_included(api):
    key, secret = api.service.store.create_key(tenant="a", role="operator", rate_per_min=12)
    headers = {"Authorization": f"Bearer {secret}"}  # a burst of 2
    too_big = (b"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               b"\r\nAuthorization: Bearer " + secret.encode() + b"\r\nContent-Length: "
               + str(api.service.config.max_body_bytes + 1).encode() + b"\r\n\r\n")
    codes = [api.client.post(f"{V1}/datasets", headers=headers,
                             json={"name": "d", "rows": api.rows(2)}).status_code,
             int(_raw(api, too_big, []).split(b" ")[1]),
             api.client.post(f"{V1}/datasets", headers=headers,
                             json={"name": "e", "rows": api.rows(2)}).status_code]
    assert codes == [201, 413, 429]
    assert api.get(f"{V1}/datasets").json()["items"] == ["d"]
    entries = [e for e in api.audit() if e["key_id"] == key.id]
    assert [e["status"] for e in entries] == [201, 413, 429]
    assert "rate limit" in entries[-1]["detail"]


def test_a_key_is_created_at_most_at_the_servers_rate(api):
    limit = api.service.config.rate_per_min
    r = api.post(f"{V1}/keys", "admin", json={"role": "viewer", "rate_per_min": limit + 1})
    assert (r.status_code, r.json()["where"]) == (422, "body.rate_per_min")
    r = api.post(f"{V1}/keys", "admin", json={"role": "viewer", "rate_per_min": limit})
    assert r.status_code == 201 and r.json()["rate_per_min"] == limit


# ---- refused requests: a clear 4xx, nothing changed, audited ---------------------------------
def test_an_unknown_route_or_method_is_the_error_shape_and_audited_with_its_key(api):
    r = api.post(f"{V1}/no-such-thing", json={})
    assert r.status_code == 404 and "no route POST /api/v1/no-such-thing" in r.json()["error"]
    r = api.client.put(f"{V1}/optimize", headers=api.h("operator"), json={})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"] == "method PUT is not allowed on /api/v1/optimize (allowed: POST)"
    entries = api.audit()[-2:]
    assert [(e["status"], e["key_id"]) for e in entries] == [
        (404, api.key_ids["operator"]), (405, api.key_ids["operator"])]
    assert all(e["detail"] for e in entries)


def test_malformed_json_is_400(api):
    r = api.client.post(f"{V1}/optimize", content=b'{"program": {',
                        headers={**api.h("operator"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
    assert api.get(f"{V1}/optimizations").json()["total"] == 0
    assert last_audit(api, "POST /api/v1/optimize")["status"] == 400


def test_an_unknown_optimizer_is_422_listing_the_choices(api):
    r = api.post(f"{V1}/optimize", json=api.body(optimizer="no-such-thing"))
    assert r.status_code == 422
    assert "no-such-thing" in r.json()["error"] and "evolution" in r.json()["error"]
    assert api.get(f"{V1}/optimizations").json()["total"] == 0
    entry = last_audit(api, "POST /api/v1/optimize")
    assert entry["status"] == 422 and "no-such-thing" in entry["detail"]


def test_a_bad_field_is_422_naming_where(api):
    body = api.body()
    body["data"]["rows"][3] = {"inputs": {"text": 5}, "outputs": {"label": "pos"}}
    r = api.post(f"{V1}/optimize", json=body)
    assert r.status_code == 422
    assert r.json()["where"].startswith("body.data.rows[3]")
    assert r.json()["error"].startswith(r.json()["where"])
    r = api.post(f"{V1}/optimize", json=api.body(budget=0))
    assert r.status_code == 422 and r.json()["where"] == "body.budget"
    assert api.get(f"{V1}/optimizations").json()["total"] == 0


def _raw(api, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send ``head`` and then as many of ``body_parts`` as the server reads before answering;
    the raw response."""
    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for part in body_parts:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                sock.sendall(part)
            except BlockingIOError:
                break  # the server stopped reading: its answer follows
            except OSError:
                break
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_50_mb_body_is_413_before_it_is_read(api):
    secret = api.keys["operator"].encode()
    size = 50 * 2**20
    head = (b"POST /api/v1/optimize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + secret + b"\r\nContent-Length: "
            + str(size).encode() + b"\r\n\r\n")
    # with Content-Length: answered from the headers alone (no byte of the body sent)
    answer = _raw(api, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # chunked, no length: refused once the bytes read pass the limit (1 MiB here), long before
    # the 50 MB were all sent
    chunk = b"x" * 65536
    head = (b"POST /api/v1/optimize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + secret + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    parts = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (size // len(chunk))
    answer = _raw(api, head, parts)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert api.get(f"{V1}/optimizations").json()["total"] == 0
    entries = [e for e in api.audit() if e["status"] == 413]
    assert len(entries) == 2 and all(e["action"] == "POST /api/v1/optimize" for e in entries)
    assert "over the limit" in entries[0]["detail"]


def test_an_unexpected_error_is_500_with_no_detail(api, monkeypatch):
    def boom(*args: Any, **kwargs: Any) -> dict:
        raise RuntimeError("internal secret detail")

    monkeypatch.setattr(api.service.jobs, "submit", boom)
    r = api.post(f"{V1}/optimize", json=api.body())
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json()["error"].startswith("internal error")
    assert last_audit(api, "POST /api/v1/optimize")["status"] == 500


# ---- jobs -----------------------------------------------------------------------------------
def test_an_optimization_runs_to_its_result(api):
    r = api.post(f"{V1}/optimize", json=api.body())
    assert r.status_code == 202
    job = r.json()["id"]
    assert r.json()["status"] == "queued"
    assert r.headers["location"] == f"{V1}/optimizations/{job}/status"
    status = api.wait(job)
    assert status["status"] == "done", status
    assert status["id"] == job and status["metric_calls"] <= 30
    result = api.get(f"{V1}/optimizations/{job}/result").json()
    assert result["best_program"] and result["metric_calls"] == status["metric_calls"]
    listed = api.get(f"{V1}/optimizations", params={"status": "done"}).json()
    assert [item["id"] for item in listed["items"]] == [job]
    events = api.get(f"{V1}/optimizations/{job}/events").json()
    seqs = [e["seq"] for e in events["items"]]
    assert seqs == list(range(1, len(seqs) + 1)) and events["finished"] is True
    later = api.get(f"{V1}/optimizations/{job}/events", params={"after": 3}).json()["items"]
    assert later == events["items"][3:]
    # cancelling a finished job: 409, and it stays done
    assert api.delete(f"{V1}/optimizations/{job}").status_code == 409
    assert api.get(f"{V1}/optimizations/{job}/status").json()["status"] == "done"
    entry = last_audit(api, "POST /api/v1/optimize")
    assert entry["status"] == 202 and entry["target"] == job


def test_a_result_is_409_while_the_job_runs(api, gate: threading.Event):
    gate.clear()
    job = api.submit()
    api.wait_running(job)
    r = api.get(f"{V1}/optimizations/{job}/result")
    assert r.status_code == 409
    assert api.get(f"{V1}/health").json()["jobs"]["running"] == 1
    gate.set()
    assert api.wait(job)["status"] == "done"
    assert api.get(f"{V1}/optimizations/{job}/result").status_code == 200


def test_another_tenant_sees_none_of_it(api):
    job = api.submit()
    for path in (f"/optimizations/{job}/status", f"/optimizations/{job}/result",
                 f"/optimizations/{job}/events", f"/experiments/{job}"):
        assert api.get(V1 + path, "b").status_code == 404, path
    assert api.delete(f"{V1}/optimizations/{job}", "b").status_code == 404
    assert api.get(f"{V1}/optimizations", "b").json()["total"] == 0
    assert api.get(f"{V1}/audit", "b").json()["items"] == [
        e for e in api.get(f"{V1}/audit", "b").json()["items"] if e["tenant"] == "b"]
    assert ws_close_code(api, job, key=api.keys["b"]) == 4404
    assert api.wait(job)["status"] == "done"


def test_datasets_algorithms_and_analytics(api):
    r = api.post(f"{V1}/datasets", json={"name": "reviews", "rows": api.rows(20)})
    assert r.status_code == 201, r.text
    assert api.get(f"{V1}/datasets").json()["items"] == ["reviews"]
    assert api.get(f"{V1}/datasets", "b").json()["items"] == []
    r = api.post(f"{V1}/algorithms/custom", "admin",
                 json={"name": "my-evo", "base": "evolution", "description": "mine"})
    assert r.status_code == 201, r.text
    algos = api.get(f"{V1}/algorithms").json()
    assert "my-evo" in json.dumps(algos) and "evolution" in json.dumps(algos)
    assert "my-evo" not in json.dumps(api.get(f"{V1}/algorithms", "b").json())
    body = api.body(optimizer="my-evo", data={"dataset": "reviews"})
    job = api.post(f"{V1}/optimize", json=body).json()["id"]
    assert api.wait(job)["status"] == "done"
    r = api.get(f"{V1}/analytics/performance", params={"name": "sentiment"})
    assert r.status_code == 200 and job in json.dumps(r.json())
    assert [e["status"] for e in api.audit() if e["action"] == "POST /api/v1/datasets"] == [201]


def test_an_experiment_compares_two_programs(api):
    a = {"signature": "text -> label", "labels": ["pos", "neg"]}
    b = {**a, "instruction": "Answer pos if the text says good, else neg."}
    r = api.post(f"{V1}/experiments", json={"name": "ab", "a": a, "b": b,
                                             "data": {"rows": api.rows(20)}})
    assert r.status_code == 202, r.text
    exp = r.json()["id"]
    assert api.wait(exp)["status"] == "done"
    got = api.get(f"{V1}/experiments/{exp}").json()
    assert got["kind"] == "experiment"
    result = got["result"]
    assert {"diff", "ci", "p_value", "decision"} <= set(result)
    listed = api.get(f"{V1}/experiments").json()["items"]
    assert [e["id"] for e in listed] == [exp]
    assert listed[0]["result"] == result  # the list has each done experiment's result


# ---- the audit log ---------------------------------------------------------------------------
def test_every_mutating_request_is_audited_once_reads_are_not(api):
    before = len(api.all_audit())
    job = api.submit()
    api.get(f"{V1}/optimizations/{job}/status")
    api.client.post(f"{V1}/optimize", json=api.body())  # no key: 401
    api.delete(f"{V1}/optimizations/{job}", "viewer")  # 403
    after = api.all_audit()[before:]
    assert [(e["action"], e["status"]) for e in after] == [
        ("POST /api/v1/optimize", 202), ("POST /api/v1/optimize", 401),
        ("DELETE /api/v1/optimizations/{id}", 403)]
    unauth = after[1]
    assert unauth["key_id"] is None and "missing API key" in unauth["detail"]
    assert api.service.store.verify_audit() >= len(after)
    api.wait(job)


# ---- the WebSocket ------------------------------------------------------------------------------
def test_the_websocket_streams_every_event_in_order_then_ends(api):
    job = api.submit()
    got = ws_events(api, job)
    *events, end = got
    assert end == {"event": "end", "status": "done"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    rest = api.get(f"{V1}/optimizations/{job}/events").json()["items"]
    assert events == rest


def test_a_reconnect_with_the_last_seq_misses_nothing(api, gate: threading.Event):
    gate.clear()
    job = api.submit()
    api.wait_running(job)
    first = ws_events(api, job, limit=2)  # the first events, then the client goes away
    assert [e["seq"] for e in first] == [1, 2]
    gate.set()
    second = ws_events(api, job, after=first[-1]["seq"])
    *rest, end = second
    assert end["event"] == "end"
    seqs = [e["seq"] for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert first + rest == api.get(f"{V1}/optimizations/{job}/events").json()["items"]


def test_twenty_subscribers_get_the_same_events_from_one_reader(api,
                                                                gate: threading.Event):
    gate.clear()
    job = api.submit()
    api.wait_running(job)
    results: list[list[dict[str, Any]]] = [[] for _ in range(20)]
    connected = threading.Barrier(21, timeout=30)

    def subscribe(i: int) -> None:
        with connect(ws_url(api, job, key=api.keys["viewer"]), open_timeout=10) as ws:
            connected.wait()
            while True:
                try:
                    results[i].append(json.loads(ws.recv(timeout=60)))
                except ConnectionClosed:
                    return

    threads = [threading.Thread(target=subscribe, args=(i,), daemon=True) for i in range(20)]
    for t in threads:
        t.start()
    connected.wait()
    assert api.service.hub.readers <= 1  # one reader for the job, however many subscribers
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert results[0][-1] == {"event": "end", "status": "done"}
    assert all(r == results[0] for r in results)
    assert results[0][:-1] == api.get(f"{V1}/optimizations/{job}/events").json()["items"]


def test_the_websocket_takes_its_key_by_header_or_first_message(api):
    job = api.submit()
    api.wait(job)
    by_header = ws_events(api, job, headers=api.h("viewer"))
    by_message = ws_events(api, job, key_message=api.keys["viewer"])
    assert by_header == by_message and by_header[-1]["event"] == "end"
    assert ws_close_code(api, job, key="wrong") == 4401
    assert ws_close_code(api, "no-such-job", key=api.keys["viewer"]) == 4404
