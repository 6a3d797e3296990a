"""`evo agents` and `evo jobs` on an agent's home, as a person at a shell would use them."""

from __future__ import annotations

import json

import pytest

import evo.testing as T
from evo.cli import main


@pytest.fixture
def agent_home(tmp_path):
    root = tmp_path / "agents"
    agent = T.sentiment_agent(root / "sentiment")
    T.serve(agent, [T.make(i) for i in range(300, 360)])
    agent.manager.run_pending()
    reply = agent(text="item 7 is bad stuff contact me at jane.doe@example.com")
    agent.close()
    return root, reply.call_id


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_agents_list_show_and_traces(agent_home, capsys):
    root, call_id = agent_home
    code, out, _ = run(capsys, "agents", "--root", str(root), "list")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("sentiment"))
    assert line.split()[:5] == ["sentiment", "v2", "2", "61", "60"] and "1 done" in line
    code, out, _ = run(capsys, "agents", "--root", str(root), "show", "sentiment")
    assert code == 0 and "v2" in out and "deployed" in out and "job:" in out
    assert "< alpha 0.05" in out  # the paired test that let it deploy
    code, out, _ = run(capsys, "agents", "--root", str(root), "traces", "sentiment",
                       "--limit", "1")
    (last,) = [json.loads(x) for x in out.splitlines()]
    assert last["call_id"] == call_id and "[EMAIL]" in last["inputs"]["text"]
    assert "jane.doe" not in out  # redacted before it was stored


def test_agents_feedback_export_import_deploy_rollback_prune(agent_home, capsys, tmp_path):
    root, call_id = agent_home
    code, out, _ = run(capsys, "agents", "--root", str(root), "feedback", "sentiment", call_id,
                       "1", "--expected", "label=neg")
    assert code == 0 and "graded" in out
    code, _, err = run(capsys, "agents", "--root", str(root), "feedback", "sentiment",
                       "c-unknown", "1")
    assert code == 2 and "c-unknown" in err
    dump = tmp_path / "traces.jsonl"
    assert run(capsys, "agents", "--root", str(root), "export", "sentiment", str(dump))[0] == 0
    assert len(dump.read_text().splitlines()) == 61
    code, out, _ = run(capsys, "agents", "--root", str(root), "import", "sentiment", str(dump))
    assert code == 0 and "imported 61" in out
    code, out, _ = run(capsys, "agents", "--root", str(root), "rollback", "sentiment")
    assert code == 0 and "version 1 deployed" in out
    code, out, _ = run(capsys, "agents", "--root", str(root), "deploy", "sentiment", "2")
    assert code == 0 and "version 2 deployed" in out
    code, _, err = run(capsys, "agents", "--root", str(root), "deploy", "sentiment", "9")
    assert code == 2 and "9" in err
    code, out, _ = run(capsys, "agents", "--root", str(root), "prune", "sentiment",
                       "--max-rows", "10")
    assert code == 0 and "deleted 51" in out
    code, _, err = run(capsys, "agents", "--root", str(root), "show", "nobody")
    assert code == 2 and "no agent 'nobody'" in err and "sentiment" in err


def test_jobs_list_show_events_cancel_retry(agent_home, capsys):
    root, _ = agent_home
    home = str(root / "sentiment" / "jobs")
    code, out, _ = run(capsys, "jobs", "--home", home, "list")
    assert code == 0 and "done" in out and "v2 deployed" in out
    job_id = out.splitlines()[1].split()[0]
    code, out, _ = run(capsys, "jobs", "--home", home, "show", job_id)
    job = json.loads(out)
    assert job["status"] == "done" and job["result"]["decision"]["deploy"] is True
    code, out, _ = run(capsys, "jobs", "--home", home, "events", job_id)
    events = [json.loads(x) for x in out.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "complete"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    code, out, _ = run(capsys, "jobs", "--home", home, "events", job_id, "--after",
                       str(len(events) - 1))
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [len(events)]
    code, _, err = run(capsys, "jobs", "--home", home, "cancel", job_id)
    assert code == 2 and "finished" in err
    code, _, err = run(capsys, "jobs", "--home", home, "show", "j-nope")
    assert code == 2 and "j-nope" in err
