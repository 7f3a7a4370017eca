"""`iotsphere gateway ...`: run the gateway and administer it, running or stopped."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from common.cli import (
    CliError,
    add_common_args,
    data_dir_of,
    port_number,
    positive_int,
    print_json,
)
from edge.admin.backend import (
    AdminBackend,
    BackendError,
    LocalBackend,
    RemoteBackend,
    admin_secret,
    running_gateway_url,
)
from edge.app.backup_cli import register_backup
from edge.app.config import ConfigError, GatewayConfig, load_config
from edge.app.service import register_service
from edge.storage.store import GatewayStore, StoreError


def _config(args: argparse.Namespace, **overrides: Any) -> GatewayConfig:
    try:
        return load_config(data_dir_of(args), **overrides)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc


def with_backend(args: argparse.Namespace, action: Callable[[AdminBackend], Awaitable[Any]]) -> Any:
    """Run action against the running gateway's admin API, or directly on the stopped store."""
    cfg = _config(args)

    async def go() -> Any:
        url = running_gateway_url(cfg.run_dir)
        if url is not None:
            remote = RemoteBackend(url, admin_secret(cfg.data_dir))
            try:
                return await action(remote)
            finally:
                await remote.aclose()
        try:
            store = GatewayStore(
                cfg.db_path, memory_limit=cfg.duckdb_memory_limit, threads=cfg.duckdb_threads
            )
        except StoreError as exc:
            raise CliError(str(exc)) from exc
        try:
            return await action(LocalBackend(store, cfg))
        finally:
            store.close()

    try:
        return asyncio.run(go())
    except BackendError as exc:
        raise CliError(str(exc)) from exc


def _emit(args: argparse.Namespace, data: Any) -> int:
    if getattr(args, "json", False) or not isinstance(data, list):
        print_json(data)
    else:
        for item in data:
            print(json.dumps(item, default=str))
        if not data:
            print("(none)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.app.gateway import run_gateway
    from edge.app.gateway_tls import GatewayTlsError
    from edge.ingest.coap.ingress import CoapIngressError
    from edge.ingest.http.ingress import HttpIngressError
    from edge.ingest.mqtt.broker import BrokerError
    from edge.ingest.mqtt.front.proxy import MqttFrontError

    cfg = _config(
        args,
        bind=args.bind,
        mqtt_port=args.mqtt_port,
        http_port=args.http_port,
        coap_port=args.coap_port,
        mqtts_port=args.mqtts_port,
        https_port=args.https_port,
        broker_url=args.broker,
    )
    failures = (StoreError, BrokerError, MqttFrontError, CoapIngressError, HttpIngressError)
    try:
        run_gateway(cfg)
    except (*failures, GatewayTlsError) as exc:
        raise CliError(str(exc)) from exc
    return 0


def _cmd_device_add(args: argparse.Namespace) -> int:
    result = with_backend(args, lambda b: b.add_device(args.id, args.type, args.oscore))
    print_json(result)
    return 0


def _cmd_device_list(args: argparse.Namespace) -> int:
    return _emit(args, with_backend(args, lambda b: b.list_devices()))


def _cmd_device_revoke(args: argparse.Namespace) -> int:
    print_json(with_backend(args, lambda b: b.revoke_device(args.id)))
    return 0


def _cmd_rule_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "metric": args.metric,
        "operator": args.op,
        "threshold": _threshold(args.threshold) if args.threshold is not None else None,
        "for_seconds": args.for_seconds,
        "hysteresis": args.hysteresis,
        "severity": args.severity,
    }
    if args.op == "nodata":
        body.pop("threshold")
    for key, value in (("name", args.name), ("device_id", args.device), ("device_type", args.type)):
        if value is not None:
            body[key] = value
    print_json(with_backend(args, lambda b: b.add_rule(body)))
    return 0


def _threshold(raw: str) -> float | bool | str:
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return float(raw)
    except ValueError:
        return raw


def _cmd_rule_list(args: argparse.Namespace) -> int:
    return _emit(args, with_backend(args, lambda b: b.list_rules()))


def _cmd_readings(args: argparse.Namespace) -> int:
    return _emit(
        args, with_backend(args, lambda b: b.readings(args.device, args.metric, args.limit))
    )


def _cmd_alerts(args: argparse.Namespace) -> int:
    return _emit(args, with_backend(args, lambda b: b.alerts(args.state)))


def _cmd_errors(args: argparse.Namespace) -> int:
    return _emit(args, with_backend(args, lambda b: b.errors(args.limit)))


def _cmd_audit(args: argparse.Namespace) -> int:
    return _emit(args, with_backend(args, lambda b: b.audit(args.limit)))


