"""`iotsphere cloud ...`: serve the aggregator, manage users, add gateways.

DuckDB allows one writer process. While `cloud serve` runs on the data dir (it names itself
in run/cloud.json), the admin commands ask it over loopback (/api/local-admin, authenticated
by a secret in the data dir, like the gateway's admin API); otherwise they open the DuckDB
file directly. Both paths run the same operation (cloud.app.admin_ops), so their validation,
defaults, output and errors cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from cloud.app.admin_ops import (
    DEFAULT_ORG,
    LOCAL_ADMIN_PREFIX,
    add_gateway,
    add_user,
    check_email,
    check_password,
    delete_user_by_email,
    list_users,
    local_admin_secret,
    running_cloud_url,
    set_user_state,
)
from cloud.app.backup_cli import register_cloud_backup
from cloud.app.service import register_service
from cloud.app.services import open_store
from cloud.app.settings import CloudSettings
from cloud.storage.errors import Conflict, StoreError
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.cli import (
    CliError,
    add_common_args,
    data_dir_of,
    port_number,
    positive_int,
    print_json,
)
from common.clock import SystemClock
from common.problem import ProblemError

T = TypeVar("T")
ACTOR = "cli (store opened directly)"


def _post_to_running(
    args: argparse.Namespace, path: str, body: dict[str, Any]
) -> dict[str, str] | None:
    """POST to the running server's local admin API; None when no server runs here."""
    result: dict[str, str] | None = _ask_running(args, "POST", path, body)
    return result


def _ask_running(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> Any:
    """Call the running server's local admin API: its JSON answer, or None when no server
    runs here, or when the store is PostgreSQL (any process may write there: the command
    opens the database itself)."""
    if _database_url(args) is not None:
        return None
    data_dir = data_dir_of(args)
    url = running_cloud_url(data_dir)
    if url is None:
        return None
    try:
        secret = local_admin_secret(data_dir)
    except OSError as exc:
        raise CliError(f"cannot read the cloud's local admin secret: {exc}") from exc
    try:
        # trust_env=False: never through an HTTP(S)_PROXY; the password stays on this host.
        # verify=False under `serve --tls-cert`: this is loopback to the process named in the
        # data dir's run info (its certificate names the public host, not 127.0.0.1).
        with httpx.Client(base_url=url, timeout=60.0, trust_env=False, verify=False) as http:
            resp = http.request(
                method,
                path,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {secret}"},
            )
    except httpx.ConnectError:
        return None  # nothing listens: stale run info (pid reused); the direct path decides
    except httpx.HTTPError as exc:
        raise CliError(f"the running cloud did not answer: {exc}") from exc
    if resp.status_code >= 400:
        try:
            doc = resp.json()
            message = str(doc.get("detail") or doc.get("title") or resp.text)
        except (ValueError, AttributeError):
            message = resp.text.strip() or f"HTTP {resp.status_code}"
        raise CliError(message, _exit_code(resp.status_code))
    return resp.json()


def _exit_code(status: int) -> int:
    return 2 if status in (400, 422) else 1  # the user's input was wrong: a usage error


# -- commands ---------------------------------------------------------------------------------


DATABASE_ENV = "IOTSPHERE_DATABASE_URL"
_SCHEMES = ("postgresql://", "postgres://")


def _database_url(args: argparse.Namespace) -> str | None:
    """--database, else $IOTSPHERE_DATABASE_URL, else None (the embedded DuckDB file)."""
    url: str | None = getattr(args, "database", None) or os.environ.get(DATABASE_ENV) or None
    if url is not None and not url.startswith(_SCHEMES):
        raise CliError(
            f"--database: expected postgresql://USER@HOST:PORT/DB, got {url.split('://')[0]}://...",
            2,
        )
    return url


def _settings(args: argparse.Namespace) -> CloudSettings:
    return CloudSettings(data_dir=Path(data_dir_of(args)), database_url=_database_url(args))


def _with_store(
    args: argparse.Namespace, action: Callable[[SqlCloudStore], Coroutine[Any, Any, T]]
) -> T:
    settings = _settings(args)
    try:
        store = open_store(settings)
    except StoreError as exc:
        hint = "" if settings.database_url else " (is `cloud serve` running?)"
        raise CliError(f"cannot open the cloud store{hint}: {exc}") from exc
    try:
        return asyncio.run(action(store))
    except ProblemError as exc:
        raise CliError(exc.problem.detail, _exit_code(exc.problem.status)) from exc
    except Conflict as exc:
        raise CliError(str(exc)) from exc
    except StoreError as exc:
        raise CliError(f"store error: {exc}") from exc
    finally:
        store.close()


def _read_password(prompt: str = "Password") -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"Repeat {prompt.lower()}: ") != password:
            raise CliError("passwords do not match", 2)
    return password


