"""`iotsphere gateway service install|uninstall` (common/service.py does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import CliError
from common.service import ServiceSide, under
from common.service import register_service as _register

DEFAULT_CONFIG = """\
# IoTSphere gateway configuration, read at every start (`systemctl restart iotsphere-gateway`).
# Written once by `iotsphere gateway service install`, which never overwrites it. Every
# setting, with its default, is documented in edge/app/config.py; uncomment to change one.
# A port below 1024 needs `iotsphere gateway service install` run again (it grants
# CAP_NET_BIND_SERVICE then).

[gateway]
# bind = "0.0.0.0"            # address of the device-facing listeners
# mqtt_port = 1883
# http_port = 8080            # device HTTP ingress and the local status page
# coap_port = 5683
# mqtts_port = 8883           # MQTT over TLS (0 = off); the certificate: DATA/tls/gateway.crt
# https_port = 8443           # HTTPS: ingress and status page (0 = off)
# plain_mqtt = true           # false: only MQTT over TLS
# plain_http = true           # false: only HTTPS
# tls_cert_file = "/etc/iotsphere/gateway.crt"   # the installer's own, with tls_key_file
# tls_key_file = "/etc/iotsphere/gateway.key"
# broker_url = "mqtt://user:pass@host:1883"   # an external broker instead of Mosquitto
# duckdb_memory_limit = "64MB"
# synced_retention_h = 168.0  # synced readings are kept this long (0 = forever)
# unsynced_cap_readings = 20000000

# [lockout]
# max_failures_per_user = 10
# cooldown_s = 300

# [device_types.thermo.metrics.temperature]
# type = "number"
# unit = "°C"
# min = -40
# max = 85
"""


def _privileged(root: Path, config: Path) -> bool:
    """Whether the installed config (read as the gateway will) puts a listener below 1024."""
    from edge.app.config import ConfigError, load_config

    data_dir = under(root, SIDE.data_dir)
    try:
        cfg = load_config(data_dir)
    except ConfigError as exc:
        raise CliError(f"{config}: {exc}") from exc
    ports = (cfg.mqtt_port, cfg.http_port, cfg.coap_port, cfg.mqtts_port, cfg.https_port)
    return any(0 < port < 1024 for port in ports)


SIDE = ServiceSide(
    name="gateway",
    description="IoTSphere edge gateway",
    command=("gateway", "run"),
    config_name="gateway.toml",
    default_config=DEFAULT_CONFIG,
    config_in_data_dir=True,
    privileged_ports=_privileged,
)


def register_service(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _register(sub, SIDE)
