"""Where evo keeps what it fetches and caches: models, datasets, LM responses, embeddings, wheels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EVO_CACHE_DIR`` if set, else ``~/.cache/evo`` (read at call time, so tests can move it)."""
    env = os.environ.get("EVO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evo"
