"""The ``evo`` command: ``evo run``, ``evo eval``, ``evo compare``, ``evo report``,
``evo predict``, ``evo agents``, ``evo jobs``, ``evo serve``, ``evo bench``,
``evo optimizers``, ``evo datasets``, ``evo models``.

One module per command (its flags, then a call into the library and what it prints); the flags
several commands share are in :mod:`evo.cli.common`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from evo.cli import (
    agents,
    bench,
    compare,
    datasets,
    models,
    optimizers,
    predict,
    report,
    run,
    serve,
)
from evo.cli import eval as evaluate
from evo.cli.common import build_optimizer, load_task
from evo.errors import EvoError

__all__ = ["build_optimizer", "build_parser", "load_task", "main"]

# In the order `evo --help` lists them.
COMMANDS = (run, evaluate, compare, report, predict, agents, serve, bench, optimizers,
            datasets, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description="Evolutionary prompt search.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """A warning as one line on stderr (``evo: ...``), without Python's file and source line."""
    text = " ".join(str(message).split())
    print(text if text.startswith("evo: ") else f"evo: warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``evo`` command. A user's mistake or an unusable LM or file (an :class:`EvoError`,
    or a path the system refuses) is one ``evo:`` line and exit status 2; anything else is a bug
    and keeps its traceback. ``EVO_DEBUG=1`` shows the traceback of the first kind too."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not os.environ.get("EVO_DEBUG"):
                warnings.showwarning = _show_warning
            return args.func(args)
    except (EvoError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, EvoError) and not exc.filename:
            raise  # an OSError that names no path is not the user's (a socket, a bug): show it
        if os.environ.get("EVO_DEBUG"):
            raise
        print(f"evo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (f"evo run --resume {args.out or args.resume}" if args.command == "run"
                and (args.out or args.resume) else "the same command")
        print(f"evo: interrupted; every paid LM call is kept: {hint} resumes",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
