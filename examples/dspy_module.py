"""Optimize a two-predictor dspy.Module with evo, then load the result back into DSPy.

    python examples/dspy_module.py                 # the embedded 0.5B model, no key, no GPU
    python examples/dspy_module.py --budget 60 --model qwen2.5-coder-1.5b

The module is a ChainOfThought classifier followed by a verifier that reads the draft label and
gives the final one. evo searches both predictors' instructions and demos (bootstrapped from
runs of the module itself), the result is saved with DSPy's own ``save`` and loaded into a fresh
module, which must answer exactly as the optimized one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Literal

import dspy

import evo
from evo.lm import make_lm
from evo_bench import to_dspy_examples


class Classify(dspy.Signature):
    """Classify the sentiment of a movie review snippet."""

    review: str = dspy.InputField()
    label: Literal["positive", "negative"] = dspy.OutputField()


class Verify(dspy.Signature):
    """Check the proposed sentiment of a movie review snippet and give the final label."""

    review: str = dspy.InputField()
    proposed: str = dspy.InputField(desc="a first guess, possibly wrong")
    label: Literal["positive", "negative"] = dspy.OutputField()


class ClassifyThenVerify(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.ChainOfThought(Classify)
        self.verify = dspy.Predict(Verify)

    def forward(self, review: str) -> dspy.Prediction:
        draft = self.classify(review=review)
        return self.verify(review=review, proposed=draft.label)


def metric(gold: dspy.Example, pred: dspy.Prediction, trace=None) -> bool:
    return gold.label == pred.label


def accuracy(module: dspy.Module, examples: list[dspy.Example], lm: dspy.LM) -> tuple[float, list]:
    answers, right = [], 0
    with dspy.context(lm=lm):
        for ex in examples:
            try:
                answers.append(module(review=ex.review).label)
            except Exception as exc:  # noqa: BLE001 - an unparseable reply counts as wrong
                answers.append(f"error: {type(exc).__name__}")
            right += answers[-1] == ex.label
    return right / len(examples), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--budget", type=int, default=40, help="metric calls (module runs)")
    parser.add_argument("--optimizer", default=None, help="any evo optimizer (default: evolution)")
    parser.add_argument("--run-dir", default=None, help="a run store: rerun to resume a killed run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-val", type=int, default=12)
    parser.add_argument("--n-test", type=int, default=40)
    args = parser.parse_args()

    task = evo.datasets.load("rotten_tomatoes", seed=args.seed, n_train=30, n_val=args.n_val,
                             n_test=args.n_test)
    train, val, test = (to_dspy_examples(s) for s in (task.train, task.val, task.test))
    session = evo.lm.session_for(make_lm(args.model))  # one cache and ledger for everything
    lm = evo.to_dspy(session, max_tokens=256)

    before, _ = accuracy(ClassifyThenVerify(), test, lm)
    result = evo.optimize_module(ClassifyThenVerify(), train, val, metric, lm=session,
                                 budget=args.budget, seed=args.seed, description=task.description,
                                 optimizer=args.optimizer, run_dir=args.run_dir, log=print)
    print(result.summary())
    for name, predictor in result.program.named_predictors():
        print(f"\n[{name}] {len(predictor.demos)} demos; instruction:\n"
              f"{predictor.signature.instructions}")

    path = Path(tempfile.mkdtemp()) / "classify_then_verify.json"
    result.program.save(str(path))
    loaded = ClassifyThenVerify()
    loaded.load(str(path))
    after, answers = accuracy(result.program, test, lm)
    reloaded, answers_loaded = accuracy(loaded, test, lm)
    assert answers == answers_loaded, "the reloaded module answers differently"
    print(f"\nheld-out accuracy ({len(test)} reviews): {before:.3f} before, {after:.3f} after; "
          f"saved to {path} and reloaded into a fresh module: {reloaded:.3f}, same answers")


if __name__ == "__main__":
    main()
