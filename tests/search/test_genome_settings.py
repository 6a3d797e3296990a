"""Settings genes (answer_mode, calibrate, reasoning): off, genomes are exactly as before; on, a
trailer that keys, repair, crossover and mutate_settings keep valid."""

import pickle
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evo import Example, Program
from evo.search import genome as G

LABELS = ("a", "b", "c")
RANK_ONLY = G.SettingsSpace(rank=True)
EVERYTHING = G.SettingsSpace(rank=True, reasoning=True)


def archive(settings=None, *, labels=LABELS, pool_size=10, max_demos=4, **program):
    pool = tuple(Example(inputs={"x": f"text {i}"}, outputs={"y": LABELS[i % 3]})
                 for i in range(pool_size))
    base = Program(signature="x -> y", labels=labels, **program)
    return G.Archive(base, pool, max_demos=max_demos, knn_encoder="hashing", settings=settings)


def test_settings_off_keeps_genomes_and_keys_as_before():
    for arc in (archive(), archive(G.SettingsSpace())):  # nothing enabled = no settings genes
        assert arc.settings is None and arc.settings_options == []
        g = arc.genome(0, [3, 7], 1)
        assert g == [0, 2, 1, 3, 7, 0, 0] and arc.seed_genome() == [0, 0, 0, 0, 0, 0, 0]
        k = G.key(g)
        assert k == (0, (3, 7), 1) and hash(k) == hash((0, (3, 7), 1)) and len(k) == 3
        assert {k: 1}[(0, (3, 7), 1)] == 1 and k.settings is None
        assert repr(k) == "GenomeKey(instruction=0, demos=(3, 7), knn_k=1)"
        instruction, demos, knn_k = k  # unpacks as the 3-tuple it was
        assert (instruction, demos, knn_k) == (k.instruction, k.demos, k.knn_k)
        assert G.settings_of(g) is None


@given(st.lists(st.integers(-3, 12), min_size=7, max_size=7),
       st.lists(st.integers(-3, 12), min_size=7, max_size=7), st.integers(0, 2**32))
def test_an_empty_space_draws_exactly_as_no_space(a, b, seed):
    plain, empty = archive(), archive(G.SettingsSpace())
    results = []
    for arc in (plain, empty):
        rng = random.Random(seed)
        x, y = G.repair(list(a), arc, rng), G.repair(list(b), arc, rng)
        results.append((x, y, G.crossover(x, y, arc, rng), G.mutate_demos(list(x), arc, rng),
                        G.mutate_settings(list(x), arc, rng), rng.random()))
    assert results[0] == results[1]
    assert len(results[0][2]) == 7


def test_settings_genes_are_part_of_the_key():
    arc = archive(EVERYTHING)
    plain = arc.genome(0, [1, 2])
    thinking = arc.genome(0, [1, 2], settings=G.Settings(reasoning=True))
    assert plain[:7] == thinking[:7] == [0, 2, 0, 1, 2, 0, 0]
    assert plain[7:] == [G.SETTINGS_MARK, 0, 0, 0] and thinking[7:] == [G.SETTINGS_MARK, 0, 0, 1]
    assert G.key(plain) != G.key(thinking)
    assert G.key(thinking) == (0, (1, 2), 0, ("generate", False, True))
    assert G.key(thinking).settings == G.Settings(reasoning=True)
    assert pickle.loads(pickle.dumps(G.key(thinking))) == G.key(thinking)
    assert "settings=Settings(" in repr(G.key(thinking))


def test_program_expresses_the_settings():
    arc = archive(EVERYTHING)
    p = arc.program(arc.genome(0, [4], settings=G.Settings("rank", calibrate=True)))
    assert (p.answer_mode, p.calibrate, p.reasoning) == ("rank", True, False)
    assert [d.inputs["x"] for d in p.demos] == ["text 4"]
    p = arc.program(arc.seed_genome())
    assert (p.answer_mode, p.calibrate, p.reasoning) == ("generate", False, False)


def test_seed_genome_is_the_users_program_even_outside_the_space():
    arc = archive(RANK_ONLY, reasoning=True)  # the user asked for reasoning; the space has none
    assert G.Settings(reasoning=True) in arc.settings_options
    assert arc.program(arc.seed_genome()).reasoning
    rng = random.Random(0)
    assert G.settings_of(G.repair(arc.seed_genome(), arc, rng)) == G.Settings(reasoning=True)


