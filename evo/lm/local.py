"""A local GGUF model on llama-cpp-python (CPU), loaded lazily on first call.

Calls are serialised (one llama context is not thread-safe, and 2 cores gain nothing from
overlap). llama-cpp keeps the KV cache of the previous prompt and re-evaluates only the part of
a new prompt after their common prefix: so callers should put the shared part (instruction,
demos) first and run one candidate's examples back to back. :attr:`LMResponse.reused_prompt_tokens`
reports how many prompt tokens that saved.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evo.lm.base import (
    LMError,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMUnavailableError,
)
from evo.lm.models import MODELS, ensure_model

_INSTALL_HINT = ("llama-cpp-python is not installed; install it with "
                 "`pip install llama-cpp-python==0.3.36` (compiles from source, ~4 min on 2 cores; "
                 "CMAKE_ARGS=\"-DLLAVA_BUILD=OFF\" trims it)")

_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(**overrides: Any) -> Iterator[None]:
    """Set fields of llama.cpp's model params for one ``Llama(...)`` construction.

    ``Llama`` exposes no argument for some fields (``use_extra_bufts``), but builds its params
    from ``llama_cpp.llama_cpp.llama_model_default_params()`` at construction: wrap that call
    for the duration (under a lock, so concurrent loads see a consistent function).
    """
    import llama_cpp.llama_cpp as lc

    with _PATCH_LOCK:
        original = lc.llama_model_default_params

        def patched() -> Any:
            params = original()
            fields = {f[0] for f in type(params)._fields_}
            for name, value in overrides.items():
                if name in fields:  # an older llama-cpp without the field: keep its default
                    setattr(params, name, value)
            return params

        lc.llama_model_default_params = patched
        try:
            yield
        finally:
            lc.llama_model_default_params = original


def _build_has_amx() -> bool:
    """Whether this llama.cpp build uses Intel AMX kernels (compiled in and CPU-supported)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())


