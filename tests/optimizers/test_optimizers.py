"""The optimizer family on a scripted LM: each runs end to end through ``evo.optimize``, keeps
to its budget, never pays a cell twice, reproduces itself, and does what its paper says."""

import numpy as np
import pytest

import evo
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers.ensemble import vote_ensemble
from evo.optimizers.gepa import merge_genomes
from evo.search.engine import Search
from evo.testing import TEST, TRAIN, VAL, program
from evo.testing import respond as task_respond

GOOD = "<prompt>Say pos when the text says good, otherwise say neg.</prompt>"


def respond(req: LMRequest) -> str:
    if req.purpose == "proposal":
        return GOOD
    return task_respond(req)


def run(name, budget=200, lm=None, **params):
    params = {"encoder": "hashing", **params}
    lm = lm or ScriptedLM(respond)
    optimizer = evo.optimizers.get(name, budget=evo.Budget(metric_calls=budget), **params)
    return evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=optimizer, cache=False), lm


def task_calls(lm):
    return sum(r.purpose == "task" for r in lm.calls)


@pytest.mark.parametrize("name", evo.optimizers.names())
def test_every_optimizer_improves_within_budget_and_pays_each_cell_once(name):
    result, lm = run(name)
    assert result.optimizer == name
    # the seed answers "neg" to everything: its score is the share of "neg" among the
    # validation examples that choose (evolution holds a fifth of them out)
    held = 0 if result.confirmation is None else result.confirmation["n"]
    assert result.baseline_val == pytest.approx(0.5, abs=held / len(VAL))
    assert result.best_val == 1.0
    assert result.metric_calls <= 200
    # every task call is a distinct (prompt, example) cell: nothing paid twice (the preflight
    # is the one extra request)
    assert task_calls(lm) <= result.metric_calls + 1
    assert evo.evaluate(result.best, TEST, lm=lm, cache=False) == 1.0


@pytest.mark.parametrize("name", ["gepa", "miprov2", "ga", "ensemble"])
def test_same_seed_reproduces_the_same_search(name):
    a, _ = run(name)
    b, _ = run(name)
    assert [(c.genome, c.op, c.val_score) for c in a.candidates] == \
        [(c.genome, c.op, c.val_score) for c in b.candidates]
    assert a.instructions == b.instructions and a.metric_calls == b.metric_calls


def test_registry_names_aliases_and_errors():
    assert evo.optimizers.get("MIPROv2").name == "miprov2"
    assert isinstance(evo.optimizers.get("gepa", reflection_minibatch_size=5), evo.GEPA)
    with pytest.raises(ValueError, match="no optimizer named 'nope'.*gepa"):
        evo.optimizers.get("nope")


def test_labeled_fewshot_validates_k_random_labeled_demos():
    result, _ = run("labeled_fewshot", k=3)
    assert len(result.best.demos) == 3 and all(d in TRAIN for d in result.best.demos)
    assert result.metric_calls == 2 * len(VAL)


def test_bootstrap_fewshot_keeps_the_teachers_passing_traces():
    result, lm = run("bootstrap_fewshot", max_labeled_demos=0)
    # the zero-shot teacher answers "neg": only neg examples pass, in training order
    demos = result.best.demos
    assert [d.label for d in demos] == ["neg"] * 4
    assert list(demos) == [ex for ex in TRAIN if ex.label == "neg"][:4]
    assert result.metric_calls == 2 * len(VAL) + 8  # 8 training runs found 4 passing ones


def test_bootstrap_random_search_reuses_teacher_runs_across_rounds():
    result, lm = run("bootstrap_random_search", budget=400, num_candidate_programs=4)
    ops = [c.op for c in result.candidates]
    assert ops[0] == "seed" and "labeled_demos" in ops and ops.count("bootstrapped_demos") >= 3
    assert task_calls(lm) <= result.metric_calls + 1  # shuffled rounds reread paid runs


def test_bootstrapped_free_text_trace_becomes_a_trace_demo():
    archive = evo.search.genome.Archive(program(), tuple(TRAIN))
    ex = TRAIN[0]
    assert archive.demo_id(ex) == 0 and archive.demo_id(ex, dict(ex.outputs)) == 0
    i = archive.demo_id(ex, {"label": "neg" if ex.label == "pos" else "pos"})
    assert i == len(TRAIN) and archive.demo(i).inputs == ex.inputs
    assert archive.demo_id(ex, {"label": archive.demo(i).label}) == i  # added once


