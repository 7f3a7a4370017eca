"""TLS wiring of the running gateway: the certificate (edge.security.tls) for the MQTT front's
TLS port and the HTTPS port, and what status reports about it."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from edge.app.config import GatewayConfig
from edge.security.tls import GatewayTls, TlsError, load_tls

log = logging.getLogger("iotsphere.gateway")


class GatewayTlsError(Exception):
    """The TLS certificate cannot be made or used (one line for the CLI)."""


def gateway_tls(cfg: GatewayConfig) -> GatewayTls | None:
    """The certificate when a TLS port is on (generated on first start), None when none is;
    its SHA-256 fingerprint is logged for the installer to compare."""
    if not (cfg.mqtts_port or cfg.https_port):
        return None
    try:
        tls = load_tls(cfg.data_dir, cfg.bind, cfg.tls_cert_file, cfg.tls_key_file)
    except TlsError as exc:
        raise GatewayTlsError(str(exc)) from exc
    log.info(
        "TLS certificate %s (%s), SHA-256 fingerprint %s",
        tls.cert_file, "generated" if tls.generated else "installer's", tls.fingerprint,
    )  # fmt: skip
    return tls


def tls_port(tls: GatewayTls | None, port: int) -> tuple[int, ssl.SSLContext] | None:
    """A listener's TLS (port, context), None when that port is off."""
    return (port, tls.context) if tls is not None and port else None


def tls_status(tls: GatewayTls | None, mqtts_port: int | None, https_port: int | None) -> Any:
    if tls is None:
        return None
    return {
        "certificate": str(tls.cert_file),
        "generated": tls.generated,
        "fingerprint_sha256": tls.fingerprint,
        "mqtts_port": mqtts_port,
        "https_port": https_port,
    }
