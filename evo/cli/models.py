"""``evo models``: list the embedded local models."""

from __future__ import annotations

import argparse

from evo.lm.models import MODELS


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list embedded local models").set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    for name, spec in MODELS.items():
        print(f"{name}\t{getattr(spec, 'size', '')}")
    return 0