def test_knn_fewshot_tries_each_k():
    result, _ = run("knn_fewshot", ks=(1, 2))
    ks = sorted(c.program.knn.k for c in result.candidates if c.op == "knn_demos")
    assert ks == [1, 2, 4]
    with pytest.raises(ValueError, match="knn=True"):
        run("knn_fewshot", knn=False)


def test_gepa_reflects_on_training_minibatches_and_validates_strict_improvements():
    result, lm = run("gepa")
    reflections = [r for r in lm.calls if r.purpose == "reflection"]
    assert reflections and "Example 3" in reflections[0].messages[-1].content
    child = next(c for c in result.candidates if c.op == "reflection")
    assert child.accepted and "says good" in child.program.instruction
    mb = [e for e in result.events if "train_minibatch" in e]
    assert mb and all(len(e["train_minibatch"]) == 3 for e in mb)


def test_gepa_merge_takes_each_component_from_the_descendant_that_changed_it():
    search = _search(evo.GEPA(budget=evo.Budget(metric_calls=200), max_demos=2))
    a0 = search.archive
    i1, _ = a0.add_instruction("Say pos when the text says good.", {})
    ancestor = search.seed_candidate
    a = search.add(a0.genome(i1, []), (0,), "reflection")  # changed the instruction
    b = search.add(a0.genome(0, [0, 1]), (0,), "mutate")  # changed the demos
    for c in (a, b):
        search.validate(c)
    merged = merge_genomes(a, b, ancestor, search)
    assert evo.search.genome.key(merged) == (i1, (0, 1), 0)
    assert merge_genomes(a, a, ancestor, search) is None  # nothing new to merge


def test_miprov2_proposes_grounded_instructions_and_searches_combinations():
    result, lm = run("miprov2", budget=300)
    proposals = [r.messages[-1].content for r in lm.calls if r.purpose == "proposal"]
    assert any("Dataset summary" in p or "Task demos" in p for p in proposals)
    assert any("Tip:" in p for p in proposals) or "none" in str(result.instruction_origins)
    assert any(o.get("op") == "grounded_proposal" for o in result.instruction_origins)
    kinds = {e["event"] for e in result.events}
    assert {"demo_sets", "instructions"} <= kinds
    assert any(c.op == "mipro_trial" and c.accepted for c in result.candidates)
    light = evo.MIPROv2()
    assert light.sizes() == (6, 10) and evo.MIPROv2(auto="heavy").sizes() == (18, 27)
    assert evo.MIPROv2(auto="medium").sizes() == (12, 18)
    assert evo.MIPROv2(max_demos=0).sizes() == (6, 9)  # DSPy: one variable when zero-shot


def test_copro_feeds_back_attempts_sorted_by_score():
    answers = iter(f"<prompt>Classify each text carefully, variant {i}.</prompt>"
                   for i in range(100))

    def lm_respond(req):
        return next(answers) if req.purpose == "proposal" else task_respond(req)

    result, lm = run("copro", budget=30 * 8, lm=ScriptedLM(lm_respond), breadth=3, depth=2)
    later = [r.messages[-1].content for r in lm.calls if r.purpose == "proposal"][2:]
    assert later and "Instruction #1" in later[0]
    scores = [float(s) for s in
              __import__("re").findall(r"Resulting Score #\d+: ([\d.]+)", later[0])]
    assert scores == sorted(scores)
    assert result.metric_calls <= 240


@pytest.mark.parametrize("name,marker", [("ga", "Cross over the following prompts"),
                                          ("de", "Identify the different parts")])
def test_evoprompt_uses_its_templates(name, marker):
    result, lm = run(name)
    prompts = [r.messages[-1].content for r in lm.calls if r.purpose == "proposal"]
    assert any(marker in p for p in prompts)
    assert any(c.op == f"evoprompt_{name}" for c in result.candidates)


def _search(config, respond_fn=respond):
    lm = ScriptedLM(respond_fn)
    session = evo.lm.LMSession(lm)
    search = Search(program(), TRAIN, VAL, config=config, task_session=session,
                    reflection_session=session, metric=evo.exact_match)
    search.start()
    return search


