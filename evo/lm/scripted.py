"""A deterministic, instant LM for tests and dry runs."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from evo.lm.base import LMError, LMRequest, LMResponse
from evo.lm.local import continuation  # (llama-cpp itself is imported only on a local call)

UNNAMED_LOGPROB = -10.0  # a choice the scripted reply does not name (see ScriptedLM)


def named_choice(reply: str, choices: Sequence[str]) -> int | None:
    """The index of the choice ``reply`` names: the one equal to it (case-folded, stripped),
    else the longest one it contains (first on ties), else None."""
    text = reply.strip().casefold()
    folded = [c.strip().casefold() for c in choices]
    if text in folded:
        return folded.index(text)
    inside = [i for i, c in enumerate(folded) if c and c in text]
    return max(inside, key=lambda i: (len(folded[i]), -i)) if inside else None


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

    Label scoring (``LMRequest.choices``): ``scores(request)`` gives the choices'
    log-probabilities, as a mapping choice -> log-probability or a sequence in the request's
    order. Without it, the reply ``respond`` gives names a choice (:func:`named_choice`: equal
    to it, else containing it, case-folded), which gets log-probability 0.0 and every other
    choice :data:`UNNAMED_LOGPROB`; a reply that names none gives all choices the same
    log-probability, ``-log(len(choices))`` (then the first choice is the answer). The text is
    the prefill and the most probable choice, as a scoring backend returns it.
    """

    concurrent = True  # thread-safe; with ``delay_s`` it simulates a parallel API
    scores_choices = True

    def __init__(self, respond: Callable[[LMRequest], str] | Mapping[str, str], *,
                 model_id: str = "scripted", fail_every: int = 0,
                 errors: Callable[[LMRequest], BaseException | None] | None = None,
                 default: str = "", delay_s: float = 0.0, endpoint: str | None = None,
                 max_concurrency: int = 1,
                 scores: Callable[[LMRequest], Mapping[str, float] | Sequence[float]] | None
                 = None) -> None:
        self.respond = respond
        self.scores = scores
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
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        if request.choices:
            return self._score(request, prompt_tokens)
        text = self._answer(request)
        return LMResponse(text=text, prompt_tokens=prompt_tokens,
                          completion_tokens=len(text.split()), seconds=self.delay_s)

    def _logprobs(self, request: LMRequest) -> tuple[float, ...]:
        choices = request.choices
        if self.scores is not None:
            given = self.scores(request)
            if isinstance(given, Mapping):
                missing = [c for c in choices if c not in given]
                if missing:
                    raise ValueError(f"scripted scores name no log-probability for {missing}")
                return tuple(float(given[c]) for c in choices)
            values = tuple(float(v) for v in given)
            if len(values) != len(choices):
                raise ValueError(f"scripted scores gave {len(values)} log-probabilities for "
                                 f"{len(choices)} choices")
            return values
        named = named_choice(self._answer(request), choices)
        if named is None:
            return (-math.log(len(choices)),) * len(choices)
        return tuple(0.0 if i == named else UNNAMED_LOGPROB for i in range(len(choices)))

    def _score(self, request: LMRequest, prompt_tokens: int) -> LMResponse:
        logprobs = self._logprobs(request)
        best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        return LMResponse(text=continuation(request.prefill, request.choices[best]),
                          prompt_tokens=prompt_tokens, completion_tokens=0,
                          seconds=self.delay_s, choice_logprobs=logprobs)

    def __repr__(self) -> str:
        return f"ScriptedLM(model_id={self.model_id!r}, calls={len(self.calls)})"
