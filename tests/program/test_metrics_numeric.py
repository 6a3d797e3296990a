"""Answer extraction for generative tasks: numeric_match reads the final number, in digits or in
words; normalized_exact_match drops "the answer is"; ``batch`` still equals the per-pair call."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.data import Example
from evo.kernels.text import (
    normalize_answer,
    normalize_squad,
    number_words_to_digits,
    strip_answer_phrase,
)
from evo.metrics import normalized_exact_match, numeric_match
from evo.program import Prediction


def said(answer: str, gold: str, metric=numeric_match) -> float:
    ex = Example(inputs={"question": "q"}, outputs={"answer": gold})
    return metric(ex, Prediction("", {"answer": answer})).value


@pytest.mark.parametrize("answer,gold", [
    ("seven", "7"), ("Seven.", "7"), ("twenty-one", "21"), ("twenty one", "21"),
    ("one hundred and five", "105"), ("three hundred forty-two", "342"),
    ("nine hundred ninety-nine", "999"), ("two thousand and twenty", "2020"),
    ("so there are 7", "7"), ("3 apples and 4 more, so there are seven", "7"),
    ("The answer is 12.", "twelve"), ("zero", "0"), ("It is the one with 5", "5"),
])
def test_numeric_match_reads_number_words_and_the_final_number(answer, gold):
    assert said(answer, gold) == 1.0


@pytest.mark.parametrize("answer,gold", [
    ("seven, not eight", "7"), ("twenty", "21"), ("no one", "1"), ("many", "3"),
])
def test_numeric_match_still_tells_numbers_apart(answer, gold):
    assert said(answer, gold) == 0.0


def test_number_words_to_digits():
    assert number_words_to_digits("one, two and three") == "1, 2 and 3"
    assert number_words_to_digits("one two") == "1 2"  # no "3" from adjacent units
    assert number_words_to_digits("the one I like") == "the one I like"
    assert number_words_to_digits("someone lonely, hundreds") == "someone lonely, hundreds"
    assert number_words_to_digits("Fifteen hundred") == "1500"
    assert number_words_to_digits("two million three hundred thousand and four") == "2300004"
    assert number_words_to_digits("no digits here") == "no digits here"


_ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell(n: int) -> str:
    """``n`` (1..999) in English words, written independently of the code under test."""
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if 10 <= rest < 20:
        words.append(_TEENS[rest - 10])
    elif rest:
        tens, ones = divmod(rest, 10)
        words.append("-".join(w for w in (_TENS[tens], _ONES[ones]) if w))
    return " and ".join(words) if hundreds and rest else " ".join(words)


@given(n=st.integers(1, 999))
@settings(deadline=None, max_examples=200)
def test_every_number_up_to_999_in_words_is_its_digits(n):
    assert number_words_to_digits(spell(n)) == str(n)
    assert said(f"so the total is {spell(n)}.", str(n)) == 1.0


@given(ns=st.lists(st.integers(0, 999), min_size=1, max_size=6),
       words=st.lists(st.booleans(), min_size=6, max_size=6))
@settings(deadline=None, max_examples=60)
def test_batch_equals_the_per_pair_call_with_number_words(ns, words):
    texts = [spell(n) if w and n else str(n) for n, w in zip(ns, words)]
    exs = [Example(inputs={"q": "q"}, outputs={"answer": str(n)}) for n in reversed(ns)]
    preds = [Prediction("", {"answer": f"it is {t}"}) for t in texts]
    assert numeric_match.batch(exs, preds) == [numeric_match(e, p) for e, p in zip(exs, preds)]


@pytest.mark.parametrize("answer", [
    "Paris", "paris.", "The answer is Paris.", "the answer is: the Paris!", "Answer: Paris",
    "So the final answer is Paris", "The Paris",
])
def test_normalized_exact_match_strips_answer_phrase_punctuation_and_articles(answer):
    assert said(answer, "Paris", normalized_exact_match) == 1.0


def test_normalized_exact_match_is_still_exact():
    assert said("Paris, France", "Paris", normalized_exact_match) == 0.0
    assert said("The answer is", "Paris", normalized_exact_match) == 0.0
    assert strip_answer_phrase("The answer is:") == "The answer is:"
    assert strip_answer_phrase("answers vary") == "answers vary"
    assert normalize_answer("no phrase here!") == normalize_squad("no phrase here!")
