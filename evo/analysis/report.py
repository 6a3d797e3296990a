"""``evo report RUN``: one self-contained HTML page about a stored run.

What it shows, read from the run store (:mod:`evo.runs.store`) alone:

* the outcome: validation baseline -> best, and the held-out test figures with their paired
  bootstrap interval and permutation p-value when ``evo run`` wrote ``report.json``;
* validation accuracy against metric calls and against LM calls (every validated candidate and
  the best so far);
* the Pareto front of validation accuracy against prompt length, and GEPA's instance-level front
  (the candidates that are best on at least one validation example);
* the lineage of the best candidate, from the seed, with the text diff of each mutation, and the
  whole lineage tree as a picture;
* per-example wins and losses of the best candidate against the baseline;
* usage and cost: LM calls, cache hits and journal replays per sitting, tokens, LM time, and a
  price when one is given;
* for a search that raced its candidates (the ``candidate_raced`` events of
  :func:`evo.optimizers.steps.race_many`): how far each child got against the incumbent, the
  signal it was compared on (0/1 scores, or the model's probability of the gold answer), the
  counts by outcome; the metric calls left unspent and why the search stopped; and the final
  pick's confirmation on the held-out part of validation (the ``confirmed`` event).

A run stored before racing (no such events or summary keys) renders as it always did.

Plots are matplotlib PNGs embedded in the page (no file beside it, no network); without
matplotlib (an optional dependency, in the ``bench`` extra) the page says so where they would be.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from evo._io import write_text
from evo.analysis.compare import format_p
from evo.data import DataError
from evo.errors import DamagedFileError
from evo.optimizers.steps import rungs
from evo.program import validate_file_data
from evo.runs.store import CHECKPOINT_FILE, EVENTS_FILE, RUN_FILE
from evo.search.engine import StopReason
from evo.search.evaluate import MEANINGLESS_SHARE, failures_from_errors, format_failures
from evo.search.genome import DEMOS, INSTRUCTION, KNN, N_DEMOS, settings_of

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2.2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
td,th{border:1px solid #ddd;padding:.3rem .55rem;vertical-align:top;text-align:left}
th{background:#f5f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}
.step{border-left:3px solid #4a7bd0;padding:.2rem .8rem;margin:.7rem 0;background:#fafbff}
.step .head{font-weight:600} .text{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;
font-size:.85rem} ins{background:#d4f7d4;text-decoration:none} del{background:#f9d0d0}
.win{color:#137333;font-weight:600} .loss{color:#b3261e;font-weight:600}
.note{color:#666;font-size:.88rem} .warn{color:#b3261e;font-weight:600}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


_NO_PLOTS = ("<p class='note'>(plots need matplotlib, which is not installed: "
             "<code>pip install 'evo-prompt[bench]'</code>)</p>")


def _lineage_plot(cands: list[dict], chain: list[int], y_of: dict[int, float | None],
                  plt: Any) -> str:
    """Every candidate at its score, an edge from each parent, the best's ancestry in red."""
    if plt is None:
        return _NO_PLOTS
    fig, ax = plt.subplots(figsize=(11, 3.8))
    for c in cands:
        for p in c["parents"]:
            if y_of.get(p) is not None and y_of[c["id"]] is not None:
                ax.plot([p, c["id"]], [y_of[p], y_of[c["id"]]], color="#c9cfd9", lw=.8, zorder=1)
    ok = [c for c in cands if y_of[c["id"]] is not None]
    ax.scatter([c["id"] for c in ok], [y_of[c["id"]] for c in ok], s=16, zorder=2,
               c=["#4a7bd0" if c["val_score"] is not None else "#c9cfd9" for c in ok])
    ax.plot(chain, [y_of[i] for i in chain], "o-", color="#d0534a", zorder=3,
            label="ancestry of the best")
    ax.set_xlabel("candidate (generation order)")
    ax.set_ylabel("accuracy (validation, or its minibatch)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


class _Html(str):
    """Markup evo built itself (escaped parts only): rendered as is. Anything else is text
    and is escaped, whatever file it was read from."""


def _e(x: Any) -> str:
    return x if isinstance(x, _Html) else html.escape(str(x), quote=True)


def _table(head: list[str], rows: list[list[Any]], num: set[int] = frozenset()) -> str:
    out = ["<table>" + ("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
                        if any(head) else "")]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{_e(v)}</td>' if i in num else f"<td>{_e(v)}</td>"
            for i, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def word_diff(old: str, new: str) -> str:
    """``new`` against ``old`` as HTML: deleted words in <del>, inserted words in <ins>."""
    a, b = old.split(" "), new.split(" ")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(_e(" ".join(a[i1:i2])))
        if op in ("delete", "replace"):
            out.append(f"<del>{_e(' '.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{_e(' '.join(b[j1:j2]))}</ins>")
    return _Html(" ".join(x for x in out if x))


# ---- reading a run directory: every file is untrusted ----------------------------------------
# A run directory can be hand-edited, damaged or cut short; its files are validated into these
# shapes (numbers given as numeric strings are read as numbers), and anything else is one
# DamagedFileError naming the file and the field. The event log, an append-only stream that a
# kill can cut, is read line by line: an unreadable line is skipped and the page says so.

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Candidate(_Loose):
    id: int
    genome: list[int] = []
    parents: list[int] = []
    op: str = ""
    iteration: int = 0
    val_score: float | None = None
    note: str = ""


class _Instruction(_Loose):
    text: str


class _ValExample(_Loose):
    id: str = ""
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}


