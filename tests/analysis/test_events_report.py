"""Typed events and their sinks (JSONL, MLflow, the FAISS candidate store), A/B comparison,
the HTML report, the dry run's projection, and `evo run --resume` / `--dry-run` from the shell."""

import json
from pathlib import Path

import numpy as np
import pytest

import evo
from evo.cli import main
from evo.lm import ScriptedLM
from evo.runs.events import (
    CandidateEvaluated,
    CandidateGenerated,
    NewBest,
    SearchCompleted,
    SearchStarted,
)
from evo.testing import TEST, TRAIN, VAL, make, program, respond


def search(lm=None, **kw):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=kw.pop("budget", 150)), knn=False,
                        encoder="hashing")
    return evo.optimize(program(), TRAIN, VAL, lm=lm or ScriptedLM(respond), optimizer=opt,
                        cache=False, **kw)


class Recorder(evo.Callback):
    def __init__(self):
        self.seen, self.typed = [], []

    def on_event(self, event):
        self.seen.append(event)

    def on_start(self, event):
        self.typed.append(event)

    def on_candidate_generated(self, event):
        self.typed.append(event)

    def on_candidate_evaluated(self, event):
        self.typed.append(event)

    def on_new_best(self, event):
        self.typed.append(event)

    def on_complete(self, event):
        self.typed.append(event)


def test_callbacks_receive_typed_events_in_order(tmp_path):
    rec = Recorder()
    log = tmp_path / "events.jsonl"
    result = search(callbacks=[rec, evo.JSONLLog(log)])
    assert [e.kind for e in rec.seen] == [e["event"] for e in result.events]
    assert isinstance(rec.typed[0], SearchStarted) and rec.typed[0].budget == 150
    assert isinstance(rec.typed[-1], SearchCompleted)
    done = rec.typed[-1]
    assert done.best_val == result.best_val and done.best_program["evo_program"] == 1
    assert evo.Program.model_validate({k: v for k, v in done.best_program.items()
                                       if k != "evo_program"}) == result.best
    gen = [e for e in rec.typed if isinstance(e, CandidateGenerated)]
    assert gen[0].op == "seed" and gen[0].instruction == result.baseline.instruction
    full = [e for e in rec.typed if isinstance(e, CandidateEvaluated) and e.val_score is not None]
    bests = [e for e in rec.typed if isinstance(e, NewBest)]
    assert full and bests[-1].val_score == result.best_val
    # metric calls and LM calls never go backwards
    calls = [(e.metric_calls, e.lm_calls) for e in rec.seen]
    assert calls == sorted(calls)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["event"] for x in lines] == [e["event"] for e in result.events]


def test_candidate_store_finds_instructions_by_similarity(tmp_path):
    store = evo.CandidateStore(encoder="hashing")
    # instruction-only genomes: the search has to write instructions (reflection)
    opt = evo.Evolution(budget=evo.Budget(metric_calls=200), knn=False, max_demos=0,
                        encoder="hashing")
    result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt,
                          cache=False, callbacks=[store], run_dir=tmp_path / "run")
    evaluated = {result.instructions[c.genome[0]] for c in result.candidates
                 if c.genome and np.isfinite(result.matrix.scores[c.id]).any()}
    assert {e[0] for e in store.entries} == evaluated and len(store) >= 2
    hit = store.search(result.baseline.instruction, k=1)[0]
    assert hit.instruction == result.baseline.instruction and hit.similarity > 0.99
    assert hit.scored_on == "validation" and hit.score == result.baseline_val
    assert 0 in hit.candidates
    rules = [m for m in store.search("Say pos when the text says good", k=len(store))
             if "Say pos" in m.instruction]
    assert rules and rules[0].similarity > store.search("Say pos when the text says good",
                                                        k=len(store))[-1].similarity
    again = evo.CandidateStore.load(store.save(tmp_path / "cands.json"))
    assert again.search("produce the label", k=3) == store.search("produce the label", k=3)
    from_run = evo.CandidateStore.from_run(tmp_path / "run", encoder="hashing")
    assert sorted(e[0] for e in from_run.entries) == sorted(e[0] for e in store.entries)


