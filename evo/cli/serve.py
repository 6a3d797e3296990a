"""``evo serve``: the optimization service (REST + WebSocket API, dashboard at ``/``, OpenAPI
docs at ``/docs``), and its keys and audit log from the shell.

    evo serve [--home DIR] [--host 127.0.0.1] [--port 8000] [--workers N] [--rate N]
              [--max-body-mb N] [--mlflow URI] [--ray [ADDRESS]] [--price IN,OUT]
              [--model M --api-base URL ...]
    evo serve keys create --tenant T --role viewer|operator|admin [--name N] [--rate N]
    evo serve keys list [--tenant T] / evo serve keys revoke ID
    evo serve audit [--verify] [--tenant T] [--after SEQ] [--limit N]

The home (default ``$EVO_CACHE_DIR/service``) holds the keys, the audit log, the job queue and
the jobs' runs; the key and audit commands work on it with no server running. On the first
start with no key, ``evo serve`` creates an admin key for tenant "default" and prints its
secret once (only its hash is stored; no secret is ever logged).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from evo.cli.common import add_lm_args, cache, dollars_per_mtok, lm, positive
from evo.errors import ConfigError
from evo.paths import cache_root
from evo.service.store import ROLES, ServiceStore

DB_FILE = "service.sqlite"


def register(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", help="the optimization service: REST + WebSocket API and "
                        "dashboard; its keys and audit log")
    _home_arg(sv, None)
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--workers", type=positive(int), default=2,
                    help="jobs run at once (default 2)")
    sv.add_argument("--rate", type=positive(int), default=600, metavar="N",
                    help="requests a minute per key, unless the key has its own (default 600)")
    sv.add_argument("--max-body-mb", type=positive(float), default=10.0, metavar="N",
                    help="largest request body in MiB (default 10)")
    sv.add_argument("--mlflow", metavar="URI", help="log each job's run to this MLflow "
                    "tracking URI")
    sv.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the LM calls on Ray workers: a local Ray (no ADDRESS) or a cluster")
    sv.add_argument("--price", metavar="IN,OUT",
                    help="dollars per million prompt and completion tokens: each job's status "
                         "and result then say what it cost (cost_usd)")
    add_lm_args(sv)
    cmds = sv.add_subparsers(dest="serve_command", required=False)
    keys = cmds.add_parser("keys", help="API keys: create, list, revoke")
    _home_arg(keys, argparse.SUPPRESS)
    kc = keys.add_subparsers(dest="keys_command", required=True)
    create = kc.add_parser("create", help="a new key (its secret is printed once)")
    _home_arg(create, argparse.SUPPRESS)
    create.add_argument("--tenant", default="default", help="its tenant (default 'default')")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="a label, e.g. ci-bot")
    create.add_argument("--rate", type=positive(int), metavar="N",
                        help="its requests a minute (default: the server's --rate)")
    ls = kc.add_parser("list", help="every key (never a secret)")
    _home_arg(ls, argparse.SUPPRESS)
    ls.add_argument("--tenant", help="only this tenant's")
    rv = kc.add_parser("revoke", help="revoke a key: it is refused from now on")
    _home_arg(rv, argparse.SUPPRESS)
    rv.add_argument("key_id", metavar="ID")
    au = cmds.add_parser("audit", help="the audit log, as JSON lines (oldest first)")
    _home_arg(au, argparse.SUPPRESS)
    au.add_argument("--verify", action="store_true",
                    help="check the hash chain of the whole log (exit 2 if broken)")
    au.add_argument("--tenant", help="only this tenant's entries")
    au.add_argument("--after", type=int, default=0, metavar="SEQ", help="entries after SEQ")
    au.add_argument("--limit", type=positive(int), default=1000, help="at most N (default 1000)")
    sv.set_defaults(func=cmd_serve)


def _home_arg(p: argparse.ArgumentParser, default: object) -> None:
    # on each subcommand too (evo serve keys list --home H); SUPPRESS keeps the outer value
    p.add_argument("--home", default=default,
                   help="the service's folder (default $EVO_CACHE_DIR/service)")


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser() if args.home else cache_root() / "service"


def cmd_serve(args: argparse.Namespace) -> int:
    home = _home(args)
    if args.serve_command == "keys":
        return _keys(args, home)
    if args.serve_command == "audit":
        return _audit(args, home)
    return _run(args, home)


def _keys(args: argparse.Namespace, home: Path) -> int:
    if args.keys_command == "create":
        home.mkdir(parents=True, exist_ok=True)
    with ServiceStore(home / DB_FILE if args.keys_command == "create" else _existing(home)
                      ) as store:
        if args.keys_command == "create":
            key, secret = store.create_key(tenant=args.tenant, role=args.role, name=args.name,
                                           rate_per_min=args.rate)
            store.audit(action="key.create", status=201, target=key.id, tenant=key.tenant,
                        detail=f"from the shell: tenant {key.tenant}, role {key.role}")
            print(f"created key {key.id} (tenant {key.tenant}, role {key.role}); its secret, "
                  "shown once:")
            print(secret, flush=True)
        elif args.keys_command == "list":
            for key in store.keys(args.tenant):
                print(json.dumps(key.to_dict()))
        else:
            key = store.revoke_key(args.key_id)
            store.audit(action="key.revoke", status=200, target=key.id, tenant=key.tenant,
                        detail="from the shell")
            print(f"revoked key {key.id} (tenant {key.tenant}, role {key.role})")
    return 0


def _existing(home: Path) -> Path:
    path = home / DB_FILE
    if not path.is_file():
        raise ConfigError(f"no service at {home} (no {DB_FILE}): give its --home, or start "
                          "`evo serve` there once")
    return path


def _audit(args: argparse.Namespace, home: Path) -> int:
    with ServiceStore(_existing(home)) as store:
        if args.verify:
            n = store.verify_audit()
            print(f"audit log verified: {n} entries, hash chain intact")
            return 0
        for entry in store.audit_log(tenant=args.tenant, after=args.after, limit=args.limit):
            print(json.dumps(entry.to_dict()))
    return 0


def first_key(home: Path) -> str | None:
    """On a home with no key: create an admin key for tenant "default" and return its secret
    (else None)."""
    home.mkdir(parents=True, exist_ok=True)
    with ServiceStore(home / DB_FILE) as store:
        if store.keys():
            return None
        key, secret = store.create_key(tenant="default", role="admin", name="first-start")
        store.audit(action="key.create", status=201, target=key.id, tenant=key.tenant,
                    detail="first start: the admin key of tenant default")
        return secret


def _run(args: argparse.Namespace, home: Path) -> int:
    # deferred: heavy optional dependency (fastapi, uvicorn: the `service` extra)
    from evo.service.app import ServiceConfig
    from evo.service.server import serve

    config = ServiceConfig(home=home, host=args.host, port=args.port, workers=args.workers,
                           rate_per_min=args.rate,
                           max_body_bytes=int(args.max_body_mb * 2**20),
                           mlflow_uri=args.mlflow, ray=args.ray,
                           price=dollars_per_mtok(args.price) if args.price else None)
    backend = lm(args)
    secret = first_key(home)
    if secret is not None:
        print("evo serve: no API key yet; created an admin key for tenant 'default'. Its "
              "secret, shown this once (only its hash is stored):")
        print(secret)
    print(f"evo serve: {home} on http://{args.host}:{args.port} (dashboard /, docs /docs); "
          f"started {datetime.datetime.now().isoformat(timespec='seconds')}", flush=True)
    serve(config, backend, cache=cache(args))
    return 0
