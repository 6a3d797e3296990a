"""`evo report` on a raced search: the Racing section (how far each child got against the
incumbent, the signal compared, counts by outcome), the budget line (unspent metric calls and
the stop reason in words), the held-out confirmation, the dense-score signal and the settings
genes; and a run stored before racing renders without any of it. Every expected figure is read
from the run's own files, not written down here."""

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

import evo
from evo.analysis.report import _genome_text, build
from evo.optimizers.steps import rungs
from evo.testing import HASHED, hashed_example

OLD_RUN = Path(__file__).parents[1] / "data" / "old_run"


def raced_run(run_dir: Path, answer_mode: str) -> Path:
    """A real Evolution run on the hashed task with 40 validation examples (enough for three
    rungs and a held-out part); ``answer_mode="rank"`` makes every cell dense."""
    val = [hashed_example(i) for i in range(100, 140)]
    seed = HASHED.program().model_copy(update={"answer_mode": answer_mode})
    # settings genes off: the run answers in one mode throughout (the settings text is tested
    # on a genome given them below)
    opt = evo.Evolution(budget=evo.Budget(metric_calls=300), knn=False, encoder="hashing",
                        settings=False)
    evo.optimize(seed, list(HASHED.train), val, lm=HASHED.lm(), optimizer=opt, cache=False,
                 progress=False, run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module", params=["generate", "rank"])
def run(request, tmp_path_factory):
    return raced_run(tmp_path_factory.mktemp(request.param) / "run", request.param)


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in lines if e["event"] == kind]


def section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}</h2>")
    return page[start:page.index("<h2>", start + 1)]


def test_racing_table_counts_each_race_from_the_events(run):
    page = build(run)
    raced = events(run, "candidate_raced")
    counts = Counter(e["outcome"] for e in raced)
    assert len(counts) >= 2  # the run has both survivors and casualties: the counts can differ
    summary = json.loads((run / "result.json").read_text())["summary"]
    assert summary["raced"] == dict(counts)
    racing = section(page, "Racing")
    assert f"{len(raced)} candidates raced" in racing
    for outcome, n in counts.items():
        assert f"<b>{n}</b> {outcome}" in racing
    rows = re.findall(r"<tr><td>#(\d+)</td>.*?</tr>", racing)
    assert [int(r) for r in rows] == [e["candidate"] for e in raced]
    n_choose = len(json.loads((run / "result.json").read_text())["val_example_ids"]) \
        - summary["confirmation"]["n"]
    schedule = rungs(n_choose, min(e["rungs"][0][0] for e in raced if e["rungs"]))
    assert len(schedule) >= 2 and f"rungs of {', '.join(map(str, schedule))} examples" in racing
    for e, row in zip(raced, re.findall(r"<tr><td>#\d+</td>.*?</tr>", racing), strict=True):
        examples, child, incumbent = e["rungs"][-1]
        assert f"{len(e['rungs'])} / {len(schedule)}" in row
        assert f">{examples}<" in row and f">{child:.3f}<" in row and f">{incumbent:.3f}<" in row
        assert e["outcome"] in row
    assert "The run's summary counts" not in racing  # the log and the summary agree


def test_budget_line_says_what_was_left_and_why_it_stopped(run):
    page = build(run)
    summary = json.loads((run / "result.json").read_text())["summary"]
    unspent = summary["budget"] - summary["metric_calls"]
    assert summary["unspent"] == unspent
    assert (f"{summary['metric_calls']} / {summary['budget']} ({unspent} unspent)"
            in section(page, "Outcome"))
    first = min(e["rungs"][0][0] for e in events(run, "candidate_raced") if e["rungs"])
    assert summary["stop_reason"] == "budget exhausted" and unspent < first
    assert "budget exhausted: less than one rung left" in page


def test_confirmation_stands_next_to_the_validation_score(run):
    page = build(run)
    conf = json.loads((run / "result.json").read_text())["summary"]["confirmation"]
    assert conf == {k: v for k, v in events(run, "confirmed")[-1].items()
                    if k in conf}
    outcome = section(page, "Outcome")
    assert (f"{conf['seed_holdout_score']:.3f} → {conf['holdout_score']:.3f}" in outcome)
    assert f"{conf['n']} examples never used to choose" in outcome
    assert f"its validation accuracy {conf['val_score']:.3f}" in outcome
    n_val = len(json.loads((run / "result.json").read_text())["val_example_ids"])
    assert f"{n_val - conf['n']} of the {n_val} examples (the rest held out)" in outcome


