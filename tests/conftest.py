"""Shared fixtures. EVO_CACHE_DIR is NOT overridden globally: the real model, data and wheel
caches under ~/.cache/evo are reused across test runs. Tests that write caches ask for
``tmp_cache_dir``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty EVO_CACHE_DIR for this test only (restored afterwards)."""
    path = tmp_path / "evo-cache"
    path.mkdir()
    monkeypatch.setenv("EVO_CACHE_DIR", str(path))
    return path
