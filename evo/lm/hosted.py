"""Hosted (or any OpenAI-compatible) models through ``dspy.LM`` — litellm/lm15 model strings.

dspy is imported lazily (it takes seconds). The wrapped ``dspy.LM`` must not cache or retry on
its own: :class:`evo.lm.session.LMSession` is the one cache and the one retry loop, so its
ledger counts every paid call. :func:`hosted` builds such an LM; :func:`from_dspy` wraps an
existing one and switches its cache and retries off (on a copy, the caller's LM is untouched).
"""

from __future__ import annotations

import math
import os
import threading
from email.utils import parsedate_to_datetime
from typing import Any

from evo.errors import ConfigError
from evo.lm.base import (
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    LMUnavailableError,
)
from evo.lm.session import root_message

DEFAULT_TIMEOUT_S = 60.0  # per attempt: a hung endpoint costs bounded time

# dspy error codes (dspy.utils.exceptions) that mean "this LM cannot be used at all".
_FATAL_CODES = {"auth", "billing", "configuration", "not_configured", "unsupported_model"}
# ... and those that mean "cannot reach it": fatal only while no call has ever succeeded (once
# one has, a dropped connection is a transient blip for the session to retry).
_CONNECT_CODES = {"transport"}
_FATAL_NAMES = {"AuthenticationError", "PermissionDeniedError", "NotFoundError",
                "BudgetExceededError"}
# ... and this one means "this request is too long for the model": no retry helps.
_REQUEST_NAMES = {"ContextWindowExceededError", "ContextLengthError", "context_window_exceeded",
                  "context_length"}
_CONNECT_NAMES = {"APIConnectionError", "ConnectError", "ConnectionError", "ConnectionRefusedError"}
# ... and these mean "no answer this time": throttled, server error, timeout, dropped connection
# (dspy's codes, then litellm's / openai's / httpx's class names). Retried, and not replayed.
_TRANSIENT_CODES = {"rate_limit", "server", "timeout", "transport", "lock_timeout"}
_TRANSIENT_NAMES = {"RateLimitError", "Timeout", "APITimeoutError", "TimeoutError", "ReadTimeout",
                    "InternalServerError", "ServiceUnavailableError", "BadGatewayError",
                    "APIConnectionError", "RemoteProtocolError", "ReadError",
                    "ConnectionResetError", "JSONDecodeError"}
_TIMEOUT_NAMES = {"timeout", "Timeout", "APITimeoutError", "TimeoutError", "ReadTimeout"}


def _kinds(exc: BaseException) -> set[str]:
    """Error codes and class names found along the exception chain."""
    kinds: set[str] = set()
    cur: BaseException | None = exc
    while cur is not None and len(kinds) < 64:
        kinds.add(type(cur).__name__)
        if isinstance(code := getattr(cur, "code", None), str):
            kinds.add(code)
        cur = cur.__cause__ or cur.__context__
    return kinds


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``, seconds or HTTP-date form), found
    on dspy's error (``retry_after``) or on litellm's/openai's (``response.headers``)."""
    cur: BaseException | None = exc
    for _ in range(16):
        if cur is None:
            return None
        value = getattr(cur, "retry_after", None)
        if value is None:
            headers = getattr(getattr(cur, "response", None), "headers", None) or {}
            try:
                value = headers.get("retry-after") or headers.get("Retry-After")
            except AttributeError:
                value = None
        if value is not None:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                try:
                    import datetime as dt
                    when = parsedate_to_datetime(str(value))
                    seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
                except (TypeError, ValueError, OverflowError):
                    seconds = math.nan
            if math.isfinite(seconds):
                return max(0.0, seconds)
        cur = cur.__cause__ or cur.__context__
    return None


