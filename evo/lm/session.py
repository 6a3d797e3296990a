"""The one door to a model: cache, retries, fail-fast and the usage ledger around an :class:`LM`.

Every LM call in evo (task calls, reflection, proposals, re-asks, the preflight) goes through
:meth:`LMSession.complete`, so :attr:`LMSession.usage` is a complete account of what a run cost.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo.errors import ConfigError
from evo.lm.base import (
    LM,
    Executor,
    LMError,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    LMUnavailableError,
    Message,
    scores_choices,
)
from evo.lm.cache import ResponseCache, default_cache_path
from evo.lm.journal import Journal
from evo.lm.limits import ConcurrencyLimit, TokenBucket

# Calls in flight at once for a backend that serves calls in parallel (``lm.concurrent``) and
# names no ``max_concurrency`` of its own: DSPy's default thread count.
DEFAULT_CONCURRENCY = 8


def default_concurrency(lm: LM) -> int:
    """How many calls a session keeps in flight for ``lm`` unless told: the backend's own
    ``max_concurrency``, else :data:`DEFAULT_CONCURRENCY` for a backend that serves calls in
    parallel (``concurrent = True``: a hosted API, a served model), else 1 (the in-process
    llama.cpp model: two contexts on one machine's cores slow each other down)."""
    if not getattr(lm, "concurrent", False):
        return 1
    own = getattr(lm, "max_concurrency", None)
    if isinstance(own, int) and not isinstance(own, bool) and own >= 1:
        return own
    return DEFAULT_CONCURRENCY


@dataclass
class Usage:
    """What a session (or a slice of it, via subtraction) spent.

    ``calls`` counts paid backend calls that succeeded; failed attempts are in ``retries`` (each
    re-attempt) and ``errors`` (each request that failed for good). ``cache_hits`` are answers
    from the shared response cache, ``replayed`` answers from the run's own journal (a resumed
    run retracing its earlier sittings). ``by_purpose`` counts paid calls per
    :attr:`LMRequest.purpose`.
    """

    calls: int = 0
    cache_hits: int = 0
    replayed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lm_seconds: float = 0.0
    errors: int = 0
    retries: int = 0
    reused_prompt_tokens: int = 0
    by_purpose: dict[str, int] = field(default_factory=dict)

    def efficiency_line(self, wall: float) -> str:
        """The engine-efficiency figures printed with every bench run and module search."""
        share = self.lm_share(wall)
        return (f"wall {wall:.0f} s: {share:.0%} in the LM, {1 - share:.0%} in "
                f"evo/DSPy code; cache hits {self.cache_hits}/{self.requests} "
                f"({self.cache_hit_rate:.0%}); prompt tokens reused from the KV cache "
                f"{self.reused_prompt_tokens}/{self.prompt_tokens} ({self.reused_share:.0%})")

    @property
    def requests(self) -> int:
        """Answered requests: paid calls, cache hits and journal replays."""
        return self.calls + self.cache_hits + self.replayed

    @property
    def cache_hit_rate(self) -> float:
        """Share of answered requests the cache answered."""
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def reused_share(self) -> float:
        """Share of prompt tokens the backend reused from its KV cache (prefix reuse)."""
        return self.reused_prompt_tokens / max(1, self.prompt_tokens)

    def lm_share(self, wall_seconds: float) -> float:
        """Share of ``wall_seconds`` spent inside the LM (the rest is the caller's own code)."""
        return min(1.0, self.lm_seconds / wall_seconds) if wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.copy())  # copy first: dict(...) is atomic, asdict is not
        d.update(requests=self.requests, cache_hit_rate=self.cache_hit_rate,
                 reused_share=self.reused_share)
        return d

    def book(self, response: LMResponse) -> None:
        """Add what ``response`` cost: its tokens and LM seconds (the caller counts the call)."""
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        self.reused_prompt_tokens += response.reused_prompt_tokens
        self.lm_seconds += response.seconds

    def copy(self) -> Usage:
        return dataclasses.replace(self, by_purpose=dict(self.by_purpose))

    def _combine(self, other: Usage, sign: int) -> Usage:
        purposes = {k: self.by_purpose.get(k, 0) + sign * other.by_purpose.get(k, 0)
                    for k in self.by_purpose.keys() | other.by_purpose.keys()}
        values = {f.name: getattr(self, f.name) + sign * getattr(other, f.name)
                  for f in dataclasses.fields(self) if f.name != "by_purpose"}
        return Usage(**values, by_purpose={k: v for k, v in sorted(purposes.items()) if v})

    def __sub__(self, other: Usage) -> Usage:
        """The delta ``self - other`` (e.g. what one generation spent)."""
        return self._combine(other, -1)

    def __add__(self, other: Usage) -> Usage:
        return self._combine(other, +1)


