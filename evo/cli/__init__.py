"""The ``evo`` command: ``evo run``, ``evo eval``, ``evo compare``, ``evo report``,
``evo predict``, ``evo bench``, ``evo optimizers``, ``evo datasets``, ``evo models``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from pydantic import ValidationError

import evo
import evo_bench as bench
from evo import datasets
from evo._io import write_json
from evo.analysis.compare import compare
from evo.analysis.projection import project
from evo.analysis.report import write_report
from evo.api import evaluation
from evo.data import Task
from evo.errors import (
    ConfigError,
    DamagedFileError,
    EvoError,
    RunFailedError,
    config_error,
)
from evo.lm import DEFAULT_MODEL, make_lm, session_for
from evo.lm.base import LMError, LMRequest, LMUnavailableError
from evo.lm.models import MODELS
from evo.runs.store import (
    RUN_FILE,
    RunMismatchError,
    data_digest,
    read_run_file,
    run_cli,
)
from evo.search.evaluate import check_testset


def _lm(args: argparse.Namespace, spec: str | None = None):
    return make_lm(spec or args.model, api_base=args.api_base, api_key=args.api_key,
                   timeout=args.timeout)


def load_task(args: argparse.Namespace) -> Task:
    if args.task and args.data:
        raise ConfigError(f"--task {args.task} and --data {args.data}: name one source of data, "
                          "a public task or your own file")
    source = args.task or args.data
    if not source:
        raise ConfigError("name a task (--task trec) or a file (--data my.jsonl)")
    kwargs = {}
    if args.data:
        if not args.inputs or not args.outputs:
            raise ConfigError("--data needs --inputs and --outputs (comma-separated fields)")
        kwargs = {"inputs": args.inputs.split(","), "outputs": args.outputs.split(",")}
        if args.labels:
            kwargs["labels"] = args.labels.split(",")
    task = datasets.load(source, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                         n_test=args.n_test, **kwargs)
    budget = getattr(args, "budget", None)
    if args.n_val is None and budget and len(task.val) > max(20, budget // 6):
        # Each accepted candidate costs a full validation: shrink the default validation split
        # so the budget can validate about six candidates (50 examples for a budget of 300).
        task = datasets.load(source, seed=args.seed, n_train=args.n_train,
                             n_val=max(20, budget // 6), n_test=args.n_test, **kwargs)
    return task


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="public dataset name (see `evo datasets`)")
    p.add_argument("--data", help="your own JSONL or CSV file")
    p.add_argument("--inputs", help="input fields of --data, comma-separated")
    p.add_argument("--outputs", help="output fields of --data, comma-separated")
    p.add_argument("--labels", help="allowed labels of the output, comma-separated")
    p.add_argument("--n-train", type=_positive(int), help="training (demo pool) examples")
    p.add_argument("--n-val", type=_positive(int), help="validation examples, which decide the "
                   "winner (evo run default: budget / 6, between 20 and 100)")
    p.add_argument("--n-test", type=_positive(int), help="held-out test examples (reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the search")


def _positive(kind):
    """An argparse type: a number of ``kind`` above 0 (a bad one is a usage error, exit 2, before
    anything runs: `--n-test 0` must not pay for a search that cannot be reported)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _add_lm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="embedded model name, .gguf path, or hosted provider/model")
    p.add_argument("--api-base", help="endpoint of a hosted model")
    p.add_argument("--api-key", help="key of a hosted model (else the provider's env variable)")
    p.add_argument("--timeout", type=_positive(float), metavar="SECONDS",
                   help="a hosted model's request gives up after this long (then it is retried "
                        "and, failing that, recorded as a failed cell); default 60")
    p.add_argument("--cache", help="response cache file (default: the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _cache(args: argparse.Namespace):
    return False if args.no_cache else (args.cache or True)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string


def build_optimizer(args: argparse.Namespace):
    """The optimizer named by ``--optimizer`` with the flags it has and every ``--set K=V``."""
    cls = evo.optimizers.optimizer_class(args.optimizer)
    params = {"budget": evo.Budget(metric_calls=args.budget)}
    flags = {"max_demos": args.max_demos, "population_size": args.population,
             "reflection_style": args.reflection_style, "selection": args.selection,
             "knn": False if args.no_knn else None, "encoder": args.encoder}
    for name, value in flags.items():
        if value is not None:
            if name not in cls.model_fields:
                raise ConfigError(f"optimizer {cls.name!r} has no parameter {name!r} "
                                 f"(see `evo optimizers`)")
            params[name] = value
    for pair in args.set:
        key, sep, text = pair.partition("=")
        if not sep or key not in _params(cls):
            raise ConfigError(f"--set {pair!r}: write NAME=VALUE with a parameter of "
                             f"{cls.name!r}: {', '.join(_params(cls))}")
        params[key] = _value(text)
    try:
        return cls(**params)
    except ValidationError as exc:  # a bad --set value
        raise config_error(exc, f"optimizer {cls.name!r}") from None


def _params(cls) -> list[str]:
    return [k for k in cls.model_fields if k not in ("budget", "members", "fitness")]


def cmd_optimizers(args: argparse.Namespace) -> int:
    def default(cls, key):
        f = cls.model_fields[key]
        return f.default_factory() if f.default_factory else f.default

    def show(cls, key):
        f = cls.model_fields[key]
        return f"    {key} = {default(cls, key)!r}" + (f"  # {f.description}"
                                                      if f.description else "")

    shared = evo.SearchConfig
    print("every optimizer (--set NAME=VALUE; budget is --budget):")
    for key in _params(shared):
        print(show(shared, key))
    for name in evo.optimizers.names():
        cls = evo.optimizers.optimizer_class(name)
        doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        print(f"\n{name} ({cls.__name__}): {doc}.")
        for key in _params(cls):
            if key not in shared.model_fields or default(cls, key) != default(shared, key):
                print(show(cls, key))
    return 0


# The `evo run` flags that define a run: kept in its run store, so `--resume RUN` needs no other.
# (--api-key is never written to disk: pass it again, or use the provider's variable.)
# --api-base says where the model is served, not which model: `--resume RUN --api-base URL`
# continues a run whose endpoint moved (its journal is keyed by the model, not the endpoint).
RUN_ARGS = ("task", "data", "inputs", "outputs", "labels", "n_train", "n_val", "n_test", "seed",
            "model", "api_base", "cache", "no_cache", "budget", "reflection_model", "optimizer",
            "set", "reflection_style", "max_demos", "population", "selection", "no_knn",
            "encoder")


def _resume_args(args: argparse.Namespace, parser_defaults: dict) -> None:
    """Fill ``args`` from the run store ``args.resume`` (flags given as well are an error)."""
    run_file = Path(args.resume) / RUN_FILE
    if not (run_file.exists() or run_file.is_symlink()):  # a damaged one: run_cli says how
        raise ConfigError(f"{args.resume}: not a run directory (no {RUN_FILE})")
    cli = run_cli(args.resume)
    if not cli:
        raise ConfigError(f"{args.resume} was made from Python (evo.optimize): resume it by "
                         "calling evo.optimize again with the same inputs and run_dir")
    movable = {"api_base": args.api_base}
    given = [k for k in RUN_ARGS if getattr(args, k) != parser_defaults.get(k)
             and k not in movable]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--resume takes the run's own settings from {run_file}; drop {flags}")
    _take_recorded(args, cli, run_file, RUN_ARGS, parser_defaults)
    for key, value in movable.items():
        if value is not None:
            setattr(args, key, value)
    args.out = args.resume


def _take_recorded(args: argparse.Namespace, cli: dict, run_file: Path, keys: tuple[str, ...],
                   defaults: dict | None = None) -> None:
    """Set ``args.KEY`` for each of ``keys`` from the flags ``evo run`` recorded in
    ``run_file``; a value the flag could not have taken (a hand-edited file) is one
    :class:`DamagedFileError` naming the file and the field."""
    for key in keys:
        value = cli.get(key, (defaults or {}).get(key))
        if value is not None and not _valid_flag(_RUN_ACTIONS[key], value):
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


def _absolute_paths(args: argparse.Namespace) -> None:
    """Make the file flags absolute, so the run store's record of them (and `--resume`) works
    from any working directory."""
    for key in ("data", "cache"):
        value = getattr(args, key, None)
        if value:
            setattr(args, key, str(Path(value).expanduser().absolute()))


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume RUN continues in RUN: drop --out")
        _resume_args(args, _RUN_DEFAULTS)
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
        lm = _lm(args)
        count = getattr(lm, "count_tokens", None)
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
    lm = _lm(args)
    reflection = (_lm(args, args.reflection_model)
                  if args.reflection_model else None)
    out = Path(args.out or f"runs/{task.name}-s{args.seed}")
    print(f"evo: {task.name}: train {len(task.train)}, val {len(task.val)}, "
          f"test {len(task.test)}; model {args.model}; optimizer {optimizer.name}; "
          f"budget {args.budget} metric calls; run store {out}"
          + (" (resuming)" if (out / "run.json").exists() else ""),
          file=sys.stderr)
    started = time.perf_counter()
    try:
        result = evo.optimize(program, task.train, task.val, lm=lm, optimizer=optimizer,
                              reflection_lm=reflection, seed=args.seed, cache=_cache(args),
                              description=task.description, run_dir=out,
                              progress=not args.quiet, cli={k: getattr(args, k) for k in RUN_ARGS})
    except LMUnavailableError as exc:
        if args.resume and args.api_base and not args.api_key:
            raise LMUnavailableError(f"{exc} (an --api-key is never saved in the run: give it "
                                     "again with --resume, or set the provider's variable)"
                                     ) from exc
        raise
    report = result.report(task.test, progress=not args.quiet)
    print(f"\n{task.name} | {args.model} | seed {args.seed}\n{report}")
    source = f"--task {args.task}" if args.task else (
        f"--data {args.data} --inputs {args.inputs} --outputs {args.outputs}"
        + (f" --labels {args.labels}" if args.labels else ""))
    # The same split arguments, or `evo eval` would cut a different test split.
    again = (f"evo eval {out / 'best.json'} {source} --seed {args.seed} --n-train "
             f"{len(task.train)} --n-val {len(task.val)} --n-test {len(task.test)} "
             f"--model {args.model}"
             + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}"
                       for k in ("api_base", "timeout", "cache") if getattr(args, k))
             + (" --no-cache" if args.no_cache else ""))
    best = result.best
    if isinstance(best, evo.EnsembleProgram):
        shown = f"a {best.vote} vote of {len(best.members)} programs"
    else:
        knn = f" + {best.knn.k} nearest per input" if best.knn else ""
        shown = f"instruction:\n{best.instruction}\ndemos: {len(best.demos)}{knn}"
    write_json(out / "report.json",
               {**report.to_dict(), "task": task.name, "model": args.model, "seed": args.seed,
                "splits": {"train": len(task.train), "val": len(task.val),
                           "test": len(task.test)},
                "eval_command": again, "wall_seconds": time.perf_counter() - started},
               indent=1, default=str)
    page = write_report(out)
    if result.store is not None:
        result.store.close()  # the run directory is free for `evo report` or a resume
    print(f"\nbest {shown}\n\nsaved: {out / 'best.json'}\nreport: {page}\n"
          f"run it again: {again}")
    if report.meaningless:  # everything is saved; the exit status says it is not a result
        raise RunFailedError(f"{out}: {report.warning()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    program = evo.load_program(args.program)
    task = load_task(args)
    data = {"train": task.train, "val": task.val, "test": task.test}[args.split]
    result = evaluation(program, data, lm=_lm(args), cache=_cache(args))
    print(f"{args.program}: {task.name} {args.split} {result}")
    if result.meaningless:
        raise RunFailedError("most cells failed: the accuracy says nothing about the program")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.data in ("train", "val", "test") and not Path(args.data).exists():
        args.split, args.data = args.data, None  # `--data test`: the split, not a file
    spec = None
    if not args.task and not args.data:
        # Programs from a run directory: its run.json says which data, splits, seed and model.
        for program in (args.a, args.b):
            run_file = Path(program).parent / RUN_FILE
            cli = run_cli(run_file.parent)
            if cli:
                # (budget too: `evo run`'s default validation size follows it, and the test
                # split depends on every split size)
                _take_recorded(args, cli, run_file, ("task", "data", "inputs", "outputs",
                                                     "labels", "n_train", "n_val", "n_test",
                                                     "seed", "budget"))
                if args.model == DEFAULT_MODEL and cli.get("model"):
                    _take_recorded(args, cli, run_file, ("model",))
                if not args.api_base:  # where the run's model was served
                    _take_recorded(args, cli, run_file, ("api_base",))
                spec = read_run_file(run_file)["spec"]
                print(f"evo: data, splits and model from {run_file}", file=sys.stderr)
                break
        else:
            raise ConfigError("name the data (--task NAME or --data FILE), or compare programs "
                              "saved in an `evo run` directory (its run.json says which data)")
    task = load_task(args)
    if spec is not None:  # the run's own splits, or its test split is not this one
        changed = [name for name, split in (("trainset", task.train), ("valset", task.val))
                   if spec.get(name) not in (None, data_digest(split))]
        if changed:
            raise RunMismatchError(f"{run_file}: the data has changed since the run (its "
                                   f"{' and '.join(changed)} differ), so this test split is not "
                                   "the run's: name the data and splits to compare on")
    data = {"train": task.train, "val": task.val, "test": task.test}[args.split]
    lm = _lm(args)
    result = compare(args.a, args.b, data, lm=lm, cache=_cache(args), seed=args.seed)
    print(f"{task.name} {args.split} split\n{result}")
    if args.out:
        write_json(args.out, {**result.to_dict(), "task": task.name, "split": args.split,
                              "model": args.model})
        print(f"saved: {args.out}")
    if result.meaningless:
        raise RunFailedError("most cells of a program failed: the comparison says nothing "
                             "about the prompts")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    price = None
    if args.price:
        try:
            price = tuple(float(x) for x in args.price.split(","))
        except ValueError:
            price = ()
        if len(price) != 2 or not all(0 <= x < math.inf for x in price):
            raise ConfigError(f"--price {args.price!r}: write IN,OUT in dollars per million "
                              "prompt and completion tokens (numbers >= 0), e.g. --price 0.15,0.6")
    path = write_report(args.run, args.out, price=price)
    print(f"report: {path}")
    return 0


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
    session = session_for(_lm(args), _cache(args))
    members = program.members if isinstance(program, evo.EnsembleProgram) else (program,)
    try:
        predictions = [m.parse(session.complete(LMRequest(m.messages(example),
                                                          max_tokens=48)).text)
                       for m in members]
    except LMError as exc:  # failed after its retries: nothing to predict from
        print(f"evo: {exc}", file=sys.stderr)
        return 2
    prediction = (program.vote_on(predictions) if isinstance(program, evo.EnsembleProgram)
                  else predictions[0])
    if not prediction.ok:  # the program ran, its reply is no answer: exit 1, not a mistake (2)
        print(f"evo: the reply could not be parsed: {prediction.error}", file=sys.stderr)
        return 1
    print(json.dumps(prediction.outputs))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("tasks", "optimizers", "budgets", "seeds",
                                               "n_train", "n_val", "n_test", "model", "out")}
    if args.report_only and not args.config:  # the results folder is all a report needs
        out = args.out or bench.BenchConfig.model_fields["out"].default
    else:
        try:
            config = bench.BenchConfig.load(args.config, **overrides) if args.config else \
                bench.BenchConfig(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise config_error(exc, f"evo bench {args.config or 'flags'}") from None
        out = config.out
        if not args.report_only:
            cells = config.cells()
            print(f"evo bench: {len(cells)} runs ({len(config.tasks)} tasks x "
                  f"{len(config.seeds)} seeds x {len(config.optimizers)} optimizers x "
                  f"{len(config.budgets)} budgets, + baselines), results under {out}", flush=True)
            bench.run_suite(config, log=lambda line: print(line, flush=True))
    text, png = bench.report(out)
    print(text)
    print(f"table: {out / 'table.md'}; plot: {png}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    for name in datasets.names():
        print(name)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name, spec in MODELS.items():
        print(f"{name}\t{getattr(spec, 'size', '')}")
    return 0


_RUN_DEFAULTS: dict = {}  # `evo run`'s flag defaults (filled by build_parser)
_RUN_ACTIONS: dict[str, argparse.Action] = {}  # ... and its flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description="Evolutionary prompt search.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="search for a better prompt, then report on held-out data")
    _add_data_args(run)
    _add_lm_args(run)
    run.add_argument("--budget", type=_positive(int), default=300, help="metric calls for the search")
    run.add_argument("--reflection-model", help="a stronger LM for reflection (default: --model)")
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
    run.set_defaults(func=cmd_run)
    _RUN_DEFAULTS.update({a.dest: a.default for a in run._actions})
    _RUN_ACTIONS.update({a.dest: a for a in run._actions})

    ev = sub.add_parser("eval", help="score a saved program on a split")
    ev.add_argument("program", help="program JSON written by `evo run`")
    _add_data_args(ev)
    _add_lm_args(ev)
    ev.add_argument("--split", choices=["train", "val", "test"], default="test")
    ev.set_defaults(func=cmd_eval)

    cp = sub.add_parser("compare", help="A/B: two saved programs on the same examples, with a "
                        "paired bootstrap CI and a permutation-test p-value")
    cp.add_argument("a", help="program A (JSON written by `evo run`, e.g. RUN/baseline.json)")
    cp.add_argument("b", help="program B (e.g. RUN/best.json)")
    _add_data_args(cp)
    _add_lm_args(cp)
    cp.add_argument("--split", choices=["train", "val", "test"], default="test",
                    help="which split (`--data test` says the same when no file is named so)")
    cp.add_argument("--out", help="write the comparison (with per-example scores) as JSON")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="a self-contained HTML report of a run: score vs calls, "
                        "Pareto fronts, lineage with diffs, per-example wins, usage and cost")
    rp.add_argument("run", help="run directory (written by `evo run` or evo.optimize(run_dir=))")
    rp.add_argument("--out", help="HTML file (default RUN/report.html)")
    rp.add_argument("--price", metavar="IN,OUT",
                    help="dollars per million prompt and completion tokens, for the cost line")
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("predict", help="run a saved program on one input")
    pr.add_argument("program")
    pr.add_argument("--input", action="append", default=[], metavar="FIELD=TEXT", required=True)
    _add_lm_args(pr)
    pr.set_defaults(func=cmd_predict)

    be = sub.add_parser("bench", help="tasks x optimizers x budgets x seeds, evo vs DSPy: "
                        "JSON per run, a markdown table and a plot (resumable)")
    be.add_argument("--config", help="a TOML suite (e.g. benchmarks/configs/small.toml); "
                    "the flags below override its keys")
    be.add_argument("--tasks", nargs="+")
    be.add_argument("--optimizers", nargs="+",
                    help="evo names (see `evo optimizers`) and dspy.gepa, dspy.miprov2, "
                         "dspy.copro, dspy.bootstrap_random_search")
    be.add_argument("--budgets", nargs="+", type=int, help="metric calls per search")
    be.add_argument("--seeds", nargs="+", type=int)
    be.add_argument("--n-train", type=int)
    be.add_argument("--n-val", type=int)
    be.add_argument("--n-test", type=int)
    be.add_argument("--model", help="embedded model name, .gguf path or provider/model")
    be.add_argument("--out", type=Path, help="results directory (default runs/bench)")
    be.add_argument("--report-only", action="store_true",
                    help="write the table and plot from the results already there")
    be.set_defaults(func=cmd_bench)

    sub.add_parser("optimizers", help="list optimizers and their parameters").set_defaults(
        func=cmd_optimizers)
    sub.add_parser("datasets", help="list public datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("models", help="list embedded local models").set_defaults(func=cmd_models)
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