def test_candidate_store_from_a_damaged_run_names_the_file(tmp_path):
    from evo.errors import DamagedFileError

    run = tmp_path / "run"
    search(run_dir=run)
    record = json.loads((run / "result.json").read_text())
    record["candidates"][1]["genome"] = ["x"]
    (run / "result.json").write_text(json.dumps(record))
    with pytest.raises(DamagedFileError, match="result.json: not a readable search record"):
        evo.CandidateStore.from_run(run, encoder="hashing")
    (run / "result.json").write_text("{")
    with pytest.raises(DamagedFileError, match="result.json"):
        evo.CandidateStore.from_run(run, encoder="hashing")


def test_mlflow_logs_params_metrics_and_the_best_program(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    logger = evo.MLflowLogger(tracking_uri=uri, experiment="evo-test", run_name="trec")
    result = search(callbacks=[logger])
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer"] == "evolution" and run.data.params["budget"] == "150"
    assert run.data.metrics["final_best_val"] == result.best_val
    history = client.get_metric_history(logger.run_id, "best_val")
    assert [m.value for m in history][-1] == result.best_val
    assert [m.step for m in history] == sorted(m.step for m in history)
    path = client.download_artifacts(logger.run_id, "best.json", str(tmp_path))
    assert evo.load_program(path) == result.best


def test_compare_pairs_two_programs_on_the_same_examples(tmp_path):
    weak = program()
    strong = program().model_copy(update={"demos": tuple(TRAIN[:2])})
    cmp = evo.compare(weak, strong, TEST, lm=ScriptedLM(respond), cache=False)
    assert (cmp.accuracy_a, cmp.accuracy_b) == (0.5, 1.0) and cmp.b_minus_a == 0.5
    assert cmp.ci_low > 0 and cmp.p_value < 0.001 and cmp.significant
    assert len(cmp.b_wins) == 20 and cmp.a_wins == []
    same = evo.compare(strong, strong, TEST, lm=ScriptedLM(respond), cache=False)
    assert same.b_minus_a == 0 and same.p_value == 1.0 and not same.significant
    with pytest.raises(ValueError, match="data for program, row 1: .* lacks field"):
        evo.compare(weak, strong, [evo.Example(inputs={"q": "x"}, outputs={"label": "pos"})],
                    lm=ScriptedLM(respond), cache=False)


def write_data(tmp_path):
    rows = [{"text": ex.inputs["text"], "label": ex.outputs["label"]}
            for ex in [make(i) for i in range(300, 400)]]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ["--data", str(path), "--inputs", "text", "--outputs", "label", "--labels", "pos,neg",
            "--n-train", "30", "--n-val", "20", "--n-test", "20"]


@pytest.fixture
def scripted_cli(monkeypatch):
    lms = []

    def make_lm(spec, **kw):
        lms.append(ScriptedLM(respond))
        return lms[-1]
    monkeypatch.setattr("evo.cli.common.make_lm", make_lm)
    return lms


def test_cli_compare_and_report(tmp_path, scripted_cli, capsys):
    data = write_data(tmp_path)
    run = tmp_path / "run"
    assert main(["run", *data, "--budget", "100", "--no-knn", "--encoder", "hashing",
                 "--no-cache", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (run / "report.html").exists()
    assert main(["compare", str(run / "baseline.json"), str(run / "best.json"), *data,
                 "--no-cache", "--out", str(tmp_path / "ab.json")]) == 0
    out = capsys.readouterr().out
    assert "B - A (95% paired bootstrap CI)" in out and "verdict" in out
    ab = json.loads((tmp_path / "ab.json").read_text())
    test = json.loads((run / "report.json").read_text())
    # the A/B rerun on the same split agrees with the run's own baseline-vs-best report
    assert ab["scores_a"] == test["baseline_scores"] and ab["scores_b"] == test["optimized_scores"]
    # programs of a run directory: `--data test` is enough, the run says which data
    assert main(["compare", str(run / "baseline.json"), str(run / "best.json"), "--data",
                 "test", "--no-cache", "--out", str(tmp_path / "ab2.json")]) == 0
    assert json.loads((tmp_path / "ab2.json").read_text())["scores_b"] == ab["scores_b"]
    # a run that left the validation size to `evo run`'s default (budget / 6): compare must cut
    # the same test split (it depends on every split size)
    rows = [{"text": ex.inputs["text"], "label": ex.outputs["label"]}
            for ex in [make(i) for i in range(1000, 1400)]]
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data_file = ["--data", str(tmp_path / "big.jsonl")] + data[2:data.index("--n-train")]
    run2 = tmp_path / "run2"
    assert main(["run", *data_file, "--n-train", "30", "--n-test", "20", "--budget", "120",
                 "--no-knn", "--encoder", "hashing", "--no-cache", "--quiet",
                 "--out", str(run2)]) == 0
    assert main(["compare", str(run2 / "baseline.json"), str(run2 / "best.json"), "--data",
                 "test", "--no-cache", "--out", str(tmp_path / "ab3.json")]) == 0
    test2 = json.loads((run2 / "report.json").read_text())
    assert json.loads((tmp_path / "ab3.json").read_text())["example_ids"] == test2["example_ids"]
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "x.json"), str(tmp_path / "y.json")]) == 2
    assert "name the data" in capsys.readouterr().err
    assert main(["report", str(run), "--price", "0.15,0.6", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    for section in ("Validation accuracy vs calls", "Pareto fronts", "Lineage",
                    "Per example", "Usage and cost", "$0.00"):
        assert section in page, section
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(run), "--price", "cheap"]) == 2
    assert "--price 'cheap'" in capsys.readouterr().err


