"""`gateway backup` / `gateway restore` and the store's schema version (issue 14, item 5).

A real in-process gateway ingests over HTTP in a loop while `iotsphere gateway backup` (a
subprocess, through the admin API) copies its store; the backup is restored into another data
dir, whose gateway starts with every reading acknowledged before the backup started. Then the
refusals, and the upgrade from a store of the release before schema versions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tarfile
from pathlib import Path

import duckdb
import httpx
import pytest

from edge.admin.backup import write_archive
from edge.app.config import GatewayConfig
from edge.app.gateway import Gateway
from edge.security.tls import fingerprint, generate, tls_dir
from edge.storage.migrations import LATEST, SchemaTooNew
from edge.storage.schema import SCHEMA
from edge.storage.store import GatewayStore
from tests.conftest import THERMO_TOML, cli, local_config, running
from tests.edge.test_gateway_sync import (  # noqa: F401 - stub is a fixture
    StubCloud,
    enroll_directly,
    ingest,
    readings,
    stub,
    sync_config,
)
from tests.support.ports import restartable_port
from tests.support.waiting import until

T0 = 1764300000000


def config_for(data_dir: Path) -> GatewayConfig:
    return local_config(data_dir, restartable_port())


async def ingest_until(
    gw: Gateway, tokens: dict[str, str], acked: list, stop: asyncio.Event
) -> None:  # type: ignore[type-arg]
    """Post readings until stop, appending (device, ts) to acked after each 200 (sent after
    the durable commit)."""
    base = f"http://127.0.0.1:{gw.http_port}/api/v1"
    async with httpx.AsyncClient() as c:
        for i in itertools.count():
            if stop.is_set():
                return
            device = "b1" if i % 2 else "b2"
            ts = T0 + i
            body = json.dumps({"ts": ts, "values": {"temperature": 20 + i % 10}})
            r = await c.post(f"{base}/{tokens[device]}/telemetry", content=body)
            assert r.status_code == 200, r.text
            acked.append((device, ts))


async def test_backup_while_ingesting_then_restore_elsewhere(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    archive = tmp_path / "gw-backup.tar.gz"
    acked: list[tuple[str, int]] = []
    async with running(gateway_config) as gw:
        tokens = {d: (await gw.add_device(d, "thermo"))["token"] for d in ("b1", "b2")}
        await gw.add_device("b3", None, oscore=True)  # an OSCORE context under oscore/
        stop = asyncio.Event()
        loop = asyncio.create_task(ingest_until(gw, tokens, acked, stop))
        await until(lambda: len(acked) >= 200)
        before = set(acked)  # acknowledged, so committed, before the backup started
        proc = await asyncio.to_thread(
            cli, "gateway", "backup", str(archive), data_dir=gateway_config.data_dir
        )
        during = len(acked) - len(before)
        stop.set()
        await loop
    assert during > 0, "nothing was ingested while the backup ran"
    summary = json.loads(proc.stdout)
    assert summary["schema_version"] == LATEST and archive.stat().st_mode & 0o077 == 0
    with tarfile.open(archive) as tar:
        names = {m.name.split("/")[0] for m in tar.getmembers()}
    assert names == {"manifest.json", "gateway.duckdb", "gateway.toml", "oscore"}

    target = tmp_path / "restored"
    restored = cli("gateway", "restore", str(archive), "--json", data_dir=target)
    assert json.loads(restored.stdout)["schema_version"] == LATEST
    assert (target / "gateway.toml").read_text() == THERMO_TOML
    assert any((target / "oscore").iterdir())
    async with running(config_for(target)) as gw2:  # the restored gateway starts
        rows = await gw2.readings(None, None, 100_000)
        stored = {(r["device_id"], r["ts"]) for r in rows}
        assert before <= stored, f"missing: {sorted(before - stored)[:5]}"
        assert stored <= set(acked) and len(rows) == len(stored)  # nothing else, no repeats
        # the devices' tokens work on the restored gateway
        async with httpx.AsyncClient() as c:
            url = f"http://127.0.0.1:{gw2.http_port}/api/v1/{tokens['b1']}/telemetry"
            assert (await c.post(url, content=b'{"temperature": 1}')).status_code == 200


async def test_a_restored_gateway_syncs_with_the_backed_up_identity(
    stub: StubCloud,  # noqa: F811
    gateway_config: GatewayConfig,
    tmp_path: Path,
) -> None:
    gateway_id = enroll_directly(gateway_config.data_dir, stub)
    archive = tmp_path / "enrolled.tar.gz"
    async with running(sync_config(gateway_config)) as gw:
        await ingest(gw, readings(10))
        await until(lambda: len(stub.readings) == 10)
        await asyncio.to_thread(
            cli, "gateway", "backup", str(archive), data_dir=gateway_config.data_dir
        )
    with tarfile.open(archive) as tar:
        assert {"identity.json", "gateway.key"} <= set(tar.getnames())
    target = tmp_path / "restored"
    cli("gateway", "restore", str(archive), data_dir=target)
    later = 1_764_500_000_000
    async with running(sync_config(config_for(target))) as gw2:
        await ingest(gw2, readings(3, start_ts=later))
        # signed with the restored key (the stub verifies each batch against gateway_id's)
        await until(lambda: sum(r.ts >= later for r in stub.readings.values()) == 3)
    assert stub.auth_failures == 0 and set(stub.keys) == {gateway_id}
    assert sorted(stub.readings) == list(range(1, 14))  # the restored gateway went on from 10


def one_line_error(proc: object, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)  # type: ignore[attr-defined]
    err = proc.stderr.strip()  # type: ignore[attr-defined]
    assert "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


async def test_restore_refusals_are_one_line_with_the_contract_exit_codes(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    archive = tmp_path / "b.tar.gz"
    data_dir = gateway_config.data_dir
    async with running(gateway_config):
        await asyncio.to_thread(cli, "gateway", "backup", str(archive), data_dir=data_dir)
        proc = await asyncio.to_thread(
            cli, "gateway", "restore", str(archive), "--force", data_dir=data_dir, check=False
        )
        one_line_error(proc, 1, "running")
    other = tmp_path / "other"
    proc = cli("gateway", "restore", str(archive), data_dir=other)  # a fresh dir: works
    proc = cli("gateway", "restore", str(archive), data_dir=other, check=False)
    one_line_error(proc, 2, "--force")  # an existing store is kept without --force

    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not a backup")
    one_line_error(cli("gateway", "restore", str(junk), data_dir=other, check=False), 2, "not")
    tar_without_manifest = tmp_path / "plain.tar.gz"
    with tarfile.open(tar_without_manifest, "w:gz") as tar:
        tar.add(other / "gateway.toml", arcname="gateway.toml")
    proc = cli("gateway", "restore", str(tar_without_manifest), data_dir=other, check=False)
    one_line_error(proc, 2, "not an iotsphere gateway backup")
    missing = cli("gateway", "restore", str(tmp_path / "nope"), data_dir=other, check=False)
    one_line_error(missing, 2, "no such file")

    newer = tmp_path / "newer.tar.gz"
    write_archive(newer, other / "gateway.duckdb", other, 99)
    proc = cli("gateway", "restore", str(newer), "--force", data_dir=other, check=False)
    one_line_error(proc, 1, "version 99", "newer")


def previous_release_store(path: Path) -> None:
    """The file the release before schema versions wrote: its code path (SCHEMA, then the
    added column), a device and readings, and no version row."""
    con = duckdb.connect(str(path))
    con.execute(SCHEMA)
    con.execute("ALTER TABLE auth_failures ADD COLUMN IF NOT EXISTS seq BIGINT")
    con.execute(
        "INSERT INTO devices VALUES ('old-1', 'thermo', 'lk', 'h', 's', 1000, 'active', 1, NULL,"
        " NULL)"
    )
    con.execute(
        "INSERT INTO readings SELECT i, 'old-1', 'temperature', ?::BIGINT + i, ?::BIGINT + i,"
        " 20.5, NULL, NULL, 0, NULL FROM range(1, 51) t(i)",
        [T0, T0],
    )
    con.execute("INSERT INTO kv VALUES ('sync.readings_seq', '10')")
    con.close()


def test_a_store_from_before_schema_versions_opens_stamped_and_intact(tmp_path: Path) -> None:
    path = tmp_path / "gateway.duckdb"
    previous_release_store(path)
    store = GatewayStore(path)
    try:
        rows = store.readings(limit=1000)
        assert sorted(r["ts"] for r in rows) == [T0 + i for i in range(1, 51)]
        assert [d["device_id"] for d in store.devices()] == ["old-1"]
        assert store.kv_get("sync.readings_seq") == "10" and store.last_seq() == 50
    finally:
        store.close()
    con = duckdb.connect(str(path))
    version = con.execute("SELECT component, version FROM schema_versions").fetchall()
    con.close()
    assert version == [("gateway", 1)]


def test_a_store_of_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gateway.duckdb"
    path.parent.mkdir()
    GatewayStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE schema_versions SET version = 99")
    con.close()
    with pytest.raises(SchemaTooNew, match="version 99, newer than this release knows"):
        GatewayStore(path)
    proc = cli("gateway", "status", data_dir=path.parent, check=False)
    one_line_error(proc, 1, "version 99")
    proc = cli("gateway", "backup", str(tmp_path / "b.tar.gz"), data_dir=path.parent, check=False)
    one_line_error(proc, 1, "version 99")


def test_the_gateway_certificate_survives_backup_and_restore(tmp_path: Path) -> None:
    """Devices trust the gateway's certificate (--cafile): a restored gateway keeps it."""
    data_dir = tmp_path / "site"
    cli("gateway", "device", "add", "d1", data_dir=data_dir)  # a store to back up
    cert, key = tls_dir(data_dir) / "gateway.crt", tls_dir(data_dir) / "gateway.key"
    cert.parent.mkdir()
    generate(cert, key, ["localhost"], ["127.0.0.1"])
    archive = tmp_path / "b.tar.gz"
    cli("gateway", "backup", str(archive), data_dir=data_dir)
    target = tmp_path / "restored"
    cli("gateway", "restore", str(archive), data_dir=target)
    restored = tls_dir(target) / cert.name
    assert fingerprint(restored) == fingerprint(cert)
    assert (tls_dir(target) / key.name).stat().st_mode & 0o077 == 0  # the key stays private
