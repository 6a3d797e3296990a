"""``evo report RUN``: one self-contained HTML page about a stored run.

What it shows, read from the run store (:mod:`evo.store`) alone:

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
  price when one is given.

Plots are matplotlib PNGs embedded in the page (no file beside it, no network).
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

from evo.compare import format_p
from evo.data import DataError
from evo.store import CHECKPOINT_FILE, EVENTS_FILE, RUN_FILE

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
.note{color:#666;font-size:.88rem}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[Any]], num: set[int] = frozenset()) -> str:
    out = ["<table>" + ("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
                        if any(head) else "")]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{_e(v)}</td>' if i in num else f"<td>{v}</td>"
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
    return " ".join(x for x in out if x)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _load(run_dir: Path) -> tuple[dict, dict, list[dict], dict | None, bool]:
    if not (run_dir / RUN_FILE).exists() and not (run_dir / "result.json").exists():
        raise DataError(f"{run_dir}: not a run directory (no {RUN_FILE} or result.json)")
    info = _read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else {}
    finished = (run_dir / "result.json").exists()
    src = run_dir / ("result.json" if finished else CHECKPOINT_FILE)
    if not src.exists():
        raise DataError(f"{run_dir}: the run has not evaluated anything yet (no {src.name})")
    record = _read_json(src)
    missing = [k for k in ("candidates", "instructions", "scores", "val_example_ids")
               if not isinstance(record, dict) or k not in record]
    if missing:
        raise DataError(f"{src}: not an evo search record (no {', '.join(missing)}); "
                        "`evo report` reads the directory of `evo run` or evo.optimize(run_dir=)")
    events = []
    if (run_dir / EVENTS_FILE).exists():
        for n, line in enumerate((run_dir / EVENTS_FILE).read_text().splitlines(), 1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{run_dir / EVENTS_FILE}, line {n}: not JSON") from None
    test = _read_json(run_dir / "report.json") if (run_dir / "report.json").exists() else None
    return info, record, events, test, finished


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


def _genome_text(genome: list[int]) -> str:
    if not genome:
        return "a voting ensemble"
    n, knn = genome[1], genome[2]
    demos = genome[3:3 + n]
    return (f"{n} demo{'s' if n != 1 else ''} {demos}" if n else "no fixed demos") + (
        f" + {knn} nearest per input" if knn else "")


def build(run_dir: str | Path, *, price: tuple[float, float] | None = None) -> str:
    """The report of ``run_dir`` as an HTML page. ``price``: dollars per million prompt and
    completion tokens, for the cost line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    info, record, events, test, finished = _load(run_dir)
    spec, cli = info.get("spec", {}), info.get("cli") or {}
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
    seed_val = by_id[0]["val_score"]
    best_val = by_id[best]["val_score"]
    task = cli.get("task") or cli.get("data") or "your data"
    optimizer = (spec.get("optimizer") or {}).get("optimizer", summary.get("optimizer", "?"))
    budget = ((spec.get("optimizer") or {}).get("budget") or {}).get("metric_calls",
                                                                    summary.get("budget"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>evo run: {_e(task)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>evo run: {_e(task)}</h1>",
             f"<p class='sub'>{_e(run_dir)} · model {_e(spec.get('model', '?'))} · optimizer "
             f"{_e(optimizer)} · seed {_e(spec.get('seed', summary.get('seed', '?')))} · budget "
             f"{_e(budget)} metric calls" + ("" if finished else
                                            " · <b>unfinished</b> (read from the checkpoint)")
             + "</p>"]

    # ---- outcome --------------------------------------------------------------------------
    rows = [["validation accuracy, baseline → best", f"{seed_val:.3f} → {best_val:.3f}",
             f"{len(record['val_example_ids'])} examples"]]
    if test:
        p = format_p(test["p_value"])
        rows.append(["held-out test accuracy, baseline → best",
                     f"{test['baseline']:.3f} → {test['optimized']:.3f}",
                     f"{test['n']} examples; difference {test['delta']:+.3f} "
                     f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] (95% paired bootstrap), "
                     f"paired permutation test {p}"])
    rows.append(["candidates generated / validated", f"{len(cands)} / {len(validated)}",
                 _e(summary.get("stop_reason") or record.get("stop_reason") or "")])
    parts += ["<h2>Outcome</h2>", _table(["", "", ""], rows)]
    parts.append(f"<p>Best candidate #{best}: {_e(_genome_text(by_id[best]['genome']))}.</p>"
                 f"<div class='step text'>{_e(texts[by_id[best]['genome'][0]]) if by_id[best]['genome'] else ''}</div>")

    # ---- score vs calls -------------------------------------------------------------------
    evald = [e for e in events if e["event"] == "candidate_evaluated"
             and e.get("val_score") is not None]
    if evald:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
        for ax, key, label in ((axes[0], "metric_calls", "metric calls"),
                               (axes[1], "lm_calls", "LM calls (cache hits and replays included)")):
            xs = [e.get(key, e["metric_calls"]) for e in evald]
            ys = [e["val_score"] for e in evald]
            ax.scatter(xs, ys, s=18, color="#4a7bd0", alpha=.7, label="validated candidate")
            ax.step(xs, np.maximum.accumulate(ys), where="post", color="#d0534a",
                    label="best so far")
            ax.set_xlabel(label)
            ax.grid(alpha=.3)
        axes[0].set_ylabel("validation accuracy")
        axes[0].legend(loc="lower right", fontsize=8)
        parts += ["<h2>Validation accuracy vs calls</h2>", _png(fig)]

    # ---- Pareto fronts --------------------------------------------------------------------
    chars = {int(k): v for k, v in (record.get("prompt_chars") or {}).items()}
    front_ids = {t["candidate"] for t in record.get("tradeoff", [])}
    parts.append("<h2>Pareto fronts</h2>")
    if chars:
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
                            [[f"#{cid}", _e(by_id[cid]["op"]), f"{by_id[cid]['val_score']:.3f}",
                              n] for n, cid in inst[:15]], num={3}))

    # ---- lineage --------------------------------------------------------------------------
    chain = _lineage(cands, best)
    fig, ax = plt.subplots(figsize=(11, 3.8))
    y_of = {}
    for c in cands:
        y = c["val_score"]
        if y is None and c["id"] < len(scores) and scores.size:
            row = scores[c["id"]]
            y = float(np.nanmean(row)) if np.isfinite(row).any() else None
        y_of[c["id"]] = y
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
    parts += ["<h2>Lineage</h2>", "<p class='note'>Every candidate (blue: validated in full, "
              "grey: stopped at its minibatch), an edge from each parent; red: the chain from "
              "the seed to the best.</p>", _png(fig), "<h3>From the seed to the best</h3>"]
    for prev, cur in zip([None, *chain[:-1]], chain, strict=True):
        c = by_id[cur]
        val = "–" if c["val_score"] is None else f"{c['val_score']:.3f}"
        head = (f"#{cur} · {_e(c['op'])} · iteration {c['iteration']} · val {val}"
                f" · {_e(_genome_text(c['genome']))}")
        if c["note"]:
            head += f" · <span class='note'>{_e(c['note'])}</span>"
        if prev is None or not c["genome"] or not by_id[prev]["genome"]:
            body = _e(texts[c["genome"][0]]) if c["genome"] else ""
        else:
            old, new = texts[by_id[prev]["genome"][0]], texts[c["genome"][0]]
            body = word_diff(old, new) if old != new else "<span class='note'>instruction " \
                "unchanged</span>"
            was, now = _genome_text(by_id[prev]["genome"]), _genome_text(c["genome"])
            if was != now:
                body += f"<div class='note'>demos: {_e(was)} → {_e(now)}</div>"
        parts.append(f"<div class='step'><div class='head'>{head}</div>"
                     f"<div class='text'>{body}</div></div>")

    # ---- per-example wins and losses ------------------------------------------------------
    exs = record.get("val_examples") or []
    replies = record.get("replies") or {}
    if exs and scores.size:
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
                rows.append([f"<span class='{tag}'>{tag}</span>",
                             _e(inputs[:220] + ("…" if len(inputs) > 220 else "")),
                             _e(", ".join(ex["outputs"].values())),
                             _e((replies.get("baseline") or [None] * len(exs))[j] or ""),
                             _e((replies.get("best") or [None] * len(exs))[j] or "")])
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
                ["paid calls by purpose", _e(usage.get("by_purpose", {}))]]
        if "seconds" in summary:
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
                         f"{paid_in:,} prompt + {paid_out:,} completion tokens (give "
                         "<code>--price IN,OUT</code> in $ per million tokens for dollars)"])
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
    """Write the report of ``run_dir`` to ``out`` (default ``RUN/report.html``)."""
    page = build(run_dir, price=price)
    out = Path(out) if out else Path(run_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
