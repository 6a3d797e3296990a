"""The reflection LM of `evo run` defaults to the strongest embedded model already fetched (never
a weaker one, never a download), says so, and is recorded so `--resume` repeats it. Models are
fake files of the pinned size with their stamps, in a cache dir of the test's own: none is
loaded (the backends are scripted)."""

from __future__ import annotations

import json

import pytest

from evo.cli import main
from evo.lm.models import MODELS, installed, models_dir, stronger_installed
from evo.lm.scripted import ScriptedLM

SMALL, TASK, LARGE = "smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EVO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_install(name: str, *, size: int | None = None, sha: str | None = None) -> None:
    """A sparse file of the model's pinned size (or ``size``) and its stamp (or ``sha``)."""
    spec = MODELS[name]
    models_dir().mkdir(parents=True, exist_ok=True)
    target = models_dir() / f"{name}.gguf"
    with open(target, "wb") as fh:
        fh.truncate(spec.size if size is None else size)
    (models_dir() / f"{name}.gguf.sha256").write_text((sha or spec.sha256) + "\n")


def test_only_a_larger_verified_model_is_chosen(cache_dir):
    assert MODELS[SMALL].size < MODELS[TASK].size < MODELS[LARGE].size
    assert stronger_installed(TASK) is None  # nothing fetched
    fake_install(TASK)
    assert stronger_installed(TASK) is None and stronger_installed(SMALL) == TASK
    fake_install(LARGE)
    assert stronger_installed(TASK) == LARGE and stronger_installed(SMALL) == LARGE
    assert stronger_installed(LARGE) is None  # never below the task model
    for model in ("openai/gpt-4o-mini", str(cache_dir / "mine.gguf")):
        assert stronger_installed(model) is None  # a model of unknown strength


@pytest.mark.parametrize("damage", [{"size": 1234}, {"sha": "0" * 64}])
def test_an_unverified_file_is_not_installed(cache_dir, damage):
    fake_install(LARGE, **damage)
    assert not installed(LARGE) and stronger_installed(TASK) is None
    fake_install(LARGE)
    assert installed(LARGE)
    (models_dir() / f"{LARGE}.gguf.sha256").unlink()  # fetched but never verified
    assert not installed(LARGE)


def write_data(path, n: int = 30):
    path.write_text("".join(json.dumps({"text": f"item {i} is {'good' if i % 2 else 'bad'}",
                                        "label": "pos" if i % 2 else "neg"}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture
def scripted(monkeypatch):
    """Scripted backends in place of the embedded models: the names the run asked for."""
    asked: list[str] = []

    def backend(spec: str) -> ScriptedLM:
        asked.append(spec)
        return ScriptedLM(lambda r: "label: pos" if r.purpose == "task"
                          else "Say whether the item is good (pos) or bad (neg).",
                          model_id=f"scripted-{spec}")

    monkeypatch.setattr("evo.cli.run.lm_call",
                        lambda args: {"lm": backend(args.model), "max_concurrency": None})
    monkeypatch.setattr("evo.cli.run.lm", lambda args, spec=None: backend(spec or args.model))
    return asked


def run_argv(data, out, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--inputs", "text", "--outputs", "label",
            "--labels", "pos,neg", "--n-train", "10", "--n-val", "8", "--n-test", "6",
            "--budget", "30", "--model", TASK, "--no-knn", "--encoder", "hashing",
            "--no-cache", "--quiet", "--out", str(out), *extra]


def recorded(out) -> dict:
    return json.loads((out / "run.json").read_text())


def test_run_reflects_with_the_strongest_installed_and_resume_repeats_it(
        cache_dir, tmp_path, scripted, capsys):
    fake_install(LARGE)
    data, out = write_data(tmp_path / "data.jsonl"), tmp_path / "run"
    assert main(run_argv(data, out)) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "reflection:" in line]
    assert len(said) == 1 and LARGE in said[0] and "--reflection-model" in said[0]
    assert scripted == [TASK, LARGE]
    run = recorded(out)
    assert run["cli"]["reflection_model"] == LARGE
    assert run["spec"]["reflection_model"] == f"scripted-{LARGE}"
    scripted.clear()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert scripted == [TASK, LARGE] and "reflection:" not in capsys.readouterr().err
    scripted.clear()
    assert main(run_argv(data, out)) == 0  # the same command again on its run store
    assert scripted == [TASK, LARGE]


@pytest.mark.parametrize("flag", ["same", TASK])
def test_same_or_the_task_model_keeps_the_task_model(cache_dir, tmp_path, scripted, capsys,
                                                     flag):
    fake_install(LARGE)
    data, out = write_data(tmp_path / "data.jsonl"), tmp_path / "run"
    assert main(run_argv(data, out, "--reflection-model", flag)) == 0
    assert "reflection:" not in capsys.readouterr().err
    assert scripted == [TASK]  # one backend: reflection is the task model's session
    run = recorded(out)
    assert run["cli"]["reflection_model"] == flag
    assert run["spec"]["reflection_model"] == f"scripted-{TASK}"
    scripted.clear()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert scripted == [TASK]


def test_without_a_stronger_model_the_task_model_reflects(cache_dir, tmp_path, scripted,
                                                          capsys):
    data, out = write_data(tmp_path / "data.jsonl"), tmp_path / "run"
    assert main(run_argv(data, out)) == 0
    assert "reflection:" not in capsys.readouterr().err and scripted == [TASK]
    assert recorded(out)["cli"]["reflection_model"] is None
    fake_install(LARGE)  # fetched since: a resume keeps the run as it was
    scripted.clear()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert scripted == [TASK]
    scripted.clear()
    assert main(run_argv(data, out)) == 0  # and so does the same command on its run store
    assert scripted == [TASK] and "reflection:" not in capsys.readouterr().err
    assert main(run_argv(data, tmp_path / "new")) == 0  # a new run takes the stronger one
    assert scripted == [TASK, TASK, LARGE]
