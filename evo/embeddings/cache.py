"""Persistent embedding cache: SQLite, keyed by (model_id, sha256 of the text).

One file holds the vectors of every model. Safe to share between threads (one connection behind a
lock) and between processes (SQLite locking, WAL journal). Vectors are stored as raw float32 bytes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evo._sqlite import immediate
from evo.paths import cache_root

_CHUNK = 500  # keys per SELECT ... IN (...) (SQLite's variable limit is >= 999)




def default_cache_path() -> Path:
    return cache_root() / "embeddings" / "embeddings.sqlite3"


def text_key(text: str) -> bytes:
    """sha256 digest of the UTF-8 text: the per-model cache key."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Maps (model_id, text) to a float32 vector, persistently.

    ``path=":memory:"`` gives a throwaway in-process cache (tests).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = default_cache_path()
        self.path = os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False,
                                     isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " model_id TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL, vec BLOB NOT NULL,"
            " PRIMARY KEY (model_id, key)) WITHOUT ROWID"
        )

    def get_many(self, model_id: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of the cached texts among ``texts`` (missing texts are absent from the dict)."""
        by_key = {text_key(t): t for t in texts}
        keys = list(by_key)
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, dim, vec FROM embeddings WHERE model_id = ? AND key IN ({marks})",
                    (model_id, *chunk),
                ).fetchall()
                for key, dim, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape != (dim,):  # corrupt row: treat as a miss, it gets overwritten
                        continue
                    out[by_key[bytes(key)]] = vec.copy()
        return out

    def get(self, model_id: str, text: str) -> np.ndarray | None:
        return self.get_many(model_id, [text]).get(text)

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise ValueError(f"put_many: {len(texts)} texts but vectors of shape {vecs.shape}")
        dim = int(vecs.shape[1])
        rows = [(model_id, text_key(t), dim, np.ascontiguousarray(v).tobytes())
                for t, v in zip(texts, vecs)]
        with self._lock, immediate(self._conn) as conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (model_id, key, dim, vec) "
                             "VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def count(self, model_id: str) -> int:
        with self._lock:
            return int(self._conn.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (model_id,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_cache() -> EmbeddingCache:
    """The shared on-disk cache at ``$EVO_CACHE_DIR/embeddings/`` (default ``~/.cache/evo``)."""
    return EmbeddingCache(default_cache_path())
