"""A private, throwaway PostgreSQL for tests and benchmarks: Debian's binaries, a cluster in a
temporary directory, a loopback port, removed afterwards.

PostgreSQL refuses to run as root (initdb and pg_ctl exit at once), and CI runs as root. So
when we are root, every server-side command runs as the `postgres` OS user (subprocess's
`user=`/`group=`: a setuid in the forked child, no sudo) and the temporary directory is given
to that user. As anyone else they run as the current user. Tests connect over TCP to
127.0.0.1 as the superuser `postgres`, with trust authentication (loopback only).
pytest-postgresql was not used: it runs pg_ctl as the current user and has no option for
another one (its issues #341 and #455, closed), so under root it cannot start.

Durability stays at the defaults (fsync, synchronous_commit, full_page_writes on): tests of
outages and benchmarks must see what production sees. Only start-up cost is tuned: a small
shared_buffers, 100 connections, initdb --no-sync (the freshly initialised files are not
flushed; a crash of the test host would lose a cluster that is thrown away anyway).

Fixtures (registered by tests/conftest.py through `pytest_plugins`):
- `pg_cluster` (session): started once, stopped and removed at the end, also on failure;
  `stop()` and `start()` are a real outage (the postmaster exits; the port stays ours).
- `pg_url` (function): `postgresql://postgres@127.0.0.1:PORT/dbname` of a fresh, empty
  database, a copy of an empty template (`CREATE DATABASE ... TEMPLATE`), dropped afterwards.

A run killed before its finalizers (SIGKILL) leaves its cluster behind: the next `PgCluster`
stops and removes any cluster whose owning process is gone (`reap_orphans`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.ports import restartable_port

PREFIX = "iotsphere-pg-"
SUPERUSER = "postgres"
TEMPLATE = "iotsphere_empty"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "16MB",
    "dynamic_shared_memory_type": "posix",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "'UTC'",
}


# IOTSPHERE_TEST_PG_PRELOAD=timescaledb: every private cluster preloads TimescaleDB, so the
# cloud's PostgreSQL tests run on its layout (cloud.storage.pg_timescale; the extension must be
# installed). Its background jobs stay off: a policy refreshing buckets mid-test would make the
# tests depend on timing; tests/cloud/test_cloud_timescale.py refreshes and compresses by hand.
def timescaledb_installed() -> bool:
    """Whether this machine's PostgreSQL has the TimescaleDB extension to preload."""
    return bool(glob.glob("/usr/share/postgresql/*/extension/timescaledb.control"))


TIMESCALE = {
    "shared_preload_libraries": "'timescaledb'",
    "timescaledb.telemetry_level": "off",
    "timescaledb.max_background_workers": "0",
}


class PgError(RuntimeError):
    """The private cluster could not be created, started or stopped (with the server log)."""


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory ($IOTSPHERE_PG_BIN overrides)."""
    if env := os.environ.get("IOTSPHERE_PG_BIN"):
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        if (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    raise PgError(
        "no PostgreSQL server binaries (initdb) found: install Debian's `postgresql` "
        "(./dev.sh setup does) or set IOTSPHERE_PG_BIN"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: `postgres` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PgError("running as root but there is no `postgres` OS user to run as") from exc


def process_alive(pid: int) -> bool:
    """Whether pid is a live process; a zombie is not (the postmaster's parent is PID 1 after
    pg_ctl exits, and a container's PID 1 may reap it only later)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


class PgCluster:
    """One cluster: `create()` (initdb) then `start()`/`stop()` any number of times, then
    `destroy()` (stop at once and remove the directory). Not thread-safe."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.bin_dir = find_bin_dir()
        preload = os.environ.get("IOTSPHERE_TEST_PG_PRELOAD") == "timescaledb"
        self.settings = {**SETTINGS, **(TIMESCALE if preload else {}), **(settings or {})}
        self.port = port if port is not None else restartable_port()
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self._as = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        (self.root / "owner.pid").write_text(str(os.getpid()))
        if self._as is not None:
            os.chown(self.root, self._as.pw_uid, self._as.pw_gid)
        self._names = itertools.count(1)
        self._template_ready = False
        atexit.register(self.destroy)

    # -- lifecycle ------------------------------------------------------------------------

    def create(self) -> PgCluster:
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        conf = self.data / "postgresql.conf"
        lines = [f"{k} = {v}" for k, v in self.settings.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self.root}'"]
        with conf.open("a") as f:  # as root we may write the postgres-owned file
            f.write("\n# tests/support/postgres.py\n" + "\n".join(lines) + "\n")
        return self

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout_s)),
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster (fast: connections are ended, a shutdown checkpoint is made;
        immediate: like a crash). A real outage: new connections are refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), None when it is not running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def destroy(self) -> None:
        """Stop the server however it must be stopped and remove its directory. Idempotent."""
        if not self.root.exists():
            return
        pid = self.postmaster_pid()
        if pid is not None:
            try:
                self.stop("immediate")
            except PgError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.destroy)

    # -- databases ------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as conn:
            for sql in statements:
                conn.execute(sql.encode())

    def fresh_database(self) -> str:
        """A new empty database (a copy of the empty template); its URL."""
        if not self._template_ready:
            self.execute(f"CREATE DATABASE {TEMPLATE} IS_TEMPLATE true")
            self._template_ready = True
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    # -- helpers --------------------------------------------------------------------------

    def _run(self, tool: str, *args: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._as is not None:
            kwargs = {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            cwd=self.root,  # the server user must be able to enter it (not root's cwd)
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()}\n{log}")


def reap_orphans() -> None:
    """Stop and remove clusters left by test processes that no longer exist (SIGKILLed)."""
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or process_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pid = int((root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(
    port: int | None = None, settings: dict[str, str] | None = None
) -> Iterator[PgCluster]:
    """A started cluster for the duration of the block; always destroyed afterwards."""
    reap_orphans()
    cluster = PgCluster(port, settings)
    try:
        cluster.create().start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's private PostgreSQL (started on first use)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """URL of a fresh, empty database on the session's cluster; dropped after the test. The
    cluster is started again first if the test left it stopped."""
    pg_cluster.ensure_running()
    url = pg_cluster.fresh_database()
    yield url
    pg_cluster.ensure_running()
    pg_cluster.drop_database(url)
