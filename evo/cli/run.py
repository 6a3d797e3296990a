"""``evo run``: search for a better prompt, then report on held-out data (``--resume``,
``--dry-run``)."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from pydantic import ValidationError

import evo
from evo._io import write_json
from evo.analysis.projection import project
from evo.analysis.report import write_report
from evo.cli.common import (
    add_concurrency_args,
    add_data_args,
    add_lm_args,
    build_optimizer,
    cache,
    lm,
    lm_call,
    load_task,
    positive,
)
from evo.errors import ConfigError, DamagedFileError, EvoError, RunFailedError, config_error
from evo.lm.base import LMUnavailableError
from evo.lm.models import stronger_installed
from evo.runs.store import RUN_FILE, run_cli
from evo.search.evaluate import check_testset

# The `evo run` flags that define a run: kept in its run store, so `--resume RUN` needs no other.
# (--api-key is never written to disk: pass it again, or use the provider's variable.)
# --api-base says where the model is served, not which model: `--resume RUN --api-base URL`
# continues a run whose endpoint moved (its journal is keyed by the model, not the endpoint).
RUN_ARGS = ("task", "data", "inputs", "outputs", "labels", "n_train", "n_val", "n_test", "seed",
            "model", "api_base", "cache", "no_cache", "budget", "reflection_model", "optimizer",
            "set", "reflection_style", "max_demos", "population", "selection", "no_knn",
            "encoder")
SAME_MODEL = "same"  # --reflection-model same: reflect with the task model


def add_arguments(run: argparse.ArgumentParser) -> None:
    add_data_args(run)
    add_lm_args(run)
    add_concurrency_args(run)
    run.add_argument("--budget", type=positive(int), default=300,
                     help="metric calls for the search")
    run.add_argument("--reflection-model", metavar="MODEL",
                     help="the LM that writes instructions (reflection); 'same' for --model. "
                          "Default, for an embedded --model: the largest embedded model "
                          "already fetched and larger than it, else --model")
    run.add_argument("--optimizer", default="evolution",
                     help="evolution (default), gepa, miprov2, copro, labeled_fewshot, "
                          "bootstrap_fewshot, bootstrap_random_search, knn_fewshot, ensemble, "
                          "ga, de, or a registered name (see `evo optimizers`)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="an optimizer parameter, e.g. --set auto=medium --set breadth=4 "
                          "(VALUE is JSON, or a bare word)")
    run.add_argument("--reflection-style", choices=["rules", "rewrite"])
    run.add_argument("--max-demos", type=int, help="demo slots (optimizer default: 4)")
    run.add_argument("--population", type=int, help="validated candidates kept")
    run.add_argument("--selection", choices=["pareto", "tournament"],
                     help="parent selection (GEPA's instance-level Pareto front, or tournament)")
    run.add_argument("--no-knn", action="store_true",
                     help="no per-input nearest-neighbour demos")
    run.add_argument("--encoder", choices=["minilm", "hashing"],
                     help="embeddings for KNN demos and instruction dedupe (default minilm)")
    run.add_argument("--out", help="run directory (default runs/TASK-sSEED); a run already "
                     "there with the same settings is resumed")
    run.add_argument("--resume", metavar="RUN", help="continue the run in RUN (killed or "
                     "finished) with its own settings: no paid LM call is repeated")
    run.add_argument("--dry-run", action="store_true", help="print the projected LM calls and "
                     "tokens of this configuration, and stop before any LM call")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="search for a better prompt, then report on held-out data")
    add_arguments(run)
    run.set_defaults(func=cmd_run)


@functools.cache
def _flags() -> dict[str, argparse.Action]:
    """`evo run`'s flags by destination (what a run file's ``cli`` record is checked against)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return {a.dest: a for a in parser._actions}


def _defaults() -> dict:
    return {dest: action.default for dest, action in _flags().items()}


