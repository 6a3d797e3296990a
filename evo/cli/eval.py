"""``evo eval``: score a saved program on a split."""

from __future__ import annotations

import argparse

import evo
from evo.api import evaluation
from evo.cli.common import (
    add_concurrency_args,
    add_data_args,
    add_lm_args,
    cache,
    lm_call,
    load_task,
    split,
)
from evo.errors import RunFailedError


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="score a saved program on a split")
    ev.add_argument("program", help="program JSON written by `evo run`")
    add_data_args(ev)
    add_lm_args(ev)
    add_concurrency_args(ev)
    ev.add_argument("--split", choices=["train", "val", "test"], default="test")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    program = evo.load_program(args.program)
    task = load_task(args)
    call = lm_call(args)
    try:
        result = evaluation(program, split(task, args.split), cache=cache(args), **call)
    finally:
        if "executor" in call:
            call["executor"].shutdown()
    print(f"{args.program}: {task.name} {args.split} {result}")
    if result.meaningless:
        raise RunFailedError("most cells failed: the accuracy says nothing about the program")
    return 0
