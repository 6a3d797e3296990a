"""A deterministic, instant LM for tests and dry runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from evo.lm.base import LMError, LMRequest, LMResponse


def _last_user(request: LMRequest) -> str:
    return next((m.content for m in reversed(request.messages) if m.role == "user"), "")


class ScriptedLM:
    """Answers from a function or a substring table; can fail on demand.

    ``respond`` is either ``f(request) -> str`` or a mapping whose keys are matched as substrings
    of the last user message (first match in mapping order wins; no match → ``default``).
    ``fail_every=n`` makes every n-th call raise :class:`LMError`; ``errors(request)`` may return an
    exception to raise for that request (e.g. a ``ConnectionError`` for some pattern, or an
    :class:`~evo.lm.base.LMTransientError` for a throttled one). Every call, failed or not, is
    recorded in :attr:`calls`. Token counts are whitespace tokens. An empty answer (``default``
    is ``""``) is what an empty reply from a server is: the session counts it a failed attempt.
    """

    concurrent = True  # thread-safe; with ``delay_s`` it simulates a parallel API

    def __init__(self, respond: Callable[[LMRequest], str] | Mapping[str, str], *,
                 model_id: str = "scripted", fail_every: int = 0,
                 errors: Callable[[LMRequest], BaseException | None] | None = None,
                 default: str = "", delay_s: float = 0.0, endpoint: str | None = None,
                 max_concurrency: int = 1) -> None:
        self.respond = respond
        self.model_id = model_id
        self.fail_every = fail_every
        self.errors = errors
        self.default = default
        self.delay_s = delay_s  # simulated latency, for concurrency tests
        self.endpoint = endpoint
        # calls a session sends at once unless told otherwise: 1, so a script that counts its
        # calls (``fail_every``) sees them in a fixed order; raise it to test concurrency
        self.max_concurrency = max_concurrency
        self.calls: list[LMRequest] = []
        self._lock = threading.Lock()

    def _answer(self, request: LMRequest) -> str:
        if callable(self.respond):
            return self.respond(request)
        text = _last_user(request)
        return next((v for k, v in self.respond.items() if k in text), self.default)

    def complete(self, request: LMRequest) -> LMResponse:
        with self._lock:
            self.calls.append(request)
            n = len(self.calls)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_every and n % self.fail_every == 0:
            raise LMError(f"scripted failure on call {n}")
        if self.errors is not None and (exc := self.errors(request)) is not None:
            raise exc
        text = self._answer(request)
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return LMResponse(text=text, prompt_tokens=prompt_tokens,
                          completion_tokens=len(text.split()), seconds=self.delay_s)

    def __repr__(self) -> str:
        return f"ScriptedLM(model_id={self.model_id!r}, calls={len(self.calls)})"
