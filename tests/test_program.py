import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evo import Example, Program, Signature

LABELS = ("abbreviation", "description", "entity", "human", "location", "number")


def program(**kw) -> Program:
    return Program(signature="question -> label", labels=LABELS, **kw)


def test_signature_parse_and_str():
    sig = Signature.parse("question: str, context -> answer: int")
    assert [f.name for f in sig.inputs] == ["question", "context"]
    assert sig.outputs[0].type == "int"
    assert str(sig) == "question, context -> answer: int"
    assert Signature.parse(str(sig)) == sig


@pytest.mark.parametrize("bad", ["question", "a -> b -> c", "a, -> b", "a -> a", "x: list -> y"])
def test_signature_rejects_bad_text(bad):
    with pytest.raises(ValueError, match="signature"):
        Signature.parse(bad)


def test_messages_share_prefix_and_put_example_last():
    demo = Example(inputs={"question": "Who wrote Hamlet?"}, outputs={"label": "human"})
    p = program(demos=(demo,))
    a = p.messages(Example(inputs={"question": "Where is Rome?"}, outputs={"label": "location"}))
    b = p.messages(Example(inputs={"question": "How far?"}, outputs={"label": "number"}))
    assert a[:-1] == b[:-1] == p.prefix()
    assert a[-1].content == "question: Where is Rome?"
    assert [m.role for m in a] == ["system", "user", "assistant", "user"]
    assert "label: human" == a[2].content
    assert "one of: abbreviation, description" in a[0].content


@pytest.mark.parametrize("reply, label", [
    ("label: human", "human"),
    ("Label: Human.", "human"),
    ("**label**: location", "location"),
    ("number", "number"),
    ("The answer is an entity.\nlabel: entity", "entity"),
    ("label: <one of: a, b>\nlabel: description", "description"),
    ("  label = abbreviation ", "abbreviation"),
])
def test_parse_lenient(reply, label):
    assert program().parse(reply).outputs == {"label": label}


@pytest.mark.parametrize("reply, why", [
    ("", "no 'label:'"),
    ("label: human or location", "several labels"),
    ("label: banana", "not one of"),
])
def test_parse_failure_is_a_value_not_an_exception(reply, why):
    pred = program().parse(reply)
    assert not pred.ok and why in pred.error


def test_typed_outputs():
    p = Program(signature="q -> n: int, ok: bool, x: float")
    assert p.parse("n: 1,024\nok: Yes\nx: -2.5").outputs == {"n": "1024", "ok": "yes", "x": "-2.5"}
    assert not p.parse("n: 1.5\nok: yes\nx: 1").ok
    assert "no number" in p.parse("n: many\nok: yes\nx: 1").error


@given(st.sampled_from(LABELS), st.text(alphabet=" .,!*`'\"\n", max_size=4),
       st.sampled_from(["", "label: ", "Label:", "**label**: "]), st.booleans())
def test_parse_finds_label_in_any_dressing(label, noise, prefix, upper):
    text = prefix + (label.upper() if upper else label) + noise
    assert program().parse(text).outputs == {"label": label}


@given(st.text(max_size=200))
def test_parse_never_raises(text):
    pred = program().parse(text)
    assert pred.ok == (pred.error is None)
    if pred.ok:
        assert pred.outputs["label"] in LABELS


def test_save_load_roundtrip(tmp_path):
    demo = Example(inputs={"question": "Who?"}, outputs={"label": "human"})
    p = program(instruction="Classify.", demos=(demo,))
    path = p.save(tmp_path / "p.json")
    assert json.loads(path.read_text())["signature"] == "question -> label"
    q = Program.load(path)
    assert q == p and q.messages(demo) == p.messages(demo)


def test_load_rejects_foreign_json(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not an evo program"):
        Program.load(tmp_path / "x.json")


def test_labels_need_one_output():
    with pytest.raises(ValueError, match="exactly one output"):
        Program(signature="q -> a, b", labels=["x"])


def test_labels_that_fold_alike_stay_apart():
    p = Program(signature="q -> label", labels=["-1", "0", "1"])
    assert p.parse("label: -1").outputs == {"label": "-1"}
    assert p.parse("label: -1.").outputs == {"label": "-1"}
    assert p.parse("label: 1").outputs == {"label": "1"}
    q = Program(signature="q -> label", labels=["A", "a"])
    assert q.parse("label: A").outputs == {"label": "A"}
    assert q.parse("label: a").outputs == {"label": "a"}


def test_format_line_reads_well():
    assert "Reply with exactly one line, nothing else:" in program().format_spec()
    assert "exactly 2 lines" in Program(signature="q -> a, b").format_spec()


@pytest.mark.parametrize("reply, value", [
    ("n: .5", "0.5"), ("n: 1e-3", "0.001"), ("n: -2,500.25", "-2500.25"), ("n: 7", "7.0")])
def test_float_forms(reply, value):
    assert Program(signature="q -> n: float").parse(reply).outputs == {"n": value}


def test_huge_integer_reply_is_parsed_not_raised():
    pred = Program(signature="q -> n: int").parse("n: " + "9" * 400)
    assert pred.ok and pred.outputs["n"] == "9" * 400
