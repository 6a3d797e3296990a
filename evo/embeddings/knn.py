"""KNN demos: each input gets the ``k`` training examples nearest to it as its demos.

The pool is embedded once (persistent embedding cache, so a text is never encoded twice) into a
FAISS :class:`~evo.embeddings.index.VectorIndex`; the inputs about to be evaluated are retrieved in
one batched query and memoized, so a candidate that uses KNN demos costs no LM call to build its
prompts (DSPy's ``KNNFewShot`` instead re-runs ``BootstrapFewShot`` on every call).

    >>> spec = KNNDemos(k=4, pool=tuple(task.train), fields=("question",))   # doctest: +SKIP
    >>> spec.retrieve([task.test[0]])[0][:2]                                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evo.data import Example
from evo.embeddings.encoder import Encoder, HashingEncoder, default_encoder
from evo.embeddings.index import VectorIndex

# How many neighbours a retriever memoizes per input: enough for any k a genome can ask for.
MAX_K = 16

_lock = threading.Lock()
_encoders: dict[str, Encoder] = {}
_retrievers: dict[tuple[str, tuple[str, ...], str], DemoRetriever] = {}


def register_encoder(name: str, encoder: Encoder) -> None:
    """Make ``encoder`` available to :class:`KNNDemos` (and instruction dedupe) under ``name``."""
    with _lock:
        _encoders[name] = encoder


def encoder_for(name: str) -> Encoder:
    """The encoder named ``name``: a registered one, ``"minilm"`` (bundled all-MiniLM-L6-v2
    behind the persistent embedding cache) or ``"hashing"`` (lexical, no torch)."""
    with _lock:
        if name not in _encoders:
            if name == "minilm":
                _encoders[name] = default_encoder()
            elif name == "hashing":
                _encoders[name] = HashingEncoder()
            else:
                raise ValueError(f"unknown encoder {name!r}: use 'minilm', 'hashing' or "
                                 "evo.embeddings.knn.register_encoder(name, encoder)")
        return _encoders[name]


def query_text(example: Example, fields: Sequence[str]) -> str:
    """What is embedded for an example: its input fields, as dspy's KNN renders them."""
    return " | ".join(f"{name}: {example.inputs.get(name, '')}" for name in fields)


class DemoRetriever:
    """A FAISS index over one pool; nearest-neighbour lists memoized per input text."""

    def __init__(self, pool: Sequence[Example], fields: Sequence[str], encoder: Encoder) -> None:

        if not pool:
            raise ValueError("KNN demos need a non-empty pool of training examples")
        self.pool = tuple(pool)
        self.fields = tuple(fields)
        self.encoder = encoder
        self.index = VectorIndex(encoder.dim)
        self.index.add(encoder.encode([query_text(ex, self.fields) for ex in self.pool]))
        self._memo: dict[str, list[int]] = {}  # query text -> pool positions, nearest first
        self.queries = 0  # distinct inputs retrieved (for tests and reports)

    def neighbors(self, examples: Sequence[Example], k: int) -> list[list[int]]:
        """Pool positions of the ``k`` nearest examples to each input, nearest first. An input
        that is itself in the pool (same id) never gets itself as a demo."""
        texts = [query_text(ex, self.fields) for ex in examples]
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            n = min(len(self.pool), MAX_K + 1)
            vectors = self.encoder.encode(todo)
            # One query at a time: a batched search takes another code path (and BLAS kernel)
            # by batch size, whose rounding can reorder near-ties, so an input's neighbours
            # would depend on which other inputs were asked with it -- and, memoized
            # process-wide, on which searches ran before in the same process.
            for text, vector in zip(todo, vectors, strict=True):
                _, ids = self.index.search(vector[None, :], n)
                self._memo[text] = [i for i in ids[0].tolist() if i >= 0]
            self.queries += len(todo)
        out = []
        for ex, text in zip(examples, texts, strict=True):
            near = [i for i in self._memo[text] if self.pool[i].id != ex.id]
            out.append(near[:k])
        return out


class KNNDemos(BaseModel):
    """Per-input demos: the ``k`` pool examples nearest to the input (cosine of embeddings of
    the input ``fields``). Saved with the program, pool included, so a loaded program retrieves
    the same way."""

    model_config = ConfigDict(frozen=True)

    k: int = Field(ge=1, le=MAX_K)
    pool: tuple[Example, ...]
    fields: tuple[str, ...]
    encoder: str = "minilm"

    @cached_property
    def _key(self) -> tuple[str, tuple[str, ...], str]:
        digest = hashlib.sha1("\n".join(ex.id for ex in self.pool).encode()).hexdigest()
        return self.encoder, self.fields, digest

    def retriever(self) -> DemoRetriever:
        key = self._key  # computed once per spec: retrieve() runs for every prompt built
        with _lock:
            found = _retrievers.get(key)
        if found is None:
            found = DemoRetriever(self.pool, self.fields, encoder_for(self.encoder))
            with _lock:
                found = _retrievers.setdefault(key, found)
        return found

    def retrieve(self, examples: Sequence[Example], k: int | None = None
                 ) -> list[tuple[Example, ...]]:
        """The ``k`` (default ``self.k``) nearest pool examples of each input, nearest first
        (one batched search for the inputs not seen before)."""
        retriever = self.retriever()
        return [tuple(retriever.pool[i] for i in row)
                for row in retriever.neighbors(examples, self.k if k is None else k)]

    @cached_property
    def mean_demo_chars(self) -> float:
        """Average rendered length of a pool example (for prompt-length estimates)."""
        lengths = [sum(len(str(v)) for v in ex.inputs.values()) +
                   sum(len(str(v)) for v in ex.outputs.values()) for ex in self.pool]
        return float(np.mean(lengths)) if lengths else 0.0


def clear_retrievers() -> None:
    """Forget every memoized index (tests; a long-lived process switching pools)."""
    with _lock:
        _retrievers.clear()