def test_space_rules():
    space = EVERYTHING
    assert not space.allows(G.Settings("rank", reasoning=True))  # label scoring reads no reasoning
    assert not space.allows(G.Settings("generate", calibrate=True))  # calibration needs rank
    assert space.options() == [G.Settings(), G.Settings(reasoning=True), G.Settings("rank"),
                               G.Settings("rank", calibrate=True)]
    assert G.SettingsSpace(rank=True, calibrate=False).options() == [G.Settings(),
                                                                     G.Settings("rank")]
    assert G.SettingsSpace(reasoning=True).options() == [G.Settings(), G.Settings(reasoning=True)]
    labelled = Program(signature="x -> y", labels=LABELS)
    assert G.SettingsSpace.for_program(labelled, scores_choices=True).rank
    assert not G.SettingsSpace.for_program(labelled, scores_choices=False).rank
    free = Program(signature="x -> y")
    space = G.SettingsSpace.for_program(free, scores_choices=True)
    assert not space.rank and space.reasoning


def test_bad_settings_are_refused_where_they_enter():
    with pytest.raises(ValueError, match="labels"):
        archive(RANK_ONLY, labels=None)
    with pytest.raises(ValueError, match="not in this archive's space"):
        archive(RANK_ONLY).genome(0, [], settings=G.Settings(reasoning=True))
    with pytest.raises(ValueError, match="varies none"):
        archive().genome(0, [], settings=G.Settings(reasoning=True))
    assert archive().genome(0, [], settings=G.Settings()) == [0, 0, 0, 0, 0, 0, 0]


def test_repair_moves_a_forbidden_combination_to_the_nearest_allowed():
    arc = archive(EVERYTHING)
    rng = random.Random(1)
    g = G.repair([0, 0, 0, 0, 0, 0, 0, G.SETTINGS_MARK, 0, 1, 0], arc, rng)  # calibrate alone
    assert G.settings_of(g) in ([G.Settings(), G.Settings("rank", calibrate=True)])
    g = G.repair([0, 0, 0, 0, 0, 0, 0, G.SETTINGS_MARK, 1, 0, 1], arc, rng)  # rank + reasoning
    assert G.settings_of(g) in ([G.Settings("rank"), G.Settings(reasoning=True)])
    g = G.repair([0, 0, 0, 0, 0, 0, 0], arc, rng)  # no trailer: the user's settings
    assert g[7:] == [G.SETTINGS_MARK, 0, 0, 0]
    g = G.repair([0, 0, 0, 0, 0, 0, 0, 5, 7, -2, 9], arc, rng)  # garbage: clamped, then repaired
    assert g[7] == G.SETTINGS_MARK and arc.settings.allows(G.settings_of(g))


def test_mutate_settings_flips_one_allowed_setting():
    arc = archive(EVERYTHING)
    seen = set()
    for seed in range(40):
        start = random.Random(seed).choice(arc.settings_options)
        g = arc.genome(0, [1], settings=start)
        child = G.mutate_settings(list(g), arc, random.Random(seed))
        after = G.settings_of(child)
        assert child[:8] == g[:8] and after != start and arc.settings.allows(after)
        assert sum(a != b for a, b in zip(after.genes(), start.genes(), strict=True)) == 1
        assert child == G.mutate_settings(list(g), arc, random.Random(seed))  # seeded: same
        seen.add(after)
    assert seen == set(arc.settings_options)
    # From rank the only one-flip neighbours are generate and rank+calibrate, never reasoning.
    g = arc.genome(0, [], settings=G.Settings("rank"))
    outs = {G.settings_of(G.mutate_settings(list(g), arc, random.Random(s))) for s in range(30)}
    assert outs == {G.Settings(), G.Settings("rank", calibrate=True)}
    off = archive()
    assert G.mutate_settings(off.genome(0, [1]), off, random.Random(0)) == off.genome(0, [1])


@given(st.integers(0, 2**32))
def test_crossover_mixes_settings_into_allowed_children(seed):
    arc = archive(EVERYTHING)
    rng = random.Random(seed)
    a = arc.genome(0, [1, 2], settings=G.Settings("rank", calibrate=True))
    b = arc.genome(0, [3], 1, settings=G.Settings(reasoning=True))
    child = G.crossover(a, b, arc, rng)
    assert len(child) == len(a) and child[7] == G.SETTINGS_MARK
    assert arc.settings.allows(G.settings_of(child))
    arc.program(child)
