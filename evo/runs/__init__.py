"""Runs: the runner (one search start to end: sessions, run store, preflight, event sinks, the
result; :mod:`evo.runs.runner`), the run store (journal, checkpoint, kill-and-resume,
:mod:`evo.runs.store`), the versioned run record its files hold (:mod:`evo.runs.record`), the
result as plain values (:mod:`evo.runs.result`), and the typed event stream with its sinks
(progress bar, JSONL log, MLflow, candidate store, :mod:`evo.runs.events`)."""
