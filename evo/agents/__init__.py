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
