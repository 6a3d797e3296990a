"""The version registry (deploy, rollback, one deployed version under threads and processes,
damaged files) and the paired deploy decision."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.agents.versions import (
    DeployDecision,
    UnknownVersionError,
    VersionRegistry,
    paired_decision,
)
from evo.errors import ConfigError, DamagedFileError
from evo.program import Program, Signature
from evo.program.ensemble import EnsembleProgram


def _program(instruction: str = "Answer the question.") -> Program:
    return Program(signature=Signature.parse("question: str -> answer: str"),
                   instruction=instruction)


@pytest.fixture
def reg(tmp_path):
    with VersionRegistry(tmp_path / "agents" / "a" / "versions.sqlite") as r:
        yield r


def test_add_get_load_round_trip(reg):
    v = reg.add(_program("one"), source="seed", created_by="ana", scores={"val": 0.5})
    assert (v.number, v.status, v.parent, v.source, v.created_by) == (1, "candidate", None,
                                                                      "seed", "ana")
    assert v.program["evo_program"] == 1 and v.scores == {"val": 0.5}
    w = reg.add(_program("two"), parent=1, job="j-1", source="job:j-1")
    assert (w.number, w.parent, w.job) == (2, 1, "j-1")
    assert reg.get(2).load() == _program("two")
    assert reg.get(1).created_by == "ana" and reg.add(_program()).created_by  # the OS user
    assert [v.number for v in reg.history()] == [1, 2, 3]
    assert reg.deployed() is None


def test_ensemble_and_dict_programs(reg):
    ens = EnsembleProgram(members=[_program("a"), _program("b"), _program("c")])
    v = reg.add(ens)
    assert "evo_ensemble" in v.program and reg.get(v.number).load() == ens
    w = reg.add(reg.get(v.number).program)  # a program file's dict is accepted as is
    assert reg.get(w.number).load() == ens


def test_bad_input_is_one_config_error(reg):
    with pytest.raises(ConfigError, match="neither an 'evo_program'"):
        reg.add({"instruction": "x"})
    with pytest.raises(ConfigError, match="not int"):
        reg.add(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="JSON-able"):
        reg.add(_program(), scores={"x": object()})
    with pytest.raises(UnknownVersionError, match="no version 7 in the version registry"):
        reg.get(7)
    with pytest.raises(UnknownVersionError):
        reg.add(_program(), parent=7)
    with pytest.raises(UnknownVersionError):
        reg.deploy(7)
    assert reg.history() == []  # nothing half-added


def test_deploy_retires_the_previous_and_records_it(reg):
    for i in range(3):
        reg.add(_program(str(i)))
    reg.deploy(1)
    d = reg.deploy(2, decision={"deploy": True, "p_value": 0.01})
    assert d.status == "deployed" and d.decision == {"deploy": True, "p_value": 0.01}
    assert reg.get(1).status == "retired" and reg.get(3).status == "candidate"
    assert reg.deployed().number == 2
    assert reg.deploy(2).number == 2  # already deployed: no change, no record
    assert [(e["version"], e["previous"], e["kind"]) for e in reg.deployments()] == [
        (1, None, "deploy"), (2, 1, "deploy")]


def test_rollback_walks_back_and_to_a_named_version(reg):
    for i in range(3):
        reg.add(_program(str(i)))
        reg.deploy(i + 1)
    assert reg.rollback().number == 2
    assert reg.rollback().number == 1
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.rollback(3).number == 3
    assert reg.rollback().number == 1  # undoes the rollback to 3
    assert reg.get(3).status == "retired" and reg.deployed().number == 1
    kinds = [(e["version"], e["previous"], e["kind"]) for e in reg.deployments()]
    assert kinds[3:] == [(2, 3, "rollback"), (1, 2, "rollback"), (3, 1, "rollback"),
                         (1, 3, "rollback")]


def test_rollback_with_nothing_deployed(reg):
    reg.add(_program())
    with pytest.raises(ConfigError, match="no version is deployed"):
        reg.rollback()


def test_set_scores(reg):
    reg.add(_program(), scores={"val": 0.1})
    assert reg.set_scores(1, {"heldout": [1.0, 0.0]}).scores == {"heldout": [1.0, 0.0]}
    assert reg.get(1).scores == {"heldout": [1.0, 0.0]}
    with pytest.raises(UnknownVersionError):
        reg.set_scores(2, {})


def test_threads_deploying_at_once_leave_exactly_one_deployed(reg):
    n = 12
    for i in range(n):
        reg.add(_program(str(i)))
    seen_two, errors = [], []
    stop = threading.Event()

    def watcher():
        conn = sqlite3.connect(reg.path, timeout=60)
        while not stop.is_set():
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM versions WHERE status = 'deployed'").fetchone()
            if count > 1:
                seen_two.append(count)
        conn.close()

    def deployer(k):
        try:
            for j in range(20):
                reg.deploy((k * 7 + j) % n + 1)
        except Exception as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    w = threading.Thread(target=watcher)
    w.start()
    threads = [threading.Thread(target=deployer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    w.join()
    assert errors == [] and seen_two == []
    statuses = [v.status for v in reg.history()]
    assert statuses.count("deployed") == 1
    assert reg.deployed().number == reg.deployments()[-1]["version"]


def test_a_reader_never_sees_none_once_deployed(reg):
    for i in range(4):
        reg.add(_program(str(i)))
    reg.deploy(1)
    seen, done = [], threading.Event()
    other = VersionRegistry(reg.path)  # its own connection, as another process has

    def reader(r):  # as an agent serving calls does
        while not done.is_set():
            seen.append(r.deployed())

    threads = [threading.Thread(target=reader, args=(r,)) for r in (reg, other)]
    for t in threads:
        t.start()
    for j in range(60):
        reg.deploy(j % 4 + 1) if j % 3 else reg.rollback(j % 4 + 1)
    done.set()
    for t in threads:
        t.join()
    other.close()
    assert seen and all(v is not None and v.status == "deployed" for v in seen)


def _deploy_in_child(registry: str | VersionRegistry, numbers: list[int]) -> None:
    r = VersionRegistry(registry) if isinstance(registry, str) else registry
    for k in numbers:
        r.deploy(k)
    r.close()


def test_processes_share_one_registry(tmp_path):
    path = tmp_path / "versions.sqlite"
    r = VersionRegistry(path)
    for i in range(6):
        r.add(_program(str(i)))
    r.deploy(1)
    ctx = multiprocessing.get_context("fork")  # (spawn would import evo again in each child)
    # two children open the file, the third uses the registry it inherited: its own connection
    procs = [ctx.Process(target=_deploy_in_child,
                         args=(str(path) if k < 2 else r, [(k + j) % 6 + 1 for j in range(10)]))
             for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert [v.status for v in r.history()].count("deployed") == 1  # the parent's connection
    assert len(r.deployments()) >= 3
    r.close()


def test_corrupt_file_is_one_damaged_file_error(tmp_path):
    bad = tmp_path / "versions.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DamagedFileError, match=str(bad)):
        VersionRegistry(bad)
    assert bad.read_bytes() == b"this is not a database" * 100  # left as found
    (tmp_path / "d").mkdir()
    with pytest.raises(DamagedFileError, match="is a directory"):
        VersionRegistry(tmp_path / "d")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE versions (x INTEGER)").connection.commit()
    with pytest.raises(DamagedFileError, match="not an evo version registry"):
        VersionRegistry(other)


def test_truncated_file_is_damaged(tmp_path):
    path = tmp_path / "versions.sqlite"
    with VersionRegistry(path) as r:
        for i in range(40):
            r.add(_program("x" * 2000 + str(i)))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=str(path)), VersionRegistry(path) as r:
        r.history()


def test_damaged_program_row_names_file_and_version(tmp_path):
    path = tmp_path / "versions.sqlite"
    with VersionRegistry(path) as r:
        r.add(_program())
        r.add(_program())
    conn = sqlite3.connect(path)
    conn.execute("""UPDATE versions SET program = '{"evo_program": 1, "signature": 3}'
                    WHERE number = 2""")
    conn.execute("UPDATE versions SET program = '{not json' WHERE number = 1")
    conn.commit()
    conn.close()
    with VersionRegistry(path) as r:
        v = r.get(2)
        with pytest.raises(DamagedFileError, match=rf"{path}: version 2's program: .*signature"):
            v.load()
        with pytest.raises(DamagedFileError, match=rf"{path}: version 1: its stored JSON"):
            r.get(1)
    v2 = type(v)(**{**v.to_dict(), "program": {"evo_program": 99}}, registry=str(path))
    with pytest.raises(DamagedFileError, match="version 2's program: evo_program is 99"):
        v2.load()


def test_symlink_refused(tmp_path):
    real = tmp_path / "real.sqlite"
    VersionRegistry(real).close()
    link = tmp_path / "link.sqlite"
    os.symlink(real, link)
    with pytest.raises(ConfigError, match="symbolic link"):
        VersionRegistry(link)


def test_closed_registry(tmp_path):
    r = VersionRegistry(tmp_path / "v.sqlite")
    r.close()
    with pytest.raises(ConfigError, match="is closed"):
        r.history()


# ---- the paired deploy decision ---------------------------------------------------------------
def _ids(n: int) -> list[str]:
    return [f"e{i}" for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([0.0, 0.5, 1.0])),
                min_size=2, max_size=60),
       st.sampled_from([0.001, 0.05, 0.5]))
def test_never_deploys_a_candidate_that_is_not_better(pairs, alpha):
    a, b = np.array(pairs).T
    d = paired_decision(a, b, _ids(len(a)), alpha=alpha)
    if b.mean() <= a.mean():
        assert not d.deploy
    assert d.deploy == (d.difference > 0 and d.p_value < alpha)
    assert d.n == len(a) and d.difference == pytest.approx(b.mean() - a.mean())


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(60)), st.integers(12, 30), st.integers(0, 2),
       st.integers(0, 25))
def test_deploys_a_clearly_better_candidate_on_60_examples(order, wins, losses, both_right):
    # deployed right on `both_right` + `losses` examples; the candidate fixes `wins` more and
    # breaks `losses` of them: a clear win
    deployed, candidate = np.zeros(60), np.zeros(60)
    idx = list(order)
    for i in idx[:both_right]:
        deployed[i] = candidate[i] = 1.0
    for i in idx[both_right:both_right + losses]:
        deployed[i] = 1.0
    for i in idx[both_right + losses:both_right + losses + wins]:
        candidate[i] = 1.0
    d = paired_decision(deployed, candidate, _ids(60), alpha=0.05, version=4)
    assert d.deploy, str(d)
    assert d.ci_low > 0 and str(d).startswith("deploy v4: +")


def test_alpha_is_respected():
    deployed = np.zeros(60)
    candidate = np.zeros(60)
    candidate[:6] = 1.0  # a marginal win: 6 of 60, no loss (exact p = 2/64)
    loose = paired_decision(deployed, candidate, _ids(60), alpha=0.05)
    tight = paired_decision(deployed, candidate, _ids(60), alpha=0.001)
    assert loose.p_value == pytest.approx(2 / 64)
    assert loose.deploy and not tight.deploy
    assert "not significantly" in tight.reason and ">= alpha 0.001" in str(tight)
    assert str(tight).startswith("keep the candidate as a candidate: +0.100")


def test_decision_edges_and_bad_input():
    few = paired_decision([0.0], [1.0], ["e0"])
    assert not few.deploy and few.n == 1 and "at least 2" in few.reason
    assert not paired_decision([], [], []).deploy
    for alpha in (0, 1, -0.1, 1.5):
        with pytest.raises(ConfigError, match="alpha"):
            paired_decision([0.0, 1.0], [1.0, 1.0], _ids(2), alpha=alpha)
    with pytest.raises(ConfigError, match="one score per example"):
        paired_decision([0.0, 1.0], [1.0], _ids(2))
    with pytest.raises(ConfigError, match="one score per example"):
        paired_decision([0.0, 1.0], [1.0, 1.0], _ids(3))
    with pytest.raises(ConfigError, match="finite"):
        paired_decision([0.0, float("nan")], [1.0, 1.0], _ids(2))
    d = paired_decision([0.0, 1.0, 0.0], [1.0, 1.0, 1.0], _ids(3), alpha=0.5)
    assert DeployDecision(**d.to_dict()) == d
