"""Shared fixtures. EVO_CACHE_DIR is NOT overridden globally: the real model, data and wheel
caches under ~/.cache/evo are reused across test runs. Tests that write caches ask for
``tmp_cache_dir``."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from evo.lm.journal import Journal
from evo.testing import assert_same_run
from evo.testing.fault_server import FaultServer, serving

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from resume import kill_at_random_moments  # noqa: E402  (benchmarks/resume.py: the kill loop)


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


@pytest.fixture
def sigkill_resume(tmp_path: Path) -> Callable[..., None]:
    """``sigkill_resume(script, kills, spacing)``: run ``script(run_dir)`` (Python source that
    runs a stored search in ``run_dir`` and prints "finished") to the end in ``whole``, then in
    ``killed`` SIGKILLed at ``kills`` random moments (about every ``paid // spacing`` paid
    answers), each sitting with another hash seed, then to the end: the resumed run must be the
    uninterrupted one (:func:`evo.testing.assert_same_run`) with every request paid once."""

    def check(script: Callable[[Path], str], kills: int, spacing: int) -> None:
        started: list[subprocess.Popen] = []

        def start(run: Path, sitting: int = 0) -> subprocess.Popen:
            started.append(subprocess.Popen(
                [sys.executable, "-c", script(run)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONHASHSEED": str(100 + sitting)}))
            return started[-1]

        whole, killed = tmp_path / "whole", tmp_path / "killed"
        out, err = start(whole).communicate(timeout=300)
        assert "finished" in out, err
        paid_whole = Journal(whole / "journal.sqlite").ledger()[0]["paid"]
        assert kill_at_random_moments(start, killed, random.Random(7), kills,
                                      paid_whole // spacing) == kills
        for proc in started:  # the killed sittings' pipes
            proc.stdout.close()
            proc.stderr.close()
        out, err = start(killed, 9).communicate(timeout=300)
        assert "finished" in out, err
        assert_same_run(whole, killed)
        ledger = Journal(killed / "journal.sqlite").ledger()
        assert len(ledger) == kills + 1 and all(s["paid"] for s in ledger[:kills])
        assert sum(s["paid"] for s in ledger) == paid_whole

    return check
