"""evo vs DSPy at concurrency T against a loopback server with 0.5 s latency (issue 16).

    .venv/bin/python benchmarks/concurrency.py            # T = 1, 4, 8, 16, 32 (~20 min)
    .venv/bin/python benchmarks/concurrency.py --quick    # optimize at T = 1, 8, 32 only

A latency server (``python -m evo.testing.latency_server --latency 0.5 --whole-prompt``) runs in
a process of its own, so its CPU is not the client's. Both sides reach it through litellm
(evo: ``evo.lm.hosted``; DSPy: ``dspy.LM``), with no response cache, so every call is paid. Each
measurement runs once (``--repeat N``: the best of N); every ratio in the table comes from this
one run. Measured:

- **evaluate**: 64 TREC test examples, ``evo.evaluate(max_concurrency=T)`` vs
  ``dspy.Evaluate(num_threads=T)``. 64 is divisible by every T, so the rounds bound below is
  the ideal itself: the issue's goal (within 10% of the ideal at T <= 16) is measured exactly.
- **optimize**: budget 200 metric calls on TREC (train 50 / val 20), ``evo.GEPA`` with
  ``parallel_proposals`` K = 1 and K = 8 (``--parallel-proposals``; and at T = 32, or the
  ``--evolution`` T, evo's default ``Evolution`` with each K) with ``max_concurrency=T``, vs
  ``dspy.GEPA`` (``max_metric_calls=200``, the same LM as reflection LM, ``num_threads=T``; one
  DSPy run per T, the denominator of every evo row at that T: ``dspy.GEPA`` has no
  parallel-proposal option).
- **throttled**: a second server answering 429 (Retry-After 0.5 s) above 4 requests in flight;
  ``evo.evaluate`` at T = 16: nothing may be lost (0 failed cells, the unthrottled accuracy).
- **ray**: ``evo.evaluate`` through ``RayExecutor`` with 1 and 2 workers.
- **overhead** at T = 32: the client's CPU time / wall, and (wall − ideal) / wall.

``ideal`` = server requests × latency / T: the wall time if every call overlapped perfectly. An
optimizer cannot reach it: each iteration waits for the scores of the last one (reflection is a
call of its own; with K proposals per iteration, K reflections go out together), so the
``no call in flight`` column (wall time during which the server was
serving none of this client's requests) separates the engine's own time from waiting on calls.
Writes ``benchmarks/results/concurrency.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LATENCY = 0.5
N_EVAL = 64  # divisible by every T in THREADS: rounds = ideal
BUDGET = 200
THREADS = (1, 4, 8, 16, 32)
QUICK_OPT_THREADS = (1, 8, 32)
PROPOSALS = (1, 8)  # evo optimizers' parallel_proposals
RESULTS = ROOT / "benchmarks" / "results"


# --- the server ----------------------------------------------------------------------------------

@contextlib.contextmanager
def server(*extra: str) -> Iterator[str]:
    """A latency server in its own process for the block; yields its base URL."""
    from evo.testing.latency_server import spawned

    with spawned("--latency", str(LATENCY), "--whole-prompt", *extra) as url:
        yield url


def _http(url: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _union(spans: list[list[float]], lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by at least one span."""
    total, end = 0.0, lo
    for s, e in sorted(spans):
        s, e = max(s, end), min(e, hi)
        if e > s:
            total += e - s
            end = e
    return total


def measure(url: str, threads: int, fn: Callable[[], dict]) -> dict:
    """Run ``fn`` once against the server at ``url`` (its counters zeroed first): wall time,
    client CPU time, the server's counts, the ideal wall time, and the time with no call in
    flight. ``fn`` returns its own fields (accuracy, metric calls ...)."""
    _http(url + "/reset", "POST")
    cpu0, t0 = time.process_time(), time.monotonic()
    own = fn()
    t1, cpu1 = time.monotonic(), time.process_time()
    stats = _http(url + "/stats")
    wall = t1 - t0
    requests = stats["requests"]
    ideal = requests * LATENCY / threads
    return {"T": threads, "wall_s": wall, "cpu_s": cpu1 - cpu0, "requests": requests,
            "served": stats["served"], "throttled": stats["throttled"],
            "peak_inflight": stats["peak_inflight"], "ideal_s": ideal,
            "vs_ideal": wall / ideal if ideal else None,
            "idle_s": wall - _union(stats["spans"], t0, t1),
            "cpu_share": (cpu1 - cpu0) / wall, "non_lm_share": (wall - ideal) / wall, **own}


