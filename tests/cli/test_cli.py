"""The shell interface: clear errors for bad data and unreachable LMs, no traceback."""

import json
import subprocess
import sys

import pytest

from evo.cli import build_parser, main


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def good_rows(n=12):
    return [{"text": f"sample {i} is {'fine' if i % 2 else 'awful'}",
             "label": "pos" if i % 2 else "neg"} for i in range(n)]


def test_bad_row_is_one_clear_error(tmp_path, capsys):
    rows = good_rows()
    rows[4] = {"text": "sample 4", "label": "maybe"}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["run", "--data", str(path), "--inputs", "text", "--outputs", "label",
                 "--labels", "pos,neg", "--model", "openai/unused", "--no-cache", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl" in err and "5" in err and "label" in err and "maybe" in err
    assert "Traceback" not in err


def test_unreachable_hosted_lm_is_one_clear_error(tmp_path, capsys):
    pytest.importorskip("dspy")
    path = write_jsonl(tmp_path / "ok.jsonl", good_rows(30))
    code = main(["run", "--data", str(path), "--inputs", "text", "--outputs", "label",
                 "--labels", "pos,neg", "--n-train", "10", "--n-val", "10", "--n-test", "10",
                 "--model", "openai/gpt-4o-mini", "--api-base", "http://127.0.0.1:9/v1",
                 "--api-key", "none", "--no-cache", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "could not reach openai/gpt-4o-mini" in err and "127.0.0.1:9" in err
    assert "Traceback" not in err


def test_unknown_model_names_the_choices(capsys):
    from evo.errors import ConfigError
    from evo.lm import make_lm

    with pytest.raises(ConfigError, match="qwen2.5-coder-0.5b"):
        make_lm("gpt5")


def test_parser_defaults():
    args = build_parser().parse_args(["run", "--task", "trec"])
    assert args.budget == 300 and args.model == "qwen2.5-coder-0.5b" and args.seed == 0


@pytest.mark.parametrize("argv, says", [
    (["predict", "nope.json", "--input", "question"], "FIELD=TEXT"),  # checked before the file
    (["eval", "/nonexistent/p.json", "--task", "trec"], "No such file"),
])
def test_user_mistakes_are_one_line_errors(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("argv, says", [
    (["run", "--quiet"], "name a task"),
    (["run", "--task", "trec", "--data", "x.jsonl", "--inputs", "a", "--outputs", "b"],
     "name one source"),
    (["run", "--data", "x.jsonl"], "--data needs --inputs and --outputs"),
    (["run", "--task", "trec", "--set", "nonsense"], "NAME=VALUE"),
    (["run", "--task", "trec", "--set", "population_size=many"], "population_size"),
    (["run", "--resume", "/nonexistent/run"], "not a run directory"),
    (["report", "/nonexistent/run", "--price", "1"], "IN,OUT"),
    (["report", "/nonexistent/run", "--price=-1,nan"], "numbers >= 0"),
    (["run", "--task", "trec", "--optimizer", "nosuch"], "no optimizer named 'nosuch'"),
])
def test_cli_mistakes_exit_2_with_one_line(argv, says, capsys, tmp_path, monkeypatch):
    """Mistakes found after parsing say `evo: ...` and exit 2 (not 1, as `SystemExit(text)`
    did), before any data is fetched or any LM is called."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("evo: ") and says in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--n-test", "--n-val", "--n-train", "--budget"])
@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_non_positive_sizes_are_usage_errors(flag, value, capsys, tmp_path, monkeypatch):
    """`--n-test 0` used to pay for the whole search before failing; now argparse refuses it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--task", "trec", flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user-facing errors become one line: an internal error propagates."""
    import evo.cli.run

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(evo.cli.run, "load_task", broken)
    with pytest.raises(KeyError):
        main(["run", "--task", "trec"])


def test_bench_mistakes_and_damaged_results_are_one_line(tmp_path, capsys):
    """A bad suite file and a damaged result under --out are one `evo:` line naming them."""
    suite = tmp_path / "suite.toml"
    suite.write_text('tasks = ["trec"]\noptimizers = ["evolution"]\nbudgets = [0]\n')
    assert main(["bench", "--config", str(suite), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "budgets" in err and "positive" in err and err.count("\n") == 1
    cell = tmp_path / "out" / "trec" / "seed0" / "evolution-b300"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text('{"task": "trec", "optim')
    assert main(["bench", "--report-only", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(cell / "result.json") in err and "Traceback" not in err
    (cell / "result.json").write_text('["a list"]')
    assert main(["bench", "--report-only", "--out", str(tmp_path / "out")]) == 2
    assert "not an evo bench result" in capsys.readouterr().err


@pytest.mark.parametrize("argv, missing", [
    (["bench", "--tasks", "trec"], "optuna"),
    (["bench", "--report-only"], "matplotlib"),
])
def test_bench_without_its_extra_is_one_line_naming_it(monkeypatch, capsys, argv, missing):
    """The harness's packages are an extra: without them `evo bench` says which extra to
    install, in one line, before it imports the harness."""
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("evo: ") and err.count("\n") == 1
    assert missing in err and "pip install 'evo-prompt[bench]'" in err


def test_python_dash_m_runs_the_command():
    """`python -m evo.cli` is `evo` (the resume benchmark and a test start runs that way)."""
    done = subprocess.run([sys.executable, "-m", "evo.cli", "datasets"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "trec" in done.stdout.split()