class _CellError(_Loose):
    candidate: int | None = None
    example: str = ""
    error: str


class _Usage(_Loose):
    calls: int = 0
    cache_hits: int = 0
    replayed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0
    by_purpose: dict[str, int] = {}


class _Sitting(_Loose):
    sitting: int | str = ""
    answers: int = 0
    paid: int = 0
    failed: int = 0
    shared_cache: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lm_seconds: float = 0.0


class _Confirmation(_Loose):
    candidate: int | None = None
    val_score: float | None = None
    holdout_score: float
    seed_holdout_score: float | None = None
    n: int = 0


class _Raced(_Loose):
    candidate: int
    incumbent: int | None = None
    rungs: list[tuple[float, float, float]] = []  # [examples, child mean, incumbent mean]
    dense: bool = False
    outcome: str = ""


class _OperatorStats(_Loose):
    stats: dict[str, tuple[int, int, int]] = {}  # operator -> [raced, past rung 1, validated]
    note: str = ""


class _Summary(_Loose):
    stop_reason: str = ""
    metric_calls: int | None = None
    unspent: int | None = None  # absent from runs stored before racing
    confirmation: _Confirmation | None = None
    raced: dict[str, int] | None = None
    optimizer: str = ""
    budget: int | None = None
    seed: int | str | None = None
    seconds: float | None = None
    lm_share: float = 0.0
    usage: _Usage | None = None
    sittings: list[_Sitting] = []


class _Best(_Loose):
    candidate: int | None = None


class _Tradeoff(_Loose):
    candidate: int


class _Record(_Loose):
    candidates: list[_Candidate]
    instructions: list[_Instruction]
    scores: list[list[float | None]]
    val_example_ids: list[str]
    cell_errors: list[_CellError] = []
    summary: _Summary = _Summary()
    best_candidate: int | None = None
    best: _Best | None = None
    stop_reason: str = ""
    prompt_chars: dict[int, float] = {}
    tradeoff: list[_Tradeoff] = []
    val_examples: list[_ValExample] = []
    replies: dict[str, list[str | None]] = {}
    usage: _Usage | None = None
    sittings: list[_Sitting] = []


class _Budget(_Loose):
    metric_calls: int | None = None


class _OptimizerSpec(_Loose):
    optimizer: str | None = None
    budget: _Budget = _Budget()


class _Spec(_Loose):
    model: str = "?"
    seed: int | str | None = None
    optimizer: _OptimizerSpec = _OptimizerSpec()


class _Cli(_Loose):
    task: str | None = None
    data: str | None = None


class _RunInfo(_Loose):
    spec: _Spec = _Spec()
    cli: _Cli | None = None


class _Failures(_Loose):
    cells: int = 0
    failed: int = 0
    failed_share: float = 0.0
    by_kind: dict[str, int] = {}
    unparseable: int = 0


class _Test(_Loose):
    n: int
    baseline: float
    optimized: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    baseline_scores: list[float] = []
    optimized_scores: list[float] = []
    test_usage: _Usage = _Usage()
    test_seconds: float = 0.0
    failures: dict[str, _Failures] = {}
    meaningless: bool = False


class _Evaluated(_Loose):
    val_score: float
    metric_calls: float = 0
    lm_calls: float | None = None


# the events the page reads fields of, validated into these shapes (the rest are only counted)
_EVENT_SHAPES: dict[str, type[_Loose]] = {"candidate_evaluated": _Evaluated,
                                          "candidate_raced": _Raced, "confirmed": _Confirmation,
                                          "operator_stats": _OperatorStats}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"not valid JSON ({exc}); truncated or edited?") from None
    except RecursionError:
        raise DamagedFileError(path, "not valid JSON (nested too deeply)") from None


def _validated(model: type[_Loose], data: Any, path: Path) -> dict[str, Any]:
    """``data`` in ``model``'s shape as plain dicts, or one DamagedFileError naming the file and
    the first fields that do not fit."""
    return validate_file_data(model, data, path, what="an evo run file").model_dump()


