"""`--database` as an operator meets it: a wrong URL, a database that is down at start, one
that a newer release migrated, `cloud migrate` and `cloud copy`'s refusals: one clear line
each, the contract's exit codes (2 usage, 1 runtime), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.cloud.test_cloud_local_admin import one_error_line
from tests.cloud.test_cloud_server import run_cli
from tests.support.postgres import PgCluster


def test_a_wrong_url_is_a_usage_error(tmp_path: Path) -> None:
    for args in (
        ("serve", "--database", "mysql://root@localhost/iot"),
        ("user", "list", "--database", "sqlite:///x.db"),
        ("copy", "--to", "duckdb:///x"),
    ):
        proc = run_cli(*args, data_dir=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "postgresql://" in one_error_line(proc)


def test_workers_need_postgresql(tmp_path: Path) -> None:
    proc = run_cli("serve", "--workers", "2", data_dir=tmp_path)
    assert proc.returncode == 2
    assert "--workers needs --database" in one_error_line(proc)


def test_a_database_down_at_start(tmp_path: Path, pg_cluster: PgCluster) -> None:
    down = f"postgresql://postgres@127.0.0.1:{pg_cluster.port + 1}/iot"  # nothing listens
    for args in (("serve", "--database", down), ("migrate", "--database", down)):
        proc = run_cli(*args, data_dir=tmp_path)
        assert proc.returncode == 1, proc.stderr
        line = one_error_line(proc)
        assert "cannot" in line and "refused" in line and "Traceback" not in proc.stderr


def test_migrate_then_a_newer_schema_is_refused(tmp_path: Path, pg_url: str) -> None:
    proc = run_cli("migrate", "--database", pg_url, "--json", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    versions = json.loads(proc.stdout)
    assert set(versions) == {
        "core", "monitoring", "notify", "security", "sync",
        "change_feed", "alert_detail", "alert_origin",
    }  # fmt: skip
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as a newer release would leave it
        conn.execute("UPDATE schema_versions SET version = version + 1 WHERE component = 'core'")
    for args in (("migrate",), ("serve",), ("user", "list")):
        proc = run_cli(*args, "--database", pg_url, data_dir=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "newer than this release knows" in one_error_line(proc)


def test_copy_refusals(tmp_path: Path, pg_url: str) -> None:
    proc = run_cli("copy", "--to", pg_url, data_dir=tmp_path)  # no embedded cloud here
    assert proc.returncode == 1
    assert "no embedded cloud to copy" in one_error_line(proc)
