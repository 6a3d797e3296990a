"""Vectorized kernels of the inner loop, each beside a readable reference (see ``_jit``)."""

from evo.kernels._jit import NUMBA_AVAILABLE, backend, jit

__all__ = ["NUMBA_AVAILABLE", "backend", "jit"]