def _check_record(record: dict[str, Any], src: Path) -> None:
    """The references inside a search record point at things it holds."""
    n_inst, scores = len(record["instructions"]), record["scores"]
    width = {len(row) for row in scores}
    if len(width) > 1:
        raise DamagedFileError(src, f"scores: rows of different lengths {sorted(width)}")
    if scores and width != {len(record["val_example_ids"])}:
        raise DamagedFileError(src, f"scores: {width.pop()} columns for "
                                    f"{len(record['val_example_ids'])} val_example_ids")
    ids = [c["id"] for c in record["candidates"]]
    if len(set(ids)) != len(ids):
        raise DamagedFileError(src, "candidates: a candidate id is repeated")
    if 0 not in ids:
        raise DamagedFileError(src, "candidates: no seed candidate (id 0)")
    for k, c in enumerate(record["candidates"]):
        if c["id"] < 0 or (scores and c["id"] >= len(scores)):
            raise DamagedFileError(src, f"candidates[{k}].id: {c['id']} has no row in scores "
                                        f"({len(scores)} rows)")
        genome = c["genome"]
        if genome and (len(genome) < DEMOS or not 0 <= genome[INSTRUCTION] < n_inst):
            raise DamagedFileError(src, f"candidates[{k}].genome: {genome[:4]} does not name one "
                                        f"of the {n_inst} instructions")


