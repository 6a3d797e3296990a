"""Text-metric kernels vs plain Python: token F1 and exact match over (prediction, gold) pairs.

(a), (b): the kernels on pre-encoded token ids vs a Python loop over the same pre-tokenized lists.
(c), (d): end to end from strings (normalization and encoding included) vs a loop calling dspy's
``f1_score`` / ``em_score`` per pair. Results are asserted equal before timing.

    .venv/bin/python benchmarks/bench_text.py [--quick]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Row, best_time, main  # noqa: E402
from evo.kernels.text import (  # noqa: E402
    Vocabulary,
    exact_match_batch,
    exact_match_ids,
    exact_match_reference,
    token_f1_batch,
    token_f1_ids,
    token_f1_reference,
)


def make_pairs(n: int, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` realistic short-answer pairs: 1-12 words from a vocabulary of 3000, golds drawn from
    a pool of 2000 (so they repeat), predictions equal to the gold (~30%, sometimes recased or
    with an article and punctuation), overlapping it (~40%) or unrelated (~30%)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = list({"".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
                  for _ in range(3200)})[:3000]
    vocab += ["the", "a", "an", "of", "in", "1,024", "42", "U.S.", "Paris", "café"]

    def phrase(lo: int, hi: int) -> list[str]:
        return [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]

    pool = [" ".join(phrase(1, 6)) for _ in range(2000)]
    preds, golds = [], []
    for _ in range(n):
        gold = rng.choice(pool)
        kind = rng.random()
        if kind < 0.3:
            pred = rng.choice([gold, gold.upper(), f"The {gold}.", f"{gold}!"])
        elif kind < 0.7:
            words = gold.split()
            words = words[:rng.randint(0, len(words))] + phrase(0, 12 - len(words))
            rng.shuffle(words)
            pred = " ".join(words) or gold
        else:
            pred = " ".join(phrase(1, 12))
        preds.append(pred)
        golds.append(gold)
    return preds, golds


def run(quick: bool = False) -> list[Row]:
    from dspy.evaluate.metrics import em_score, f1_score

    n = 10_000 if quick else 100_000
    size = f"{n:,} pairs"
    preds, golds = make_pairs(n)

    # Pre-encoded ids for the kernels, and the same tokens as lists for the Python loop.
    vocab = Vocabulary()
    pb, gb = vocab.encode(preds, "squad"), vocab.encode(golds, "squad")
    p_tok = [pb.tokens(i) for i in range(n)]
    g_tok = [gb.tokens(i) for i in range(n)]
    ids_args = (pb.ids, pb.offsets, gb.ids, gb.offsets)

    def loop_f1() -> list[float]:
        return [token_f1_reference(p, g) for p, g in zip(p_tok, g_tok)]

    def loop_em() -> list[float]:
        return [1.0 if p == g else 0.0 for p, g in zip(p_tok, g_tok)]

    def dspy_f1() -> list[float]:
        return [float(f1_score(p, g)) for p, g in zip(preds, golds)]

    def dspy_em() -> list[float]:
        return [float(em_score(p, g)) for p, g in zip(preds, golds)]

    f1_ids = token_f1_ids(*ids_args)
    em_ids = exact_match_ids(*ids_args)
    assert np.array_equal(f1_ids, loop_f1()) and np.array_equal(em_ids, loop_em())
    want_f1, want_em = dspy_f1(), dspy_em()
    assert np.array_equal(token_f1_batch(preds, golds), want_f1)
    assert np.array_equal(exact_match_batch(preds, golds), want_em)
    assert np.array_equal(f1_ids, want_f1)
    mean_tokens = (len(pb.ids) + len(gb.ids)) / (2 * n)
    note = f"{mean_tokens:.1f} tokens/text, EM rate {np.mean(want_em):.2f}"

    ref_kw = {"repeat": 3, "budget_s": 10.0}
    em_ref_fn = best_time(lambda: [exact_match_reference(p, g) for p, g in zip(p_tok, g_tok)],
                          **ref_kw)
    return [
        Row("token F1, pre-encoded ids", size, best_time(lambda: token_f1_ids(*ids_args)),
            best_time(loop_f1, **ref_kw), "Python loop, Counter F1", note),
        Row("exact match, pre-encoded ids", size, best_time(lambda: exact_match_ids(*ids_args)),
            best_time(loop_em, **ref_kw), "Python loop, list ==",
            f"{note}; a loop calling exact_match_reference takes {em_ref_fn * 1e3:.2f} ms"),
        Row("token F1 from strings", size,
            best_time(lambda: token_f1_batch(preds, golds), **ref_kw),
            best_time(dspy_f1, **ref_kw), "dspy f1_score loop", "encoding included"),
        Row("exact match from strings", size,
            best_time(lambda: exact_match_batch(preds, golds), **ref_kw),
            best_time(dspy_em, **ref_kw), "dspy em_score loop", "encoding included"),
    ]


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
