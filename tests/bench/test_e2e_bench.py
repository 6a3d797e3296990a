"""`evo bench` and `evo.optimize_module` on the real embedded model (0.5B via llama.cpp): evo and
DSPy's BootstrapFewShotWithRandomSearch on one TREC split, tiny budgets, in CI."""

import json

import pytest

from evo.cli import main

pytestmark = [pytest.mark.local_lm, pytest.mark.network, pytest.mark.slow]


def test_evo_bench_runs_evo_and_dspy_on_the_local_model_and_resumes(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    args = ["bench", "--tasks", "trec", "--optimizers", "labeled_fewshot",
            "dspy.bootstrap_random_search", "--budgets", "12", "--seeds", "0",
            "--n-train", "8", "--n-val", "4", "--n-test", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "in the LM" in out and "cache hits" in out  # the efficiency line of every search
    results = {p.parent.name: json.loads(p.read_text())
               for p in tmp_path.glob("trec/seed0/*/result.json")}
    assert set(results) == {"baseline", "dspy.baseline", "labeled_fewshot-b12",
                            "dspy.bootstrap_random_search-b12"}
    dspy_run = results["dspy.bootstrap_random_search-b12"]
    assert dspy_run["lm_by_purpose"]["dspy"] > 0 and dspy_run["metric_calls"] > 0
    assert (tmp_path / "accuracy_vs_calls.png").exists()
    assert "| trec | labeled_fewshot | 12 |" in (tmp_path / "table.md").read_text()
    # the same command again: every run is read back, nothing is paid
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before") == 4


def test_two_predictor_dspy_module_example_optimizes_and_round_trips(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("llama_cpp")
    example = Path(__file__).resolve().parents[2] / "examples" / "dspy_module.py"
    env = {**os.environ, "PYTHONPATH": str(example.parent.parent)}
    done = subprocess.run([sys.executable, str(example), "--budget", "8", "--n-val", "3",
                           "--n-test", "3"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reloaded into a fresh module" in done.stdout and "same answers" in done.stdout
    assert "[classify.predict]" in done.stdout and "[verify]" in done.stdout