def test_report_of_a_killed_run_reads_its_checkpoint(tmp_path):
    class Killed(BaseException):
        pass

    lm = ScriptedLM(lambda r: (_ for _ in ()).throw(Killed) if len(lm.calls) > 70
                    else respond(r))
    with pytest.raises(Killed):
        search(lm, budget=300, run_dir=tmp_path / "run")
    from evo.analysis.report import build
    page = build(tmp_path / "run")
    assert "unfinished" in page and "From the seed to the best" in page


def test_lineage_diff_marks_the_words_a_mutation_changed():
    from evo.analysis.report import word_diff
    html = word_diff("Classify the text.", "Classify the text. Say pos when it says good.")
    assert "<ins>" in html and "Say pos" in html and "<del>" not in html
    assert "<del>text.</del>" in word_diff("Classify the text.", "Classify the message.")


def test_projection_bounds_what_a_search_spends():
    opt = evo.Evolution(budget=evo.Budget(metric_calls=150), knn=False, encoder="hashing")
    proj = evo.project(program(), TRAIN, VAL, opt, n_test=40)
    result = search(budget=150)
    assert proj.task_calls == 150 and proj.full_validations == 5 and proj.test_calls == 80
    assert result.usage.by_purpose.get("task", 0) <= proj.task_calls
    assert 0 < proj.proposal_calls <= evo.SearchConfig.projected_proposals(opt, 40, 30)
    assert proj.prompt_tokens_low < proj.prompt_tokens_high
    few = evo.project(program(), TRAIN, VAL, evo.BootstrapFewShotWithRandomSearch(
        budget=evo.Budget(metric_calls=150)))
    assert few.proposal_calls == 0
    counted = evo.project(program(), TRAIN, VAL, opt, count_tokens=lambda t: len(t.split()))
    assert counted.tokens_exact and counted.prompt_tokens_low < proj.prompt_tokens_low


@pytest.mark.parametrize("name", ["copro", "miprov2", "bootstrap_random_search",
                                  "labeled_fewshot"])
