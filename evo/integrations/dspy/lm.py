"""Run DSPy on evo's LMs: a ``dspy.LM`` whose calls go through an evo :class:`LMSession`.

``evo.to_dspy(lm)`` wraps any evo backend — the embedded llama.cpp model included — as a
``dspy.LM("llamacpp/<model>", engine=...)``. Every DSPy call then shares evo's response cache,
retries and usage ledger, so a DSPy optimizer and an evo optimizer run on the very same model and
their LM calls are counted the same way (``session.usage``). DSPy's own cache is off: evo's is
the one cache.

DSPy asks for several samples of the same prompt at temperature > 0 (distinguished by a
``rollout_id`` that never reaches the engine). The engine numbers repeated identical requests:
the n-th gets seed n, so samples differ and a rerun in the same order replays them from the cache.

>>> # import dspy; dspy.configure(lm=evo.to_dspy(evo.lm.local()))
"""

from __future__ import annotations

import threading
from typing import Any

from evo.lm import session_for
from evo.lm.base import LM, LMRequest, Message
from evo.lm.session import LMSession


class SessionEngine:
    """A DSPy engine (``complete`` / ``stream`` / ``close``) over an evo :class:`LMSession`."""

    def __init__(self, session: LMSession, *, purpose: str = "dspy",
                 default_max_tokens: int = 512) -> None:
        self.session = session
        self.purpose = purpose
        self.default_max_tokens = default_max_tokens
        self._draws: dict[str, int] = {}
        self._lock = threading.Lock()

    def _request(self, request: Any) -> LMRequest:
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else \
                "".join(getattr(p, "text", "") or "" for p in request.system)
            messages.append(Message("system", system))
        for m in request.messages:
            role = m.role if m.role in ("user", "assistant", "system") else "user"
            messages.append(Message(role, m.text or ""))
        cfg = request.config
        temperature = float(cfg.temperature or 0.0)
        evo_request = LMRequest(tuple(messages), max_tokens=cfg.max_tokens or
                                self.default_max_tokens, temperature=temperature,
                                stop=tuple(cfg.stop or ()), seed=int(cfg.seed or 0),
                                purpose=self.purpose)
        if temperature > 0 and cfg.seed is None:
            key = evo_request.key(self.session.model_id)
            with self._lock:
                draw = self._draws.get(key, 0)
                self._draws[key] = draw + 1
            evo_request = LMRequest(evo_request.messages, max_tokens=evo_request.max_tokens,
                                    temperature=temperature, stop=evo_request.stop, seed=draw,
                                    purpose=self.purpose)
        return evo_request

    def complete(self, request: Any) -> Any:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import Message as DMessage
        from dspy.lm15 import Response, TextPart, Usage

        validate_request(request)
        resp = self.session.complete(self._request(request))
        return Response(id=None, model=request.model,
                        message=DMessage.assistant((TextPart(resp.text),)), finish_reason="stop",
                        usage=Usage(input_tokens=resp.prompt_tokens,
                                    output_tokens=resp.completion_tokens,
                                    total_tokens=resp.prompt_tokens + resp.completion_tokens))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def to_dspy(lm: LM | LMSession, *, cache: Any = True, purpose: str = "dspy", **lm_kwargs: Any):
    """A ``dspy.LM`` that runs on ``lm`` through one evo session (cache, retries, ledger).

    ``cache`` is evo's response cache (True: the default user cache, a path, or False); pass an
    :class:`LMSession` to share one ledger with an evo search. Other keyword arguments go to
    ``dspy.LM`` (e.g. ``max_tokens``, ``temperature``)."""
    import dspy


    session = session_for(lm, cache)
    engine = SessionEngine(session, purpose=purpose)
    dspy_lm = dspy.LM(f"llamacpp/{session.model_id}", engine=engine, cache=False, **lm_kwargs)
    dspy_lm.evo_session = session  # the ledger: dspy_lm.evo_session.usage
    return dspy_lm
