"""Administrative operations on the cloud store, shared by the CLI (server stopped: direct
DuckDB) and the local-admin API (server running), so both paths behave the same; plus the
run-file and secret that let the CLI find a running server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from pathlib import Path

from cloud.auth import hash_password, new_opaque_token, token_digest
from cloud.db import Conflict
from cloud.store import CloudStore, Role
from common.problem import Problem, ProblemError

DEFAULT_ORG = "default"
MIN_PASSWORD = 8
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

LOCAL_ADMIN_SECRET_FILE = "cloud_admin.secret"
RUN_DIR = "run"
RUN_FILE = "cloud.json"
LOCAL_ADMIN_PREFIX = "/api/local-admin"
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})


# -- the operations, shared by the direct path and the running server's local admin API -------
#
# They raise ProblemError: the server answers it as is (RFC 9457), the CLI prints its detail
# as one line (exit 2 for invalid input, 1 otherwise).


def _invalid(detail: str) -> ProblemError:
    return ProblemError(Problem("invalid-request", "Invalid request", 422, detail))


def _conflict(detail: str) -> ProblemError:
    return ProblemError(Problem("conflict", "Conflict", 409, detail))


def check_email(raw: str) -> str:
    """The normalized address (stripped, lower case); raises a 422 ProblemError."""
    email = raw.strip().lower()
    if not _EMAIL.match(email):
        raise _invalid(f"not an e-mail address: {raw!r}")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise _invalid(f"password must be at least {MIN_PASSWORD} characters")


async def add_user(
    store: CloudStore, email: str, password: str, role: Role, org: str, now_ms: int
) -> dict[str, str]:
    """Create a user (and its organization if new). 422 invalid input, 409 e-mail taken."""
    email = check_email(email)
    check_password(password)
    taken = _conflict(f"user {email} already exists")
    if await store.user_by_email(email) is not None:
        raise taken
    # argon2 takes tens of milliseconds: off the event loop, which serves other requests
    password_hash = await asyncio.to_thread(hash_password, password)
    the_org = await store.ensure_org(org, now_ms)
    try:
        user = await store.create_user(email, password_hash, role, the_org.id, now_ms)
    except Conflict as exc:  # a concurrent add of the same address won the race
        raise taken from exc
    return {"user_id": user.id, "email": user.email, "role": user.role.value, "org": the_org.name}


async def add_gateway(
    store: CloudStore, name: str, org: str, enrollment_ttl_s: int, now_ms: int
) -> dict[str, str]:
    """Register a gateway; the enrollment token is returned once. 409 if the name is taken."""
    token = new_opaque_token()
    the_org = await store.ensure_org(org, now_ms)
    taken = _conflict(f"gateway {name!r} already exists in organization {the_org.name!r}")
    if any(g.name == name for g in await store.list_gateways(the_org.id)):
        raise taken
    expires = now_ms + enrollment_ttl_s * 1000
    try:
        gw = await store.create_gateway(the_org.id, name, token_digest(token), expires, now_ms)
    except Conflict as exc:
        raise taken from exc
    return {"gateway_id": gw.gateway_id, "enrollment_token": token}


# -- discovery: is `cloud serve` running on this data dir? ------------------------------------


def local_admin_secret(data_dir: Path) -> str:
    """The local admin API's bearer secret (created on first use, mode 0600): whoever can read
    the cloud's data dir may administer it, nobody else."""
    path = data_dir / LOCAL_ADMIN_SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # the usual case (or another process just created it)
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def write_run_info(data_dir: Path, port: int, bind: str) -> None:
    run_dir = data_dir / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "bind": bind}))
    tmp.replace(run_dir / RUN_FILE)  # atomic: a reader never sees half a file


def remove_run_info(data_dir: Path) -> None:
    """Remove run/cloud.json if it is this process's (a newer server may have replaced it)."""
    path = data_dir / RUN_DIR / RUN_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()


def running_cloud_url(data_dir: Path) -> str | None:
    """The base URL of a live `cloud serve` on this data dir, or None."""
    try:
        info = json.loads((data_dir / RUN_DIR / RUN_FILE).read_text())
        pid, port, bind = int(info["pid"]), int(info["port"]), str(info.get("bind", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # left behind by a crash
        return None
    except PermissionError:  # alive, another user's
        pass
    host = "127.0.0.1" if bind in _WILDCARD_BINDS else bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