def take_recorded(args: argparse.Namespace, cli: dict, run_file: Path, keys: tuple[str, ...],
                  defaults: dict | None = None) -> None:
    """Set ``args.KEY`` for each of ``keys`` from the flags ``evo run`` recorded in
    ``run_file``; a value the flag could not have taken (a hand-edited file) is one
    :class:`DamagedFileError` naming the file and the field."""
    for key in keys:
        value = cli.get(key, (defaults or {}).get(key))
        if value is not None and not _valid_flag(_flags()[key], value):
            raise DamagedFileError(run_file, f"cli.{key}: {value!r} is not a value "
                                   f"--{key.replace('_', '-')} takes", hint="restore the file, "
                                   "or start the run again in a new folder")
        setattr(args, key, value)


def _valid_flag(action: argparse.Action, value: object) -> bool:
    """Whether ``value`` (read back from a run file) is one the flag ``action`` could have
    parsed: a hand-edited run.json must not reach the search with a wrong type."""
    if action.nargs == 0:  # store_true
        return isinstance(value, bool)
    if isinstance(action, argparse._AppendAction):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    kind = getattr(action.type, "__name__", "str") if action.type else "str"
    if not isinstance(value, {"str": str, "int": int, "float": int | float}.get(kind, str)):
        return False
    try:
        parsed = action.type(str(value)) if action.type else value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return not action.choices or parsed in action.choices


def _resume_args(args: argparse.Namespace) -> None:
    """Fill ``args`` from the run store ``args.resume`` (flags given as well are an error)."""
    run_file = Path(args.resume) / RUN_FILE
    if not (run_file.exists() or run_file.is_symlink()):  # a damaged one: run_cli says how
        raise ConfigError(f"{args.resume}: not a run directory (no {RUN_FILE})")
    cli = run_cli(args.resume)
    if not cli:
        raise ConfigError(f"{args.resume} was made from Python (evo.optimize or "
                          "evo.optimize_module): resume it by calling it again with the same "
                          "inputs and run_dir")
    defaults = _defaults()
    movable = {"api_base": args.api_base}
    given = [k for k in RUN_ARGS if getattr(args, k) != defaults.get(k) and k not in movable]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--resume takes the run's own settings from {run_file}; drop {flags}")
    take_recorded(args, cli, run_file, RUN_ARGS, defaults)
    for key, value in movable.items():
        if value is not None:
            setattr(args, key, value)
    args.out = args.resume


def _absolute_paths(args: argparse.Namespace) -> None:
    """Make the file flags absolute, so the run store's record of them (and `--resume`) works
    from any working directory."""
    for key in ("data", "cache"):
        value = getattr(args, key, None)
        if value:
            setattr(args, key, str(Path(value).expanduser().absolute()))


def _dry_run(args: argparse.Namespace, task, program, optimizer) -> int:
    count = getattr(lm(args), "count_tokens", None)
    if count is not None:
        try:
            count("probe")
        except Exception:  # noqa: BLE001 - no tokenizer here (llama-cpp missing): estimate
            count = None
    print(f"dry run: {task.name}, train {len(task.train)}, val {len(task.val)}, test "
          f"{len(task.test)}; model {args.model}; nothing is sent to the LM\n"
          + str(project(program, task.train, task.val, optimizer, count_tokens=count,
                        n_test=len(task.test))))
    return 0


def _eval_command(args: argparse.Namespace, task, out: Path) -> str:
    """The `evo eval` command that scores the best program on this run's own test split."""
    source = f"--task {args.task}" if args.task else (
        f"--data {args.data} --inputs {args.inputs} --outputs {args.outputs}"
        + (f" --labels {args.labels}" if args.labels else ""))
    # The same split arguments, or `evo eval` would cut a different test split.
    return (f"evo eval {out / 'best.json'} {source} --seed {args.seed} --n-train "
            f"{len(task.train)} --n-val {len(task.val)} --n-test {len(task.test)} "
            f"--model {args.model}"
            + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}"
                      for k in ("api_base", "timeout", "cache") if getattr(args, k))
            + (" --no-cache" if args.no_cache else ""))


def _shown(best) -> str:
    if isinstance(best, evo.EnsembleProgram):
        return f"a {best.vote} vote of {len(best.members)} programs"
    knn = f" + {best.knn.k} nearest per input" if best.knn else ""
    return f"instruction:\n{best.instruction}\ndemos: {len(best.demos)}{knn}"


