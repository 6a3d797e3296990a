"""Self-improving programs: agents that serve, collect their own training data, re-optimize on
triggers and deploy only what wins.

An :class:`~evo.agents.agent.Agent` is a program in production. Each call is recorded in a
trace store (:mod:`evo.agents.traces`: PII redacted before anything is stored, optional
encryption at rest, retention, JSONL export); grades arrive later through
``agent.feedback(call_id, score)``; a quality filter turns graded traces into examples. A trigger
(:mod:`evo.agents.triggers`) asks the optimization manager (:mod:`evo.agents.manager`: a
persistent job queue whose jobs are resumable runs) for a new search; each result becomes a
version (:mod:`evo.agents.versions`) that is deployed only when a paired test on held-out graded
data says it beats the deployed one. Validators (:mod:`evo.agents.validators`) become fitness
terms and feedback text during a search and, optionally, retries at inference.
"""

from evo.agents.agent import (
    Agent,
    AgentCallError,
    OptimizedFunction,
    Reply,
    optimize_together,
    optimized,
)
from evo.agents.events import (
    AgentCallback,
    CallServed,
    DegradationAlert,
    FeedbackReceived,
    JobFinished,
    JobScheduled,
    RolledBack,
    TriggerFired,
    VersionDeployed,
    VersionKept,
)
from evo.agents.manager import Job, JobCancelled, OptimizationManager, UnknownJobError
from evo.agents.redact import PIIRedactor, redact
from evo.agents.roi import ROI, roi
from evo.agents.traces import QualityFilter, Trace, TraceStore, UnknownCallError
from evo.agents.triggers import (
    AgentView,
    AnyOf,
    EveryN,
    Manual,
    PerformanceDrop,
    Periodic,
    Trigger,
    every,
    manual,
    performance,
    periodic,
)
from evo.agents.validators import (
    Check,
    JSONSchema,
    Length,
    LMJudge,
    OneOf,
    Regex,
    Validator,
    check_outputs,
    refine,
    validated,
)
from evo.agents.versions import (
    DeployDecision,
    UnknownVersionError,
    Version,
    VersionRegistry,
    paired_decision,
)

__all__ = ["ROI", "Agent", "AgentCallError", "AgentCallback", "AgentView", "AnyOf",
           "CallServed", "Check", "DegradationAlert", "DeployDecision", "EveryN",
           "FeedbackReceived", "JSONSchema", "Job", "JobCancelled", "JobFinished",
           "JobScheduled", "LMJudge", "Length", "Manual", "OneOf", "OptimizationManager",
           "OptimizedFunction", "PIIRedactor", "PerformanceDrop", "Periodic", "QualityFilter",
           "Regex", "Reply", "RolledBack", "Trace", "TraceStore", "Trigger", "TriggerFired",
           "UnknownCallError", "UnknownJobError", "UnknownVersionError", "Validator", "Version",
           "VersionDeployed", "VersionKept", "VersionRegistry", "check_outputs", "every",
           "manual", "optimize_together", "optimized", "paired_decision", "performance",
           "periodic", "redact", "refine", "roi", "validated"]
