"""Run a search's LM calls on Ray actors: ``evo.optimize(..., executor=RayExecutor())``.

:meth:`RayExecutor.wrap` starts ``num_workers`` Ray actors, each holding its own copy of the
backend LM (sent with Ray's cloudpickle: a hosted client, a scripted LM, or for a
:class:`~evo.lm.local.LocalLM` a recipe from which each actor loads its own replica), and returns
a :class:`RayLM` that runs each ``complete()`` in the least-loaded actor.

Only backend calls travel. The response cache, retries, the usage ledger and the run journal
stay in the driver: :class:`~evo.lm.session.LMSession` wraps the :class:`RayLM` as it wraps any
LM, so one process writes the cache and the journal however many workers answer, and a run
through Ray keys, journals and replays exactly like a serial one (the :class:`RayLM` has the
backend's ``model_id`` and ``endpoint``). A resumed run needs no cluster for what the journal
already holds.

An error raised in an actor comes back as the same evo error (an :class:`LMTransientError`
keeps its ``reason`` and ``retry_after``); an actor that died is an
``LMTransientError(reason="dropped connection")``, so the session retries it (Ray restarts the
actor, ``max_restarts`` in ``actor_options``).

>>> # with evo.RayExecutor(address="auto", num_workers=8) as ex:
>>> #     result = evo.optimize(program, train, val, lm=lm, executor=ex)

Ray is optional (``pip install 'evo[ray]'``) and imported only when an executor starts.
"""

from __future__ import annotations

import io
import re
import threading
from typing import Any

from evo.errors import ConfigError
from evo.lm.base import (
    LM,
    LMError,
    LMRequest,
    LMResponse,
    LMTransientError,
    LMUnavailableError,
    scores_choices,
)

__all__ = ["RayExecutor", "RayLM"]

_INSTALL_HINT = "Ray is not installed; install it with `pip install 'evo[ray]'`"


def _ray() -> Any:
    try:
        import ray  # deferred: heavy optional dependency (ray)
    except ImportError as exc:
        raise LMUnavailableError(_INSTALL_HINT) from exc
    return ray


def _dumps(lm: LM) -> bytes:
    """``lm`` pickled for another process. Its locks travel as fresh, unlocked locks: a lock
    guards state of the process it lives in, and most LMs (scripted, hosted) hold one."""
    from ray import cloudpickle  # deferred: heavy optional dependency (ray)

    lock_types = {type(threading.Lock()): threading.Lock,
                  type(threading.RLock()): threading.RLock}

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            fresh = lock_types.get(type(obj))
            if fresh is not None:
                return fresh, ()
            return super().reducer_override(obj)

    buf = io.BytesIO()
    try:
        Pickler(buf, protocol=5).dump(lm)
    except Exception as exc:  # pickling raises TypeError, PicklingError, AttributeError ...
        raise ConfigError(f"{lm!r} cannot be sent to a Ray worker: {exc}") from exc
    return buf.getvalue()


class _Worker:
    """A Ray actor's body: one copy of the backend LM (made a Ray actor by :meth:`RayExecutor.wrap`,
    a threaded actor when the backend serves calls in parallel)."""

    def __init__(self, blob: bytes) -> None:
        from ray import cloudpickle  # deferred: heavy optional dependency (ray)

        self.lm = cloudpickle.loads(blob)

    def ready(self) -> str:
        return self.lm.model_id

    def complete(self, request: LMRequest) -> LMResponse:
        return self.lm.complete(request)


def _summary(exc: BaseException) -> str:
    """A Ray error in a line or two: its first line and, for a remote traceback, the error that
    ended it (``ModuleNotFoundError: No module named ...``), without terminal colours."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()
             if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


class RayLM:
    """An LM whose calls run in Ray actors, each holding a copy of the backend (see
    :class:`RayExecutor`). Thread-safe: each call goes to the actor with the fewest calls in
    flight (ties: the lowest index)."""

    concurrent = True

    def __init__(self, backend: LM, actors: list[Any], per_worker: int) -> None:
        self.model_id = backend.model_id
        # label scoring travels as any request does; the actors' backend answers it or not
        self.scores_choices = scores_choices(backend)
        self.endpoint: str | None = getattr(backend, "endpoint", None)
        self.max_concurrency = len(actors) * per_worker
        self.backend_repr = repr(backend)
        self._actors = actors
        self._in_flight = [0] * len(actors)
        self._lock = threading.Lock()
        self._closed = False
        self._ray = _ray()

    def _take(self) -> int:
        with self._lock:
            i = min(range(len(self._actors)), key=lambda k: (self._in_flight[k], k))
            self._in_flight[i] += 1
            return i

    def _give(self, i: int) -> None:
        with self._lock:
            self._in_flight[i] -= 1

    def complete(self, request: LMRequest) -> LMResponse:
        if self._closed:  # once, up front: not a retried failure on every cell
            raise LMUnavailableError(
                f"{self.model_id}: its RayExecutor was shut down (call report() inside the "
                "executor's `with` block, or wrap the LM in a new executor)")
        exceptions = self._ray.exceptions
        i = self._take()
        try:
            return self._ray.get(self._actors[i].complete.remote(request))
        except exceptions.RayTaskError as exc:  # the backend raised: raise what it raised
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if cause is None:
                raise LMError(f"{self.model_id} (Ray worker {i}): {_summary(exc)}") from exc
            raise cause from exc
        except exceptions.RayActorError as exc:  # the actor died: the session retries
            raise LMTransientError(f"{self.model_id}: Ray worker {i} is gone: "
                                   f"{_summary(exc)}", reason="dropped connection") from exc
        finally:
            self._give(i)

    def close(self) -> None:
        """Kill this LM's actors (a later call raises :class:`LMUnavailableError`)."""
        self._closed = True
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # already dead, or Ray shut down first: nothing to free
                pass

    def __repr__(self) -> str:
        return f"RayLM({self.backend_repr}, workers={len(self._actors)})"