def best_of(repeat: int, run: Callable[[], dict]) -> dict:
    rows = [run() for _ in range(repeat)]
    return min(rows, key=lambda r: r["wall_s"])


# --- the two sides --------------------------------------------------------------------------------

class Bench:
    def __init__(self, url: str, seed: int = 0) -> None:
        import dspy

        import evo
        from evo.program import Signature, default_instruction
        from evo_bench import dspy_signature, to_dspy_examples

        self.url, self.seed = url, seed
        task = evo.datasets.load("trec", seed=seed, n_train=50, n_val=20, n_test=N_EVAL)
        self.task = task
        self.examples = list(task.test)[:N_EVAL]
        self.train, self.val = list(task.train), list(task.val)
        self.program = evo.Program(signature=task.signature, labels=task.labels)
        self.outputs = [f.name for f in Signature.parse(task.signature).outputs]
        self.instruction = default_instruction(Signature.parse(task.signature))
        self.dspy_sig = dspy_signature(task, self.instruction)
        self.d_examples = to_dspy_examples(self.examples)
        self.d_train, self.d_val = to_dspy_examples(self.train), to_dspy_examples(self.val)
        self.lm = self.evo_lm(url)
        self.dlm = dspy.LM("openai/latency", api_base=url, api_key="x", cache=False,
                           num_retries=0)

    @staticmethod
    def evo_lm(url: str):
        import evo

        return evo.lm.hosted("openai/latency", api_base=url, api_key="x")

    # evo
    def evo_evaluate(self, threads: int, lm: Any = None, **kwargs: Any) -> dict:
        from evo.api import evaluation

        result = evaluation(self.program, self.examples, lm=lm or self.lm, cache=False,
                            max_concurrency=threads, **kwargs)
        return {"accuracy": result.accuracy, "failed_cells": result.failures["failed"]}

    @staticmethod
    def evo_optimizer(name: str, k: int):
        import evo

        cls = {"gepa": evo.GEPA, "evolution": evo.Evolution}[name]
        return cls(budget=evo.Budget(metric_calls=BUDGET), parallel_proposals=k)

    def evo_optimize(self, threads: int, name: str, k: int) -> dict:
        import evo

        result = evo.optimize(self.program, self.train, self.val, lm=self.lm, cache=False,
                              max_concurrency=threads, optimizer=self.evo_optimizer(name, k),
                              seed=self.seed, description=self.task.description)
        return {"K": k, "metric_calls": result.metric_calls, "lm_calls": result.usage.calls,
                "best_val": result.best_val, "candidates": len(result.candidates)}

    # DSPy
    def dspy_program(self, runs):
        from evo_bench import counted_predict

        return counted_predict(self.dspy_sig, runs)

    def dspy_evaluate(self, threads: int) -> dict:
        import dspy

        from evo.metrics import exact_match
        from evo_bench import Counter, EvoMetric

        runs = Counter()
        evaluate = dspy.Evaluate(devset=self.d_examples,
                                 metric=EvoMetric(exact_match, self.outputs),
                                 num_threads=threads, display_progress=False)
        with dspy.context(lm=self.dlm):
            result = evaluate(self.dspy_program(runs))
        return {"accuracy": float(result.score) / 100, "metric_calls": runs.n}

    def dspy_optimize(self, threads: int) -> dict:
        import dspy

        from evo.metrics import exact_match
        from evo_bench import Counter, EvoMetric

        runs = Counter()
        metric = EvoMetric(exact_match, self.outputs, feedback=True)
        gepa = dspy.GEPA(metric=metric, max_metric_calls=BUDGET, reflection_lm=self.dlm,
                         num_threads=threads, seed=self.seed, track_stats=False)
        with dspy.context(lm=self.dlm, max_errors=1 << 30):
            gepa.compile(self.dspy_program(runs), trainset=self.d_train, valset=self.d_val)
        return {"metric_calls": runs.n}

    def warm_up(self) -> None:
        """One call each way first: litellm's imports and first connection are not measured."""
        from evo.api import evaluation
        from evo_bench import Counter

        evaluation(self.program, self.examples[:2], lm=self.lm, cache=False)
        import dspy

        with dspy.context(lm=self.dlm):
            self.dspy_program(Counter())(**self.d_examples[0].inputs())


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """DSPy's and litellm's logging and progress chatter off for the measurements."""
    import io

    names = ("dspy", "LiteLLM", "litellm", "httpx")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    sink = io.StringIO()  # DSPy's progress bars write to stdout or stderr
    with warnings.catch_warnings(), contextlib.redirect_stderr(sink), \
            contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def log(text: str) -> None:
    print(text, file=sys.__stderr__, flush=True)


