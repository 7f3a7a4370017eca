"""Device credentials as every simulated sensor reads them (MQTT, CoAP, HTTP): the
{"device_id", "token"} objects that `iotsphere gateway device add` prints, collected into a
file, parsed strictly into DeviceCredentials. Also the simulators' error base, SimError, and
SimConfigError, the usage error a bad credentials file or configuration becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SimError(Exception):
    """Base of everything the simulator raises on purpose."""


class SimConfigError(SimError, ValueError):
    """The configuration (or a credentials file) is unusable: a usage error."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    device_id: str
    token: str

    @property
    def wrong_token(self) -> str:
        """A token that is certainly not this device's (its first character changed: the
        tokens are random, so replacing it with a fixed one would match 1 time in 64)."""
        first = "y" if self.token.startswith("x") else "x"
        return first + self.token[1:]


def parse_credentials(text: str) -> tuple[DeviceCredentials, ...]:
    """Parse what `iotsphere gateway device add` prints, collected into a file.

    Accepted: a JSON array of {"device_id", "token"} objects (the documented form), a single
    object, or one object per line (what `device add ... >> file` in a loop produces).
    """
    try:
        doc: Any = json.loads(text)
        items = doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError as exc:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            raise SimConfigError(f"credentials are not JSON: {exc}") from None
    result: list[DeviceCredentials] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise SimConfigError(f"credentials entry {index} is not an object")
        device_id, token = item.get("device_id"), item.get("token")
        if not isinstance(device_id, str) or not device_id:
            raise SimConfigError(f"credentials entry {index} has no string 'device_id'")
        if not isinstance(token, str) or not token:
            raise SimConfigError(f"credentials entry {index} has no string 'token'")
        if device_id in seen:
            raise SimConfigError(f"credentials list device {device_id!r} twice")
        seen.add(device_id)
        result.append(DeviceCredentials(device_id, token))
    if not result:
        raise SimConfigError("the credentials list is empty")
    return tuple(result)


def load_credentials(path: Path, limit: int | None = None) -> tuple[DeviceCredentials, ...]:
    """Read a credentials file; `limit` keeps its first N entries (and requires that many)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    devices = parse_credentials(text)
    if limit is not None:
        if limit > len(devices):
            raise SimConfigError(f"{path} holds {len(devices)} devices, {limit} requested")
        devices = devices[:limit]
    return devices
