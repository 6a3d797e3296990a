"""A local GGUF model on llama-cpp-python (CPU), loaded lazily on first call.

Calls are serialised (one llama context is not thread-safe, and 2 cores gain nothing from
overlap). llama-cpp keeps the KV cache of the previous prompt and re-evaluates only the part of
a new prompt after their common prefix: so callers should put the shared part (instruction,
demos) first and run one candidate's examples back to back. :attr:`LMResponse.reused_prompt_tokens`
reports how many prompt tokens that saved.

A label-scoring request (``LMRequest.choices``) is not generated: :meth:`LocalLM.complete`
evaluates the prompt once (with the same prefix reuse) and scores each choice by the model's
log-probability of it followed by the end of the turn, a few token evaluations per choice.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
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


def continuation(prefill: str, choice: str) -> str:
    """What a label-scoring request's choice continues the assistant turn with: the prefill,
    then the choice after one space (none after an empty prefill or one that ends in
    whitespace). The text a scored reply reads as."""
    if not prefill or prefill[-1].isspace():
        return prefill + choice
    return f"{prefill} {choice}"


def _chat_formatter(llama: Any) -> Any:
    """The chat formatter ``llama.create_chat_completion`` uses: the one its chat handler was
    built from (llama-cpp keeps it only in the handler's closure)."""
    from llama_cpp import llama_chat_format

    handler = (llama.chat_handler or llama._chat_handlers.get(llama.chat_format)
               or llama_chat_format.get_chat_completion_handler(llama.chat_format))
    cells = dict(zip(getattr(handler, "__code__", None) and handler.__code__.co_freevars or (),
                     handler.__closure__ or (), strict=False))
    cell = cells.get("chat_formatter")
    if cell is None:  # a custom chat handler (multimodal, function calling): no plain template
        raise LMRequestError(f"chat format {llama.chat_format!r} has no plain chat template "
                             "to score choices with")
    return cell.cell_contents


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _common_prefix(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # lengths differ
        if x != y:
            break
        n += 1
    return n


class LocalLM:
    """A GGUF model file run by llama-cpp-python. Greedy decoding when ``temperature == 0``;
    label-scoring requests (``LMRequest.choices``) are scored, not generated."""

    concurrent = False  # one llama.cpp context: calls are serialised
    scores_choices = True

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
            if request.choices:
                return self._score(llama, messages, request)
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

    def _score(self, llama: Any, messages: list[dict[str, str]],
               request: LMRequest) -> LMResponse:
        """Answer a label-scoring request (caller holds the lock): each choice's total
        log-probability as the continuation of the assistant turn after the prefill, with the
        end-of-turn token after it (so a choice that is a prefix of another is not favoured).

        The prompt is formatted as :meth:`complete` would send it (the model's chat template,
        with the assistant's generation prompt) and evaluated once, reusing the KV-cache prefix
        shared with the previous call; each choice then costs one batched decode of its few
        tokens from that state, rolled back before the next. Tokenizing prompt + choice
        whole (not the choice alone) keeps BPE merges across the boundary exact: scoring starts
        where the choices' tokenizations first part from the prompt's."""
        t0 = time.perf_counter()
        fmt = _chat_formatter(llama)(messages=messages)
        add_bos = not fmt.added_special

        def tokens(text: str) -> list[int]:
            return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

        context = tokens(fmt.prompt + request.prefill)
        full = [tokens(fmt.prompt + continuation(request.prefill, c)) for c in request.choices]
        base = min(_common_prefix(context, f) for f in full)  # the tokens all choices share
        need = max(len(f) for f in full) + 1
        if need > llama.n_ctx():
            raise LMRequestError(f"{self.model_id}: the prompt and its longest choice need "
                                 f"{need} tokens, more than the context window of "
                                 f"{llama.n_ctx()}")
        if base == 0:
            raise LMRequestError(f"{self.model_id}: an empty prompt cannot be scored")
        eot = llama._model.token_eot()
        eot = eot if eot >= 0 else llama.token_eos()
        # Reuse the common prefix with what the KV cache holds, as llama-cpp's generate does;
        # the last shared token is evaluated again for its logits.
        reused = min(_common_prefix(llama._input_ids, context[:base]), base - 1)
        if reused > 0 and not llama._ctx.kv_cache_seq_rm(-1, reused, -1):
            reused = 0
        try:
            if reused == 0:
                llama.reset()
            llama.n_tokens = reused
            llama.eval(context[reused:base])
            first = _log_softmax(self._logits(llama, -1))
            logprobs = []
            for f in full:
                seq = [*f[base:], eot]
                total = float(first[seq[0]])
                for row, nxt in zip(self._decode(llama, seq[:-1], base), seq[1:], strict=True):
                    total += float(_log_softmax(row)[nxt])
                logprobs.append(total)
        except (RuntimeError, ValueError) as exc:  # llama_decode failed
            raise LMError(f"{self.model_id}: {exc}") from exc
        finally:  # the KV cache keeps the prompt alone; its logits are stale now
            llama.n_tokens = min(llama.n_tokens, base)
            llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
            llama._requires_eval = True
        best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        return LMResponse(text=continuation(request.prefill, request.choices[best]),
                          prompt_tokens=len(context), completion_tokens=0,
                          seconds=time.perf_counter() - t0, reused_prompt_tokens=reused,
                          choice_logprobs=tuple(logprobs))

    @staticmethod
    def _logits(llama: Any, i: int) -> Any:
        """The logits of output row ``i`` of the last decode (a copy)."""
        import numpy as np

        ptr = llama._ctx.get_logits_ith(i)
        return np.ctypeslib.as_array(ptr, shape=(llama.n_vocab(),)).copy()

    def _decode(self, llama: Any, seq: Sequence[int], pos: int) -> list[Any]:
        """Decode ``seq`` at positions ``pos`` onwards (after clearing them) and return the
        logits after each of its tokens; ``llama.n_tokens`` is left as it was."""
        rows: list[Any] = []
        llama._ctx.kv_cache_seq_rm(-1, pos, -1)
        for i in range(0, len(seq), llama.n_batch):
            chunk = list(seq[i:i + llama.n_batch])
            llama._batch.set_batch(batch=chunk, n_past=pos + i, logits_all=True)
            llama._ctx.decode(llama._batch)
            rows.extend(self._logits(llama, j) for j in range(len(chunk)))
        return rows

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
