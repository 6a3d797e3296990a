"""Nothing silent: failed cells (metric, LM, parser) are counted per kind in the report and the
events, a run where most cells failed says so, duplicate examples never crash, an empty or
mismatched test set fails before any LM call, and `evo report` survives hostile run files."""

import json
import math
import warnings
from pathlib import Path

import pytest

import evo
from evo.analysis.report import build, write_report
from evo.errors import ConfigError, DamagedFileError, RunFailedError, StorageError
from evo.lm import LMSession, ScriptedLM
from evo.search.evaluate import error_kind
from evo.testing import TEST, TRAIN, VAL, make, program, respond


def optimizer(budget=120):
    return evo.Evolution(budget=evo.Budget(metric_calls=budget), knn=False, encoder="hashing")


def task_calls(lm):
    return [c for c in lm.calls if c.purpose == "task"]


# ---- 1. a metric that fails is a visible cell error of kind "metric" -------------------------

def _raises(example, prediction):
    raise KeyError("label")


BAD_METRICS = {
    "raises": (_raises, "raised KeyError"),
    "none": (lambda e, p: None, "returned None"),
    "string": (lambda e, p: "1.0", "returned '1.0'"),
    "inf": (lambda e, p: math.inf, "returned inf"),
    "nan": (lambda e, p: float("nan"), "returned nan"),
    "short_tuple": (lambda e, p: (1.0,), "returned (1.0,)"),
    "tuple_without_text": (lambda e, p: (1.0, 2), "returned (1.0, 2)"),
}


@pytest.mark.parametrize("case", list(BAD_METRICS))
def test_a_metric_failing_everywhere_stops_after_the_seed_and_is_on_record(tmp_path, case):
    fn, said = BAD_METRICS[case]
    lm = ScriptedLM(respond)
    with pytest.raises(RunFailedError, match=f"metric failed on all {len(VAL)}.*{said[:8]}"):
        evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=optimizer(), metric=fn,
                     cache=False, run_dir=tmp_path / "run")
    assert len(task_calls(lm)) == len(VAL)  # only the seed's validation was paid for
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    errors = checkpoint["cell_errors"]
    assert len(errors) == len(VAL)
    assert all(e["error"].startswith("metric '<lambda>' " if case != "raises"
                                     else "metric '_raises' raised KeyError") for e in errors)
    assert said in errors[0]["error"]
    events = [json.loads(line)
              for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    seed = next(e for e in events if e["event"] == "candidate_evaluated")
    # the seed's held-out cells are paid with its validation, but only the cells that choose
    # are on its candidate_evaluated event
    assert seed["cell_errors"] == {"metric": len(VAL) - round(0.2 * len(VAL))}


def test_a_metric_failing_on_most_cells_gives_a_meaningless_report():
    def flaky(example, prediction):  # fails on 24 of 30 validation and 32 of 40 test examples
        if int(example.inputs["text"].split()[1]) % 5:
            return None
        return evo.exact_match(example, prediction)

    with pytest.warns(RuntimeWarning, match="most of the search's cells failed"):
        result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond),
                              optimizer=optimizer(), metric=flaky, cache=False)
    assert result.events[-1]["cell_failures"]["by_kind"] == {
        "metric": result.search_summary()["cell_errors"]}
    with pytest.warns(RuntimeWarning, match="most cells failed"):
        report = result.report(TEST)
    assert report.failures["baseline"]["by_kind"] == {"metric": 32}
    assert report.failures["optimized"]["failed"] == 32
    assert report.failed_share >= 0.8 and report.meaningless
    text = str(report)
    assert "failed cells, test: baseline" in text and "32 of 40 (80%): metric 32" in text
    assert "WARNING: most cells failed" in text
    data = report.to_dict()
    assert data["meaningless"] is True and data["failures"]["search"]["by_kind"]["metric"] > 0
    json.dumps(data)  # report.json stays writable


