"""The service's HTTP and WebSocket API: :func:`create_app` over a :class:`Service`.

A :class:`Service` holds what the routes share: the :class:`~evo.service.store.ServiceStore`
(keys, audit log, job index), the :class:`~evo.service.jobs.ServiceJobs` (the job queue and its
workers), the per-key :class:`~evo.service.store.RateLimiter` and the :class:`EventHub` that
fans a job's events out to its WebSocket subscribers.

Every route but ``/api/v1/health``, the dashboard and the docs asks for a key
(``Authorization: Bearer <secret>`` or ``X-API-Key``) of a role at least the route's. One
ASGI middleware in front of the routes takes a mutating request's rate token before its body is
read (429: malformed or oversized bodies count too), refuses a body over the limit before
reading it (413) and writes one audit entry for every mutating request (POST, PUT, PATCH,
DELETE) with its final status, refused ones included. Errors are ``{"error": message, "where":
optional}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from evo.data import DataError
from evo.errors import ConfigError, DamagedFileError, EvoError, StorageError
from evo.integrations.ray import RayExecutor
from evo.service.jobs import ServiceError, ServiceJobs
from evo.service.specs import (
    AlgorithmRequest,
    DatasetRequest,
    ExperimentRequest,
    OptimizeRequest,
)
from evo.service.store import ApiKey, RateLimiter, Role, ServiceStore, UnknownKeyError, allows

__all__ = ["EventHub", "Service", "ServiceConfig", "create_app"]

log = logging.getLogger("evo.service")

API = "/api/v1"
STATIC = Path(__file__).parent / "static"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
POLL_S = 0.1  # how often a job's hub reads its new events
WS_KEY_WAIT_S = 10.0  # how long a WebSocket may take to send its {"key": ...} message
# the largest paging number (offset, seq) a query may give: SQLite's integers are 64-bit, and a
# larger one would be an OverflowError in the store instead of a 422
MAX_INT = 2**62
WS_REKEY_S = 2.0  # a quiet stream checks its key this often (a busy one before each batch)
# where a request's outcome is left for the audit (the ASGI scope's "state" dict)
_KEY, _TARGET, _DETAIL = "evo_key", "evo_target", "evo_detail"
_RATED = "evo_rated"  # the guard took the key's token already: the route takes none
# the dashboard is never framed by another site (clickjacking)
FRAME_HEADERS = ((b"x-frame-options", b"DENY"),
                 (b"content-security-policy", b"frame-ancestors 'none'"))


@dataclass
class ServiceConfig:
    """How ``evo serve`` runs: where its home is, where it listens, its workers and limits."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    rate_per_min: int = 600
    max_body_bytes: int = 10 * 2**20
    mlflow_uri: str | None = None
    ray: str | None = None  # None: threads in this process; "local" or an address: Ray
    price: tuple[float, float] | None = None  # $ per million prompt, completion tokens


class Service:
    """What the routes share: the store, the jobs (whose workers start with ``start``), the
    rate limiter and the WebSocket hub. ``lm`` answers every job's calls; ``cache`` is the
    response cache the jobs use (``False``: none)."""

    def __init__(self, config: ServiceConfig, *, lm: Any, reflection_lm: Any = None,
                 start: bool = True, cache: Any = True) -> None:
        self.config = config
        home = Path(config.home)
        home.mkdir(parents=True, exist_ok=True)
        self.store = ServiceStore(home / "service.sqlite")
        try:
            executor = None
            if config.ray is not None:
                executor = RayExecutor(address=None if config.ray == "local" else config.ray)
            self.jobs = ServiceJobs(home, self.store, lm=lm, reflection_lm=reflection_lm,
                                    workers=config.workers, cache=cache, executor=executor,
                                    mlflow_uri=config.mlflow_uri, price=config.price,
                                    start=start)
        except BaseException:
            self.store.close()
            raise
        self.limiter = RateLimiter(config.rate_per_min)
        self.hub = EventHub(self.jobs)
        self._closed = False

    def close(self) -> None:
        """Stop the workers (a running job goes back to the queue) and close the stores."""
        if self._closed:
            return
        self._closed = True
        try:
            self.jobs.close()
        finally:
            self.store.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the WebSocket hub: one reader per job, any number of subscribers ----------------------
