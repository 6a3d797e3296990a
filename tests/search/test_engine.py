"""The engine on a scripted LM: it improves, respects the budget, never pays twice, survives bad
cells, and a rerun with the same seed and cache replays without paid calls."""

import json

import numpy as np
import pytest

import evo
from evo.lm import LMError, LMSession, LMUnavailableError, ScriptedLM
from evo.lm.base import LMRequest
from evo.testing import TEST, TRAIN, VAL, make, program, respond


def run(lm, budget=200, seed=0, config=None, **kw):
    # KNN demos off by default here: with them this scripted task is solved by the first
    # candidate, and these tests are about the evolutionary loop (KNN has its own tests below).
    # No held-out share either: these tests count cells and scores over the whole validation set
    # (tests/search/test_racing.py tests the holdout).
    # Nor settings genes (label scoring, reasoning): tests/search/test_racing.py has them.
    config = {"knn": False, "encoder": "hashing", "holdout": 0.0, "settings": False,
              **(config or {})}
    return evo.optimize(program(), TRAIN, VAL, lm=lm, seed=seed,
                        optimizer=evo.Evolution(budget=evo.Budget(metric_calls=budget), **config),
                        **kw)


def test_search_improves_on_held_out_data():
    result = run(ScriptedLM(respond), cache=False)
    assert result.baseline_val == pytest.approx(0.5)
    assert result.best_val == 1.0
    report = result.report(TEST)
    assert report.baseline == 0.5 and report.optimized == 1.0
    assert report.ci_low > 0
    # the engine-efficiency figures printed with every run
    text = str(report)
    assert "% hit rate)" in text and "in the LM" in text and "in evo's own code" in text
    assert "prompt tokens reused from the KV cache" in text


def test_budget_is_respected_and_no_pair_paid_twice():
    lm = ScriptedLM(respond)
    result = run(lm, budget=150, cache=False)
    assert result.metric_calls <= 150
    task_calls = [c for c in lm.calls if c.purpose == "task"]
    assert len(task_calls) == result.metric_calls
    # each (prompt, example) pair reached the LM once
    assert len({c.key("m") for c in task_calls}) == len(task_calls)
    filled = int((~np.isnan(result.matrix.scores)).sum())
    assert filled == result.metric_calls


def test_same_seed_same_result_and_different_seed_explores_differently():
    a, b = run(ScriptedLM(respond), seed=3, cache=False), run(ScriptedLM(respond), seed=3,
                                                              cache=False)
    assert a.best == b.best
    assert [c.genome for c in a.candidates] == [c.genome for c in b.candidates]
    c = run(ScriptedLM(respond), seed=4, cache=False)
    assert [x.genome for x in c.candidates] != [x.genome for x in a.candidates]


def test_rerun_with_cache_pays_nothing(tmp_path):
    cache = tmp_path / "cache.sqlite"
    first = run(ScriptedLM(respond), cache=cache)
    lm = ScriptedLM(respond)
    second = run(lm, cache=cache)
    assert second.usage.calls == 0 and lm.calls == []
    assert second.usage.cache_hits == first.usage.calls
    assert second.best == first.best


def test_killed_search_resumes_from_cache(tmp_path):
    """A search that dies midway, rerun, pays only for calls it had not made."""
    cache = tmp_path / "cache.sqlite"
    full = run(ScriptedLM(respond), cache=tmp_path / "reference.sqlite")
    n_paid = full.usage.calls

    def dies_after(limit):
        count = {"n": 0}

        def errors(req):
            count["n"] += 1
            return KeyboardInterrupt() if count["n"] > limit else None
        return errors

    with pytest.raises(KeyboardInterrupt):
        run(ScriptedLM(respond, errors=dies_after(60)), cache=cache)
    lm = ScriptedLM(respond)
    resumed = run(lm, cache=cache)
    assert resumed.best == full.best
    assert resumed.usage.cache_hits >= 59
    assert resumed.usage.calls == n_paid - resumed.usage.cache_hits