def test_lm_failures_are_counted_per_kind_and_a_healthy_run_is_not_meaningless():
    def errors(req):
        text = req.messages[-1].content
        if req.purpose == "task" and "item 203 " in text:
            return TimeoutError("the request timed out")
        if req.purpose == "task" and "item 217 " in text:
            return RuntimeError("HTTP 429 Too Many Requests")
        return None

    session = LMSession(ScriptedLM(respond, errors=errors), backoff_s=0)
    result = evo.optimize(program(), TRAIN, VAL, lm=session, optimizer=optimizer(),
                          cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "most cells failed" warning
        report = result.report(TEST)
    assert report.failures["baseline"]["by_kind"] == {"lm: throttled": 1, "lm: timeout": 1}
    assert report.failures["search"]["failed"] == 0
    assert not report.meaningless and report.failed_share == pytest.approx(2 / 40)
    assert "2 of 40 (5%): lm: throttled 1, lm: timeout 1" in str(report)
    assert "WARNING" not in str(report)


@pytest.mark.parametrize("message, kind", [
    ("LM error: m: call failed after 3 attempt(s): LMTransientError: empty reply from m",
     "lm: empty reply"),
    ("LM error: m: call failed after 3 attempt(s): RateLimitError: 429", "lm: throttled"),
    ("LM error: m: call failed after 3 attempt(s): ReadTimeout: timed out", "lm: timeout"),
    ("LM error: m: prompt longer than the context window (request error)", "lm: request error"),
    ("LM error: scripted failure on call 3", "lm"),
    # the reason recorded where the error was raised wins over any word in the message
    ("LM error: [server error] m at http://127.0.0.1:42917/v1: call failed: HTTP 503",
     "lm: server error"),
    ("LM error: [dropped connection] m at http://h:429/v1: server closed connection",
     "lm: dropped connection"),
    ("LM error: [transient] m: something new", "lm"),
    # untagged (older) messages: a port, a token count or a duration is not a status
    ("LM error: m at http://127.0.0.1:42917/v1: upstream exploded (HTTP 503)",
     "lm: server error"),
    ("LM error: m: resulted in 14290 tokens; rate limit? no (request error)", "lm: request error"),
    ("LM error: m: timed out after 1429 ms", "lm: timeout"),
    ("parse failed: IndexError: list index out of range", "parse"),
    ("metric 'f1' raised ZeroDivisionError: division by zero", "metric"),
])
def test_cell_error_kinds(message, kind):
    assert error_kind(message) == kind


def test_an_empty_reply_is_an_lm_failure_and_blank_text_an_unparseable_answer():
    """Nothing at all is the LM's failure (retried, never cached); a reply of blanks is an
    answer the program could not parse, whose feedback still tells reflection what was due."""
    def reply(req):
        text = req.messages[-1].content
        return "" if "item 201 " in text else "  \n" if "item 202 " in text else respond(req)

    from evo.search.evaluate import evaluate_program
    _, cells = evaluate_program(program(), TEST[:4], LMSession(ScriptedLM(reply), retries=0),
                                evo.exact_match)
    assert [c.kind for c in cells] == [None, "lm: empty reply", None, None]
    assert not cells[2].prediction.ok and cells[2].error is None


# ---- 3. duplicates never crash; an empty or mismatched test set fails up front --------------

def test_duplicate_examples_are_scored_once_with_one_warning(tmp_path):
    train = TRAIN + TRAIN[:3]
    val = VAL + [make(100), make(101)]
    lm = ScriptedLM(respond)
    with pytest.warns(UserWarning) as seen:
        result = evo.optimize(program(), train, val, lm=lm, optimizer=optimizer(),
                              cache=False)
    said = [str(w.message) for w in seen if "duplicate" in str(w.message)]
    assert any("trainset: 3 duplicate examples dropped" in m for m in said)
    assert any("valset: 2 duplicate examples dropped" in m for m in said)
    assert len(result.matrix.examples) == len(VAL)
    with pytest.warns(UserWarning, match="testset: 5 duplicate examples dropped.*; 40 left"):
        report = result.report(TEST + TEST[:5])
    assert report.n == len(TEST) and len(report.example_ids) == len(set(report.example_ids))
    with pytest.warns(UserWarning, match="data: 1 duplicate example dropped"):
        assert evo.evaluate(result.best, TEST + TEST[:1], lm=lm, cache=False) == \
            report.optimized
    with pytest.warns(UserWarning, match="1 duplicate example dropped"):
        ab = evo.compare(result.baseline, result.best, TEST + TEST[-1:], lm=lm, cache=False)
    assert ab.n == len(TEST)


def test_a_store_of_a_trainset_with_repeats_is_known_by_the_data_as_given(tmp_path):
    # Before: the spec held the digest of the de-duplicated rows ('40:...'), so a run stored
    # before repeats were dropped (its spec: the rows as given, '43:...') no longer resumed.
    from evo.runs.store import data_digest
    train = TRAIN + TRAIN[:3]
    run = dict(lm=ScriptedLM(respond), optimizer=optimizer(), cache=False,
               run_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match="trainset: 3 duplicate examples dropped"):
        first = evo.optimize(program(), train, VAL, **run)  # (the directory is released)
    spec = json.loads((tmp_path / "run" / "run.json").read_text())["spec"]
    assert spec["trainset"] == data_digest(train) and spec["trainset"].startswith("43:")
    assert spec["valset"] == data_digest(VAL)
    with pytest.warns(UserWarning, match="trainset: 3 duplicate examples dropped"):
        again = evo.optimize(program(), train, VAL, **run)  # resumes: no RunMismatchError
    assert again.best_val == first.best_val and again.usage.calls == 0


def test_optimize_releases_its_run_directory_when_it_raises(tmp_path):
    import fcntl

    def stop(event):
        if event["event"] == "complete":
            raise KeyboardInterrupt  # after the search: the result was about to be saved
    with pytest.raises(KeyboardInterrupt) as info:  # (its traceback holds on to the store)
        evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=optimizer(),
                     cache=False, run_dir=tmp_path / "run", on_event=stop)
    assert info.traceback  # released by optimize itself, not by the garbage collector
    with open(tmp_path / "run" / "lock", "rb") as fh:  # (BlockingIOError while still held)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_empty_test_set_fails_before_any_lm_call():
    lm = ScriptedLM(respond)
    with pytest.raises(ConfigError, match="testset is empty"):
        evo.search.evaluate.check_testset(program(), [])
    with pytest.raises(ConfigError, match="data is empty"):
        evo.evaluate(program(), [], lm=lm, cache=False)
    result = evo.optimize(program(), TRAIN, VAL, lm=lm, optimizer=optimizer(), cache=False)
    before = len(lm.calls)
    with pytest.raises(ConfigError, match="testset is empty"):
        result.report([])
    assert len(lm.calls) == before


