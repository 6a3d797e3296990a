"""`evo run` end to end against a faulty endpoint (the loopback server of tests/fault_server.py,
through the real hosted client): a folder evo did not make is left alone, a resume from another
folder against a moved endpoint asks only what was never answered, and a run whose cells mostly
failed says so and exits 2 after saving everything."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evo.cli import main
from evo.testing.fault_server import FaultServer

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("dspy") is None,
                                 reason="dspy not installed"),
              pytest.mark.usefixtures("offline")]  # the fault server's fixtures: conftest.py


def write_data(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"text": f"item {i} is {'good' if i % 2 else 'bad'} stuff",
                                        "label": "pos" if i % 2 else "neg"}) + "\n"
                            for i in range(n)))
    return path


def run_argv(data: str, srv: FaultServer, out: str) -> list[str]:
    return ["run", "--data", data, "--inputs", "text", "--outputs", "label", "--labels", "pos,neg",
            "--n-train", "10", "--n-val", "8", "--n-test", "8", "--budget", "40",
            "--model", "openai/fault", "--api-base", srv.base, "--api-key", "x",
            "--timeout", "2", "--no-knn", "--encoder", "hashing", "--no-cache", "--quiet",
            "--out", out]


def item(body: dict) -> int | None:
    """The item number a task request asks about (None for the preflight and reflection)."""
    last = str(body["messages"][-1]["content"])
    words = last.split()
    for i, word in enumerate(words[:-1]):
        if word == "item" and words[i + 1].isdigit():
            return int(words[i + 1])
    return None


def test_out_leaves_a_folder_evo_did_not_make_untouched(server, tmp_path, monkeypatch, capsys):
    data = write_data(tmp_path / "data.jsonl")
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "result.json").write_text("my own results")
    (mine / "events.jsonl").write_text("my own log\n")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    assert main(run_argv(str(data), server, str(mine))) == 2
    err = capsys.readouterr().err
    assert "not an evo run directory" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # no lock, no run.json
    # home (and the folders above it) are refused the same way, before any LM call
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert main(run_argv(str(data), server, str(home))) == 2
    assert "home directory" in capsys.readouterr().err
    assert list(home.iterdir()) == []
    assert server.hits == []


def test_resume_from_another_folder_against_a_moved_endpoint(server, server_b, tmp_path,
                                                             monkeypatch, capsys):
    """The first sitting's endpoint fails every request about items 7, 14, 21 ... (503, retried,
    then a failed cell). `evo run --resume RUN --api-base B`, from another working directory
    although --data was relative: B is asked those requests again, and nothing A answered."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    write_data(project / "data.jsonl")
    server.rule = lambda body: "503" if (item(body) or 1) % 7 == 0 else None
    monkeypatch.chdir(project)
    assert main(run_argv("data.jsonl", server, "runs/r")) == 0
    first = capsys.readouterr()
    run = project / "runs" / "r"
    failed_first = [text for fault, text in server.hits if fault == "503"]
    answered_first = {text for fault, text in server.hits if fault == "ok"}
    assert failed_first, "no request met the fault: the test would prove nothing"
    assert "lm: server error" in first.out  # the report counts the failed cells by kind

    monkeypatch.chdir(elsewhere)
    assert main(["run", "--resume", str(run), "--api-base", server_b.base, "--api-key", "x",
                 "--quiet"]) == 0
    # (B is asked the preflight, which checks the new endpoint answers, and no paid request)
    asked_again = {text for _, text in server_b.hits if "Reply with the single word" not in text}
    assert set(failed_first) <= asked_again  # every transient failure was asked again
    assert not asked_again & answered_first  # nothing answered was paid twice
    assert json.loads((run / "run.json").read_text())["cli"]["data"] == str(
        project / "data.jsonl")


def test_a_run_whose_cells_mostly_failed_exits_2_after_saving(server, tmp_path, capsys):
    """Two items in three are throttled for good: the run finishes, saves its files and
    report, prints the failures per kind, and exits 2 saying the scores mean nothing."""
    data = write_data(tmp_path / "data.jsonl")
    server.retry_after = "0"
    server.rule = lambda body: "429" if (item(body) or 0) % 3 else None
    out = tmp_path / "run"
    assert main(run_argv(str(data), server, str(out))) == 2
    captured = capsys.readouterr()
    assert "most cells failed" in captured.err and "Traceback" not in captured.err
    # warnings too are one `evo:` line each, without Python's file name and source line
    assert all(line.startswith("evo: ") for line in captured.err.splitlines()), captured.err
    assert "lm: throttled" in captured.out
    for name in ("best.json", "result.json", "report.json", "report.html", "events.jsonl"):
        assert (out / name).is_file(), name
    assert "throttled" in (out / "report.html").read_text()


