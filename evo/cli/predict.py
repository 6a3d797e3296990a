"""``evo predict``: run a saved program on one input."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

import evo
from evo.cli.common import add_lm_args, cache, lm
from evo.errors import ConfigError, config_error
from evo.lm import session_for
from evo.lm.base import LMError
from evo.search.engine import SearchConfig
from evo.search.evaluate import Cell, predict_program

# the reply length of a task call in a run (and in `evo eval`): predict answers as they do
MAX_TOKENS = SearchConfig.model_fields["max_tokens"].default


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="run a saved program on one input")
    pr.add_argument("program")
    pr.add_argument("--input", action="append", default=[], metavar="FIELD=TEXT", required=True)
    add_lm_args(pr)
    pr.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    bad = [pair for pair in args.input if "=" not in pair]
    if bad:
        raise ConfigError(f"--input {bad[0]!r}: write FIELD=TEXT, e.g. --input question='Who ...?'")
    program = evo.load_program(args.program)
    inputs = dict(pair.split("=", 1) for pair in args.input)
    try:
        example = evo.Example(inputs=inputs,
                              outputs={f.name: "?" for f in program.signature.outputs})
        program.check_example(example)
    except ValidationError as exc:
        raise config_error(exc, "--input") from None
    except ValueError as exc:  # a field the program reads is missing
        raise ConfigError(f"--input: {exc}") from None
    # The evaluator's own path (label scoring and its calibration, the reasoning reply length,
    # KNN demos, an ensemble's vote), at the reply length a run evaluates with: the answer is
    # the one `evo eval` scores.
    session = session_for(lm(args), cache(args))
    try:
        (reply,) = predict_program(program, [example], session, max_tokens=MAX_TOKENS)
    except LMError as exc:  # the LM is unreachable: nothing to predict from
        print(f"evo: {exc}", file=sys.stderr)
        return 2
    if isinstance(reply, Cell) and (reply.kind or "").startswith("lm"):
        # failed after its retries: nothing to predict from
        print(f"evo: {reply.prediction.error or reply.error}", file=sys.stderr)
        return 2
    prediction = reply.prediction if isinstance(reply, Cell) else reply
    if not prediction.ok:  # the program ran, its reply is no answer: exit 1, not a mistake (2)
        print(f"evo: the reply could not be parsed: {prediction.error}", file=sys.stderr)
        return 1
    print(json.dumps(prediction.outputs))
    return 0
