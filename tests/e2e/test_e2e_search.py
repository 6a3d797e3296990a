"""The default search's new parts on the real embedded model (Qwen2.5-Coder-0.5B via llama.cpp):
label scoring and its dense scores, racing, the held-out confirmation, the operator mix, then
contextual calibration and a reasoning step, each on a few real public examples."""

import numpy as np
import pytest

import evo
from evo.datasets import load
from evo.lm import LMSession, make_lm
from evo.lm.cache import ResponseCache
from evo.search.evaluate import Evaluator, ScoreMatrix

pytestmark = [pytest.mark.local_lm, pytest.mark.network]


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("llama_cpp")
    return make_lm("qwen2.5-coder-0.5b")


def test_the_default_search_ranks_labels_races_on_dense_scores_and_confirms(lm, tmp_path):
    task = load("trec", seed=0, n_train=30, n_val=15, n_test=0)
    program = evo.Program(signature=task.signature, labels=task.labels)
    optimizer = evo.Evolution(budget=evo.Budget(metric_calls=60), max_demos=2, encoder="hashing")
    result = evo.optimize(program, task.train, task.val, lm=lm, optimizer=optimizer,
                          cache=tmp_path / "cache.sqlite")
    assert result.metric_calls <= 60
    # the seed answering by label scoring is tried first
    opening = result.candidates[1]
    assert opening.op == "settings" and opening.program.answer_mode == "rank"
    dense = result.matrix.dense[opening.id]
    observed = dense[~np.isnan(dense)]
    assert len(observed) > 0 and ((observed >= 0) & (observed <= 1)).all()
    races = [e for e in result.events if e["event"] == "candidate_raced"]
    assert races and {e["outcome"] for e in races} <= {"validated", "dropped", "out of budget"}
    if result.best.answer_mode == "rank":  # later children inherit it: their races are dense
        assert any(e["dense"] for e in races[1:])
    conf = result.confirmation
    assert conf is not None and conf["n"] == 3 and conf["candidate"] == result.best_id
    assert any(e["event"] == "operator_stats" for e in result.events)


def test_calibration_and_reasoning_on_the_real_model(lm, tmp_path):
    session = LMSession(lm, cache=ResponseCache(tmp_path / "cache.sqlite"))
    trec = load("trec", seed=0, n_train=10, n_val=6, n_test=0)
    ranked = evo.Program(signature=trec.signature, labels=trec.labels, answer_mode="rank",
                         calibrate=True)
    cells = _cells(session, ranked, list(trec.val))
    assert all(c.error is None and c.dense is not None for c in cells)
    assert all(c.prediction.outputs["label"] in trec.labels for c in cells)
    # the content-free inputs, once for the prompt prefix
    assert session.usage.by_purpose.get("calibration") == 3
    math = load("elementary_math_qa", seed=0, n_train=4, n_val=2, n_test=0)
    reasoning = evo.Program(signature=math.signature, reasoning=True)
    cells = _cells(session, reasoning, list(math.val))
    assert all("reasoning" in c.prediction.text.lower() or c.error for c in cells)
    assert all(c.dense is None for c in cells)


def _cells(session, program, examples):
    evaluator = Evaluator(session, evo.exact_match, evo.Budget(metric_calls=100))
    matrix = ScoreMatrix(examples)
    row = matrix.add_row()
    evaluator.evaluate(program, matrix, row, range(len(examples)))
    return [matrix.cells[(row, c)] for c in range(len(examples))]