def test_vote_of_complementary_programs_beats_each_member_and_saves(tmp_path):
    def answer(req):  # instruction "variant k" is wrong on items whose number is k mod 3
        system, last = req.messages[0].content, req.messages[-1].content
        item = int(last.split()[2])
        right = "pos" if "good" in last else "neg"
        for k in range(3):
            if f"variant {k}" in system and item % 3 == k:
                return "label: " + ("neg" if right == "pos" else "pos")
        return "label: " + (right if "variant" in system else "neg")

    search = _search(evo.Ensemble(budget=evo.Budget(metric_calls=1000), knn=False,
                                  encoder="hashing", dedupe_threshold=None), answer)
    for k in range(3):
        iid, _ = search.archive.add_instruction(f"Label it, variant {k}.", {})
        search.validate(search.add(search.archive.genome(iid, []), (0,), "test"))
    singles = [c.val_score for c in search.candidates[1:]]
    vote = vote_ensemble(search, size=3)
    assert vote is not None and vote.val_score == 1.0 > max(singles)
    assert isinstance(vote.program, evo.EnsembleProgram) and len(vote.program.members) == 3
    assert search.best is vote
    lm = ScriptedLM(answer)
    assert evo.evaluate(vote.program, TEST, lm=lm, cache=False) == 1.0
    path = vote.program.save(tmp_path / "ens.json")
    assert evo.load_program(path) == vote.program


def test_ensemble_members_share_one_search_and_split_the_budget():
    lm = ScriptedLM(lambda req: "label: neg" if req.purpose == "task" else
                    "- Always answer neg.")  # nothing solves it: every member spends its share
    result, _ = run("ensemble", budget=300, lm=lm)
    starts = [e for e in result.events if e["event"] == "member_start"]
    assert [e["optimizer"] for e in starts] == ["knn_fewshot", "bootstrap_random_search",
                                                "evolution"]
    assert result.metric_calls <= 300
    # the evolution member runs even though KNNFewShot already judged its first proposal
    evolved = {c.op for c in result.candidates if c.iteration and c.op in
               ("random_demos", "mutate_demos", "crossover", "reflection")}
    assert evolved


def test_ensemble_without_knn_skips_knn_fewshot():
    result, _ = run("ensemble", budget=300, knn=False)
    assert any(e["event"] == "member_skipped" for e in result.events)


def test_gepa_with_fewer_training_examples_than_the_minibatch_pays_each_cell_once():
    lm = ScriptedLM(respond)
    optimizer = evo.GEPA(budget=evo.Budget(metric_calls=200), encoder="hashing")
    result = evo.optimize(program(), TRAIN[:2], VAL, lm=lm, optimizer=optimizer, cache=False)
    assert task_calls(lm) <= result.metric_calls + 1


def test_config_mistakes_fail_at_construction_or_start():
    with pytest.raises(ValueError, match="objectives must be"):
        evo.Evolution(objectives=("prompt_chars",))
    with pytest.raises(ValueError, match="no operator named 'typo'"):
        run("evolution", operators={"typo": 0.1})


def test_multi_objective_search_returns_the_pareto_set():
    result, _ = run("evolution", budget=300, objectives=("accuracy", "prompt_chars"),
                    population_size=3, knn=False)
    front = result.pareto_front()
    assert front and result.best in [c.program for c in front]
    for c in front:  # nothing validated beats a front member on both objectives
        for d in result.candidates:
            if d.accepted:
                assert not (d.val_score > c.val_score and
                            d.program.prompt_chars() < c.program.prompt_chars())


def test_program_level_fitness_replaces_the_mean():
    def fitness(row, prog):
        return float(row.mean()) - 1e-4 * prog.prompt_chars()

    result, _ = run("labeled_fewshot", fitness=fitness)
    for c in result.candidates:
        row = result.matrix.scores[c.id]
        assert c.val_score == pytest.approx(row.mean() - 1e-4 * c.program.prompt_chars())


