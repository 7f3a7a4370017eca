"""`iotsphere cloud backup FILE` (issue 14, item 5): consistent while `cloud serve` writes.

A thread registers gateways through the running server's local admin API while the backup
runs; the archive's store, unpacked, holds every gateway registered before the backup started.
"""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path

import duckdb
import httpx

from tests.cloud.test_cloud_local_admin import GATEWAYS, one_error_line, serving
from tests.cloud.test_cloud_server import run_cli


def add_gateways(base: str, auth: dict[str, str], done: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        i = 0
        while not stop.is_set():
            name = f"gw-{i}"
            assert http.post(GATEWAYS, json={"name": name}).status_code == 201
            done.append(name)  # committed before the answer
            i += 1


def gateway_names(archive: Path, into: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    con = duckdb.connect(str(into / "cloud.duckdb"), read_only=True)
    try:
        return {row[0] for row in con.execute("SELECT name FROM gateways").fetchall()}
    finally:
        con.close()


def test_cloud_backup_while_serving_and_stopped(tmp_path: Path) -> None:
    data, archive = tmp_path / "data", tmp_path / "cloud-backup.tar.gz"
    done: list[str] = []
    with serving(data, tmp_path / "cloud.log") as server:
        stop = threading.Event()
        writer = threading.Thread(
            target=add_gateways, args=(server.base, server.auth(), done, stop)
        )
        writer.start()
        try:
            while len(done) < 20 and writer.is_alive():
                stop.wait(0.02)
            before = set(done)
            proc = run_cli("backup", str(archive), "--json", data_dir=data)
            during = len(done) - len(before)
        finally:
            stop.set()
            writer.join(30)
    assert proc.returncode == 0, proc.stderr
    assert during > 0, "no gateway was added while the backup ran"
    manifest = json.loads(proc.stdout)
    assert manifest["files"] == ["cloud.duckdb", "cloud_jwt.key"]
    assert manifest["schema_versions"]["core"] >= 1 and archive.stat().st_mode & 0o077 == 0
    names = gateway_names(archive, tmp_path / "restored")
    assert before <= names <= set(done)
    assert (tmp_path / "restored" / "cloud_jwt.key").read_bytes() == (
        data / "cloud_jwt.key"
    ).read_bytes()
    assert not list((data / "run").glob("snapshot-*"))  # the copy was removed

    # stopped: the CLI copies the file itself, with every gateway
    stopped = run_cli("backup", str(archive), data_dir=data)
    assert stopped.returncode == 0, stopped.stderr
    assert gateway_names(archive, tmp_path / "stopped") == set(done)


def test_cloud_backup_refusals_are_one_line(tmp_path: Path) -> None:
    pg = run_cli("backup", str(tmp_path / "b.tgz"), "--database", "postgresql://u@h/db",
                 data_dir=tmp_path)  # fmt: skip
    assert pg.returncode == 2 and "pg_dump" in one_error_line(pg)
    empty = run_cli("backup", str(tmp_path / "b.tgz"), data_dir=tmp_path / "none")
    assert empty.returncode == 2 and "no cloud store" in one_error_line(empty)
