"""The trace store (evo.agents.traces), its encryption (evo.agents.crypto) and quality filter."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evo.agents.crypto import TextCipher, new_salt
from evo.agents.traces import QualityFilter, Trace, TraceStore, UnknownCallError
from evo.data import DataError
from evo.errors import ConfigError, DamagedFileError


def _record(store: TraceStore, q: str, a: str | None = "4", **kw) -> str:
    return store.record(agent=kw.pop("agent", "qa"), version=kw.pop("version", 1),
                        inputs={"question": q}, outputs=None if a is None else {"answer": a},
                        **kw)


def test_record_get_feedback_round_trip(tmp_path):
    with TraceStore(tmp_path / "s" / "traces.sqlite") as store:
        cid = _record(store, "2+2?", latency_s=0.5, prompt_tokens=10, completion_tokens=2,
                      t=100.0)
        assert cid.startswith("c-") and len(cid) == 34
        trace = store.get(cid)
        assert (trace.inputs, trace.outputs, trace.t, trace.score, trace.ok) == \
            ({"question": "2+2?"}, {"answer": "4"}, 100.0, None, True)
        graded = store.feedback(cid, 0.0, "wrong", expected={"answer": "5"}, t=101.0)
        assert (graded.score, graded.feedback, graded.expected, graded.graded_t) == \
            (0.0, "wrong", {"answer": "5"}, 101.0)
        again = store.feedback(cid, 1, t=102.0)  # a second grade replaces the first
        assert (again.score, again.feedback, again.expected) == (1.0, None, None)
        assert Trace.from_dict(json.loads(json.dumps(again.to_dict()))) == again


def test_errors_name_the_call_and_the_store(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        with pytest.raises(UnknownCallError, match=r"no call 'c-nope' in trace store .*t\.sqlite"):
            store.feedback("c-nope", 1.0)
        with pytest.raises(KeyError):
            store.get("c-nope")
        cid = _record(store, "q")
        for bad in (float("nan"), float("inf"), "1", True):
            with pytest.raises(ConfigError, match="finite number"):
                store.feedback(cid, bad)
        with pytest.raises(ConfigError, match="already in trace store"):
            _record(store, "q", call_id=cid)
        with pytest.raises(ConfigError, match="'inputs'"):
            store.record(agent="qa", version=1, inputs={"q": 3}, outputs=None)  # type: ignore


def test_texts_are_redacted_before_they_are_stored(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        cid = store.record(agent="qa", version=1, inputs={"q": "mail ann@example.com"},
                           outputs={"a": "call +44 20 7946 0958"}, error="from 10.0.0.1")
        store.feedback(cid, 1.0, "card 4111 1111 1111 1111", expected={"a": "bob@example.org"})
        trace = store.get(cid)
        assert (trace.inputs, trace.outputs, trace.error, trace.feedback, trace.expected) == (
            {"q": "mail [EMAIL]"}, {"a": "call [PHONE]"}, "from [IP]", "card [CARD]",
            {"a": "[EMAIL]"})
    raw = TraceStore(tmp_path / "raw.sqlite", redactor=None)
    assert raw.get(_record(raw, "ann@example.com")).inputs == {"question": "ann@example.com"}
    raw.close()


def test_filters_order_limit_and_count(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        ids = [_record(store, f"q{i}", agent="a" if i % 2 else "b", version=1 + i // 3,
                       t=float(i)) for i in range(6)]
        store.feedback(ids[1], 1.0, t=50.0)
        store.feedback(ids[3], 0.5, t=40.0)
        assert [t.call_id for t in store.traces("a")] == [ids[1], ids[3], ids[5]]
        assert [t.call_id for t in store.traces(newest_first=True, limit=2)] == [ids[5], ids[4]]
        assert [t.call_id for t in store.traces(graded=False, since=3.0)] == ids[4:]
        assert [t.call_id for t in store.traces(version=2)] == ids[3:]
        assert [t.call_id for t in store.traces(graded_since=45.0)] == [ids[1]]
        assert (store.count(), store.count("a"), store.count(graded=True),
                store.count("a", graded=False), store.count(since=4.0)) == (6, 3, 2, 1, 2)


def test_threads_record_at_once(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                cid = _record(store, f"t{n}-{i}", agent=f"a{n}")
                if i % 4 == 0:
                    store.feedback(cid, 1.0)
                store.count()
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert (store.count(), store.count(graded=True), store.count("a3")) == (240, 60, 40)
    assert len({t.call_id for t in store.traces()}) == 240
    store.close()


_CHILD = """
import sys
from evo.agents.traces import TraceStore
store = TraceStore(sys.argv[1])
for i in range(20):
    store.record(agent="child", version=1, inputs={"q": f"child {i}"}, outputs={"a": "x"})
