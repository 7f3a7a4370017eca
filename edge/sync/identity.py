"""The gateway's cloud identity: who it is (identity.json) and its private key (gateway.key).

Both live in the data dir. identity.json holds nothing secret (ids and the cloud URL); the key
is written by common.gateway_auth (PKCS#8 PEM, mode 0600). The gateway syncs only when
identity.json exists, so an unenrolled gateway behaves exactly as before enrollment existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from common.atomic_file import write_atomic

IDENTITY_FILE: Final = "identity.json"
KEY_FILE: Final = "gateway.key"


class IdentityError(Exception):
    """identity.json is unreadable or malformed (message for the user)."""


@dataclass(frozen=True, slots=True)
class Identity:
    gateway_id: str
    cloud_url: str  # base URL, no trailing slash
    org: str | None
    name: str | None
    enrolled_at: int  # ms, gateway clock
    # The CA the cloud's certificate is verified with (PEM, from `enroll --cafile`), kept here
    # so it moves with backups; None: the system's CAs.
    cloud_ca_pem: str | None = None


def identity_path(data_dir: Path) -> Path:
    return data_dir / IDENTITY_FILE


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def is_enrolled(data_dir: Path) -> bool:
    return identity_path(data_dir).exists()


def load_identity(data_dir: Path) -> Identity | None:
    """The saved identity, None when not enrolled; IdentityError when the file is broken."""
    path = identity_path(data_dir)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
        return Identity(
            gateway_id=str(doc["gateway_id"]),
            cloud_url=str(doc["cloud_url"]).rstrip("/"),
            org=None if doc.get("org") is None else str(doc["org"]),
            name=None if doc.get("name") is None else str(doc["name"]),
            enrolled_at=int(doc.get("enrolled_at", 0)),
            cloud_ca_pem=None if doc.get("cloud_ca_pem") is None else str(doc["cloud_ca_pem"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{path} is malformed: {exc}") from exc


def save_identity(data_dir: Path, identity: Identity) -> None:
    """Atomic write (temp file, fsync, rename): a crash leaves the old file or the new one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps(asdict(identity), indent=2).encode() + b"\n"
    write_atomic(identity_path(data_dir), data)
