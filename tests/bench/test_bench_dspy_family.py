"""`evo bench`'s DSPy SIMBA and InferRules runners on the scripted LM: each fits its budget of
program runs, lands on the shared ledger, and InferRules' rules come from the prompt model."""

import pytest

import evo
from evo.lm import ScriptedLM

pytest.importorskip("dspy")
pytest.importorskip("matplotlib")

from test_bench import config, respond, suite  # noqa: E402  (after the importorskips)

NAMES = ["dspy.simba", "dspy.infer_rules"]


@pytest.mark.parametrize("budget", [40, 80])
def test_dspy_simba_and_infer_rules_run_within_the_budget_on_one_ledger(tmp_path, budget):
    cfg = config(tmp_path, optimizers=NAMES, baselines=[], budgets=[budget])
    results = {r["optimizer"]: r for r in suite(cfg, ScriptedLM(respond))}
    assert set(results) == set(NAMES)
    for name, r in results.items():
        assert 0 < r["metric_calls"] <= budget and r["over_budget"] == 0, name
        assert r["lm_calls"] > 0 and r["side"] == "dspy"
        assert not (cfg.out / "toy" / "seed0" / f"{name}-b{budget}" / "error.json").exists()
    rules = results["dspy.infer_rules"]
    assert rules["lm_by_purpose"].get("proposal", 0) >= 1  # rules from the prompt model
    assert rules["test"] == 1.0  # its bootstrapped demos fix the scripted model
    assert "Say pos when the text says good" in str(rules["program"])


def test_the_evo_side_of_both_runs_in_the_same_grid(tmp_path):
    assert {"simba", "infer_rules"} <= set(evo.optimizers.names())
    cfg = config(tmp_path, optimizers=["simba", "infer_rules"], baselines=[], budgets=[60])
    results = {r["optimizer"]: r for r in suite(cfg, ScriptedLM(respond))}
    assert all(r["metric_calls"] <= 60 and r["side"] == "evo" for r in results.values())
