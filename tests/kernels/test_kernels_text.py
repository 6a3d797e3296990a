"""Text-metric kernels: each kernel == its reference == its pure-Python twin, and the string-level
batch API == dspy's metrics."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from evo.kernels import text as T

dspy_metrics = pytest.importorskip("dspy.evaluate.metrics")

# ---- id level: kernel vs reference vs py_func -------------------------------------------------

ALPHABET = 5  # few distinct tokens: many repeats and ties
tokens = st.lists(st.integers(1, ALPHABET), max_size=8)
pairs = st.lists(st.tuples(tokens, st.lists(tokens, max_size=3)), max_size=12)


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=off[1:])
    ids = np.array([t for r in rows for t in r], np.int32)
    return ids, off


def _pair_args(batch):
    """CSR predictions, CSR references (all of them, flattened), pair_pred and ref_offsets."""
    preds = [p for p, _ in batch]
    refs = [g for _, gs in batch for g in gs]
    ref_off = np.zeros(len(batch) + 1, np.int64)
    np.cumsum([len(gs) for _, gs in batch], out=ref_off[1:])
    pair_pred = np.repeat(np.arange(len(batch)), np.diff(ref_off))
    return (*_csr(preds), *_csr(refs), pair_pred), ref_off


def _words(ids):
    return [f"w{t}" for t in ids]  # the references see strings


@pytest.mark.parametrize("kernel, reference, ids_fn", [
    (T.exact_match_kernel, T.exact_match_reference, T.exact_match_ids),
    (T.token_f1_kernel, T.token_f1_reference, T.token_f1_ids),
    (T.contains_kernel, T.contains_reference, T.contains_ids),
])
@given(batch=pairs)
@settings(deadline=None)
def test_kernel_equals_reference_and_python_twin(kernel, reference, ids_fn, batch):
    args, ref_off = _pair_args(batch)
    per_pair = np.array([reference(_words(p), _words(g)) for p, gs in batch for g in gs])
    np.testing.assert_array_equal(kernel(*args), per_pair)  # bit-identical, F1 included
    np.testing.assert_array_equal(kernel.py_func(*args), per_pair)
    best = T.group_max_reference(per_pair, ref_off)
    np.testing.assert_array_equal(T.group_max_kernel(per_pair, ref_off), best)
    np.testing.assert_array_equal(T.group_max_kernel.py_func(per_pair, ref_off), best)
    np.testing.assert_array_equal(ids_fn(*args[:4], ref_off), best)


@given(batch=pairs, values=st.lists(st.sampled_from([math.nan, 0.0, 1.0, 1.0 + 1e-12, -2.5,
                                                     1e-10, math.inf]),
                                    min_size=ALPHABET + 1, max_size=ALPHABET + 1))
@settings(deadline=None)
def test_numeric_kernel_equals_reference(batch, values):
    numeric = np.array(values)
    args, ref_off = _pair_args(batch)
    # the reference parses strings: give each token id a text spelling its value
    spell = {i: "x" if math.isnan(v) else "1e999" if v == math.inf else repr(v)
             for i, v in enumerate(values)}
    per_pair = np.array([T.numeric_match_reference([spell[t] for t in p], [spell[t] for t in g])
                         for p, gs in batch for g in gs])
    np.testing.assert_array_equal(T.numeric_match_kernel(*args, numeric, 1e-9, 1e-9), per_pair)
    np.testing.assert_array_equal(
        T.numeric_match_kernel.py_func(*args, numeric, 1e-9, 1e-9), per_pair)
    np.testing.assert_array_equal(T.numeric_match_ids(*args[:4], numeric, ref_off),
                                  T.group_max_reference(per_pair, ref_off))


def test_id_wrappers_check_their_input():
    ids, off = _csr([[1, 2], [3]])
    assert T.token_f1_ids(ids, off, ids, off).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        T.exact_match_ids(ids, off, ids, off[:2])
    with pytest.raises(ValueError, match="ref_offsets"):
        T.contains_ids(ids, off, ids, off, np.array([0, 1]))
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        T.token_f1_ids(ids, np.array([0, 5]), ids, off[:2])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, \d+\), found -1"):
        T.token_f1_ids(np.array([-1]), np.array([0, 1]), ids, off[:2])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\), found 3"):
        T.numeric_match_ids(ids, off, ids, off, np.zeros(2))
    # several references per prediction, best one counts
    g_ids, g_off = _csr([[9], [1, 2], [3, 3]])
    assert T.exact_match_ids(ids, off, g_ids, g_off, np.array([0, 2, 3])).tolist() == [1.0, 0.0]


# ---- string level: == dspy ---------------------------------------------------------------------

PIECES = ["The", "the", "a", "A", "an", "AN", "theatre", "Éclair", "café", "naïve", "thé",
          "ΑΣ", "Σ", "İ", "ß", "\u0301", "_", "—", "€", "!", "?", ",", ".", "'s", "-",
          "  ", "\t", "\n", "\x01", "\x1c", "\u2003", "x", "y", "1,024", "U.S.", "e-mail", "X"]
words = st.lists(st.sampled_from(PIECES), max_size=8).map(
    lambda ws: "".join(w if i % 3 else w + " " for i, w in enumerate(ws)))
texts = st.one_of(words, st.text(max_size=12), st.text(alphabet="abtheAN .,!", max_size=12))
golds = st.one_of(texts, st.lists(texts, min_size=1, max_size=3))


def _encoded_tokens(batch: list[str]) -> list[list[str]]:
    encoded = T.Vocabulary().encode(batch, "squad")
    return [encoded.tokens(i) for i in range(len(batch))]


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):  # f1_score prints on both-empty
        return fn(*args)


@given(st.lists(texts, max_size=10))
@settings(deadline=None)
@example(["A", "\x80", "\x08"])  # ASCII texts that leave the fast path: order kept
def test_normalize_and_encode_equal_dspy_normalize_text(batch):
    assert _encoded_tokens(batch) == [dspy_metrics.normalize_text(t).split() for t in batch]
    batch = batch + batch[:3]  # repeated texts go through the memo
    want = [dspy_metrics.normalize_text(t).split() for t in batch]
    assert [T.normalize_squad(t).split() for t in batch] == want
    encoded = T.Vocabulary().encode(batch, "squad")
    assert [encoded.tokens(i) for i in range(len(batch))] == want
    none = T.Vocabulary().encode(batch, "none")
    assert [none.tokens(i) for i in range(len(batch))] == [t.split() for t in batch]
    upper = T.Vocabulary().encode(batch, str.upper)
    assert [upper.tokens(i) for i in range(len(batch))] == [t.upper().split() for t in batch]


@given(st.lists(st.tuples(texts, golds), max_size=10))
@settings(deadline=None)
def test_f1_and_em_batch_equal_dspy(rows):
    preds = [p for p, _ in rows]
    gs = [g for _, g in rows]
    listed = [[g] if isinstance(g, str) else g for g in gs]
    want_f1 = [float(max(_quiet(dspy_metrics.f1_score, p, r) for r in refs))
               for p, refs in zip(preds, listed)]
    want_em = [float(dspy_metrics.EM(p, refs)) for p, refs in zip(preds, listed)]
    assert T.token_f1_batch(preds, gs).tolist() == want_f1
    assert T.exact_match_batch(preds, gs).tolist() == want_em
    assert T.score_batch("normalized_exact_match", preds, gs).tolist() == want_em
    assert T.score_batch("f1", preds, gs).tolist() == want_f1


@given(st.lists(st.tuples(texts, texts), max_size=10))
@settings(deadline=None)
def test_contains_batch_equals_reference(rows):
    preds, gs = [p for p, _ in rows], [g for _, g in rows]
    want = [T.contains_reference(T.normalize_squad(p).split(), T.normalize_squad(g).split())
            for p, g in rows]
    assert T.contains_batch(preds, gs).tolist() == want


def test_multi_reference_takes_the_max():
    preds = ["Eiffel Tower", "the Louvre museum", "nothing"]
    gs = [["Paris", "the Eiffel Tower"], ("Louvre", "Orsay museum"), []]
    assert T.exact_match_batch(preds, gs).tolist() == [1.0, 0.0, 0.0]
    assert T.token_f1_batch(preds, gs).tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert T.contains_batch(preds, gs).tolist() == [1.0, 1.0, 0.0]
    assert T.numeric_match_batch(["12", "x"], [["7", "12.0"], ["1"]]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("pred, gold, want", [
    ("The answer is 1,024.", "1024", 1.0),
    ("-3", "(−3)", 1.0),
    (".5", "0.5", 1.0),
    ("2.75 apples", "2.750", 1.0),
    ("1e-3", "0.001", 1.0),
    ("$5", "5", 1.0),
    ("50%", "50", 1.0),
    ("first 3 then 4", "4", 1.0),  # the last number counts
    ("first 4 then 3", "4", 0.0),
    ("0.1 + 0.2 = 0.30000000000000004", "0.3", 1.0),  # math.isclose
    ("1.0000001", "1", 0.0),
    ("no number here", "0", 0.0),
    ("7", "seven", 0.0),
    ("1,02", "102", 0.0),  # malformed thousands: not a number
    ("1e999", "inf", 0.0),
    ("", "", 0.0),
])
def test_numeric_cases(pred, gold, want):
    assert T.numeric_match_batch([pred], [gold]).tolist() == [want]
    assert T.numeric_match_reference(pred.split(), gold.split()) == want


def test_numeric_tolerances():
    assert T.numeric_match_batch(["100"], ["101"], rel_tol=0.02).tolist() == [1.0]
    assert T.numeric_match_batch(["0.0"], ["1e-12"]).tolist() == [1.0]  # abs_tol 1e-9
    with pytest.raises(ValueError, match="non-negative"):
        T.numeric_match_batch(["1"], ["1"], rel_tol=-1)


def test_empty_strings_and_batches():
    assert T.exact_match_batch([""], ["!"]).tolist() == [1.0]  # both normalize to nothing
    assert T.token_f1_batch([""], [""]).tolist() == [0.0]  # as dspy: no overlap, no credit
    assert T.contains_batch(["", "x"], ["The", "the"]).tolist() == [1.0, 0.0]
    for fn in (T.exact_match_batch, T.token_f1_batch, T.contains_batch, T.numeric_match_batch):
        assert fn([], []).shape == (0,)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="preds has 2 items but golds has 1"):
        T.token_f1_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="preds has 1 items but golds has 3"):
        T.numeric_match_batch(["1"], ["1", "2", "3"])
    with pytest.raises(TypeError, match=r"golds\[1\]"):
        T.exact_match_batch(["a", "b"], ["a", [3]])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        T.Vocabulary().encode(["a", 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="normalize must be"):
        T.token_f1_batch(["a"], ["a"], normalize="lower")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        T.score_batch("bleu", ["a"], ["a"])


def test_score_batch_exact_match_is_case_sensitive_by_default():
    assert T.score_batch("exact_match", ["Paris  France"], ["Paris France"]).tolist() == [1.0]
    assert T.score_batch("exact_match", ["paris"], ["Paris"]).tolist() == [0.0]
    assert T.score_batch("normalized_exact_match", ["paris"], ["Paris"]).tolist() == [1.0]
    assert T.score_batch("contains", ["in Paris"], ["paris"]).tolist() == [1.0]
    assert T.score_batch("numeric", ["3"], ["3.0"]).tolist() == [1.0]


def test_shared_vocabulary_keeps_ids_and_numbers():
    vocab = T.Vocabulary()
    gold = vocab.encode(["42 apples"], "none")
    again = vocab.encode(["apples 42"], "none")
    assert sorted(gold.ids.tolist()) == sorted(again.ids.tolist())
    assert vocab.numeric[vocab.id("42")] == 42.0 and math.isnan(vocab.numeric[vocab.id("apples")])
    assert T.numeric_match_batch(["42"], ["42.0"], vocabulary=vocab).tolist() == [1.0]
