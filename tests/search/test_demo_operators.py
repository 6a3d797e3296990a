"""Demo operators: each one's contract on small archives with seeded rngs, and a property test
that any sequence of operators keeps genomes valid for Archive.program."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo import Example, Program
from evo.search import genome as G

LABELS = ("a", "b", "c")
TOPICS = ("river bank water", "money bank loan", "football goal match", "guitar song music",
          "rain cloud storm", "bread oven bake")


def example(i: int, label: str | None = None, text: str | None = None) -> Example:
    text = text if text is not None else f"{TOPICS[i % len(TOPICS)]} item {i}" + " z" * (i % 5)
    return Example(inputs={"x": text}, outputs={"y": label or LABELS[i % 3]})


def archive(pool_size=12, max_demos=4, *, knn=True, labels=LABELS, settings=None, pool=None):
    pool = pool if pool is not None else tuple(example(i) for i in range(pool_size))
    return G.Archive(Program(signature="x -> y", labels=labels), pool, max_demos=max_demos,
                     knn_encoder="hashing" if knn else None, settings=settings)


def assert_valid(genome, arc):
    assert genome == G.repair(list(genome), arc, random.Random(0))  # repair has nothing to fix
    n, k = genome[G.N_DEMOS], genome[G.KNN]
    assert n >= 0 and k >= 0 and n + k <= min(arc.max_demos, arc.n_demo_ids)
    assert len(set(genome[G.DEMOS:G.DEMOS + n])) == n
    assert all(0 <= d < arc.n_demo_ids for d in genome[G.DEMOS:G.DEMOS + arc.max_demos])
    arc.program(genome)


def labels_of(genome, arc):
    return [arc.label(d) for d in G.key(genome).demos]


# ---- swap_for_neighbour ----------------------------------------------------------------------

def test_swap_brings_in_the_failures_nearest_neighbour_of_its_label():
    arc = archive()
    g = arc.genome(0, [0, 1])
    failure = Example(inputs={"x": "guitar song music item 99"}, outputs={"y": "a"})
    child = G.swap_for_neighbour(list(g), arc, [failure], random.Random(0))
    demos = G.key(child).demos
    new = (set(demos) - {0, 1}).pop()
    assert len(demos) == 2 and len(set(demos) & {0, 1}) == 1  # one demo replaced, in place
    assert arc.label(new) == "a"  # the failure's gold label
    # ...and, among label "a", the nearest: a guitar example (ids 3, 9 are guitar; 9 is "a")
    assert arc.pool[new].inputs["x"].startswith("guitar")
    assert_valid(child, arc)
    assert child == G.swap_for_neighbour(list(g), arc, [failure], random.Random(0))


def test_swap_without_labels_takes_the_nearest_of_any_label():
    pool = tuple(example(i) for i in range(12))
    arc = archive(labels=None, pool=pool)
    failure = Example(inputs={"x": "guitar song music item 99"}, outputs={"y": "b"})
    child = G.swap_for_neighbour(arc.genome(0, [0]), arc, [failure], random.Random(0))
    assert arc.pool[G.key(child).demos[0]].inputs["x"].startswith("guitar")


def test_swap_adds_a_demo_to_an_empty_set_and_never_repeats_a_demo():
    arc = archive(knn=False)  # no KNN: the hashing encoder by default
    failure = example(4, text="rain cloud storm item 77")  # label "b"
    child = G.swap_for_neighbour(arc.genome(0, []), arc, [failure], random.Random(0))
    assert len(G.key(child).demos) == 1
    assert arc.pool[G.key(child).demos[0]].inputs["x"].startswith("rain")
    full = arc.genome(0, [4, 10, 1])  # the two rain examples of label "b" are 4 and 10
    child = G.swap_for_neighbour(list(full), arc, [example(4, text="rain cloud storm")],
                                 random.Random(3))
    assert_valid(child, arc)
    assert len(set(G.key(child).demos)) == 3


def test_swap_is_a_no_op_without_failures_or_room():
    arc = archive()
    g = arc.genome(0, [1, 2])
    assert G.swap_for_neighbour(list(g), arc, [], random.Random(0)) == g
    full = arc.genome(0, [], 4)  # all slots are KNN: no fixed demo to replace, no room to add
    assert G.swap_for_neighbour(list(full), arc, [example(1)], random.Random(0)) == full


# ---- balance_classes -------------------------------------------------------------------------

def test_balance_covers_as_many_labels_as_the_size_allows():
    arc = archive()
    g = arc.genome(0, [0, 3, 6, 9])  # all label "a"
    child = G.balance_classes(list(g), arc, random.Random(0))
    assert set(labels_of(child, arc)) == {"a", "b", "c"}
    assert len(set(G.key(child).demos) & {0, 3, 6, 9}) == 2  # only the repeats gave way
    assert_valid(child, arc)
    two = G.balance_classes(arc.genome(0, [0, 3]), arc, random.Random(0))
    assert len(set(labels_of(two, arc))) == 2
    balanced = arc.genome(0, [0, 1, 2])
    assert G.balance_classes(list(balanced), arc, random.Random(0)) == balanced
    assert G.balance_classes(list(g), arc, random.Random(5)) == \
        G.balance_classes(list(g), arc, random.Random(5))


def test_balance_is_a_no_op_without_labels():
    arc = archive(labels=None)
    g = arc.genome(0, [0, 3, 6])
    assert G.balance_classes(list(g), arc, random.Random(0)) == g


# ---- reorder_demos ---------------------------------------------------------------------------

def test_reorder_moves():
    arc = archive()
    g = arc.genome(0, [0, 3, 1, 4])  # labels a a b b
    rev = G.reorder_demos(list(g), arc, random.Random(0), by="reverse")
    assert G.key(rev).demos == (4, 1, 3, 0)
    last = G.reorder_demos(list(g), arc, random.Random(0), by="last")
    assert sorted(G.key(last).demos) == [0, 1, 3, 4] and G.key(last).demos != (0, 3, 1, 4)
    alt = G.reorder_demos(list(g), arc, random.Random(0), by="alternate")
    assert sorted(G.key(alt).demos) == [0, 1, 3, 4]
    labs = labels_of(alt, arc)
    assert all(x != y for x, y in zip(labs, labs[1:], strict=False))
    for seed in range(10):
        child = G.reorder_demos(list(g), arc, random.Random(seed))
        assert sorted(G.key(child).demos) == [0, 1, 3, 4] and G.key(child) != G.key(g)
        assert child[G.DEMOS + 4:] == g[G.DEMOS + 4:] and child[:G.DEMOS] == g[:G.DEMOS]
        assert child == G.reorder_demos(list(g), arc, random.Random(seed))
    with pytest.raises(ValueError, match="by must be one of"):
        G.reorder_demos(list(g), arc, random.Random(0), by="sideways")
    one = arc.genome(0, [5])
    assert G.reorder_demos(list(one), arc, random.Random(0)) == one


# ---- resize_demos ----------------------------------------------------------------------------

def test_resize_drops_the_longest_or_adds_the_shortest_unused():
    pool = tuple(example(i, text="w" * (10 + i)) for i in range(8))  # id i has length 10 + i
    arc = archive(pool=pool)
    g = arc.genome(0, [5, 2, 7])
    outs = {tuple(G.key(G.resize_demos(list(g), arc, random.Random(s))).demos)
            for s in range(20)}
    assert outs == {(5, 2), (5, 2, 7, 0)}  # drop 7 (longest) or append 0 (shortest unused)
    full = arc.genome(0, [5, 2, 7, 1])
    assert G.key(G.resize_demos(list(full), arc, random.Random(0))).demos == (5, 2, 1)
    empty = arc.genome(0, [])
    assert G.key(G.resize_demos(list(empty), arc, random.Random(0))).demos == (0,)
    assert_valid(G.resize_demos(list(g), arc, random.Random(1)), arc)


# ---- mutate_knn ------------------------------------------------------------------------------

def test_mutate_knn_trades_fixed_and_knn_slots_within_bounds():
    arc = archive()
    g = arc.genome(0, [1, 2], 1)
    seen = set()
    for seed in range(40):
        child = G.mutate_knn(list(g), arc, random.Random(seed))
        n, k = child[G.N_DEMOS], child[G.KNN]
        assert n + k <= arc.max_demos and (n, k) != (2, 1)
        kept = set(G.key(child).demos) & {1, 2}
        assert len(kept) == min(n, 2)  # the fixed demos stay; a KNN slot trades for one of them
        assert_valid(child, arc)
        seen.add((n, k))
    assert seen == {(1, 2), (3, 0), (2, 2), (2, 0)}  # to_knn, to_fixed, more, fewer
    off = archive(knn=False)
    assert G.mutate_knn(off.genome(0, [1]), off, random.Random(0)) == off.genome(0, [1])


# ---- any sequence keeps genomes valid --------------------------------------------------------

OPS = ("swap", "balance", "reorder", "resize", "knn", "settings", "demos", "instruction",
       "crossover")


@settings(max_examples=60, deadline=None)
@given(pool_size=st.integers(1, 14), max_demos=st.integers(0, 5), knn=st.booleans(),
       labelled=st.booleans(), space=st.sampled_from([None, G.SettingsSpace(reasoning=True),
                                                      G.SettingsSpace(rank=True, reasoning=True)]),
       start=st.lists(st.integers(-3, 20), min_size=12, max_size=12),
       ops=st.lists(st.sampled_from(OPS), max_size=12), seed=st.integers(0, 2**32))
def test_any_sequence_of_operators_yields_valid_genomes(pool_size, max_demos, knn, labelled,
                                                        space, start, ops, seed):
    if space is not None and space.rank and not labelled:
        space = G.SettingsSpace(reasoning=True)
    arc = archive(pool_size, max_demos, knn=knn, labels=LABELS if labelled else None,
                  settings=space)
    arc.add_instruction("another instruction", {"op": "test"})
    rng = random.Random(seed)
    genome = G.repair(start[:G.DEMOS + max_demos], arc, rng)
    assert_valid(genome, arc)
    failures = [example(i, text=f"{TOPICS[i % 6]} failure {i}") for i in range(3)]
    for op in ops:
        if op == "swap":
            genome = G.swap_for_neighbour(genome, arc, failures, rng)
        elif op == "balance":
            genome = G.balance_classes(genome, arc, rng)
        elif op == "reorder":
            genome = G.reorder_demos(genome, arc, rng)
        elif op == "resize":
            genome = G.resize_demos(genome, arc, rng)
        elif op == "knn":
            genome = G.mutate_knn(genome, arc, rng)
        elif op == "settings":
            genome = G.mutate_settings(genome, arc, rng)
        elif op == "demos":
            genome = G.mutate_demos(genome, arc, rng)
        elif op == "instruction":
            genome = G.mutate_instruction(genome, arc, rng)
        else:
            genome = G.crossover(genome, arc.seed_genome(), arc, rng)
        assert_valid(genome, arc)
        assert (G.key(genome).settings is None) == (arc.settings is None)