def test_a_program_for_other_labels_is_an_error_not_a_zero():
    other = [evo.Example(inputs={"text": f"thing {i}"}, outputs={"label": lab})
             for i, lab in enumerate(["maybe", "pos", "unsure"])]
    lm = ScriptedLM(respond)
    with pytest.raises(ConfigError, match="'maybe', 'unsure'.*cannot answer"):
        evo.evaluate(program(), other, lm=lm, cache=False)
    with pytest.raises(ConfigError, match="cannot answer"):
        evo.compare(program(), program(), other, lm=lm, cache=False)
    assert not lm.calls


# ---- 5, 6. `evo report` escapes every field and survives damaged files ----------------------

PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=optimizer(),
                          cache=False, run_dir=out)
    report = result.report(TEST)
    (out / "report.json").write_text(json.dumps(report.to_dict(), default=str))
    return out


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_report_escapes_every_field_of_a_hand_edited_run(run_dir):
    script, img = PAYLOADS

    def run_json(d):
        d["spec"]["model"] = img
        d["spec"]["seed"] = script
        d["spec"]["optimizer"]["optimizer"] = script
        d["cli"] = {"task": script, "data": img}

    def record(d):
        d["instructions"][0]["text"] = script + " " + img
        for c in d["candidates"]:
            c["op"], c["note"] = img, script
        d["cell_errors"] = [{"candidate": 0, "example": img, "error": "metric " + script}]
        d["stop_reason"] = img
        if "val_examples" in d:  # result.json (a checkpoint has no examples nor summary)
            d["val_examples"][0]["inputs"] = {"text": script}
            d["val_examples"][0]["outputs"] = {"label": img}
            d["replies"]["baseline"] = [script] * len(d["val_examples"])
            d["replies"]["best"] = [img] * len(d["val_examples"])
            d["summary"]["stop_reason"] = img
            d["summary"]["usage"]["by_purpose"] = {script: 3}
            d["summary"]["sittings"][0]["sitting"] = img
        for c in d["candidates"]:
            if c["val_score"] is not None:
                c["val_score"] = str(c["val_score"])  # a number written as a string

    def test(d):
        d["failures"]["baseline"]["by_kind"] = {img: 1}
        d["failures"]["baseline"]["failed"] = 1

    _edit(run_dir / "run.json", run_json)
    for name in ("result.json", "checkpoint.json"):
        _edit(run_dir / name, record)
    _edit(run_dir / "report.json", test)
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": script, "candidate": img}) + "\n")
        fh.write(json.dumps({"event": "candidate_evaluated", "val_score": "0.5",
                             "metric_calls": "200", "lm_calls": img}) + "\n")
        fh.write("not json at all\n")
    page = build(run_dir)
    for payload in PAYLOADS:
        assert payload not in page
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "2 line(s) of" in page  # the unreadable event lines are named, not fatal
    (run_dir / "result.json").unlink()  # an unfinished run: read from the checkpoint
    assert script not in build(run_dir)


