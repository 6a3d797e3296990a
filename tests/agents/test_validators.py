"""Validators (evo.agents.validators): the built-in checks and their messages, bad configs as one
ConfigError, the LM judge through a session, validated metrics inside a real search, and
refine's retries with advice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evo.agents.validators import (
    Check,
    JSONSchema,
    Length,
    LMJudge,
    OneOf,
    Refined,
    Regex,
    Validator,
    check_outputs,
    refine,
    validated,
)
from evo.data import Example
from evo.errors import ConfigError
from evo.lm.base import LMRequest, LMRequestError, LMUnavailableError
from evo.lm.scripted import ScriptedLM
from evo.lm.session import LMSession
from evo.metrics import Score, contains, exact_match
from evo.program import Prediction, Program
from evo.runs.runner import name_of

IN = {"question": "q"}


# ---- built-in validators ---------------------------------------------------------------------
def test_regex_passes_and_says_what_failed() -> None:
    v = Regex("answer", r"^\d+$")
    assert v.name == "regex"
    assert v(IN, {"answer": "612"}) is None
    assert v(IN, {"answer": "six"}) == "answer 'six' does not match the pattern '^\\\\d+$'"
    assert Regex("answer", r"\d", fullmatch=True)(IN, {"answer": "12"}) is not None
    assert Regex("answer", r"\d", name="digits").name == "digits"


def test_json_schema_parses_then_validates() -> None:
    v = JSONSchema("answer", {"type": "object", "required": ["city"],
                              "properties": {"city": {"type": "string"}}})
    assert v.name == "json"
    assert v(IN, {"answer": '{"city": "Paris"}'}) is None
    assert "is not valid JSON" in v(IN, {"answer": "{city: Paris}"})
    assert "'city' is a required property" in v(IN, {"answer": "{}"})
    assert "$.city" in v(IN, {"answer": '{"city": 3}'})


def test_json_schema_never_fetches_a_remote_ref() -> None:
    v = JSONSchema("answer", {"$ref": "http://127.0.0.1:9/schema.json"})
    with pytest.raises(ConfigError, match="remote \\$ref are not fetched"):
        v(IN, {"answer": "{}"})


def test_length_names_the_count_and_the_limit() -> None:
    v = Length("answer", min_chars=2, max_chars=5)
    assert v(IN, {"answer": "abc"}) is None
    assert v(IN, {"answer": "abcdefg"}) == "answer is 7 characters, more than the 5 allowed"
    assert v(IN, {"answer": "a"}) == "answer is 1 characters, fewer than the 2 required"


def test_one_of_folds_case_unless_asked() -> None:
    assert OneOf("label", ["yes", "no"])(IN, {"label": " Yes "}) is None
    assert OneOf("label", ["yes", "no"], case_sensitive=True)(IN, {"label": "Yes"}) is not None
    assert OneOf("label", ["yes", "no"])(IN, {"label": "maybe"}) == \
        "label 'maybe' is not one of: yes, no"


def test_check_runs_the_users_callable() -> None:
    seen = []

    def cites_question(inputs: dict[str, str], outputs: dict[str, str]) -> bool:
        seen.append((inputs, outputs))
        return inputs["question"] in outputs["answer"]

    v = Check(cites_question, name="cites", message="the answer must quote the question")
    assert v(IN, {"answer": "q: yes"}) is None
    assert v(IN, {"answer": "yes"}) == "the answer must quote the question"
    assert seen == [(IN, {"answer": "q: yes"}), (IN, {"answer": "yes"})]
    forgot = Check(lambda i, o: None, name="forgot", message="m")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="'forgot'.*returned None"):
        forgot(IN, {"answer": "x"})


def test_builtins_are_validators_and_check_outputs_lists_failures_in_order() -> None:
    vs = [Regex("answer", r"^\d+$"), Length("answer", max_chars=3), OneOf("answer", ["1"])]
    assert all(isinstance(v, Validator) for v in vs)
    assert check_outputs(vs, IN, {"answer": "1"}) == []
    assert [name for name, _ in check_outputs(vs, IN, {"answer": "1234"})] == ["length", "one_of"]


# ---- bad configs -----------------------------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: Regex("answer", "(unclosed"), "'regex'.*not a valid regular expression"),
    (lambda: JSONSchema("answer", {"type": "no-such-type"}), "'json'.*not a valid JSON schema"),
    (lambda: JSONSchema("answer", {"minLength": -1}), "'json'.*minLength"),
    (lambda: JSONSchema("answer", "not a schema"), "'json'.*must be a JSON schema"),  # type: ignore[arg-type]
    (lambda: Length("answer", min_chars=10, max_chars=5), "'length'.*min_chars 10.*max_chars 5"),
    (lambda: Length("answer", min_chars=-1), "'length'.*min_chars"),
    (lambda: OneOf("answer", []), "'one_of'.*options"),
    (lambda: Check("not callable", name="c", message="m"), "'c'.*callable"),  # type: ignore[arg-type]
    (lambda: Regex("", "x"), "'regex'.*field"),
    (lambda: LMJudge(ScriptedLM({}), " "), "'judge'.*criterion"),
])
def test_a_bad_config_is_one_config_error_naming_the_validator(make, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=words):
        make()


@pytest.mark.parametrize("v", [Regex("answr", "x"), JSONSchema("answr", {}), Length("answr"),
                               OneOf("answr", ["x"])])
def test_an_unknown_field_is_a_config_error_at_check_time(v: Validator) -> None:
    with pytest.raises(ConfigError, match=f"validator '{v.name}'.*'answr'.*'answer'"):
        v(IN, {"answer": "x"})


# ---- the LM judge ----------------------------------------------------------------------------
def _judge_lm(verdicts: dict[str, str]) -> ScriptedLM:
    def respond(req: LMRequest) -> str:
        text = req.messages[-1].content
        return next((v for k, v in verdicts.items() if f"answer: {k}" in text), "maybe so")
    return ScriptedLM(respond)


def test_lm_judge_says_yes_or_no_and_counts_its_calls() -> None:
    lm = _judge_lm({"Paris": "Yes.", "Lyon": "no"})
    judge = LMJudge(lm, "names the capital of France", field="answer")
    assert judge(IN, {"answer": "Paris"}) is None
    assert judge(IN, {"answer": "Lyon"}) == \
        "answer does not meet the criterion: names the capital of France"
    assert judge.lm_calls == 2 and judge.notes == []
    request = lm.calls[0]
    assert request.purpose == "judge"
    assert "Criterion: names the capital of France" in request.messages[-1].content
    assert "question: q" in request.messages[-1].content


def test_lm_judge_that_cannot_judge_passes_with_a_note() -> None:
    judge = LMJudge(_judge_lm({}), "is polite")
    assert judge(IN, {"answer": "whatever"}) is None  # reply "maybe so": neither yes nor no
    assert judge.lm_calls == 1 and judge.could_not_judge == 1
    assert "neither yes nor no" in judge.notes[0]

    def down(req: LMRequest) -> BaseException:
        return LMUnavailableError("scripted: host down")

    failing = LMJudge(LMSession(ScriptedLM({}, errors=down), retries=0), "is polite")
    assert failing(IN, {"answer": "x"}) is None and failing(IN, {"answer": "y"}) is None
    assert failing.lm_calls == 2 and failing.could_not_judge == 2
    assert all("the judge's LM failed" in n and "host down" in n for n in failing.notes)

    refused = LMJudge(ScriptedLM({}, errors=lambda r: LMRequestError("too long")), "is polite")
    assert refused(IN, {"answer": "x"}) is None and "too long" in refused.notes[0]


def test_lm_judge_accepts_a_session_and_uses_it() -> None:
    session = LMSession(_judge_lm({"a": "yes"}))
    judge = LMJudge(session, "ok")
    assert judge.session is session
    assert judge(IN, {"answer": "a"}) is None
    assert session.usage.by_purpose == {"judge": 1}


# ---- validated metrics -----------------------------------------------------------------------
def _ex(answer: str = "7") -> Example:
    return Example(inputs={"question": "how many?"}, outputs={"answer": answer})


def test_validated_subtracts_the_share_failed_and_appends_feedback() -> None:
    vs = [Regex("answer", r"^\d+$"), Length("answer", max_chars=1)]
    metric = validated(contains, vs, penalty=0.5)
    good = metric(_ex(), Prediction("answer: 7", {"answer": "7"}))
    assert good == contains(_ex(), Prediction("answer: 7", {"answer": "7"}))
    one = metric(_ex(), Prediction("answer: 77", {"answer": "77"}))
    assert one.value == 0.0  # contains is 0 ('7' is not a token of '77'): floored at 0
    assert one.feedback.count("validator 'length'") == 1 and "'regex'" not in one.feedback
    both = metric(_ex("seven"), Prediction("", {"answer": "it is seven"}))
    assert both.value == pytest.approx(1.0 - 0.5)  # contains = 1, both validators failed
    assert "validator 'regex': answer 'it is seven' does not match" in both.feedback
    assert "validator 'length': answer is 11 characters" in both.feedback
    assert both.feedback.startswith("Correct")  # the base metric's feedback comes first
    half = validated(contains, vs)(_ex("seven"), Prediction("", {"answer": "seven 8"}))
    assert half.value == pytest.approx(0.0)  # 1 - 1.0 * 2/2
    three = validated(contains, [*vs, OneOf("answer", ["seven"])])(
        _ex("seven"), Prediction("", {"answer": "seven"}))
    assert three.value == pytest.approx(1 - 2 / 3)


def test_validated_leaves_an_unparsed_reply_to_the_base_metric() -> None:
    metric = validated(exact_match, [Regex("answer", "x")])
    broken = Prediction("garbage", None, "no 'answer:' line in the reply")
    assert metric(_ex(), broken) == exact_match(_ex(), broken)


def test_validated_batch_equals_one_by_one() -> None:
    metric = validated(contains, [Length("answer", max_chars=3)])
    examples = [_ex("7"), _ex("eight"), _ex("9")]
    predictions = [Prediction("", {"answer": "7"}), Prediction("", {"answer": "eight"}),
                   Prediction("", None, "unparsed")]
    assert metric.batch(examples, predictions) == [metric(e, p)
                                                   for e, p in zip(examples, predictions)]


def test_validated_takes_a_plain_function_metric() -> None:
    def half(example: Example, prediction: Prediction) -> tuple[float, str]:
        return 0.5, "half right"

    score = validated(half, [Length("answer", max_chars=1)], penalty=0.2)(
        _ex(), Prediction("", {"answer": "77"}))
    assert score == Score(pytest.approx(0.3), "half right validator 'length': answer is 2 "
                                              "characters, more than the 1 allowed.")


def test_validated_counts_its_judges_calls() -> None:
    judge = LMJudge(_judge_lm({"7": "yes"}), "is a digit", field="answer")
    metric = validated(contains, [judge, Length("answer", max_chars=9)])
    metric(_ex(), Prediction("", {"answer": "7"}))
    metric(_ex(), Prediction("", None, "unparsed"))  # not judged
    assert metric.lm_calls == judge.lm_calls == 1


@pytest.mark.parametrize("args, words", [
    ((contains, []), "at least one validator"),
    ((contains, [Length("a")]), None),
    ((contains, ["not a validator"]), "not a validator"),
])
def test_validated_refuses_bad_arguments(args, words) -> None:  # type: ignore[no-untyped-def]
    if words is None:
        with pytest.raises(ConfigError, match="penalty"):
            validated(*args, penalty=-1)
        return
    with pytest.raises(ConfigError, match=words):
        validated(*args)


def _spec_metric():  # type: ignore[no-untyped-def]
    return validated(exact_match, [Regex("answer", r"^\d+$"), JSONSchema("answer", {}),
                                   Check(str.isdigit, name="digits", message="m"),
                                   LMJudge(ScriptedLM({}, model_id="judge-lm"), "ok")])


def test_validated_name_is_stable_and_says_what_it_checks() -> None:
    name = name_of(_spec_metric())
    assert name == name_of(_spec_metric())
    assert "0x" not in name and "evo.metrics.exact_match" in name
    assert "[regex, json, digits, judge]" in name
    other = validated(exact_match, [Regex("answer", r"^\d*$")])
    assert name_of(other) != name_of(validated(exact_match, [Regex("answer", r"^\d+$")]))
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_validators import _spec_metric; from evo.runs.runner import name_of; "
            "print(name_of(_spec_metric()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == name


# ---- a validated metric inside a real search -------------------------------------------------
def _verbose_respond(req: LMRequest) -> str:
    """A model that answers right, but wordily unless told to be brief; reflection tells it."""
    if req.purpose == "reflection":
        return "- Answer briefly: the label word alone."
    if req.purpose != "task":
        return "<prompt>Answer briefly: the label word alone.</prompt>"
    label = "pos" if "good" in req.messages[-1].content else "neg"
    if "briefly" in req.messages[0].content:
        return f"answer: {label}"
    return f"answer: the sentiment of this text is {label}"


def _sentiment(i: int) -> Example:
    word, label = ("good", "pos") if i % 2 == 0 else ("bad", "neg")
    return Example(inputs={"text": f"item {i} is {word} stuff"}, outputs={"answer": label})


def test_validated_metric_drives_a_search(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from evo.optimizers.evolution import Evolution
    from evo.runs.runner import run
    from evo.search.evaluate import Budget

    def metric():  # type: ignore[no-untyped-def]
        return validated(contains, [Length("answer", max_chars=5)])

    train = [_sentiment(i) for i in range(12)]
    val = [_sentiment(i) for i in range(100, 108)]
    optimizer = Evolution(budget=Budget(metric_calls=60), knn=False, encoder="hashing")
    result = run(Program(signature="text -> answer"), train, val,
                 lm=ScriptedLM(_verbose_respond), optimizer=optimizer, metric=metric(),
                 cache=False, run_dir=tmp_path / "run")
    cells = list(result.matrix.cells.values())
    wordy = [c for c in cells if c.prediction.outputs and len(c.prediction.outputs["answer"]) > 5]
    brief = [c for c in cells if c.prediction.outputs and len(c.prediction.outputs["answer"]) <= 5]
    assert wordy and brief
    assert all("validator 'length': answer is" in c.feedback and "more than the 5 allowed"
               in c.feedback for c in wordy)
    assert all("validator" not in c.feedback for c in brief)
    assert max(c.score for c in wordy) < min(c.score for c in brief)
    assert result.baseline_val == 0.0 and result.best_val == 1.0
    spec = json.loads((tmp_path / "run" / "run.json").read_text())["spec"]
    assert spec["metric"] == name_of(metric())
    # a fresh metric of the same config reads as the same run: it resumes, nothing re-asked
    again = ScriptedLM(_verbose_respond)
    run(Program(signature="text -> answer"), train, val, lm=again, optimizer=optimizer,
        metric=metric(), cache=False, run_dir=tmp_path / "run")
    assert [r.purpose for r in again.calls] == ["preflight"]


# ---- refine ----------------------------------------------------------------------------------
def _program() -> Program:
    return Program(signature="question -> answer", instruction="Answer the question.")


def _refine_lm(fixed_after: int) -> ScriptedLM:
    """Replies in words until the prompt carries ``fixed_after`` pieces of advice."""
    def respond(req: LMRequest) -> str:
        advice = req.messages[0].content.count("An earlier answer to this input failed")
        return "answer: 42" if advice >= fixed_after else "answer: forty-two"
    return ScriptedLM(respond)


def test_refine_retries_with_advice_and_stops_at_the_first_pass() -> None:
    lm = _refine_lm(1)
    program = _program()
    got = refine(program, Example(inputs={"question": "6 x 7?"}, outputs={"answer": "42"}),
                 LMSession(lm), [Regex("answer", r"^\d+$", name="digits")], retries=3)
    assert isinstance(got, Refined)
    assert got.prediction.outputs == {"answer": "42"} and got.passed
    assert got.attempts == 2 and len(lm.calls) == 2
    assert got.failures[0] == [("digits", "answer 'forty-two' does not match the pattern "
                                          "'^\\\\d+$'")]
    assert got.failures[1] == []
    second = lm.calls[1].messages[0].content
    assert second.startswith("Answer the question.")
    assert "validator 'digits': answer 'forty-two' does not match" in second
    assert "answer: forty-two" in second  # the earlier answer
    assert program.instruction == "Answer the question."  # the given program is unchanged


def test_refine_is_bounded_and_returns_the_last_attempt() -> None:
    lm = _refine_lm(99)
    got = refine(_program(), Example(inputs={"question": "6 x 7?"}, outputs={"answer": "42"}),
                 LMSession(lm), [Regex("answer", r"^\d+$")], retries=2)
    assert got.attempts == 3 and len(lm.calls) == 3 and not got.passed
    assert got.prediction.outputs == {"answer": "forty-two"}
    assert all(f and f[0][0] == "regex" for f in got.failures)
    # each retry advises on the previous answer only: the prompt does not grow with attempts
    assert lm.calls[2].messages[0].content == lm.calls[1].messages[0].content
    with pytest.raises(ConfigError, match="retries"):
        refine(_program(), _ex(), LMSession(lm), [], retries=-1)


def test_refine_with_no_retries_asks_once() -> None:
    lm = _refine_lm(1)
    got = refine(_program(), _ex(), LMSession(lm), [Regex("answer", r"^\d+$")], retries=0)
    assert got.attempts == 1 and len(lm.calls) == 1 and not got.passed


def test_refine_returns_an_lm_failure_as_a_prediction() -> None:
    lm = ScriptedLM({}, errors=lambda r: LMRequestError("prompt too long"))
    got = refine(_program(), _ex(), LMSession(lm, retries=0), [Regex("answer", "x")])
    assert got.prediction.outputs is None and "prompt too long" in (got.prediction.error or "")
    assert got.attempts == 1 and got.failures[0][0][0] == "lm" and not got.passed


def test_refine_retries_an_unparsable_reply() -> None:
    lm = ScriptedLM(lambda r: "answer: 42\nunit: none" if "An earlier answer"
                    in r.messages[0].content else "I think so")
    got = refine(Program(signature="question -> answer, unit"), _ex(), LMSession(lm),
                 [Regex("answer", r"^\d+$")])
    assert got.attempts == 2 and got.passed
    assert got.failures[0][0][0] == "format" and "no 'answer:' line" in got.failures[0][0][1]
    assert "I think so" in lm.calls[1].messages[0].content


def test_a_judge_on_the_runs_session_is_journaled_and_replayed_on_resume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from evo.optimizers.evolution import Evolution
    from evo.runs.runner import run
    from evo.search.evaluate import Budget

    def respond(req: LMRequest) -> str:
        if req.purpose == "judge":
            return "no" if "sentiment of" in req.messages[-1].content else "yes"
        return _verbose_respond(req)

    train = [_sentiment(i) for i in range(12)]
    val = [_sentiment(i) for i in range(100, 108)]
    sittings = []
    for _ in range(2):
        lm = ScriptedLM(respond)
        session = LMSession(lm)
        metric = validated(contains, [LMJudge(session, "is one word", field="answer")])
        result = run(Program(signature="text -> answer"), train, val, lm=session,
                     optimizer=Evolution(budget=Budget(metric_calls=60), knn=False,
                                         encoder="hashing"),
                     metric=metric, cache=False, run_dir=tmp_path / "run")
        sittings.append((result.baseline_val, result.best_val, metric.lm_calls,
                         [r.purpose for r in lm.calls]))
    (base, best, judged, calls), (base2, best2, judged2, calls2) = sittings
    assert (base, best) == (base2, best2) == (0.0, 1.0)  # the judge's "no" cost the wordy ones
    assert judged == judged2 > 0 and "judge" in calls
    assert calls2 == ["preflight"]  # every judge answer replayed from the run's journal