def _checked(check: Callable[[], T]) -> T:
    """Run a shared validator before any I/O, its ProblemError as a one-line CLI error."""
    try:
        return check()
    except ProblemError as exc:
        raise CliError(exc.problem.detail, _exit_code(exc.problem.status)) from exc


def _cmd_serve(args: argparse.Namespace) -> int:
    from cloud.app.server import serve
    from common.malloc_arenas import limit_malloc_arenas

    limit_malloc_arenas()  # before the server's worker threads exist

    base = _settings(args)
    smtp = replace(
        base.notify.smtp,
        host=args.smtp_host,
        port=args.smtp_port,
        from_addr=args.smtp_from,
        username=os.environ.get("IOTSPHERE_SMTP_USERNAME") or None,
        password=os.environ.get("IOTSPHERE_SMTP_PASSWORD") or None,
    )
    settings = replace(
        base,
        bind=args.bind,
        port=args.port,
        notify=replace(base.notify, smtp=smtp),
        retention_days=args.retention_days,
    )
    if args.workers > 1 and settings.database_url is None:
        raise CliError(
            "--workers needs --database postgresql://...: the embedded DuckDB file admits one"
            " process",
            2,
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together", 2)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
    try:
        serve(settings, workers=args.workers, tls=tls)
    except StoreError as exc:
        raise CliError(f"cannot open the cloud store: {exc}") from exc
    except OSError as exc:
        raise CliError(str(exc)) from exc
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cloud.app.services import migrate_all

    if _database_url(args) is None and running_cloud_url(data_dir_of(args)) is not None:
        raise CliError("the cloud is running on this data dir; it migrated at its start")
    try:
        versions = migrate_all(_settings(args))
    except StoreError as exc:
        raise CliError(f"cannot migrate the cloud store: {exc}") from exc
    print_json(versions)
    return 0


def _cmd_copy(args: argparse.Namespace) -> int:
    try:
        from cloud.app.copy_store import copy_cloud
    except ImportError as exc:
        raise CliError(
            f"PostgreSQL needs psycopg: pip install 'iotsphere[postgres]' ({exc})"
        ) from exc
    data_dir = data_dir_of(args)
    if not args.to.startswith(_SCHEMES):
        raise CliError("--to: expected postgresql://USER@HOST:PORT/DB", 2)
    source = CloudSettings(data_dir=Path(data_dir))
    if not source.db_path.exists():
        raise CliError(f"no embedded cloud to copy: {source.db_path} does not exist")
    if running_cloud_url(data_dir) is not None:
        raise CliError("the cloud is running on this data dir: stop `cloud serve` first")

    def report(copied: Any) -> None:
        print(f"copied {copied.rows} rows of {copied.table}", file=sys.stderr)

    try:
        done = copy_cloud(source, args.to, progress=report)
    except StoreError as exc:
        raise CliError(f"copy failed, nothing was written: {exc}") from exc
    print_json({c.table: c.rows for c in done})
    return 0


def _cmd_user_add(args: argparse.Namespace) -> int:
    # Checked here too, before the password prompt; add_user checks again (the API's callers).
    email = _checked(lambda: check_email(args.email))
    password = _read_password()
    _checked(lambda: check_password(password))
    role, org = Role(args.role), args.org
    body = {"email": email, "password": password, "role": role.value, "org": org}
    result = _post_to_running(args, f"{LOCAL_ADMIN_PREFIX}/users", body)
    if result is None:
        now = SystemClock().now_ms()
        result = _with_store(args, lambda store: add_user(store, email, password, role, org, now))
    print_json(result)
    return 0


def _user_path(email: str) -> str:
    return f"{LOCAL_ADMIN_PREFIX}/users/{quote(email, safe='@')}"


def _change_user(args: argparse.Namespace, email: str, body: dict[str, Any]) -> int:
    """disable / enable / passwd: the running server's PATCH, else the store directly."""
    result = _ask_running(args, "PATCH", _user_path(email), body)
    if result is None:
        now = SystemClock().now_ms()
        result = _with_store(
            args, lambda store: set_user_state(store, email, now, actor=ACTOR, **body)
        )
    print_json(result)
    return 0


def _cmd_user_disable(args: argparse.Namespace) -> int:
    return _change_user(args, _checked(lambda: check_email(args.email)), {"disabled": True})


def _cmd_user_enable(args: argparse.Namespace) -> int:
    return _change_user(args, _checked(lambda: check_email(args.email)), {"disabled": False})


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    email = _checked(lambda: check_email(args.email))
    password = _read_password("New password")
    _checked(lambda: check_password(password))
    return _change_user(args, email, {"password": password})


def _cmd_user_delete(args: argparse.Namespace) -> int:
    email = _checked(lambda: check_email(args.email))
    result = _ask_running(args, "DELETE", _user_path(email))
    if result is None:
        result = _with_store(args, lambda store: delete_user_by_email(store, email, actor=ACTOR))
    print_json(result)
    return 0


def _cmd_user_list(args: argparse.Namespace) -> int:
    org: str | None = args.org
    params = {"org": org} if org is not None else None
    result = _ask_running(args, "GET", f"{LOCAL_ADMIN_PREFIX}/users", params=params)
    if result is None:
        result = _with_store(args, lambda store: list_users(store, org))
    if args.json:
        print_json(result)
    else:  # one JSON object a line, as `gateway device list`
        for item in result:
            print_json(item)
        if not result:
            print("(none)")
    return 0


def _cmd_gateway_add(args: argparse.Namespace) -> int:
    name, org = args.name, args.org
    body = {"name": name, "org": org}
    result = _post_to_running(args, f"{LOCAL_ADMIN_PREFIX}/gateways", body)
    if result is None:
        ttl, now = _settings(args).enrollment_ttl_s, SystemClock().now_ms()
        result = _with_store(args, lambda store: add_gateway(store, name, org, ttl, now))
    print_json(result)
    return 0


def _add_cloud_args(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    add_common_args(parser, json_flag=json_flag)
    parser.add_argument(
        "--database",
        metavar="URL",
        default=None,
        help=f"PostgreSQL (postgresql://USER@HOST:PORT/DB) instead of the DuckDB file in the"
        f" data dir (default: ${DATABASE_ENV})",
    )


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the cloud aggregator until SIGINT/SIGTERM")
    _add_cloud_args(serve)
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
    serve.add_argument(
        "--retention-days",
        type=positive_int,
        default=None,
        metavar="DAYS",
        help="delete readings older than this (device time; default: keep them all)",
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="worker processes sharing the port (default 1; more need --database)",
    )
    serve.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, its chain)"
    )
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    serve.set_defaults(handler=_cmd_serve)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_serve(sub)
    register_service(sub)
    register_cloud_backup(sub, _add_cloud_args)

    migrate = sub.add_parser(
        "migrate", help="bring the database's schema to this release's (serve also does)"
    )
    _add_cloud_args(migrate, json_flag=True)
    migrate.set_defaults(handler=_cmd_migrate)

    copy = sub.add_parser(
        "copy", help="copy the embedded (DuckDB) cloud of the data dir into PostgreSQL"
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
    add_common_args(copy, json_flag=True)
    copy.set_defaults(handler=_cmd_copy)

    user = sub.add_parser("user", help="manage users")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    uadd = usub.add_parser(
        "add", help="add a user (password from stdin, or prompted twice on a terminal)"
    )
    uadd.add_argument("email")
    uadd.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    uadd.add_argument("--org", default=DEFAULT_ORG, help="organization (default: default)")
    _add_cloud_args(uadd, json_flag=True)
    uadd.set_defaults(handler=_cmd_user_add)
    ulist = usub.add_parser("list", help="list users (all organizations unless --org)")
    ulist.add_argument("--org", default=None, help="only this organization's users")
    _add_cloud_args(ulist, json_flag=True)
    ulist.set_defaults(handler=_cmd_user_list)
    for name, handler, help_text in (
        ("delete", _cmd_user_delete, "delete a user; their sessions end at once"),
        ("disable", _cmd_user_disable, "disable a user: sessions end, logins are refused"),
        ("enable", _cmd_user_enable, "enable a disabled user again"),
        (
            "passwd",
            _cmd_user_passwd,
            "set a user's password (from stdin, or prompted twice on a terminal); "
            "their sessions end",
        ),
    ):
        cmd = usub.add_parser(name, help=help_text)
        cmd.add_argument("email")
        _add_cloud_args(cmd, json_flag=True)
        cmd.set_defaults(handler=handler)

    gateway = sub.add_parser("gateway", help="manage gateways")
    gsub = gateway.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    gadd = gsub.add_parser("add", help="register a gateway; prints its enrollment token once")
    gadd.add_argument("name")
    gadd.add_argument("--org", default=DEFAULT_ORG, help="organization (default: default)")
    _add_cloud_args(gadd, json_flag=True)
    gadd.set_defaults(handler=_cmd_gateway_add)
