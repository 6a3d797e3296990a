"""What one optimization returned for what it cost: the gain on held-out graded data (with its
interval and p-value, from the deploy decision) against metric calls, LM calls, tokens, dollars
at a given price, and wall time.

    >>> # print(roi(decision, usage.to_dict(), metric_calls=300, wall_s=652,
    >>> #           price_per_1k_prompt=0.00015, price_per_1k_completion=0.0006))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from evo.agents.versions import DeployDecision
from evo.analysis.compare import format_p
from evo.errors import ConfigError

__all__ = ["ROI", "roi"]


@dataclass(frozen=True)
class ROI:
    """The return on one optimization. ``gain`` = candidate mean - deployed mean on ``n``
    held-out graded examples ([``ci_low``, ``ci_high``] its 95% paired bootstrap interval);
    ``dollars`` is None when no price was given; ``served_during``: calls the agent served
    while the optimization ran."""

    gain: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    metric_calls: int
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    dollars: float | None
    wall_s: float
    served_during: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __str__(self) -> str:
        rows = [("gain (held-out, paired)",
                 f"{self.gain:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], "
                 f"{format_p(self.p_value)}, n = {self.n}"),
                ("metric calls", f"{self.metric_calls:,}"),
                ("LM calls", f"{self.lm_calls:,}"),
                ("tokens prompt / completion",
                 f"{self.prompt_tokens:,} / {self.completion_tokens:,}"),
                ("cost", "no price given" if self.dollars is None else f"${self.dollars:,.4f}"),
                ("wall time", f"{self.wall_s:,.0f} s"),
                ("calls served meanwhile", f"{self.served_during:,}")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def roi(decision: DeployDecision, usage: dict[str, Any], *, metric_calls: int, wall_s: float,
        price_per_1k_prompt: float | None = None, price_per_1k_completion: float | None = None,
        served_during: int = 0) -> ROI:
    """The ROI of the optimization that produced ``decision``; ``usage`` is the LM usage it
    spent (:meth:`evo.lm.session.Usage.to_dict`: paid ``calls`` and tokens; cache hits and
    replays cost nothing). Dollars = tokens / 1000 x the price per 1k tokens, when either price
    is given (a missing one counts as free); None when neither is."""
    for name, price in (("price_per_1k_prompt", price_per_1k_prompt),
                        ("price_per_1k_completion", price_per_1k_completion)):
        if price is not None and not (isinstance(price, int | float) and math.isfinite(price)
                                      and price >= 0):
            raise ConfigError(f"roi: {name} must be a number >= 0, got {price!r}")
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    dollars = None
    if price_per_1k_prompt is not None or price_per_1k_completion is not None:
        dollars = (prompt * (price_per_1k_prompt or 0.0)
                   + completion * (price_per_1k_completion or 0.0)) / 1000.0
    return ROI(gain=decision.difference, ci_low=decision.ci_low, ci_high=decision.ci_high,
               p_value=decision.p_value, n=decision.n, metric_calls=int(metric_calls),
               lm_calls=int(usage.get("calls", 0)), prompt_tokens=prompt,
               completion_tokens=completion, dollars=dollars, wall_s=float(wall_s),
               served_during=int(served_during))
