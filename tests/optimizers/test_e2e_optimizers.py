"""Every optimizer end to end on the real embedded model (0.5B via llama.cpp), on TREC, through
`evo run --optimizer NAME`, with a tiny budget: the shell path a user takes, in CI."""

import json

import pytest

import evo
from evo.cli import main

pytestmark = [pytest.mark.local_lm, pytest.mark.network, pytest.mark.slow]

# Small settings so each run takes seconds to a minute on 2 cores.
SETTINGS = {
    "gepa": ["--set", "max_merge_invocations=1"],
    "miprov2": ["--set", "num_candidates=3", "--set", "num_trials=3",
                "--set", "minibatch_size=3"],
    "copro": ["--set", "breadth=2", "--set", "depth=1"],
    "bootstrap_random_search": ["--set", "num_candidate_programs=1"],
    "ga": ["--set", "population_size=2"],
    "de": ["--set", "population_size=3"],
    "simba": ["--set", "max_steps=2"],
    "infer_rules": ["--set", "num_candidates=2", "--set", "num_rules=3"],
}


@pytest.mark.parametrize("name", evo.optimizers.names())
def test_optimizer_runs_on_the_local_model(name, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "run"
    code = main(["run", "--task", "trec", "--n-train", "20", "--n-val", "6", "--n-test", "6",
                 "--budget", "30", "--seed", "0", "--optimizer", name, *SETTINGS.get(name, []),
                 "--out", str(out), "--cache", str(tmp_path / "cache.sqlite"), "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert search["optimizer"] == name
    assert search["metric_calls"] <= 30 and search["best_val"] >= search["baseline_val"]
    assert 0 <= report["optimized"] <= 1
    assert evo.load_program(out / "best.json") is not None
