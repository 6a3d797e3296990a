"""The service's own state: API keys, the audit log, the job index and named documents.

One SQLite file (``DIR/service.sqlite``, WAL, shared by threads and processes) holds::

    keys    one row per API key: its public id, tenant, role, label and sha256(secret) only
    audit   the append-only audit log: triggers abort any UPDATE or DELETE, and each entry's
            hash chains the one before, so an edit made around the triggers is found by
            :meth:`ServiceStore.verify_audit`
    jobs    every job the service scheduled, with its tenant (tenant isolation: a job id of
            another tenant is as unknown as one that never existed)
    docs    a tenant's named JSON documents: datasets, custom algorithms

A secret is ``evo_<key id>_<43 url-safe characters>`` (256 random bits): the id inside it finds
the row and ``hmac.compare_digest`` compares the hashes. A slow password hash adds nothing for
secrets of that entropy; the store never holds the secret itself.

:class:`RateLimiter` is the per-key token bucket the app consults before each request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from evo._sqlite import check_store, immediate, refuse_links, store_errors
from evo.errors import ConfigError, DamagedFileError, EvoError, StorageError

__all__ = ["ROLES", "ApiKey", "AuditEntry", "RateLimiter", "Role", "ServiceStore",
           "UnknownKeyError", "allows", "check_tenant"]

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # each can do what the one before can
DocKind = Literal["dataset", "algorithm"]
DOC_KINDS: tuple[str, ...] = get_args(DocKind)
TENANT_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
MAX_DETAIL = 500  # characters of an audit entry's detail (the rest is cut)
MAX_FIELD = 300  # characters of an audit entry's action and target
MAX_PAGE = 1000  # rows one audit_log / job_ids call returns at most
GENESIS = "0" * 64  # the prev_hash of the first audit entry

_TENANT = re.compile(TENANT_PATTERN)
_SECRET = re.compile(r"evo_(k-[0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SECRET_LEN = 4 + 14 + 1 + 43
_SECRET_ANYWHERE = re.compile(r"evo_(k-[0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_HINT = ("it holds the service's API keys, audit log and job index: restore it from a backup "
         "(the jobs themselves are kept under jobs/)")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,            -- sha256 hex of the whole secret
    created REAL NOT NULL,
    revoked REAL,
    rate_per_min INTEGER
);
CREATE INDEX IF NOT EXISTS keys_tenant ON keys (tenant, created);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    key_id TEXT,
    tenant TEXT,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL,
    ip TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END;
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, created);
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,             -- JSON
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, tenant, name)
);
"""
_KEY_FIELDS = ("id", "tenant", "role", "name", "created", "revoked", "rate_per_min")
_AUDIT_FIELDS = ("seq", "t", "key_id", "tenant", "role", "action", "target", "status", "detail",
                 "ip", "prev_hash", "hash")
_COLUMNS = {
    "keys": {*_KEY_FIELDS, "hash"},
    "audit": set(_AUDIT_FIELDS),
    "jobs": {"job_id", "tenant", "key_id", "kind", "label", "created"},
    "docs": {"kind", "tenant", "name", "doc", "created", "updated"},
}