_END = "end"


class _Subscriber:
    """One WebSocket's queue and the last seq put in it (it gets only later ones)."""

    def __init__(self, after: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.after = after

    def put(self, event: dict[str, Any]) -> None:
        if "seq" not in event:  # the end
            self.queue.put_nowait(event)
        elif event["seq"] > self.after:
            self.after = event["seq"]
            self.queue.put_nowait(event)


class _JobFeed:
    """One job's events as read so far, and its subscribers. One task reads the job's new
    events and puts each in every subscriber's queue in the same step as it appends it to
    ``events``; a subscriber takes from ``events`` and joins without awaiting in between, so it
    misses none, and its own seq filter keeps it from getting one twice."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.subscribers: set[_Subscriber] = set()
        self.end: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None


class EventHub:
    """Fans each job's events out to its WebSocket subscribers: one polling task per job with
    subscribers (not one per subscriber), ended when the job has finished and its last event
    is sent, or when its last subscriber leaves."""

    def __init__(self, jobs: ServiceJobs, *, poll_s: float = POLL_S) -> None:
        self.jobs = jobs
        self.poll_s = poll_s
        self._feeds: dict[str, _JobFeed] = {}

    @property
    def readers(self) -> int:
        """Jobs being read now (one task each)."""
        return sum(1 for f in self._feeds.values() if f.task is not None and not f.task.done())

    def subscribe(self, tenant: str, job_id: str, after: int
                  ) -> tuple[asyncio.Queue[dict[str, Any]], Callable[[], None]]:
        """A queue of the job's events with ``seq > after`` in order, then ``{"event": "end",
        "status": ...}``; and the function that unsubscribes. Call from the event loop."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _JobFeed()
            feed.task = asyncio.get_running_loop().create_task(self._read(tenant, job_id, feed))
        sub = _Subscriber(after)
        for event in feed.events:  # catch up: no await from here to joining
            sub.put(event)
        if feed.end is not None:
            sub.put(feed.end)
        else:
            feed.subscribers.add(sub)

        def unsubscribe() -> None:
            feed.subscribers.discard(sub)
            if not feed.subscribers and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

        return sub.queue, unsubscribe

    async def _read(self, tenant: str, job_id: str, feed: _JobFeed) -> None:
        seen = 0
        try:
            while True:
                # finished is asked before reading: a job that ends during the read is read again
                done = await anyio.to_thread.run_sync(self.jobs.finished, job_id)
                new = await anyio.to_thread.run_sync(
                    functools.partial(self.jobs.events, tenant, job_id, after=seen))
                for event in new:
                    if event["seq"] <= seen:
                        continue
                    seen = event["seq"]
                    feed.events.append(event)
                    for sub in feed.subscribers:
                        sub.put(event)
                if done:
                    status = await anyio.to_thread.run_sync(self.jobs.status, tenant, job_id)
                    self._finish(job_id, feed, {"event": _END, "status": status["status"]})
                    return
                await asyncio.sleep(self.poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job vanished or its store failed: tell the subscribers
            log.exception("reading the events of job %s", job_id)
            self._finish(job_id, feed, {"event": _END, "status": "unknown",
                                        "error": f"{type(exc).__name__}: reading events failed"})

    def _finish(self, job_id: str, feed: _JobFeed, end: dict[str, Any]) -> None:
        feed.end = end
        for sub in feed.subscribers:
            sub.put(end)
        feed.subscribers.clear()
        if self._feeds.get(job_id) is feed:
            del self._feeds[job_id]

    async def aclose(self) -> None:
        """Stop every reader (the server is shutting down); subscribers get an end with
        status "shutdown"."""
        feeds = list(self._feeds.items())
        self._feeds.clear()
        for job_id, feed in feeds:
            if feed.task is not None:
                feed.task.cancel()
            self._finish(job_id, feed, {"event": _END, "status": "shutdown"})


# ---- errors ---------------------------------------------------------------------------------
class Refused(Exception):
    """A request refused before it did anything: its status, message and headers."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 where: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.where = where


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as a path: ("body", "data", "rows", 3, "x") -> "body.data.rows[3].x"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error(request: Request, status: int, message: str, *, where: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    setattr(request.state, _DETAIL, message[:500])
    body: dict[str, Any] = {"error": message}
    if where is not None:
        body["where"] = where
    return JSONResponse(body, status_code=status, headers=headers)


def _http_message(request: Request, exc: StarletteHTTPException) -> str:
    """The message of an HTTP error raised by the framework: an unknown route or method, or a
    body it could not decode (the cause named)."""
    method, path = request.method, request.url.path
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no route {method} {path} (the API is listed at /docs)"
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return f"method {method} is not allowed on {path}" + (f" (allowed: {allow})"
                                                                if allow else "")
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:
        if isinstance(cause, UnicodeDecodeError):
            why = "it is not UTF-8 text (a compressed body? Content-Encoding is not supported)"
        elif isinstance(cause, RecursionError):
            why = "it is nested too deeply"
        else:
            why = f"{type(cause).__name__}: {str(cause)[:200]}"
        return f"the request body could not be read as JSON: {why}"
    return str(exc.detail)


def _evo_status(exc: EvoError) -> int:
    if isinstance(exc, ServiceError):
        return int(exc.status)
    if isinstance(exc, UnknownKeyError):
        return 404
    if isinstance(exc, (ConfigError, DataError)):
        return 422
    return 400


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return _error(request, exc.status, str(exc), where=exc.where, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx") or {}
            loc = first.get("loc") or ()
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            return _error(request, 400, f"malformed JSON: {ctx.get('error', 'not JSON')}{at}")
        where = _where(first.get("loc") or ())
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return _error(request, 422, f"{where}: {first.get('msg', 'invalid')}{more}",
                      where=where)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request, exc.status_code, _http_message(request, exc),
                      headers=dict(exc.headers or {}))

    @app.exception_handler(EvoError)
    async def evo_error(request: Request, exc: EvoError) -> JSONResponse:
        if isinstance(exc, (StorageError, DamagedFileError)):
            log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
            return _error(request, 500, "the service's storage failed: see the server log")
        return _error(request, _evo_status(exc), str(exc), where=getattr(exc, "where", None))


# ---- the body limit and the audit: one pure ASGI middleware --------------------------------
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class GuardMiddleware:
    """Takes a mutating request's rate token, when it carries a valid key, before its body is
    read (429 with Retry-After: malformed or oversized bodies count against the rate too);
    refuses a body over ``max_body_bytes`` (413, from Content-Length before reading any of
    it, or by counting a chunked body's bytes as they come); and writes one audit entry for each
    mutating request with its final status, the key that authenticated (if any), the id acted
    on and the error message (never the body, never a secret). An exception no handler knew is
    logged and answered 500 with a generic message."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, service: Service,
                 max_body_bytes: int, routes: list[Any]) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body_bytes
        self.routes = routes  # the app's: to name the route of a request refused before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        mutating = scope["method"] in MUTATING
        started: list[int] = []

        dashboard = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not started:
                started.append(message["status"])
                if mutating:
                    await self._audit(scope, message["status"])
                if dashboard:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      *FRAME_HEADERS]}
            await send(message)

        if mutating and await self._over_rate(scope, audited_send):
            return
        refusal = self._too_big(scope)
        body = b""
        if refusal is None and mutating:
            body, refusal = await self._read_body(receive)
        if refusal is not None:
            state[_DETAIL] = refusal
            await _send_json(audited_send, 413, {"error": refusal}, close=True)
            return
        if mutating:
            receive = _replay(body, receive)
        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            state[_DETAIL] = "internal error"
            await _send_json(audited_send, 500,
                             {"error": "internal error: the server log has the details"})

    async def _over_rate(self, scope: Scope, send: Send) -> bool:
        """For a mutating request with a valid key: take one of the key's tokens before its
        body is read, so a body refused later (malformed, too big) counts against the rate;
        answer 429 and return True when the key has none left."""
        secret = secret_of(Headers(scope=scope))
        if not secret:
            return False
        key = await anyio.to_thread.run_sync(self.service.store.authenticate, secret)
        if key is None:
            return False  # the route answers 401 (or the body's own error first)
        state = scope["state"]
        state[_KEY], state[_RATED] = key, True
        try:
            check_rate(self.service, key)
        except Refused as exc:
            state[_DETAIL] = str(exc)
            await _send_json(send, exc.status, {"error": str(exc)}, close=True,
                             headers=exc.headers)
            return True
        return False

    def _too_big(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    return None  # the server itself refuses a bad Content-Length
                if n > self.max_body:
                    return (f"request body of {n} bytes is over the limit of "
                            f"{self.max_body} bytes")
        return None

    async def _read_body(self, receive: Receive) -> tuple[bytes, str | None]:
        chunks, n = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), None  # disconnected: the app sees an empty body
            chunk = message.get("body", b"")
            n += len(chunk)
            if n > self.max_body:
                return b"", f"request body is over the limit of {self.max_body} bytes"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _audit(self, scope: Scope, status: int) -> None:
        state = scope["state"]
        key: ApiKey | None = state.get(_KEY)  # the guard's, or the route's
        params = scope.get("path_params") or {}
        target = state.get(_TARGET) or params.get("job_id") or params.get("key_id")
        client = scope.get("client")
        try:
            await anyio.to_thread.run_sync(lambda: self.service.store.audit(
                action=f"{scope['method']} {self._route_path(scope)}", status=status, key=key,
                target=target, detail=state.get(_DETAIL, "") if status >= 400 else "",
                ip=client[0] if client else None))
        except Exception:  # an audit that cannot be written must not hide the answer
            log.exception("writing the audit entry of %s %s", scope["method"], scope["path"])

    def _route_path(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                if candidate.matches(scope)[0] == Match.FULL:
                    route = candidate
                    break
        path = getattr(route, "path", None) or scope["path"]
        return re.sub(r"\{(\w+)\}", lambda m: "{id}" if m.group(1).endswith("id") else m.group(0),
                      path)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, payload: dict[str, Any], *,
                     close: bool = False, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(payload).encode()
    headers_ = [(b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    if close:  # the unread rest of the body is not read: the connection cannot be reused
        headers_.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers_})
    await send({"type": "http.response.body", "body": data})


# ---- auth -----------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="an evo API key: `evo serve keys create`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="the same key, for clients that cannot set Authorization")


def secret_of(headers: Any) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    auth = headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def identify(service: Service, secret: str | None) -> ApiKey:
    """The key of ``secret`` (known, not revoked); :class:`Refused` 401 otherwise."""
    if not secret:
        raise Refused(401, "missing API key: send 'Authorization: Bearer <key>' or "
                      "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
    key = service.store.authenticate(secret)
    if key is None:
        raise Refused(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def check_rate(service: Service, key: ApiKey) -> None:
    """Take one of the key's tokens; :class:`Refused` 429 with Retry-After when it has none."""
    wait = service.limiter.check(key)
    if wait > 0:
        raise Refused(429, f"rate limit of key {key.id} reached: retry in {wait:.1f} s",
                      headers={"Retry-After": str(max(1, round(wait + 0.5)))})


def authenticate(service: Service, secret: str | None) -> ApiKey:
    """The key of ``secret`` within its rate; :class:`Refused` 401 or 429."""
    key = identify(service, secret)
    check_rate(service, key)
    return key


def _require(service: Service, role: Role) -> Callable[..., ApiKey]:
    def dependency(request: Request,
                   bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                   header: Annotated[str | None, Depends(_header)]) -> ApiKey:
        key = getattr(request.state, _KEY, None)
        if key is None or not getattr(request.state, _RATED, False):
            key = identify(service, bearer.credentials if bearer is not None else header)
            setattr(request.state, _KEY, key)  # the audit names the key of a refused request
            check_rate(service, key)
        # else the guard authenticated this (mutating) request's key and took its token
        if not allows(key.role, role):
            raise Refused(403, f"key {key.id} has role {key.role!r}; this needs {role!r}")
        return key

    return dependency


# ---- the routes -----------------------------------------------------------------------------
class KeyRequest(BaseModel):
    """A new API key of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    name: str = Field("", max_length=100)
    rate_per_min: int | None = Field(None, ge=1, le=1_000_000)


DESCRIPTION = """Start prompt optimizations, watch them live, run A/B experiments, see analytics.

Authenticate with an API key (`Authorization: Bearer evo_...` or `X-API-Key`); roles are viewer
< operator < admin. Errors are `{"error": message, "where": location}`. Each job's events stream
over `WS /ws/optimizations/{id}?after=SEQ` (key by header, `?key=`, or a first message
`{"key": ...}`)."""


def _accepted(request: Request, job: dict[str, Any], location: str) -> JSONResponse:
    """202 for a queued job, with where to follow it; the job is the audit entry's target."""
    setattr(request.state, _TARGET, job["id"])
    return JSONResponse(job, status_code=202, headers={"Location": location})


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service``: the REST routes, the WebSocket, the dashboard."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.hub.aclose()

    app = FastAPI(title="evo optimization service", version="1", description=DESCRIPTION,
                  lifespan=lifespan)
    _install_errors(app)
    viewer = Depends(_require(service, "viewer"))
    operator = Depends(_require(service, "operator"))
    admin = Depends(_require(service, "admin"))
    jobs = service.jobs

    @app.get(f"{API}/health", tags=["service"], summary="Is the service up; jobs queued, running")
    def health() -> dict[str, Any]:
        return {"ok": True, "jobs": jobs.counts()}

    @app.post(f"{API}/optimize", status_code=202, tags=["optimizations"],
              summary="Start an optimization (a job); 202 with its id")
    def optimize(body: OptimizeRequest, request: Request, key: ApiKey = operator
                 ) -> JSONResponse:
        out = jobs.submit(key, body)
        return _accepted(request, out, f"{API}/optimizations/{out['id']}/status")

    @app.get(f"{API}/optimizations", tags=["optimizations"],
             summary="The tenant's jobs, newest first, filtered and paged")
    def optimizations(key: ApiKey = viewer, status: str | None = None, kind: str | None = None,
                      name: str | None = None, limit: int = Query(50, ge=1, le=500),
                      offset: int = Query(0, ge=0, le=MAX_INT)) -> dict[str, Any]:
        return jobs.list(key.tenant, status=status, kind=kind, name=name, limit=limit,
                         offset=offset)

    @app.get(f"{API}/optimizations/{{job_id}}/status", tags=["optimizations"],
             summary="A job's progress, best score so far, calls, cost, ETA")
    def job_status(job_id: str, key: ApiKey = viewer) -> dict[str, Any]:
        return jobs.status(key.tenant, job_id)

    @app.get(f"{API}/optimizations/{{job_id}}/result", tags=["optimizations"],
             summary="A finished job's result (409 while it runs)")
    def job_result(job_id: str, key: ApiKey = viewer) -> dict[str, Any]:
        return jobs.result(key.tenant, job_id)

    @app.get(f"{API}/optimizations/{{job_id}}/events", tags=["optimizations"],
             summary="A job's events after seq `after` (the same as the WebSocket's)")
    def job_events(job_id: str, key: ApiKey = viewer, after: int = Query(0, ge=0, le=MAX_INT)
                   ) -> dict[str, Any]:
        items = jobs.events(key.tenant, job_id, after=after)
        return {"items": items, "last_seq": items[-1]["seq"] if items else after,
                "finished": jobs.finished(job_id)}

    @app.delete(f"{API}/optimizations/{{job_id}}", tags=["optimizations"],
                summary="Cancel a job (409 if it has finished)")
    def cancel(job_id: str, key: ApiKey = operator) -> dict[str, Any]:
        return jobs.cancel(key.tenant, job_id)

    @app.post(f"{API}/experiments", status_code=202, tags=["experiments"],
              summary="Start an A/B experiment of two programs or versions (a job)")
    def experiment(body: ExperimentRequest, request: Request, key: ApiKey = operator
                   ) -> JSONResponse:
        out = jobs.submit_experiment(key, body)
        return _accepted(request, out, f"{API}/experiments/{out['id']}")

    @app.get(f"{API}/experiments", tags=["experiments"], summary="The tenant's experiments")
    def experiments(key: ApiKey = viewer, status: str | None = None, name: str | None = None,
                    limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_INT)
                    ) -> dict[str, Any]:
        page = jobs.list(key.tenant, status=status, kind="experiment", name=name, limit=limit,
                         offset=offset)
        # each item as GET /experiments/{id} has it: a done one with its result
        page["items"] = [{**item, "result": jobs.result(key.tenant, item["id"])
                          if item["status"] == "done" else None} for item in page["items"]]
        return page

    @app.get(f"{API}/experiments/{{job_id}}", tags=["experiments"],
             summary="An experiment's status, and its result once done")
    def experiment_status(job_id: str, key: ApiKey = viewer) -> dict[str, Any]:
        status = jobs.status(key.tenant, job_id)
        if status.get("kind") != "experiment":
            raise Refused(404, f"no experiment {job_id}")
        result = jobs.result(key.tenant, job_id) if status["status"] == "done" else None
        return {**status, "result": result}

    @app.get(f"{API}/analytics/performance", tags=["analytics"],
             summary="Per program name and per agent: scores over time, versions, ROI")
    def analytics(key: ApiKey = viewer, agent: str | None = None, name: str | None = None
                  ) -> dict[str, Any]:
        return jobs.analytics(key.tenant, agent=agent, name=name)

    @app.post(f"{API}/algorithms/custom", status_code=201, tags=["algorithms"],
              summary="Register a declarative optimizer (a base, parameters, operators)")
    def algorithm(body: AlgorithmRequest, request: Request, key: ApiKey = admin
                  ) -> dict[str, Any]:
        out = jobs.register_algorithm(key, body)
        setattr(request.state, _TARGET, body.name)
        return out

    @app.get(f"{API}/algorithms", tags=["algorithms"],
             summary="Built-in optimizers (with their parameters) and the tenant's own")
    def algorithms(key: ApiKey = viewer) -> dict[str, Any]:
        return jobs.algorithms(key.tenant)

    @app.post(f"{API}/datasets", status_code=201, tags=["datasets"],
              summary="Register a dataset of rows under a name")
    def dataset(body: DatasetRequest, request: Request, key: ApiKey = operator
                ) -> dict[str, Any]:
        out = jobs.register_dataset(key, body)
        setattr(request.state, _TARGET, body.name)
        return out

    @app.get(f"{API}/datasets", tags=["datasets"], summary="The tenant's registered datasets")
    def datasets(key: ApiKey = viewer) -> dict[str, Any]:
        return {"items": service.store.names("dataset", key.tenant)}

    @app.get(f"{API}/audit", tags=["access"], summary="The tenant's audit log, oldest first")
    def audit(key: ApiKey = admin, after: int = Query(0, ge=0, le=MAX_INT),
              limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        entries = service.store.audit_log(tenant=key.tenant, after=after, limit=limit)
        return {"items": [e.to_dict() for e in entries]}

    @app.post(f"{API}/keys", status_code=201, tags=["access"],
              summary="Create an API key of the tenant (its secret is shown once)")
    def create_key(body: KeyRequest, request: Request, key: ApiKey = admin) -> dict[str, Any]:
        limit = service.config.rate_per_min
        if body.rate_per_min is not None and body.rate_per_min > limit:
            # a tenant's admin may lower a key's rate, never raise it above the server's
            raise Refused(422, f"rate_per_min {body.rate_per_min} is over the server's limit "
                          f"of {limit} requests per minute", where="body.rate_per_min")
        new, secret = service.store.create_key(tenant=key.tenant, role=body.role,
                                               name=body.name, rate_per_min=body.rate_per_min)
        setattr(request.state, _TARGET, new.id)
        return {**new.to_dict(), "secret": secret}

    @app.get(f"{API}/keys", tags=["access"], summary="The tenant's API keys (no secrets)")
    def keys(key: ApiKey = admin) -> dict[str, Any]:
        return {"items": [k.to_dict() for k in service.store.keys(key.tenant)]}

    @app.delete(f"{API}/keys/{{key_id}}", tags=["access"], summary="Revoke an API key")
    def revoke(key_id: str, key: ApiKey = admin) -> dict[str, Any]:
        return service.store.revoke_key(key_id, tenant=key.tenant).to_dict()

    @app.websocket("/ws/optimizations/{job_id}")
    async def ws_events(websocket: WebSocket, job_id: str, after: int = 0) -> None:
        await _stream(service, websocket, job_id, after)

    _install_dashboard(app)
    app.add_middleware(GuardMiddleware, service=service,  # type: ignore[arg-type]
                       max_body_bytes=service.config.max_body_bytes, routes=app.router.routes)
    app.state.service = service
    return app


def _install_dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Any:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse({"error": "the dashboard is not installed"}, status_code=404)
        return FileResponse(page, media_type="text/html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")


# ---- the WebSocket --------------------------------------------------------------------------
async def _ws_key(service: Service, websocket: WebSocket) -> ApiKey:
    """The key of a WebSocket: from its headers, ``?key=``, or a first ``{"key": ...}``."""
    secret = secret_of(websocket.headers) or websocket.query_params.get("key")
    if not secret:
        with contextlib.suppress(TimeoutError, ValueError, WebSocketDisconnect):
            first = await asyncio.wait_for(websocket.receive_text(), WS_KEY_WAIT_S)
            doc = json.loads(first)
            secret = doc.get("key") if isinstance(doc, dict) else None
    return await anyio.to_thread.run_sync(authenticate, service, secret)


def _key_live(service: Service, key_id: str) -> bool:
    """Whether key ``key_id`` is still known and not revoked (a streaming WebSocket asks)."""
    try:
        return service.store.key(key_id).revoked is None
    except UnknownKeyError:
        return False


async def _stream(service: Service, websocket: WebSocket, job_id: str, after: int) -> None:
    await websocket.accept()
    try:
        key = await _ws_key(service, websocket)
        await anyio.to_thread.run_sync(service.jobs.status, key.tenant, job_id)
    except Refused as exc:
        await websocket.close(code=4000 + exc.status, reason=str(exc)[:120])
        return
    except ServiceError as exc:
        await websocket.close(code=4000 + int(exc.status), reason=str(exc)[:120])
        return
    queue, unsubscribe = service.hub.subscribe(key.tenant, job_id, max(0, after))

    async def pump() -> int:
        """Send the queue's events, each batch only while the key is live; the close code."""
        while True:
            try:
                batch = [await asyncio.wait_for(queue.get(), WS_REKEY_S)]
            except TimeoutError:  # a quiet job: its stream is still checked every few seconds
                batch = []
            while not queue.empty():
                batch.append(queue.get_nowait())
            # revoked (here or by another process): not one more event, and the socket closes
            if (not batch or any("seq" in e for e in batch)) and not await anyio.to_thread.run_sync(
                    _key_live, service, key.id):
                return 4401
            for event in batch:
                await websocket.send_text(json.dumps(event, default=str))
                if event.get("event") == _END and "seq" not in event:
                    return 1000

    async def until_disconnect() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    sender = asyncio.create_task(pump())
    listener = asyncio.create_task(until_disconnect())
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        unsubscribe()
        for task in (sender, listener):
            task.cancel()
        for task in (sender, listener):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if sender.done() and not sender.cancelled() and sender.exception() is None:
        code = sender.result()
        reason = "the API key was revoked" if code == 4401 else ""
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason)
