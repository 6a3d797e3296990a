"""What a finished search is, as plain values: :class:`SearchResult` (the best program, the
baseline, every candidate, the score matrix, what it cost) and its files
(:meth:`SearchResult.save`).

:class:`evo.api.Result` adds the held-out report (:meth:`evo.api.Result.report`) on top. A
result holds no live handle: no run store, journal or LM session stays open once
:func:`evo.api.optimize` has returned; the report opens what it needs when it is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evo._io import write_json, write_text
from evo.errors import ConfigError, UnsafeRunDirError
from evo.kernels.moo import nondominated_ranks
from evo.lm.base import LM
from evo.lm.cache import ResponseCache
from evo.lm.session import LMSession, Usage
from evo.metrics import Metric
from evo.paths import protected_dir
from evo.program import Program
from evo.program.ensemble import EnsembleProgram
from evo.runs.record import RESULT_MARKER, ResultRecord, SearchRecord
from evo.runs.store import EVENTS_FILE, RUN_FILE, check_run_dir
from evo.search.engine import Candidate
from evo.search.evaluate import ScoreMatrix, cell_failures, cells_cost


def race_counts(events: list[dict[str, Any]]) -> dict[str, int] | None:
    """How the search's races ended: ``{outcome: children}`` ("validated", "dropped", "out of
    budget"), from its ``candidate_raced`` events; None when it raced none."""
    counts: dict[str, int] = {}
    for event in events:
        if event.get("event") == "candidate_raced":
            counts[event["outcome"]] = counts.get(event["outcome"], 0) + 1
    return counts or None


