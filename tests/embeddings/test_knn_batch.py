"""An input's KNN demo neighbours depend on the input alone: not on which other inputs are looked
up with it (a batched FAISS search takes another code path, by batch size, whose rounding can
reorder near-ties), and so not on which searches ran before in the same process (neighbours are
memoized process-wide). Concurrent and parallel searches rely on it."""

from __future__ import annotations

import random

from evo.data import Example
from evo.embeddings.knn import DemoRetriever, encoder_for


def example(i: int, words: list[str]) -> Example:
    return Example(id=f"e{i}", inputs={"text": " ".join(words)}, outputs={"label": "x"})


def test_neighbours_of_an_input_do_not_depend_on_its_batch():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(12)]  # few words: many exact and near ties
    pool = [example(i, rng.sample(vocab, 3)) for i in range(300)]
    queries = [example(1000 + i, rng.sample(vocab, 3)) for i in range(64)]
    encoder = encoder_for("hashing")
    alone = [DemoRetriever(pool, ["text"], encoder).neighbors([q], 8)[0] for q in queries]
    for size in (2, 9, 64):  # small batches (numpy path) and large ones (FAISS BLAS path)
        fresh = DemoRetriever(pool, ["text"], encoder)
        batched = []
        for start in range(0, len(queries), size):
            batched += fresh.neighbors(queries[start:start + size], 8)
        assert batched == alone, size