def allows(role: Role, needed: Role) -> bool:
    """Whether a key of ``role`` may do what needs ``needed`` (admin ⊇ operator ⊇ viewer).
    An unknown ``role`` is allowed nothing; an unknown ``needed`` is a bug (ConfigError)."""
    if needed not in ROLES:
        raise ConfigError(f"unknown role {needed!r} (roles: {', '.join(ROLES)})")
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def check_tenant(tenant: object) -> str:
    """``tenant`` if it is a valid tenant name (``[a-z0-9][a-z0-9_-]{0,62}``), else ConfigError."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ConfigError(f"bad tenant name {tenant!r}: a tenant is 1-63 characters of "
                          f"{TENANT_PATTERN} (lower-case letters, digits, '_' and '-')")
    return tenant


def _check_role(role: object) -> Role:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    return role  # type: ignore[return-value]


def _check_rate(rate: object, what: str = "rate_per_min") -> int | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ConfigError(f"{what} must be a positive number of requests per minute or None "
                          f"(got {rate!r})")
    return rate


def _redact(text: str) -> str:
    """``text`` with any API secret in it reduced to its public key id."""
    return _SECRET_ANYWHERE.sub(lambda m: f"evo_{m.group(1)}_[redacted]", text)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = _redact(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """sha256(prev_hash + canonical JSON of the entry without its hash)."""
    body = {k: v for k, v in row.items() if k != "hash"}
    return hashlib.sha256((prev_hash + json.dumps(body, sort_keys=True)).encode()).hexdigest()


class UnknownKeyError(EvoError, KeyError):
    """No API key with that id (for that tenant)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ApiKey:
    """One API key, as the store holds it: public, so it never carries the secret or its hash."""

    id: str  # "k-<12 hex>"; the secret is "evo_<id>_<43 url-safe characters>"
    tenant: str
    role: Role
    name: str  # a label ("ci-bot")
    created: float
    revoked: float | None = None
    rate_per_min: int | None = None  # None: the server's default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the append-only audit log: who (key, tenant, role), what (action, target),
    when (t), the outcome (HTTP status, detail) and from where (ip), chained by hash."""

    seq: int
    t: float
    key_id: str | None
    tenant: str | None
    role: str | None
    action: str  # "POST /api/v1/optimize", "key.create", ...
    target: str | None  # the job / experiment / key acted on, if any
    status: int  # the HTTP status returned
    detail: str  # short: the error message or ""; never a secret nor a request body
    ip: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ServiceStore:
    """The service's keys, audit log, job index and named documents in one SQLite file.
    Safe to use from several threads, and from several processes sharing the file.

    >>> # store = ServiceStore(home / "service.sqlite")
    >>> # key, secret = store.create_key(tenant="acme", role="admin", name="ci")
    >>> # store.authenticate(secret) == key
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()  # the connection
        refuse_links(self.path, doing="open a service store")
        if self.path.exists() and not self.path.is_file():
            raise DamagedFileError(self.path, "is not a regular file (a folder is in its place?)",
                                   hint=_HINT)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path.parent}: cannot create the folder "
                               f"({exc.strerror or exc})") from exc
        with self._errors():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        try:
            with self._errors():
                check_store(conn, self.path, _COLUMNS, what="service store", hint=_HINT,
                            schema=_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # ---- the connection ----------------------------------------------------------------------
    def _errors(self) -> AbstractContextManager[None]:
        return store_errors(self.path, what="service store", hint=_HINT)

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConfigError(f"the service store {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction, BEGIN IMMEDIATE: the write lock at once, so a read-then-write (the
        audit chain's last hash, a name's existence) cannot be overtaken by another process."""
        with self._lock, self._errors(), immediate(self._live()) as conn:
            yield conn

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._errors():
            return self._live().execute(sql, tuple(args)).fetchall()

    # ---- keys --------------------------------------------------------------------------------
    def _key(self, row: Sequence[Any]) -> ApiKey:
        values = dict(zip(_KEY_FIELDS, row, strict=True))
        if values["role"] not in ROLES:
            raise DamagedFileError(self.path, f"key {values['id']}: unknown role "
                                   f"{values['role']!r}", hint=_HINT)
        return ApiKey(**values)

    def create_key(self, *, tenant: str, role: Role, name: str = "",
                   rate_per_min: int | None = None) -> tuple[ApiKey, str]:
        """A new key of ``tenant`` with ``role``; returns it and its secret, which is shown only
        this once (the store keeps sha256 of it)."""
        check_tenant(tenant)
        _check_role(role)
        _check_rate(rate_per_min)
        if not isinstance(name, str) or len(name) > 200:
            raise ConfigError(f"a key's name is a label of at most 200 characters (got {name!r})")
        key = ApiKey(id=f"k-{secrets.token_hex(6)}", tenant=tenant, role=role, name=name,
                     created=time.time(), rate_per_min=rate_per_min)
        secret = f"evo_{key.id}_{secrets.token_urlsafe(32)}"
        with self._tx() as conn:
            conn.execute("INSERT INTO keys (id, tenant, role, name, hash, created, revoked, "
                         "rate_per_min) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                         (key.id, tenant, role, name, _hash_secret(secret), key.created,
                          rate_per_min))
        return key, secret

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key whose secret is ``secret``; None for anything else (malformed, unknown,
        revoked, not a string), never an error about the input."""
        if not isinstance(secret, str) or len(secret) != _SECRET_LEN:
            return None
        match = _SECRET.fullmatch(secret)
        if match is None:
            return None
        rows = self._query(f"SELECT {', '.join(_KEY_FIELDS)}, hash FROM keys WHERE id = ?",
                           (match.group(1),))
        if not rows:
            return None
        *fields, stored = rows[0]
        if not hmac.compare_digest(str(stored), _hash_secret(secret)):
            return None
        key = self._key(fields)
        return None if key.revoked is not None else key

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant``), oldest first; revoked ones included."""
        sql = f"SELECT {', '.join(_KEY_FIELDS)} FROM keys"
        if tenant is None:
            rows = self._query(sql + " ORDER BY created, id")
        else:
            rows = self._query(sql + " WHERE tenant = ? ORDER BY created, id",
                               (check_tenant(tenant),))
        return [self._key(r) for r in rows]

    def key(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """The key ``key_id`` (of ``tenant``: another tenant's is unknown); UnknownKeyError."""
        rows = self._query(f"SELECT {', '.join(_KEY_FIELDS)} FROM keys WHERE id = ?", (key_id,))
        if not rows or (tenant is not None and rows[0][1] != tenant):
            raise UnknownKeyError(f"no API key {key_id!r}"
                                  + (f" for tenant {tenant!r}" if tenant is not None else ""))
        return self._key(rows[0])

    def revoke_key(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke ``key_id`` (of ``tenant``, if given: another tenant's key is unknown) at once;
        revoking a revoked key keeps its first revocation time. UnknownKeyError if none."""
        with self._tx() as conn:
            row = conn.execute(f"SELECT {', '.join(_KEY_FIELDS)} FROM keys WHERE id = ?",
                               (key_id,)).fetchone()
            if row is None or (tenant is not None and row[1] != tenant):
                raise UnknownKeyError(f"no API key {key_id!r}"
                                      + (f" for tenant {tenant!r}" if tenant is not None else ""))
            key = self._key(row)
            if key.revoked is None:
                now = time.time()
                conn.execute("UPDATE keys SET revoked = ? WHERE id = ?", (now, key_id))
                key = ApiKey(**{**key.to_dict(), "revoked": now})
        return key

    # ---- audit -------------------------------------------------------------------------------
    def audit(self, *, action: str, status: int, key: ApiKey | None = None,
              target: str | None = None, detail: str = "", ip: str | None = None,
              tenant: str | None = None) -> AuditEntry:
        """Append one entry (who: ``key``, or only ``tenant`` for an action without a key, such
        as the CLI's; what: ``action`` on ``target``; the outcome: ``status``, ``detail``).
        ``detail`` is cut to 500 characters and any API secret in the text is redacted."""
        if isinstance(status, bool) or not isinstance(status, int):
            raise ConfigError(f"an audit entry's status is an int (got {status!r})")
        if not isinstance(action, str) or not action:
            raise ConfigError(f"an audit entry needs an action (got {action!r})")
        if key is not None:
            tenant = key.tenant
        elif tenant is not None:
            check_tenant(tenant)
        row: dict[str, Any] = {
            "t": time.time(), "key_id": key.id if key else None, "tenant": tenant,
            "role": key.role if key else None, "action": _clip(action, MAX_FIELD),
            "target": _clip(target, MAX_FIELD), "status": status,
            "detail": _clip(detail or "", MAX_DETAIL), "ip": _clip(ip, 100)}
        with self._tx() as conn:
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            row["seq"], row["prev_hash"] = (last[0] + 1, last[1]) if last else (1, GENESIS)
            row["hash"] = _chain_hash(row["prev_hash"], row)
            conn.execute(f"INSERT INTO audit ({', '.join(_AUDIT_FIELDS)}) VALUES "
                         f"({', '.join('?' * len(_AUDIT_FIELDS))})",
                         tuple(row[f] for f in _AUDIT_FIELDS))
        return AuditEntry(**row)

    def audit_log(self, *, tenant: str | None = None, after: int = 0, limit: int = 100,
                  action: str | None = None) -> list[AuditEntry]:
        """Entries after seq ``after``, oldest first, at most ``limit`` (capped at 1000), of
        ``tenant`` and ``action`` when given."""
        limit = _page(limit, "limit")
        if isinstance(after, bool) or not isinstance(after, int):
            raise ConfigError(f"after must be an audit seq (an int; got {after!r})")
        where, args = ["seq > ?"], [after]
        if tenant is not None:
            where.append("tenant = ?")
            args.append(check_tenant(tenant))
        if action is not None:
            where.append("action = ?")
            args.append(action)
        rows = self._query(f"SELECT {', '.join(_AUDIT_FIELDS)} FROM audit WHERE "
                           f"{' AND '.join(where)} ORDER BY seq LIMIT ?", (*args, limit))
        return [AuditEntry(**dict(zip(_AUDIT_FIELDS, r, strict=True))) for r in rows]

    def verify_audit(self) -> int:
        """Check the whole hash chain; returns the number of entries checked. An entry edited,
        removed or inserted out of the chain is a DamagedFileError naming the first bad seq.
        (Removing the newest entries leaves a valid shorter chain: keep a copy of the last
        hash elsewhere to detect that.)"""
        prev, expected_seq, n = GENESIS, 1, 0
        with self._lock, self._errors():
            cursor = self._live().execute(
                f"SELECT {', '.join(_AUDIT_FIELDS)} FROM audit ORDER BY seq")
            while batch := cursor.fetchmany(1000):
                for values in batch:
                    row = dict(zip(_AUDIT_FIELDS, values, strict=True))
                    seq = row["seq"]
                    if seq != expected_seq:
                        problem = f"audit entry {expected_seq} is missing (next is {seq})"
                    elif row["prev_hash"] != prev:
                        problem = (f"audit entry {seq} does not follow entry {seq - 1} "
                                   f"(its prev_hash differs)")
                    elif row["hash"] != _chain_hash(prev, row):
                        problem = f"audit entry {seq} was changed (its hash does not match)"
                    else:
                        prev, expected_seq, n = row["hash"], seq + 1, n + 1
                        continue
                    raise DamagedFileError(self.path, f"the audit log is tampered: {problem}",
                                           hint="restore the file from a backup and keep "
                                                "this copy as evidence")
        return n

    # ---- the job index -----------------------------------------------------------------------
    def add_job(self, job_id: str, *, tenant: str, key_id: str, kind: str, label: str,
                created: float | None = None) -> None:
        """Index a job the service scheduled under ``tenant`` (``created``: now by default)."""
        check_tenant(tenant)
        if not isinstance(job_id, str) or not job_id:
            raise ConfigError(f"a job id is a non-empty string (got {job_id!r})")
        try:
            with self._tx() as conn:
                conn.execute("INSERT INTO jobs (job_id, tenant, key_id, kind, label, created) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (job_id, tenant, key_id, kind, label,
                              time.time() if created is None else float(created)))
        except sqlite3.IntegrityError:
            raise ConfigError(f"job {job_id!r} is already in the service's job index "
                              f"{self.path}") from None

    def job_tenant(self, job_id: str) -> str | None:
        """The tenant of ``job_id``, or None for a job the service does not know."""
        rows = self._query("SELECT tenant FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0][0] if rows else None

    def job_ids(self, tenant: str, *, kind: str | None = None, label: str | None = None,
                limit: int = 50, offset: int = 0) -> tuple[list[str], int]:
        """One page of ``tenant``'s job ids, newest first, and how many match in all
        (``limit`` is capped at 1000)."""
        limit = _page(limit, "limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"offset must be an int >= 0 (got {offset!r})")
        where, args = ["tenant = ?"], [check_tenant(tenant)]
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if label is not None:
            where.append("label = ?")
            args.append(label)
        clause = " AND ".join(where)
        with self._lock, self._errors():
            conn = self._live()
            conn.execute("BEGIN")  # one snapshot for the page and the total
            try:
                total = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {clause}",
                                     args).fetchone()[0]
                rows = conn.execute(f"SELECT job_id FROM jobs WHERE {clause} "
                                    f"ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
            finally:
                conn.execute("COMMIT")
        return [r[0] for r in rows], total

    # ---- named documents ---------------------------------------------------------------------
    def put(self, kind: DocKind, tenant: str, name: str, doc: dict[str, Any], *,
            replace: bool = False) -> None:
        """Store ``doc`` (a JSON object) as ``tenant``'s ``kind`` named ``name``; an existing
        one is overwritten only with ``replace=True``, else ConfigError."""
        _check_doc_key(kind, tenant, name)
        if not isinstance(doc, dict):
            raise ConfigError(f"{kind} {name!r}: a document is a JSON object (got "
                              f"{type(doc).__name__})")
        try:
            text = json.dumps(doc, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{kind} {name!r} is not JSON-able ({exc})") from None
        now = time.time()
        with self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM docs WHERE kind = ? AND tenant = ? AND name = ?",
                                  (kind, tenant, name)).fetchone()
            if exists and not replace:
                raise ConfigError(f"{kind} {name!r} already exists for tenant {tenant!r} "
                                  f"(replace it explicitly, or choose another name)")
            if exists:
                conn.execute("UPDATE docs SET doc = ?, updated = ? WHERE kind = ? AND tenant = ? "
                             "AND name = ?", (text, now, kind, tenant, name))
            else:
                conn.execute("INSERT INTO docs (kind, tenant, name, doc, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (kind, tenant, name, text, now, now))

    def get(self, kind: DocKind, tenant: str, name: str) -> dict[str, Any] | None:
        """``tenant``'s ``kind`` named ``name``, or None."""
        _check_doc_key(kind, tenant, name)
        rows = self._query("SELECT doc FROM docs WHERE kind = ? AND tenant = ? AND name = ?",
                           (kind, tenant, name))
        if not rows:
            return None
        try:
            doc = json.loads(rows[0][0])
        except ValueError as exc:
            raise DamagedFileError(self.path, f"{kind} {name!r} of tenant {tenant!r} is not "
                                   f"JSON ({exc})", hint=_HINT) from None
        if not isinstance(doc, dict):
            raise DamagedFileError(self.path, f"{kind} {name!r} of tenant {tenant!r} is not a "
                                   f"JSON object", hint=_HINT)
        return doc

    def names(self, kind: DocKind, tenant: str) -> list[str]:
        """The names of ``tenant``'s documents of ``kind``, sorted."""
        _check_doc_key(kind, tenant, None)
        return [r[0] for r in self._query("SELECT name FROM docs WHERE kind = ? AND tenant = ? "
                                          "ORDER BY name", (kind, tenant))]

    # ---- life --------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (idempotent); the store cannot be used afterwards."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ServiceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServiceStore({str(self.path)!r})"


def _page(limit: object, what: str) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{what} must be an int >= 1 (got {limit!r})")
    return min(limit, MAX_PAGE)


def _check_doc_key(kind: object, tenant: object, name: object) -> None:
    if kind not in DOC_KINDS:
        raise ConfigError(f"unknown kind of document {kind!r} (kinds: {', '.join(DOC_KINDS)})")
    check_tenant(tenant)
    if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
        raise ConfigError(f"a {kind}'s name is 1-200 characters (got {name!r})")


class RateLimiter:
    """A token bucket per API key, in memory, thread-safe.

    A key may spend ``burst`` requests at once and then ``rate`` per minute, where ``rate`` is
    the key's ``rate_per_min`` or ``per_min``. ``burst`` defaults to ten seconds' worth of the
    key's rate (at least 1): a client's short burst passes, a flood is paced. A bucket that has
    refilled is forgotten (a fresh one is the same), so memory follows the keys active in the
    last few seconds. ``clock``: monotonic seconds (a fake one in tests).

    >>> # limiter = RateLimiter(per_min=600); wait = limiter.check(key)  # 0.0: go ahead
    """

    def __init__(self, per_min: int = 600, burst: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_rate(per_min, "per_min")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                                  or burst < 1):
            raise ConfigError(f"burst must be a positive number of requests or None "
                              f"(got {burst!r})")
        self.per_min, self.burst, self._clock = per_min, burst, clock
        self._lock = threading.Lock()
        # key id -> (tokens, when counted, when full again)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self._prune_at = 1024

    def capacity(self, key: ApiKey) -> tuple[float, float]:
        """The key's (burst, tokens per second)."""
        rate = key.rate_per_min or self.per_min
        burst = self.burst if self.burst is not None else max(1, rate // 6)
        return float(burst), rate / 60.0

    def check(self, key: ApiKey) -> float:
        """Take one of ``key``'s tokens: 0.0 if there was one, else the seconds until there is
        one (nothing is taken)."""
        burst, per_s = self.capacity(key)
        with self._lock:
            now = self._clock()
            tokens, at, _ = self._buckets.get(key.id, (burst, now, now))
            tokens = min(burst, tokens + max(0.0, now - at) * per_s)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / per_s
            if not wait:
                tokens -= 1.0
            self._buckets[key.id] = (tokens, now, now + (burst - tokens) / per_s)
            if len(self._buckets) >= self._prune_at:
                # forget the buckets that are full again; amortized O(1) per check
                self._buckets = {k: b for k, b in self._buckets.items() if b[2] > now}
                self._prune_at = max(1024, 2 * len(self._buckets))
        return wait

    def __len__(self) -> int:
        """How many buckets are held (the keys active lately)."""
        return len(self._buckets)
