"""The private PostgreSQL of tests/support/postgres.py: it starts (as the `postgres` OS user
when we are root), answers, hands out fresh empty databases, goes down for real on stop(),
comes back on start(), and leaves no process and no directory behind."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO
from tests.support.postgres import PgCluster, process_alive, reap_orphans, running_cluster


def test_the_cluster_answers_a_query(pg_cluster: PgCluster) -> None:
    with psycopg.connect(pg_cluster.url(), connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_setting('fsync')").fetchone()
    assert row == ("postgres", "on")  # durability defaults kept


def test_the_server_never_runs_as_root(pg_cluster: PgCluster) -> None:
    pid = pg_cluster.postmaster_pid()
    assert pid is not None
    owner = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    assert owner != "root"
    if os.geteuid() == 0:
        assert owner == "postgres"


def test_a_fresh_database_is_empty_and_separate(pg_cluster: PgCluster, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE leftover (x int)")
    other = pg_cluster.fresh_database()
    try:
        assert other != pg_url
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('leftover')").fetchone() == (None,)
    finally:
        pg_cluster.drop_database(other)


def test_stop_is_a_real_outage_and_start_ends_it(pg_cluster: PgCluster, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    pg_cluster.stop()
    assert not pg_cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, connect_timeout=2).close()
    pg_cluster.start()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]  # same port, same data


def test_an_open_connection_fails_when_the_server_stops(pg_cluster: PgCluster) -> None:
    conn = psycopg.connect(pg_cluster.url(), autocommit=True)
    try:
        pg_cluster.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
        pg_cluster.start()


def test_destroy_leaves_no_process_and_no_directory() -> None:
    with running_cluster() as cluster:
        pid = cluster.postmaster_pid()
        assert pid is not None
        with psycopg.connect(cluster.url()) as conn:  # a client still connected at the end
            conn.execute("SELECT 1")
            root = cluster.root
    assert not process_alive(pid)
    assert not root.exists()


def test_destroy_on_an_error_in_the_block() -> None:
    with pytest.raises(ZeroDivisionError), running_cluster() as cluster:
        pid = cluster.postmaster_pid()
        _ = 1 / 0
    assert pid is not None and not process_alive(pid)
    assert not cluster.root.exists()


def test_a_cluster_left_by_a_killed_run_is_reaped() -> None:
    script = (
        "import os, signal\n"
        "from tests.support.postgres import PgCluster\n"
        "c = PgCluster().create()\n"
        "c.start()\n"
        "print(c.root, c.postmaster_pid(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root, pid = proc.stdout.split()
    assert process_alive(int(pid))  # the postmaster outlived its test process
    reap_orphans()
    assert not process_alive(int(pid))
    assert not Path(root).exists()
