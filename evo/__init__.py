"""evo: evolutionary prompt search.

>>> import evo
>>> task = evo.datasets.load("trec")                                    # doctest: +SKIP
>>> program = evo.Program(signature=task.signature, labels=task.labels) # doctest: +SKIP
>>> result = evo.optimize(program, task.train, task.val, lm=evo.lm.local(),
...                       optimizer=evo.Evolution(budget=evo.Budget(metric_calls=300)))  # doctest: +SKIP
>>> print(result.report(task.test))                                     # doctest: +SKIP
"""

from evo import datasets, events, lm, optimizers
from evo.api import Report, Result, evaluate, optimize
from evo.compare import Comparison, compare
from evo.data import DataError, Dataset, Example, Task
from evo.dspy_module import ModuleResult, optimize_module
from evo.engine import Evolution, Search, SearchConfig
from evo.errors import (ConfigError, DamagedFileError, EvoError, RunFailedError, StorageError,
                        UnsafeRunDirError)
from evo.ensemble import EnsembleProgram, load_program
from evo.events import Callback, CandidateStore, JSONLLog, MLflowLogger, ProgressBar
from evo.evaluate import Budget, ScoreMatrix
from evo.metrics import (Score, TokenMetric, contains, exact_match, f1, normalized_exact_match,
                         numeric_match)
from evo.optimizers import (COPRO, DE, GA, GEPA, BootstrapFewShot,
                            BootstrapFewShotWithRandomSearch, Ensemble, EvoPrompt, KNNFewShot,
                            LabeledFewShot, MIPROv2, register_operator, register_optimizer)
from evo.program import Prediction, Program, Signature
from evo.projection import Projection, project
from evo.report import write_report
from evo.store import RunMismatchError, RunStore

__version__ = "0.1.0"

__all__ = ["COPRO", "DE", "GA", "GEPA", "BootstrapFewShot", "BootstrapFewShotWithRandomSearch",
           "Budget", "Callback", "CandidateStore", "Comparison", "ConfigError", "DamagedFileError",
           "DataError", "EvoError", "RunFailedError", "StorageError", "UnsafeRunDirError", "JSONLLog",
           "MLflowLogger", "ProgressBar", "Projection", "RunMismatchError", "RunStore", "Dataset", "Ensemble", "EnsembleProgram", "EvoPrompt",
           "Evolution", "Example", "KNNFewShot", "LabeledFewShot", "MIPROv2", "ModuleResult", "Prediction",
           "Program", "Report", "Result", "Score", "ScoreMatrix", "Search", "SearchConfig",
           "Signature", "Task", "TokenMetric", "compare", "contains", "datasets", "events", "evaluate", "exact_match",
           "f1", "lm", "load_program", "normalized_exact_match", "numeric_match", "optimize", "optimize_module",
           "optimizers", "project", "register_operator", "write_report", "register_optimizer"]