store.close()
"""


def test_two_processes_share_one_store(tmp_path):
    path = tmp_path / "t.sqlite"
    store = TraceStore(path)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)])
    seen = []
    for i in range(20):
        _record(store, f"parent {i}", agent="parent")
        seen.append(store.count("child"))
    assert child.wait(timeout=60) == 0
    assert seen == sorted(seen)  # the reader sees the child's rows arrive, never lose one
    assert (store.count("parent"), store.count("child")) == (20, 20)
    store.close()


def test_a_damaged_or_foreign_file_is_one_error_naming_it(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, just bytes " * 200)
    with pytest.raises(DamagedFileError, match="garbage.sqlite") as info:
        TraceStore(garbage)
    assert info.value.path == str(garbage)
    assert garbage.read_bytes() == b"this is not a database, just bytes " * 200
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    with pytest.raises(DamagedFileError, match="not an evo trace store"):
        TraceStore(other)
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(DamagedFileError, match="directory"):
        TraceStore(tmp_path / "dir.sqlite")


def test_a_symbolic_link_is_refused(tmp_path):
    target = tmp_path / "real.sqlite"
    TraceStore(target).close()
    link = tmp_path / "link.sqlite"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        TraceStore(link)


def test_encryption_at_rest(tmp_path):
    path = tmp_path / "enc.sqlite"
    secrets = ["What is the capital of Burkina Faso?", "Ouagadougou", "timeout in backend",
               "perfect, thank you", "Ouaga-expected"]
    with TraceStore(path, key="hunter2 but longer") as store:
        cid = store.record(agent="qa", version=1, inputs={"question": secrets[0]},
                           outputs={"answer": secrets[1]}, error=secrets[2])
        store.feedback(cid, 1.0, secrets[3], expected={"answer": secrets[4]})
        raw = path.read_bytes() + Path(f"{path}-wal").read_bytes()
        for text in [*secrets, "question", "answer"]:
            assert text.encode() not in raw
        assert b"qa" in raw and cid.encode() in raw  # ids stay in clear
    with TraceStore(path, key=b"hunter2 but longer") as store:
        trace = store.get(cid)
        assert (trace.inputs["question"], trace.outputs, trace.error, trace.feedback,
                trace.expected) == (secrets[0], {"answer": secrets[1]}, secrets[2], secrets[3],
                                    {"answer": secrets[4]})
    for key, match in (("wrong key", "does not open"), (None, "encrypted")):
        with pytest.raises(ConfigError, match=match):
            TraceStore(path, key=key)
    with pytest.raises(ConfigError, match="without a key"):
        TraceStore(tmp_path / "clear.sqlite").close()
        TraceStore(tmp_path / "clear.sqlite", key="k")


def test_counting_needs_no_decryption(tmp_path, monkeypatch):
    with TraceStore(tmp_path / "enc.sqlite", key="k") as store:
        for i in range(3):
            store.feedback(_record(store, f"q{i}"), 1.0)
        _record(store, "q3")

        def refuse(*_):
            raise AssertionError("decrypted")

        monkeypatch.setattr(TextCipher, "decrypt", refuse)
        assert (store.count("qa"), store.count(graded=True), store.count(graded=False)) == \
            (4, 3, 1)


def test_cipher_round_trip_and_wrong_key():
    salt = new_salt()
    token = TextCipher("k1", salt).encrypt("héllo")
    assert token.startswith("enc1:") and "héllo" not in token
    assert TextCipher("k1", salt).decrypt(token) == "héllo"
    for cipher in (TextCipher("k2", salt), TextCipher("k1", new_salt())):
        with pytest.raises(ConfigError, match="does not open"):
            cipher.decrypt(token)
    with pytest.raises(ConfigError, match="empty"):
        TextCipher("", salt)


def test_retention_by_age_and_rows(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite", max_age_s=100.0, max_rows=5)
    for i in range(8):
        _record(store, f"q{i}", t=1000.0 + 10 * i)  # 1000 .. 1070
    assert store.apply_retention(now=1070.0) == 3  # the oldest beyond 5 rows
    assert [t.t for t in store.traces()] == [1030.0, 1040.0, 1050.0, 1060.0, 1070.0]
    assert store.apply_retention(now=1145.0) == 2  # older than 1045
    assert [t.t for t in store.traces()] == [1050.0, 1060.0, 1070.0]
    assert store.apply_retention(now=1145.0) == 0
    store.close()
    with pytest.raises(ConfigError, match="max_rows"):
        TraceStore(tmp_path / "t.sqlite", max_rows=0)
    with pytest.raises(ConfigError, match="max_age_s"):
        TraceStore(tmp_path / "t.sqlite", max_age_s=-1)


def test_record_applies_retention_every_100_calls(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite", max_rows=30)
    for i in range(99):
        _record(store, f"q{i}", t=float(i))
    assert store.count() == 99
    _record(store, "q99", t=99.0)  # the 100th: retention runs with now = its t
    assert store.count() == 30
    assert store.traces()[0].t == 70.0
    store.close()


def test_jsonl_round_trip_updates_and_redacts(tmp_path):
    src = TraceStore(tmp_path / "a.sqlite", key="k")
    ids = [_record(src, f"q{i}", t=float(i)) for i in range(3)]
    src.feedback(ids[0], 1.0, "ok", expected={"answer": "4"}, t=9.0)
    assert src.export_jsonl(tmp_path / "out.jsonl") == 3
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == ids
    dst = TraceStore(tmp_path / "b.sqlite")
    _record(dst, "stale", call_id=ids[1])
    assert dst.import_jsonl(tmp_path / "out.jsonl") == 3
    assert dst.traces() == src.traces()  # ids[1] updated, not duplicated
    row = json.loads(lines[2]) | {"call_id": "c-new", "inputs": {"question": "me@example.com"}}
    (tmp_path / "pii.jsonl").write_text(json.dumps(row) + "\n")
    dst.import_jsonl(tmp_path / "pii.jsonl")
    assert dst.get("c-new").inputs == {"question": "[EMAIL]"}
    src.close()
    dst.close()


@pytest.mark.parametrize(("line", "field"), [
    ('{"call_id": "c-x", "agent": "qa", "version": 1, "inputs": {"q": 1}, "t": 1.0}', "inputs"),
    ('{"call_id": "c-x", "agent": "qa", "version": 1, "inputs": {}, "t": "now"}', "t"),
    ('{"call_id": "c-x", "agent": "qa", "inputs": {}, "t": 1.0}', "version"),
    ('{"call_id": "c-x", "agent": "qa", "version": 1, "inputs": {}, "t": 1, "x": 2}', "x"),
    ('{"call_id": "c-x", "agent": "qa", "version": 1, "inputs": {}, "t": 1, "score": NaN}',
     "score"),
    ("not json", None),
])
def test_a_bad_line_imports_nothing(tmp_path, line, field):
    good = json.dumps(Trace("c-ok", "qa", 1, {"q": "x"}, None, None, 0.0, 0, 0, 1.0).to_dict())
    path = tmp_path / "in.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with TraceStore(tmp_path / "t.sqlite") as store:
        with pytest.raises(DataError) as info:
            store.import_jsonl(path)
        assert (info.value.source, info.value.row, info.value.field) == (str(path), 3, field)
        assert str(path) in str(info.value) and "row 3" in str(info.value)
        assert store.count() == 0


def _trace(cid: str, q: str, a: str | None, score: float | None, *, graded_t: float = 0.0,
           expected: dict | None = None, error: str | None = None) -> Trace:
    return Trace(cid, "qa", 1, {"q": q}, None if a is None else {"a": a}, error, 0.0, 0, 0,
                 0.0, score, None, expected, graded_t if score is not None else None)


def _pairs(examples):
    return [(e.inputs["q"], e.outputs["a"]) for e in examples]


def test_quality_filter_semantics():
    traces = [
        _trace("1", "q1", "a1", 1.0, graded_t=1),
        _trace("2", "q2", "a2", 0.5, graded_t=2),                       # below min_score
        _trace("3", "q3", "bad", 0.0, graded_t=3, expected={"a": "good"}),  # expected wins
        _trace("4", "q4", None, 1.0, graded_t=4, error="timeout"),       # failed call
        _trace("5", "q5", "a5", None),                                  # not graded
        _trace("6", "q1", "a1-new", 1.0, graded_t=9),                   # same inputs, later
        _trace("7", "q7", "a7", 1.0, graded_t=7, error="warning"),       # error, outputs there
        _trace("8", "q8", "", 1.0, graded_t=8),                         # empty output
    ]
    assert _pairs(QualityFilter().select(traces, ["a"])) == \
        [("q3", "good"), ("q1", "a1-new")]
    assert _pairs(QualityFilter(dedupe=False).select(traces, ["a"])) == \
        [("q1", "a1"), ("q3", "good"), ("q1", "a1-new")]
    assert _pairs(QualityFilter(min_score=0.5).select(traces, ["a"])) == \
        [("q2", "a2"), ("q3", "good"), ("q1", "a1-new")]
    assert _pairs(QualityFilter(use_expected=False, min_score=0.0).select(traces, ["a"])) == \
        [("q2", "a2"), ("q3", "bad"), ("q1", "a1-new")]
    assert _pairs(QualityFilter(success_only=False).select(traces, ["a"])) == \
        [("q3", "good"), ("q1", "a1-new"), ("q7", "a7")]
    # a good old answer is not lost to a later bad grade of another answer to the same inputs
    later_bad = [_trace("1", "q1", "a1", 1.0, graded_t=1), _trace("2", "q1", "x", 0.0,
                                                                  graded_t=2)]
    assert _pairs(QualityFilter().select(later_bad, ["a"])) == [("q1", "a1")]
    assert all(e.id and e.id != "1" for e in QualityFilter().select(traces, ["a"]))


def test_examples_from_the_store(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        a = _record(store, "2+2?", "4", t=1.0)
        b = _record(store, "3+3?", "7", t=2.0)
        _record(store, "4+4?", "8", t=3.0)  # never graded
        other = _record(store, "5+5?", "10", agent="other", t=4.0)
        store.feedback(a, 1.0)
        store.feedback(b, 0.0, "off by one", expected={"answer": "6"})
        store.feedback(other, 1.0)
        examples = store.examples("qa", QualityFilter(), outputs=["answer"])
        assert [(e.inputs, e.outputs) for e in examples] == [
            ({"question": "2+2?"}, {"answer": "4"}), ({"question": "3+3?"}, {"answer": "6"})]
        assert len(store.examples("qa", QualityFilter(), outputs=["answer"], since=2.0)) == 1