PREFLIGHT_REQUEST = LMRequest(
    messages=(Message("user", "Reply with the single word: OK"),), max_tokens=4,
    purpose="preflight")


def root_message(exc: BaseException) -> str:
    """The most specific message in an exception chain: the innermost non-empty cause, or the
    first evo :class:`LMError` below ``exc`` (a backend's own diagnosis already names the root
    cause; what lies under it can be as bare as a ``StopIteration: 0``)."""
    best = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if str(cur).strip() and not isinstance(cur, StopIteration):
            best = str(cur).strip()
            if cur is not exc and isinstance(cur, LMError):
                break
        cur = cur.__cause__ or cur.__context__
    return best


_SPENT_FINISH = {"length": "raise max_tokens",
                 "stop": "the model chose to answer nothing",
                 "content_filter": "the server's content filter withheld it"}


def _empty_reply(resp: LMResponse, where: str) -> LMError:
    """The error of an empty reply from ``where``: for good when the model spent completion
    tokens and said why it stopped (asking again gets the same), else transient."""
    finish = resp.finish_reason
    if finish in _SPENT_FINISH and resp.completion_tokens > 0:
        return LMRequestError(f"empty reply from {where}: finish reason {finish!r} after "
                              f"{resp.completion_tokens} completion tokens: "
                              f"{_SPENT_FINISH[finish]}")
    return LMTransientError(f"empty reply from {where}"
                            + (f" (finish reason {finish!r})" if finish else ""),
                            reason="empty reply")


