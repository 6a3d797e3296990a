"""Shared fixtures. EVO_CACHE_DIR is NOT overridden globally: the real model, data and wheel
caches under ~/.cache/evo are reused across test runs. Tests that write caches ask for
``tmp_cache_dir``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from evo.testing.fault_server import FaultServer, serving


@pytest.fixture
def tmp_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty EVO_CACHE_DIR for this test only (restored afterwards)."""
    path = tmp_path / "evo-cache"
    path.mkdir()
    monkeypatch.setenv("EVO_CACHE_DIR", str(path))
    return path


# ---- the loopback fault server (tests/fault_server.py) of the fault suites -------------------

@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only: dspy would otherwise try to refresh litellm's model-price map online.
    The fault suites use it for every test (``pytest.mark.usefixtures("offline")``)."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def server(offline: None) -> Iterator[FaultServer]:
    """A loopback OpenAI-compatible server whose faults the test chooses per request."""
    with serving() as srv:
        yield srv


@pytest.fixture
def server_b(offline: None) -> Iterator[FaultServer]:
    """A second one: the same model at another address."""
    with serving() as srv:
        yield srv


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def screenshot() -> Callable[[Path, Path], np.ndarray]:
    """Render a page in headless Chromium (the test is skipped where there is none):
    ``screenshot(page, png)`` is the screenshot as an RGB array."""
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium)")

    def shoot(page: Path, png: Path) -> np.ndarray:
        from PIL import Image  # deferred: Pillow comes with matplotlib (the bench extra)

        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={png.parent / 'chromium-profile'}",
                        "--window-size=1200,3000", f"--screenshot={png}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
        return np.asarray(Image.open(png).convert("RGB"))

    return shoot