def test_dense_races_are_said_to_be_dense(run):
    page = build(run)
    raced = events(run, "candidate_raced")
    dense = [e for e in raced if e["dense"]]
    racing = section(page, "Racing")
    assert racing.count("<td>score + P(gold) (dense)</td>") == len(dense)
    assert racing.count("<td>0/1 score</td>") == len(raced) - len(dense)
    if dense:
        assert (f"{len(dense)} of {len(raced)} races compared the metric's score plus the "
                "model's probability") in racing
        mean = sum(e["rungs"][-1][1] for e in dense) / len(dense)
        assert f"the children averaged {mean:.3f}" in racing
    else:
        assert "Dense signal" not in racing


def test_the_rank_run_races_dense_and_the_generate_run_does_not(run):
    # the fixture's answer mode (its folder's name) decides the signal: label scoring gives
    # every race a dense one, generation none
    dense = {e["dense"] for e in events(run, "candidate_raced")}
    assert dense == {run.parent.name.startswith("rank")}


def test_a_checkpoint_reads_racing_and_confirmation_from_the_events(run, tmp_path):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    (cut / "result.json").unlink()  # as if killed after confirming: the checkpoint is read
    (cut / "report.json").unlink(missing_ok=True)
    page = build(cut)
    assert "unfinished" in page and "<h2>Racing</h2>" in page
    conf = events(run, "confirmed")[-1]
    assert f"{conf['seed_holdout_score']:.3f} → {conf['holdout_score']:.3f}" in page
    assert "unspent" not in page  # no summary, no budget line


def test_a_damaged_race_event_is_left_out_and_the_page_says_so(run, tmp_path):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    lines = (cut / "events.jsonl").read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if '"candidate_raced"' in x)
    bad = json.loads(lines[at])
    bad["rungs"] = [["eight"]]
    lines[at] = json.dumps(bad)
    (cut / "events.jsonl").write_text("\n".join(lines) + "\n")
    page = build(cut)
    assert "1 line(s) of" in page
    raced = events(run, "candidate_raced")
    assert f"{len(raced) - 1} candidates raced" in page
    assert "The run's summary counts" in page


def test_settings_genes_are_described_with_the_candidate(run, tmp_path):
    assert _genome_text([0, 0, 0, 5, 6]) == "no fixed demos"  # no trailer: as before
    assert _genome_text([0, 2, 0, 5, 6, -1, 1, 1, 0]) == \
        "2 demos [5, 6]; answers ranked by label scoring, calibrated"
    assert _genome_text([0, 0, 0, 5, 6, -1, 0, 0, 1]) == \
        "no fixed demos; answers generated, reasoning step"
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    record = json.loads((cut / "result.json").read_text())
    best = record["best_candidate"]
    record["candidates"][best]["genome"] += [-1, 1, 0, 0]
    (cut / "result.json").write_text(json.dumps(record))
    page = build(cut)
    assert f"Best candidate #{best}: " in page
    assert page.count("answers ranked by label scoring") >= 2  # the best's line and its step
    assert "settings: – → answers ranked by label scoring" in page


def test_an_old_run_renders_without_the_new_sections(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old)
    page = build(old)
    assert "From the seed to the best" in page and "<h2>Outcome</h2>" in page
    for new in ("<h2>Racing</h2>", "unspent", "held-out part of validation", "Dense signal",
                "settings:", "label scoring"):
        assert new not in page


def test_the_operators_table_shows_how_each_operators_children_fared(tmp_path):
    run_dir = tmp_path / "run"
    val = [hashed_example(i) for i in range(100, 140)]
    opt = evo.Evolution(budget=evo.Budget(metric_calls=300), encoder="hashing")
    evo.optimize(HASHED.program(), list(HASHED.train), val, lm=HASHED.lm(), optimizer=opt,
                 cache=False, run_dir=run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stats = next(e for e in events if e["event"] == "operator_stats")["stats"]
    page = build(run_dir)
    assert "<h3>Operators</h3>" in page
    for op, (raced, passed, validated) in stats.items():
        assert (f'<td>{op}</td><td class="num">{raced}</td><td class="num">{passed}</td>'
                f'<td class="num">{validated}</td>') in page


def test_the_report_names_a_candidates_model_gene():
    from evo.analysis.report import _settings_text
    from evo.search.genome import SETTINGS_MARK

    assert _settings_text([0, 0, 0, SETTINGS_MARK, 1, 0, 0, 1]).endswith("model #1")
    assert "model" not in _settings_text([0, 0, 0, SETTINGS_MARK, 1, 0, 0])
