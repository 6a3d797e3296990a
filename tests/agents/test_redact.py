"""PII redaction (evo.agents.redact) on a corpus with known PII and look-alikes that must stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.agents.redact import PIIRedactor, redact
from evo.errors import ConfigError

CORPUS = [json.loads(line) for line in
          (Path(__file__).parent / "pii_corpus.jsonl").read_text(encoding="utf-8").splitlines()]


def test_corpus_has_both_pii_and_look_alikes():
    kinds = {kind for row in CORPUS for kind, _ in row["pii"]}
    assert kinds == {"email", "phone", "card", "iban", "ip"}
    assert sum(not row["pii"] for row in CORPUS) >= 25


def test_recall_and_precision_on_the_corpus():
    missed, touched = [], []
    for row in CORPUS:
        out = redact(row["text"])
        missed += [(row["text"], pii) for _, pii in row["pii"] if pii in out]
        expected = row["text"]  # each PII string by its placeholder, everything else untouched
        for kind, pii in row["pii"]:
            expected = expected.replace(pii, f"[{kind.upper()}]", 1)
        if out != expected:
            touched.append((row["text"], out))
    assert missed == []  # recall 1.0
    assert touched == []  # precision 1.0: no look-alike or neighbouring text changed


def test_find_names_each_kind_and_span():
    for row in CORPUS:
        found = PIIRedactor().find(row["text"])
        assert [(k, row["text"][s:e]) for k, s, e in found] == \
            sorted(map(tuple, row["pii"]), key=lambda p: row["text"].index(p[1]))


def test_kinds_select_detectors_and_extra_runs_after():
    text = "mail jane@example.com or call +44 20 7946 0958"
    assert PIIRedactor(kinds=("email",))(text) == "mail [EMAIL] or call +44 20 7946 0958"
    seen = []
    names = PIIRedactor(extra=[lambda t: seen.append(t) or t.replace("jane", "[NAME]")])
    assert names("jane: jane@example.com") == "[NAME]: [EMAIL]"
    assert seen == ["jane: [EMAIL]"]
    with pytest.raises(ConfigError, match="'ssn'"):
        PIIRedactor(kinds=("email", "ssn"))


_PIECES = st.sampled_from([" ", "-", ".", ",", ":", "+", "(", ")", "@", "%", "/", "0", "4111",
                           "1111", "06 12", "+44 20", "GB82", "WEST", "::", "192.168.", "1",
                           "example.com", "a", "Z", "\n", "é"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_PIECES, max_size=25).map("".join)))
def test_redaction_is_idempotent_and_total(text):
    once = redact(text)
    assert redact(once) == once