def _cmd_status(args: argparse.Namespace) -> int:
    from edge.sync.identity import IdentityError, load_identity

    result = with_backend(args, lambda b: b.status())
    sync = result.get("sync") if isinstance(result, dict) else None
    if result.get("gateway") == "stopped" and isinstance(sync, dict):
        # The store knows the cursor and the last outcome; whether it is enrolled lives here.
        try:
            identity = load_identity(data_dir_of(args))
        except IdentityError as exc:
            sync.update(state="error", error=str(exc))
        else:
            if identity is not None:
                sync.update(state="enrolled", gateway_id=identity.gateway_id)
                sync["cloud"] = identity.cloud_url
    print_json(result)
    return 0


def _cmd_enroll(args: argparse.Namespace) -> int:
    """Register this gateway's new key with the cloud; works with the gateway stopped."""
    import sys
    import time
    from pathlib import Path

    from common.gateway_auth import (
        GatewayKeyError,
        generate_private_key,
        public_key_b64,
        save_private_key,
    )
    from edge.sync.cloud_client import CloudError, enroll
    from edge.sync.identity import Identity, IdentityError, is_enrolled, key_path, save_identity

    data_dir = data_dir_of(args)
    cloud = args.cloud.rstrip("/")
    if not cloud.startswith(("http://", "https://")):
        raise CliError(f"--cloud must be an http:// or https:// URL, not {args.cloud!r}", 2)
    if is_enrolled(data_dir) and not args.force:
        raise CliError(
            f"this gateway is already enrolled ({data_dir / 'identity.json'}); "
            "use --force to enroll it again with a new key"
        )
    key = generate_private_key()
    # Nothing is written before the cloud accepts: a refused token leaves the gateway as it was.
    try:
        ca_pem = None if args.cafile is None else Path(args.cafile).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --cafile {args.cafile}: {exc}", 2) from exc
    try:
        result = enroll(cloud, args.token, public_key_b64(key), args.name, ca_pem=ca_pem)
    except CloudError as exc:
        raise CliError(str(exc)) from exc
    try:
        save_private_key(key, key_path(data_dir), overwrite=True)
        save_identity(
            data_dir,
            Identity(
                gateway_id=result.gateway_id,
                cloud_url=cloud,
                org=result.org,
                name=args.name,
                enrolled_at=time.time_ns() // 1_000_000,
                cloud_ca_pem=ca_pem,
            ),
        )
    except (GatewayKeyError, IdentityError, OSError) as exc:
        raise CliError(
            f"enrolled as {result.gateway_id}, but saving the identity failed: {exc}"
        ) from exc
    print_json({"gateway_id": result.gateway_id, "org": result.org, "cloud": cloud})
    cfg = _config(args)
    if running_gateway_url(cfg.run_dir) is not None:
        print("the gateway is running: restart it to start syncing", file=sys.stderr)
    return 0


def _cmd_password_set(args: argparse.Namespace) -> int:
    """The local status page password: from stdin when piped, else prompted twice."""
    import getpass
    import sys

    from edge.security.local_password import PasswordError, check_new_password, set_password

    data_dir = data_dir_of(args)
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("New status page password: ")
            if getpass.getpass("Repeat it: ") != password:
                raise CliError("the two passwords differ; nothing was changed")
        except EOFError:
            raise CliError("no password given; nothing was changed") from None
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        check_new_password(password)
        path = set_password(data_dir, password)
    except PasswordError as exc:
        raise CliError(f"{exc}; nothing was changed") from exc
    print_json({"status_password": "set", "file": str(path)})
    return 0


# the argparse definition of every gateway command, read top to bottom:
def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the gateway until SIGINT/SIGTERM")
    add_common_args(run)
    run.add_argument("--bind", help="address of the device-facing listeners (default 0.0.0.0)")
    run.add_argument("--mqtt-port", type=port_number, help="device MQTT port (default 1883)")
    run.add_argument("--http-port", type=port_number, help="device HTTP port (default 8080)")
    run.add_argument(
        "--mqtts-port", type=port_number, help="device MQTT over TLS port (default 8883; 0 = off)"
    )
    run.add_argument(
        "--https-port", type=port_number, help="device HTTPS port (default 8443; 0 = off)"
    )
    run.add_argument(
        "--coap-port", type=port_number, help="device CoAP port, UDP (default 5683; 0 = any free)"
    )
    run.add_argument(
        "--broker",
        metavar="URL",
        help="use an external broker (mqtt://user:pass@host:1883) instead of the managed Mosquitto",
    )
    run.set_defaults(handler=_cmd_run)


