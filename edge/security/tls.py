"""The gateway's TLS certificate: generated on first start, or the installer's own.

Generated: a self-signed ECDSA P-256 certificate (10 years) in DATA/tls/gateway.crt with its
key in DATA/tls/gateway.key (mode 0600), SANs for the hostname, `localhost`, 127.0.0.1, ::1
and the bind address (when it is a specific one). Devices trust it with `--cafile gateway.crt`
(it is its own CA); an installer compares its SHA-256 fingerprint with the one the gateway
logs at start and shows on its status page. Installer-provided: gateway.toml `tls_cert_file`
and `tls_key_file`, used as they are (never overwritten).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic_file import write_atomic

CERT_FILE = "gateway.crt"
KEY_FILE = "gateway.key"
VALID_DAYS = 3650
# Its own CA (devices pass it as --cafile), so it may sign itself; strict verifiers (Python
# 3.13's default, OpenSSL's X509_STRICT) also want the key identifiers added below.
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


class TlsError(Exception):
    """A certificate or key that cannot be read, written or used (one line for the user)."""


@dataclass(frozen=True, slots=True)
class GatewayTls:
    cert_file: Path
    key_file: Path
    fingerprint: str  # SHA-256 of the certificate (DER), "AB:CD:..."
    generated: bool  # False: the installer's own files
    context: ssl.SSLContext


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def subject_names(bind: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the generated certificate names: the host name (also as
    mDNS NAME.local), localhost, loopback, the bind address, and with a wildcard bind the LAN
    address the host has now (devices often connect by address)."""
    host = socket.gethostname()
    dns = sorted({host, f"{host}.local", "localhost"} - {"", ".local"})
    ips = ["127.0.0.1", "::1"]
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        if bind and bind not in dns:
            dns.append(bind)  # a host name to bind to
    else:
        lan = primary_address() if addr.is_unspecified else str(addr)
        if lan is not None and lan not in ips:
            ips.append(lan)
    return dns, ips


def primary_address() -> str | None:
    """The address of the interface the default route leaves by (no packet is sent: a UDP
    socket's connect only picks the route); None without one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
            return str(s.getsockname()[0])
    except OSError:
        return None


def generate(cert_file: Path, key_file: Path, dns: list[str], ips: list[str]) -> None:
    """A new self-signed certificate and key (the key written 0600 before anything else)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"IoTSphere gateway {dns[0]}")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(key_file, key_pem, 0o600)
    write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def fingerprint(cert_file: Path) -> str:
    """SHA-256 of the certificate's DER bytes, as `openssl x509 -fingerprint -sha256` prints."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the TLS certificate {cert_file}: {exc}") from exc
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"cannot use the TLS certificate {cert_file} with {key_file}: {exc}"
        ) from exc
    return ctx


def load_tls(
    data_dir: Path, bind: str, cert_file: str | None = None, key_file: str | None = None
) -> GatewayTls:
    """The installer's certificate when given, else the generated one (made on first use)."""
    if (cert_file is None) != (key_file is None):
        raise TlsError("tls_cert_file and tls_key_file go together: set both or neither")
    generated = cert_file is None
    if cert_file is not None and key_file is not None:
        cert, key = Path(cert_file), Path(key_file)
    else:
        cert, key = tls_dir(data_dir) / CERT_FILE, tls_dir(data_dir) / KEY_FILE
        if not (cert.exists() and key.exists()):
            try:
                generate(cert, key, *subject_names(bind))
            except OSError as exc:
                raise TlsError(f"cannot write the TLS certificate in {cert.parent}: {exc}") from exc
    return GatewayTls(cert, key, fingerprint(cert), generated, server_context(cert, key))