def test_lm_errors_and_metric_errors_are_recorded_not_fatal():
    def flaky(req):
        return LMError("boom") if "item 105 " in req.messages[-1].content else None

    def metric(example, prediction):
        if "item 107 " in example.inputs["text"]:
            raise ZeroDivisionError("bad metric")
        return evo.exact_match(example, prediction)

    lm = LMSession(ScriptedLM(respond, errors=flaky), backoff_s=0)
    result = run(lm, cache=False, metric=metric)
    col = {ex.id: j for j, ex in enumerate(VAL)}
    cell = result.matrix.cells[(0, col[make(105).id])]
    assert cell.score == 0 and "boom" in cell.error
    cell = result.matrix.cells[(0, col[make(107).id])]
    assert cell.score == 0 and "ZeroDivisionError" in cell.error
    assert result.best_val > result.baseline_val
    n_candidates_on_105 = sum(not np.isnan(result.matrix.scores[r, col[make(105).id]])
                              for r in range(result.matrix.n_rows))
    assert result.search_summary()["cell_errors"] == (
        n_candidates_on_105 + sum(not np.isnan(result.matrix.scores[r, col[make(107).id]])
                                  for r in range(result.matrix.n_rows)))


def test_unreachable_lm_is_one_clear_error():
    def down(req):
        return ConnectionError("Connection refused")
    with pytest.raises(LMUnavailableError, match="could not reach scripted.*Connection refused"):
        run(LMSession(ScriptedLM(respond, errors=down), backoff_s=0), cache=False)


def test_budget_too_small_for_seed_validation():
    with pytest.raises(evo.ConfigError, match="cannot validate the seed"):
        run(ScriptedLM(respond), budget=10, cache=False)


def test_events_and_run_dir(tmp_path):
    events = []
    result = run(ScriptedLM(respond), cache=False, run_dir=tmp_path / "run",
                 on_event=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "new_best" in kinds and "candidate_generated" in kinds
    assert kinds[-2] in {"budget_exhausted", "converged"} and kinds[-1] == "complete"
    assert events[-1]["best_val"] == result.best_val
    assert evo.Program.load(tmp_path / "run" / "best.json") == result.best
    assert (tmp_path / "run" / "events.jsonl").read_text().count("\n") == len(result.events)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())["instructions"]
    assert saved[0] == {"text": result.baseline.instruction, "origin": {"op": "seed"}}
    assert all(i["origin"]["op"] == "reflection" and "parent" in i["origin"] for i in saved[1:])


def test_reflection_adds_rules_and_rejects_answers():
    from evo.proposers.reflection import propose, split_rules
    from evo.search.evaluate import Cell

    p = program()
    failures = [(make(1), Cell(0.0, p.parse("label: pos"), "Wrong: correct is neg"))]
    ok = propose(LMSession(ScriptedLM(lambda r: "- Say neg when the text is negative.\n- x")),
                 p, failures)
    core, rules = split_rules(ok.instruction)
    assert core == p.instruction and rules == ["Say neg when the text is negative."]
    for reply in ["neg", "- neg", "- item 1 is bad stuff, so the label is neg"]:
        bad = propose(LMSession(ScriptedLM(lambda r, reply=reply: reply)), p, failures)
        assert bad.instruction is None, reply


@pytest.mark.parametrize("bad", [float("nan"), "abc", None])
def test_bad_metric_values_are_recorded_once_not_fatal(bad):
    def metric(example, prediction):
        if "item 104 " in example.inputs["text"]:
            return evo.Score(bad) if bad is None else bad
        return evo.exact_match(example, prediction)

    lm = ScriptedLM(respond)
    result = run(lm, cache=False, metric=metric)
    col = {ex.id: j for j, ex in enumerate(VAL)}[make(104).id]
    assert not np.isnan(result.matrix.scores[:, col]).all()
    cell = result.matrix.cells[(0, col)]
    assert cell.score == 0 and cell.error.startswith("metric 'metric' returned ")
    assert cell.kind == "metric"
    asked = [c for c in lm.calls if c.purpose == "task" and "item 104 " in c.messages[-1].content]
    assert len(asked) == len({c.key("m") for c in asked})  # never paid twice


def test_numpy_scores_are_accepted():
    def metric(example, prediction):
        return np.float32(evo.exact_match(example, prediction).value)

    assert run(ScriptedLM(respond), cache=False, metric=metric).best_val == 1.0


