"""ModelChoice: one LM over named LMs, dispatching on LMRequest.model; its key, costs and errors."""

import hashlib
import json

import pytest

from evo.data import Example
from evo.errors import ConfigError
from evo.lm import LMRequest, LMRequestError, LMSession, ModelChoice, ScriptedLM
from evo.lm.base import Message
from evo.metrics import exact_match
from evo.program import Program
from evo.search.evaluate import cell_cost, evaluate_program, predict_program


def choice(**kw):
    small = ScriptedLM(lambda r: "label: neg", model_id="s")
    large = ScriptedLM(lambda r: "label: pos", model_id="l")
    return ModelChoice({"small": small, "large": large}, **kw), small, large


def request(**kw):
    return LMRequest((Message("user", "text: hi"),), **kw)


def test_dispatches_on_the_request_model_the_default_first():
    lm, small, large = choice()
    assert lm.names == ("small", "large") and lm.default == "small"
    assert lm.complete(request()).text == "label: neg"
    assert lm.complete(request(model="large")).text == "label: pos"
    assert lm.complete(request(model="small")).text == "label: neg"
    assert (len(small.calls), len(large.calls)) == (2, 1)
    assert all(r.model == "" for r in small.calls + large.calls)  # members never see the name


def test_an_unknown_model_is_a_request_error_naming_it():
    lm, small, large = choice()
    with pytest.raises(LMRequestError, match=r"unknown model 'xl'.*'small', 'large'"):
        lm.complete(request(model="xl"))
    assert small.calls == [] and large.calls == []


def test_the_key_is_unchanged_without_a_model_and_names_it_with_one():
    req = request()
    old = {"model": "m", "messages": [["user", "text: hi"]], "max_tokens": 64,
           "temperature": 0.0, "stop": [], "seed": 0}
    assert req.key("m") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert request(model="large").key("m") != req.key("m")
    assert request(model="large").key("m") != request(model="small").key("m")


def test_capabilities_are_the_members_common_ones():
    lm, _, _ = choice()
    assert lm.scores_choices and lm.concurrent
    assert lm.model_id == "choice(small=s, large=l)"

    class Plain:
        model_id = "p"

        def complete(self, request):
            raise AssertionError

    mixed = ModelChoice({"a": ScriptedLM({}), "b": Plain()})
    assert not mixed.scores_choices and not mixed.concurrent


def test_costs_at_the_prices_else_none():
    lm, _, _ = choice(prices={"large": (1.0, 3.0)})
    assert lm.cost("large", 2000, 1000) == pytest.approx(5.0)
    assert lm.cost("small", 2000, 1000) is None
    assert lm.cost("", 10, 10) is None  # the default: small
    with pytest.raises(LMRequestError, match="unknown model 'xl'"):
        lm.cost("xl", 1, 1)


@pytest.mark.parametrize("lms, prices, match", [
    ({}, None, "at least one"),
    ({" a": ScriptedLM({})}, None, "surrounding spaces"),
    ({"a": object()}, None, "not an LM"),
    ({"a": ScriptedLM({})}, {"b": (1, 1)}, "not one of the models"),
    ({"a": ScriptedLM({})}, {"a": (1, -1)}, "two numbers >= 0"),
    ({"a": ScriptedLM({})}, {"a": "cheap"}, "two numbers >= 0"),
])
def test_bad_configuration_is_one_config_error(lms, prices, match):
    with pytest.raises(ConfigError, match=match):
        ModelChoice(lms, prices=prices)


EXAMPLES = [Example(inputs={"text": f"t{i}"}, outputs={"label": "pos"}) for i in range(3)]


def test_a_program_naming_a_model_is_answered_by_that_model_only():
    lm, small, large = choice(prices={"small": (0.1, 0.1), "large": (1.0, 2.0)})
    session = LMSession(lm, cache=None)
    program = Program(signature="text -> label", labels=["pos", "neg"], model="large")
    answers = predict_program(program, EXAMPLES, session)
    assert [a.outputs for a in answers] == [{"label": "pos"}] * 3
    assert small.calls == [] and len(large.calls) == 3
    scores, cells = evaluate_program(program, EXAMPLES, session, exact_match)
    assert list(scores) == [1.0] * 3
    assert all(c.prompt_tokens > 0 and c.completion_tokens == 2 for c in cells)
    # $ at large's price: prompt tokens at 1.0 and 2 completion tokens at 2.0 per 1000
    assert cell_cost(cells[0], session, "large") == pytest.approx(
        (cells[0].prompt_tokens * 1.0 + 2 * 2.0) / 1000)
    assert cell_cost(cells[0], ScriptedLM({}), "large") == cells[0].prompt_tokens + 2  # tokens


def test_an_unknown_model_fails_the_cells_with_a_clear_error_not_the_run():
    lm, small, large = choice()
    session = LMSession(lm, cache=None)
    program = Program(signature="text -> label", labels=["pos", "neg"], model="xl")
    scores, cells = evaluate_program(program, EXAMPLES, session, exact_match)
    assert list(scores) == [0.0] * 3
    assert all(c.kind == "lm: request error" and "unknown model 'xl'" in c.error for c in cells)
    assert small.calls == [] and large.calls == []
    assert session.unavailable is None  # a request error says nothing about the LM being up


def test_the_model_setting_is_saved_only_when_set():
    program = Program(signature="text -> label")
    assert "model" not in program.to_json()
    assert Program.model_validate(
        program.model_copy(update={"model": "large"}).to_json()).model == "large"
    with pytest.raises(ValueError, match="model ''"):
        Program(signature="text -> label", model="")