# --- the parts ------------------------------------------------------------------------------------

def run_scaling(bench: Bench, args: argparse.Namespace) -> dict:
    out: dict[str, list] = {"evaluate": [], "optimize": [], "optimize_evolution": []}
    for t in THREADS:
        evo_row = best_of(args.repeat, lambda: measure(
            bench.url, t, lambda: bench.evo_evaluate(t)))
        dspy_row = best_of(args.repeat, lambda: measure(
            bench.url, t, lambda: bench.dspy_evaluate(t)))
        out["evaluate"].append({"T": t, "evo": evo_row, "dspy": dspy_row})
        log(f"evaluate T={t}: evo {evo_row['wall_s']:.1f} s ({evo_row['requests']} req), "
            f"DSPy {dspy_row['wall_s']:.1f} s ({dspy_row['requests']} req)")
    for t in (QUICK_OPT_THREADS if args.quick else THREADS):
        dspy_row = best_of(args.repeat, lambda: measure(
            bench.url, t, lambda: bench.dspy_optimize(t)))
        log(f"optimize T={t}: DSPy GEPA {dspy_row['wall_s']:.1f} s "
            f"({dspy_row['requests']} req, {dspy_row['metric_calls']} metric calls)")
        for k in args.parallel_proposals:
            evo_row = best_of(args.repeat, lambda: measure(
                bench.url, t, lambda: bench.evo_optimize(t, "gepa", k)))
            # every K at this T is compared with the same DSPy run (one proposal at a time)
            out["optimize"].append({"T": t, "K": k, "evo": evo_row, "dspy": dspy_row})
            log(f"optimize T={t}: evo GEPA K={k} {evo_row['wall_s']:.1f} s "
                f"({evo_row['requests']} req, {evo_row['metric_calls']} metric calls)")
        if args.evolution is not None and (not args.evolution or t in args.evolution):
            for k in args.parallel_proposals:
                ev = best_of(args.repeat, lambda: measure(
                    bench.url, t, lambda: bench.evo_optimize(t, "evolution", k)))
                out["optimize_evolution"].append({"T": t, "K": k, "evo": ev})
                log(f"optimize T={t}: evo Evolution K={k} {ev['wall_s']:.1f} s "
                    f"({ev['requests']} req, {ev['metric_calls']} metric calls)")
    return out


def run_throttled(bench: Bench, unthrottled_accuracy: float) -> dict:
    with server("--max-inflight", "4", "--retry-after", "0.5") as url:
        lm = Bench.evo_lm(url)
        from evo.api import evaluation

        evaluation(bench.program, bench.examples[:1], lm=lm, cache=False)  # warm
        row = measure(url, 16, lambda: bench.evo_evaluate(16, lm=lm))
    row["same_accuracy"] = row["accuracy"] == unthrottled_accuracy
    row["ideal_at_4_s"] = row["served"] * LATENCY / 4  # the server serves at most 4 at once
    log(f"throttled T=16 (server max 4 in flight): {row['wall_s']:.1f} s, "
        f"{row['throttled']} throttled, {row['failed_cells']} failed cells")
    return row


def run_ray(bench: Bench) -> dict:
    import ray

    from evo.integrations.ray import RayExecutor

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for per_worker in (8, 4):
            for workers in (1, 2):
                with RayExecutor(num_workers=workers, concurrency_per_worker=per_worker) as ex:
                    t0 = time.monotonic()
                    ray_lm = ex.wrap(bench.lm)  # what evaluate(executor=ex) does first
                    start_s = time.monotonic() - t0
                    total = workers * per_worker
                    row = measure(bench.url, total, lambda: bench.evo_evaluate(total, lm=ray_lm))
                row.update(workers=workers, per_worker=per_worker, start_s=start_s)
                rows.append(row)
                log(f"ray {workers} worker(s) x {per_worker}: {row['wall_s']:.1f} s "
                    f"(+{start_s:.1f} s actor start)")
    finally:
        ray.shutdown()
    return {"rows": rows}


