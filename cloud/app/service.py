"""`iotsphere cloud service install|uninstall` (common/service.py does the work)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from common.service import ServiceSide
from common.service import register_service as _register

DEFAULT_CONFIG = """\
# IoTSphere cloud service environment (systemd EnvironmentFile=), read at every start
# (`systemctl restart iotsphere-cloud`). Written once by `iotsphere cloud service install`,
# which never overwrites it. Readable by root and the iotsphere group only: secrets go here.

# Flags added to `iotsphere cloud serve --data-dir /var/lib/iotsphere/cloud`
# (see `iotsphere cloud serve --help`). One process only: the unit is Type=notify, so no
# --workers. A --port below 1024 needs `iotsphere cloud service install` run again.
#IOTSPHERE_ARGS=--bind 127.0.0.1 --port 8000 --retention-days 365

# PostgreSQL instead of the DuckDB file in the data dir
#IOTSPHERE_DATABASE_URL=postgresql://iotsphere@localhost:5432/iotsphere

# The SMTP relay's credentials for email channels (the relay itself: --smtp-host ...)
#IOTSPHERE_SMTP_USERNAME=
#IOTSPHERE_SMTP_PASSWORD=
"""


def _privileged(root: Path, config: Path) -> bool:
    """Whether IOTSPHERE_ARGS in the environment file sets a --port below 1024."""
    args: list[str] = []
    for line in config.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key == "IOTSPHERE_ARGS":
            args = shlex.split(value)
    for i, word in enumerate(args):
        port = word.partition("=")[2] if word.startswith("--port=") else None
        if word == "--port" and i + 1 < len(args):
            port = args[i + 1]
        if port is not None and port.isdigit() and 0 < int(port) < 1024:
            return True
    return False


SIDE = ServiceSide(
    name="cloud",
    description="IoTSphere cloud aggregator",
    command=("cloud", "serve"),
    config_name="cloud.env",
    default_config=DEFAULT_CONFIG,
    config_in_data_dir=False,
    privileged_ports=_privileged,
)


def register_service(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _register(sub, SIDE)
