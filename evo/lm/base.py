"""The LM protocol: one request type, one response type, one method.

Every backend (local GGUF, hosted via dspy/litellm, scripted for tests) implements
:class:`LM`. Nothing else in evo talks to a model directly: calls go through
:class:`evo.lm.session.LMSession`, which adds the persistent cache, retries and the usage ledger.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from evo.errors import EvoError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class LMRequest:
    """A chat completion request. Frozen and hashable: its :meth:`key` is the cache key."""

    messages: tuple[Message, ...]
    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    # Label scoring: with ``choices``, the backend does not generate; it scores each choice as
    # the continuation of the assistant turn after ``prefill`` (e.g. "label:") and returns one
    # total log-probability per choice (:attr:`LMResponse.choice_logprobs`), and as ``text``
    # the prefill followed by the most probable choice. Only backends with ``scores_choices``.
    choices: tuple[str, ...] = ()
    prefill: str = ""
    # What the call is for ("task", "reflection", "preflight", ...): kept in the ledger, not the
    # key.
    purpose: str = field(default="task", compare=False)
    # Which member of a :class:`~evo.lm.router.ModelChoice` answers ("" = its default; other
    # backends ignore it). Part of the key only when set, so every older key stays as it was.
    model: str = ""

    def key(self, model_id: str, endpoint: str | None = None) -> str:
        """The request's identity for ``model_id``; with ``endpoint`` (a server URL) the
        identity at that server: two servers answering under one model name are not one model.
        Without it the key is the one evo always used, so older caches stay readable."""
        payload: dict[str, object] = {
            "model": model_id,
            "messages": [[m.role, m.content] for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
            # Greedy decoding does not depend on the seed: same key, so one cached answer serves
            # all.
            "seed": self.seed if self.temperature > 0 else 0,
        }
        if endpoint:
            payload["endpoint"] = endpoint
        if self.choices:  # absent otherwise: the keys of generation requests never changed
            payload["choices"] = list(self.choices)
            payload["prefill"] = self.prefill
        if self.model:  # absent otherwise, as above
            payload["route"] = self.model
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LMResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # LM time of the paid call (0 for a cache hit)
    cached: bool = False
    # Tokens of the prompt that the backend reused from its KV cache (prefix reuse), when it knows.
    reused_prompt_tokens: int = 0
    # Why the server stopped ("stop", "length", "content_filter"), when it says; not stored.
    finish_reason: str | None = field(default=None, compare=False)
    # A label-scoring request's answer (see LMRequest.choices): the total log-probability of each
    # choice, in the request's order. None for a generation.
    choice_logprobs: tuple[float, ...] | None = None


class LMError(RuntimeError):
    """A failed LM call (after retries). Recorded per cell by the evaluator; never ends a run
    alone."""


class LMRequestError(LMError):
    """This request cannot be answered as asked (its prompt is longer than the model's context
    window, or the model spent all of ``max_tokens`` and answered nothing): retrying cannot
    help, and it says nothing about whether the LM is up. Journaled for good: a resumed run
    replays it."""


class LMTransientError(LMError):
    """The LM did not answer this time, for a reason that may pass: throttled (HTTP 429), a
    server error (5xx), a timeout, a dropped connection, an empty or non-JSON reply.

    The session retries it (waiting ``retry_after`` seconds when the server said so). A request
    that still fails is a failed cell in this sitting, but a resumed run asks it again instead
    of replaying the failure, and it is never stored as an answer."""

    # why, in the words a failed cell is counted by (see evo.search.evaluate.error_kind)
    REASONS = ("throttled", "server error", "timeout", "dropped connection", "bad reply",
               "empty reply", "transient")

    def __init__(self, message: str, *, retry_after: float | None = None,
                 reason: str = "transient") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason if reason in self.REASONS else "transient"


class LMUnavailableError(LMError, EvoError):
    """The LM cannot be reached or loaded at all (bad key, host down, missing model file).

    Raised once, with what was tried, instead of recording the same failure on every cell.
    """


@runtime_checkable
class LM(Protocol):
    """A language model backend. ``model_id`` names the exact model (it is part of the cache key).

    A backend may set ``concurrent = True`` when it serves calls in parallel (a hosted API):
    then ``Ensemble(parallel=True)`` runs its member optimizers in threads. A backend that sets
    ``scores_choices = True`` answers label-scoring requests (``LMRequest.choices``) with
    log-probabilities (:func:`scores_choices`)."""

    model_id: str

    def complete(self, request: LMRequest) -> LMResponse:
        """Run one chat completion. Raise :class:`LMError` (or any exception) on failure."""
        ...


def scores_choices(lm: object) -> bool:
    """Whether ``lm`` answers label-scoring requests (``LMRequest.choices``) with
    log-probabilities: the dense scores racing and the ``rank`` answer mode use."""
    return bool(getattr(lm, "scores_choices", False))


@runtime_checkable
class Executor(Protocol):
    """Where an LM's calls run, when not in this process: :meth:`wrap` returns an LM whose
    ``complete`` runs each call elsewhere (e.g. :class:`evo.integrations.ray.RayExecutor`: on
    Ray actors, each with its own client or model replica). The wrapped LM keeps the backend's
    ``model_id`` and ``endpoint`` (the cache and the journal key answers as a serial run's),
    sets ``concurrent = True`` and says how many calls it can run at once
    (``max_concurrency``). The session, its cache and its journal stay in the calling process.
    """

    def wrap(self, lm: LM) -> LM:
        """An LM that runs ``lm``'s calls on this executor."""
        ...
