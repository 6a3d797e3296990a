"""A program that already has KNN demos (an agent's deployed version, re-optimized on new data)
is the search's seed as it is: its KNN demos kept, retrieved from the new pool and its own."""

import evo
import evo.testing as T
from evo.embeddings.knn import KNNDemos
from evo.search.genome import Archive, key


def knn_program(k: int = 2) -> evo.Program:
    return T.program().model_copy(update={"knn": KNNDemos(
        k=k, pool=tuple(T.TRAIN[:10]), fields=("text",), encoder="hashing")})


def test_the_seed_genome_keeps_the_programs_knn_demos_and_their_pool():
    archive = Archive(knn_program(), tuple(T.TRAIN[20:]), max_demos=4, knn_encoder="hashing")
    seed = archive.program(archive.seed_genome())
    assert key(archive.seed_genome()).knn_k == 2 and seed.knn.k == 2
    assert {ex.id for ex in T.TRAIN[:10]} <= {ex.id for ex in seed.knn.pool}
    assert len(seed.knn.pool) == 30


def test_without_knn_in_the_search_the_seed_is_its_fixed_demos():
    archive = Archive(knn_program(), tuple(T.TRAIN[20:]), max_demos=4, knn_encoder=None)
    assert key(archive.seed_genome()).knn_k == 0 and len(archive.pool) == 20


def test_a_search_from_a_knn_program_starts_where_it_was():
    result = evo.optimize(knn_program(), T.TRAIN[20:], T.VAL, lm=evo.lm.ScriptedLM(T.respond),
                          optimizer=evo.Evolution(budget=evo.Budget(metric_calls=60),
                                                  encoder="hashing"), cache=False)
    # two KNN demos make the scripted model right: the seed scores as the program did
    assert result.candidates[0].program.knn.k == 2 and result.baseline_val == 1.0
