"""Runs: the run store (journal, checkpoint, kill-and-resume, :mod:`evo.runs.store`) and the
typed event stream with its sinks (progress bar, JSONL log, MLflow, candidate store,
:mod:`evo.runs.events`)."""
