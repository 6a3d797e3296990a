"""Label scoring through Ray actors: the :class:`RayLM` says whether its backend scores choices,
and a choices request and its ``choice_logprobs`` travel to the actor and back unchanged."""

from __future__ import annotations

import sys

import pytest

from evo.errors import ConfigError
from evo.integrations.ray import RayExecutor
from evo.lm import LMSession, ScriptedLM
from evo.lm.base import LMRequest, Message, scores_choices

ray = pytest.importorskip("ray")


class GenerateOnly(ScriptedLM):
    """A scripted backend that does not score choices."""

    scores_choices = False


def logprobs(request: LMRequest) -> list[float]:
    """A log-probability per choice, by its length (so the answer depends on the request)."""
    return [-float(len(c)) for c in request.choices]


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_choices_travel_through_ray_and_back(cluster) -> None:
    with RayExecutor(num_workers=1) as ex:
        scoring = ex.wrap(ScriptedLM({}, scores=logprobs))
        generating = ex.wrap(GenerateOnly({"": "Answer: yes"}))
        assert scores_choices(scoring) and not scores_choices(generating)
        request = LMRequest((Message("user", "which?"),), choices=("maybe", "no", "yes"),
                            prefill="Answer:")
        answer = LMSession(scoring, cache=None).complete(request)
        assert answer.choice_logprobs == (-5.0, -2.0, -3.0) and answer.text == "Answer: no"
        with pytest.raises(ConfigError, match="scores choices"):
            LMSession(generating, cache=None).complete(request)