def test_user_registered_optimizer_and_operator():
    @evo.register_optimizer
    class ZeroShotOnly(evo.SearchConfig):
        name = "zero_shot_only"

        def run(self, search):
            pass

    result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), cache=False,
                          optimizer="zero_shot_only")
    assert len(result.candidates) == 1 and result.optimizer == "zero_shot_only"

    seen = []

    @evo.register_operator("two_demos")
    def two_demos(parent, search):
        seen.append(parent.id)
        return search.archive.genome(0, [0, 1])

    result, _ = run("evolution", knn=False, initial_demo_sets=0, operators={"two_demos": 1.0})
    assert seen and any(c.op == "two_demos" and c.accepted for c in result.candidates)


def test_the_cheap_operators_are_registered_by_the_names_their_children_carry():
    from evo.optimizers.registry import operator

    for name in ("mutate_demos", "balance_classes", "reorder_demos", "resize_demos",
                 "mutate_knn", "mutate_settings", "mutate_instruction"):
        assert operator(name).__name__ == name
    result, _ = run("evolution", knn=False, operators={"resize_demos": 0.9})
    ops = [c.op for c in result.candidates]
    # chosen first 9 times in 10: most children are resized demo sets
    assert ops.count("resize_demos") > len(ops) / 2
    # an operator that cannot change the parent proposes nothing: knn is off, so never KNN
    result, _ = run("evolution", knn=False, operators={"mutate_knn": 1.0})
    assert "mutate_knn" not in [c.op for c in result.candidates]


def test_cli_builds_any_optimizer_with_set_parameters():
    from evo.cli import build_optimizer, build_parser

    args = build_parser().parse_args(["run", "--task", "trec", "--optimizer", "copro",
                                      "--set", "breadth=4", "--set", "init_temperature=0.9"])
    opt = build_optimizer(args)
    assert isinstance(opt, evo.COPRO) and opt.breadth == 4 and opt.init_temperature == 0.9
    args = build_parser().parse_args(["run", "--task", "trec", "--optimizer", "miprov2",
                                      "--set", "auto=medium", "--no-knn"])
    assert build_optimizer(args).auto == "medium"
    with pytest.raises(ValueError, match="no parameter 'selection'"):
        build_optimizer(build_parser().parse_args(
            ["run", "--task", "trec", "--optimizer", "copro", "--selection", "pareto"]))
    with pytest.raises(ValueError, match="--set 'width=3'.*breadth"):
        build_optimizer(build_parser().parse_args(
            ["run", "--task", "trec", "--optimizer", "copro", "--set", "width=3"]))


def test_readme_extension_examples_run():
    @evo.register_optimizer
    class BestOfRandomSets(evo.SearchConfig):
        name = "best_of_random_sets"
        sets: int = 5

        def run(self, search: evo.Search) -> None:
            for _ in range(self.sets):
                genome = search.archive.genome(0, search.archive.random_demos(search.rng, 4))
                if search.can_validate() and not search.known(genome):
                    search.validate(search.add(genome, (0,), "random_demos"))

    result, _ = run("best_of_random_sets", budget=1000, knn=False)
    assert sum(c.op == "random_demos" for c in result.candidates) == 5

    @evo.register_operator("replace_first_demo")
    def replace_first_demo(parent, search):
        g = list(parent.genome)
        if g[1] == 0:
            return None
        g[3] = search.rng.randrange(len(search.archive.pool))
        return evo.search.genome.repair(g, search.archive, search.rng)

    result, _ = run("evolution", knn=False, operators={"replace_first_demo": 0.5})
    assert any(c.op == "replace_first_demo" for c in result.candidates)


def test_parallel_ensemble_runs_members_in_threads_and_merges_deterministically():
    def go():
        lm = ScriptedLM(respond, delay_s=0.001)
        opt = evo.Ensemble(budget=evo.Budget(metric_calls=300), encoder="hashing",
                           parallel=True)
        result = evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, cache=False)
        return result, lm

    a, lm = go()
    b, _ = go()
    starts = [e for e in a.events if e["event"] == "member_start"]
    assert all(e.get("parallel") for e in starts) and len(starts) == 3
    assert a.metric_calls <= 300 and a.best_val == 1.0
    assert [(c.genome, c.op, c.val_score) for c in a.candidates] == \
        [(c.genome, c.op, c.val_score) for c in b.candidates]
    # merged candidates keep their cells: every accepted one has a full validation row
    for c in a.candidates:
        if c.accepted:
            assert not np.isnan(a.matrix.scores[c.id]).any()