def _common_prefix(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # lengths differ
        if x != y:
            break
        n += 1
    return n


class LocalLM:
    """A GGUF model file run by llama-cpp-python. Greedy decoding when ``temperature == 0``."""

    concurrent = False  # one llama.cpp context: calls are serialised

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 4096,
                 n_threads: int | None = None, model_id: str | None = None,
                 verbose: bool = False, extra_buffers: bool | None = None) -> None:
        self.model_path = Path(model_path).expanduser()
        self.n_ctx = n_ctx
        self._n_threads_arg = n_threads  # None: this machine's cores, wherever it is rebuilt
        self.n_threads = n_threads or os.cpu_count() or 1
        self.verbose = verbose
        # llama.cpp's "extra buffer types" repack weights for faster kernels (AMX, AVX repack).
        # Its AMX path segfaults on the first decode on some Sapphire Rapids VMs (this machine
        # included; llama.cpp#20824): None = off when the build uses AMX, on otherwise.
        self.extra_buffers = extra_buffers
        if model_id is None:
            # A user file: name + size identify it well enough for the cache key, without
            # hashing a GB at construction time.
            size = self.model_path.stat().st_size if self.model_path.is_file() else 0
            model_id = f"{self.model_path.name}:{size}"
        self.model_id = model_id
        self.registry_name: str | None = None  # set by local(): another machine fetches it
        self.load_seconds: float | None = None
        self._llama: Any = None
        self._vocab: Any = None  # a vocabulary-only load, for count_tokens
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return str(self.model_path)

    @property
    def _where(self) -> str:
        return f"{self.model_id} at {self.model_path}"

    def _load(self) -> Any:
        # Caller holds self._lock.
        if self._llama is not None:
            return self._llama
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LMUnavailableError(f"{self._where}: {_INSTALL_HINT}") from exc
        if not self.model_path.is_file():
            raise LMUnavailableError(f"{self._where}: model file not found")
        t0 = time.perf_counter()
        extra = self.extra_buffers if self.extra_buffers is not None else not _build_has_amx()
        try:
            with _model_params(use_extra_bufts=extra):
                self._llama = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx,
                                    n_threads=self.n_threads, n_threads_batch=self.n_threads,
                                    seed=0, verbose=self.verbose)
        except Exception as exc:  # llama-cpp raises ValueError/RuntimeError
            raise LMUnavailableError(f"{self._where}: could not load the model: {exc}") from exc
        self.load_seconds = time.perf_counter() - t0
        return self._llama

    def load(self) -> LocalLM:
        """Load the model now (otherwise the first :meth:`complete` does)."""
        with self._lock:
            self._load()
        return self

    def complete(self, request: LMRequest) -> LMResponse:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        with self._lock:
            llama = self._load()
            # The tokens now in the KV cache: the new prompt's common prefix with them is reused.
            before = llama._input_ids.copy()  # no public accessor; a cheap copy
            t0 = time.perf_counter()
            try:
                out = llama.create_chat_completion(
                    messages=messages, max_tokens=request.max_tokens,
                    temperature=request.temperature, stop=list(request.stop) or None,
                    seed=request.seed, repeat_penalty=1.0)  # temperature 0 → greedy sampler
            except ValueError as exc:
                if "context window" in str(exc):  # the prompt does not fit: no retry helps
                    raise LMRequestError(f"{self.model_id}: {exc}") from exc
                raise LMError(f"{self.model_id}: {exc}") from exc
            seconds = time.perf_counter() - t0
            usage = out.get("usage") or {}
            n_prompt = int(usage.get("prompt_tokens", 0))
            prompt_ids = llama._input_ids[:n_prompt]
            reused = _common_prefix(before, prompt_ids)
            # llama-cpp re-evaluates the last prompt token when the whole prompt matched.
            reused = min(reused, max(n_prompt - 1, 0))
        text = out["choices"][0]["message"].get("content") or ""
        return LMResponse(text=text, prompt_tokens=n_prompt,
                          completion_tokens=int(usage.get("completion_tokens", 0)),
                          seconds=seconds, reused_prompt_tokens=reused)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's vocabulary (loads the vocabulary alone, not the
        weights, unless the model is loaded already)."""
        with self._lock:
            tok = self._llama
            if tok is None:
                if self._vocab is None:
                    from llama_cpp import Llama
                    from llama_cpp._utils import suppress_stdout_stderr
                    with suppress_stdout_stderr(disable=self.verbose):  # llama.cpp's C logging
                        self._vocab = Llama(model_path=str(self.model_path), vocab_only=True,
                                            verbose=self.verbose)
                tok = self._vocab
            return len(tok.tokenize(text.encode(), add_bos=False, special=False))

    def close(self) -> None:
        """Free the model (a later call reloads it)."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
            self._llama = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as a recipe, not a loaded model: the unpickled copy (a Ray actor's, say) loads
        its own replica on its first call. A registry model is fetched where it is rebuilt if
        that machine lacks the file."""
        settings = {"n_ctx": self.n_ctx, "n_threads": self._n_threads_arg,
                    "model_id": self.model_id, "verbose": self.verbose,
                    "extra_buffers": self.extra_buffers}
        return _rebuild_local, (str(self.model_path), self.registry_name, settings)

    def __copy__(self) -> LocalLM:  # a copy is the same model, not a second replica
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalLM:
        return self

    def __repr__(self) -> str:
        return f"LocalLM({str(self.model_path)!r}, model_id={self.model_id!r})"


def _rebuild_local(model_path: str, registry_name: str | None,
                   settings: dict[str, Any]) -> LocalLM:
    """An unloaded :class:`LocalLM` from what :meth:`LocalLM.__reduce__` kept."""
    path = Path(model_path)
    if registry_name is not None and not path.is_file():
        path = ensure_model(registry_name)  # another machine: fetch the pinned file there
    lm = LocalLM(path, **settings)
    lm.registry_name = registry_name
    return lm


def local(name_or_path: str = "qwen2.5-coder-0.5b", **kw: Any) -> LocalLM:
    """A :class:`LocalLM` for a registry model name (fetched on first use) or a ``.gguf`` path.

    Keyword arguments go to :class:`LocalLM` (``n_ctx``, ``n_threads``, ``verbose``, ...).
    """
    if name_or_path in MODELS:
        spec = MODELS[name_or_path]
        kw.setdefault("model_id", spec.model_id)
        lm = LocalLM(ensure_model(name_or_path), **kw)
        lm.registry_name = name_or_path
        return lm
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise LMUnavailableError(f"model file {path} not found")
        return LocalLM(path, **kw)
    raise ValueError(f"unknown local model {name_or_path!r}; known models: {', '.join(MODELS)} "
                     f"(or pass a path to a .gguf file)")