# --- the report -----------------------------------------------------------------------------------

def _s(x: float) -> str:
    return f"{x:.1f} s"


def _r(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _rounds(row: dict) -> float:
    """⌈requests / T⌉ × latency: T calls at a time take this long at least."""
    return -(-row["requests"] // row["T"]) * LATENCY


def _proposals(k: int) -> str:
    return f"{k} proposal{'s' if k > 1 else ''}/iteration"


def render(res: dict) -> str:
    n_eval = res["meta"].get("n_eval", N_EVAL)
    even = all(n_eval % r["T"] == 0 for r in res["scaling"]["evaluate"])
    lines = [f"Latency server: {LATENCY} s per request, parallel; TREC; one run "
             f"({res['meta']['when']}, {res['meta']['machine']}, DSPy "
             f"{res['meta'].get('dspy', '?')}). ideal = requests × "
             f"{LATENCY} s / T; rounds = ⌈requests / T⌉ × {LATENCY} s (T calls at a time "
             "cannot finish sooner). no call in flight: wall time during which the server "
             "served none of the client's requests."
             + (f" evaluate {n_eval}: {n_eval} is divisible by every T, so rounds = ideal "
                "(the issue's goal: within 10% of it at T ≤ 16)." if even else "")
             + " K = evo's parallel_proposals (children per iteration); dspy.GEPA has no "
               "such option and proposes one at a time, so each evo GEPA row at a T is "
               "compared with the same DSPy GEPA run at that T.", "",
             "| workload | T | evo wall | DSPy wall | evo / DSPy | requests evo / DSPy "
             "| evo ideal | evo / ideal | evo / rounds | DSPy / ideal | evo: no call in flight "
             "| metric calls evo / DSPy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for part in ("evaluate", "optimize"):
        for row in res["scaling"][part]:
            e, d = row["evo"], row["dspy"]
            name = (f"evaluate {n_eval}" if part == "evaluate"
                    else f"GEPA b{BUDGET}, {_proposals(row.get('K', 1))}")
            mc = f"{e.get('metric_calls', n_eval)} / {d['metric_calls']}"
            lines.append(
                f"| {name} | {row['T']} | {_s(e['wall_s'])} | {_s(d['wall_s'])} | "
                f"**{e['wall_s'] / d['wall_s']:.2f}** | {e['requests']} / {d['requests']} | "
                f"{_s(e['ideal_s'])} | {_r(e['vs_ideal'])} | {_r(e['wall_s'] / _rounds(e))} | "
                f"{_r(d['vs_ideal'])} | "
                f"{_s(e['idle_s'])} | {mc} |")
    for row in res["scaling"].get("optimize_evolution", []):
        e = row["evo"]
        lines.append(
            f"| Evolution b{BUDGET}, {_proposals(row.get('K', 1))} (evo only) | {row['T']} | "
            f"{_s(e['wall_s'])} | – | – | "
            f"{e['requests']} / – | {_s(e['ideal_s'])} | {_r(e['vs_ideal'])} | "
            f"{_r(e['wall_s'] / _rounds(e))} | – | "
            f"{_s(e['idle_s'])} | {e['metric_calls']} / – |")
    if "throttled" in res:
        t = res["throttled"]
        lines += ["", "| throttled server (429 above 4 in flight, Retry-After 0.5 s) | T | wall "
                  "| requests (429s) | ideal at 4 in flight | failed cells | accuracy "
                  "(= unthrottled) |", "|---|---|---|---|---|---|---|",
                  f"| evo.evaluate {n_eval} | 16 | {_s(t['wall_s'])} | {t['requests']} "
                  f"({t['throttled']}) | {_s(t['ideal_at_4_s'])} | {t['failed_cells']} | "
                  f"{t['accuracy']:.3f} ({'yes' if t['same_accuracy'] else 'NO'}) |"]
    if "ray" in res:
        rows = res["ray"]["rows"]
        lines += ["", f"| Ray (evo.evaluate {n_eval}, RayExecutor) | workers × calls each | wall "
                  "| actor start | speed-up vs 1 worker | ideal |",
                  "|---|---|---|---|---|---|"]
        base = {r["per_worker"]: r["wall_s"] for r in rows if r["workers"] == 1}
        for r in rows:
            lines.append(f"| local cluster, 2 CPUs | {r['workers']} × {r['per_worker']} | "
                         f"{_s(r['wall_s'])} | {_s(r['start_s'])} | "
                         f"{base[r['per_worker']] / r['wall_s']:.2f}× | {_s(r['ideal_s'])} |")
    ov = res.get("overhead", [])
    if ov:
        lines += ["", "| engine overhead at T = 32 | wall | client CPU / wall "
                  "| (wall − ideal) / wall | no call in flight / wall |", "|---|---|---|---|---|"]
        for name, r in ov:
            lines.append(f"| {name} | {_s(r['wall_s'])} | {r['cpu_share']:.0%} | "
                         f"{r['non_lm_share']:.0%} | {r['idle_s'] / r['wall_s']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="optimize at T = 1, 8, 32 only")
    ap.add_argument("--repeat", type=int, default=1, help="best of N per measurement")
    ap.add_argument("--parallel-proposals", type=int, nargs="+", default=list(PROPOSALS),
                    metavar="K", help="evo optimizers' parallel_proposals: a row per K "
                                      f"(default {' '.join(map(str, PROPOSALS))})")
    ap.add_argument("--evolution", nargs="*", type=int, metavar="T", default=[32],
                    help="also evo's default Evolution optimizer at these T (default 32; "
                         "none given: every optimize T)")
    ap.add_argument("--latency", type=float, default=0.5,
                    help="the server's latency (the committed results use 0.5 s)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throttled", "ray"])
    ap.add_argument("--out", default=str(RESULTS / "concurrency"),
                    help="writes OUT.json and OUT.md")
    ap.add_argument("--render", metavar="JSON",
                    help="print and write the tables of an earlier run's JSON (no run)")
    args = ap.parse_args(argv)
    global LATENCY
    LATENCY = args.latency
    if args.render:
        res = json.loads(Path(args.render).read_text())
        LATENCY = res["meta"]["latency_s"]
        write(res, Path(args.out))
        return 0

    import dspy

    res: dict[str, Any] = {"meta": {
        "when": time.strftime("%Y-%m-%d %H:%M"), "latency_s": LATENCY, "n_eval": N_EVAL,
        "budget": BUDGET, "quick": args.quick, "repeat": args.repeat,
        "parallel_proposals": args.parallel_proposals, "dspy": dspy.__version__,
        "machine": f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "splits": {"eval": N_EVAL, "train": 50, "val": 20}}}
    started = time.monotonic()
    with server() as url, quiet():
        bench = Bench(url)
        bench.warm_up()
        res["scaling"] = run_scaling(bench, args)
        res["overhead"] = [(f"evo.evaluate {N_EVAL}", r["evo"])
                           for r in res["scaling"]["evaluate"] if r["T"] == 32]
        res["overhead"] += [(f"evo.optimize GEPA b{BUDGET}, {_proposals(r['K'])}", r["evo"])
                            for r in res["scaling"]["optimize"] if r["T"] == 32]
        if "throttled" not in args.skip:
            acc16 = next(r["evo"]["accuracy"] for r in res["scaling"]["evaluate"]
                         if r["T"] == 16)
            res["throttled"] = run_throttled(bench, acc16)
        if "ray" not in args.skip:
            res["ray"] = run_ray(bench)
    res["meta"]["total_s"] = time.monotonic() - started
    write(res, Path(args.out))
    return 0


def write(res: dict, out: Path) -> None:
    """Print the tables; write ``out``.json (the run) and ``out``.md (the tables)."""
    text = render(res)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(
        f"# evo vs DSPy under concurrency\n\n`.venv/bin/python benchmarks/concurrency.py"
        f"{' --quick' if res['meta']['quick'] else ''}` "
        f"({res['meta']['total_s'] / 60:.0f} min)\n\n{text}\n")


if __name__ == "__main__":
    sys.exit(main())
