"""evo's LM layer: one protocol, several backends, and a session that caches and accounts.

Everything here imports in milliseconds: the heavy dependencies (llama-cpp-python, dspy/litellm)
are imported inside the backends on first use. The names are bound eagerly on purpose: the
functions ``local`` and ``hosted`` share their names with the submodules ``evo.lm.local`` and
``evo.lm.hosted``, and a lazy ``__getattr__`` would be shadowed by the submodule as soon as
anything imported it.
"""

from __future__ import annotations

from evo.errors import ConfigError
from evo.lm.base import (
    LM,
    LMError,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    LMUnavailableError,
    Message,
)
from evo.lm.cache import ResponseCache, default_cache_path
from evo.lm.hosted import DSPyLM, from_dspy, hosted
from evo.lm.local import LocalLM, local
from evo.lm.models import MODELS, ModelSpec, ensure_model
from evo.lm.router import ModelChoice
from evo.lm.scripted import ScriptedLM
from evo.lm.session import LMSession, Usage, session_for

__all__ = [
    "LM", "LMRequest", "LMResponse", "Message", "LMError", "LMRequestError", "LMTransientError",
    "LMUnavailableError", "LMSession", "session_for", "make_lm",
    "Usage", "ResponseCache", "default_cache_path", "ScriptedLM",
    "LocalLM", "local", "MODELS", "ModelSpec", "ensure_model", "DSPyLM", "hosted", "from_dspy",
    "ModelChoice",
]


DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def make_lm(spec: str, *, api_base: str | None = None, api_key: str | None = None,
            timeout: float | None = None):
    """A backend from a command-line spec: an embedded model name, a ``.gguf`` path, or a hosted
    ``provider/model`` string (through dspy / litellm), whose requests give up after ``timeout``
    seconds (the hosted backend's default when None)."""
    if spec in MODELS or spec.endswith(".gguf"):
        return local(spec)
    if "/" in spec:
        kwargs = {k: v for k, v in (("api_base", api_base), ("api_key", api_key),
                                    ("timeout", timeout)) if v}
        return hosted(spec, **kwargs)
    raise ConfigError(f"unknown model {spec!r}: use one of {', '.join(MODELS)}, a path to a "
                      ".gguf file, or a hosted model such as openai/gpt-4o-mini")


_MOVED = {"to_dspy": "evo.to_dspy (evo.integrations.dspy.to_dspy)",
          "SessionEngine": "evo.integrations.dspy.SessionEngine"}


def __getattr__(name: str):
    if name in _MOVED:  # the DSPy bridge left the LM layer: say where it went
        raise AttributeError(f"evo.lm.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module 'evo.lm' has no attribute {name!r}")