@dataclass
class SearchResult:
    """What a search returns: the best program, the baseline, every candidate and the matrix.

    ``lm`` and ``cache`` are the task LM and response cache as :func:`evo.api.optimize` was
    given them (a later test pass opens its session from them); ``run_dir``, ``sitting`` and
    ``spec`` name the run store the search ran in, if any (closed by then: the report reopens
    its journal to journal its test pass)."""

    best: Program | EnsembleProgram
    baseline: Program
    best_val: float
    baseline_val: float
    candidates: list[Candidate]
    matrix: ScoreMatrix
    usage: Usage
    metric_calls: int
    budget: int
    seconds: float
    stop_reason: str
    events: list[dict[str, Any]]
    instructions: list[str]
    instruction_origins: list[dict[str, Any]]  # how each archived text came to be (op, parent)
    seed: int
    lm: LM | LMSession = field(repr=False)
    metric: Metric = field(repr=False)
    cache: ResponseCache | str | Path | bool | None = field(default=True, repr=False)
    max_tokens: int = 48
    optimizer: str = ""
    # the state as JSON data (instructions, lineage, score matrix)
    record: SearchRecord | None = field(default=None, repr=False)
    # per sitting of a stored run (evo.runs.store): what each process received and paid for
    sittings: list[dict[str, Any]] = field(default_factory=list)
    best_id: int = 0  # the best candidate's row in the score matrix
    run_dir: Path | None = None  # the run store's directory, if any
    sitting: int = 0  # this process's sitting of the stored run (0: no run store)
    spec: dict[str, Any] | None = field(default=None, repr=False)  # the stored run's spec
    # calls in flight at once, as the search was told (None: the backend's default)
    max_concurrency: int | None = None
    # the final pick's score on the held-out part of validation that never took part in
    # choosing, next to its validation score and the seed's held-out score (SearchConfig.holdout;
    # keys candidate, val_score, holdout_score, seed_holdout_score, n); None without a holdout
    confirmation: dict[str, Any] | None = None

    def tradeoff(self) -> list[Candidate]:
        """The validated candidates no other beats on both validation accuracy and prompt length
        (non-dominated sort, :mod:`evo.kernels.moo`), shortest prompt first: the candidates to
        choose from when prompt tokens cost time or money."""
        validated = [c for c in self.candidates if c.accepted]
        if not validated:
            return []
        objectives = np.array([[c.val_score, c.program.prompt_chars()] for c in validated])
        ranks = nondominated_ranks(objectives, np.array([1.0, -1.0]))
        front = [c for c, r in zip(validated, ranks, strict=True) if r == 0]
        return sorted(front, key=lambda c: (c.program.prompt_chars(), c.id))

    def pareto_front(self, objective: Literal["prompt_chars", "cost"] = "prompt_chars"
                     ) -> list[Candidate]:
        """The multi-objective result: the (validation accuracy, prompt length) Pareto set
        (:meth:`tradeoff`), shortest prompt first; with ``objective="cost"`` the (validation
        accuracy, cost) set (:meth:`cost`: what a candidate's answers cost per example, $ at a
        model choice's prices, else tokens), cheapest first: with a model choice
        (:class:`evo.lm.ModelChoice`) the cheap-but-worse and the dear-but-better programs to
        choose from."""
        if objective == "prompt_chars":
            return self.tradeoff()
        if objective != "cost":
            raise ConfigError(f"pareto_front: objective must be 'prompt_chars' or 'cost', got "
                              f"{objective!r}")
        validated = [c for c in self.candidates if c.accepted]
        costs = {c.id: self.cost(c) for c in validated}
        validated = [c for c in validated if not np.isnan(costs[c.id])]
        if not validated:
            return []
        objectives = np.array([[c.val_score, costs[c.id]] for c in validated])
        ranks = nondominated_ranks(objectives, np.array([1.0, -1.0]))
        front = [c for c, r in zip(validated, ranks, strict=True) if r == 0]
        return sorted(front, key=lambda c: (costs[c.id], c.id))

    def cost(self, candidate: Candidate | int) -> float:
        """What a candidate's evaluated answers cost per example (its score-matrix cells' LM
        calls: prompt + completion tokens, or $ at the prices of the task LM's model choice);
        NaN for a candidate with no evaluated cell."""
        cand = self.candidates[candidate] if isinstance(candidate, int) else candidate
        cells = [cell for (row, _), cell in self.matrix.cells.items() if row == cand.id]
        return cells_cost(cells, self.lm, getattr(cand.program, "model", None))

    def search_summary(self) -> dict[str, Any]:
        failures = cell_failures(self.matrix.cells.values())
        return {"baseline_val": self.baseline_val, "best_val": self.best_val,
                "metric_calls": self.metric_calls, "budget": self.budget,
                "usage": self.usage.to_dict(), "seconds": self.seconds,
                "lm_share": self.usage.lm_share(self.seconds),
                "candidates": len(self.candidates),
                "accepted": sum(c.accepted for c in self.candidates),
                # cells scored 0 because the LM call, the parser or the metric failed (each is
                # listed in result.json's cell_errors); per kind in cell_failures
                "cell_errors": failures["failed"], "cell_failures": failures,
                "stop_reason": getattr(self.stop_reason, "value", self.stop_reason),
                "unspent": max(0, self.budget - self.metric_calls),
                "confirmation": self.confirmation,
                "raced": race_counts(self.events),
                "seed": self.seed, "optimizer": self.optimizer,
                "sittings": self.sittings,
                "paid_calls_all_sittings": (sum(s["paid"] for s in self.sittings)
                                            if self.sittings else self.usage.calls)}

    def to_record(self) -> ResultRecord:
        """The result as result.json holds it (:class:`~evo.runs.record.ResultRecord`)."""
        def replies(row: int) -> list[str | None]:
            cells = self.matrix.cells
            return [cells[(row, j)].prediction.text if (row, j) in cells else None
                    for j in range(len(self.matrix.examples))]

        return ResultRecord(
            summary=self.search_summary(),
            tradeoff=[{"candidate": c.id, "val_score": c.val_score,
                       "prompt_chars": c.program.prompt_chars()} for c in self.tradeoff()],
            prompt_chars={c.id: c.program.prompt_chars() for c in self.candidates
                          if c.accepted},
            record=self.record or SearchRecord([], [], [], [], []),
            # what a report shows per validation example: the text, the gold answer, and the
            # baseline's and the best candidate's replies
            val_examples=[{"id": ex.id, "inputs": ex.inputs, "outputs": ex.outputs}
                          for ex in self.matrix.examples],
            best_candidate=self.best_id,
            replies={"baseline": replies(0), "best": replies(self.best_id)})

    def save(self, run_dir: str | Path) -> Path:
        """Write best.json, baseline.json, result.json (summary, candidates, matrix) and
        events.jsonl into ``run_dir``: the run's own directory, a new or empty folder, or one an
        earlier ``save`` wrote. Anything else is refused before anything is written
        (:class:`~evo.errors.UnsafeRunDirError`): another run's directory, whose files would be
        replaced, and any folder evo did not make (:func:`evo.runs.store.check_run_dir`)."""
        run_dir = Path(run_dir)
        elsewhere = self.run_dir is None or run_dir.resolve() != self.run_dir.resolve()
        if elsewhere:
            _check_save_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.best.save(run_dir / "best.json")
        self.baseline.save(run_dir / "baseline.json")
        write_json(run_dir / "result.json", self.to_record().to_dict(), indent=1, default=str)
        if elsewhere:  # (a run store wrote its own log as the run went)
            write_text(run_dir / EVENTS_FILE,
                       "".join(json.dumps(event, default=str) + "\n" for event in self.events))
        return run_dir


SAVED_FILES = ("best.json", "baseline.json", "result.json", EVENTS_FILE, "report.json",
               "report.html")  # what SearchResult.save (and `evo run`, `evo report`) write


def _saved_by_evo(folder: Path) -> bool:
    """Whether ``folder`` holds only what an earlier :meth:`SearchResult.save` wrote there (no
    run store: that is a run's directory)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    files = list(folder.iterdir())
    names = {f.name for f in files}
    if "result.json" not in names or not names <= set(SAVED_FILES):
        return False
    if any(f.is_symlink() or not f.is_file() for f in files):
        return False
    try:
        return json.loads((folder / "result.json").read_text()).get(RESULT_MARKER) == 1
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def _check_save_dir(folder: Path) -> None:
    why = protected_dir(folder)
    if why is None and _saved_by_evo(folder):
        return
    if check_run_dir(folder) is not None:  # (also refuses a protected or foreign folder)
        raise UnsafeRunDirError(f"{folder} holds another run ({RUN_FILE}): saving there would "
                                "replace its files; save into a new folder")
