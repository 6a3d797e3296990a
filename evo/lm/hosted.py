"""Hosted (or any OpenAI-compatible) models through ``dspy.LM`` — litellm/lm15 model strings.

dspy is imported lazily (it takes seconds). The wrapped ``dspy.LM`` must not cache or retry on
its own: :class:`evo.lm.session.LMSession` is the one cache and the one retry loop, so its
ledger counts every paid call. :func:`hosted` builds such an LM; :func:`from_dspy` wraps an
existing one and switches its cache and retries off (on a copy, the caller's LM is untouched).
"""

from __future__ import annotations

import threading
from typing import Any

from evo.lm.base import LMRequest, LMRequestError, LMResponse, LMUnavailableError
from evo.lm.session import root_message

# dspy error codes (dspy.utils.exceptions) that mean "this LM cannot be used at all".
_FATAL_CODES = {"auth", "billing", "configuration", "not_configured", "unsupported_model"}
# ... and those that mean "cannot reach it": fatal only while no call has ever succeeded (once
# one has, a dropped connection is a transient blip for the session to retry).
_CONNECT_CODES = {"transport"}
_FATAL_NAMES = {"AuthenticationError", "PermissionDeniedError", "NotFoundError",
                "BudgetExceededError"}
# ... and this one means "this request is too long for the model": no retry helps.
_REQUEST_NAMES = {"ContextWindowExceededError"}
_CONNECT_NAMES = {"APIConnectionError", "ConnectError", "ConnectionError", "ConnectionRefusedError"}


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


class DSPyLM:
    """Adapts a ``dspy.LM`` to evo's :class:`~evo.lm.base.LM` protocol.

    Requests go through dspy's canonical ``lm(dspy.lm15.Request)`` route (the OpenAI-messages
    route is deprecated in dspy 3.4). Auth/configuration errors, and connection errors before
    the first success, raise :class:`LMUnavailableError` naming the model and its ``api_base``.
    """

    concurrent = True  # a hosted API serves calls in parallel

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

    def complete(self, request: LMRequest) -> LMResponse:
        try:
            resp = self.dspy_lm(self._request(request))
        except Exception as exc:  # classify, then re-raise
            kinds = _kinds(exc)
            with self._lock:
                fatal = bool(kinds & (_FATAL_CODES | _FATAL_NAMES)) or (
                    not self._succeeded and bool(kinds & (_CONNECT_CODES | _CONNECT_NAMES)))
            if fatal:
                where = f" at {self.endpoint}" if self.endpoint else ""
                raise LMUnavailableError(f"{self.model_id}{where}: {root_message(exc)}") from exc
            if kinds & _REQUEST_NAMES:
                raise LMRequestError(f"{self.model_id}: {root_message(exc)}") from exc
            raise
        with self._lock:
            self._succeeded = True
        usage = getattr(resp, "usage", None)
        return LMResponse(text=resp.text or "",
                          prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                          reused_prompt_tokens=int(getattr(usage, "cache_read_tokens", 0) or 0))

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


def hosted(model: str, **kwargs: Any) -> DSPyLM:
    """An LM for a litellm/lm15 model string, e.g. ``hosted("openai/gpt-4o-mini")``.

    ``kwargs`` go to ``dspy.LM`` (``api_base``, ``api_key``, ``timeout``, ...); ``cache`` and
    ``num_retries`` are forced off because the session does both.
    """
    try:
        import dspy
    except ImportError as exc:
        raise LMUnavailableError(
            f"hosted LM {model!r} needs dspy: pip install dspy==3.4.1") from exc
    kwargs.pop("cache", None)
    kwargs.pop("num_retries", None)
    try:
        lm = dspy.LM(model, cache=False, num_retries=0, **kwargs)
    except Exception as exc:  # bad model string or settings
        raise LMUnavailableError(f"could not configure hosted LM {model!r}: {exc}") from exc
    return DSPyLM(lm)
