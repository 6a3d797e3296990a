"""The callbacks that receive a search's typed events, and the built-in sinks.

The events themselves are defined where they are raised, in the search layer
(:mod:`evo.search.events`; re-exported here). The engine emits each as a JSON-ready dict (the
event log, ``on_event``); :func:`dispatch` types it again, once, for callbacks. A callback
subclasses :class:`Callback` and overrides the hooks it needs::

    class Print(evo.Callback):
        def on_new_best(self, event: evo.runs.events.NewBest) -> None:
            print(event.candidate, event.val_score)

    evo.optimize(program, train, val, lm=lm,
                 callbacks=[Print(), evo.runs.events.JSONLLog("ev.jsonl")])

Built-in sinks: :class:`ProgressBar`, :class:`JSONLLog`, :class:`MLflowLogger` (optional
dependency) and :class:`CandidateStore` (every evaluated instruction, searchable by
similarity with FAISS).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evo._io import write_json
from evo.embeddings.index import VectorIndex
from evo.embeddings.knn import encoder_for
from evo.errors import DamagedFileError
from evo.search.events import (
    BudgetExhaustedEvent,
    CandidateEvaluated,
    CandidateGenerated,
    Converged,
    DemoSetsProposed,
    EnsembleRejected,
    Event,
    InstructionsProposed,
    MemberSkipped,
    MemberStarted,
    NewBest,
    ProposalRejected,
    SearchCompleted,
    SearchStarted,
)


class Callback:
    """Receives a search's events. Override the hooks you need; :meth:`on_event` sees every
    event (optimizer-specific kinds too), before the kind's own hook."""

    def on_event(self, event: Event) -> None: ...
    def on_start(self, event: SearchStarted) -> None: ...
    def on_candidate_generated(self, event: CandidateGenerated) -> None: ...
    def on_candidate_evaluated(self, event: CandidateEvaluated) -> None: ...
    def on_new_best(self, event: NewBest) -> None: ...
    def on_budget_exhausted(self, event: BudgetExhaustedEvent) -> None: ...
    def on_converged(self, event: Converged) -> None: ...
    def on_complete(self, event: SearchCompleted) -> None: ...
    def on_proposal_rejected(self, event: ProposalRejected) -> None: ...
    def on_demo_sets(self, event: DemoSetsProposed) -> None: ...
    def on_instructions(self, event: InstructionsProposed) -> None: ...
    def on_member_start(self, event: MemberStarted) -> None: ...
    def on_member_skipped(self, event: MemberSkipped) -> None: ...
    def on_ensemble_rejected(self, event: EnsembleRejected) -> None: ...

    def on_error(self, error: BaseException) -> None:
        """The search raised (or was interrupted): release what the sink holds. Everything
        paid is in the run store, if the run has one."""


def dispatch(callbacks: Iterable[Callback], raw: dict[str, Any], *,
             replayed: bool = False) -> Event:
    """Type ``raw`` once and hand it to every callback (``on_event``, then the kind's hook, when
    the callback has one: a user's own event kind needs no hook on every sink)."""
    event = Event.from_dict(raw, replayed=replayed)
    hook = "on_" + event.kind
    for cb in callbacks:
        cb.on_event(event)
        if type(event) is not Event and hasattr(cb, hook):
            getattr(cb, hook)(event)
    return event


# ---- built-in sinks ---------------------------------------------------------------------------

class ProgressBar(Callback):
    """A tqdm bar over the metric-call budget, with the best validation score so far."""

    def __init__(self, desc: str = "search") -> None:
        self.desc = desc
        self._bar: Any = None

    def on_start(self, event: SearchStarted) -> None:
        self._bar = progress_bar(event.budget, self.desc)

    def on_event(self, event: Event) -> None:
        if self._bar is not None and event.metric_calls > self._bar.n:
            self._bar.update(event.metric_calls - self._bar.n)

    def on_new_best(self, event: NewBest) -> None:
        if self._bar is not None:
            self._bar.set_postfix(best_val=f"{event.val_score:.3f}")

    def on_complete(self, event: SearchCompleted) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_error(self, error: BaseException) -> None:
        self.on_complete(None)  # type: ignore[arg-type]


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr; in a log file (CI, nohup) it redraws every 10 s, not 10 times a
    second."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="call", file=sys.stderr, dynamic_ncols=True,
                mininterval=10 if not sys.stderr.isatty() else 0.1)


