"""`evo predict` answers as evaluation does: a label-scoring program (with its calibration) sends
choices, a reasoning program gets the reasoning reply length, and the requests are the ones
`evo eval` sends for the same input (so a run's cached answers are reused)."""

from __future__ import annotations

import json
import math

import pytest

import evo
from evo.cli import main
from evo.lm.scripted import ScriptedLM
from evo.search.evaluate import REASONING_MAX_TOKENS

LABELS = ["pos", "neg"]
CONTENT_FREE = {"text: N/A", "text:", "text: [MASK]"}


def last_user(request) -> str:
    return next(m.content for m in reversed(request.messages) if m.role == "user")


def biased_scores(request) -> dict[str, float]:
    """Content-free inputs lean hard to 'pos' (the prompt's bias); a real input leans to 'pos'
    less than that, so calibration turns its answer to 'neg'."""
    if last_user(request) in CONTENT_FREE:
        return {"pos": math.log(0.9), "neg": math.log(0.1)}
    return {"pos": math.log(0.6), "neg": math.log(0.4)}


def save(tmp_path, **settings) -> str:
    program = evo.Program(signature="text -> label", labels=LABELS,
                          instruction="Say whether the text is positive.", **settings)
    return str(program.save(tmp_path / "program.json"))


def predict(monkeypatch, backend, path: str, text: str = "item 3 is good stuff") -> int:
    monkeypatch.setattr("evo.cli.predict.lm", lambda args: backend)
    return main(["predict", path, "--input", f"text={text}", "--no-cache"])


@pytest.mark.parametrize("calibrate, answer", [(False, "pos"), (True, "neg")])
def test_a_label_scoring_program_scores_the_labels(tmp_path, monkeypatch, capsys,
                                                   calibrate, answer):
    backend = ScriptedLM(lambda r: "label: pos", scores=biased_scores)
    path = save(tmp_path, answer_mode="rank", calibrate=calibrate)
    assert predict(monkeypatch, backend, path) == 0
    assert json.loads(capsys.readouterr().out) == {"label": answer}
    task = [r for r in backend.calls if r.purpose == "task"]
    assert len(task) == 1 and task[0].choices == tuple(LABELS) and task[0].prefill == "label:"
    calibration = [r for r in backend.calls if r.purpose == "calibration"]
    assert {last_user(r) for r in calibration} == (CONTENT_FREE if calibrate else set())


def test_a_reasoning_program_gets_room_to_reason(tmp_path, monkeypatch, capsys):
    reply = "reasoning: the text says good, which is positive\nlabel: pos"
    backend = ScriptedLM(lambda r: reply if r.max_tokens >= REASONING_MAX_TOKENS else "reas")
    assert predict(monkeypatch, backend, save(tmp_path, reasoning=True)) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "pos"}
    assert [r.max_tokens for r in backend.calls] == [REASONING_MAX_TOKENS]


@pytest.mark.parametrize("settings", [{}, {"reasoning": True}, {"answer_mode": "rank"},
                                      {"answer_mode": "rank", "calibrate": True}])
def test_predict_sends_what_evaluation_sends(tmp_path, monkeypatch, capsys, settings):
    """The same requests as `evo.evaluate` for the same input, in the same order."""
    def respond(request):
        return "reasoning: fine\nlabel: neg" if settings.get("reasoning") else "label: neg"

    path = save(tmp_path, **settings)
    predicted, evaluated = (ScriptedLM(respond, scores=biased_scores) for _ in range(2))
    assert predict(monkeypatch, predicted, path) == 0
    out = json.loads(capsys.readouterr().out)
    example = evo.Example(inputs={"text": "item 3 is good stuff"}, outputs={"label": "neg"})
    accuracy = evo.evaluate(path, [example], lm=evaluated, cache=False)
    assert predicted.calls == evaluated.calls and predicted.calls
    assert (out == {"label": "neg"}) == (accuracy == 1.0)


def test_an_ensemble_of_label_scoring_members_votes_on_their_labels(tmp_path, monkeypatch,
                                                                      capsys):
    members = [evo.Program(signature="text -> label", labels=LABELS, instruction=f"Judge {i}.",
                           answer_mode="rank", calibrate=bool(i)) for i in range(3)]
    path = evo.EnsembleProgram(members=members).save(tmp_path / "ensemble.json")
    backend = ScriptedLM(lambda r: "label: pos", scores=biased_scores)
    assert predict(monkeypatch, backend, str(path)) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "neg"}  # two calibrated of three
    assert all(r.choices == tuple(LABELS) for r in backend.calls)


class NoScores(ScriptedLM):
    scores_choices = False


def test_a_rank_program_on_a_backend_that_cannot_score_is_one_error(tmp_path, monkeypatch,
                                                                    capsys):
    backend = NoScores(lambda r: "label: pos")
    assert predict(monkeypatch, backend, save(tmp_path, answer_mode="rank")) == 2
    err = capsys.readouterr().err
    assert err.startswith("evo: ") and err.count("\n") == 1 and "cannot score choices" in err
    assert backend.calls == []


def test_a_failed_call_is_exit_2_and_an_unparseable_reply_exit_1(tmp_path, monkeypatch, capsys):
    path = save(tmp_path)
    failing = ScriptedLM(lambda r: "label: pos", fail_every=1)
    assert predict(monkeypatch, failing, path) == 2
    err = capsys.readouterr().err
    assert err.startswith("evo: ") and "scripted failure" in err and "Traceback" not in err
    assert predict(monkeypatch, ScriptedLM(lambda r: "label: maybe"), path) == 1
    assert "could not be parsed" in capsys.readouterr().err
