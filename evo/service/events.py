"""The service's own event kinds: an A/B experiment's start, progress and end, written to the
experiment job's event log (and so to its WebSocket) as a search's events are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evo.search.events import Event

__all__ = ["ExperimentCompleted", "ExperimentProgress", "ExperimentStarted"]


@dataclass(frozen=True)
class ExperimentStarted(Event, kind="experiment_start"):
    """Programs a and b will each answer ``n`` examples (``budget``: 2 n metric calls)."""

    budget: int = 0
    n: int = 0


@dataclass(frozen=True)
class ExperimentProgress(Event, kind="experiment_progress"):
    """Program ``program`` ("a" or "b") answered one more slice of the examples."""

    program: str = ""


@dataclass(frozen=True)
class ExperimentCompleted(Event, kind="experiment_complete"):
    """Both answered every example: b's mean (``best_val``), a's (``baseline_val``), the LM
    usage."""

    best_val: float = 0.0
    baseline_val: float = 0.0
    usage: dict[str, Any] | None = None
