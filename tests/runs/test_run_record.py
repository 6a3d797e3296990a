"""The run record (evo.runs.record): one schema for run.json, checkpoint.json and result.json,
with a version; the files of a run written before the schema had one (tests/data/old_run, a copy
of a real `evo run` directory from before the restructure, journal left out) still load, report
and resume."""

import json
import shutil
from pathlib import Path

import pytest

import evo
from evo.lm import ScriptedLM
from evo.runs.record import VERSION, Checkpoint, ResultRecord, RunInfo, SearchRecord
from evo.runs.store import read_run_file, read_run_info, run_cli
from evo.testing import TRAIN, VAL, program, respond

OLD_RUN = Path(__file__).parents[1] / "data" / "old_run"
RECORDS = {"run.json": RunInfo, "checkpoint.json": Checkpoint, "result.json": ResultRecord}


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    return run


def read(path: Path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_an_old_file_loads_as_version_0_and_keeps_every_field(name):
    raw = read(OLD_RUN / name)
    assert "version" not in raw
    record = RECORDS[name].from_dict(raw)
    assert record.version == 0
    assert record.to_dict() == {**raw, "version": 0}


def test_the_files_of_a_new_run_round_trip_through_the_record(tmp_path):
    opt = evo.Evolution(budget=evo.Budget(metric_calls=60), knn=False, encoder="hashing")
    result = evo.optimize(program(), TRAIN, VAL, lm=ScriptedLM(respond), optimizer=opt,
                          cache=False, run_dir=tmp_path / "run")
    for name, kind in RECORDS.items():
        raw = read(tmp_path / "run" / name)
        assert raw["version"] == VERSION
        assert kind.from_dict(raw).to_dict() == raw, name
    written = read(tmp_path / "run" / "result.json")
    assert written == json.loads(json.dumps(result.to_record().to_dict(), default=str))
    assert SearchRecord.from_dict(written) == result.record


def test_a_newer_file_keeps_the_fields_this_evo_does_not_know():
    raw = {**read(OLD_RUN / "run.json"), "version": VERSION + 1, "owner": "someone"}
    info = RunInfo.from_dict(raw)
    assert info.extra == {"owner": "someone"} and info.to_dict() == raw


@pytest.mark.parametrize("damage, where", [({"spec": 3}, "spec"), ({"cli": [1]}, "cli"),
                                           ({"version": "one"}, "version")])
def test_a_wrong_shape_names_its_field(old_run, damage, where):
    (old_run / "run.json").write_text(json.dumps({**read(old_run / "run.json"), **damage}))
    with pytest.raises(evo.DamagedFileError, match=f'run.json.*"{where}"'):
        read_run_info(old_run / "run.json")


def test_resume_reads_an_old_run_directory(old_run):
    """`evo run --resume` reads the old run file; the store reads the old checkpoint (and so
    refuses to resume with the journal gone: it would pay the 256 answers again)."""
    raw = read(OLD_RUN / "run.json")
    assert run_cli(old_run) == raw["cli"]
    assert read_run_file(old_run / "run.json")["spec"] == raw["spec"]
    with pytest.raises(evo.DamagedFileError, match="holds 0 answers, but checkpoint.json saw 256"):
        evo.RunStore(old_run, raw["spec"])


def test_evo_report_reads_an_old_run_directory(old_run):
    pytest.importorskip("matplotlib")
    from evo.analysis.report import write_report
    page = write_report(old_run).read_text()
    assert "From the seed to the best" in page and "trec" in page
    (old_run / "result.json").unlink()  # a run still going: the report reads the checkpoint
    (old_run / "report.json").unlink()
    assert "From the seed to the best" in write_report(old_run).read_text()
