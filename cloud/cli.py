"""`iotsphere cloud ...`: serve the aggregator, add users and gateways.

The admin commands open the DuckDB file directly; DuckDB allows one writer process, so they
fail with a clear line while `cloud serve` runs on the same data dir (an admin API for them
is a later issue).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cloud.auth import hash_password, new_opaque_token, token_digest
from cloud.db import Conflict, StoreError
from cloud.services import open_duckdb_store
from cloud.settings import CloudSettings
from cloud.store import Role
from cloud.store_duckdb import DuckCloudStore
from common.cli import CliError, add_common_args, data_dir_of, port_number, print_json
from common.clock import SystemClock

T = TypeVar("T")

DEFAULT_ORG = "default"
MIN_PASSWORD = 8
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _settings(args: argparse.Namespace) -> CloudSettings:
    return CloudSettings(data_dir=Path(data_dir_of(args)))


def _with_store(
    args: argparse.Namespace, action: Callable[[DuckCloudStore], Coroutine[Any, Any, T]]
) -> T:
    settings = _settings(args)
    try:
        store = open_duckdb_store(settings)
    except StoreError as exc:
        raise CliError(f"cannot open the cloud store (is `cloud serve` running?): {exc}") from exc
    try:
        return asyncio.run(action(store))
    except Conflict as exc:
        raise CliError(str(exc)) from exc
    except StoreError as exc:
        raise CliError(f"store error: {exc}") from exc
    finally:
        store.close()


def _read_password() -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise CliError("passwords do not match", 2)
    if len(password) < MIN_PASSWORD:
        raise CliError(f"password must be at least {MIN_PASSWORD} characters", 2)
    return password


def _cmd_serve(args: argparse.Namespace) -> int:
    from cloud.server import serve

    base = _settings(args)
    smtp = replace(
        base.notify.smtp,
        host=args.smtp_host,
        port=args.smtp_port,
        from_addr=args.smtp_from,
        username=os.environ.get("IOTSPHERE_SMTP_USERNAME") or None,
        password=os.environ.get("IOTSPHERE_SMTP_PASSWORD") or None,
    )
    settings = replace(base, bind=args.bind, port=args.port, notify=replace(base.notify, smtp=smtp))
    try:
        serve(settings)
    except StoreError as exc:
        raise CliError(f"cannot open the cloud store: {exc}") from exc
    except OSError as exc:
        raise CliError(str(exc)) from exc
    return 0


def _cmd_user_add(args: argparse.Namespace) -> int:
    email = args.email.strip().lower()
    if not _EMAIL.match(email):
        raise CliError(f"not an e-mail address: {args.email!r}", 2)
    password_hash = hash_password(_read_password())
    now = SystemClock().now_ms()

    async def go(store: DuckCloudStore) -> dict[str, str]:
        if await store.user_by_email(email) is not None:
            raise CliError(f"user {email} already exists")
        org = await store.ensure_org(args.org, now)
        user = await store.create_user(email, password_hash, Role(args.role), org.id, now)
        return {"user_id": user.id, "email": user.email, "role": user.role.value, "org": org.name}

    print_json(_with_store(args, go))
    return 0


def _cmd_gateway_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    token = new_opaque_token()
    now = SystemClock().now_ms()

    async def go(store: DuckCloudStore) -> dict[str, str]:
        org = await store.ensure_org(args.org, now)
        if any(g.name == args.name for g in await store.list_gateways(org.id)):
            raise CliError(f"gateway {args.name!r} already exists in organization {org.name!r}")
        expires = now + settings.enrollment_ttl_s * 1000
        gw = await store.create_gateway(org.id, args.name, token_digest(token), expires, now)
        return {"gateway_id": gw.gateway_id, "enrollment_token": token}

    print_json(_with_store(args, go))
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the cloud aggregator until SIGINT/SIGTERM")
    add_common_args(serve)
    serve.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8000, help="HTTP port (default 8000)")
    serve.add_argument(
        "--smtp-host", default="localhost", help="SMTP relay for email channels (localhost)"
    )
    serve.add_argument("--smtp-port", type=port_number, default=25, help="SMTP port (default 25)")
    serve.add_argument(
        "--smtp-from",
        default="iotsphere@localhost",
        help="sender address of alert emails; credentials from $IOTSPHERE_SMTP_USERNAME and "
        "$IOTSPHERE_SMTP_PASSWORD",
    )
    serve.set_defaults(handler=_cmd_serve)

    user = sub.add_parser("user", help="manage users")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    uadd = usub.add_parser(
        "add", help="add a user (password from stdin, or prompted twice on a terminal)"
    )
    uadd.add_argument("email")
    uadd.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    uadd.add_argument("--org", default=DEFAULT_ORG, help="organization (default: default)")
    add_common_args(uadd, json_flag=True)
    uadd.set_defaults(handler=_cmd_user_add)

    gateway = sub.add_parser("gateway", help="manage gateways")
    gsub = gateway.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    gadd = gsub.add_parser("add", help="register a gateway; prints its enrollment token once")
    gadd.add_argument("name")
    gadd.add_argument("--org", default=DEFAULT_ORG, help="organization (default: default)")
    add_common_args(gadd, json_flag=True)
    gadd.set_defaults(handler=_cmd_gateway_add)
