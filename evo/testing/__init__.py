"""Test helpers for users who extend evo: a scripted task that runs in milliseconds and needs no
model, and (:mod:`evo.testing.conformance`) the checks every optimizer must pass.

Two scripted tasks, each a :class:`ScriptedTask` (examples, a program, and a deterministic
``respond(request) -> str`` for :class:`evo.lm.ScriptedLM` whose accuracy depends on the prompt,
so a search can improve):

- :data:`SENTIMENT` (also as the module-level ``LABELS``, ``make``, ``TRAIN``, ``VAL``, ``TEST``,
  ``respond`` and ``program``): "pos" / "neg" from "good" / "bad". The model answers right only
  with two or more demos or an instruction that says "says good"; the seed program scores 0.5.
- :data:`HASHED` (``hashed_respond``): three labels, and a skill that is a hash of the prompt, so
  every instruction and demo set scores differently and a search that takes another path anywhere
  ends elsewhere. The conformance suite runs on it.

>>> import evo, evo.testing as T
>>> result = evo.optimize(T.program(), T.TRAIN, T.VAL, lm=evo.lm.ScriptedLM(T.respond),
...                       optimizer=evo.Evolution(budget=evo.Budget(metric_calls=120),
...                                               knn=False, encoder="hashing"),
...                       cache=False)
>>> result.baseline_val, result.best_val
(0.5, 1.0)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evo.agents.agent import Agent, Reply
from evo.agents.triggers import every
from evo.data import Example
from evo.lm import ScriptedLM
from evo.lm.base import LMRequest
from evo.optimizers.evolution import Evolution
from evo.program import Program

__all__ = ["HASHED", "LABELS", "SENTIMENT", "TEST", "TRAIN", "VAL", "ScriptedTask",
           "Killed", "assert_same_run", "dying_lm", "hashed_example", "hashed_respond", "make",
           "dspy_field", "program", "respond", "search_figures", "sentiment_agent", "serve"]


@dataclass(frozen=True)
class ScriptedTask:
    """A classification task with a scripted model: ``evo.optimize(task.program(), task.train,
    task.val, lm=task.lm())`` runs a whole search in milliseconds, the same every time."""

    signature: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    respond: Callable[[LMRequest], str]

    def program(self) -> Program:
        """The seed program (default instruction, no demos)."""
        return Program(signature=self.signature, labels=self.labels)

    def lm(self) -> ScriptedLM:
        """A fresh scripted model for this task (its ``calls`` record every request)."""
        return ScriptedLM(self.respond)


# ---- the sentiment task (the one tests/search/test_engine.py has always used) ---------------
LABELS = ("pos", "neg")


def make(i: int) -> Example:
    """Example ``i``: "item i is good stuff" (pos) for even ``i``, "... bad stuff" (neg) for odd."""
    label = LABELS[i % 2]
    word = "good" if label == "pos" else "bad"
    return Example(inputs={"text": f"item {i} is {word} stuff"}, outputs={"label": label})


TRAIN = [make(i) for i in range(40)]
VAL = [make(i) for i in range(100, 130)]
TEST = [make(i) for i in range(200, 240)]


def respond(req: LMRequest) -> str:
    """A 'model' that only gets the task right with >= 2 demos or a rule that mentions 'good'."""
    if req.purpose == "reflection":
        return "- Say pos when the text says good.\n- Say neg when the text says bad."
    last = req.messages[-1].content
    system = req.messages[0].content
    n_demos = (len(req.messages) - 2) // 2
    if n_demos >= 2 or ("says good" in system):
        return "label: " + ("pos" if "good" in last else "neg")
    return "label: neg"


def program() -> Program:
    """The sentiment task's seed program."""
    return Program(signature="text -> label", labels=LABELS)


SENTIMENT = ScriptedTask("text -> label", LABELS, tuple(TRAIN), tuple(VAL), tuple(TEST), respond)


# ---- the hashed task (benchmarks/replay.py's model, on fewer examples) ----------------------
_HASHED_LABELS = ("pos", "neg", "other")
_WORDS = {"pos": "good", "neg": "bad", "other": "odd"}


def hashed_example(i: int) -> Example:
    """The i-th example of the hashed task: three labels, each named by one adjective."""
    label = _HASHED_LABELS[(i * 7) % 3]
    return Example(inputs={"text": f"item {i} is {_WORDS[label]} stuff number {i % 11}"},
                   outputs={"label": label})


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def hashed_respond(req: LMRequest) -> str:
    """A model whose skill is a hash of the prompt: some instructions and demo sets are better.
    Reflection and proposal requests get a different (hashed) rule or instruction each time."""
    text = "\n".join(f"{m.role}:{m.content}" for m in req.messages)
    h = _h(req.purpose, text)
    if req.purpose == "reflection":
        return f"- Rule {h % 97}: read the adjective.\n- Rule {h % 89}: answer with one label."
    if req.purpose != "task":
        return f"<prompt>Classify the text by its adjective (variant {h % 1009}).</prompt>"
    prompt = "\n".join(m.content for m in req.messages[:-1])
    skill = 0.25 + 0.7 * (_h("skill", prompt) % 1000) / 1000
    last = req.messages[-1].content
    gold = next((lab for lab, w in _WORDS.items() if re.search(rf"\b{w}\b", last)), "pos")
    if (h % 1000) / 1000 < skill:
        return f"label: {gold}"
    return f"label: {_HASHED_LABELS[(_HASHED_LABELS.index(gold) + 1 + h % 2) % 3]}"


