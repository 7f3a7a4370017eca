"""edge.security.tls: the gateway's generated certificate, its key's mode, its names and
fingerprint, the installer's own files, and a TLS handshake that verifies against it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from edge.security.tls import TlsError, load_tls, primary_address, subject_names


def test_first_start_generates_a_certificate_kept_across_starts(tmp_path: Path) -> None:
    first = load_tls(tmp_path, "192.168.1.20")
    assert first.generated
    assert stat.S_IMODE(first.key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    assert {"localhost", socket.gethostname()} <= set(dns)
    assert {"127.0.0.1", "192.168.1.20"} <= ips
    assert len(first.fingerprint.split(":")) == 32
    again = load_tls(tmp_path, "192.168.1.20")  # the next start: the same certificate
    assert again.fingerprint == first.fingerprint


def test_a_wildcard_bind_names_the_lan_address_and_a_host_name_is_a_dns_name() -> None:
    dns, ips = subject_names("0.0.0.0")
    assert all(not ipaddress.ip_address(a).is_unspecified for a in ips)
    assert primary_address() in ips or primary_address() is None
    assert f"{socket.gethostname()}.local" in dns
    dns, _ = subject_names("gw.example")
    assert "gw.example" in dns


def test_installer_files_are_used_as_they_are(tmp_path: Path) -> None:
    made = load_tls(tmp_path / "elsewhere", "127.0.0.1")
    own = load_tls(tmp_path / "data", "127.0.0.1", str(made.cert_file), str(made.key_file))
    assert not own.generated and own.fingerprint == made.fingerprint
    assert not (tmp_path / "data" / "tls").exists()
    with pytest.raises(TlsError, match="go together"):
        load_tls(tmp_path, "127.0.0.1", str(made.cert_file), None)
    with pytest.raises(TlsError, match="cannot read"):
        load_tls(tmp_path, "127.0.0.1", str(tmp_path / "nope.crt"), str(made.key_file))


def test_a_client_trusting_the_certificate_completes_a_handshake(tmp_path: Path) -> None:
    tls = load_tls(tmp_path, "127.0.0.1")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with tls.context.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"hi")

        thread = threading.Thread(target=serve)
        thread.start()
        client = ssl.create_default_context(cafile=str(tls.cert_file))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            assert s.recv(2) == b"hi"
        thread.join(5)
