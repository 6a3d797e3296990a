"""Runs you can trust, on the real embedded model (Qwen2.5-Coder-0.5B via llama.cpp), in CI.

A real `evo run` on TREC is killed with SIGKILL at random moments, several times, and resumed
with `evo run --resume`: the result is the uninterrupted run's, and the ledger shows no LM call
paid twice. The run's report renders in headless Chromium with its plots; `evo run --dry-run`
projects the run with the model's tokenizer; `evo compare` reproduces the run's test figures.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evo.cli import main
from evo.lm.journal import Journal

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from evo.testing import assert_same_run
from resume import kill_at_random_moments  # noqa: E402

pytestmark = [pytest.mark.local_lm, pytest.mark.network]

ARGS = ["--task", "trec", "--n-train", "30", "--n-val", "10", "--n-test", "12", "--budget", "45",
        "--max-demos", "2", "--population", "3", "--seed", "0", "--no-cache", "--quiet"]


def evo_run(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evo.cli", "run", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("store-e2e")
    whole = evo_run(*ARGS, "--out", str(root / "whole"))
    out, err = whole.communicate(timeout=900)
    assert whole.returncode == 0, err[-3000:]
    return root


def test_sigkilled_real_run_resumes_to_the_same_result(runs):
    whole, killed = runs / "whole", runs / "killed"
    paid_whole = sum(s["paid"] for s in Journal(whole / "journal.sqlite").ledger(None))
    kills = kill_at_random_moments(lambda run, i: evo_run(*ARGS, "--out", str(run)), killed,
                                   random.Random(11), 3, paid_whole // 5)
    assert kills == 3
    last = evo_run("--resume", str(killed), "--quiet")
    out, err = last.communicate(timeout=900)
    assert last.returncode == 0, err[-3000:]
    assert_same_run(whole, killed)
    a, b = (json.loads((d / "report.json").read_text()) for d in (whole, killed))
    assert (a["baseline_scores"], a["optimized_scores"]) == (b["baseline_scores"],
                                                              b["optimized_scores"])
    ledger = Journal(killed / "journal.sqlite").ledger(None)  # search and test pass
    assert len(ledger) == 4 and all(s["paid"] for s in ledger[:3])
    # every request was paid once across the four sittings: as many as the whole run paid
    assert sum(s["paid"] for s in ledger) == paid_whole
    assert sum(s["answers"] for s in ledger) == \
        sum(s["answers"] for s in Journal(whole / "journal.sqlite").ledger(None))


def test_report_of_a_real_trec_run_opens_in_a_browser(runs, tmp_path, screenshot):
    page = runs / "whole" / "report.html"  # written by `evo run`
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3 and "From the seed to the best" in html
    img = screenshot(page, tmp_path / "shot.png")
    red = np.all(np.abs(img.astype(int) - [0xd0, 0x53, 0x4a]) < 30, axis=-1)
    assert red.sum() > 200
    if os.environ.get("EVO_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "shot.png", os.environ["EVO_KEEP_SCREENSHOT"])


def test_dry_run_projects_with_the_model_tokenizer(capsys):
    pytest.importorskip("llama_cpp")
    assert main(["run", *ARGS, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing is sent to the LM" in out and "the model's tokenizer" in out
    assert "task LM calls                   at most 45" in out


def test_compare_reproduces_the_runs_test_figures(runs, capsys):
    whole = runs / "whole"
    data = ARGS[:ARGS.index("--budget")] + ["--seed", "0", "--cache", str(runs / "ab.sqlite")]
    assert main(["compare", str(whole / "baseline.json"), str(whole / "best.json"), *data,
                 "--out", str(runs / "ab.json")]) == 0
    ab = json.loads((runs / "ab.json").read_text())
    report = json.loads((whole / "report.json").read_text())
    assert ab["example_ids"] == report["example_ids"]
    # Paid afresh (its own cache), the replies can differ only where llama.cpp's reuse of a
    # different prompt prefix nudged a near-tie: nearly every example scores the same.
    same = sum(x == y for x, y in zip(ab["scores_a"] + ab["scores_b"],
                                      report["baseline_scores"] + report["optimized_scores"]))
    assert same >= 0.9 * 2 * report["n"]
    assert "verdict" in capsys.readouterr().out
