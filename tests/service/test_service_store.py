"""The service store: API keys (hashed, revocable), the append-only hash-chained audit log, the
job index (tenant isolation), named documents, and the per-key rate limiter."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from evo.errors import ConfigError, DamagedFileError
from evo.service.store import (
    GENESIS,
    ROLES,
    ApiKey,
    RateLimiter,
    ServiceStore,
    UnknownKeyError,
    _chain_hash,
    allows,
)


@pytest.fixture
def store(tmp_path: Path):
    with ServiceStore(tmp_path / "service.sqlite") as s:
        yield s


def _raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# ---- keys ------------------------------------------------------------------------------------
def test_key_round_trip_stores_only_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "service.sqlite"
    with ServiceStore(path) as store:
        key, secret = store.create_key(tenant="acme", role="operator", name="ci-bot",
                                       rate_per_min=30)
        assert re.fullmatch(r"k-[0-9a-f]{12}", key.id)
        assert re.fullmatch(rf"evo_{key.id}_[A-Za-z0-9_-]{{43}}", secret)
        assert (key.tenant, key.role, key.name, key.rate_per_min, key.revoked) == \
            ("acme", "operator", "ci-bot", 30, None)
        assert store.authenticate(secret) == key
        assert store.keys() == [key] and store.keys("acme") == [key] and store.keys("other") == []
        assert set(key.to_dict()) == {"id", "tenant", "role", "name", "created", "revoked",
                                      "rate_per_min"}
        assert secret not in repr(key.to_dict())
        raw = _raw_bytes(path)
    token = secret.rsplit("_", 1)[1]
    assert secret.encode() not in raw and token.encode() not in raw
    with sqlite3.connect(path) as conn:
        (stored,) = conn.execute("SELECT hash FROM keys WHERE id = ?", (key.id,)).fetchone()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    with ServiceStore(path) as again:  # the key survives a reopen
        assert again.authenticate(secret) == key


def test_revoke(store: ServiceStore) -> None:
    key, secret = store.create_key(tenant="acme", role="admin")
    other, other_secret = store.create_key(tenant="beta", role="admin")
    with pytest.raises(UnknownKeyError, match=f"no API key '{key.id}' for tenant 'beta'"):
        store.revoke_key(key.id, tenant="beta")  # another tenant's key is unknown
    with pytest.raises(UnknownKeyError, match="no API key 'k-000000000000'"):
        store.revoke_key("k-000000000000")
    assert store.authenticate(secret) == key  # the refused revocations changed nothing
    revoked = store.revoke_key(key.id, tenant="acme")
    assert revoked.revoked is not None and revoked.id == key.id
    assert store.authenticate(secret) is None
    assert store.authenticate(other_secret) == other
    assert store.revoke_key(key.id).revoked == revoked.revoked  # the first time is kept
    assert store.keys("acme") == [revoked]


def test_wrong_and_malformed_secrets(store: ServiceStore) -> None:
    key, secret = store.create_key(tenant="acme", role="viewer")
    other, other_secret = store.create_key(tenant="acme", role="viewer")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    swapped = f"evo_{key.id}_{other_secret.rsplit('_', 1)[1]}"  # right id, another key's token
    bad = ["", "evo_", secret[:-1], secret + "x", secret + "\n", " " + secret, flipped, swapped,
           secret.replace("evo_", "EVO_"), "evo_k-000000000000_" + "a" * 43, "x" * 10**6,
           "é" * 62, secret[:-1] + "é", "\x00" * 62, secret.upper()]
    for s in bad:
        assert store.authenticate(s) is None, s[:80]
    for s in (None, 123, b"evo_", [secret]):
        assert store.authenticate(s) is None  # type: ignore[arg-type]
    assert store.authenticate(secret) == key


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "_x", "a" * 64, "a b", "acmé", "a/b",
                                    None, 7])
def test_bad_tenants(store: ServiceStore, tenant: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(tenant)) + r".*\[a-z0-9\]"):
        store.create_key(tenant=tenant, role="admin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bad tenant"):
        store.job_ids(tenant)  # type: ignore[arg-type]
    assert store.keys() == []


def test_good_tenant_edges(store: ServiceStore) -> None:
    for tenant in ("a", "0", "a" * 63, "team_1-x"):
        key, _ = store.create_key(tenant=tenant, role="viewer")
        assert key.tenant == tenant


def test_bad_roles_and_rates(store: ServiceStore) -> None:
    with pytest.raises(ConfigError, match="unknown role 'root'.*viewer, operator, admin"):
        store.create_key(tenant="acme", role="root")  # type: ignore[arg-type]
    for rate in (0, -1, True, 1.5, "10"):
        with pytest.raises(ConfigError, match="rate_per_min"):
            store.create_key(tenant="acme", role="admin", rate_per_min=rate)  # type: ignore
    assert store.keys() == []


def test_allows_table() -> None:
    expected = {("viewer", "viewer"): True, ("viewer", "operator"): False,
                ("viewer", "admin"): False, ("operator", "viewer"): True,
                ("operator", "operator"): True, ("operator", "admin"): False,
                ("admin", "viewer"): True, ("admin", "operator"): True, ("admin", "admin"): True}
    assert {(r, n): allows(r, n) for r in ROLES for n in ROLES} == expected
    assert allows("root", "viewer") is False  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown role 'root'"):
        allows("admin", "root")  # type: ignore[arg-type]


# ---- audit -----------------------------------------------------------------------------------
def test_audit_entries_and_log(store: ServiceStore) -> None:
    acme, secret = store.create_key(tenant="acme", role="admin")
    beta, _ = store.create_key(tenant="beta", role="operator")
    e1 = store.audit(action="POST /api/v1/optimize", status=202, key=acme, target="j-1",
                     ip="127.0.0.1")
    e2 = store.audit(action="POST /api/v1/optimize", status=401, detail="no key")
    e3 = store.audit(action="DELETE /api/v1/optimizations/{id}", status=403, key=beta,
                     target="j-1", detail="x" * 2000 + secret)
    e4 = store.audit(action="key.create", status=201, tenant="acme", target=acme.id)
    assert [e.seq for e in (e1, e2, e3, e4)] == [1, 2, 3, 4]
    assert e1.prev_hash == GENESIS and e2.prev_hash == e1.hash and e3.prev_hash == e2.hash
    assert (e1.key_id, e1.tenant, e1.role, e1.target, e1.ip) == (acme.id, "acme", "admin",
                                                                  "j-1", "127.0.0.1")
    assert (e2.key_id, e2.tenant, e2.role) == (None, None, None)
    assert len(e3.detail) == 500 and e4.tenant == "acme" and e4.key_id is None
    assert store.audit_log() == [e1, e2, e3, e4]
    assert store.audit_log(tenant="acme") == [e1, e4]
    assert store.audit_log(tenant="beta") == [e3]
    assert store.audit_log(after=1, limit=2) == [e2, e3]
    assert store.audit_log(action="POST /api/v1/optimize") == [e1, e2]
    assert e1.to_dict()["hash"] == e1.hash
    with pytest.raises(ConfigError, match="limit"):
        store.audit_log(limit=0)
    with pytest.raises(ConfigError, match="status"):
        store.audit(action="x", status="ok")  # type: ignore[arg-type]
    assert store.verify_audit() == 4


def test_audit_redacts_secrets(tmp_path: Path) -> None:
    path = tmp_path / "service.sqlite"
    with ServiceStore(path) as store:
        key, secret = store.create_key(tenant="acme", role="admin")
        entry = store.audit(action="key.create", status=201, key=key, target=secret,
                            detail=f"created {secret}")
        assert secret not in entry.detail and f"evo_{key.id}_[redacted]" in entry.detail
        assert secret not in (entry.target or "")
    assert secret.encode() not in _raw_bytes(path)


def test_audit_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "service.sqlite"
    with ServiceStore(path) as store:
        store.audit(action="key.create", status=201)
        store.audit(action="key.revoke", status=200)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET status = 500 WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
        conn.commit()
        assert [r[0] for r in conn.execute("SELECT status FROM audit ORDER BY seq")] == [201, 200]
    finally:
        conn.close()
    with ServiceStore(path) as store:
        assert store.verify_audit() == 2


def _tampered(src: Path, dst: Path, *sql: str) -> Path:
    """A copy of the store ``src`` with the triggers dropped and ``sql`` run on it."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    try:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        for statement in sql:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return dst


