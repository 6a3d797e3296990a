"""`evo bench` on a scripted LM: evo and DSPy optimizers on the same splits and ledger, one JSON
per run, the table and the plot, and a stopped suite resuming from its caches."""

import json
import re

import pytest

import evo
import evo.cli
import evo_bench as bench
from evo.data import Dataset, Task
from evo.lm import ScriptedLM
from evo.testing import LABELS, TRAIN, VAL
from evo.testing import respond as evo_respond

dspy = pytest.importorskip("dspy")
pytest.importorskip("matplotlib")

DATA = Dataset("toy", tuple(TRAIN + VAL), ("text",), ("label",), LABELS, "Say pos or neg")


def respond(req):
    """Right with >= 2 demos, in evo's format or DSPy's ChatAdapter format."""
    last = req.messages[-1].content
    if "[[ ## text ## ]]" in last:
        text = re.search(r"\[\[ ## text ## \]\]\n(.*)", last).group(1)
        demos = sum(m.role == "user" for m in req.messages) - 1
        label = ("pos" if "good" in text else "neg") if demos >= 2 else "neg"
        return f"[[ ## label ## ]]\n{label}\n\n[[ ## completed ## ]]"
    if req.purpose == "proposal":  # DSPy's proposers (COPRO, MIPROv2, GEPA): fill every field
        system = req.messages[0].content
        wanted = re.findall(r"\d+\. `(\w+)`", system.split("Your output fields are:")[-1])
        return "".join(f"[[ ## {name} ## ]]\nSay pos when the text says good, else neg.\n\n"
                       for name in wanted) + "[[ ## completed ## ]]"
    return evo_respond(req)


def config(tmp_path, **kw):
    return bench.BenchConfig(**{
        "tasks": ["toy"], "optimizers": ["labeled_fewshot", "dspy.bootstrap_random_search"],
        "budgets": [60], "seeds": [0], "n_train": 30, "n_val": 10, "n_test": 20,
        "out": tmp_path / "bench", **kw})


def load(name, seed, cfg):
    return Task(name, *DATA.split([cfg.n_train, cfg.n_val, cfg.n_test], seed=seed))


def suite(cfg, lm):
    return bench.run_suite(cfg, lm=lm, load=lambda name, seed: load(name, seed, cfg),
                           log=lambda line: None)


def test_suite_runs_both_sides_on_one_ledger_and_writes_table_and_plot(tmp_path):
    cfg = config(tmp_path)
    results = suite(cfg, ScriptedLM(respond))
    by = {r["optimizer"]: r for r in results}
    assert set(by) == {"baseline", "dspy.baseline", "labeled_fewshot",
                       "dspy.bootstrap_random_search"}
    assert by["baseline"]["test"] == 0.5 and by["dspy.baseline"]["test"] == 0.5
    dspy_rs = by["dspy.bootstrap_random_search"]
    assert dspy_rs["side"] == "dspy" and dspy_rs["test"] == 1.0
    assert dspy_rs["lm_by_purpose"].get("dspy", 0) > 0  # DSPy's calls reached evo's ledger
    # metric calls are program runs: RandomSearch scores 4 programs (zero-shot, labeled, two
    # bootstrapped) on the 10 val examples, and each bootstrap ran the teacher on 4 examples
    assert dspy_rs["metric_calls"] == 4 * 10 + 2 * 4 and dspy_rs["over_budget"] == 0
    assert by["labeled_fewshot"]["metric_calls"] <= 60 and by["labeled_fewshot"]["test"] == 1.0
    for r in results:
        assert 0.0 <= r["lm_share"] <= 1.0 and len(r["test_scores"]) == 20
    text, png = bench.report(cfg.out)
    assert "| toy | dspy.bootstrap_random_search | 60 | **1.000**" in text
    assert png.exists() and png.stat().st_size > 1000
    assert (cfg.out / "table.md").read_text().strip() == text
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert {row["optimizer"] for row in summary} == set(by)


def test_stopped_suite_resumes_done_cells_and_replays_the_rest_from_cache(tmp_path):
    cfg = config(tmp_path)
    first = {r["optimizer"]: r for r in suite(cfg, ScriptedLM(respond))}
    # a finished suite: nothing to run
    lm = ScriptedLM(respond)
    assert len(suite(cfg, lm)) == 4 and not lm.calls
    # a run killed before writing its result: rerun on its own cache, nothing paid again
    run_dir = cfg.out / "toy" / "seed0" / "dspy.bootstrap_random_search-b60"
    (run_dir / "result.json").unlink()
    lm = ScriptedLM(respond)
    again = {r["optimizer"]: r for r in suite(cfg, lm)}
    assert not lm.calls
    name = "dspy.bootstrap_random_search"
    assert again[name]["resumed"] and again[name]["test"] == first[name]["test"]
    assert again[name]["program"] == first[name]["program"]
    assert again[name]["lm_calls"] == first[name]["lm_calls"]  # requests, cache hits included