class JSONLLog(Callback):
    """Appends every event to ``path``, one JSON object per line, flushed as it comes (a
    process watching the file sees each event at once). Events a resumed run replays carry
    ``"replayed": true``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a")  # noqa: SIM115 (closed on completion)

    def on_event(self, event: Event) -> None:
        if self._fh.closed:
            self._fh = open(self.path, "a")  # noqa: SIM115
        self._fh.write(json.dumps(event.to_dict(), default=str) + "\n")
        self._fh.flush()

    def on_complete(self, event: SearchCompleted) -> None:
        self._fh.close()

    def on_error(self, error: BaseException) -> None:
        self._fh.close()


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


class MLflowLogger(Callback):
    """Logs a search to MLflow: the optimizer's parameters, the validation score of each
    candidate and the best so far per metric call (the step), usage at the end, and the best
    program (``best.json``) as an artifact. MLflow is optional: ``pip install mlflow``.

    ``tracking_uri`` e.g. ``"file:///tmp/mlruns"`` (a local file store), ``"sqlite:///mlflow.db"``
    or an ``http://`` server (default: MLflow's own default or ``MLFLOW_TRACKING_URI``).
    """

    def __init__(self, *, experiment: str = "evo", run_name: str | None = None,
                 tracking_uri: str | None = None, tags: dict[str, str] | None = None) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise ImportError("MLflowLogger needs MLflow: pip install mlflow") from exc
        self._mlflow = mlflow
        self.experiment, self.run_name, self.tags = experiment, run_name, tags or {}
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None

    def on_start(self, event: SearchStarted) -> None:
        mlflow = self._mlflow
        if self.tracking_uri:
            if "://" not in self.tracking_uri or self.tracking_uri.startswith("file:"):
                # MLflow >= 3.7 refuses a file store unless told it is wanted; asking for one
                # by its URI is saying so.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        params = _flat("", {"seed": event.seed, "budget": event.budget,
                            "val_size": event.val_size, "train_size": event.train_size,
                            **(event.config or {})}, {})
        # MLflow caps a parameter value at 6000 characters
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def on_candidate_evaluated(self, event: CandidateEvaluated) -> None:
        if event.val_score is not None:
            self._mlflow.log_metric("val_score", float(event.val_score),
                                    step=event.metric_calls)

    def on_new_best(self, event: NewBest) -> None:
        self._mlflow.log_metric("best_val", float(event.val_score), step=event.metric_calls)

    def on_complete(self, event: SearchCompleted) -> None:
        mlflow = self._mlflow
        usage = {k: v for k, v in (event.usage or {}).items() if isinstance(v, int | float)}
        mlflow.log_metrics({"final_best_val": event.best_val,
                            "baseline_val": event.baseline_val,
                            "metric_calls": float(event.metric_calls),
                            **{f"usage.{k}": float(v) for k, v in usage.items()}})
        if event.best_program is not None:
            mlflow.log_dict(event.best_program, "best.json")
        mlflow.end_run()

    def on_error(self, error: BaseException) -> None:
        if self.run_id is not None and self._mlflow.active_run() is not None:
            self._mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
            self._mlflow.end_run(status="KILLED" if isinstance(error, KeyboardInterrupt)
                                 else "FAILED")


@dataclass(frozen=True)
class Match:
    """A :meth:`CandidateStore.search` hit: an instruction, the candidates that used it, and its
    best score (on the full validation set when one was validated, else on a minibatch)."""

    instruction: str
    score: float
    scored_on: str  # "validation" or "minibatch"
    candidates: tuple[int, ...]
    similarity: float


class CandidateStore(Callback):
    """Every evaluated instruction (on a minibatch or the whole validation set), embedded once
    and indexed with FAISS, searchable by similarity: which instructions near this one were
    tried, and how did they score?

    >>> # store = CandidateStore(); evo.optimize(..., callbacks=[store])
    >>> # store.search("Answer with the category of the question", k=3)
    """

    def __init__(self, encoder: str = "minilm") -> None:
        self.encoder_name = encoder
        self._encoder = encoder_for(encoder)
        self._index: Any = None
        self._texts: dict[int, str] = {}  # candidate -> its instruction
        self._row: dict[str, int] = {}  # instruction -> its entry
        # per instruction: [text, best score, scored_on, candidates]
        self.entries: list[list[Any]] = []

    def on_candidate_generated(self, event: CandidateGenerated) -> None:
        if event.instruction is not None:
            self._texts[event.candidate] = event.instruction

    def on_candidate_evaluated(self, event: CandidateEvaluated) -> None:
        text = self._texts.get(event.candidate)
        if text is None:
            return
        if event.val_score is not None:
            self.add(text, float(event.val_score), "validation", event.candidate)
        elif event.minibatch_score is not None:
            self.add(text, float(event.minibatch_score), "minibatch", event.candidate)

    def add(self, instruction: str, score: float, scored_on: str = "validation",
            candidate: int = -1) -> None:
        """Record a score of ``instruction``; a validation score outranks minibatch scores."""
        row = self._row.get(instruction)
        if row is None:
            vec = np.asarray(self._encoder.encode([instruction]), dtype=np.float32)
            if self._index is None:
                self._index = VectorIndex(vec.shape[1])
            row = self._row[instruction] = len(self.entries)
            self._index.add(vec, ids=[row])
            self.entries.append([instruction, score, scored_on, []])
        entry = self.entries[row]
        rank = {"minibatch": 0, "validation": 1}
        if (rank[scored_on], score) > (rank[entry[2]], entry[1]):
            entry[1], entry[2] = score, scored_on
        if candidate >= 0 and candidate not in entry[3]:
            entry[3].append(candidate)

    def __len__(self) -> int:
        return len(self.entries)

    def search(self, text: str, k: int = 5) -> list[Match]:
        """The ``k`` evaluated instructions most similar to ``text``, most similar first."""
        if not self.entries:
            return []
        q = np.asarray(self._encoder.encode([text]), dtype=np.float32)
        sims, ids = self._index.search(q, min(k, len(self.entries)))
        return [Match(e[0], e[1], e[2], tuple(e[3]), float(s))
                for s, i in zip(sims[0], ids[0], strict=True) if i >= 0
                for e in [self.entries[int(i)]]]

    def save(self, path: str | Path) -> Path:
        """Write the entries (JSON); :meth:`load` re-embeds them (embeddings are cached)."""
        return write_json(path, {"encoder": self.encoder_name, "entries": self.entries})

    @classmethod
    def load(cls, path: str | Path) -> CandidateStore:
        data = json.loads(Path(path).read_text())
        store = cls(data["encoder"])
        for text, score, scored_on, candidates in data["entries"]:
            for c in candidates or [-1]:
                store.add(text, float(score), scored_on, int(c))
        return store

    @classmethod
    def from_run(cls, run_dir: str | Path, encoder: str = "minilm") -> CandidateStore:
        """Every evaluated instruction of a stored run, from its score matrix (``result.json``,
        or the checkpoint of an unfinished run)."""
        run_dir = Path(run_dir)
        src = run_dir / "result.json"
        if not src.exists():
            src = run_dir / "checkpoint.json"
        try:
            record = json.loads(src.read_text())
            texts = [str(i["text"]) for i in record["instructions"]]
            entries = []
            for c, row in zip(record["candidates"], record["scores"], strict=False):
                seen = [float(v) for v in row if v is not None]
                if not c["genome"] or not seen:
                    continue
                text = texts[int(c["genome"][0])]
                if c["val_score"] is not None:
                    entries.append((text, float(c["val_score"]), "validation", int(c["id"])))
                else:
                    entries.append((text, float(np.mean(seen)), "minibatch", int(c["id"])))
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            # (json's decode error is a ValueError) a damaged or hand-edited record
            raise DamagedFileError(src, f"not a readable search record ({type(exc).__name__}: "
                                        f"{exc})") from None
        store = cls(encoder)
        for entry in entries:
            store.add(*entry)
        return store


__all__: Sequence[str] = (
    "Event", "SearchStarted", "CandidateGenerated", "CandidateEvaluated", "NewBest",
    "ProposalRejected", "BudgetExhaustedEvent", "Converged", "SearchCompleted",
    "DemoSetsProposed", "InstructionsProposed", "MemberStarted", "MemberSkipped",
    "EnsembleRejected", "Callback", "dispatch", "ProgressBar", "JSONLLog", "MLflowLogger",
    "CandidateStore", "Match")
