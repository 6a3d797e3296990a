"""The return on an optimization: its arithmetic and its table."""

from __future__ import annotations

import pytest

from evo.agents.roi import ROI, roi
from evo.agents.versions import paired_decision
from evo.errors import ConfigError
from evo.lm.session import Usage


@pytest.fixture
def decision():
    return paired_decision([0.0] * 30 + [1.0] * 10, [1.0] * 40, [f"e{i}" for i in range(40)],
                           version=2)


def test_roi_arithmetic(decision):
    usage = Usage(calls=377, cache_hits=50, prompt_tokens=120_000, completion_tokens=8_000)
    r = roi(decision, usage.to_dict(), metric_calls=266, wall_s=652.4,
            price_per_1k_prompt=0.5, price_per_1k_completion=1.5, served_during=31)
    assert r.dollars == pytest.approx(120 * 0.5 + 8 * 1.5)  # 72.0
    assert (r.lm_calls, r.metric_calls, r.prompt_tokens, r.completion_tokens, r.tokens) == (
        377, 266, 120_000, 8_000, 128_000)
    assert (r.gain, r.ci_low, r.ci_high, r.p_value, r.n) == (
        decision.difference, decision.ci_low, decision.ci_high, decision.p_value, 40)
    assert r.gain == pytest.approx(0.75) and (r.wall_s, r.served_during) == (652.4, 31)
    assert ROI(**r.to_dict()) == r


def test_dollars_need_a_price(decision):
    usage = {"calls": 3, "prompt_tokens": 2_000, "completion_tokens": 1_000}
    assert roi(decision, usage, metric_calls=3, wall_s=1.0).dollars is None
    assert roi(decision, usage, metric_calls=3, wall_s=1.0,
               price_per_1k_completion=0.25).dollars == pytest.approx(0.25)  # prompt free
    assert roi(decision, usage, metric_calls=3, wall_s=1.0,
               price_per_1k_prompt=0.0).dollars == 0.0
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ConfigError, match="price_per_1k_prompt"):
            roi(decision, usage, metric_calls=3, wall_s=1.0, price_per_1k_prompt=bad)


def test_table_is_aligned(decision):
    r = roi(decision, {"calls": 1_234, "prompt_tokens": 56_789, "completion_tokens": 4_321},
            metric_calls=300, wall_s=61.6, price_per_1k_prompt=0.001,
            price_per_1k_completion=0.002, served_during=7)
    lines = str(r).splitlines()
    assert len(lines) == 7
    starts = {len(line) - len(line.split("  ")[-1].lstrip()) for line in lines}
    assert len(starts) == 1  # every value starts in the same column
    text = str(r)
    assert "+0.750 [" in text and "n = 40" in text and "1,234" in text
    assert "56,789 / 4,321" in text and "$0.0654" in text and "62 s" in text
    assert "no price given" in str(roi(decision, {}, metric_calls=0, wall_s=0.0))