def test_audit_chain_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "service.sqlite"
    with ServiceStore(path) as store:
        for i in range(5):
            store.audit(action="POST /api/v1/optimize", status=202, target=f"j-{i}")
        assert store.verify_audit() == 5
    with ServiceStore(path) as store:  # an entry rewritten with a hash that matches it
        row = {**store.audit_log(after=1, limit=1)[0].to_dict(), "detail": "x"}
    rehash = _chain_hash(row["prev_hash"], row)
    cases = {
        "edit": (["UPDATE audit SET status = 500 WHERE seq = 3"], "audit entry 3 was changed"),
        "delete": (["DELETE FROM audit WHERE seq = 2"], "audit entry 2 is missing"),
        "rehash": ([f"UPDATE audit SET detail = 'x', hash = '{rehash}' WHERE seq = 2"],
                   "audit entry 3 does not follow entry 2"),
        "insert": ([f"INSERT INTO audit VALUES (6, 0, NULL, NULL, NULL, 'x', NULL, 200, '', "
                    f"NULL, '{GENESIS}', '{GENESIS}')"], "audit entry 6 does not follow"),
    }
    for name, (sql, message) in cases.items():
        copy = _tampered(path, tmp_path / f"{name}.sqlite", *sql)
        with ServiceStore(copy) as store, pytest.raises(DamagedFileError, match=message) as err:
            store.verify_audit()
        assert str(copy) in str(err.value) and "tampered" in str(err.value)
    with ServiceStore(path) as store:  # the original is untouched
        assert store.verify_audit() == 5