def test_cache_naming_a_users_file_or_folder_is_refused_untouched(server, tmp_path, capsys):
    """`--cache PATH` where PATH is the user's own folder or file (not an evo cache) is one
    clear error before any LM call; nothing there is moved or written."""
    data = write_data(tmp_path / "data.jsonl")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("important")
    settings = tmp_path / "settings.json"
    settings.write_text('{"mine": true}')
    for target in (project, settings):
        argv = [a for a in run_argv(str(data), server, str(tmp_path / "run")) if a != "--no-cache"]
        before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))
        assert main([*argv, "--cache", str(target)]) == 2
        err = capsys.readouterr().err
        assert "not a usable evo LM response cache" in err and str(target) in err
        assert sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*")) == before
    assert server.hits == []


@pytest.mark.parametrize("key, value", [("n_train", "ten"), ("labels", 7), ("model", 5),
                                        ("budget", 0), ("no_knn", "yes"), ("set", "a=1"),
                                        ("selection", "random")])
def test_resume_refuses_a_hand_edited_run_file(server, tmp_path, capsys, key, value):
    """A run.json whose recorded flags were edited into values the flags cannot take is one
    line naming the file and the field, before any LM call."""
    data = write_data(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    assert main(run_argv(str(data), server, str(out))) == 0
    run_file = out / "run.json"
    info = json.loads(run_file.read_text())
    info["cli"][key] = value
    run_file.write_text(json.dumps(info))
    hits = len(server.hits)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--api-key", "x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cli.{key}" in err and str(run_file) in err and err.count("\n") == 1
    assert len(server.hits) == hits


def test_predict_mistakes_and_failed_calls_are_one_line(server, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    assert main(run_argv(str(data), server, str(out))) == 0
    capsys.readouterr()
    base = ["predict", str(out / "best.json"), "--model", "openai/fault", "--api-base",
            server.base, "--api-key", "x", "--timeout", "2", "--no-cache"]
    assert main([*base, "--input", "nosuch=x"]) == 2
    assert "--input" in capsys.readouterr().err
    assert main([*base, "--input", "text=item 3 is good stuff"]) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "pos"}
    server.rule = lambda body: "500"
    assert main([*base, "--input", "text=item 5 is good stuff"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evo: ") and "HTTP 500" in err and "Traceback" not in err


def test_eval_and_compare_show_failed_cells_and_leave_them_out(server, tmp_path, capsys):
    """A failed cell is counted in `evo eval`'s line and left out of `evo compare`'s pairing
    (not a win for the other program); most cells failing is exit 2."""
    data = write_data(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    assert main(run_argv(str(data), server, str(out))) == 0
    capsys.readouterr()
    split = ["--data", str(data), "--inputs", "text", "--outputs", "label", "--labels", "pos,neg",
             "--n-train", "10", "--n-val", "8", "--n-test", "8"]
    lm = ["--model", "openai/fault", "--api-base", server.base, "--api-key", "x",
          "--timeout", "2", "--no-cache"]
    server.retry_after = "0"
    server.rule = lambda body: "429" if (item(body) or 0) % 4 == 1 else None
    assert main(["eval", str(out / "best.json"), *split, *lm]) == 0
    said = capsys.readouterr().out
    assert "failed cells: none" not in said and "lm: throttled" in said
    assert main(["compare", str(out / "baseline.json"), str(out / "best.json"), *split, *lm]) == 0
    said = capsys.readouterr().out
    assert "left out (a cell failed)" in said and "failed cells A" in said
    answered = []  # from here on, only the first task request of each command is answered

    def first_only(body: dict) -> str | None:
        if item(body) is None:
            return None
        answered.append(item(body))
        return None if len(answered) == 1 else "429"

    server.rule = first_only
    assert main(["eval", str(out / "best.json"), *split, *lm]) == 2
    assert "most cells failed" in capsys.readouterr().err
    answered.clear()
    assert main(["compare", str(out / "baseline.json"), str(out / "best.json"), *split, *lm]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_compare_from_a_run_directory_uses_its_endpoint_and_data(server, tmp_path, capsys):
    """`evo compare RUN/baseline.json RUN/best.json --data test` asks the run's own endpoint
    (its --api-base is in run.json), and refuses when the data file changed since the run
    (the test split would not be the run's)."""
    data = write_data(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    assert main(run_argv(str(data), server, str(out))) == 0
    report = json.loads((out / "report.json").read_text())
    assert f"--api-base {server.base}" in report["eval_command"]
    assert "--timeout 2" in report["eval_command"]
    capsys.readouterr()
    hits = len(server.hits)
    argv = ["compare", str(out / "baseline.json"), str(out / "best.json"), "--data", "test",
            "--api-key", "x"]
    assert main(argv) == 0
    assert "examples (paired)" in capsys.readouterr().out
    assert len(server.hits) > hits  # the run's server answered, not a public endpoint
    data.write_text(data.read_text().replace("stuff", "things"))  # every row edited
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data has changed since the run" in err and "Traceback" not in err