class LMSession:
    """Wraps an :class:`LM` with the response cache, retries and a thread-safe usage ledger.

    Thread-safe: many evaluator threads may call :meth:`complete` at once. Identical concurrent
    requests are paid once (later ones wait for the first and read its cached answer). Backends
    that cannot run calls in parallel (the local model) serialise themselves.

    With a :attr:`journal` (set by a run store), the journal answers first and records every
    answer the session gets, from the backend or the cache, and every request that failed for
    good: a resumed run replays all of it and pays for nothing twice. A request that failed for a
    transient reason (:class:`LMTransientError`: throttled, 5xx, timeout, dropped connection,
    empty reply) is journaled as such and asked again by a resumed run.

    Failed attempts are retried ``retries`` times, waiting ``backoff_s`` doubled each time (with
    random jitter, so throttled callers do not come back in step), or what the server asked for
    (``Retry-After``), at most ``max_wait_s``. A throttled attempt (HTTP 429) is not one of the
    ``retries``: it is retried up to ``throttle_retries`` more times, and it halves the calls
    kept in flight (:class:`~evo.lm.limits.ConcurrencyLimit`), which grow back one by one as
    calls succeed. At most :attr:`max_concurrency` calls are in flight (default:
    :func:`default_concurrency`); ``max_rpm`` / ``max_tpm`` pace them to a provider's quota of
    requests or tokens per minute (a request's tokens estimated as its characters / 4 plus
    ``max_tokens``). None of this changes what is asked or answered. A reply that is empty,
    ``None`` or not text is a failed attempt: it is never cached, journaled or scored as an
    answer, but the tokens it cost are booked. An empty reply the model spent tokens on
    (finish reason ``length``, ``stop`` or ``content_filter``) would come back the same: it
    fails for good (:class:`LMRequestError`, not retried, replayed on resume); one that cost no
    completion tokens is transient. The shared cache keys answers by model and endpoint (a
    URL), the journal by model only: a run can resume against a server that moved.
    """

    def __init__(self, lm: LM, *, cache: ResponseCache | None = None, retries: int = 2,
                 backoff_s: float = 0.5, fail_fast_after: int = 8,
                 outage_after: int = 24, max_wait_s: float = 60.0,
                 max_concurrency: int | None = None, max_rpm: float | None = None,
                 max_tpm: float | None = None, throttle_retries: int = 8) -> None:
        self.lm = lm
        self.cache = cache
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.fail_fast_after = fail_fast_after
        # consecutive failed requests (each after its retries) that end a run whose LM had
        # answered before: an outage, not bad luck; the run store keeps what was paid
        self.outage_after = outage_after
        self._streak: list[str] = []  # journaled failures of the current streak
        self.usage = Usage()
        self.journal: Journal | None = None
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._consecutive_failures = 0
        self._ever_succeeded = False
        self._unavailable: LMUnavailableError | None = None
        self.throttle_retries = max(0, throttle_retries)
        self._jitter = random.Random()  # timing only: never reaches a request or a decision
        self.limit = ConcurrencyLimit(default_concurrency(lm))
        self.max_concurrency = max_concurrency  # type: ignore[assignment]
        self.rpm: TokenBucket | None = None
        self.tpm: TokenBucket | None = None
        self.pace(max_rpm=max_rpm, max_tpm=max_tpm)

    def pace(self, *, max_rpm: float | None = None, max_tpm: float | None = None) -> None:
        """Send at most ``max_rpm`` requests and about ``max_tpm`` tokens a minute (None: no
        such quota)."""
        self.rpm = None if max_rpm is None else TokenBucket(_positive(max_rpm, "max_rpm"))
        self.tpm = None if max_tpm is None else TokenBucket(_positive(max_tpm, "max_tpm"))

    @property
    def max_concurrency(self) -> int:
        """The most calls this session keeps in flight (the ceiling of :attr:`limit`, which
        throttling lowers for a while). Setting it (None: :func:`default_concurrency`) is
        refused above 1 for a backend that serves one call at a time."""
        return self.limit.ceiling

    @max_concurrency.setter
    def max_concurrency(self, value: int | None) -> None:
        if value is None:
            value = default_concurrency(self.lm)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"max_concurrency must be a whole number of at least 1, got "
                              f"{value!r}")
        if value > 1 and not getattr(self.lm, "concurrent", False):
            raise ConfigError(
                f"{self.model_id} serves one call at a time (an in-process model): "
                f"max_concurrency={value} would only queue calls; use 1, a served model "
                "(an OpenAI-compatible server) or replicas (evo.RayExecutor)")
        if value != self.limit.ceiling:
            self.limit = ConcurrencyLimit(value)

    @property
    def model_id(self) -> str:
        return self.lm.model_id

    def snapshot(self) -> Usage:
        """A consistent copy of :attr:`usage` (taken under the lock, safe while calls run)."""
        with self._lock:
            return self.usage.copy()

    @property
    def unavailable(self) -> LMUnavailableError | None:
        """The error that made this session give up on its LM, if it has (every later call
        raises it). Code that swallows call errors (DSPy's evaluators) should check it."""
        return self._unavailable

    @property
    def endpoint(self) -> str | None:
        """Where the backend lives (URL or model file), when it says."""
        ep = getattr(self.lm, "endpoint", None)
        return str(ep) if ep else None

    @property
    def cache_scope(self) -> str | None:
        """What the shared cache key adds to the model id: the server URL, when the backend is
        one. A model file is named by its model id already (name and size), so local models
        keep the key older caches were written with."""
        ep = self.endpoint
        return ep.rstrip("/") if ep and "://" in ep else None

    def _cached(self, key: str, cache_key: str, request: LMRequest) -> LMResponse | None:
        # Caller holds self._lock.
        if self.journal is not None:
            old = self.journal.get(key)
            if isinstance(old, LMError):  # an earlier sitting saw this request fail for good:
                self.usage.errors += 1  # booked as it was then (an error, not a request)
                raise old
            if old is not None:
                self.usage.replayed += 1
                return old
        hit = self.cache.get(cache_key) if self.cache is not None else None
        if hit is not None and _unscored(hit, request):  # a scoring answer without its scores
            hit = None
        if hit is not None:
            self.usage.cache_hits += 1
            if self.journal is not None:
                self.journal.put(key, hit, source="cache")
        return hit

    def complete(self, request: LMRequest) -> LMResponse:
        """Answer ``request`` from the cache or the backend (with retries); see the class doc.

        A label-scoring request (``request.choices``) to a backend that does not score choices
        is a :class:`~evo.errors.ConfigError`, raised before anything is asked or read: never
        a silent generation in its place."""
        if request.choices and not scores_choices(self.lm):
            raise ConfigError(
                f"{self.model_id}: label scoring (answer_mode='rank', dense scores) needs a "
                f"backend that scores choices (LMRequest.choices), such as the local llama.cpp "
                f"model (evo.lm.local); {type(self.lm).__name__} only generates. Use "
                f"answer_mode='generate', or a local model")
        key = request.key(self.model_id)  # the journal's: model only (see the class doc)
        scope = self.cache_scope if self.cache is not None else None
        cache_key = key if scope is None else request.key(self.model_id, scope)
        while True:
            with self._lock:
                if self._unavailable is not None:
                    raise self._unavailable
                hit = self._cached(key, cache_key, request)
                if hit is not None:
                    return hit
                waiting = self._inflight.get(key)
                if waiting is None:
                    done = self._inflight[key] = threading.Event()
                    break
            waiting.wait()  # same request already being paid for: reuse its answer (or retry)
        try:
            return self._call(request, key, cache_key)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            done.set()

    def _wait_s(self, exc: BaseException, attempt: int) -> float:
        """How long to wait before attempt ``attempt + 1``: what the server asked for
        (``Retry-After``), else exponential backoff; never more than :attr:`max_wait_s`."""
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and asked >= 0:  # at least what was asked, spread
            # (spread after the cap, so callers capped at max_wait_s do not return in step)
            return max(0.0, min(float(asked), self.max_wait_s)) * (1 + 0.2 * self._jitter.random())
        # exponential backoff with jitter: half to one and a half the nominal wait
        wait = self.backoff_s * 2 ** attempt * (0.5 + self._jitter.random())
        return max(0.0, min(float(wait), self.max_wait_s))

    def _send(self, request: LMRequest) -> tuple[object, float]:
        """One backend call under the provider limits: a rate-quota slot, then an in-flight
        slot (a throttled call lowers the in-flight limit). Returns the reply and when it was
        sent."""
        if self.rpm is not None:
            self.rpm.take(1)
        if self.tpm is not None:
            chars = sum(len(m.content) for m in request.messages)
            self.tpm.take(chars / 4 + request.max_tokens)
        limit = self.limit
        epoch = limit.acquire()
        t0 = time.perf_counter()
        try:
            return self.lm.complete(request), t0
        except Exception as exc:
            if getattr(exc, "reason", None) == "throttled":
                limit.throttled(epoch)  # fewer in flight until calls succeed again
            raise
        finally:
            limit.release()

    def _checked(self, resp: object, seconds: float, request: LMRequest) -> LMResponse:
        """The backend's reply if it is an answer; an empty or malformed one is a failed
        attempt (a custom LM returning ``text=None`` must not score 0 silently, nor be cached).
        The error of an empty reply carries the reply as ``paid``: what it cost is booked. A
        label-scoring reply must carry one log-probability (a number, not NaN) per choice."""
        where = f" at {self.endpoint}" if self.endpoint else ""
        if not isinstance(resp, LMResponse):
            raise LMError(f"{self.model_id}{where} returned {type(resp).__name__}, "
                          "not an LMResponse")
        counts = (resp.prompt_tokens, resp.completion_tokens, resp.reused_prompt_tokens)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) \
                or not (isinstance(resp.seconds, int | float) and 0 <= resp.seconds < math.inf):
            raise LMError(f"{self.model_id}{where} returned token counts {counts} and seconds "
                          f"{resp.seconds!r}: counts must be whole numbers >= 0, seconds finite")
        if resp.text is None or resp.text == "":
            err = _empty_reply(resp, f"{self.model_id}{where}")
            err.paid = dataclasses.replace(  # type: ignore[attr-defined]
                resp, seconds=resp.seconds or seconds)
            raise err
        if not isinstance(resp.text, str):
            raise LMError(f"{self.model_id}{where} returned text of type "
                          f"{type(resp.text).__name__}, not str")
        if request.choices:
            if _unscored(resp, request):
                raise LMError(f"{self.model_id}{where} answered a label-scoring request for "
                              f"{len(request.choices)} choices with choice_logprobs="
                              f"{resp.choice_logprobs!r}: one number (not NaN) per choice")
            resp = dataclasses.replace(
                resp, choice_logprobs=tuple(float(x) for x in resp.choice_logprobs or ()))
        return resp

    def _book_spent(self, exc: BaseException, spent: list[LMResponse]) -> None:
        """Book what a failed attempt cost (an empty reply is billed like an answer)."""
        paid = getattr(exc, "paid", None)
        if not isinstance(paid, LMResponse):
            return
        spent.append(paid)
        with self._lock:
            self.usage.book(paid)

    def _call(self, request: LMRequest, key: str, cache_key: str) -> LMResponse:
        last: BaseException | None = None
        wait = 0.0
        spent: list[LMResponse] = []  # what the failed attempts cost
        attempt = throttles = 0
        while attempt <= self.retries:
            if attempt or throttles:
                with self._lock:
                    self.usage.retries += 1
                time.sleep(wait)
                if self._unavailable is not None:  # another call found the LM gone meanwhile
                    raise self._unavailable
            t0 = time.perf_counter()
            try:
                raw, t0 = self._send(request)
                resp = self._checked(raw, time.perf_counter() - t0, request)
            except LMUnavailableError as exc:
                self._failed(exc, sticky=True)
                raise
            except LMRequestError as exc:  # this request's own fault: no retry, no streak
                self._book_spent(exc, spent)
                with self._lock:
                    self.usage.errors += 1
                    if self.journal is not None and request.purpose != "preflight":
                        self.journal.fail(key, str(exc), request=True, spent=spent)
                raise
            except Exception as exc:  # any backend failure is retried
                self._book_spent(exc, spent)
                last = exc
                # a throttled try is not a failure: retried apart from ``retries``
                if getattr(exc, "reason", None) == "throttled" and \
                        throttles < self.throttle_retries:
                    wait = self._wait_s(exc, throttles)
                    throttles += 1
                    continue
                wait = self._wait_s(exc, attempt)
                attempt += 1
                continue
            self.limit.succeeded()
            if not resp.seconds:
                resp = dataclasses.replace(resp, seconds=time.perf_counter() - t0)
            with self._lock:
                self._consecutive_failures = 0
                self._streak.clear()
                self._ever_succeeded = True
                u = self.usage
                u.calls += 1
                u.book(resp)
                u.by_purpose[request.purpose] = u.by_purpose.get(request.purpose, 0) + 1
                # The shared cache first: when the journal cannot be written (a full disk) the
                # run stops, and the answer it paid for is still kept there (often another disk).
                if self.cache is not None:
                    try:
                        self.cache.put(cache_key, resp, model_id=self.model_id, request=request)
                    except Exception as exc:  # a paid answer is still an answer: keep going
                        warnings.warn(f"evo: could not write the LM cache {self.cache}: {exc}",
                                      RuntimeWarning, stacklevel=2)
                if self.journal is not None:
                    self.journal.put(key, resp, source="paid")
            return resp
        assert last is not None
        transient = isinstance(last, LMTransientError)
        message = (f"{self.model_id}: call failed after {attempt + throttles} attempt(s): "
                   f"{type(last).__name__}: {last}")
        err: LMError = (LMTransientError(message, reason=last.reason)  # type: ignore[union-attr]
                        if transient else LMError(message))
        err.__cause__ = last
        # The search scores this request 0 and goes on: journal that, so a replay meets the same
        # failure -- unless it was transient (a resume asks it again). If the streak it belongs
        # to turns out to be an outage, _failed takes it back.
        if self.journal is not None and request.purpose != "preflight":
            with self._lock:
                self.journal.fail(key, str(err), transient=transient, spent=spent)
                self._streak.append(key)
        self._failed(err, sticky=False)
        raise err

    def _failed(self, exc: LMError, *, sticky: bool) -> None:
        """Book a failed request; turn a streak of failures into unavailability: a short one
        when the LM has never answered, a long one (an outage) when it has."""
        with self._lock:
            self.usage.errors += 1
            self._consecutive_failures += 1
            n = self._consecutive_failures
            where = f" at {self.endpoint}" if self.endpoint else ""
            un = None
            if sticky:
                self._unavailable = exc if isinstance(exc, LMUnavailableError) else None
            elif not self._ever_succeeded and n >= self.fail_fast_after:
                un = LMUnavailableError(
                    f"{self.model_id}{where} looks unavailable: {n} consecutive calls failed "
                    f"and none has ever succeeded; last error: {root_message(exc)}")
            elif self._ever_succeeded and n >= self.outage_after:
                un = LMUnavailableError(
                    f"{self.model_id}{where} stopped answering: {n} consecutive calls failed "
                    f"after earlier successes; last error: {root_message(exc)}")
            if un is not None:
                un.__cause__ = exc
                self._unavailable = un
                # Not the requests' fault: a resumed run must ask them again.
                if self.journal is not None and self._streak:
                    self.journal.forget(self._streak)
                self._streak.clear()
        if self._unavailable is not None and self._unavailable is not exc:
            raise self._unavailable

    def preflight(self) -> None:
        """Send one tiny request (through the cache) and fail early, clearly, if the LM is unusable.

        Raises :class:`LMUnavailableError` naming the model, its endpoint and the underlying error.
        """
        try:
            self.complete(PREFLIGHT_REQUEST)
        except Exception as exc:  # every failure here means "cannot use the LM"
            where = f" at {self.endpoint}" if self.endpoint else ""
            # The backend's own diagnosis (e.g. an install hint) beats the innermost cause;
            # backends prefix it with "MODEL at ENDPOINT: ", which we are about to say.
            detail = str(exc) if isinstance(exc, LMUnavailableError) else root_message(exc)
            detail = detail.removeprefix(f"{self.model_id}{where}: ")
            if isinstance(exc, LMError):
                raise LMUnavailableError(f"could not reach {self.model_id}{where}: "
                                         f"{detail}") from exc
            # Not a failed call: code around it broke (a custom backend's, or a bad argument)
            raise LMUnavailableError(f"could not use {self.model_id}{where}: "
                                     f"{type(exc).__name__}: {detail}") from exc

    def __repr__(self) -> str:
        return f"LMSession({self.model_id!r}, cache={self.cache!r})"