# 8 validation examples: a budget of 60 metric calls validates the seed and several candidates.
HASHED = ScriptedTask("text -> label", _HASHED_LABELS,
                      tuple(hashed_example(i) for i in range(24)),
                      tuple(hashed_example(i) for i in range(100, 108)),
                      tuple(hashed_example(i) for i in range(200, 224)), hashed_respond)


def search_figures(result) -> dict:  # type: ignore[no-untyped-def]
    """What two searches that took the same decisions share, as plain data to compare with
    ``==``: the best program and scores, the metric calls and stop reason, every candidate
    (genome, operator, score), the instructions, the paid calls per purpose, the event kinds in
    order, the failed cells and the whole score matrix (NaN as -1)."""
    return {
        "best": json.dumps(result.best.to_json(), sort_keys=True),
        "best_val": result.best_val, "baseline_val": result.baseline_val,
        "metric_calls": result.metric_calls, "stop_reason": str(result.stop_reason),
        "candidates": [(json.dumps(c.genome, default=str, sort_keys=True), c.op, c.val_score)
                       for c in result.candidates],
        "instructions": list(result.instructions),
        "usage.calls": result.usage.calls, "by_purpose": dict(result.usage.by_purpose),
        "events": [e.get("event") for e in result.events],
        "cell_errors": sum(c.error is not None for c in result.matrix.cells.values()),
        "scores": np.nan_to_num(result.matrix.scores, nan=-1.0).tolist(),
    }


def assert_same_run(a: str | Path, b: str | Path) -> None:
    """Assert that run directories ``a`` and ``b`` hold the same run: the same best program,
    instructions, candidates (lineage included), score matrix and cell errors, the same summary
    figures, and the same sequence of event kinds (what a resumed run must reproduce of an
    uninterrupted one; wall times and sittings may differ)."""
    a, b = Path(a), Path(b)
    assert (a / "best.json").read_text() == (b / "best.json").read_text(), "best.json differs"
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    for key in ("instructions", "candidates", "scores", "val_example_ids", "cell_errors"):
        assert ra.get(key) == rb.get(key), f"result.json: {key} differs"
    for key in ("best_val", "baseline_val", "metric_calls", "stop_reason"):
        assert ra["summary"][key] == rb["summary"][key], f"result.json: summary.{key} differs"
    kinds = [[json.loads(line)["event"] for line in (d / "events.jsonl").read_text().splitlines()]
             for d in (a, b)]
    assert kinds[0] == kinds[1], "events.jsonl: the event kinds differ"


class Killed(BaseException):
    """Stands in for a kill inside an LM call (a BaseException: nothing in evo catches it)."""


def dying_lm(respond: Callable[[LMRequest], str], n: int,
             then: Callable[[], None] | None = None) -> ScriptedLM:
    """A scripted LM that answers with ``respond`` and, on its ``n``-th call, runs ``then()``
    (if given) and raises :class:`Killed`: a process killed in the middle of a run."""

    def answer(req: LMRequest) -> str:
        if len(lm.calls) >= n:
            if then is not None:
                then()
            raise Killed(f"killed on LM call {n}")
        return respond(req)

    lm = ScriptedLM(answer)
    return lm


# ---- agents on the sentiment task ---------------------------------------------------------

def sentiment_agent(home: str | Path, lm: object = None, **kw: object) -> Agent:
    """The sentiment task as an :class:`evo.Agent` in ``home`` (its own folder), fast to
    optimize: a scripted model (:func:`respond` unless ``lm`` is given), no KNN or MiniLM,
    ``every(60)``, budget 120, jobs run where :meth:`~evo.agents.manager.OptimizationManager.
    run_pending` is called (``background=False``). Keyword arguments override any of these."""
    kw.setdefault("trigger", every(60))
    kw.setdefault("background", False)
    kw.setdefault("optimizer", Evolution(knn=False, encoder="hashing"))
    kw.setdefault("budget", 120)
    kw.setdefault("cache", False)
    return Agent("sentiment", "text -> label", labels=LABELS,
                 lm=lm or ScriptedLM(respond), home=Path(home), **kw)  # type: ignore[arg-type]


def serve(agent: Agent, examples: list[Example] | tuple[Example, ...], *,
          grade: bool = True) -> list[Reply]:
    """Serve ``examples`` one by one and, with ``grade``, grade each call at once with its gold
    outputs (score 1.0 when the reply was right)."""
    replies = []
    for ex in examples:
        reply = agent(**ex.inputs)
        replies.append(reply)
        if grade:
            agent.feedback(reply.call_id, float(reply.outputs == ex.outputs),
                           expected=ex.outputs)
    return replies


def dspy_field(text: str, name: str) -> str | None:
    """The value of field ``name`` in a prompt or reply in DSPy's ChatAdapter format
    (``[[ ## name ## ]]`` then its text), for scripted models that answer DSPy programs."""
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|\Z)", text, re.DOTALL)
    return m.group(1).strip() if m else None