def test_projected_proposals_bound_the_optimizers_that_have_a_bound(name):
    """COPRO's and MIPROv2's loops make at most one proposal per step: their projection is a
    bound, which a scripted run (most of its proposals rejected as copies) must respect."""
    opt = evo.optimizers.get(name, budget=evo.Budget(metric_calls=150), encoder="hashing")
    proj = evo.project(program(), TRAIN, VAL, opt)
    lm = ScriptedLM(respond)
    evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, cache=False)
    proposals = sum(1 for r in lm.calls if r.purpose not in ("task", "preflight"))
    assert proposals <= proj.proposal_calls
    assert sum(1 for r in lm.calls if r.purpose == "task") <= proj.task_calls


def test_cli_dry_run_resume_and_its_errors(tmp_path, scripted_cli, capsys):
    data = write_data(tmp_path)
    run = tmp_path / "run"
    flags = ["--budget", "100", "--no-knn", "--encoder", "hashing", "--no-cache", "--quiet"]
    assert main(["run", *data, *flags, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "task LM calls" in out and "at most 100" in out
    assert not scripted_cli[-1].calls  # nothing was sent
    assert main(["run", *data, *flags, "--out", str(run)]) == 0
    first = json.loads((run / "result.json").read_text())
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    # the resumed run read its settings from the store and paid only the preflight
    assert len(scripted_cli[-1].calls) == 1
    again = json.loads((run / "result.json").read_text())
    assert again["candidates"] == first["candidates"] and again["scores"] == first["scores"]
    assert main(["run", "--resume", str(run), "--budget", "50"]) == 2
    assert "drop --budget" in capsys.readouterr().err
    assert main(["run", *data, *flags[:-1], "--seed", "1", "--out", str(run)]) == 2
    assert "holds another run" in capsys.readouterr().err
    search(run_dir=tmp_path / "py")
    assert main(["run", "--resume", str(tmp_path / "py")]) == 2
    assert "made from Python" in capsys.readouterr().err


def test_report_renders_in_a_browser(tmp_path, screenshot):
    search(budget=200, run_dir=tmp_path / "run")
    page = evo.write_report(tmp_path / "run")
    img = screenshot(page, tmp_path / "shot.png")
    assert img.shape[:2] == (3000, 1200)
    # the plots were decoded and drawn: the best-so-far line's red (#d0534a) is on screen
    red = np.all(np.abs(img.astype(int) - [0xd0, 0x53, 0x4a]) < 30, axis=-1)
    assert red.sum() > 200


# ---- every emitted kind has a class, and round-trips through it -------------------------------

def _events_of_every_optimizer():
    """The event dicts of every optimizer (and of the ensemble's variants that emit their own
    kinds) on the scripted task."""
    builtin = [name for name in evo.optimizers.names()  # not a test's own registered ones
               if evo.optimizers.optimizer_class(name).__module__.startswith("evo.optimizers")]
    runs = [(name, {}) for name in builtin] + [
        ("ensemble", {"knn": False}),  # member_skipped
        ("ensemble", {"parallel": True}),  # members in threads
        ("ensemble", {"combine": "vote", "members": [evo.KNNFewShot(),
                                                     evo.LabeledFewShot()]}),
    ]
    events = []
    for name, params in runs:
        lm = ScriptedLM(respond)
        opt = evo.optimizers.get(name, budget=evo.Budget(metric_calls=150), encoder="hashing",
                                 **params)
        events += evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=opt, cache=False).events
    serial = ScriptedLM(respond)
    serial.concurrent = False  # parallel=True on an LM that serves one call at a time
    opt = evo.Ensemble(budget=evo.Budget(metric_calls=150), encoder="hashing", parallel=True)
    return events + evo.optimize(program(), TRAIN, VAL, lm=serial, optimizer=opt,
                                 cache=False).events


def test_every_emitted_event_kind_round_trips_through_its_class():
    from dataclasses import fields

    from evo.search.events import Event

    events = _events_of_every_optimizer()
    seen = {e["event"] for e in events}
    # every kind a search emits has a class, and every search class is emitted by something
    # (an agent's own kinds, evo.agents.events, are emitted by agents: tests/agents; the
    # service's, evo.service.events, by its experiments: tests/service)
    search_kinds = {k for k, cls in Event.kinds.items()
                    if not cls.__module__.startswith(("evo.agents", "evo.service"))}
    assert seen == search_kinds, (seen ^ search_kinds)
    for raw in events:
        typed = Event.from_dict(raw)
        assert type(typed) is Event.kinds[raw["event"]] and typed.kind == raw["event"]
        back = typed.to_dict()
        assert json.dumps(back) == json.dumps(raw)  # the same keys, values and order
        for f in fields(typed):  # every field the dict has is typed on the event
            if f.name in raw and f.name not in ("t", "iteration", "metric_calls", "lm_calls"):
                assert getattr(typed, f.name) == raw[f.name], (raw["event"], f.name)
        # built from its own fields, an event gives the same dict back
        own = {f.name: getattr(typed, f.name) for f in fields(typed)
               if f.name not in ("kind", "data", "replayed")}
        assert json.dumps(type(typed)(**own).to_dict()) == json.dumps(raw)


def test_every_emit_site_builds_its_event_class():
    """No event is emitted as a bare kind string: each site constructs its typed class."""
    import re

    root = Path(evo.__file__).parent
    untyped = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py"))
               for n, line in enumerate(path.read_text().splitlines(), 1)
               if re.search(r"\bemit\(\s*[\"']", line)]
    assert untyped == []