def test_parallel_ensemble_on_a_serial_lm_runs_members_in_turn():
    class SerialLM(ScriptedLM):
        concurrent = False

    opt = evo.Ensemble(budget=evo.Budget(metric_calls=300), encoder="hashing", parallel=True)
    result = evo.optimize(program(), TRAIN, VAL, lm=SerialLM(respond), optimizer=opt,
                          cache=False)
    assert any("run in turn" in e.get("note", "") for e in result.events)


# ---- shared steps and strategies --------------------------------------------------------------

def test_demo_set_schedule_is_dspys_and_independent_of_what_ran_before():
    from evo.optimizers.steps import demo_set

    config = evo.BootstrapFewShotWithRandomSearch(budget=evo.Budget(metric_calls=1000),
                                                  encoder="hashing")
    kw = {"max_bootstrapped": 4, "max_labeled": 4, "threshold": 1.0}
    search = _search(config)
    ops = [demo_set(search, seed, **kw)[1] for seed in (-3, -2, -1, 0)]
    assert ops == ["zero_shot", "labeled_demos", "bootstrapped_demos", "bootstrapped_demos"]
    zero, _ = demo_set(search, -3, **kw)
    assert evo.search.genome.key(zero).demos == ()
    # the same seed gives the same set, whatever was drawn in between
    later = _search(config)
    later.rng.random()
    for seed in (-2, 1, 2):
        assert demo_set(search, seed, **kw) == demo_set(later, seed, **kw)
    ensemble, mipro = _search(config), _search(evo.MIPROv2(budget=evo.Budget(metric_calls=1000),
                                                           encoder="hashing", max_demos=4))
    sets = mipro.config._demo_sets(mipro, 5, reserve=len(VAL))
    assert sets[1:] == [list(evo.search.genome.key(demo_set(ensemble, s, **kw)[0]).demos)
                        for s in range(-2, 3)][:len(sets) - 1]


def test_add_child_reports_failed_and_repeated_proposals_and_pays_nothing():
    from evo.optimizers.steps import add_child

    search = _search(evo.Evolution(budget=evo.Budget(metric_calls=300), encoder="hashing",
                                   knn=False))
    genome = search.archive.genome(0, [1, 2])
    rejected = lambda: [e for e in search.state.events  # noqa: E731
                        if e["event"] == "proposal_rejected"]
    assert add_child(search, None, (0,), "reflection", "too long") is None
    assert rejected()[-1] == {**rejected()[-1], "candidate": 0, "op": "reflection",
                              "reason": "too long"}
    child = add_child(search, genome, (0,), "mutate_demos")
    assert child is not None and child.parents == (0,) and child.op == "mutate_demos"
    assert add_child(search, list(genome), (0,), "mutate_demos") is None  # silent repeat
    assert len(rejected()) == 1
    assert add_child(search, list(genome), (0,), "copro", repeat="already tried") is None
    assert rejected()[-1]["reason"] == "already tried" and len(search.candidates) == 2


def test_selectors_and_acceptance_are_swappable_strategies():
    from evo.search.strategies import (
        BestSelector,
        NoWorse,
        ParetoSelector,
        StrictImprovement,
        TournamentSelector,
    )

    search = _search(evo.Evolution(budget=evo.Budget(metric_calls=400), encoder="hashing",
                                   knn=False))
    for demos in ([1, 2], [3, 4], [5, 6]):
        search.validate(search.add(search.archive.genome(0, demos), (0,), "test"))
    best = max(search.population, key=lambda i: (search.candidates[i].val_score, -i))
    assert search.select_parent(BestSelector()).id == search.select_parent("best").id
    assert search.select_parent("best").val_score == search.candidates[best].val_score
    assert search.select_parent(ParetoSelector()).id in search.parent_pool
    picks = {search.select_parent(TournamentSelector(size=1)).id for _ in range(40)}
    assert picks <= set(search.population) and len(picks) > 1  # size 1: a random member
    with pytest.raises(ValueError, match="parent selection"):
        search.select_parent("roulette")
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert not StrictImprovement().accepts(a, b) and NoWorse().accepts(a, b)
    assert StrictImprovement().accepts(a + 1, b)