def test_lm_call_cap_counts_reflection_and_never_crashes():
    lm = ScriptedLM(respond)
    session = LMSession(lm)
    session.preflight()
    session.complete(LMRequest((evo.lm.Message("user", "warm-up"),)))  # before the search
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=1000, lm_calls=90),
                              reflection_rate=1.0, initial_demo_sets=0, knn=False)
    result = evo.optimize(program(), TRAIN, VAL, lm=session, optimizer=optimizer, cache=False)
    assert result.usage.requests <= 90  # calls before the search do not count against it
    assert result.usage.by_purpose.get("reflection", 0) >= 1


def test_user_demos_stay_in_the_baseline_even_outside_the_pool():
    demos = (make(900), make(901))
    p = program().model_copy(update={"demos": demos})
    result = evo.optimize(p, TRAIN, VAL, lm=ScriptedLM(respond), cache=False,
                          optimizer=evo.Evolution(budget=evo.Budget(metric_calls=60),
                                                  max_demos=0))
    assert result.baseline.demos == demos


def test_missing_outputs_and_unknown_labels_are_data_errors():
    bad = list(VAL)
    bad[3] = evo.Example(inputs={"text": "x y z"}, outputs={"label": "maybe"})
    with pytest.raises(evo.DataError, match="valset, row 4.*'maybe'"):
        evo.optimize(program(), TRAIN, bad, lm=ScriptedLM(respond), cache=False)
    bad = list(TRAIN)
    bad[2] = evo.Example(inputs={"text": "x y z"}, outputs={"other": "pos"})
    with pytest.raises(evo.DataError, match="trainset, row 3.*label"):
        evo.optimize(program(), bad, VAL, lm=ScriptedLM(respond), cache=False)


def test_split_rules_never_cuts_a_users_instruction():
    from evo.proposers.reflection import join_rules, split_rules

    mine = "Classify.\nRules:\n1. be brief\nAlways answer in lowercase."
    assert split_rules(mine) == (mine, [])
    assert split_rules(join_rules("Core.", ["A rule.", "B rule."])) == ("Core.", ["A rule.",
                                                                             "B rule."])


def test_knn_demos_candidate_comes_first_and_is_saved_with_its_pool(tmp_path):
    lm = ScriptedLM(respond)
    result = run(lm, cache=False, config={"knn": True}, run_dir=tmp_path / "run")
    knn = [c for c in result.candidates if c.op == "knn_demos"]
    assert [c.id for c in knn] == [1] and knn[0].accepted and knn[0].val_score == 1.0
    assert result.best.knn is not None and result.best.knn.encoder == "hashing"
    loaded = evo.Program.load(tmp_path / "run" / "best.json")
    assert loaded == result.best
    # a reloaded program builds the same prompts (same neighbours, nearest last)
    ex = TEST[0]
    assert loaded.messages(ex) == result.best.messages(ex)
    demos = loaded.knn_demos(ex)
    assert len(demos) == loaded.knn.k and all(d in TRAIN for d in demos)
    assert evo.evaluate(loaded, TEST, lm=ScriptedLM(respond), cache=False) == 1.0


@pytest.mark.parametrize("selection", ["pareto", "tournament"])
def test_both_parent_selections_search_and_replay(selection):
    a = run(ScriptedLM(respond), seed=1, cache=False, config={"selection": selection})
    b = run(ScriptedLM(respond), seed=1, cache=False, config={"selection": selection})
    assert a.best_val == 1.0 and a.best == b.best
    assert [c.genome for c in a.candidates] == [c.genome for c in b.candidates]


def test_pareto_selection_picks_parents_from_the_front():
    """Every non-initial parent is a candidate on the (pruned) instance-level Pareto front of
    the candidates validated before it was picked."""
    from evo.kernels.pareto import pareto_frequencies

    result = run(ScriptedLM(respond), seed=2, cache=False, config={"selection": "pareto"})
    validated_at: dict[int, int] = {}
    for e in result.events:
        if e["event"] == "candidate_evaluated" and e.get("accepted") and "val_score" in e:
            validated_at[e["candidate"]] = len(validated_at)
    n_init = 1 + evo.Evolution().initial_demo_sets
    for cand in result.candidates[n_init + 1:]:
        parent = cand.parents[0]
        before = [r for r, order in sorted(validated_at.items(), key=lambda kv: kv[1])
                  if r < cand.id]
        scores = result.matrix.scores[before]
        freq = pareto_frequencies(scores, np.nanmean(scores, axis=1))
        assert freq[before.index(parent)] > 0


