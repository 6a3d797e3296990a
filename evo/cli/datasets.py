"""``evo datasets``: list the public datasets."""

from __future__ import annotations

import argparse

from evo import datasets


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("datasets", help="list public datasets").set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    for name in datasets.names():
        print(name)
    return 0
