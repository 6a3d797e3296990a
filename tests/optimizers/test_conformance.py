"""The optimizer conformance suite (evo.testing.conformance): every built-in optimizer and a
user-written one pass it; optimizers that overspend, are not reproducible or emit unknown events
fail it, each with a message that says what went wrong."""

import random

import pytest

import evo
from evo.optimizers import registry
from evo.testing import HASHED, SENTIMENT, conformance
from evo.testing.conformance import OptimizerContract

BUILTIN = evo.optimizers.names()  # before this module registers its own


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_optimizer_conforms(name):
    report = conformance.assert_conforms(name)
    assert report.ok and report.figures["metric_calls"] <= 60
    assert report.figures["killed_at"] > 2  # the kill fell inside the search, after the seed


class BestOfRandomSets(evo.SearchConfig):
    """docs/extending.md's example optimizer: a few random demo sets, the best on validation."""

    name = "best_of_random_sets"
    sets: int = 5

    def run(self, search: evo.Search) -> None:
        for _ in range(self.sets):
            genome = search.archive.genome(0, search.archive.random_demos(search.rng, 4))
            if search.can_validate() and not search.known(genome):
                search.validate(search.add(genome, (0,), "random_demos"))


@pytest.fixture
def registered():
    evo.register_optimizer(BestOfRandomSets)
    yield BestOfRandomSets.name
    # the registry is global: take it back out so other modules' listings stay the built-ins
    registry._OPTIMIZERS.pop(BestOfRandomSets.name, None)


def test_a_user_optimizer_registered_by_name_conforms(registered):
    assert registered in evo.optimizers.names()
    report = conformance.assert_conforms(registered, budget=40)
    assert report.figures["candidates"] > 1


class TestBestOfRandomSetsContract(OptimizerContract):
    """The suite as a pytest class: three lines for a user's optimizer."""

    optimizer = BestOfRandomSets


# ---- optimizers the suite must reject -------------------------------------------------------
class Overspends(BestOfRandomSets):
    """Validates within the budget, then scores its best once more outside it."""

    name = "overspends"

    def run(self, search: evo.Search) -> None:
        super().run(search)
        evo.evaluate(search.best.program, list(search.valset), lm=search.task_session)


class Unseeded(BestOfRandomSets):
    """Draws its demo sets from the global, unseeded ``random``: not reproducible."""

    name = "unseeded"

    def run(self, search: evo.Search) -> None:
        pool = range(len(search.archive.pool))
        for _ in range(self.sets):
            genome = search.archive.genome(0, random.sample(pool, 4))
            if search.can_validate() and not search.known(genome):
                search.validate(search.add(genome, (0,), "random_demos"))


class Chatty(BestOfRandomSets):
    """Emits an event kind nobody declared."""

    name = "chatty"

    def run(self, search: evo.Search) -> None:
        search.emit("my_progress_note", done=True)
        super().run(search)


def test_an_optimizer_that_spends_outside_the_budget_fails():
    report = conformance.check(Overspends)
    assert {v.prop for v in report.violations} == {"budget"}
    assert "task requests for 48 metric calls" in str(report)
    assert "bypassed the budget" in str(report) and "cell(s) paid twice" in str(report)
    with pytest.raises(AssertionError, match=r"\[budget\] the model received \d+ task requests"):
        conformance.assert_conforms(Overspends)


def test_an_unseeded_optimizer_fails_reproducibility_and_resume():
    report = conformance.check(Unseeded)
    assert {v.prop for v in report.violations} >= {"reproducible", "resume"}
    assert not report.failed("budget") and not report.failed("events")
    assert "same seed, candidates differ from #1" in str(report)
    with pytest.raises(AssertionError, match="same seed"):
        conformance.assert_conforms(Unseeded, properties=("reproducible",))


def test_an_undeclared_event_kind_fails_until_it_is_declared():
    report = conformance.check(Chatty, properties=("events",))
    assert "unknown event kind(s) ['my_progress_note']" in str(report)
    assert conformance.check(Chatty, properties=("events",),
                             extra_kinds=("my_progress_note",)).ok


def test_the_contract_class_reports_per_property():
    class TestUnseeded(OptimizerContract):
        optimizer = Unseeded

    case = TestUnseeded()
    case.test_budget_is_never_exceeded()
    case.test_events_are_well_formed()
    with pytest.raises(AssertionError, match="optimizer 'unseeded':\n  \\[reproducible\\]"):
        case.test_same_seed_reproduces_the_search()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown properties"):
        conformance.check("evolution", properties=("speed",))
    with pytest.raises(TypeError, match="needs an optimizer name"):
        conformance.check(42)


def test_the_scripted_tasks():
    assert len(SENTIMENT.train) == 40 and SENTIMENT.labels == ("pos", "neg")
    result = evo.optimize(SENTIMENT.program(), SENTIMENT.train, SENTIMENT.val, lm=SENTIMENT.lm(),
                          optimizer=evo.Evolution(budget=evo.Budget(metric_calls=120),
                                                  knn=False, encoder="hashing", holdout=0.0),
                          cache=False)
    assert result.baseline_val == 0.5 and result.best_val == 1.0
    # the hashed model scores prompts apart: a search finds a better one than the seed
    result = evo.optimize(HASHED.program(), HASHED.train, HASHED.val, lm=HASHED.lm(),
                          optimizer=evo.optimizers.get("evolution",
                                                       budget=evo.Budget(metric_calls=60),
                                                       encoder="hashing"), cache=False)
    assert result.best_val > result.baseline_val
