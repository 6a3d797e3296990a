"""Your own data (JSONL) and your own metric with feedback text for reflective mutation.

    python examples/custom_metric.py        # ~15 s once the model is cached

The twelve reviews are easy (the 0.5B model already gets the validation half right zero-shot):
the point is the API. Swap in your own file and labels.
"""

import json
import tempfile
from pathlib import Path

import evo

rows = [
    {"review": "An absolute joy from start to finish.", "sentiment": "positive"},
    {"review": "Two hours of my life I will never get back.", "sentiment": "negative"},
    {"review": "The cast is wonderful and the script is sharp.", "sentiment": "positive"},
    {"review": "Dull, predictable and far too long.", "sentiment": "negative"},
    {"review": "I laughed, I cried, I want to see it again.", "sentiment": "positive"},
    {"review": "The plot makes no sense at all.", "sentiment": "negative"},
    {"review": "A gorgeous film with a big heart.", "sentiment": "positive"},
    {"review": "Even the actors look bored.", "sentiment": "negative"},
    {"review": "Smart, funny and moving.", "sentiment": "positive"},
    {"review": "A mess of clichés.", "sentiment": "negative"},
    {"review": "One of the best films of the year.", "sentiment": "positive"},
    {"review": "I walked out halfway through.", "sentiment": "negative"},
]
path = Path(tempfile.mkdtemp()) / "reviews.jsonl"
path.write_text("\n".join(json.dumps(r) for r in rows))

data = evo.datasets.load_jsonl(path, inputs=["review"], outputs=["sentiment"],
                               labels=["positive", "negative"])
train, val = data.split([6, 6], seed=0)


def metric(example: evo.Example, prediction: evo.Prediction) -> tuple[float, str]:
    """Score + feedback: the feedback is what the reflection LM reads."""
    if not prediction.ok:
        return 0.0, f"Unusable reply ({prediction.error}); answer with the label only."
    gold, said = example.outputs["sentiment"], prediction.outputs["sentiment"]
    return float(gold == said), f"Expected {gold}, got {said}."


program = evo.Program(signature="review -> sentiment", labels=["positive", "negative"])
result = evo.optimize(program, train, val, lm=evo.lm.local(), metric=metric,
                      optimizer=evo.Evolution(budget=evo.Budget(metric_calls=40), max_demos=2),
                      progress=True)
print(f"validation: {result.baseline_val:.2f} -> {result.best_val:.2f}, "
      f"{result.usage.calls} paid LM calls")
