"""A device's side of an OSCORE context: what `gateway device add ID --oscore` printed, turned
into the directory and client credentials aiocoap uses (`aiocoap.oscore.FilesystemSecurityContext`
keeps the device's sequence number there, so a restarted device continues where it stopped).

The printed "oscore" object is exactly the `secret.json` such a directory holds; this module only
writes it down (mode 0600) and names it in a credentials map. Like firmware, it knows nothing of
the gateway's code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REQUIRED = ("secret_hex", "sender-id_hex", "recipient-id_hex")


class OscoreDeviceError(Exception):
    """The context file is not what `gateway device add --oscore` prints."""


def context_of(printed: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(device id, context parameters) from `device add --oscore` output, or from the bare
    parameters object."""
    params = printed.get("oscore", printed)
    if not isinstance(params, dict) or any(not isinstance(params.get(k), str) for k in REQUIRED):
        raise OscoreDeviceError(
            'expected the JSON `gateway device add ID --oscore` prints (an "oscore" object '
            "with secret_hex, sender-id_hex and recipient-id_hex)"
        )
    device_id = printed.get("device_id")
    return (device_id if isinstance(device_id, str) else None), params


def write_context_dir(directory: Path, printed: dict[str, Any]) -> Path:
    """Create (or reuse) the device's context directory: secret.json (0600) in a 0700 dir.

    An existing directory with the same secret is reused, so its sequence.json (the device's
    sequence numbers) carries on; a different secret there is refused rather than overwritten."""
    _, params = context_of(printed)
    secret = directory / "secret.json"
    if secret.exists():
        if json.loads(secret.read_text()) != params:
            raise OscoreDeviceError(f"{directory} holds a different OSCORE context")
        return directory
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(params, f)
    return directory


def client_credentials(directory: Path, host: str) -> dict[str, Any]:
    """aiocoap client credentials: every coap:// request to `host` (any port) uses the context.

    Load with `context.client_credentials.load_from_dict(...)`. One entry with a trailing
    wildcard ("coap://HOST*" covers both "HOST/..." and "HOST:PORT/..."): a context directory
    must be loaded once (aiocoap locks it), and aiocoap 0.4 does not resolve ":name"
    references for OSCORE."""
    return {f"coap://{host}*": {"oscore": {"basedir": str(directory) + "/"}}}
