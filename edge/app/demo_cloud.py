"""The demo's cloud: `iotsphere cloud serve` as a child process, an admin login, enrollment.

Run through the CLI itself, as a user would: the demo shows the real commands working
together, and the cloud keeps its own process (and DuckDB writer) as in production. Each child
gets SIGTERM from the kernel if the demo dies, even by SIGKILL (common/parent_death.py); they
are started from the main thread, which lives as long as the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.cli import CliError
from common.parent_death import parent_death_signal
from common.tokens import new_cli_token

DEMO_EMAIL = "admin@demo.local"


def _iotsphere(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=parent_death_signal(),
    )


def _checked(*args: str, stdin: str | None = None) -> str:
    done = _iotsphere(*args, stdin=stdin)
    if done.returncode != 0:
        raise CliError(f"demo: `iotsphere {' '.join(args[:3])}` failed: {done.stderr.strip()}")
    return done.stdout


def demo_password(cloud_dir: Path) -> tuple[str, bool]:
    """(password, created now): generated once, kept in the data dir (mode 0600)."""
    path = cloud_dir.parent / "demo-login.txt"
    if path.exists():
        return path.read_text().split()[-1], False
    cloud_dir.parent.mkdir(parents=True, exist_ok=True)
    password = new_cli_token(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{DEMO_EMAIL} {password}\n")
    return password, True


def start_cloud(cloud_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start the cloud (creating the admin on first run); returns (process, url)."""
    password, created = demo_password(cloud_dir)
    if created:
        _checked("cloud", "user", "add", DEMO_EMAIL, "--role", "admin",
                 "--data-dir", str(cloud_dir), stdin=password + "\n")  # fmt: skip
    log = (cloud_dir.parent / "cloud.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "cloud", "serve", "--data-dir", str(cloud_dir),
         "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        # no thread runs yet, and the child only calls prctl (resolved in the parent)
        preexec_fn=parent_death_signal(),  # noqa: PLW1509
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"demo: the cloud did not start (see {cloud_dir.parent / 'cloud.log'})")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise CliError("demo: the cloud did not become ready in 30 s")


def enroll_once(cloud_dir: Path, gateway_dir: Path, url: str) -> None:
    """Enroll the demo gateway with the demo cloud unless it already is."""
    if (gateway_dir / "identity.json").exists():
        return
    added = json.loads(
        _checked("cloud", "gateway", "add", "demo-site", "--data-dir", str(cloud_dir))
    )
    _checked("gateway", "enroll", "--cloud", url, "--token", added["enrollment_token"],
             "--data-dir", str(gateway_dir))  # fmt: skip


def stop_cloud(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
