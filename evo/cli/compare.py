"""``evo compare``: A/B of two saved programs on the same examples (paired bootstrap CI and a
permutation-test p-value); from a run directory, the run's own data, splits and model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evo._io import write_json
from evo.analysis.compare import compare
from evo.cli.common import add_data_args, add_lm_args, cache, lm, load_task, split
from evo.cli.run import take_recorded
from evo.errors import ConfigError, RunFailedError
from evo.lm import DEFAULT_MODEL
from evo.runs.store import RUN_FILE, RunMismatchError, data_digest, read_run_file, run_cli


def register(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("compare", help="A/B: two saved programs on the same examples, with a "
                        "paired bootstrap CI and a permutation-test p-value")
    cp.add_argument("a", help="program A (JSON written by `evo run`, e.g. RUN/baseline.json)")
    cp.add_argument("b", help="program B (e.g. RUN/best.json)")
    add_data_args(cp)
    add_lm_args(cp)
    cp.add_argument("--split", choices=["train", "val", "test"], default="test",
                    help="which split (`--data test` says the same when no file is named so)")
    cp.add_argument("--out", help="write the comparison (with per-example scores) as JSON")
    cp.set_defaults(func=cmd_compare)


def _from_run(args: argparse.Namespace) -> tuple[Path, dict]:
    """Take the data, splits and model from the run directory of program A or B; returns its
    run file and the run's spec."""
    for program in (args.a, args.b):
        run_file = Path(program).parent / RUN_FILE
        cli = run_cli(run_file.parent)
        if cli:
            # (budget too: `evo run`'s default validation size follows it, and the test
            # split depends on every split size)
            take_recorded(args, cli, run_file, ("task", "data", "inputs", "outputs", "labels",
                                                "n_train", "n_val", "n_test", "seed", "budget"))
            if args.model == DEFAULT_MODEL and cli.get("model"):
                take_recorded(args, cli, run_file, ("model",))
            if not args.api_base:  # where the run's model was served
                take_recorded(args, cli, run_file, ("api_base",))
            spec = read_run_file(run_file)["spec"]
            print(f"evo: data, splits and model from {run_file}", file=sys.stderr)
            return run_file, spec
    raise ConfigError("name the data (--task NAME or --data FILE), or compare programs "
                      "saved in an `evo run` directory (its run.json says which data)")


def cmd_compare(args: argparse.Namespace) -> int:
    if args.data in ("train", "val", "test") and not Path(args.data).exists():
        args.split, args.data = args.data, None  # `--data test`: the split, not a file
    spec = None
    if not args.task and not args.data:
        # Programs from a run directory: its run.json says which data, splits, seed and model.
        run_file, spec = _from_run(args)
    task = load_task(args)
    if spec is not None:  # the run's own splits, or its test split is not this one
        changed = [name for name, part in (("trainset", task.train), ("valset", task.val))
                   if spec.get(name) not in (None, data_digest(part))]
        if changed:
            raise RunMismatchError(f"{run_file}: the data has changed since the run (its "
                                   f"{' and '.join(changed)} differ), so this test split is not "
                                   "the run's: name the data and splits to compare on")
    result = compare(args.a, args.b, split(task, args.split), lm=lm(args), cache=cache(args),
                     seed=args.seed)
    print(f"{task.name} {args.split} split\n{result}")
    if args.out:
        write_json(args.out, {**result.to_dict(), "task": task.name, "split": args.split,
                              "model": args.model})
        print(f"saved: {args.out}")
    if result.meaningless:
        raise RunFailedError("most cells of a program failed: the comparison says nothing "
                             "about the prompts")
    return 0
