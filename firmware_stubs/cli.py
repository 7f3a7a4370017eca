"""`iotsphere sim ...`: simulated devices. One subcommand per protocol (mqtt now; coap and
http slot in beside it and share the fleet arguments defined here)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from common.cli import CliError, add_common_args, print_json
from firmware_stubs.mqtt_sim import (
    METRIC_NAME,
    DeviceCredentials,
    SimConfig,
    SimConfigError,
    load_credentials,
    run_simulation,
)

if TYPE_CHECKING:
    from firmware_stubs.request_sim import RequestSimConfig

T = TypeVar("T")
RC = TypeVar("RC", bound="RequestSimConfig")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_protocol", metavar="PROTOCOL", required=True)
    mqtt = sub.add_parser(
        "mqtt",
        help="MQTT sensors, one connection per device",
        description=(
            "Simulate MQTT sensors: each device connects with its own id and token, publishes "
            "to devices/{id}/telemetry, reconnects with backoff and resends what the broker "
            "did not acknowledge. Stops after --count messages per device, or on Ctrl-C."
        ),
    )
    _add_fleet_args(mqtt)
    _add_mqtt_args(mqtt)
    add_common_args(mqtt, json_flag=True)
    mqtt.set_defaults(handler=_run_mqtt)
    coap = sub.add_parser(
        "coap",
        help="CoAP sensors, one UDP socket per device",
        description=(
            "Simulate CoAP sensors: each device POSTs to /api/v1/{token}/telemetry, "
            "retransmits confirmable requests like firmware (same message id) and sends "
            "readings again that got no answer. Stops after --count readings per device."
        ),
    )
    _add_fleet_args(coap, source_required=False)  # --oscore FILE names the device too
    _add_coap_args(coap)
    add_common_args(coap, json_flag=True)
    coap.set_defaults(handler=_run_coap)
    http = sub.add_parser(
        "http",
        help="HTTP sensors, one keep-alive connection per device",
        description=(
            "Simulate HTTP sensors: each device POSTs to /api/v1/{token}/telemetry on the "
            "gateway's HTTP port and sends readings again that got no answer, a 5xx or a 429 "
            "(after Retry-After). Stops after --count readings per device."
        ),
    )
    _add_fleet_args(http)
    _add_http_args(http)
    add_common_args(http, json_flag=True)
    http.set_defaults(handler=_run_http)


# --------------------------------------------------------------------------- argument types


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _int_at_least(minimum: int) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse shows it in errors
    return parse  # type: ignore[return-value]


def _port(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return value


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("at least one metric is needed")
    for name in names:
        if not METRIC_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(f"invalid metric name {name!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a metric is listed twice")
    return names


# --------------------------------------------------------------------------- arguments


def _add_fleet_args(parser: argparse.ArgumentParser, *, source_required: bool = True) -> None:
    """Which devices, how fast, what they send: the same for every protocol."""
    who = parser.add_argument_group("devices")
    source = who.add_mutually_exclusive_group(required=source_required)
    source.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help='JSON array of {"device_id", "token"} objects (what `gateway device add` prints)',
    )
    source.add_argument("--device", metavar="ID", help="simulate this one device (needs --token)")
    who.add_argument("--token", metavar="T", help="the token of --device")
    who.add_argument(
        "--devices",
        type=_int_at_least(1),
        metavar="N",
        help="use the first N entries of the credentials file (default: all)",
    )
    what = parser.add_argument_group("traffic")
    what.add_argument(
        "--rate",
        type=_positive_float,
        default=1.0,
        metavar="R",
        help="messages per second per device (default: 1)",
    )
    what.add_argument(
        "--count",
        type=_int_at_least(0),
        default=10,
        metavar="C",
        help="messages per device; 0 = until Ctrl-C (default: 10)",
    )
    what.add_argument(
        "--metrics",
        type=_metric_list,
        default=("temperature", "humidity"),
        metavar="M1,M2",
        help="comma-separated metric names (default: temperature,humidity)",
    )
    what.add_argument(
        "--malformed-every",
        type=_int_at_least(0),
        default=0,
        metavar="K",
        help="every K-th message is malformed JSON (default: 0 = never)",
    )
    what.add_argument(
        "--no-clock",
        action="store_true",
        help="send flat objects without ts or seq, like a device without a clock",
    )
    what.add_argument(
        "--saturate",
        action="store_true",
        help="benchmarks: publish as fast as PUBACKs come back (closed loop; --rate ignored)",
    )
    what.add_argument(
        "--wrong-password",
        action="store_true",
        help="connect with a wrong token and expect refusal (exit 1 if any device gets in)",
    )


def _add_mqtt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MQTT")
    group.add_argument("--host", default="127.0.0.1", help="broker host (default: 127.0.0.1)")
    group.add_argument("--port", type=_port, default=1883, help="broker port (default: 1883)")
    group.add_argument("--qos", type=int, choices=(0, 1), default=1, help="(default: 1)")
    group.add_argument(
        "--protocol", type=int, choices=(5, 311), default=5, help="MQTT version (default: 5)"
    )
    group.add_argument(
        "--inflight",
        type=_int_at_least(1),
        default=20,
        metavar="N",
        help="unacknowledged QoS 1 messages per connection (default: 20)",
    )
    group.add_argument(
        "--backoff",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="first reconnect delay; doubles per failure up to 30 s, with jitter (default: 0.5)",
    )
    group.add_argument(
        "--acked-log",
        type=Path,
        metavar="FILE",
        help='append "device_id seq ts_ms" per PUBACKed message, flushed line by line',
    )


def _add_coap_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CoAP")
    group.add_argument("--host", default="127.0.0.1", help="gateway host (default: 127.0.0.1)")
    group.add_argument("--port", type=_port, default=5683, help="gateway port (default: 5683)")
    kind = group.add_mutually_exclusive_group()
    kind.add_argument(
        "--con",
        dest="confirmable",
        action="store_true",
        default=True,
        help="confirmable requests (default)",
    )
    kind.add_argument(
        "--non", dest="confirmable", action="store_false", help="non-confirmable requests"
    )
    group.add_argument(
        "--format",
        choices=("json", "senml", "senml-cbor", "cbor"),
        default="json",
        help="payload format (default: json)",
    )
    group.add_argument(
        "--inflight",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="outstanding requests per device (default: 1)",
    )
    group.add_argument("--malformed", action="store_true", help="every payload is malformed")
    group.add_argument(
        "--bad-token",
        action="store_true",
        help="use a wrong token and expect refusal (exit 1 if any is accepted)",
    )
    group.add_argument(
        "--ack-timeout",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="first retransmission timeout (RFC 7252 ACK_TIMEOUT; default: 2)",
    )
    group.add_argument(
        "--acked-log",
        type=Path,
        metavar="FILE",
        help='append "device_id seq ts_ms" per reading answered 2.04',
    )
    group.add_argument(
        "--oscore",
        type=Path,
        metavar="CONTEXT.json",
        help="one OSCORE device: POST /telemetry protected with the context "
        "`gateway device add ID --oscore` printed (saved to this file); its "
        "sequence numbers are kept in CONTEXT.json.state/",
    )


def _add_http_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HTTP")
    group.add_argument("--host", default="127.0.0.1", help="gateway host (default: 127.0.0.1)")
    group.add_argument("--port", type=_port, default=8080, help="gateway port (default: 8080)")
    group.add_argument(
        "--format",
        choices=("json", "senml", "senml-cbor", "cbor"),
        default="json",
        help="payload format (default: json)",
    )
    group.add_argument("--malformed", action="store_true", help="every payload is malformed")
    group.add_argument(
        "--bad-token",
        action="store_true",
        help="use a wrong token and expect refusal (exit 1 if any is accepted)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="per request (default: 10)",
    )
    group.add_argument(
        "--acked-log",
        type=Path,
        metavar="FILE",
        help='append "device_id seq ts_ms" per reading answered 200',
    )


# --------------------------------------------------------------------------- running


def _devices_of(args: argparse.Namespace) -> tuple[DeviceCredentials, ...]:
    if args.device is not None:
        if not args.token:
            raise CliError("--device needs --token", exit_code=2)
        if args.devices not in (None, 1):
            raise CliError("--devices needs --credentials", exit_code=2)
        return (DeviceCredentials(args.device, args.token),)
    if args.token is not None:
        raise CliError("--token goes with --device, not --credentials", exit_code=2)
    return load_credentials(args.credentials, args.devices)


def _mqtt_config(args: argparse.Namespace) -> SimConfig:
    try:
        return SimConfig(
            devices=_devices_of(args),
            host=args.host,
            port=args.port,
            rate=args.rate,
            count=args.count,
            qos=args.qos,
            protocol=args.protocol,
            metrics=args.metrics,
            malformed_every=args.malformed_every,
            wrong_password=args.wrong_password,
            no_clock=args.no_clock,
            saturate=args.saturate,
            acked_log=args.acked_log,
            max_inflight=args.inflight,
            backoff_initial=args.backoff,
            backoff_max=max(30.0, args.backoff),
        )
    except SimConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None


def _request_sim_config(
    config_type: type[RC],
    args: argparse.Namespace,
    devices: tuple[DeviceCredentials, ...] | None,
    bad_token: bool,
    **own: Any,
) -> RC:
    """A CoAP or HTTP simulator's config: the fleet and payload flags they share, and the
    protocol's own fields (`own`). devices None: from --credentials/--device, where a file that
    will not do is a usage error, as a config the simulator refuses is."""
    try:
        return config_type(
            devices=_devices_of(args) if devices is None else devices,
            host=args.host,
            port=args.port,
            rate=args.rate,
            count=args.count,
            metrics=args.metrics,
            fmt=args.format,
            malformed_every=1 if args.malformed else args.malformed_every,
            bad_token=bad_token,
            saturate=args.saturate,
            no_clock=args.no_clock,
            acked_log=args.acked_log,
            **own,
        )
    except (config_type.error, SimConfigError) as exc:
        raise CliError(str(exc), exit_code=2) from None


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop sampling and drain; a second SIGINT: stop at once."""
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            main_task.cancel()
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signal support: Ctrl-C ends the process
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _run_until_stopped(simulate: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run one simulation to its end, or until SIGINT/SIGTERM sets the stop event it is given
    (see _stop_on_signals); the errors a simulation can end with become CLI errors."""

    async def main() -> T:
        stop = asyncio.Event()
        with _stop_on_signals(asyncio.get_running_loop(), stop):
            return await simulate(stop)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None  # second Ctrl-C: common.cli exits 130
    except OSError as exc:  # e.g. the acked log cannot be opened
        raise CliError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def _report_answers(
    args: argparse.Namespace, stats: dict[str, object], *, bad_token: bool, accepted: str
) -> int:
    """Print a request-per-reading simulator's figures (CoAP, HTTP); with a wrong token, any
    request answered `accepted` is an error."""
    if args.json:
        print_json(stats)
    else:
        print(", ".join(f"{k} {v}" for k, v in stats.items()))
    sys.stdout.flush()
    answers = stats["answers"]
    assert isinstance(answers, dict)
    if bad_token and answers.get(accepted):
        raise CliError(f"{answers[accepted]} requests were accepted with a wrong token")
    return 0


def _run_mqtt(args: argparse.Namespace) -> int:
    config = _mqtt_config(args)
    stats = _run_until_stopped(lambda stop: run_simulation(config, stop=stop))
    if args.json:
        print_json(stats.to_dict())
    else:
        print(
            f"devices {stats.devices}, sent {stats.sent}, acked {stats.acked}, "
            f"refused {stats.refused}, reconnects {stats.reconnects}, errors {stats.errors}, "
            f"resent {stats.resent}, unacked {stats.unacked}, in {stats.elapsed_s:.2f} s"
        )
    sys.stdout.flush()
    if config.wrong_password:
        accepted = stats.devices - stats.refused
        if accepted:
            raise CliError(f"{accepted} of {stats.devices} devices got in with a wrong password")
    elif stats.refused:
        names = ", ".join(stats.refused_devices[:5]) + (", ..." if stats.refused > 5 else "")
        raise CliError(f"credentials refused for {stats.refused} devices: {names}")
    return 0


def _run_coap(args: argparse.Namespace) -> int:
    from firmware_stubs.coap_oscore_sim import load_oscore_device, run_oscore_simulation
    from firmware_stubs.coap_sim import CoapSimConfig, CoapSimStats, run_coap_simulation

    bad_token = args.bad_token or args.wrong_password
    oscore_dir: Path | None = None
    if args.oscore is not None:
        from firmware_stubs.oscore_device import OscoreDeviceError

        if args.credentials or args.device or args.token or bad_token:
            raise CliError("--oscore names the device: no --credentials/--device/--token", 2)
        try:
            device, oscore_dir = load_oscore_device(args.oscore)
        except (OscoreDeviceError, OSError) as exc:
            raise CliError(str(exc), exit_code=2) from None
        devices: tuple[DeviceCredentials, ...] = (device,)
    elif args.credentials is None and args.device is None:
        raise CliError("one of --credentials, --device or --oscore is required", exit_code=2)
    else:
        devices = _devices_of(args)
    config = _request_sim_config(
        CoapSimConfig,
        args,
        devices,
        bad_token,
        confirmable=args.confirmable,
        inflight=args.inflight,
        ack_timeout_s=args.ack_timeout,
    )

    async def simulate(stop: asyncio.Event) -> CoapSimStats:
        if oscore_dir is not None:
            return await run_oscore_simulation(config, oscore_dir, stop=stop)
        return await run_coap_simulation(config, stop=stop)

    stats = _run_until_stopped(simulate)
    return _report_answers(args, stats.to_dict(), bad_token=bad_token, accepted="2.04")


def _run_http(args: argparse.Namespace) -> int:
    from firmware_stubs.http_sim import HttpSimConfig, run_http_simulation

    bad_token = args.bad_token or args.wrong_password
    config = _request_sim_config(HttpSimConfig, args, None, bad_token, timeout_s=args.timeout)

    stats = _run_until_stopped(lambda stop: run_http_simulation(config, stop=stop))
    return _report_answers(args, stats.to_dict(), bad_token=bad_token, accepted="200")