def test_two_stores_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "service.sqlite"
    stores = [ServiceStore(path), ServiceStore(path)]
    errors: list[BaseException] = []

    def append(store: ServiceStore, who: int) -> None:
        try:
            for i in range(25):
                store.audit(action="POST /api/v1/optimize", status=202, target=f"{who}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(stores[i % 2], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    try:
        log = stores[0].audit_log(limit=1000)
        assert [e.seq for e in log] == list(range(1, 101))
        assert sorted(e.target or "" for e in log) == sorted(f"{w}-{i}" for w in range(4)
                                                             for i in range(25))
        assert stores[1].verify_audit() == 100
    finally:
        for s in stores:
            s.close()


# ---- the job index ---------------------------------------------------------------------------
def test_job_index_paging_filters_and_tenants(store: ServiceStore) -> None:
    for i in range(7):
        store.add_job(f"j-{i}", tenant="acme", key_id="k-a", created=100.0 + i // 2,
                      kind="optimize" if i % 3 else "experiment", label=f"qa{i % 2}")
    store.add_job("j-beta", tenant="beta", key_id="k-b", kind="optimize", label="qa0")
    newest_first = ["j-6", "j-5", "j-4", "j-3", "j-2", "j-1", "j-0"]  # ties: the later first
    assert store.job_ids("acme") == (newest_first, 7)
    assert store.job_ids("acme", limit=3) == (newest_first[:3], 7)
    assert store.job_ids("acme", limit=3, offset=6) == (newest_first[6:], 7)
    assert store.job_ids("acme", offset=10) == ([], 7)
    assert store.job_ids("acme", kind="experiment") == (["j-6", "j-3", "j-0"], 3)
    assert store.job_ids("acme", label="qa1") == (["j-5", "j-3", "j-1"], 3)
    assert store.job_ids("acme", kind="optimize", label="qa0") == (["j-4", "j-2"], 2)
    assert store.job_ids("beta") == (["j-beta"], 1)
    assert store.job_ids("gamma") == ([], 0)
    assert store.job_tenant("j-3") == "acme" and store.job_tenant("j-beta") == "beta"
    assert store.job_tenant("j-none") is None
    with pytest.raises(ConfigError, match="'j-3' is already"):
        store.add_job("j-3", tenant="beta", key_id="k-b", kind="optimize", label="x")
    assert store.job_tenant("j-3") == "acme"
    for bad in ({"limit": 0}, {"offset": -1}, {"limit": "5"}):
        with pytest.raises(ConfigError):
            store.job_ids("acme", **bad)  # type: ignore[arg-type]


# ---- named documents -------------------------------------------------------------------------
def test_docs_put_get_replace(store: ServiceStore) -> None:
    doc = {"rows": [{"inputs": {"q": "2+2"}, "outputs": {"a": "4"}}], "description": "é"}
    store.put("dataset", "acme", "math", doc)
    store.put("dataset", "acme", "arith", {"rows": []})
    store.put("algorithm", "acme", "math", {"base": "evolution"})
    assert store.get("dataset", "acme", "math") == doc
    assert store.get("algorithm", "acme", "math") == {"base": "evolution"}
    assert store.get("dataset", "beta", "math") is None  # another tenant's is invisible
    assert store.get("algorithm", "acme", "arith") is None  # kinds are apart
    assert store.names("dataset", "acme") == ["arith", "math"]
    assert store.names("dataset", "beta") == []
    with pytest.raises(ConfigError, match="dataset 'math' already exists for tenant 'acme'"):
        store.put("dataset", "acme", "math", {"rows": [1]})
    assert store.get("dataset", "acme", "math") == doc
    store.put("dataset", "acme", "math", {"rows": [1]}, replace=True)
    assert store.get("dataset", "acme", "math") == {"rows": [1]}
    store.put("dataset", "beta", "math", {"rows": [2]})
    assert store.get("dataset", "acme", "math") == {"rows": [1]}
    for bad in ({"x": {1, 2}}, {"x": float("nan")}, {"x": object()}):
        with pytest.raises(ConfigError, match="not JSON-able"):
            store.put("algorithm", "acme", "bad", bad)
    with pytest.raises(ConfigError, match="JSON object"):
        store.put("algorithm", "acme", "bad", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown kind of document 'program'"):
        store.put("program", "acme", "p", {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bad tenant"):
        store.get("dataset", "ACME", "math")
    with pytest.raises(ConfigError, match="name"):
        store.put("dataset", "acme", "", {})
    assert store.names("algorithm", "acme") == ["math"]


# ---- the file --------------------------------------------------------------------------------
def test_damaged_or_foreign_file_is_left_alone(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all " * 500)
    before = garbage.read_bytes()
    with pytest.raises(DamagedFileError, match=re.escape(str(garbage))):
        ServiceStore(garbage)
    assert garbage.read_bytes() == before
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE keys (id TEXT, owner TEXT)")
    conn.close()
    with pytest.raises(DamagedFileError, match="not an evo service store.*keys table lacks"):
        ServiceStore(foreign)
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(DamagedFileError, match="not a regular file"):
        ServiceStore(tmp_path / "dir.sqlite")


def test_symlink_and_closed_store(tmp_path: Path) -> None:
    real = tmp_path / "real.sqlite"
    ServiceStore(real).close()
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        ServiceStore(link)
    store = ServiceStore(real)
    store.close()
    store.close()  # idempotent
    with pytest.raises(ConfigError, match="is closed"):
        store.keys()


# ---- the rate limiter ------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(key_id: str = "k-000000000001", rate: int | None = None) -> ApiKey:
    return ApiKey(id=key_id, tenant="acme", role="viewer", name="", created=0.0,
                  rate_per_min=rate)


def test_rate_limiter_burst_refusal_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_min=60, burst=3, clock=clock)
    key = _key()
    assert [limiter.check(key) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check(key) == pytest.approx(1.0)  # one token a second
    assert limiter.check(key) == pytest.approx(1.0)  # a refusal takes nothing
    clock.now += 0.5
    assert limiter.check(key) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check(key) == 0.0
    assert limiter.check(key) == pytest.approx(1.0)
    clock.now += 100  # refills up to the burst, not beyond
    assert [limiter.check(key) for _ in range(4)][3] == pytest.approx(1.0)
    other = _key("k-000000000002")
    assert limiter.check(other) == 0.0  # buckets are per key


def test_rate_limiter_key_rate_and_default_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_min=600, clock=clock)  # default burst: ten seconds' worth
    fast, slow = _key("k-000000000001"), _key("k-000000000002", rate=6)
    assert sum(limiter.check(fast) == 0.0 for _ in range(150)) == 100
    assert limiter.check(slow) == 0.0  # 6/min: a burst of 1
    assert limiter.check(slow) == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="per_min"):
        RateLimiter(per_min=0)
    with pytest.raises(ConfigError, match="burst"):
        RateLimiter(burst=0)


def test_rate_limiter_threads_and_memory() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_min=60, burst=5, clock=clock)
    key = _key()
    allowed: list[float] = []

    def hammer() -> None:
        for _ in range(50):
            allowed.append(limiter.check(key))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert allowed.count(0.0) == 5 and len(allowed) == 400  # the clock stood still
    for i in range(3000):  # many keys, each idle long enough to refill: forgotten
        limiter.check(_key(f"k-{i:012x}"))
        clock.now += 1.0
    assert len(limiter) <= 1024
