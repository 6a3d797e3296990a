"""Behaviour preservation: every optimizer, on the hash-scripted model of benchmarks/replay.py,
gives the fingerprint recorded before the package was restructured into layers (best program,
validation scores, metric calls, every candidate, the multiset of LM requests)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import replay  # noqa: E402

RECORDED = json.loads((ROOT / "benchmarks" / "results" / "replay.json").read_text())


def test_every_variant_is_recorded():
    assert sorted(RECORDED) == sorted(replay.VARIANTS)


@pytest.mark.parametrize("variant", sorted(replay.VARIANTS))
def test_search_is_the_recorded_one(variant):
    now = json.loads(json.dumps(replay.fingerprint(variant), sort_keys=True))
    before = RECORDED[variant]
    for key in ("best", "baseline_val", "best_val", "metric_calls", "lm_calls", "requests"):
        assert now[key] == before[key], key
    assert now["candidates"] == before["candidates"]