class RayExecutor:
    """Runs LM calls on Ray: :meth:`wrap` turns an LM into a :class:`RayLM` over ``num_workers``
    actors, each with its own copy of the LM.

    ``address``: the cluster (``"auto"``: the one ``ray start --head`` started on this machine;
    ``"ray://host:10001"``: a remote one; None: the running Ray, else a new local one).
    ``concurrency_per_worker``: calls one actor serves at once (default: the LM's
    ``max_concurrency``, else 8 for a concurrent LM, 1 otherwise: one llama.cpp context per
    actor). ``init_kwargs`` go to ``ray.init`` (``runtime_env``, ``num_cpus`` ...) when Ray is not
    initialised yet; ``actor_options`` to each actor's ``.options()`` (``num_cpus``,
    ``num_gpus``, ``max_restarts`` ...). :meth:`wrap` waits ``start_timeout_s`` for the actors to
    start (a cluster without the resources asked for would keep them waiting for ever).

    :meth:`shutdown` (or leaving a ``with`` block) kills the actors, and stops Ray only if this
    executor started it.
    """

    def __init__(self, address: str | None = None, num_workers: int = 2,
                 concurrency_per_worker: int | None = None,
                 init_kwargs: dict[str, Any] | None = None,
                 actor_options: dict[str, Any] | None = None,
                 start_timeout_s: float = 300.0) -> None:
        if num_workers < 1:
            raise ConfigError(f"RayExecutor: num_workers must be at least 1 (got {num_workers})")
        if concurrency_per_worker is not None and concurrency_per_worker < 1:
            raise ConfigError("RayExecutor: concurrency_per_worker must be at least 1 "
                              f"(got {concurrency_per_worker})")
        self.address = address
        self.num_workers = num_workers
        self.concurrency_per_worker = concurrency_per_worker
        self.init_kwargs = dict(init_kwargs or {})
        self.actor_options = dict(actor_options or {})
        self.start_timeout_s = start_timeout_s
        self._started_ray = False
        self._lms: list[RayLM] = []

    def _per_worker(self, lm: LM) -> int:
        if self.concurrency_per_worker is not None:
            return self.concurrency_per_worker
        own = getattr(lm, "max_concurrency", None)
        if isinstance(own, int) and own >= 1:
            return own
        return 8 if getattr(lm, "concurrent", False) else 1

    def _init(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, ignore_reinit_error=True, **self.init_kwargs)
            except ConnectionError as exc:  # no cluster at that address
                raise LMUnavailableError(f"Ray cluster at {self.address}: {exc}") from exc
            self._started_ray = True
        return ray

    def wrap(self, lm: LM) -> RayLM:
        """A :class:`RayLM` running ``lm``'s calls on ``num_workers`` new actors (started and
        ready when this returns: a backend that cannot be rebuilt in a worker fails here)."""
        _ray()  # installed?
        blob = _dumps(lm)
        ray = self._init()
        per_worker = self._per_worker(lm)
        options = {"max_restarts": 1, **self.actor_options, "max_concurrency": per_worker}
        cls = ray.remote(_Worker).options(**options)
        actors = [cls.remote(blob) for _ in range(self.num_workers)]
        try:
            ray.get([a.ready.remote() for a in actors], timeout=self.start_timeout_s)
        except ray.exceptions.RayError as exc:
            for a in actors:
                ray.kill(a)
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                raise LMUnavailableError(
                    f"{lm!r}: {self.num_workers} Ray workers did not start in "
                    f"{self.start_timeout_s:g} s (does the cluster have the resources "
                    f"{options}?)") from exc
            hint = ("; the workers import what the LM's pickle names: ship the module with "
                    "init_kwargs={'runtime_env': {'py_modules': [...]}} or install it there"
                    if "ModuleNotFoundError" in str(exc) else "")
            raise LMUnavailableError(f"{lm!r} could not start on Ray: {_summary(exc)}{hint}") \
                from exc
        ray_lm = RayLM(lm, actors, per_worker)
        self._lms.append(ray_lm)
        return ray_lm

    def shutdown(self) -> None:
        """Kill every actor this executor started; stop Ray if this executor started it."""
        for lm in self._lms:
            lm.close()
        self._lms.clear()
        if self._started_ray:
            _ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
