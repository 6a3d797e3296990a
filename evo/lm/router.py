"""Model choice: one LM over several named LMs, so a program can choose which answers it.

A :class:`ModelChoice` is an :class:`~evo.lm.base.LM` whose members are other LMs under short
names (``{"small": local("qwen2.5-coder-0.5b"), "large": local("qwen2.5-1.5b")}``). A request
says which member answers in :attr:`~evo.lm.base.LMRequest.model` (a program's ``model``
setting; empty: the first, the default). Given as a search's task LM, its names become a gene
of the genome (:class:`evo.search.genome.SettingsSpace`), and what each candidate's answers
cost (tokens, or $ at ``prices``) is a second objective beside accuracy
(``SearchResult.pareto_front(objective="cost")``).

>>> from evo.lm.scripted import ScriptedLM
>>> lm = ModelChoice({"small": ScriptedLM({}, model_id="a"), "large": ScriptedLM({}, model_id="b")},
...                  prices={"small": (0.1, 0.2), "large": (1.0, 2.0)})
>>> lm.names, lm.default, lm.cost("large", 1000, 500)
(('small', 'large'), 'small', 2.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from evo.errors import ConfigError
from evo.lm.base import LM, LMRequest, LMRequestError, LMResponse, scores_choices

__all__ = ["ModelChoice", "model_names"]


class ModelChoice:
    """An LM over named LMs: :meth:`complete` sends each request to the member its
    ``model`` names (``""``: :attr:`default`, the first). An unknown name is an
    :class:`~evo.lm.base.LMRequestError` naming it and the members (a failed cell, journaled
    for good: asking again cannot help).

    ``prices`` gives a member's $ per 1000 prompt and per 1000 completion tokens
    (:meth:`cost`); a member without a price costs its tokens. The backend answers label
    scoring (``scores_choices``) and serves calls in parallel (``concurrent``) only when every
    member does; its ``model_id`` names every member (the cache and journal key a request by it
    and by the member's name)."""

    def __init__(self, lms: Mapping[str, LM], *,
                 prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        if not isinstance(lms, Mapping) or not lms:
            raise ConfigError("ModelChoice needs a mapping of at least one name to an LM, e.g. "
                              "ModelChoice({'small': lm_a, 'large': lm_b})")
        for name, lm in lms.items():
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ConfigError(f"ModelChoice: model name {name!r} must be a non-empty string "
                                  "without surrounding spaces")
            if not isinstance(getattr(lm, "model_id", None), str) or \
                    not callable(getattr(lm, "complete", None)):
                raise ConfigError(f"ModelChoice: {name!r} is {type(lm).__name__}, not an LM (it "
                                  "needs a model_id and a complete(request) method)")
        self.lms: dict[str, LM] = dict(lms)
        self.prices: dict[str, tuple[float, float]] = {}
        for name, price in (prices or {}).items():
            if name not in self.lms:
                raise ConfigError(f"ModelChoice: a price for {name!r}, which is not one of the "
                                  f"models {list(self.lms)}")
            try:
                pair = tuple(float(p) for p in price)
            except (TypeError, ValueError):
                pair = ()
            if len(pair) != 2 or not all(math.isfinite(p) and p >= 0 for p in pair):
                raise ConfigError(f"ModelChoice: the price of {name!r} must be two numbers >= 0 "
                                  f"($ per 1000 prompt and completion tokens), got {price!r}")
            self.prices[name] = pair  # type: ignore[assignment]
        self.concurrent = all(getattr(lm, "concurrent", False) for lm in self.lms.values())
        self.scores_choices = all(scores_choices(lm) for lm in self.lms.values())
        owns = [getattr(lm, "max_concurrency", None) for lm in self.lms.values()]
        owns = [n for n in owns if isinstance(n, int) and not isinstance(n, bool) and n >= 1]
        # the fewest any member serves at once: the session keeps no more than that in flight
        self.max_concurrency: int | None = min(owns) if owns else None

    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, the default first."""
        return tuple(self.lms)

    @property
    def default(self) -> str:
        """The member that answers a request naming none."""
        return self.names[0]

    @property
    def model_id(self) -> str:
        """Every member, as ``choice(name=model_id, ...)``; a served member's URL is added
        (two servers under one model name are not one model)."""
        parts = []
        for name, lm in self.lms.items():
            ep = getattr(lm, "endpoint", None)
            where = f"@{str(ep).rstrip('/')}" if ep and "://" in str(ep) else ""
            parts.append(f"{name}={lm.model_id}{where}")
        return f"choice({', '.join(parts)})"

    def member(self, name: str) -> LM:
        """The LM named ``name`` (``""``: the default); an unknown name is an
        :class:`~evo.lm.base.LMRequestError` naming the members."""
        lm = self.lms.get(name or self.default)
        if lm is None:
            raise LMRequestError(f"unknown model {name!r}: this ModelChoice has "
                                 f"{', '.join(map(repr, self.names))}")
        return lm

    def complete(self, request: LMRequest) -> LMResponse:
        """The answer of the member ``request.model`` names (the request passed on without
        the name: a member knows nothing of the choice)."""
        lm = self.member(request.model)
        return lm.complete(dataclasses.replace(request, model="") if request.model else request)

    def cost(self, name: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What a call to ``name`` (``""``: the default) of these token counts costs, in $ at
        its price; None when it has no price (the caller then counts tokens)."""
        self.member(name)  # an unknown name is said as such
        price = self.prices.get(name or self.default)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1000.0

    def __repr__(self) -> str:
        return f"ModelChoice({self.model_id!r})"


def model_names(lm: object) -> tuple[str, ...]:
    """The names a program may choose among on ``lm`` (an LM or an LM session): a
    :class:`ModelChoice`'s, else none."""
    lm = getattr(lm, "lm", lm) if not isinstance(lm, ModelChoice) else lm
    return lm.names if isinstance(lm, ModelChoice) else ()