def _status(exc: BaseException) -> int | None:
    cur: BaseException | None = exc
    for _ in range(16):
        if cur is None:
            return None
        for name in ("status", "status_code"):
            value = getattr(cur, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        cur = cur.__cause__ or cur.__context__
    return None


def _describe(exc: BaseException, model: str) -> str:
    """What went wrong, in the words of the most informative layer: dspy's canonical error
    (it says "the reply (HTTP 200, text/html, 37 bytes) is not JSON ... Body starts: '<html>"),
    else the innermost message. Only its first line: the rest is dspy's advice on retrying."""
    cur: BaseException | None = exc
    for _ in range(16):
        if cur is None:
            break
        if isinstance(getattr(cur, "code", None), str) and str(cur).strip():
            text = str(cur).strip().splitlines()[0].strip()
            text = text.removeprefix(f"[{model}] ").removeprefix(f"[{model.split('/', 1)[-1]}] ")
            status = _status(exc)
            if status is not None and f"HTTP {status}" not in text:
                text += f" (HTTP {status})"
            return text
        cur = cur.__cause__ or cur.__context__
    return root_message(exc)


def _reason(kinds: set[str], status: int | None, *, timeout: bool, not_json: bool) -> str:
    """Why a transient failure happened, as :attr:`LMTransientError.reason` names it."""
    if status == 429 or kinds & {"rate_limit", "RateLimitError"}:
        return "throttled"
    if timeout:
        return "timeout"
    if (status is not None and status >= 500) or kinds & {
            "server", "InternalServerError", "ServiceUnavailableError", "BadGatewayError"}:
        return "server error"
    if not_json or "JSONDecodeError" in kinds:
        return "bad reply"
    if kinds & {"transport", "APIConnectionError", "RemoteProtocolError", "ReadError",
                "ConnectionResetError"}:
        return "dropped connection"
    return "transient"


class DSPyLM:
    """Adapts a ``dspy.LM`` to evo's :class:`~evo.lm.base.LM` protocol.

    Requests go through dspy's canonical ``lm(dspy.lm15.Request)`` route (the OpenAI-messages
    route is deprecated in dspy 3.4). Auth/configuration errors, and connection errors before
    the first success, raise :class:`LMUnavailableError` naming the model and its ``api_base``.
    An empty reply comes back as it came (``text=""``, with its tokens and finish reason):
    :class:`~evo.lm.session.LMSession` decides whether it is transient and books what it cost.
    """

    concurrent = True  # a hosted API serves calls in parallel
    # No label scoring: chat APIs return the log-probabilities of the tokens they generate
    # (top_logprobs), not of a given continuation, so a multi-token choice cannot be scored
    # exactly; the session refuses choices requests rather than approximate them.
    scores_choices = False

    def __init__(self, dspy_lm: Any, *, model_id: str | None = None) -> None:
        self.dspy_lm = dspy_lm
        self.model_id = model_id or str(dspy_lm.model)
        kwargs = getattr(dspy_lm, "kwargs", {}) or {}
        self.endpoint: str | None = kwargs.get("api_base") or kwargs.get("base_url")
        self._succeeded = False
        self._lock = threading.Lock()

    def _request(self, request: LMRequest) -> Any:
        from dspy.lm15 import Config, Message, Request

        system = "\n\n".join(m.content for m in request.messages if m.role == "system") or None
        turns = tuple(Message.user(m.content) if m.role == "user" else Message.assistant(m.content)
                      for m in request.messages if m.role != "system")
        config = Config(max_tokens=request.max_tokens, temperature=request.temperature,
                        stop=tuple(request.stop),
                        seed=request.seed if request.temperature > 0 else None)
        return Request(model=self.dspy_lm.model, messages=turns, system=system, config=config)

    @property
    def _where(self) -> str:
        return f"{self.model_id} at {self.endpoint}" if self.endpoint else self.model_id

    def complete(self, request: LMRequest) -> LMResponse:
        try:
            resp = self.dspy_lm(self._request(request))
        except Exception as exc:  # classify, then re-raise
            raise self._classify(exc) from exc
        with self._lock:
            self._succeeded = True  # the server answered: it is reachable
        text = getattr(resp, "text", None)
        usage = getattr(resp, "usage", None)
        finish = getattr(resp, "finish_reason", None)
        # An empty reply (no choices, null content) is returned as it came, with what it cost:
        # the session decides what it means (LMSession._checked) and books its tokens.
        return LMResponse(text=text if isinstance(text, str) else "",
                          prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                          reused_prompt_tokens=int(getattr(usage, "cache_read_tokens", 0) or 0),
                          finish_reason=str(finish) if finish else None)

    def _classify(self, exc: Exception) -> Exception:
        """evo's error for a failed call: unavailable (stop the run), this request's own fault
        (no retry), transient (retry, do not replay) or, when unknown, the error itself."""
        kinds = _kinds(exc)
        timeout = bool(kinds & _TIMEOUT_NAMES)
        with self._lock:
            fatal = bool(kinds & (_FATAL_CODES | _FATAL_NAMES)) or (
                not self._succeeded and not timeout
                and bool(kinds & (_CONNECT_CODES | _CONNECT_NAMES)))
        if fatal:
            # (the first line: dspy adds a "To fix:" block of advice after it)
            return LMUnavailableError(f"{self._where}: {root_message(exc).splitlines()[0]}")
        if kinds & _REQUEST_NAMES:
            return LMRequestError(f"{self.model_id}: {root_message(exc)}")
        status = _status(exc)
        not_json = "provider" in kinds and (status is None or 200 <= status < 300)
        if kinds & (_TRANSIENT_CODES | _TRANSIENT_NAMES) or not_json or (
                status is not None and (status == 429 or status >= 500)):
            what = _describe(exc, self.model_id)
            if not_json and "json" not in what.lower():
                what = f"the server's reply was not JSON: {what}"
            return LMTransientError(f"{self._where}: {what}", retry_after=_retry_after(exc),
                                    reason=_reason(kinds, status, timeout=timeout,
                                                   not_json=not_json))
        return exc

    def __repr__(self) -> str:
        return f"DSPyLM({self.model_id!r}, endpoint={self.endpoint!r})"


def from_dspy(lm: Any, *, model_id: str | None = None) -> DSPyLM:
    """Wrap an existing ``dspy.LM``; calls go to a copy with dspy's cache and retries off."""
    try:
        quiet = lm.copy(cache=False, num_retries=0)
    except (AttributeError, TypeError, ValueError):  # a BaseLM without copy(): set the fields
        quiet = lm
        for name, value in (("cache", False), ("num_retries", 0)):
            if hasattr(quiet, name):
                setattr(quiet, name, value)
    return DSPyLM(quiet, model_id=model_id)


def hosted(model: str, *, timeout: float | None = DEFAULT_TIMEOUT_S, **kwargs: Any) -> DSPyLM:
    """An LM for a litellm/lm15 model string, e.g. ``hosted("openai/gpt-4o-mini")``.

    ``timeout`` bounds each attempt in seconds (default 60; ``None``: dspy's own defaults), so
    a hung endpoint costs bounded time; the session retries. ``kwargs`` go to ``dspy.LM``
    (``api_base``, ``api_key``, ...); ``cache`` and ``num_retries`` are forced off because the
    session does both, and dspy/lm15/litellm add no retries of their own then.

    dspy's price table is read from its bundled copy: evo keeps its own ledger, and the only
    address a hosted LM makes evo call is the model's (set ``LITELLM_LOCAL_MODEL_COST_MAP=False``
    to let dspy fetch the newest table on start, up to 5 s).

    >>> lm = hosted("openai/my-model", api_base="http://127.0.0.1:8000/v1", timeout=30)
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import dspy
    except ImportError as exc:
        raise LMUnavailableError(
            f"hosted LM {model!r} needs dspy: pip install dspy==3.4.1") from exc
    kwargs.pop("cache", None)
    kwargs.pop("num_retries", None)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"hosted LM {model!r}: timeout must be a positive number of "
                              f"seconds, not {timeout!r}")
        kwargs["timeout"] = float(timeout)
    try:
        lm = dspy.LM(model, cache=False, num_retries=0, **kwargs)
    except Exception as exc:  # bad model string or settings
        raise LMUnavailableError(f"could not configure hosted LM {model!r}: {exc}") from exc
    return DSPyLM(lm)