def _unscored(resp: LMResponse, request: LMRequest) -> bool:
    """Whether ``resp`` lacks what a label-scoring ``request`` needs: one log-probability per
    choice, each a number and not NaN (``-inf`` is a probability of 0)."""
    if not request.choices:
        return False
    lp = resp.choice_logprobs
    return not (isinstance(lp, tuple | list) and len(lp) == len(request.choices) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)
        and x <= 1e-6 for x in lp))  # (a rounding above 0 is still a probability of 1)


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number per minute, got {value!r}")
    return float(value)


def on_executor(lm: LM | LMSession, executor: Executor | None) -> LM | LMSession:
    """``lm`` with its calls run on ``executor`` (:meth:`Executor.wrap`), or ``lm`` itself when
    there is none. A session is refused: the backend it wraps would run here all the same."""
    if executor is None:
        return lm
    if isinstance(lm, LMSession):
        raise ConfigError("executor= runs a backend's calls elsewhere: give lm= the backend (an "
                          "LM), not an LMSession")
    return executor.wrap(lm)


def session_for(lm: LM | LMSession, cache: ResponseCache | str | Path | None | bool = True
                ) -> LMSession:
    """Wrap a backend in a session with the persistent response cache (``True``: the default
    user cache; a path: that file; ``False``/``None``: no cache)."""
    if isinstance(lm, LMSession):
        return lm
    if not (cache is None or isinstance(cache, bool | str | Path | ResponseCache)):
        raise ConfigError(f"cache={cache!r}: give True (the default cache), a file path, a "
                          "ResponseCache, or False / None for no cache")
    if cache is True:
        cache = ResponseCache(default_cache_path())
    elif isinstance(cache, str | Path):
        cache = ResponseCache(cache)
    # (an empty ResponseCache is falsy: test for the sentinels, not truthiness)
    return LMSession(lm, cache=None if cache is False or cache is None else cache)
