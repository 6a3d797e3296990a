"""Label scoring in the evaluator: the request it sends for an ``answer_mode="rank"`` program,
dense cells (the softmax of the choices' log-probabilities at the gold label), contextual
calibration (a biased label flipped; its calls are LM calls, not metric calls; measured once per
prefix; the same at any concurrency and on a journal replay), and the one ConfigError for a
backend that cannot score choices."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from evo.data import Example
from evo.errors import ConfigError
from evo.lm.base import LMError, LMRequest, LMResponse
from evo.lm.journal import Journal
from evo.lm.session import LMSession
from evo.metrics import exact_match
from evo.program import CONTENT_FREE_INPUTS, Program
from evo.search.evaluate import (
    REASONING_MAX_TOKENS,
    Budget,
    BudgetExhausted,
    Evaluator,
    ScoreMatrix,
    label_probabilities,
)

LABELS = ("pos", "neg")
# the model's label probabilities per input text; content-free inputs lean to "pos" (0.9)
TABLE = {"good film": (0.8, 0.2), "fine film": (0.6, 0.4), "meh film": (0.7, 0.3),
         "bad film": (0.3, 0.7)}
BIAS = (0.9, 0.1)
GOLD = {"good film": "pos", "fine film": "neg", "meh film": "neg", "bad film": "neg"}


def _input(request: LMRequest) -> str:
    return request.messages[-1].content.partition(":")[2].strip()


class ScoringLM:
    """Scores choices from :data:`TABLE` (content-free inputs from :data:`BIAS`); generates a
    fixed reply otherwise. Thread-safe; records every request and the most calls in flight."""

    scores_choices = True
    concurrent = True

    def __init__(self, *, delay_s: float = 0.0, max_concurrency: int = 1,
                 fail: set[str] | None = None, logprobs: object = None) -> None:
        self.model_id = "scoring"
        self.calls: list[LMRequest] = []
        self.delay_s = delay_s
        self.max_concurrency = max_concurrency
        self.fail = fail or set()
        self.override = logprobs
        self.peak = self._now = 0
        self._lock = threading.Lock()

    def complete(self, request: LMRequest) -> LMResponse:
        with self._lock:
            self.calls.append(request)
            self._now += 1
            self.peak = max(self.peak, self._now)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            text = _input(request)
            if text in self.fail:
                raise LMError(f"scripted failure on {text!r}")
            if not request.choices:
                return LMResponse("label: pos")
            if self.override is not None:
                return LMResponse(f"{request.prefill} pos", choice_logprobs=self.override)
            probs = TABLE.get(text, BIAS)
            logprobs = tuple(math.log(p) for p in probs)
            best = request.choices[int(np.argmax(logprobs))]
            return LMResponse(f"{request.prefill} {best}", choice_logprobs=logprobs)
        finally:
            with self._lock:
                self._now -= 1


class GenerateOnlyLM:
    model_id = "gen-only"

    def __init__(self) -> None:
        self.calls: list[LMRequest] = []

    def complete(self, request: LMRequest) -> LMResponse:
        self.calls.append(request)
        return LMResponse("label: pos")


def examples(texts=tuple(TABLE)) -> list[Example]:
    return [Example(inputs={"review": t}, outputs={"label": GOLD[t]}) for t in texts]


def program(**settings) -> Program:
    return Program(signature="review -> label", labels=list(LABELS), **settings)


def evaluate(prog: Program, lm, *, concurrency: int = 1, texts=tuple(TABLE),
             budget: Budget | None = None, session: LMSession | None = None):
    session = session or LMSession(lm, max_concurrency=concurrency)
    evaluator = Evaluator(session, exact_match, budget or Budget(metric_calls=100))
    matrix = ScoreMatrix(examples(texts))
    row = matrix.add_row()
    try:
        evaluator.evaluate(prog, matrix, row, range(len(matrix.examples)))
    finally:
        evaluator.close()
    return evaluator, matrix, [matrix.cells[(row, j)] for j in range(len(matrix.examples))]


def test_a_rank_program_sends_a_choices_request_with_the_field_prefill():
    lm = ScoringLM()
    prog = program(answer_mode="rank")
    _, matrix, _ = evaluate(prog, lm)
    assert len(lm.calls) == len(TABLE)
    for request, ex in zip(lm.calls, matrix.examples, strict=True):
        assert request.choices == LABELS and request.prefill == "label:"
        assert request.purpose == "task"
        assert request.messages == prog.messages(ex)  # the generation prompt, unchanged


def test_dense_is_the_softmax_of_the_choice_logprobs_at_the_gold_label():
    _, matrix, cells = evaluate(program(answer_mode="rank"), ScoringLM())
    for cell, ex in zip(cells, matrix.examples, strict=True):
        probs = TABLE[ex.inputs["review"]]
        gold = LABELS.index(ex.outputs["label"])
        assert cell.dense == pytest.approx(probs[gold] / sum(probs))
        # the prediction is the most probable label, scored by the user's metric
        assert cell.prediction.outputs == {"label": LABELS[int(np.argmax(probs))]}
        assert cell.score == float(cell.prediction.outputs["label"] == ex.outputs["label"])
    np.testing.assert_allclose(matrix.dense[0], [c.dense for c in cells])


def test_generation_cells_have_no_dense_score():
    lm = ScoringLM()
    _, matrix, cells = evaluate(program(), lm)
    assert all(c.dense is None for c in cells) and np.isnan(matrix.dense).all()
    assert all(not r.choices for r in lm.calls)


def test_calibration_divides_out_the_content_free_bias_and_flips_a_biased_answer():
    raw = {c.prediction.outputs["label"] for c in evaluate(
        program(answer_mode="rank"), ScoringLM(), texts=["fine film"])[2]}
    assert raw == {"pos"}  # 0.6 vs 0.4: the prompt's lean to "pos" decides
    _, _, [cell] = evaluate(program(answer_mode="rank", calibrate=True), ScoringLM(),
                            texts=["fine film"])
    # p ∝ (0.6 / 0.9, 0.4 / 0.1) = (0.667, 4): "neg", the gold label
    want = np.array([0.6 / 0.9, 0.4 / 0.1])
    assert cell.prediction.outputs == {"label": "neg"} and cell.score == 1.0
    assert cell.prediction.text == "label: neg"
    assert cell.dense == pytest.approx(want[1] / want.sum())


def test_label_probabilities_arithmetic():
    logp = [math.log(0.6), math.log(0.4)]
    np.testing.assert_allclose(label_probabilities(logp), [0.6, 0.4])
    np.testing.assert_allclose(label_probabilities(logp, np.array([0.5, 0.5])), [0.6, 0.4])
    np.testing.assert_allclose(label_probabilities(logp, np.array([0.9, 0.1])),
                               np.array([2 / 3, 4]) / (2 / 3 + 4))
    # a label the model rules out stays out; a bias of 0 does not blow up
    np.testing.assert_allclose(label_probabilities([0.0, -math.inf], np.array([0.0, 1.0])),
                               [1.0, 0.0])


def test_calibration_calls_are_lm_calls_not_metric_calls_and_are_made_once_per_prefix():
    lm = ScoringLM()
    session = LMSession(lm)
    evaluator = Evaluator(session, exact_match, Budget(metric_calls=100))
    prog = program(answer_mode="rank", calibrate=True)
    matrix = ScoreMatrix(examples())
    row = matrix.add_row()
    evaluator.evaluate(prog, matrix, row, [0, 1])
    calibration = [r for r in lm.calls if r.purpose == "calibration"]
    assert [r.messages[-1].content for r in calibration] == [
        f"review: {t}".rstrip() for t in CONTENT_FREE_INPUTS]
    assert all(r.choices == LABELS and r.prefill == "label:" for r in calibration)
    assert all(r.messages[:-1] == prog.prefix() for r in calibration)
    assert evaluator.metric_calls == 2
    assert evaluator.lm_requests == 2 + len(CONTENT_FREE_INPUTS)
    # the same prefix in another row (another candidate with the same prompt): no new calibration
    evaluator.evaluate(prog, matrix, matrix.add_row(), [2, 3])
    assert sum(r.purpose == "calibration" for r in lm.calls) == len(CONTENT_FREE_INPUTS)
    assert evaluator.metric_calls == 4
    # another instruction is another prefix: measured again
    evaluator.evaluate(prog.model_copy(update={"instruction": "Sentiment?"}), matrix,
                       matrix.add_row(), [0])
    assert sum(r.purpose == "calibration" for r in lm.calls) == 2 * len(CONTENT_FREE_INPUTS)


def test_calibration_calls_count_against_the_lm_call_budget():
    prog = program(answer_mode="rank", calibrate=True)
    lm = ScoringLM()
    with pytest.raises(BudgetExhausted, match="calibration"):
        evaluate(prog, lm, budget=Budget(metric_calls=100, lm_calls=len(TABLE) + 2))
    assert lm.calls == []
    evaluate(prog, lm, budget=Budget(metric_calls=100, lm_calls=len(TABLE) + 3))


@pytest.mark.parametrize("calibrate", [False, True])
def test_the_same_cells_at_any_concurrency(calibrate):
    texts = list(TABLE)
    prog = program(answer_mode="rank", calibrate=calibrate)
    runs = []
    for concurrency in (1, 8):
        lm = ScoringLM(delay_s=0.002, max_concurrency=concurrency)
        evaluator, _, cells = evaluate(prog, lm, concurrency=concurrency, texts=texts)
        runs.append((cells, sorted(r.key("m") for r in lm.calls), evaluator.lm_requests, lm))
    (serial, keys1, n1, lm1), (parallel, keys8, n8, lm8) = runs
    assert lm1.peak == 1 and lm8.peak > 1
    assert serial == parallel and keys1 == keys8 and n1 == n8


def test_a_journal_replay_gives_the_same_cells(tmp_path):
    prog = program(answer_mode="rank", calibrate=True)
    first = LMSession(ScoringLM())
    first.journal = Journal(tmp_path / "journal.sqlite")
    _, _, cells = evaluate(prog, None, session=first)
    # resumed against a model that would answer differently: every answer comes from the journal
    resumed = LMSession(ScoringLM(logprobs=(0.0, -5.0)))
    resumed.journal = Journal(tmp_path / "journal.sqlite")
    _, _, again = evaluate(prog, None, session=resumed)
    assert again == cells and resumed.lm.calls == []


@pytest.mark.parametrize("calibrate", [False, True])
def test_a_backend_that_cannot_score_is_one_config_error_before_any_call(calibrate):
    lm = GenerateOnlyLM()
    with pytest.raises(ConfigError, match=r"answer_mode='rank'.*'gen-only'.*GenerateOnlyLM"
                       ) as err:
        evaluate(program(answer_mode="rank", calibrate=calibrate), lm)
    assert ("calibrate=True" in str(err.value)) == calibrate
    assert lm.calls == []
    evaluate(program(), lm)  # generation works with it


def test_a_reply_without_usable_logprobs_fails_the_cell():
    # (one log-probability for two labels: the session or the evaluator refuses it)
    _, _, cells = evaluate(program(answer_mode="rank"), ScoringLM(logprobs=(0.0,)),
                           texts=["good film"])
    assert cells[0].kind.startswith("lm") and cells[0].score == 0.0 and cells[0].dense is None


def test_a_failed_calibration_call_fails_the_programs_cells_and_is_asked_again():
    lm = ScoringLM(fail={"N/A"})
    session = LMSession(lm, retries=0)
    evaluator = Evaluator(session, exact_match, Budget(metric_calls=100))
    prog = program(answer_mode="rank", calibrate=True)
    matrix = ScoreMatrix(examples())
    row = matrix.add_row()
    evaluator.evaluate(prog, matrix, row, [0, 1])
    cells = [matrix.cells[(row, j)] for j in (0, 1)]
    assert all(c.kind == "lm" and "calibration" in c.error for c in cells)
    lm.fail.clear()
    evaluator.evaluate(prog, matrix, row, [2])
    assert matrix.cells[(row, 2)].error is None and matrix.cells[(row, 2)].dense is not None


def test_a_reasoning_program_gets_room_to_think():
    lm = ScoringLM()
    evaluate(program(reasoning=True), lm, texts=["good film"])
    evaluate(program(), lm, texts=["good film"])
    assert [r.max_tokens for r in lm.calls] == [REASONING_MAX_TOKENS, 64]
