"""Optimize a TREC question-type classifier on the embedded local model (no key, no GPU).

    python examples/quickstart.py            # ~10 min on 2 CPU cores the first time
"""

import evo

task = evo.datasets.load("trec", seed=0, n_train=200, n_val=50, n_test=200)
program = evo.Program(signature=task.signature, labels=task.labels)   # "question -> label"
lm = evo.lm.local("qwen2.5-coder-0.5b")                               # fetched once, sha256-checked

result = evo.optimize(
    program, task.train, task.val, lm=lm,
    optimizer=evo.Evolution(budget=evo.Budget(metric_calls=300), max_demos=4),
    seed=0, description=task.description, run_dir="runs/quickstart", progress=True)

print(result.report(task.test, progress=True))
print("\nbest instruction:\n" + result.best.instruction)
result.best.save("runs/quickstart/trec.json")

# The saved program reloads and runs anywhere:
again = evo.Program.load("runs/quickstart/trec.json")
print("reloaded test accuracy:", evo.evaluate(again, task.test, lm=lm))   # served from the cache
