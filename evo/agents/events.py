"""What an agent's life in production raises: typed events, like a search's.

An agent emits them to its ``callbacks`` (:class:`AgentCallback` hooks, one per kind, through
:func:`evo.runs.events.dispatch`) and to ``on_event`` as JSON-ready dicts; the optimization
manager writes its jobs' events to their run directories as a run does. The degradation alert is
one of them: a callback that pages someone is a class with ``on_degradation_alert``::

    class Pager(evo.agents.AgentCallback):
        def on_degradation_alert(self, event):
            page(f"{event.agent}: {event.recent_mean:.2f} vs {event.deployed_mean:.2f}")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evo.runs.events import Callback
from evo.search.events import Event

__all__ = ["AgentCallback", "CallServed", "DegradationAlert", "FeedbackReceived",
           "JobFinished", "JobScheduled", "RolledBack", "TriggerFired", "VersionDeployed",
           "VersionKept"]


@dataclass(frozen=True)
class CallServed(Event, kind="agent_call"):
    """One inference call answered (or failed) by ``version`` of ``agent``."""

    agent: str = ""
    call_id: str = ""
    version: int = 0
    latency_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class FeedbackReceived(Event, kind="agent_feedback"):
    """A grade attached to an earlier call."""

    agent: str = ""
    call_id: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class TriggerFired(Event, kind="trigger_fired"):
    """A trigger asked for a new optimization, and why."""

    agent: str = ""
    trigger: str = ""
    reason: str = ""


@dataclass(frozen=True)
class DegradationAlert(Event, kind="degradation_alert"):
    """The rolling metric of recent graded calls fell below ``threshold``, or significantly
    below what the deployed version scored when it was chosen (``p_value`` of that test)."""

    agent: str = ""
    version: int = 0
    n: int = 0
    recent_mean: float = 0.0
    deployed_mean: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class JobScheduled(Event, kind="job_scheduled"):
    agent: str = ""
    job: str = ""
    reason: str = ""


@dataclass(frozen=True)
class JobFinished(Event, kind="job_finished"):
    """A job ended: ``status`` is done, failed or cancelled."""

    agent: str = ""
    job: str = ""
    status: str = ""
    error: str | None = None


@dataclass(frozen=True)
class VersionDeployed(Event, kind="version_deployed"):
    """``version`` now serves, replacing ``previous``; ``decision`` is the paired test that let
    it (or the reason it was deployed without one: the first version, a manual deploy)."""

    agent: str = ""
    version: int = 0
    previous: int | None = None
    decision: dict[str, Any] | None = None


@dataclass(frozen=True)
class VersionKept(Event, kind="version_kept"):
    """A new ``version`` did not beat the deployed one: kept as a candidate, not deployed."""

    agent: str = ""
    version: int = 0
    deployed: int | None = None
    decision: dict[str, Any] | None = None


@dataclass(frozen=True)
class RolledBack(Event, kind="rolled_back"):
    agent: str = ""
    version: int = 0
    previous: int | None = None


class AgentCallback(Callback):
    """Receives an agent's events; override the hooks you need (:meth:`on_event` sees all)."""

    def on_agent_call(self, event: CallServed) -> None: ...
    def on_agent_feedback(self, event: FeedbackReceived) -> None: ...
    def on_trigger_fired(self, event: TriggerFired) -> None: ...
    def on_degradation_alert(self, event: DegradationAlert) -> None: ...
    def on_job_scheduled(self, event: JobScheduled) -> None: ...
    def on_job_finished(self, event: JobFinished) -> None: ...
    def on_version_deployed(self, event: VersionDeployed) -> None: ...
    def on_version_kept(self, event: VersionKept) -> None: ...
    def on_rolled_back(self, event: RolledBack) -> None: ...
