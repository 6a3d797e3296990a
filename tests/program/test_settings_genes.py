"""The Program settings genes in rendering and parsing: a reasoning step (asked for before the
answer line, never taken for the answer), label scoring's prefill and content-free prompt, and
the combinations a program refuses."""

from __future__ import annotations

import pytest

from evo.data import Example
from evo.program import CONTENT_FREE_INPUTS, Program


def reasoner(signature: str = "question -> answer: int", **kw) -> Program:
    return Program(signature=signature, reasoning=True, **kw)


def test_reasoning_asks_for_a_reasoning_line_first_and_the_answer_last():
    spec = reasoner().format_spec()
    lines = spec.splitlines()
    assert "step by step" in lines[0]
    assert lines[1].startswith("reasoning:") and lines[-1] == "answer: <an integer>"
    two = reasoner("question -> answer, unit").format_spec().splitlines()
    assert two[-3].startswith("reasoning:") and two[-2:] == ["answer: <text>", "unit: <text>"]
    # a program without reasoning renders as before
    assert Program(signature="question -> answer: int").format_spec() == (
        "Reply with exactly one line, nothing else:\nanswer: <an integer>")


def test_a_reasoning_reply_parses_to_its_answer_line():
    p = reasoner()
    reply = "reasoning: 3 apples and 4 more, so the answer is 7\nanswer: 7"
    assert p.parse(reply).outputs == {"answer": "7"}
    multi = "reasoning: first 3 apples.\nThen 4 more: 3 + 4 = 7.\nanswer: seven"
    assert p.parse(multi).outputs == {"answer": "7"}
    labelled = reasoner("question -> label", labels=["yes", "no"])
    assert labelled.parse("Reasoning: it is not, so no.\nLabel: No.").outputs == {"label": "no"}


def test_the_reasoning_never_becomes_the_answer():
    p = reasoner("question -> answer")
    pred = p.parse("reasoning: the capital of France is Paris")
    assert not pred.ok and "after the reasoning" in pred.error
    assert not reasoner().parse("reasoning: 3 + 4 = 7\nso it is 7").ok
    # without a reasoning line, a bare answer is read as before
    assert p.parse("Paris").outputs == {"answer": "Paris"}
    # the same reply without the reasoning gene: the first line, as always
    assert Program(signature="question -> answer").parse(
        "reasoning: the capital of France is Paris").outputs == {
        "answer": "reasoning: the capital of France is Paris"}


def test_a_reasoning_demo_shows_its_reasoning_when_it_has_one():
    with_reason = Example(inputs={"question": "2+2?"},
                          outputs={"answer": "4", "reasoning": "two and two"})
    plain = Example(inputs={"question": "3+3?"}, outputs={"answer": "6"})
    p = reasoner(demos=[with_reason, plain])
    assert p.render_outputs(with_reason) == "reasoning: two and two\nanswer: 4"
    assert p.render_outputs(plain) == "answer: 6"
    assert Program(signature="question -> answer: int").render_outputs(with_reason) == "answer: 4"


def test_number_words_parse_into_a_number_field_only_without_digits():
    p = Program(signature="question -> answer: int")
    assert p.parse("answer: twenty-one").outputs == {"answer": "21"}
    assert p.parse("answer: 3, not seven").outputs == {"answer": "3"}
    assert not p.parse("answer: many").ok


def test_rank_prefill_and_content_free_prompt():
    p = Program(signature="review, title -> sentiment", labels=["pos", "neg"],
                answer_mode="rank", calibrate=True,
                demos=[Example(inputs={"review": "great", "title": "t"},
                               outputs={"sentiment": "pos"})])
    assert p.rank_prefill() == "sentiment:"
    for text in CONTENT_FREE_INPUTS:
        messages = p.content_free_messages(text)
        assert messages[:-1] == p.prefix()
        assert messages[-1].role == "user"
        assert messages[-1].content == "\n".join(f"{f}: {text}".rstrip()
                                                 for f in ("review", "title"))
    assert CONTENT_FREE_INPUTS == ("N/A", "", "[MASK]")


@pytest.mark.parametrize("settings,words", [
    ({"answer_mode": "rank"}, "labels="),
    ({"answer_mode": "rank", "labels": ["a", "b"], "reasoning": True}, "reasoning=True"),
    ({"calibrate": True, "labels": ["a", "b"]}, "calibrate=True"),
    ({"reasoning": True, "signature": "reasoning -> label"}, "field named 'reasoning'"),
])
def test_settings_that_cannot_go_together_are_refused(settings, words):
    settings = {"signature": "question -> label", **settings}
    with pytest.raises(ValueError, match=words):
        Program(**settings)


def test_settings_genes_round_trip_and_stay_out_of_default_files(tmp_path):
    p = Program(signature="q -> label", labels=["a", "b"], answer_mode="rank", calibrate=True)
    assert Program.load(p.save(tmp_path / "p.json")) == p
    assert not {"answer_mode", "calibrate", "reasoning"} & set(
        Program(signature="q -> label").to_json())


@pytest.mark.parametrize("reply, expected", [
    ("reasoning: 40 costs 56, so\nTherefore, the answer is: 120%", "120%"),
    ("reasoning: three and four make seven, so the answer is 7.", "7"),
    ("reasoning: first the answer is 3, then correcting, the final answer = 5", "5"),
])
def test_a_reasoning_reply_without_its_field_line_gives_the_answer_it_states(reply, expected):
    program = Program(signature="question -> answer", reasoning=True)
    assert program.parse(reply).outputs == {"answer": expected}


def test_a_reasoning_reply_cut_before_any_answer_is_unparseable():
    program = Program(signature="question -> answer: int", reasoning=True)
    prediction = program.parse("reasoning: first add the two numbers, then")
    assert prediction.outputs is None and "after the reasoning" in prediction.error
