"""What several commands share: the data and LM flags, the LM and cache they name, the task they
load, and the optimizer `evo run` builds from its flags."""

from __future__ import annotations

import argparse
import json
import math

from pydantic import ValidationError

import evo
from evo import datasets
from evo.data import Task
from evo.errors import ConfigError, config_error
from evo.integrations.ray import RayExecutor
from evo.lm import DEFAULT_MODEL, make_lm, session_for


def positive(kind):
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


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="public dataset name (see `evo datasets`)")
    p.add_argument("--data", help="your own JSONL or CSV file")
    p.add_argument("--inputs", help="input fields of --data, comma-separated")
    p.add_argument("--outputs", help="output fields of --data, comma-separated")
    p.add_argument("--labels", help="allowed labels of the output, comma-separated")
    p.add_argument("--n-train", type=positive(int), help="training (demo pool) examples")
    p.add_argument("--n-val", type=positive(int), help="validation examples, which decide the "
                   "winner (evo run default: budget / 6, between 20 and 100)")
    p.add_argument("--n-test", type=positive(int), help="held-out test examples (reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the search")


def add_lm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="embedded model name, .gguf path, or hosted provider/model")
    p.add_argument("--api-base", help="endpoint of a hosted model")
    p.add_argument("--api-key", help="key of a hosted model (else the provider's env variable)")
    p.add_argument("--timeout", type=positive(float), metavar="SECONDS",
                   help="a hosted model's request gives up after this long (then it is retried "
                        "and, failing that, recorded as a failed cell); default 60")
    p.add_argument("--cache", help="response cache file (default: the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def add_concurrency_args(p: argparse.ArgumentParser) -> None:
    """How the LM's calls are sent (`evo run`, `evo eval`): none of it changes a result."""
    p.add_argument("--concurrency", type=positive(int), metavar="N",
                   help="LM calls in flight at once (default: 8 for a hosted or served model, "
                        "1 for the embedded one); the result is the same at any concurrency")
    p.add_argument("--max-rpm", type=positive(float), metavar="N",
                   help="send at most N requests a minute (a provider's quota)")
    p.add_argument("--max-tpm", type=positive(float), metavar="N",
                   help="send at most about N tokens a minute (a provider's quota)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the LM calls on Ray workers: a local Ray (no ADDRESS), or a "
                        "cluster ('auto', ray://HOST:10001); needs pip install 'evo[ray]'")
    p.add_argument("--ray-workers", type=positive(int), default=2, metavar="N",
                   help="Ray workers, each with its own client or model replica (default 2)")


def dollars_per_mtok(text: str) -> tuple[float, float]:
    """``--price IN,OUT``: dollars per million prompt and completion tokens."""
    try:
        price = tuple(float(x) for x in text.split(","))
    except ValueError:
        price = ()
    if len(price) != 2 or not all(0 <= x < math.inf for x in price):
        raise ConfigError(f"--price {text!r}: write IN,OUT in dollars per million "
                          "prompt and completion tokens (numbers >= 0), e.g. --price 0.15,0.6")
    return price


def lm(args: argparse.Namespace, spec: str | None = None):
    """The LM named by ``--model`` (or ``spec``) and the endpoint flags."""
    return make_lm(spec or args.model, api_base=args.api_base, api_key=args.api_key,
                   timeout=args.timeout)


def lm_call(args: argparse.Namespace, spec: str | None = None) -> dict:
    """The ``lm=``, ``max_concurrency=`` and ``executor=`` arguments the library takes for the
    LM flags: with ``--max-rpm`` / ``--max-tpm`` a paced session (with the cache), with
    ``--ray`` the backend and a :class:`~evo.integrations.ray.RayExecutor`."""
    backend = lm(args, spec)
    if args.ray is not None:
        if args.max_rpm or args.max_tpm:
            raise ConfigError("--max-rpm / --max-tpm pace one process's calls: not with --ray")
        executor = RayExecutor(address=None if args.ray == "local" else args.ray,
                               num_workers=args.ray_workers,
                               concurrency_per_worker=(
                                   None if args.concurrency is None
                                   else -(-args.concurrency // args.ray_workers)))
        return {"lm": backend, "executor": executor}
    if args.max_rpm or args.max_tpm:
        session = session_for(backend, cache(args))
        session.pace(max_rpm=args.max_rpm, max_tpm=args.max_tpm)
        backend = session
    return {"lm": backend, "max_concurrency": args.concurrency}


def cache(args: argparse.Namespace):
    """The ``cache=`` argument the library takes for ``--cache`` / ``--no-cache``."""
    return False if args.no_cache else (args.cache or True)


def load_task(args: argparse.Namespace) -> Task:
    """The task named by ``--task`` or ``--data`` (with its fields), split as the flags say."""
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


def split(task: Task, name: str) -> list:
    """The ``--split`` of ``task``."""
    return {"train": task.train, "val": task.val, "test": task.test}[name]


def optimizer_params(cls) -> list[str]:
    """The parameters of optimizer class ``cls`` a user sets with ``--set`` (not the budget,
    which is ``--budget``, nor the ones only Python can pass)."""
    return [k for k in cls.model_fields if k not in ("budget", "members", "fitness")]


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
        if not sep or key not in optimizer_params(cls):
            raise ConfigError(f"--set {pair!r}: write NAME=VALUE with a parameter of "
                              f"{cls.name!r}: {', '.join(optimizer_params(cls))}")
        params[key] = _value(text)
    try:
        return cls(**params)
    except ValidationError as exc:  # a bad --set value
        raise config_error(exc, f"optimizer {cls.name!r}") from None