def _default_reflection(args: argparse.Namespace, out: Path) -> str | None:
    """Settle ``args.reflection_model`` when ``--reflection-model`` was not given, and return
    the model it chose (None when it chose nothing new). A new run with an embedded ``--model``
    reflects with the strongest embedded model already fetched (:func:`stronger_installed`;
    a 0.5B model cannot write instructions, a 1.5B one sometimes can), never with a weaker
    one and never after a download. The choice is recorded with the run's flags, so
    ``--resume`` (and the same command again on its run store) repeats it: a run recorded
    without one keeps reflecting with its task model."""
    if args.reflection_model is not None or args.resume:
        return None
    if (out / RUN_FILE).is_file():  # the same command again, on its own run store
        try:
            cli = run_cli(out)
        except EvoError:  # a damaged store: the store reports it, in its own words
            cli = None
        if cli:
            take_recorded(args, cli, out / RUN_FILE, ("reflection_model",))
            return None
    args.reflection_model = stronger_installed(args.model)
    return args.reflection_model


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume RUN continues in RUN: drop --out")
        _resume_args(args)
    else:
        _absolute_paths(args)
    optimizer = build_optimizer(args)  # (a bad flag is found before any data is fetched)
    task = load_task(args)
    try:
        program = evo.Program(signature=task.signature, labels=task.labels)
    except ValidationError as exc:  # repeated fields or labels
        raise config_error(exc, f"{task.name}: the program's fields and labels") from None
    check_testset(program, task.test, what=f"{task.name} test split")  # before paying
    if args.dry_run:
        return _dry_run(args, task, program, optimizer)
    out = Path(args.out or f"runs/{task.name}-s{args.seed}")
    chosen = _default_reflection(args, out)
    model = lm_call(args)
    reflection = (None if args.reflection_model in (None, SAME_MODEL, args.model)
                  else lm(args, args.reflection_model))
    print(f"evo: {task.name}: train {len(task.train)}, val {len(task.val)}, "
          f"test {len(task.test)}; model {args.model}; optimizer {optimizer.name}; "
          f"budget {args.budget} metric calls; run store {out}"
          + (" (resuming)" if (out / "run.json").exists() else ""),
          file=sys.stderr)
    if chosen:
        print(f"evo: reflection: {chosen} (the strongest model installed; --reflection-model "
              "to choose, 'same' for --model)", file=sys.stderr)
    started = time.perf_counter()
    try:
        result = evo.optimize(program, task.train, task.val, optimizer=optimizer,
                              reflection_lm=reflection, seed=args.seed, cache=cache(args),
                              description=task.description, run_dir=out,
                              progress=not args.quiet, cli={k: getattr(args, k) for k in RUN_ARGS},
                              **model)
    except LMUnavailableError as exc:
        if args.resume and args.api_base and not args.api_key:
            raise LMUnavailableError(f"{exc} (an --api-key is never saved in the run: give it "
                                     "again with --resume, or set the provider's variable)"
                                     ) from exc
        raise
    if "executor" in model:  # the test pass runs in this process; the workers can go
        model["executor"].shutdown()
    report = result.report(task.test, progress=not args.quiet)
    print(f"\n{task.name} | {args.model} | seed {args.seed}\n{report}")
    again = _eval_command(args, task, out)
    write_json(out / "report.json",
               {**report.to_dict(), "task": task.name, "model": args.model, "seed": args.seed,
                "splits": {"train": len(task.train), "val": len(task.val),
                           "test": len(task.test)},
                "eval_command": again, "wall_seconds": time.perf_counter() - started},
               indent=1, default=str)
    page = write_report(out)
    print(f"\nbest {_shown(result.best)}\n\nsaved: {out / 'best.json'}\nreport: {page}\n"
          f"run it again: {again}")
    if report.meaningless:  # everything is saved; the exit status says it is not a result
        raise RunFailedError(f"{out}: {report.warning()}")
    return 0
