import random

from hypothesis import given
from hypothesis import strategies as st

from evo import Example, Program
from evo import genome as G

LABELS = ("a", "b", "c")


def archive(pool_size: int, max_demos: int) -> G.Archive:
    pool = tuple(Example(inputs={"x": f"text {i}"}, outputs={"y": LABELS[i % 3]})
                 for i in range(pool_size))
    return G.Archive(Program(signature="x -> y", labels=LABELS), pool, max_demos=max_demos)


def assert_valid(genome, arc):
    assert len(genome) == 2 + arc.max_demos
    assert 0 <= genome[G.INSTRUCTION] < len(arc.instructions)
    n = genome[G.N_DEMOS]
    assert 0 <= n <= min(arc.max_demos, len(arc.pool))
    expressed = genome[G.DEMOS:G.DEMOS + n]
    assert len(set(expressed)) == n
    assert all(0 <= d < len(arc.pool) for d in genome[G.DEMOS:])


genomes = st.integers(1, 30).flatmap(lambda pool: st.integers(0, 6).flatmap(
    lambda k: st.tuples(st.just(pool), st.just(k),
                        st.lists(st.integers(-5, 40), min_size=2 + k, max_size=2 + k),
                        st.lists(st.integers(-5, 40), min_size=2 + k, max_size=2 + k),
                        st.integers(0, 2**32))))


@given(genomes)
def test_operators_keep_genomes_valid(case):
    pool, k, a, b, seed = case
    arc = archive(pool, k)
    arc.add_instruction("another instruction", {"op": "test"})
    rng = random.Random(seed)
    a, b = G.repair(list(a), arc, rng), G.repair(list(b), arc, rng)
    assert_valid(a, arc)
    assert_valid(b, arc)
    for _ in range(5):
        assert_valid(G.mutate_demos(list(a), arc, rng), arc)
        assert_valid(G.mutate_instruction(list(a), arc, rng), arc)
        assert_valid(G.crossover(a, b, arc, rng), arc)


@given(st.integers(0, 2**32))
def test_key_ignores_unexpressed_genes(seed):
    arc = archive(10, 4)
    g = [0, 2, 3, 7, 1, 9]
    h = [0, 2, 3, 7, 5, 5]
    assert G.key(g) == G.key(h) == (0, (3, 7))
    assert G.key([0, 2, 7, 3, 0, 0]) != G.key(g)  # demo order is part of the prompt
    assert arc.program(g) == arc.program(h)


def test_random_demos_cover_labels_and_are_distinct():
    arc = archive(30, 3)
    demos = arc.random_demos(random.Random(0), 3)
    assert len(set(demos)) == 3
    assert {arc.pool[d].label for d in demos} == set(LABELS)


def test_operators_are_seeded_and_leave_global_random_alone():
    arc = archive(20, 4)
    random.seed(123)
    before = random.random()
    random.seed(123)
    runs = []
    for _ in range(2):
        rng = random.Random(7)
        g = [0, 2, 1, 2, 0, 0]
        runs.append([G.crossover(G.mutate_demos(list(g), arc, rng), [0, 4, 5, 6, 7, 8], arc, rng)
                     for _ in range(10)])
    assert runs[0] == runs[1]
    assert random.random() == before


def test_seed_genome_keeps_user_demos_in_pool():
    arc = archive(10, 4)
    program = arc.base.model_copy(update={"demos": (arc.pool[3], arc.pool[5])})
    arc2 = G.Archive(program, arc.pool, max_demos=4)
    assert G.key(arc2.seed_genome()) == (0, (3, 5))
