"""The benchmark script runs (quick sizes) and every row carries a ratio: keeps it from rotting.
No timing is asserted here; the figures live in the README and come from `make bench`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmarks_run_and_report_ratios(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    suites = {r["benchmark"].split()[0].lower() for r in rows}
    assert len(rows) >= 8, proc.stdout
    assert all(r["ours_s"] > 0 and r["reference_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert "| benchmark |" in proc.stdout and len(suites) >= 3


def test_the_agent_feedback_benchmark_runs_and_reports_a_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agent_feedback.py"),
                           "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("| 200 |")]
    assert row.rstrip(" |").endswith("x")