def test_near_duplicate_reflections_are_not_paid_for():
    # rules that do not help (so failures remain and reflection keeps being asked), reworded
    replies = iter(["- Read the whole text with care.", "- Read the whole text with care!",
                    "- read the whole text with care"] * 100)

    def respond_dup(req):
        return next(replies) if req.purpose == "reflection" else respond(req)

    events = []
    lm = ScriptedLM(respond_dup)
    result = run(lm, cache=False, on_event=events.append,
                 config={"reflection_rate": 1.0, "initial_demo_sets": 0, "max_demos": 0,
                         "dedupe_threshold": 0.9})
    assert len(result.instructions) == 2  # the seed and the first rule; the copies were refused
    assert result.usage.by_purpose["reflection"] >= 3
    rejected = [e for e in events if e["event"] == "proposal_rejected"]
    # refused by the engine's dedupe, or by the proposer itself when the parent already has it
    assert rejected and all("near-duplicate" in e["reason"] or "identical" in e["reason"]
                            or "repeats a rule" in e["reason"] for e in rejected)
    task_calls = [c for c in lm.calls if c.purpose == "task"]
    assert len(task_calls) == result.metric_calls  # nothing paid for the copies


# ---- the engine's own methods: optimizers ask, the engine alone changes the state -----------

def _search(budget=400, **config):
    from evo.search.engine import Search
    session = LMSession(ScriptedLM(respond))
    config = evo.Evolution(budget=evo.Budget(metric_calls=budget),
                           **{"knn": False, "encoder": "hashing", "holdout": 0.0,
                              "settings": False, **config})
    search = Search(program(), TRAIN, VAL, config=config, task_session=session,
                    reflection_session=session, metric=evo.exact_match)
    search.start()
    return search


def _child(search, demos):
    cand = search.add(search.archive.genome(0, demos), (0,), "test")
    search.validate(cand)
    return cand


def test_engine_counts_iterations_and_records_the_stop_reason():
    from evo.search.engine import StopReason

    search = _search()
    assert search.iteration == 0
    assert search.next_iteration() == 1 and search.iteration == 1
    cand = search.add(search.archive.genome(0, [0, 1]), (0,), "test")
    assert cand.iteration == 1  # a candidate carries the iteration it was made in
    search.stop(StopReason.BUDGET)
    search.finish()
    assert search.state.stop_reason is StopReason.BUDGET
    last = search.state.events[-1]
    # the enum's values are the strings run records and events always carried
    assert last["event"] == "budget_exhausted" and last["reason"] == "budget exhausted"
    assert type(last["reason"]) is str and json.dumps(StopReason.CONVERGED) == '"converged"'
    fresh = _search()
    fresh.finish()  # budget left and no reason given: the optimizer ran out of candidates
    assert fresh.state.stop_reason == "converged" and fresh.state.events[-1]["event"] == "converged"
    search.stop("tired")  # a reason of the optimizer's own is kept as its text
    assert search.state.stop_reason == "tired"
    with pytest.raises(evo.ConfigError):
        search.stop("")


def test_population_views_are_read_only_and_replacement_goes_through_the_engine():
    search = _search(population_size=3)
    a, b = _child(search, [0, 1]), _child(search, [2, 3])
    assert isinstance(search.population, tuple) and set(search.population) == {0, a.id, b.id}
    assert search.validated == (0, a.id, b.id)
    with pytest.raises(AttributeError):
        search.population.append(7)
    search.replace_in_population(search.seed_candidate, a)
    assert 0 not in search.population and a.id in search.population
    search.replace_in_population(search.seed_candidate, a)  # not in it any more: nothing to do
    pending = search.add(search.archive.genome(0, [4, 5]), (0,), "test")
    search.replace_in_population(a, pending)  # an unvalidated child replaces nobody
    assert a.id in search.population and search.validated == (0, a.id, b.id)


