"""Metrics: the single call and ``batch`` agree, the kernel-backed metrics equal dspy's, and the
feedback says what went wrong."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.data import Example
from evo.metrics import (
    Score,
    TokenMetric,
    as_score,
    contains,
    exact_match,
    f1,
    normalized_exact_match,
    numeric_match,
)
from evo.program import Prediction

dspy_metrics = pytest.importorskip("dspy.evaluate.metrics")

WORDS = ["Paris", "paris", "The", "the", "a", "Eiffel", "Tower", "tower!", "42", "1,024", "-3",
         "3.0", "$5", "café", "Café", "U.S.", "yes", "No", ",", "?", "  ", "\t", "é"]
phrase = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
gold_text = st.one_of(phrase, st.text(min_size=1, max_size=10)).filter(str.strip)
answer_text = st.one_of(phrase, st.text(max_size=10))
FIELDS = ["answer", "reason"]


@st.composite
def example_and_prediction(draw):
    names = draw(st.sampled_from([FIELDS[:1], FIELDS]))
    golds = {name: draw(gold_text) for name in names}
    example = Example(inputs={"question": "q"}, outputs=golds)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "copy", "missing", "unusable"]))
    if kind == "unusable":
        return example, Prediction("garbage", None, "no 'answer:' line in the reply")
    said = {name: draw(answer_text) for name in names}
    if kind == "copy":
        said = {name: draw(st.sampled_from([g, g.upper(), f"The {g}!"]))
                for name, g in golds.items()}
    if kind == "missing":
        said.pop(names[-1])
    return example, Prediction("reply", said)


batches = st.lists(example_and_prediction(), max_size=8)
ALL = [exact_match, f1, contains, numeric_match, normalized_exact_match]


@pytest.mark.parametrize("metric", ALL, ids=lambda m: getattr(m, "__name__", repr(m)))
@given(pairs=batches)
@settings(deadline=None, max_examples=60)
def test_batch_equals_single_call(metric, pairs):
    examples = [e for e, _ in pairs]
    predictions = [p for _, p in pairs]
    assert metric.batch(examples, predictions) == [metric(e, p) for e, p in pairs]


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


@given(pairs=batches)
@settings(deadline=None, max_examples=60)
def test_token_metrics_equal_dspy_mean_over_fields(pairs):
    examples = [e for e, _ in pairs]
    predictions = [p for _, p in pairs]
    for metric, dspy_fn in [(f1, dspy_metrics.f1_score), (normalized_exact_match,
                                                           dspy_metrics.em_score)]:
        got = [s.value for s in metric.batch(examples, predictions)]
        want = []
        for e, p in pairs:
            if not p.ok:
                want.append(0.0)
                continue
            fields = [float(_quiet(dspy_fn, p.outputs.get(n, ""), g))
                      for n, g in e.outputs.items()]
            want.append(sum(fields) / len(fields))
        assert got == pytest.approx(want, abs=1e-15)


def _ex(**outputs: str) -> Example:
    return Example(inputs={"question": "q"}, outputs=outputs)


def test_exact_match_behaviour_is_unchanged():
    ex = _ex(label="Human")
    assert exact_match(ex, Prediction("", {"label": " human!"})) == Score(
        1.0, "Correct: label = 'Human'.")
    assert exact_match(ex, Prediction("", {"label": "bot"})) == Score(
        0.0, "Wrong: the program answered label = 'bot', but the correct answer is "
             "label = 'Human'.")
    assert exact_match(ex, Prediction("x", None, "empty answer")) == Score(
        0.0, "The reply could not be used: empty answer. Expected: label = 'Human'.")
    assert exact_match.batch([ex, ex], [Prediction("", {"label": "HUMAN"}),
                                        Prediction("", {"label": "bot"})])[0].value == 1.0


def test_token_metric_feedback():
    ex = _ex(answer="Paris")
    score = f1(ex, Prediction("", {"answer": "Paris, France"}))
    assert score.value == pytest.approx(2 / 3)
    assert score.feedback == "Expected 'Paris', got 'Paris, France'; token F1 0.67."
    assert f1(ex, Prediction("", {"answer": "the paris"})) == Score(
        1.0, "Correct: answer = 'Paris'.")
    assert contains(ex, Prediction("", {"answer": "It is Paris."})).value == 1.0
    assert contains(ex, Prediction("", {"answer": "Lyon"})).feedback == (
        "Expected an answer containing 'Paris', got 'Lyon'.")
    it_is = Prediction("", {"answer": "It is 1,024."})
    assert numeric_match(_ex(answer="1024"), it_is).value == 1.0
    assert numeric_match(_ex(answer="42"), Prediction("", {"answer": "forty-two"})).value == 1.0
    assert numeric_match(_ex(answer="42"), Prediction("", {"answer": "many"})).feedback == (
        "Expected '42', got 'many' (no number found).")
    assert normalized_exact_match(ex, Prediction("", {"answer": "the PARIS!"})).value == 1.0
    unusable = Prediction("x", None, "no 'answer:' line in the reply")
    assert f1(ex, unusable) == exact_match(ex, unusable)


def test_several_fields_score_the_mean():
    ex = _ex(answer="Paris", city="Lyon")
    score = f1(ex, Prediction("", {"answer": "Paris", "city": "Marseille"}))
    assert score.value == 0.5
    assert score.feedback == ("city: expected 'Lyon', got 'Marseille'; token F1 0.00. "
                              "Mean token F1 over 2 fields: 0.50.")
    missing = exact_match(ex, Prediction("", {"answer": "Paris"}))
    assert missing.value == 0.0 and "city = ''" in missing.feedback


def test_metrics_fit_the_metric_protocol_and_check_lengths():
    ex = _ex(answer="3")
    for metric in ALL:
        assert as_score(metric(ex, Prediction("", {"answer": "3"}))).value == 1.0
        assert metric.batch([], []) == []
        with pytest.raises(ValueError, match="2 examples but 1 predictions"):
            metric.batch([ex, ex], [Prediction("", {"answer": "3"})])
    assert repr(f1) == "TokenMetric('f1', normalize='squad')"
    assert TokenMetric("numeric", rel_tol=0.1)(ex, Prediction("", {"answer": "3.2"})).value == 1.0
    with pytest.raises(ValueError, match="unknown kind 'bleu'"):
        TokenMetric("bleu")