def _add_enroll(sub: Any) -> None:
    enroll = sub.add_parser("enroll", help="register this gateway with a cloud (key + identity)")
    enroll.add_argument("--cloud", required=True, metavar="URL", help="e.g. http://cloud:8000")
    enroll.add_argument("--token", required=True, help="from `iotsphere cloud gateway add`")
    enroll.add_argument("--name", help="this gateway's name in the cloud")
    enroll.add_argument(
        "--cafile",
        metavar="FILE",
        help="CA certificate (PEM) to verify an https:// cloud with, kept for later syncs "
        "(default: the system's CAs)",
    )
    enroll.add_argument("--force", action="store_true", help="enroll again with a new key")
    add_common_args(enroll, json_flag=True)
    enroll.set_defaults(handler=_cmd_enroll)


def register(parser: argparse.ArgumentParser) -> None:  # noqa: PLR0915
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_run(sub)

    device = sub.add_parser("device", help="provision, list and revoke devices")
    dsub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    add = dsub.add_parser("add", help="add a device; prints its token once")
    add.add_argument("id")
    add.add_argument("--type", help="device type (declares its metrics)")
    add.add_argument(
        "--oscore",
        action="store_true",
        help="also create an OSCORE (RFC 8613) security context for CoAP POST /telemetry; "
        'prints its parameters once under "oscore" (aiocoap secret.json format)',
    )
    add_common_args(add, json_flag=True)
    add.set_defaults(handler=_cmd_device_add)
    lst = dsub.add_parser("list", help="list devices")
    add_common_args(lst, json_flag=True)
    lst.set_defaults(handler=_cmd_device_list)
    rev = dsub.add_parser("revoke", help="revoke a device and disconnect it")
    rev.add_argument("id")
    add_common_args(rev, json_flag=True)
    rev.set_defaults(handler=_cmd_device_revoke)

    rule = sub.add_parser("rule", help="local alert rules")
    rsub = rule.add_subparsers(dest="rule_command", metavar="ACTION", required=True)
    radd = rsub.add_parser("add", help="add a rule; prints it as JSON")
    radd.add_argument("--metric", required=True)
    radd.add_argument("--op", required=True, choices=[">", ">=", "<", "<=", "==", "!=", "nodata"])
    radd.add_argument("--threshold")
    scope = radd.add_mutually_exclusive_group()
    scope.add_argument("--device", help="only this device")
    scope.add_argument("--type", help="only devices of this type")
    radd.add_argument("--for", dest="for_seconds", type=float, default=0.0, metavar="SECONDS")
    radd.add_argument("--hysteresis", type=float, default=0.0)
    radd.add_argument("--severity", choices=["info", "warning", "critical"], default="warning")
    radd.add_argument("--name")
    add_common_args(radd, json_flag=True)
    radd.set_defaults(handler=_cmd_rule_add)
    rlist = rsub.add_parser("list", help="list rules")
    add_common_args(rlist, json_flag=True)
    rlist.set_defaults(handler=_cmd_rule_list)

    readings = sub.add_parser("readings", help="stored readings, newest first")
    readings.add_argument("--device")
    readings.add_argument("--metric")
    readings.add_argument("--limit", type=positive_int, default=20)
    add_common_args(readings, json_flag=True)
    readings.set_defaults(handler=_cmd_readings)

    alerts = sub.add_parser("alerts", help="local alerts")
    alerts.add_argument("--state", choices=["active", "acknowledged", "resolved"])
    add_common_args(alerts, json_flag=True)
    alerts.set_defaults(handler=_cmd_alerts)

    errors = sub.add_parser("errors", help="rejected messages, newest first")
    errors.add_argument("--limit", type=positive_int, default=20)
    add_common_args(errors, json_flag=True)
    errors.set_defaults(handler=_cmd_errors)

    audit = sub.add_parser("audit", help="authentication failures and lockouts, newest first")
    audit.add_argument("--limit", type=positive_int, default=20)
    add_common_args(audit, json_flag=True)
    audit.set_defaults(handler=_cmd_audit)

    _add_enroll(sub)

    password = sub.add_parser("password", help="the local status page password")
    psub = password.add_subparsers(dest="password_command", metavar="ACTION", required=True)
    pset = psub.add_parser(
        "set",
        help="set it (read from stdin when piped, else prompted twice); works while running",
    )
    add_common_args(pset, json_flag=True)
    pset.set_defaults(handler=_cmd_password_set)

    status = sub.add_parser("status", help="devices, readings, alerts, broker")
    add_common_args(status, json_flag=True)
    status.set_defaults(handler=_cmd_status)
    register_service(sub)
    register_backup(sub)
