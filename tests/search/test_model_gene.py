"""Model choice as a gene: a search over a ModelChoice explores its models, and the result's
(accuracy, cost) Pareto front holds the cheap-but-worse and the dear-but-better programs."""

import random

import pytest

import evo
from evo.lm import ModelChoice, ScriptedLM
from evo.search import genome as G
from evo.testing import TRAIN, VAL, Killed, assert_same_run, dying_lm, program

PRICES = {"small": (0.1, 0.1), "large": (1.0, 2.0)}


def small_respond(req):  # a weak model: always the same label
    return "label: neg"


def large_respond(req):  # a strong one: reads the text
    return "label: " + ("pos" if "good" in req.messages[-1].content else "neg")


def choice(small=None, prices=PRICES):
    return ModelChoice({"small": small or ScriptedLM(small_respond, model_id="s"),
                        "large": ScriptedLM(large_respond, model_id="l")}, prices=prices)


def search(lm, *, settings=False, run_dir=None, objectives=("accuracy",), budget=150):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=budget), knn=False, encoder="hashing",
                        settings=settings, max_demos=2, objectives=objectives)
    return evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, cache=False,
                        run_dir=run_dir)


@pytest.mark.parametrize("settings", [False, True])
def test_the_search_explores_both_models_and_the_front_holds_both(settings):
    lm = choice()
    result = search(lm, settings=settings)
    seed = result.candidates[0]
    assert seed.program.model is None and G.settings_of(seed.genome).model == 0  # default first
    models = {c.program.model for c in result.candidates}
    assert models == {None, "large"}  # the gene moved
    assert len(lm.lms["small"].calls) and len(lm.lms["large"].calls)
    front = result.pareto_front(objective="cost")
    assert [c.program.model for c in front] == [None, "large"]  # cheapest first
    cheap, dear = front
    assert cheap.val_score < dear.val_score and result.cost(cheap) < result.cost(dear)
    assert result.best.model == "large" and result.best_val == 1.0
    # the default objective is still accuracy vs prompt length
    assert result.pareto_front() == result.tradeoff()


def test_without_prices_the_cost_is_tokens_per_example():
    result = search(choice(prices=None))
    seed = result.candidates[0]
    cells = [c for (row, _), c in result.matrix.cells.items() if row == seed.id]
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in cells) / len(cells)
    assert result.cost(seed) == pytest.approx(tokens) and tokens > 0


def test_cost_as_the_search_objective():
    result = search(choice(), objectives=("accuracy", "cost"))
    assert {c.program.model for c in result.pareto_front(objective="cost")} == {None, "large"}
    with pytest.raises(evo.errors.ConfigError, match="objective must be"):
        result.pareto_front(objective="latency")


def test_a_plain_lm_gives_no_model_gene():
    result = search(ScriptedLM(large_respond))
    assert all(G.settings_of(c.genome) is None for c in result.candidates)
    assert all(c.program.model is None for c in result.candidates)


def test_the_model_gene_in_the_genome():
    lm = choice()
    space = G.SettingsSpace.for_program(program(), scores_choices=True, models=lm.names,
                                        flags=False)
    archive = G.Archive(program(), tuple(TRAIN), max_demos=2, settings=space)
    seed = archive.seed_genome()
    assert seed[-5:] == [G.SETTINGS_MARK, 0, 0, 0, 0]
    assert G.key(seed).settings == G.Settings("generate", False, False, 0)
    rng = random.Random(0)
    moved = G.mutate_settings(list(seed), archive, rng)
    assert G.settings_of(moved).model == 1 and archive.program(moved).model == "large"
    assert archive.program(seed) == program()  # the seed is the user's program as given
    back = G.mutate_settings(list(moved), archive, rng)
    assert G.settings_of(back).model == 0
    children = {G.settings_of(G.crossover(seed, moved, archive, random.Random(i))).model
                for i in range(20)}
    assert children == {0, 1}
    broken = list(moved)
    broken[-1] = 7  # out of range: repaired into the choice
    assert G.settings_of(G.repair(broken, archive, rng)).model == 1
    with pytest.raises(ValueError, match="'xl' is not one of the task LM's models"):
        G.Archive(program().model_copy(update={"model": "xl"}), tuple(TRAIN), settings=space)


def test_flags_and_model_together():
    space = G.SettingsSpace.for_program(program(), scores_choices=True, models=("a", "b"))
    options = space.options()
    assert options[0] == G.Settings(model=0) and G.Settings(model=1) in options
    assert G.Settings("rank", True, False, 1) in options
    assert not any(s.model is None for s in options)
    assert G.SettingsSpace.for_program(program(), scores_choices=True, models=("a",)).models == ()


def test_a_killed_search_resumes_to_the_same_result_and_costs(tmp_path):
    whole = search(choice(), run_dir=tmp_path / "whole")
    for n in (4, 9):
        dying = dying_lm(small_respond, n)
        dying.model_id = "s"  # the same model, dying on its n-th call
        with pytest.raises(Killed):
            search(choice(small=dying), run_dir=tmp_path / "killed")
    resumed = search(choice(), run_dir=tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert len(resumed.sittings) == 3
    assert [whole.cost(c) for c in whole.candidates] == \
        [resumed.cost(c) for c in resumed.candidates]
    assert [c.id for c in resumed.pareto_front(objective="cost")] == \
        [c.id for c in whole.pareto_front(objective="cost")]
