import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evo import Example, Program, Signature
from evo.errors import ConfigError, DamagedFileError

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
    assert a[2].content == "label: human"
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
    with pytest.raises(DamagedFileError, match="not an evo program"):
        Program.load(tmp_path / "x.json")


def _saved(tmp_path, **changes) -> dict:
    demos = (Example(inputs={"question": "Who?"}, outputs={"label": "human"}),
             Example(inputs={"question": "Where?"}, outputs={"label": "location"}),
             Example(inputs={"question": "When?"}, outputs={"label": "human"}))
    data = json.loads(program(demos=demos).save(tmp_path / "ok.json").read_text())
    data.update(changes)
    return data


def _broken(tmp_path, name, text) -> Path:
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


@pytest.mark.parametrize("case, where", [
    ("deep", "nested too deeply"),
    ("truncated", "not JSON"),
    ("list", "holds a JSON object, this one a list"),
    ("unknown_kind", "not an evo program file"),
    ("demo_missing_outputs", "demos[2].outputs: missing"),
    ("demo_wrong_type", "demos[1].inputs"),
    ("labels_wrong_type", "labels"),
    ("no_signature", "signature: missing"),
    ("signature_not_text", "signature"),
    ("bad_signature", "must have the form"),
    ("not_utf8", "not text"),
    ("demo_wrong_field", "demos[0].inputs lacks ['question']"),
    ("newer_format", "evo_program is 99"),
    ("format_not_a_number", "evo_program is '1'"),
])
def test_damaged_program_files_are_one_clear_error(tmp_path, case, where):
    from evo import load_program

    ok = _saved(tmp_path)
    demos = [dict(d) for d in ok["demos"]]
    if case == "demo_missing_outputs":
        del demos[2]["outputs"]
    if case == "demo_wrong_type":
        demos[1]["inputs"] = ["question", "Where?"]
    if case == "demo_wrong_field":
        demos[0]["inputs"] = {"text": "Who?"}
    texts = {
        "deep": '{"evo_program": 1, "instruction": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "truncated": json.dumps(ok)[:-40],
        "list": [ok],
        "unknown_kind": {k: v for k, v in ok.items() if k != "evo_program"} | {"evo_thing": 1},
        "demo_missing_outputs": {**ok, "demos": demos},
        "demo_wrong_type": {**ok, "demos": demos},
        "labels_wrong_type": {**ok, "labels": 3},
        "no_signature": {k: v for k, v in ok.items() if k != "signature"},
        "signature_not_text": {**ok, "signature": 7},
        "bad_signature": {**ok, "signature": "question label"},
        "demo_wrong_field": {**ok, "demos": demos},
        "newer_format": {**ok, "evo_program": 99},
        "format_not_a_number": {**ok, "evo_program": "1"},
    }
    if case == "not_utf8":
        path = tmp_path / "p.json"
        path.write_bytes(b'{"evo_program": 1, "signature": "q -> a", "instruction": "\xff"}')
    else:
        path = _broken(tmp_path, "p.json", texts[case])
    for load in (Program.load, load_program):
        with pytest.raises(DamagedFileError) as info:
            load(path)
        assert str(path) in str(info.value) and where in str(info.value), str(info.value)


def test_damaged_ensemble_member_names_its_field(tmp_path):
    from evo import EnsembleProgram, load_program

    a = program(demos=(Example(inputs={"question": "Who?"}, outputs={"label": "human"}),))
    data = json.loads(EnsembleProgram(members=(a, a)).save(tmp_path / "e.json").read_text())
    del data["members"][1]["demos"][0]["inputs"]
    path = _broken(tmp_path, "e.json", data)
    with pytest.raises(DamagedFileError, match=r"members\[1\]\.demos\[0\]\.inputs: missing"):
        load_program(path)


def test_check_labels_names_the_labels_a_program_cannot_answer():
    p = program()
    p.check_labels(["human", "location", "human"])  # all known: no error
    with pytest.raises(ConfigError, match="'sports'.*cannot answer"):
        p.check_labels(["human", "sports"], source="other.jsonl")
    Program(signature="q -> answer").check_labels(["anything"])  # no labels: nothing to check


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


def test_check_example_names_the_side_and_field_at_fault():
    from evo.program import ExampleMismatch

    program = Program(signature="question, context -> label", labels=["yes", "no"])
    with pytest.raises(ExampleMismatch, match=r"lacks field\(s\) \['context', 'label'\]") as info:
        program.check_example(Example(inputs={"question": "q"}, outputs={"answer": "yes"}),
                              outputs=True)
    assert (info.value.side, info.value.field, info.value.gold) == ("inputs", "context", None)
    with pytest.raises(ExampleMismatch) as info:
        program.check_example(Example(inputs={"question": "q", "context": "c"},
                                      outputs={"answer": "yes"}), outputs=True)
    assert (info.value.side, info.value.field) == ("outputs", "label")
    with pytest.raises(ExampleMismatch, match="gold label 'maybe'") as info:
        program.check_example(Example(inputs={"question": "q", "context": "c"},
                                      outputs={"label": "maybe"}), outputs=True)
    assert (info.value.side, info.value.field, info.value.gold) == ("outputs", "label", "maybe")
    assert isinstance(info.value, ValueError)  # what callers caught before