def test_a_cell_killed_after_its_search_resumes_without_paying(tmp_path):
    cfg = config(tmp_path, optimizers=["labeled_fewshot"], baselines=[])
    first = suite(cfg, ScriptedLM(respond))[0]
    cell = cfg.out / "toy" / "seed0" / "labeled_fewshot-b60"
    assert (cell / "search" / "result.json").exists()  # evo's own run record, apart
    (cell / "result.json").unlink()  # killed during the test pass
    lm = ScriptedLM(respond)
    again = suite(cfg, lm)[0]
    assert not lm.calls and again["test"] == first["test"] and again["resumed"]
    with pytest.raises(evo.DataError, match="use another --out"):
        suite(config(tmp_path, optimizers=["labeled_fewshot"], baselines=[], n_test=10),
              ScriptedLM(respond))
    # Same sizes, other rows (a dataset or parser that changed): the stale result is refused.
    other = Task("toy", *DATA.split([cfg.n_train, cfg.n_val, cfg.n_test], seed=1))
    with pytest.raises(evo.DataError, match="other train/val/test data"):
        bench.run_suite(cfg, lm=ScriptedLM(respond), load=lambda name, seed: other,
                        log=lambda line: None)


def unparseable_zero_shot(req):
    """DSPy's zero-shot replies are unparseable (more than DSPy's max_errors of 10)."""
    last = req.messages[-1].content
    if "[[ ## text ## ]]" in last and sum(m.role == "user" for m in req.messages) == 1:
        return "I think it is about movies."
    return respond(req)


def test_every_dspy_optimizer_runs_through_parse_failures_on_the_shared_ledger(tmp_path):
    names = ["dspy.gepa", "dspy.miprov2", "dspy.copro", "dspy.bootstrap_random_search"]
    cfg = config(tmp_path, optimizers=names, baselines=["dspy.baseline"], budgets=[40])
    results = {r["optimizer"]: r for r in suite(cfg, ScriptedLM(unparseable_zero_shot))}
    assert results["dspy.baseline"]["test"] == 0.0
    for name in names:
        r = results[name]
        assert r["lm_calls"] > 0 and r["metric_calls"] > 0, name
        assert not (cfg.out / "toy" / "seed0" / f"{name}-b40" / "error.json").exists()
    assert results["dspy.gepa"]["over_budget"] == 0  # GEPA stops at max_metric_calls
    assert results["dspy.bootstrap_random_search"]["test"] == 1.0  # its demos fix the format


def test_seeds_come_first_in_run_order_and_bad_configs_are_one_error(tmp_path):
    cfg = config(tmp_path, tasks=["a", "b"], seeds=[0, 1], baselines=[])
    assert [(t, s) for t, s, _, _ in cfg.cells()][:4] == [("a", 0), ("a", 0), ("b", 0), ("b", 0)]
    with pytest.raises(ValueError, match="unknown optimizers \\['dspy.nope'\\]"):
        config(tmp_path, optimizers=["dspy.nope"])
    bad = tmp_path / "bad.toml"
    bad.write_text("tasks = [\n")
    with pytest.raises(evo.DataError, match="bad.toml"):
        bench.BenchConfig.load(bad)


