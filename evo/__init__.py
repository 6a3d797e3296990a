"""evo: evolutionary prompt search.

>>> import evo
>>> task = evo.datasets.load("trec")                                    # doctest: +SKIP
>>> program = evo.Program(signature=task.signature, labels=task.labels) # doctest: +SKIP
>>> result = evo.optimize(program, task.train, task.val, lm=evo.lm.local(),  # doctest: +SKIP
...                       optimizer=evo.Evolution(budget=evo.Budget(metric_calls=300)))
>>> print(result.report(task.test))                                     # doctest: +SKIP
"""

from evo import agents, datasets, lm, optimizers
from evo.agents import Agent, optimized
from evo.agents import triggers as triggers
from evo.analysis.compare import Comparison, compare
from evo.analysis.projection import Projection, project
from evo.analysis.report import write_report
from evo.api import Report, Result, aevaluate, aoptimize, evaluate, optimize
from evo.data import DataError, Dataset, Example, Task
from evo.errors import (
    ConfigError,
    DamagedFileError,
    EvoError,
    RunFailedError,
    StorageError,
    UnsafeRunDirError,
)
from evo.metrics import (
    Score,
    TokenMetric,
    contains,
    exact_match,
    f1,
    normalized_exact_match,
    numeric_match,
)
from evo.optimizers import (
    COPRO,
    DE,
    GA,
    GEPA,
    SIMBA,
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    Ensemble,
    EvoPrompt,
    InferRules,
    KNNFewShot,
    LabeledFewShot,
    MIPROv2,
    register_operator,
    register_optimizer,
)
from evo.optimizers.evolution import Evolution
from evo.program import Prediction, Program, Signature
from evo.program.ensemble import EnsembleProgram, load_program
from evo.runs import events
from evo.runs.events import (
    Callback,
    CandidateStore,
    JSONLLog,
    MLflowLogger,
    ProgressBar,
)
from evo.runs.store import RunMismatchError, RunStore
from evo.search.engine import Search, SearchConfig
from evo.search.evaluate import Budget, ScoreMatrix

__version__ = "0.1.0"

# The DSPy bridge and the Ray executor are bound on first use: ``import evo`` imports neither
# dspy nor ray.
_DSPY = {"optimize_module", "ModuleResult", "to_dspy", "ModuleAgent"}


def __getattr__(name: str):
    if name in _DSPY:
        from evo.integrations import (
            dspy as bridge,  # deferred: imports the dspy bridge on use
        )

        return getattr(bridge, name)
    if name == "RayExecutor":
        from evo.integrations.ray import (
            RayExecutor,  # deferred: heavy optional dependency (ray), imported on use
        )

        return RayExecutor
    raise AttributeError(f"module 'evo' has no attribute {name!r}")


__all__ = ["COPRO", "DE", "GA", "GEPA", "SIMBA", "Agent", "BootstrapFewShot",
           "BootstrapFewShotWithRandomSearch",
           "Budget", "Callback", "CandidateStore", "Comparison", "ConfigError", "DamagedFileError",
           "DataError", "EvoError", "RunFailedError", "StorageError", "UnsafeRunDirError",
           "JSONLLog", "MLflowLogger", "ProgressBar", "Projection", "RunMismatchError", "RunStore",
           "Dataset", "Ensemble", "EnsembleProgram", "EvoPrompt", "Evolution", "Example",
           "InferRules", "KNNFewShot", "LabeledFewShot", "MIPROv2", "ModuleResult", "Prediction",
           "Program",
           "RayExecutor", "Report", "Result", "Score", "ScoreMatrix", "Search", "SearchConfig",
           "Signature",
           "Task", "TokenMetric", "aevaluate", "agents", "optimized", "triggers", "aoptimize",
           "compare", "contains", "datasets",
           "events", "evaluate",
           "exact_match", "f1", "lm", "load_program", "normalized_exact_match", "numeric_match",
           "optimize", "optimize_module", "optimizers", "project", "to_dspy", "register_operator",
           "write_report", "register_optimizer"]
