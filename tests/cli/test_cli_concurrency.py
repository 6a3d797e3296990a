"""`evo run` / `evo eval` with the concurrency flags, against a real loopback latency server
through the hosted client: the same run at --concurrency 1 and 8, calls really in flight
together, a provider quota (--max-rpm) that paces without changing the result, and one clear
error for concurrency on the in-process model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evo.cli import main
from evo.testing import assert_same_run
from evo.testing.latency_server import LatencyServer, make_respond, serving

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("dspy") is None,
                                 reason="dspy not installed"),
              pytest.mark.usefixtures("offline")]


def write_data(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"text": f"item {i} is {'good' if i % 2 else 'bad'} stuff",
                                        "label": "pos" if i % 2 else "neg"}) + "\n"
                            for i in range(n)))
    return path


def argv(command: list[str], data: Path, srv: LatencyServer, *extra: str) -> list[str]:
    return [*command, "--data", str(data), "--inputs", "text", "--outputs", "label",
            "--labels", "pos,neg", "--n-train", "10", "--n-val", "8", "--n-test", "8",
            "--model", "openai/latency", "--api-base", srv.base, "--api-key", "x",
            "--no-cache", *extra]


@pytest.fixture
def server():
    # answers depend on the whole prompt, so candidates differ and the search has work to do
    with serving(latency_s=0.01, respond=make_respond(("pos", "neg"), whole_prompt=True)) as srv:
        yield srv


def test_a_run_at_concurrency_8_is_the_run_at_concurrency_1(server, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    common = ["--budget", "40", "--no-knn", "--encoder", "hashing", "--quiet"]
    assert main(argv(["run"], data, server, *common, "--concurrency", "1",
                     "--out", str(tmp_path / "one"))) == 0
    assert server.stats()["peak_inflight"] == 1
    server.reset()
    assert main(argv(["run"], data, server, *common, "--concurrency", "8",
                     "--out", str(tmp_path / "eight"))) == 0
    assert server.stats()["peak_inflight"] > 1  # one candidate's cells went out together
    assert_same_run(tmp_path / "one", tmp_path / "eight")
    capsys.readouterr()


def test_eval_with_a_quota_answers_the_same(server, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    assert main(argv(["run"], data, server, "--budget", "20", "--no-knn", "--encoder", "hashing",
                     "--quiet", "--out", str(tmp_path / "run"))) == 0
    capsys.readouterr()
    best = str(tmp_path / "run" / "best.json")
    assert main(argv(["eval", best], data, server, "--concurrency", "4")) == 0
    free = capsys.readouterr().out
    # a quota far above what 8 requests need: paced through the bucket, nothing changes
    assert main(argv(["eval", best], data, server, "--max-rpm", "6000")) == 0
    assert capsys.readouterr().out == free


def test_concurrency_on_the_in_process_model_is_one_clear_error(tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    program = tmp_path / "p.json"
    program.write_text(json.dumps({"evo_program": 1, "signature": {
        "inputs": [{"name": "text"}], "outputs": [{"name": "label"}]}, "labels": ["pos", "neg"],
        "instruction": "Classify."}))
    code = main(["eval", str(program), "--data", str(data), "--inputs", "text", "--outputs",
                 "label", "--labels", "pos,neg", "--n-test", "8", "--model",
                 "qwen2.5-coder-0.5b", "--concurrency", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "serves one call at a time" in err and "Traceback" not in err
