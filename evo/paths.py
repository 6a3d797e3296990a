"""Where evo keeps what it fetches and caches: models, datasets, LM responses, embeddings,
wheels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EVO_CACHE_DIR`` if set, else ``~/.cache/evo`` (read at call time, so tests can move
    it)."""
    env = os.environ.get("EVO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evo"


def protected_dir(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must never hold evo's files (a filesystem root, the home directory or a
    folder above it, a folder above the current one), or None.

    >>> protected_dir("/")
    'a filesystem root'
    """
    real = Path(path).expanduser().resolve()
    if real.parent == real:
        return "a filesystem root"
    known = os.path.expanduser("~")
    home = Path(known).resolve() if known not in ("", "~") else None  # None: no home known
    if home is not None and real == home:
        return "your home directory"
    if home is not None and home.is_relative_to(real):
        return f"a folder above your home directory {home}"
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current directory was removed
        cwd = None
    if cwd is not None and cwd != real and cwd.is_relative_to(real):
        return f"a folder above the current directory {cwd}"
    return None
