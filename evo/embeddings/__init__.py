"""Text embeddings for evo: encoders, a persistent embedding cache and a FAISS vector index.

    from evo.embeddings import default_encoder, VectorIndex
    enc = default_encoder()                 # MiniLM (d=384) behind ~/.cache/evo/embeddings/
    vecs = enc.encode(["a question", ...])  # float32 (n, 384), L2-normalized
    index = VectorIndex(enc.dim); index.add(vecs, ids)
    scores, ids = index.search(enc.encode(["query"]), k=5)
    scores, ids = index.neighbors(ids_of_members, k=5)   # nearest *other* members, one call

``HashingEncoder()`` is the dependency-free lexical alternative (no torch, ~0.3 ms a text).
Importing this package is cheap: torch/sentence-transformers load on the first MiniLM encode.
"""

from evo.embeddings.cache import (
    EmbeddingCache,
    cache_root,
    default_cache,
    default_cache_path,
    text_key,
)
from evo.embeddings.encoder import (
    CachedEncoder,
    Encoder,
    HashingEncoder,
    MiniLMEncoder,
    default_encoder,
    l2_normalize,
)
from evo.embeddings.index import HNSW_THRESHOLD, VectorIndex

__all__ = [
    "HNSW_THRESHOLD",
    "CachedEncoder",
    "EmbeddingCache",
    "Encoder",
    "HashingEncoder",
    "MiniLMEncoder",
    "VectorIndex",
    "cache_root",
    "default_cache",
    "default_cache_path",
    "default_encoder",
    "l2_normalize",
    "text_key",
]