@pytest.mark.parametrize("name, damage, problem", [
    ("result.json", lambda p: p.write_text(p.read_text()[:-300]), "not valid JSON"),
    ("result.json", lambda p: p.write_text("[1, 2]"), "not an evo search record"),
    ("result.json", lambda p: p.write_text("[" * 50_000 + "]" * 50_000), "nested too deeply"),
    ("result.json", lambda p: _edit(p, lambda d: d["candidates"][0].update(val_score="<b>")),
     "candidates[0].val_score"),
    ("result.json", lambda p: _edit(p, lambda d: d["candidates"][1].update(genome=[99, 0, 0])),
     "candidates[1].genome"),
    ("result.json", lambda p: _edit(p, lambda d: d["scores"][0].pop()), "scores"),
    ("result.json", lambda p: _edit(p, lambda d: d.update(best_candidate=999)), "#999"),
    ("result.json", lambda p: _edit(p, lambda d: d.update(cell_errors={"a": 1})),
     "cell_errors"),
    ("run.json", lambda p: _edit(p, lambda d: d.update(spec=3)), "spec"),
    ("run.json", lambda p: p.write_text('"just a string"'), "not a JSON object"),
    ("report.json", lambda p: _edit(p, lambda d: d.update(n="many")), "n:"),
])
def test_a_damaged_run_file_is_one_clear_error(run_dir, name, damage, problem):
    damage(run_dir / name)
    with pytest.raises(DamagedFileError) as info:
        build(run_dir)
    assert str(run_dir / name) in str(info.value) and problem in str(info.value), info.value


def test_report_out_to_a_folder_writes_report_html_and_leaves_no_tmp(run_dir, tmp_path, capsys):
    from evo.cli import main

    folder = tmp_path / "reports"
    folder.mkdir()
    assert main(["report", str(run_dir), "--out", str(folder)]) == 0
    assert (folder / "report.html").read_text().startswith("<!doctype html>")
    assert write_report(run_dir, folder) == folder / "report.html"
    assert write_report(run_dir) == run_dir / "report.html"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=f"{blocker}/report.html: cannot write"):
        write_report(run_dir, blocker / "report.html")
    left = [p.name for d in (tmp_path, folder, run_dir) for p in d.iterdir()
            if p.name.endswith(".tmp")]
    assert not left


def test_result_save_refuses_a_folder_evo_did_not_make(tmp_path):
    """`Result.save(DIR)` follows the run-directory rule of `optimize(run_dir=...)`: a folder
    holding the user's files is refused before anything is written."""
    result = evo.optimize(program(), TRAIN, VAL, lm=LMSession(ScriptedLM(respond)),
                          optimizer=optimizer(), cache=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "result.json").write_text("my own")
    with pytest.raises(evo.UnsafeRunDirError, match="not an evo run directory"):
        result.save(mine)
    assert [p.name for p in mine.iterdir()] == ["result.json"]
    assert (result.save(tmp_path / "new") / "best.json").is_file()
    assert result.save(tmp_path / "new")  # its own earlier save may be replaced
    other = evo.optimize(program(), TRAIN, VAL, lm=LMSession(ScriptedLM(respond)),
                         optimizer=optimizer(), cache=False, run_dir=tmp_path / "other")
    before = {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir() if p.is_file()}
    with pytest.raises(evo.UnsafeRunDirError, match="holds another run"):
        result.save(tmp_path / "other")  # another run's directory: its files are not replaced
    assert {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir()
            if p.is_file()} == before
    assert other.save(tmp_path / "other")  # ... but that run's own result may be saved there


@pytest.mark.parametrize("cache", [5, ["x"], object()])
def test_a_cache_argument_of_the_wrong_kind_is_a_config_error(cache):
    with pytest.raises(evo.ConfigError, match="cache="):
        evo.evaluate(program(), TEST[:2], lm=ScriptedLM(respond), cache=cache)


@pytest.mark.parametrize("make_call, says", [
    (lambda: evo.Budget(metric_calls=0), "metric_calls"),
    (lambda: evo.Budget(metric_calls="x"), "metric_calls"),
    (lambda: evo.Budget(metric_calls=10, lm_calls=-1), "lm_calls"),
    (lambda: evo.evaluate(program(), TEST[:2], lm=ScriptedLM(respond), max_tokens=0),
     "max_tokens"),
    (lambda: evo.optimize(program(), TRAIN, [], lm=ScriptedLM(respond), cache=False),
     "valset is empty"),
])
def test_api_mistakes_are_config_errors_before_any_call(make_call, says):
    with pytest.raises(evo.ConfigError, match=says):
        make_call()


def test_evaluate_takes_a_saved_program_file(tmp_path):
    path = program().save(tmp_path / "p.json")
    lm = ScriptedLM(respond)
    assert evo.evaluate(path, TEST[:4], lm=lm, cache=False) == evo.evaluate(
        program(), TEST[:4], lm=lm, cache=False)