def test_cli_bench_report_only_prints_the_table(tmp_path, capsys):
    cfg = config(tmp_path)
    suite(cfg, ScriptedLM(respond))
    assert evo.cli.main(["bench", "--out", str(cfg.out), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "| toy | labeled_fewshot |" in out and "accuracy_vs_calls.png" in out
    assert evo.cli.main(["bench", "--out", str(tmp_path / "empty"), "--report-only"]) == 2
    assert "no run results" in capsys.readouterr().err


def test_readme_extension_a_dspy_optimizer_is_one_function(tmp_path, monkeypatch):
    def dspy_labeled(student, train, val, metric, budget, seed, lms):
        return dspy.LabeledFewShot(k=4).compile(student, trainset=train)

    monkeypatch.setitem(bench.DSPY_OPTIMIZERS, "dspy.labeled_fewshot", dspy_labeled)
    cfg = config(tmp_path, optimizers=["dspy.labeled_fewshot"], baselines=[])
    (result,) = suite(cfg, ScriptedLM(respond))
    assert result["test"] == 1.0 and len(result["program"]["self"]["demos"]) == 4


def result(seed, optimizer, scores, *, side="dspy", metric_calls=300, over=0):
    return {"task": "toy", "seed": seed, "optimizer": optimizer, "side": side, "budget": 300,
            "test_scores": scores, "test": sum(scores) / len(scores), "majority": 0.5,
            "metric_calls": metric_calls, "over_budget": over, "lm_calls": 10,
            "prompt_tokens": 1000, "wall_s": 1.0, "lm_share": 1.0, "resumed": False}


def test_table_marks_an_overshoot_over_seeds_as_the_worst_seeds():
    rows = bench.summarize([result(0, "dspy.a", [1.0, 0.0], metric_calls=415, over=115),
                            result(1, "dspy.a", [1.0, 0.0], metric_calls=262),
                            result(0, "dspy.b", [1.0, 0.0], metric_calls=330, over=30)])
    lines = {line.split(" | ")[1]: line for line in bench.table(rows).splitlines()
             if line.startswith("| toy | dspy.")}
    assert "| 338 (**+115 over**, worst seed) |" in lines["dspy.a"]  # mean 338, max overshoot
    assert "| 330 (**+30 over**) |" in lines["dspy.b"]


def test_head_to_head_pairs_evo_and_dspy_over_the_seeds_both_ran():
    results = [result(0, "evolution", [1, 1, 1, 0], side="evo"),
               result(1, "evolution", [1, 1, 0, 0], side="evo"),
               result(0, "dspy.a", [0, 1, 0, 1]),  # seed 0 only
               result(0, "dspy.b", [1, 1, 0, 0]), result(1, "dspy.b", [0, 1, 1, 0]),
               {**result(0, "baseline", [0, 0, 0, 0], side="evo"), "budget": 0}]
    matches = {m.comparison.a: m for m in bench.head_to_head(results)}
    assert set(matches) == {"dspy.a", "dspy.b"}  # evo vs DSPy only: no baseline, no DSPy-DSPy
    a, b = matches["dspy.a"], matches["dspy.b"]
    assert a.seeds == (0,) and a.comparison.n == 4 and a.comparison.b == "evolution"
    assert a.comparison.b_minus_a == pytest.approx(0.25)
    assert (a.comparison.b_wins, a.comparison.a_wins) == (["seed0:0", "seed0:2"], ["seed0:3"])
    assert b.seeds == (0, 1) and b.comparison.n == 8
    assert b.comparison.b_minus_a == pytest.approx((5 - 4) / 8)
    text = bench.head_to_head_table(list(matches.values()))
    assert "| toy | evolution − dspy.b | 300 | 0, 1 | 8 | +0.125 [" in text


@pytest.mark.parametrize("field, value", [("seed", None), ("test_scores", []),
                                          ("test_scores", "abc"), ("budget", "40"),
                                          ("metric_calls", "x"), ("task", ["a"])])
def test_a_result_file_of_the_wrong_shape_is_one_error_naming_it(tmp_path, field, value):
    good = result(0, "evolution", [1.0, 0.0], side="evo")
    bad = {**good, field: value} if value is not None else {
        k: v for k, v in good.items() if k != field}
    for i, data in enumerate((good, bad)):
        cell = tmp_path / "toy" / f"seed{i}" / "evolution-b300"
        cell.mkdir(parents=True)
        (cell / "result.json").write_text(json.dumps(data))
    with pytest.raises(evo.DamagedFileError, match=f"seed1.*result.json.*{field}"):
        bench.load_results(tmp_path)


def test_names_from_result_files_cannot_break_the_tables():
    rows = bench.summarize([{**result(0, "dspy.a", [1.0, 0.0]), "task": "to|y\nx"}])
    line = next(line for line in bench.table(rows).splitlines() if "dspy.a" in line)
    assert line.startswith("| to\\|y x | dspy.a |") and line.count(" | ") == 11


def test_the_table_shows_unspent_budget_and_the_candidates_an_evo_search_assessed(tmp_path):
    for seed, n in ((0, 21), (1, 17)):
        cell = tmp_path / "toy" / f"seed{seed}" / "evolution-b300"
        (cell / "search").mkdir(parents=True)
        (cell / "result.json").write_text(json.dumps(
            result(seed, "evolution", [1.0, 0.0], side="evo", metric_calls=296)))
        (cell / "search" / "result.json").write_text(json.dumps({"summary": {"candidates": n}}))
    cell = tmp_path / "toy" / "seed0" / "dspy.a-b300"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps(result(0, "dspy.a", [1.0, 0.0])))
    text = bench.table(bench.summarize(bench.load_results(tmp_path)))
    evo_line = next(line for line in text.splitlines() if "| evolution |" in line)
    dspy_line = next(line for line in text.splitlines() if "| dspy.a |" in line)
    assert "| 296 | 4 | 19 |" in evo_line  # metric calls, unspent, candidates (mean of 21, 17)
    assert "| – |" in dspy_line