def test_an_event_built_from_its_fields_leaves_unset_ones_out():
    from evo.search.events import CandidateEvaluated, ProposalRejected

    rejected = ProposalRejected(candidate=3, op="reflection", reason="too long")
    assert rejected.kind == "proposal_rejected" and rejected.iteration == 0
    assert list(rejected.to_dict()) == ["event", "t", "iteration", "metric_calls", "lm_calls",
                                        "candidate", "op", "reason"]
    screened = CandidateEvaluated(candidate=4, minibatch=[1, 2], minibatch_score=0.5,
                                  parent_minibatch_score=0.0, accepted=True)
    assert list(screened.data) == ["candidate", "minibatch", "minibatch_score",
                                   "parent_minibatch_score", "accepted"]
    assert screened.val_score is None and "val_score" not in screened.to_dict()


def test_search_stamps_typed_events_and_a_users_own_kinds(tmp_path):
    from dataclasses import dataclass

    from evo.search.events import Event, ProposalRejected

    @dataclass(frozen=True)
    class RoundDone(Event, kind="test_round_done"):
        round: int = 0

    seen, hooked = [], []

    class Hooks(evo.Callback):
        def on_event(self, event):
            seen.append(event)

        def on_proposal_rejected(self, event):
            hooked.append(event)

        def on_test_round_done(self, event):
            hooked.append(event)

    class Rounds(evo.SearchConfig):
        name = "test_rounds"

        def run(self, search):
            search.next_iteration()
            search.emit(ProposalRejected(candidate=0, op="test", reason="just because"))
            search.emit(RoundDone(round=1))
            search.emit("test_untyped_kind", note="a kind with no class")

    try:
        result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), cache=False,
                              optimizer=Rounds(budget=evo.Budget(metric_calls=60)),
                              callbacks=[Hooks()], run_dir=tmp_path / "run")
    finally:
        Event.kinds.pop("test_round_done")
    mine = [e for e in result.events if e["event"].startswith(("test_", "proposal"))]
    assert [e["event"] for e in mine] == ["proposal_rejected", "test_round_done",
                                          "test_untyped_kind"]
    assert all(e["iteration"] == 1 and e["metric_calls"] == len(VAL) and e["t"] > 0
               for e in mine)
    assert mine[1]["round"] == 1 and mine[2]["note"] == "a kind with no class"
    assert [type(e).__name__ for e in hooked] == ["ProposalRejected", "RoundDone"]
    assert type(seen[-3]).__name__ == "Event" and seen[-3].data == {"note": "a kind with no class"}
    logged = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [x["event"] for x in logged] == [e["event"] for e in result.events]


def test_runs_events_still_exports_the_event_classes():
    import evo.runs.events as sinks
    import evo.search.events as typed

    for name in typed.__all__:
        assert getattr(sinks, name) is getattr(typed, name)
