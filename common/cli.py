"""The `iotsphere` command: a thin dispatcher; each side registers its own subcommands.

Errors reach the user as one line on stderr and an exit code (0 ok, 1 runtime, 2 usage),
never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class _Group:
    module: str  # registers the group's subcommands; imported only when the group is chosen
    help: str
    extra: str  # the pip extra that installs what it needs (pyproject.toml)
    needs: tuple[str, ...]  # top-level modules of that extra, looked up without importing them


_GATEWAY_NEEDS = ("aiomqtt", "paho", "aiocoap", "aiohttp", "duckdb", "argon2", "httpx")
_CLOUD_NEEDS = ("fastapi", "uvicorn", "pydantic", "aiosmtplib", "duckdb", "pyarrow", "argon2")

# Subcommand groups, imported lazily so `iotsphere gateway ...` never loads the cloud.
_GROUPS: dict[str, _Group] = {
    "gateway": _Group("edge.app.cli", "run and administer the edge gateway", "gateway",
                      _GATEWAY_NEEDS),
    "cloud": _Group("cloud.app.cli", "run and administer the cloud aggregator", "cloud",
                    _CLOUD_NEEDS),
    "sim": _Group("firmware_stubs.cli", "simulated devices (mqtt, coap, http)", "gateway",
                  _GATEWAY_NEEDS),
    "demo": _Group("edge.app.demo", "run everything at once on embedded defaults", "all",
                   tuple(dict.fromkeys(_GATEWAY_NEEDS + _CLOUD_NEEDS))),
}  # fmt: skip


class CliError(Exception):
    """A failure to report as one line; exit_code 1 (runtime) or 2 (usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def default_data_dir() -> Path:
    env = os.environ.get("IOTSPHERE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iotsphere"


def add_common_args(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder (default: $IOTSPHERE_DATA_DIR, else ~/.local/share/iotsphere)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print only JSON on stdout")


def port_number(raw: str) -> int:
    """argparse type for --*-port flags."""
    try:
        value = int(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from exc
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("ports are 0-65535")
    return value


def positive_int(raw: str) -> int:
    """argparse type for counts and limits."""
    try:
        value = int(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def data_dir_of(args: argparse.Namespace) -> Path:
    path: Path = args.data_dir or default_data_dir()
    return path


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, separators=(",", ": "), default=str) + "\n")


Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return version("iotsphere")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _missing(group: _Group) -> list[str]:
    """The modules of the group's extra that are not installed (nothing is imported)."""
    return [name for name in group.needs if find_spec(name) is None]


def _not_installed(name: str, group: _Group, missing: list[str]) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        raise CliError(
            f"`iotsphere {name}` needs the '{group.extra}' extra, which is not installed "
            f"(missing: {', '.join(missing)}): pip install 'iotsphere[{group.extra}]'"
        )

    return handler


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for this command line: only the named group's module is imported (the
    gateway process must not load the cloud's, a third of its memory), the others are listed
    by name for --help. A group whose extra is not installed answers every command with one
    line saying which extra to install (exit 1)."""
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="iotsphere", description="IoTSphere edge gateway")
    parser.add_argument("--version", action="version", version=f"iotsphere {_version()}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for name, group in _GROUPS.items():
        missing = _missing(group)
        help_text = group.help
        if missing:
            help_text += f" (not installed: pip install 'iotsphere[{group.extra}]')"
        if name == chosen and missing:
            # no option prefix: every word (--help, --data-dir, ...) lands in `words`, and
            # the command answers with the one line that names the extra
            stub = sub.add_parser(name, help=help_text, prefix_chars="\0", add_help=False)
            stub.add_argument("words", nargs="*")
            stub.set_defaults(handler=_not_installed(name, group, missing))
            continue
        group_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(group.module).register(group_parser)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Library chatter (one line per HTTP request) is noise on a CLI's stderr.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return handler(args)
    except CliError as exc:
        print(f"iotsphere: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last line of defence: one line for the user, details in debug
        logging.getLogger("iotsphere").debug("unhandled error", exc_info=True)
        print(f"iotsphere: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run as `python -m common.cli`: this file is then `__main__`, a second copy of the module;
    # the subcommands raise common.cli.CliError, so dispatch through the real module.
    from common.cli import main as _main

    sys.exit(_main())
