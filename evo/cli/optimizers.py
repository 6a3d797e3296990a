"""``evo optimizers``: list the optimizers and their parameters (what ``--set`` takes)."""

from __future__ import annotations

import argparse

import evo
from evo.cli.common import optimizer_params


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("optimizers", help="list optimizers and their parameters").set_defaults(
        func=cmd_optimizers)


def _default(cls, key):
    f = cls.model_fields[key]
    return f.default_factory() if f.default_factory else f.default


def _show(cls, key) -> str:
    f = cls.model_fields[key]
    return f"    {key} = {_default(cls, key)!r}" + (f"  # {f.description}"
                                                    if f.description else "")


def cmd_optimizers(args: argparse.Namespace) -> int:
    shared = evo.SearchConfig
    print("every optimizer (--set NAME=VALUE; budget is --budget):")
    for key in optimizer_params(shared):
        print(_show(shared, key))
    for name in evo.optimizers.names():
        cls = evo.optimizers.optimizer_class(name)
        doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        print(f"\n{name} ({cls.__name__}): {doc}.")
        for key in optimizer_params(cls):
            if key not in shared.model_fields or _default(cls, key) != _default(shared, key):
                print(_show(cls, key))
    return 0
