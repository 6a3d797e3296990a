import random

from hypothesis import given
from hypothesis import strategies as st

from evo import Example, Program
from evo.search import genome as G

LABELS = ("a", "b", "c")


def archive(pool_size: int, max_demos: int, knn: bool = False) -> G.Archive:
    pool = tuple(Example(inputs={"x": f"text {i}"}, outputs={"y": LABELS[i % 3]})
                 for i in range(pool_size))
    return G.Archive(Program(signature="x -> y", labels=LABELS), pool, max_demos=max_demos,
                     knn_encoder="hashing" if knn else None)


def assert_valid(genome, arc):
    assert len(genome) == 3 + arc.max_demos
    assert 0 <= genome[G.INSTRUCTION] < len(arc.instructions)
    n = genome[G.N_DEMOS]
    assert 0 <= n <= min(arc.max_demos, len(arc.pool))
    assert 0 <= genome[G.KNN] <= min(arc.max_demos, len(arc.pool)) - n
    assert arc.knn or genome[G.KNN] == 0
    expressed = genome[G.DEMOS:G.DEMOS + n]
    assert len(set(expressed)) == n
    assert all(0 <= d < len(arc.pool) for d in genome[G.DEMOS:])


genomes = st.integers(1, 30).flatmap(lambda pool: st.integers(0, 6).flatmap(
    lambda k: st.tuples(st.just(pool), st.just(k),
                        st.lists(st.integers(-5, 40), min_size=3 + k, max_size=3 + k),
                        st.lists(st.integers(-5, 40), min_size=3 + k, max_size=3 + k),
                        st.integers(0, 2**32), st.booleans())))


@given(genomes)
def test_operators_keep_genomes_valid(case):
    pool, k, a, b, seed, knn = case
    arc = archive(pool, k, knn)
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
    g = [0, 2, 0, 3, 7, 1, 9]
    h = [0, 2, 0, 3, 7, 5, 5]
    assert G.key(g) == G.key(h) == (0, (3, 7), 0)
    assert G.key([0, 2, 0, 7, 3, 0, 0]) != G.key(g)  # demo order is part of the prompt
    assert G.key([0, 2, 1, 3, 7, 1, 9]) != G.key(g)  # so is the KNN demo count
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
        g = [0, 2, 0, 1, 2, 0, 0]
        runs.append([G.crossover(G.mutate_demos(list(g), arc, rng), [0, 4, 0, 5, 6, 7, 8], arc,
                                 rng)
                     for _ in range(10)])
    assert runs[0] == runs[1]
    assert random.random() == before


def test_seed_genome_keeps_user_demos_in_pool():
    arc = archive(10, 4)
    program = arc.base.model_copy(update={"demos": (arc.pool[3], arc.pool[5])})
    arc2 = G.Archive(program, arc.pool, max_demos=4)
    assert G.key(arc2.seed_genome()) == (0, (3, 5), 0)


def test_knn_genome_expresses_nearest_demos_per_input():
    arc = archive(12, 4, knn=True)
    program = arc.program([0, 1, 2, 5, 0, 0, 0])
    assert program.knn is not None and program.knn.k == 2
    query = Example(inputs={"x": "text 7"}, outputs={"y": "c"})  # not pool[7]
    demos = program.knn_demos(query)
    # two KNN demos, never the fixed demo again, the nearest (the identical text) last
    assert len(demos) == 2 and arc.pool[5] not in demos
    assert demos[-1].inputs["x"] == "text 7"
    messages = program.messages(query)
    assert len(messages) == 1 + 2 * (1 + 2) + 1
    # the example itself, when it is in the pool, is never its own demo
    assert arc.pool[7] not in program.knn_demos(arc.pool[7])


def test_near_duplicate_instruction_is_not_archived_twice():
    arc = archive(5, 2)
    arc.dedupe = G.InstructionDedupe("hashing", threshold=0.9)
    first, note = arc.add_instruction("Classify the question by the type of its answer.", {})
    assert note == ""
    again, note = arc.add_instruction("Classify the question by the type of its answer!", {})
    assert again == first and note.startswith("near-duplicate of instruction")
    other, note = arc.add_instruction("Reply with the sentiment of the movie review.", {})
    assert other == len(arc.instructions) - 1 and note == ""
    same, note = arc.add_instruction(" Reply with the sentiment of the movie review. ", {})
    assert same == other and note == "identical to an archived instruction"


def test_key_names_the_expressed_prompt_and_equals_the_plain_tuple():
    arc = archive(10, 4)
    genome = arc.genome(0, [3, 1], knn_k=0)
    genome[G.DEMOS + 2:] = [7, 7]  # unexpressed genes are not part of the prompt
    k = G.key(genome)
    assert (k.instruction, k.demos, k.knn_k) == (0, (3, 1), 0)
    assert k == (0, (3, 1), 0) and hash(k) == hash((0, (3, 1), 0))  # dict keys stay compatible


def test_with_instruction_copies_the_genome():
    arc = archive(10, 4)
    iid, _ = arc.add_instruction("Answer with one letter.", {"op": "test"})
    genome = arc.genome(0, [2, 5])
    child = G.with_instruction(genome, iid)
    assert child[G.INSTRUCTION] == iid and genome[G.INSTRUCTION] == 0
    assert G.key(child) == (iid, (2, 5), 0)
