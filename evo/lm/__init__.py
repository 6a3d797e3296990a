"""evo's LM layer: one protocol, several backends, and a session that caches and accounts.

Everything here imports in milliseconds: the heavy dependencies (llama-cpp-python, dspy/litellm)
are imported inside the backends on first use. The names are bound eagerly on purpose: the
functions ``local`` and ``hosted`` share their names with the submodules ``evo.lm.local`` and
``evo.lm.hosted``, and a lazy ``__getattr__`` would be shadowed by the submodule as soon as
anything imported it.
"""

from __future__ import annotations

from evo.lm.base import (LM, LMError, LMRequest, LMRequestError, LMResponse, LMTransientError,
                         LMUnavailableError, Message)
from evo.lm.cache import ResponseCache, default_cache_path
from evo.lm.dspy_engine import SessionEngine, to_dspy
from evo.lm.hosted import DSPyLM, from_dspy, hosted
from evo.lm.local import LocalLM, local
from evo.lm.models import MODELS, ModelSpec, ensure_model
from evo.lm.scripted import ScriptedLM
from evo.lm.session import LMSession, Usage

__all__ = [
    "LM", "LMRequest", "LMResponse", "Message", "LMError", "LMRequestError", "LMTransientError",
    "LMUnavailableError", "LMSession",
    "Usage", "ResponseCache", "default_cache_path", "ScriptedLM",
    "LocalLM", "local", "MODELS", "ModelSpec", "ensure_model", "DSPyLM", "hosted", "from_dspy",
    "SessionEngine", "to_dspy",
]
