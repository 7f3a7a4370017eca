"""Administrative operations on the cloud store, shared by the CLI (server stopped: direct
DuckDB) and the local-admin API (server running), so both paths behave the same; plus the
run-file and secret that let the CLI find a running server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from cloud.security.auth import hash_password, new_opaque_token, token_digest
from cloud.storage.errors import Conflict
from cloud.storage.interface import CloudStore, Role, User, UserChange
from common.problem import Problem, ProblemError

DEFAULT_ORG = "default"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # what the login endpoint accepts
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
    if len(password) > MAX_PASSWORD:
        raise _invalid(f"password must be at most {MAX_PASSWORD} characters")


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
    audit_log.info(
        "user added: user=%s email=%s org=%s role=%s", user.id, email, the_org.id, role.value
    )
    return {"user_id": user.id, "email": user.email, "role": user.role.value, "org": the_org.name}


# -- changing and removing users ----------------------------------------------------------------
#
# The API (by id, within the caller's org) and the CLI (by e-mail) share these, so the
# last-admin rule, the revocation and the audit line are the same on every path.

audit_log = logging.getLogger("iotsphere.cloud.audit")


def _not_found(detail: str) -> ProblemError:
    return ProblemError(Problem("not-found", "Not found", 404, detail))


def _last_admin(user: User) -> ProblemError:
    return ProblemError(
        Problem(
            "last-admin",
            "Conflict",
            409,
            f"{user.email} is the last enabled admin of their organization;"
            " make another user admin first",
        )
    )


def _outcome(change: UserChange, user: User | None, who: str) -> User:
    if change is UserChange.NOT_FOUND or user is None:
        raise _not_found(f"no user {who}")
    if change is UserChange.LAST_ADMIN:
        raise _last_admin(user)
    return user


async def change_user(
    store: CloudStore,
    user: User,
    now_ms: int,
    *,
    actor: str,
    role: Role | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user's role, disabled state or password. A new password or a disable ends
    their sessions (access tokens refused, refresh tokens revoked). 404 gone, 409 last admin,
    422 a too short password."""
    password_hash = None
    if password is not None:
        check_password(password)
        password_hash = await asyncio.to_thread(hash_password, password)
    change, updated = await store.update_user(
        user.org_id, user.id, now_ms, role=role, disabled=disabled, password_hash=password_hash
    )
    updated = _outcome(change, updated, user.email)
    what = []
    if role is not None and role is not user.role:
        what.append(f"role {user.role.value} -> {role.value}")
    if disabled is not None and disabled != user.disabled:
        what.append("disabled" if disabled else "enabled")
    if password is not None:
        what.append("password changed")
    if updated.token_version != user.token_version:
        what.append("sessions ended")
    audit_log.info(
        "user changed: user=%s email=%s org=%s by=%s: %s",
        user.id, user.email, user.org_id, actor, ", ".join(what) or "no change",
    )  # fmt: skip
    return updated


async def remove_user(store: CloudStore, user: User, *, actor: str) -> User:
    """Delete a user and their refresh tokens; their access tokens are refused from now on.
    404 gone, 409 last admin."""
    change, removed = await store.delete_user(user.org_id, user.id)
    removed = _outcome(change, removed, user.email)
    audit_log.info(
        "user deleted: user=%s email=%s org=%s by=%s", user.id, user.email, user.org_id, actor
    )
    return removed


async def user_of_email(store: CloudStore, raw_email: str) -> User:
    email = check_email(raw_email)
    user = await store.user_by_email(email)
    if user is None:
        raise _not_found(f"no user {email}")
    return user


async def _org_name(store: CloudStore, org_id: str) -> str:
    return next((o.name for o in await store.list_orgs() if o.id == org_id), org_id)


def user_summary(user: User, org_name: str) -> dict[str, Any]:
    """What the CLI prints of a user (`user add`'s fields, and its state)."""
    return {
        "user_id": user.id,
        "email": user.email,
        "role": user.role.value,
        "org": org_name,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


async def list_users(store: CloudStore, org: str | None) -> list[dict[str, Any]]:
    """Every user (of one organization, by name), by e-mail. 404 for an unknown org."""
    names = {o.id: o.name for o in await store.list_orgs()}
    org_id = None
    if org is not None:
        org_id = next((i for i, name in names.items() if name == org), None)
        if org_id is None:
            raise _not_found(f"no organization {org!r}")
    return [user_summary(u, names.get(u.org_id, u.org_id)) for u in await store.list_users(org_id)]


async def set_user_state(
    store: CloudStore,
    email: str,
    now_ms: int,
    *,
    actor: str,
    disabled: bool | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """The CLI's disable / enable / passwd, by e-mail."""
    if password is not None:
        check_password(password)
    user = await user_of_email(store, email)
    changed = await change_user(
        store, user, now_ms, actor=actor, disabled=disabled, password=password
    )
    return user_summary(changed, await _org_name(store, changed.org_id))


async def delete_user_by_email(store: CloudStore, email: str, *, actor: str) -> dict[str, Any]:
    """The CLI's delete, by e-mail; prints what was deleted."""
    user = await remove_user(store, await user_of_email(store, email), actor=actor)
    return {**user_summary(user, await _org_name(store, user.org_id)), "deleted": True}


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


def write_run_info(data_dir: Path, port: int, bind: str, tls: bool = False) -> None:
    run_dir = data_dir / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "bind": bind, "tls": tls}))
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
        scheme = "https" if info.get("tls") else "http"  # `cloud serve --tls-cert`
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
    return f"{scheme}://{host}:{port}"
