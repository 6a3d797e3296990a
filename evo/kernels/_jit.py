"""The one switch between Numba and pure Python for every kernel in :mod:`evo.kernels`.

``jit`` is ``numba.njit(cache=True)`` when Numba imports, else the identity: the same kernel
source then runs as plain Python (slow, same answers). ``cache=True`` writes the compiled machine
code beside the module (or under ``NUMBA_CACHE_DIR``), so the first compile (~1 s per kernel) is
paid once per machine, not on every CLI start. ``EVO_NO_NUMBA=1`` forces the fallback (as does
Numba's own ``NUMBA_DISABLE_JIT=1``).

Every kernel keeps its un-jitted twin as ``kernel.py_func`` (Numba's attribute; set here too for
the fallback), so tests can prove both paths agree with the readable reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

NUMBA_AVAILABLE = False
if os.environ.get("EVO_NO_NUMBA", "") not in ("1", "true", "yes"):
    try:
        import numba

        NUMBA_AVAILABLE = True
    except ImportError:  # pragma: no cover - exercised by the EVO_NO_NUMBA path in tests
        pass


def jit(fn: F) -> F:
    """Compile ``fn`` with ``numba.njit(cache=True)``, or return it unchanged without Numba."""
    if NUMBA_AVAILABLE:
        return numba.njit(cache=True)(fn)  # type: ignore[return-value]
    fn.py_func = fn  # type: ignore[attr-defined]
    return fn


def backend() -> str:
    """``"numba"`` or ``"python"``: which path the kernels run on in this process."""
    return "numba" if NUMBA_AVAILABLE else "python"