def _load(run_dir: Path) -> tuple[dict, dict, list[dict], dict | None, bool, list[str]]:
    if not (run_dir / RUN_FILE).exists() and not (run_dir / "result.json").exists():
        raise DataError(f"{run_dir}: not a run directory (no {RUN_FILE} or result.json)")
    info = {"spec": {}, "cli": None}
    if (run_dir / RUN_FILE).exists():
        raw = _read_json(run_dir / RUN_FILE)
        if not isinstance(raw, dict):
            raise DamagedFileError(run_dir / RUN_FILE, "not a JSON object")
        info = _validated(_RunInfo, raw, run_dir / RUN_FILE)
    finished = (run_dir / "result.json").exists()
    src = run_dir / ("result.json" if finished else CHECKPOINT_FILE)
    if not src.exists():
        raise DataError(f"{run_dir}: the run has not evaluated anything yet (no {src.name})")
    raw = _read_json(src)
    missing = [k for k in ("candidates", "instructions", "scores", "val_example_ids")
               if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise DamagedFileError(src, f"not an evo search record (no {', '.join(missing)})",
                               hint="`evo report` reads the directory of `evo run` or "
                                    "evo.optimize(run_dir=)")
    record = _validated(_Record, raw, src)
    _check_record(record, src)
    notes: list[str] = []
    events, bad = [], 0
    if (run_dir / EVENTS_FILE).exists():
        text = (run_dir / EVENTS_FILE).read_bytes().decode("utf-8", errors="replace")
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                event = None
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                bad += 1
                continue
            shape = _EVENT_SHAPES.get(event["event"])
            if shape is not None and (event["event"] != "candidate_evaluated"
                                      or event.get("val_score") is not None):
                try:
                    event = {"event": event["event"], **shape.model_validate(event).model_dump()}
                except ValidationError:
                    bad += 1
                    continue
            events.append(event)
    if bad:
        notes.append(f"{bad} line(s) of {run_dir / EVENTS_FILE} could not be read (damaged or "
                     "of the wrong shape): left out of the plots.")
    test = None
    if (run_dir / "report.json").exists():
        test = _validated(_Test, _read_json(run_dir / "report.json"), run_dir / "report.json")
    return info, record, events, test, finished, notes


def _failures_section(record: dict[str, Any], scores: np.ndarray, test: dict | None
                      ) -> list[str]:
    """Failed cells (LM, parser or metric errors, scored 0) per kind: the search's validation
    cells and each program's test cells, a warning when most failed, and a few of the errors."""
    search = failures_from_errors(int(np.isfinite(scores).sum()) if scores.size else 0,
                                  [e["error"] for e in record["cell_errors"]])
    rows = [["search (validation cells)", format_failures(search)]]
    shares = [search["failed_share"]]
    for who, label in (("baseline", "test: baseline"), ("optimized", "test: optimized")):
        if test and who in test["failures"]:
            rows.append([label, format_failures(test["failures"][who])])
            shares.append(test["failures"][who]["failed_share"])
    out = ["<h2>Failed cells</h2>", _table(["", "failed cells (LM, parser or metric errors)"],
                                           rows)]
    if max(shares) > MEANINGLESS_SHARE or (test and test["meaningless"]):
        out.append(f"<p class='warn'><b>Most cells failed ({max(shares):.0%}): these scores say "
                   "nothing about the prompts.</b></p>")
    errors = record["cell_errors"]
    if errors:
        shown = errors[:10]
        out.append(_table(["candidate", "example", "error"],
                          [[f"#{e['candidate']}", e["example"], e["error"][:300]]
                           for e in shown]))
        if len(errors) > len(shown):
            out.append(f"<p class='note'>… and {len(errors) - len(shown)} more in "
                       "cell_errors.</p>")
    return out


def _confirmation_row(conf: dict[str, Any], best: int) -> list[Any]:
    """The outcome table's row of the held-out confirmation: the seed's and the final pick's
    accuracy on validation examples that never took part in choosing, next to the pick's
    validation score (the gap is how much choosing on validation flattered it)."""
    who = "best" if conf.get("candidate") in (None, best) else f"#{conf['candidate']}"
    seed = conf.get("seed_holdout_score")
    gap = ("" if conf.get("val_score") is None else
           f"; its validation accuracy {conf['val_score']:.3f} (held-out minus validation "
           f"{conf['holdout_score'] - conf['val_score']:+.3f})")
    return [f"held-out part of validation, baseline → {who}",
            f"{_f3(seed)} → {conf['holdout_score']:.3f}",
            f"{conf.get('n', 0)} examples never used to choose, scored once at the end{gap}"]


def _stop_words(reason: str, unspent: int, first_rung: int | None) -> str:
    """Why the search stopped, in words: a budget stop says what was left."""
    if reason == StopReason.BUDGET:
        if first_rung is not None and unspent < first_rung:
            return (f"budget exhausted: less than one rung left ({unspent} metric calls, a "
                    f"race's first rung costs {first_rung})")
        return f"budget exhausted: too little left for another candidate ({unspent} unspent)"
    if reason == StopReason.CONVERGED:
        return "converged: nothing new left to propose"
    return reason or "?"


def _budget_row(summary: dict[str, Any], budget: int | None, raced: list[dict]) -> list[Any]:
    """The outcome table's budget line: metric calls spent and unspent, and the stop reason."""
    spent = summary.get("metric_calls")
    first = min((e["rungs"][0][0] for e in raced if e["rungs"]), default=None)
    return ["metric calls spent / budget",
            f"{'?' if spent is None else spent} / {'?' if budget is None else budget} "
            f"({summary['unspent']} unspent)",
            _stop_words(summary["stop_reason"], summary["unspent"],
                        None if first is None else int(first))]


def _race_total(raced: list[dict], record: dict[str, Any], conf: dict | None) -> list[int]:
    """The rung sizes of the search's races (:func:`~evo.optimizers.steps.rungs`): from the
    first rung any race paid up to the validation examples that choose, which is a validated
    race's last rung, else the validation set less the held-out part."""
    start = min((int(e["rungs"][0][0]) for e in raced if e["rungs"]), default=0)
    full = [int(e["rungs"][-1][0]) for e in raced if e["outcome"] == "validated" and e["rungs"]]
    n = max(full) if full else len(record["val_example_ids"]) - (conf or {}).get("n", 0)
    return rungs(n, start) if start and n >= start else ([n] if n else [])


_OUTCOME_COLOUR = {"validated": "#137333", "dropped": "#b3261e", "out of budget": "#b06d00"}


def _bar(reached: int, total: int, outcome: str) -> _Html:
    """How far a race got, as a bar (inline styles: the page's stylesheet stays as it was)."""
    share = min(1.0, reached / total) if total else 0.0
    colour = _OUTCOME_COLOUR.get(outcome, "#666")
    return _Html("<span style='display:inline-block;width:7rem;height:.7rem;background:#eee;"
                 "vertical-align:middle;margin-right:.4rem'><span style='display:block;"
                 f"height:100%;width:{share:.0%};background:{colour}'></span></span>"
                 f"{reached} / {total}")


def _operators_section(event: dict) -> list[str]:
    """How each variation operator's children fared (the search's ``operator_stats``): the
    operators are drawn in proportion to this, so the budget follows what worked."""
    rows = [[_e(op), raced, passed, validated]
            for op, (raced, passed, validated) in sorted(event["stats"].items(),
                                                         key=lambda kv: (-kv[1][0], kv[0]))]
    out = ["<h3>Operators</h3>",
           _table(["operator", "children raced", "past the first rung", "validated"], rows,
                  num={1, 2, 3})]
    if event.get("note"):
        out.append(f"<p class='note'>{_e(event['note'])}.</p>")
    return out


def _racing_section(raced: list[dict], schedule: list[int], stored: dict | None) -> list[str]:
    """How each raced child fared against the incumbent: rungs reached out of the schedule,
    the means at its last rung, the signal compared, the outcome; counts by outcome; and, where
    the races were dense, the probability means."""
    counts: dict[str, int] = {}
    order = list(_OUTCOME_COLOUR)  # the known outcomes first, in this order
    for e in sorted(raced, key=lambda e: order.index(e["outcome"]) if e["outcome"] in order
                    else len(order)):
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    total = len(schedule)
    examples = [int(e["rungs"][-1][0]) if e["rungs"] else 0 for e in raced]
    out = ["<h2>Racing</h2>",
           f"<p>{len(raced)} candidate{'s' if len(raced) != 1 else ''} raced against the "
           "incumbent (the best validated candidate) on growing prefixes of the validation set "
           f"(rungs of {', '.join(map(str, schedule)) or '?'} examples), each dropped as soon "
           "as it fell behind (or, past the first rung, beat the incumbent on no example): "
           + ", ".join(f"<b>{n}</b> {_e(outcome)}" for outcome, n in counts.items())
           + f". A candidate was scored on {np.mean(examples):.1f} examples on average before "
           f"its race ended ({schedule[-1] if schedule else '?'} for full validation).</p>"]
    if stored and stored != counts:
        out.append(f"<p class='warn'>The run's summary counts {_e(stored)}, its event log "
                   f"{_e(counts)}: some events are missing (a damaged or cut log?).</p>")
    dense = [e for e in raced if e["dense"] and e["rungs"]]
    if dense:
        child = np.mean([e["rungs"][-1][1] for e in dense])
        inc = np.mean([e["rungs"][-1][2] for e in dense])
        out.append(f"<p><b>Dense signal</b>: {len(dense)} of {len(raced)} races compared the "
                   "metric's score plus the model's probability of the gold answer (label "
                   "scoring) rather than 0/1 scores alone; at their last rung the children "
                   f"averaged {child:.3f} and the incumbent {inc:.3f}. In those rows the means "
                   "are score + P(gold), between 0 and 2.</p>")
    shown = raced[:80]
    out.append(_table(
        ["candidate", "incumbent", "rungs reached", "examples", "child mean", "incumbent mean",
         "signal", "outcome"],
        [[f"#{e['candidate']}", "–" if e["incumbent"] is None else f"#{e['incumbent']}",
          _bar(len(e["rungs"]), total, e["outcome"]), n,
          f"{e['rungs'][-1][1]:.3f}" if e["rungs"] else "–",
          f"{e['rungs'][-1][2]:.3f}" if e["rungs"] else "–",
          "score + P(gold) (dense)" if e["dense"] else "0/1 score", e["outcome"]]
         for e, n in zip(shown, examples, strict=False)], num={3, 4, 5}))
    if len(raced) > len(shown):
        out.append(f"<p class='note'>… and {len(raced) - len(shown)} more races in "
                   f"{_e(EVENTS_FILE)}.</p>")
    return out


def _f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _reply(replies: dict[str, list[str | None]], who: str, j: int) -> str:
    got = replies.get(who) or []
    return (got[j] if j < len(got) else None) or ""


def _lineage(candidates: list[dict], best: int) -> list[int]:
    """The best candidate's first-parent chain, seed first."""
    by_id = {c["id"]: c for c in candidates}
    chain, cur = [], best
    while cur in by_id and cur not in chain:
        chain.append(cur)
        parents = by_id[cur]["parents"]
        if not parents:
            break
        cur = parents[0]
    return chain[::-1]


def _demos_text(genome: list[int]) -> str:
    if not genome:
        return "a voting ensemble"
    n, knn = genome[N_DEMOS], genome[KNN]
    demos = genome[DEMOS:DEMOS + n]
    return (f"{n} demo{'s' if n != 1 else ''} {demos}" if n else "no fixed demos") + (
        f" + {knn} nearest per input" if knn else "")


def _settings_text(genome: list[int]) -> str:
    """The settings genes of ``genome`` in words ("" for a genome without them, as every genome
    was before settings genes existed)."""
    settings = settings_of(genome) if genome else None
    if settings is None:
        return ""
    return ", ".join(["answers ranked by label scoring" if settings.answer_mode == "rank"
                      else "answers generated",
                      *(["calibrated"] if settings.calibrate else []),
                      *(["reasoning step"] if settings.reasoning else []),
                      # (the model gene: which member of the run's ModelChoice, by position)
                      *([f"model #{settings.model}"] if getattr(settings, "model", None)
                        is not None else [])])


def _genome_text(genome: list[int]) -> str:
    """A candidate's demos, nearest-neighbour demos and settings genes, in words."""
    settings = _settings_text(genome)
    return _demos_text(genome) + (f"; {settings}" if settings else "")


def build(run_dir: str | Path, *, price: tuple[float, float] | None = None) -> str:
    """The report of ``run_dir`` as an HTML page. ``price``: dollars per million prompt and
    completion tokens, for the cost line."""
    try:  # deferred: matplotlib is optional (the bench extra); without it the page has no plots
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None

    run_dir = Path(run_dir)
    info, record, events, test, finished, notes = _load(run_dir)
    spec, cli = info["spec"], info["cli"] or {}
    cands = record["candidates"]
    texts = [i["text"] for i in record["instructions"]]
    scores = np.array([[np.nan if v is None else v for v in row] for row in record["scores"]],
                      dtype=float) if record["scores"] else np.zeros((0, 0))
    summary = record.get("summary", {})
    validated = [c for c in cands if c["val_score"] is not None]
    if not validated:
        raise DataError(f"{run_dir}: no candidate has been validated yet")
    best = record.get("best_candidate")
    if best is None:  # a checkpoint (the best so far), or a result written before evo 0.1's store
        best = (record.get("best") or {}).get("candidate")
    if best is None:
        best = max(validated, key=lambda c: (c["val_score"], -c["id"]))["id"]
    by_id = {c["id"]: c for c in cands}
    src_name = "result.json" if finished else CHECKPOINT_FILE
    if best not in by_id:
        raise DamagedFileError(run_dir / src_name,
                               f"the best candidate #{best} is not among its candidates")
    seed_val = _f3(by_id[0]["val_score"])
    best_val = _f3(by_id[best]["val_score"])
    task = cli.get("task") or cli.get("data") or "your data"
    optimizer = spec["optimizer"]["optimizer"] or summary["optimizer"] or "?"
    budget = spec["optimizer"]["budget"]["metric_calls"]
    budget = summary["budget"] if budget is None else budget
    seed = spec["seed"] if spec["seed"] is not None else summary["seed"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>evo run: {_e(task)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>evo run: {_e(task)}</h1>",
             f"<p class='sub'>{_e(run_dir)} · model {_e(spec.get('model', '?'))} · optimizer "
             f"{_e(optimizer)} · seed {_e('?' if seed is None else seed)} · budget "
             f"{_e('?' if budget is None else budget)} metric calls" + (
                 "" if finished else " · <b>unfinished</b> (read from the checkpoint)")
             + "</p>"]
    parts += [f"<p class='warn'>{_e(note)}</p>" for note in notes]

    # ---- outcome --------------------------------------------------------------------------
    rows = [["validation accuracy, baseline → best", f"{seed_val} → {best_val}",
             f"{len(record['val_example_ids'])} examples"]]
    raced = [e for e in events if e["event"] == "candidate_raced"]
    confirmation = summary.get("confirmation") or next(
        (e for e in reversed(events) if e["event"] == "confirmed"), None)
    if confirmation:  # the validation score is over the examples that chose, not all
        n_val = len(record["val_example_ids"])
        rows[0][2] = (f"{n_val - confirmation.get('n', 0)} of the {n_val} examples (the rest "
                      "held out)")
        rows.append(_confirmation_row(confirmation, best))
    if test:
        p = format_p(test["p_value"])
        rows.append(["held-out test accuracy, baseline → best",
                     f"{test['baseline']:.3f} → {test['optimized']:.3f}",
                     f"{test['n']} examples; difference {test['delta']:+.3f} "
                     f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] (95% paired bootstrap), "
                     f"paired permutation test {p}"])
    rows.append(["candidates generated / validated", f"{len(cands)} / {len(validated)}",
                 summary["stop_reason"] or record["stop_reason"]])
    if summary.get("unspent") is not None:
        rows.append(_budget_row(summary, budget, raced))
    parts += ["<h2>Outcome</h2>", _table(["", "", ""], rows)]
    parts += _failures_section(record, scores, test)
    genome = by_id[best]["genome"]
    parts.append(f"<p>Best candidate #{best}: {_e(_genome_text(genome))}.</p>"
                 f"<div class='step text'>{_e(texts[genome[INSTRUCTION]]) if genome else ''}</div>")

    # ---- score vs calls -------------------------------------------------------------------
    evald = [e for e in events if e["event"] == "candidate_evaluated"
             and e.get("val_score") is not None]
    if evald and plt is None:
        parts += ["<h2>Validation accuracy vs calls</h2>", _NO_PLOTS]
    elif evald:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
        for ax, key, label in ((axes[0], "metric_calls", "metric calls"),
                               (axes[1], "lm_calls", "LM calls (cache hits and replays included)")):
            xs = [e["metric_calls"] if e.get(key) is None else e[key] for e in evald]
            ys = [e["val_score"] for e in evald]
            ax.scatter(xs, ys, s=18, color="#4a7bd0", alpha=.7, label="validated candidate")
            ax.step(xs, np.maximum.accumulate(ys), where="post", color="#d0534a",
                    label="best so far")
            ax.set_xlabel(label)
            ax.grid(alpha=.3)
        axes[0].set_ylabel("validation accuracy")
        axes[0].legend(loc="lower right", fontsize=8)
        parts += ["<h2>Validation accuracy vs calls</h2>", _png(fig)]

    # ---- racing ---------------------------------------------------------------------------
    if raced:
        parts += _racing_section(raced, _race_total(raced, record, confirmation),
                                 summary.get("raced"))
    operators = [e for e in events if e["event"] == "operator_stats"]
    if operators and operators[-1]["stats"]:
        parts += _operators_section(operators[-1])

    # ---- Pareto fronts --------------------------------------------------------------------
    chars = {int(k): v for k, v in (record.get("prompt_chars") or {}).items()}
    front_ids = {t["candidate"] for t in record.get("tradeoff", [])}
    parts.append("<h2>Pareto fronts</h2>")
    if chars and plt is None:
        parts.append(_NO_PLOTS)
    elif chars:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        pts = [(chars[c["id"]], c["val_score"], c["id"]) for c in validated if c["id"] in chars]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, color="#9aa7bd",
                   label="validated candidate")
        fr = sorted((p for p in pts if p[2] in front_ids), key=lambda p: p[0])
        ax.plot([p[0] for p in fr], [p[1] for p in fr], "o-", color="#d0534a",
                label="front: no other is both shorter and better")
        for x, y, i in fr:
            ax.annotate(f"#{i}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("prompt length before the input (characters)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=.3)
        ax.legend(fontsize=8, loc="lower right")
        parts.append(_png(fig))
    val_rows = [c["id"] for c in validated if c["id"] < len(scores)]
    if val_rows and scores.size:
        sub = scores[val_rows]
        top = np.nanmax(sub, axis=0)
        wins = {cid: int(np.sum((sub[i] == top) & (top > 0))) for i, cid in enumerate(val_rows)}
        inst = sorted(((n, cid) for cid, n in wins.items() if n), reverse=True)
        parts.append("<p>Instance-level front (GEPA's parent pool): the validated candidates "
                     "that score best on at least one validation example.</p>")
        parts.append(_table(["candidate", "operator", "val accuracy",
                             "examples where it is best (ties included)"],
                            [[f"#{cid}", by_id[cid]["op"], f"{by_id[cid]['val_score']:.3f}",
                              n] for n, cid in inst[:15]], num={3}))

    # ---- lineage --------------------------------------------------------------------------
    chain = _lineage(cands, best)
    y_of = {}
    for c in cands:
        y = c["val_score"]
        if y is None and c["id"] < len(scores) and scores.size:
            row = scores[c["id"]]
            y = float(np.nanmean(row)) if np.isfinite(row).any() else None
        y_of[c["id"]] = y
    parts += ["<h2>Lineage</h2>", "<p class='note'>Every candidate (blue: validated in full, "
              "grey: stopped at its minibatch), an edge from each parent; red: the chain from "
              "the seed to the best.</p>", _lineage_plot(cands, chain, y_of, plt),
              "<h3>From the seed to the best</h3>"]
    for prev, cur in zip([None, *chain[:-1]], chain, strict=True):
        c = by_id[cur]
        val = "–" if c["val_score"] is None else f"{c['val_score']:.3f}"
        head = (f"#{cur} · {_e(c['op'])} · iteration {c['iteration']} · val {val}"
                f" · {_e(_genome_text(c['genome']))}")
        if c["note"]:
            head += f" · <span class='note'>{_e(c['note'])}</span>"
        if prev is None or not c["genome"] or not by_id[prev]["genome"]:
            body = _e(texts[c["genome"][INSTRUCTION]]) if c["genome"] else ""
        else:
            old, new = texts[by_id[prev]["genome"][INSTRUCTION]], texts[c["genome"][INSTRUCTION]]
            body = word_diff(old, new) if old != new else "<span class='note'>instruction " \
                "unchanged</span>"
            for what, text_of in (("demos", _demos_text), ("settings", _settings_text)):
                was, now = text_of(by_id[prev]["genome"]), text_of(c["genome"])
                if was != now:
                    body += f"<div class='note'>{what}: {_e(was or '–')} → {_e(now or '–')}</div>"
        parts.append(f"<div class='step'><div class='head'>{head}</div>"
                     f"<div class='text'>{body}</div></div>")

    # ---- per-example wins and losses ------------------------------------------------------
    exs = record.get("val_examples") or []
    replies = record.get("replies") or {}
    if exs and scores.size and len(exs) != scores.shape[1]:
        parts.append(f"<p class='warn'>{_e(src_name)}: {len(exs)} val_examples for "
                     f"{scores.shape[1]} score columns: the per-example table is left out.</p>")
    elif exs and scores.size:
        base_row, best_row = scores[0], scores[best]
        win = [j for j in range(len(exs)) if best_row[j] > base_row[j]]
        loss = [j for j in range(len(exs)) if best_row[j] < base_row[j]]
        held_out = ""
        if test and test.get("baseline_scores"):
            a, b = np.array(test["baseline_scores"]), np.array(test["optimized_scores"])
            held_out = (f"<p><b>Held-out test</b> ({len(a)} examples): the best wins "
                        f"<span class='win'>{int(np.sum(b > a))}</span> and loses "
                        f"<span class='loss'>{int(np.sum(b < a))}</span>.</p>")
        parts.append(f"<h2>Per example: best #{best} vs baseline</h2>{held_out}"
                     f"<p><b>Validation</b> — the split that chose the best, so its wins are "
                     f"optimistic: <span class='win'>{len(win)} wins</span>, <span class='loss'>"
                     f"{len(loss)} losses</span>, {len(exs) - len(win) - len(loss)} ties.</p>")
        rows = []
        for tag, js in (("win", win), ("loss", loss)):
            for j in js:
                ex = exs[j]
                inputs = "; ".join(f"{k}: {v}" for k, v in ex["inputs"].items())
                rows.append([_Html(f"<span class='{tag}'>{tag}</span>"),
                             inputs[:220] + ("…" if len(inputs) > 220 else ""),
                             ", ".join(ex["outputs"].values()),
                             _reply(replies, "baseline", j), _reply(replies, "best", j)])
        parts.append(_table(["", "input", "gold", "baseline replied", "best replied"], rows))

    # ---- usage and cost -------------------------------------------------------------------
    usage = summary.get("usage") or record.get("usage") or {}
    sittings = summary.get("sittings") or record.get("sittings") or []
    parts.append("<h2>Usage and cost</h2>")
    if sittings:
        parts.append(_table(
            ["sitting", "LM answers", "paid", "failed", "from the shared cache",
             "prompt tokens paid", "completion tokens paid", "LM seconds"],
            [[s["sitting"], s["answers"], s["paid"], s["failed"], s["shared_cache"],
              f"{s['prompt_tokens']:,}", f"{s['completion_tokens']:,}", s["lm_seconds"]]
             for s in sittings], num=set(range(8))))
    if usage:
        rows = [["LM requests of the last sitting (paid / shared cache / journal replays)",
                 f"{usage.get('calls', 0)} / {usage.get('cache_hits', 0)} / "
                 f"{usage.get('replayed', 0)}"],
                ["prompt / completion tokens paid (last sitting)",
                 f"{usage.get('prompt_tokens', 0):,} / {usage.get('completion_tokens', 0):,}"],
                ["prompt tokens reused from the KV cache",
                 f"{usage.get('reused_prompt_tokens', 0):,}"],
                ["paid calls by purpose", usage.get("by_purpose", {})]]
        if summary["seconds"] is not None:
            rows.append(["search wall time (last sitting)",
                         f"{summary['seconds']:.0f} s, {summary.get('lm_share', 0):.0%} in the LM"])
        paid_in = sum(s["prompt_tokens"] for s in sittings) if sittings else \
            usage.get("prompt_tokens", 0)
        paid_out = sum(s["completion_tokens"] for s in sittings) if sittings else \
            usage.get("completion_tokens", 0)
        if price is not None:
            cost = paid_in / 1e6 * price[0] + paid_out / 1e6 * price[1]
            rows.append(["cost of the search (all sittings)",
                         f"${cost:.4f} at ${price[0]}/M prompt and ${price[1]}/M completion "
                         "tokens"])
        else:
            rows.append(["cost of the search (all sittings)",
                         _Html(f"{paid_in:,} prompt + {paid_out:,} completion tokens (give "
                               "<code>--price IN,OUT</code> in $ per million tokens for "
                               "dollars)")])
        if test:
            tu = test.get("test_usage", {})
            rows.append(["test pass", f"{tu.get('calls', 0)} paid calls, "
                                      f"{test.get('test_seconds', 0):.0f} s"])
        parts.append(_table(["", ""], rows))
    parts.append("<p class='note'>Written by <code>evo report</code> from "
                 f"{_e(run_dir)}.</p></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 price: tuple[float, float] | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN/report.html``; an existing
    folder gets ``report.html`` inside it). The page is written whole or not at all
    (:func:`evo._io.write_text`); a failed write is a :class:`~evo.errors.StorageError` naming
    the path."""
    page = build(run_dir, price=price)
    out = Path(out) if out else Path(run_dir) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    return write_text(out, page)
