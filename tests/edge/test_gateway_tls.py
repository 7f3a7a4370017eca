"""TLS on the gateway (issue 14, item 3): MQTT over TLS and HTTPS in front of the same front and
app, the plain ports switched off, and the sync client verifying the cloud's certificate.

Real sockets on free loopback ports: Mosquitto's own mosquitto_pub against an in-process
gateway, httpx for HTTPS, and `iotsphere cloud serve --tls-cert` for the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from common.gateway_auth import RequestSigner, load_private_key
from edge.app.config import GatewayConfig
from edge.app.gateway import Gateway
from edge.security.tls import load_tls
from edge.sync.cloud_client import CloudClient, CloudUnreachable
from edge.sync.identity import key_path
from tests.conftest import IOTSPHERE, REPO, cli, running
from tests.support.ports import free_port
from tests.support.waiting import until, wait_for

pytestmark = pytest.mark.timeout(120)


def tls_config(cfg: GatewayConfig) -> GatewayConfig:
    """Only TLS ports: the plain MQTT and HTTP listeners off."""
    return replace(
        cfg, mqtts_port=free_port(), https_port=free_port(), plain_mqtt=False, plain_http=False
    )


async def mosquitto_pub(port: int, token: str, device: str, *tls: str) -> int:
    """mosquitto_pub's exit code (run without blocking the gateway in this process)."""
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", device, "-P", token,
        "-t", f"devices/{device}/telemetry", "-m", '{"temperature": 21.5}', "-q", "1", *tls,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 30)


async def test_mqtt_over_tls_with_the_gateway_cert_is_stored_and_nothing_else_gets_in(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    cfg = tls_config(gateway_config)
    wrong_ca = load_tls(tmp_path / "other", "127.0.0.1").cert_file
    async with running(cfg) as gw:
        assert gw.tls is not None and gw.mqtts_port == cfg.mqtts_port
        cert = str(gw.tls.cert_file)
        token = (await gw.add_device("t1", "thermo"))["token"]
        assert await mosquitto_pub(cfg.mqtts_port, token, "t1", "--cafile", cert) == 0
        assert len(await gw.readings("t1", None, 10)) == 1  # PUBACK came after the commit
        # a device that does not trust this certificate: the handshake fails, nothing stored
        assert await mosquitto_pub(cfg.mqtts_port, token, "t1", "--cafile", str(wrong_ca)) != 0
        # the plain port is off: nothing listens there
        assert await mosquitto_pub(cfg.mqtt_port, token, "t1") != 0
        assert len(await gw.readings("t1", None, 10)) == 1
        status = await gw.status()
        assert status["tls"]["fingerprint_sha256"] == gw.tls.fingerprint
        mqtt = status["connections"]["mqtt"]  # the same listener, the same caps and counts
        assert mqtt["accepted"] >= 2 and mqtt["tls_handshake_failures"] >= 1


async def test_https_ingress_with_the_gateway_cert_is_stored_a_wrong_ca_refused(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    cfg = tls_config(gateway_config)
    wrong_ca = ssl.create_default_context(
        cafile=str(load_tls(tmp_path / "other", "127.0.0.1").cert_file)
    )
    async with running(cfg) as gw:
        assert gw.tls is not None and gw.http_port is None  # plain HTTP off
        token = (await gw.add_device("h1", "thermo"))["token"]
        url = f"https://127.0.0.1:{gw.https_port}/api/v1/{token}/telemetry"
        trusted = ssl.create_default_context(cafile=str(gw.tls.cert_file))
        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            resp = await client.post(url, json={"temperature": 20.5})
            assert resp.status_code == 200, resp.text
            # /healthz and the status page are on the HTTPS port too; the page shows the
            # certificate's fingerprint, and its login cookie is Secure
            base = f"https://127.0.0.1:{gw.https_port}"
            assert (await client.get(f"{base}/healthz")).is_success
            done = await asyncio.to_thread(
                cli, "gateway", "password", "set", data_dir=cfg.data_dir, input="a-password\n"
            )
            assert done.returncode == 0
            login = await client.post(
                f"{base}/login", data={"password": "a-password"}, headers={"Origin": base}
            )
            assert login.status_code == 303 and "Secure" in login.headers["set-cookie"]
            assert gw.tls.fingerprint in (await client.get(f"{base}/")).text
        async with httpx.AsyncClient(verify=wrong_ca, timeout=10) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(url, json={"temperature": 30.5})
        with pytest.raises(httpx.ConnectError):  # nothing on the plain port
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(f"http://127.0.0.1:{cfg.http_port or 1}/", json={})
        assert [r["value"] for r in await gw.readings("h1", None, 10)] == [20.5]


@contextlib.contextmanager
def cloud_serving_tls(data_dir: Path, cert: Path, key: Path) -> Iterator[str]:
    """`iotsphere cloud serve --tls-cert --tls-key` on a free port; yields its https:// URL."""
    port = free_port()
    log = data_dir.parent / "cloud.log"
    proc = subprocess.Popen(
        [*IOTSPHERE, "cloud", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or "cloud ready on https://" in log.read_text(),
            "cloud serve --tls-cert",
        )
        assert proc.poll() is None, log.read_text()
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_sync_verifies_the_cloud_with_the_ca_given_at_enrollment(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    cloud_dir = tmp_path / "cloud"
    cloud_tls = load_tls(tmp_path / "cloud-cert", "127.0.0.1")  # the cloud's own certificate
    added = cli("cloud", "gateway", "add", "site-1", data_dir=cloud_dir)
    enrollment = json.loads(added.stdout)["enrollment_token"]
    data_dir = gateway_config.data_dir
    with cloud_serving_tls(cloud_dir, cloud_tls.cert_file, cloud_tls.key_file) as url:
        enroll = ("gateway", "enroll", "--cloud", url, "--token", enrollment)
        refused = cli(*enroll, data_dir=data_dir, check=False)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "not trusted" in refused.stderr
        assert "--cafile" in refused.stderr
        cli(*enroll, "--cafile", str(cloud_tls.cert_file), data_dir=data_dir)
        # the cloud's admin CLI reaches the running HTTPS server too (its local admin API)
        second = cli("cloud", "gateway", "add", "site-2", data_dir=cloud_dir)
        assert json.loads(second.stdout)["enrollment_token"]
        asyncio.run(sync_one_reading(gateway_config, url))


async def sync_one_reading(cfg: GatewayConfig, url: str) -> None:
    async with running(cfg) as gw:
        token = (await gw.add_device("s1", "thermo"))["token"]
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(
                f"http://127.0.0.1:{gw.http_port}/api/v1/{token}/telemetry", json={"temperature": 1}
            )
            assert resp.status_code == 200
        # synced: the CA kept at enrollment verifies the cloud
        await until(lambda: gw.status_now()["sync"]["last_success_at"], 30)
        assert gw.status_now()["sync"]["last_error"] is None
        # without it, the system's CAs refuse the cloud's self-signed certificate, in one line
        assert gw.sync_stats is not None
        signer_less = CloudClient(url, gw_signer(gw), 5)
        try:
            with pytest.raises(CloudUnreachable, match="not trusted") as err:
                await signer_less.fetch_config(0)
            assert "\n" not in str(err.value)
        finally:
            await signer_less.aclose()


def gw_signer(gw: Gateway) -> RequestSigner:

    assert gw.sync_stats is not None
    key = load_private_key(key_path(gw.cfg.data_dir))
    return RequestSigner(gw.sync_stats.gateway_id, key, gw.clock)