def test_candidate_for_finds_the_candidate_of_a_known_prompt():
    search = _search()
    genome = search.archive.genome(0, [0, 1])
    assert search.candidate_for(genome) is None
    cand = search.add(genome, (0,), "test")
    assert search.candidate_for(list(genome)) is cand
    padded = genome[:3] + [0, 1] + [9] * (len(genome) - 5)  # unexpressed genes differ
    assert search.candidate_for(padded) is cand
    assert search.candidate_for(search.archive.seed_genome()) is search.seed_candidate


def test_val_failures_are_the_cells_below_one_in_paid_order():
    search = _search()
    seed = search.seed_candidate
    failures = search.val_failures(seed)
    assert len(failures) == 15 and all(cell.score < 1.0 for _, cell in failures)
    assert [ex for ex, _ in failures] == [ex for ex in VAL if ex.label == "pos"]


def test_score_replies_and_accept_with_cells_charge_nothing():
    search = _search()
    spent = search.evaluator.metric_calls
    preds = [search.matrix.cells[(0, c)].prediction for c in search.all_cols]
    cells = search.score_replies(preds)
    assert [c.score for c in cells] == list(search.matrix.scores[0])
    copy = search.add_program(search.seed_candidate.program, "a copy of the seed", (0,), "test")
    search.accept(copy, dict(zip(search.all_cols, cells, strict=True)))
    assert copy.accepted and copy.val_score == search.seed_candidate.val_score
    assert search.evaluator.metric_calls == spent  # no LM call, no metric call charged
    assert copy.id in search.validated and copy.id not in search.population  # not a parent


def test_merge_takes_a_sub_search_candidates_cells_and_spend():
    from evo.search.engine import Search

    main = _search(budget=400)
    seed_cells = {c: main.matrix.cells[(0, c)] for c in main.all_cols}
    sub = Search(program(), TRAIN, VAL, config=main.config, task_session=main.task_session,
                 reflection_session=main.reflection_session, metric=evo.exact_match, seed=5)
    sub.start(seed_cells)  # the seed's cells are given, not paid
    assert sub.evaluator.metric_calls == 0
    iid, _ = sub.archive.add_instruction("Say pos when the text says good.", {"op": "test"})
    kid = sub.add(sub.archive.genome(iid, [3, 4]), (0,), "reflection", "from sub")
    sub.validate(kid)
    half = sub.add(sub.archive.genome(0, [5]), (kid.id,), "mutate_demos")
    sub.evaluate(half, [0, 1, 2])
    before = main.evaluator.metric_calls
    main.merge(sub, "member 1")
    assert main.evaluator.metric_calls == before + sub.evaluator.metric_calls == before + 33
    merged = main.candidates[-2:]
    assert [c.op for c in merged] == ["reflection", "mutate_demos"]
    assert merged[0].note == "member 1: from sub" and merged[1].parents == (merged[0].id,)
    assert merged[0].accepted and merged[0].val_score == kid.val_score == 1.0
    assert main.archive.instructions[merged[0].genome[0]] == "Say pos when the text says good."
    assert not merged[1].accepted and np.isfinite(main.matrix.scores[merged[1].id]).sum() == 3
    assert main.best is merged[0]


def test_an_optimizer_may_stop_for_a_reason_of_its_own():
    """A StopReason, or a text of the optimizer's own (kept as it is, reported as converged);
    an empty reason is a ConfigError when it is given, not after the budget is paid."""

    class UntilPerfect(evo.SearchConfig):
        name = "until_perfect_test"

        def run(self, search):
            search.stop("perfect validation score")

    result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), cache=False,
                          optimizer=UntilPerfect(budget=evo.Budget(metric_calls=60), knn=False,
                                                 encoder="hashing"))
    assert result.stop_reason == "perfect validation score"
    from evo.search.engine import StopReason, stop_reason
    assert stop_reason("budget exhausted") is StopReason.BUDGET
    with pytest.raises(evo.ConfigError, match="stop reason"):
        stop_reason("")
