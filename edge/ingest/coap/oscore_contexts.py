"""OSCORE (RFC 8613) security contexts of devices: created by `gateway device add ID --oscore`,
used by the CoAP ingress to tell which device sent a protected `POST /telemetry`, removed when
the device is revoked.

Where the gateway's side lives, and why not in DuckDB: one directory per device,
`DATA/oscore/dev-{device_id}/`, read and written by aiocoap's FilesystemSecurityContext
(`secret.json` with the master secret, salt, ids and algorithm, mode 0600; `sequence.json` with
the sender sequence number and the replay window; directories 0700, like `admin.secret` and the
gateway key next to them).

- The replay state is the security of OSCORE: a sender sequence number used twice reuses an
  AES-CCM nonce, a replay window that forgets lets old requests in. aiocoap persists both with
  fsync + atomic rename, reserves sequence numbers in chunks (RFC 8613 B.1.1) and recovers a
  replay window lost in a crash with the Echo option (B.1.2). Re-implementing that against
  DuckDB would be our code where the library's tested code exists, and it would put a
  synchronous write in the request path of the store actor (DuckDB's only writer, which commits
  in batches): every protected request would wait behind ingest for its replay-window write.
- The secret and its counters live and die together: revoke deletes one directory. Keeping the
  secret in DuckDB and the counters in files would split one thing in two places that can
  disagree after a crash.
- The `lock` file aiocoap takes makes a second process using the same context fail loudly
  instead of silently sharing nonces.

What this costs: restoring a backup of the data dir rolls the replay windows back (old
requests could be replayed once more); after a restore, provision OSCORE devices again.

The device gets the mirrored parameters once, as the JSON aiocoap's FilesystemSecurityContext
reads from `secret.json` (`firmware_stubs.oscore_device` turns that into client credentials).
Ids: the device's sender id (the `kid` in its requests, which selects the context here) is 6
random bytes, unique among this gateway's devices; the gateway's sender id is empty (RFC 8613
C.1 uses an empty client id the same way; the nonce encodes the id length, so the two differ).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap.credentials
import aiocoap.oscore
import filelock

log = logging.getLogger("iotsphere.oscore")

ALGORITHM = "AES-CCM-16-64-128"  # aiocoap's and RFC 8613's default
KDF_HASH = "sha256"
MASTER_SECRET_BYTES = 32
MASTER_SALT_BYTES = 8
KID_BYTES = 6  # at most 7 with AES-CCM-16-64-128 (13-byte nonce minus 6)
GATEWAY_SENDER_ID = b""
DIR_PREFIX = "dev-"  # device ids may be "." or "..": never a path component on their own


class OscoreError(Exception):
    """A context that cannot be created, loaded or removed; one printable line."""


@dataclass(frozen=True, slots=True)
class ContextParams:
    """One side of an OSCORE context: what FilesystemSecurityContext reads from secret.json."""

    secret: bytes
    salt: bytes
    sender_id: bytes
    recipient_id: bytes
    algorithm: str = ALGORITHM
    kdf_hash: str = KDF_HASH

    def to_json(self) -> dict[str, str]:
        return {
            "algorithm": self.algorithm,
            "kdf-hashfun": self.kdf_hash,
            "secret_hex": self.secret.hex(),
            "salt_hex": self.salt.hex(),
            "sender-id_hex": self.sender_id.hex(),
            "recipient-id_hex": self.recipient_id.hex(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContextParams:
        try:
            return cls(
                secret=bytes.fromhex(doc["secret_hex"]),
                salt=bytes.fromhex(doc.get("salt_hex", "")),
                sender_id=bytes.fromhex(doc["sender-id_hex"]),
                recipient_id=bytes.fromhex(doc["recipient-id_hex"]),
                algorithm=str(doc.get("algorithm", ALGORITHM)),
                kdf_hash=str(doc.get("kdf-hashfun", KDF_HASH)),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise OscoreError(f"not an OSCORE context: {exc!r}") from None

    def mirrored(self) -> ContextParams:
        """The peer's side of the same context."""
        return ContextParams(
            self.secret, self.salt, self.recipient_id, self.sender_id, self.algorithm, self.kdf_hash
        )


def new_device_params(taken_kids: Iterable[bytes]) -> ContextParams:
    """Fresh random parameters, from the device's point of view, with an unused kid."""
    taken = set(taken_kids)
    kid = secrets.token_bytes(KID_BYTES)
    while kid in taken or kid == GATEWAY_SENDER_ID:
        kid = secrets.token_bytes(KID_BYTES)
    return ContextParams(
        secret=secrets.token_bytes(MASTER_SECRET_BYTES),
        salt=secrets.token_bytes(MASTER_SALT_BYTES),
        sender_id=kid,
        recipient_id=GATEWAY_SENDER_ID,
    )


def write_context_dir(directory: Path, params: ContextParams) -> None:
    """A FilesystemSecurityContext directory (0700) with its secret.json (0600)."""
    directory.mkdir(mode=0o700, parents=True)
    os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    fd = os.open(directory / "secret.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(params.to_json(), f)
        f.flush()
        os.fsync(f.fileno())


class OscoreKeystore:
    """The gateway's side of every device context, on disk (no aiocoap objects: the CLI uses
    this with the gateway stopped)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "oscore"

    def dir_of(self, device_id: str) -> Path:
        return self.root / (DIR_PREFIX + device_id)

    def device_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name[len(DIR_PREFIX) :]
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith(DIR_PREFIX)
        )

    def has(self, device_id: str) -> bool:
        return (self.dir_of(device_id) / "secret.json").is_file()

    def gateway_params(self, device_id: str) -> ContextParams:
        path = self.dir_of(device_id) / "secret.json"
        try:
            return ContextParams.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise OscoreError(f"cannot read the OSCORE context of {device_id!r}: {exc}") from None

    def kids(self) -> set[bytes]:
        """The device sender ids in use (the gateway's recipient ids)."""
        found = set()
        for device_id in self.device_ids():
            with contextlib.suppress(OscoreError):
                found.add(self.gateway_params(device_id).recipient_id)
        return found

    def create(self, device_id: str) -> ContextParams:
        """Write the gateway's side of a new context; return the device's side (shown once).

        An existing context of the device is replaced (a re-added device gets new keys)."""
        device = new_device_params(self.kids())
        final = self.dir_of(device_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        tmp = self.root / f".new-{secrets.token_hex(6)}"
        try:
            write_context_dir(tmp, device.mirrored())
            self.remove(device_id)
            tmp.rename(final)  # complete or absent: never a directory without its secret
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OscoreError(f"cannot store the OSCORE context of {device_id!r}: {exc}") from exc
        return device

    def remove(self, device_id: str) -> bool:
        """Delete the device's context (secret, counters, lock); True if there was one."""
        path = self.dir_of(device_id)
        if not path.exists():
            return False
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise OscoreError(f"cannot remove the OSCORE context of {device_id!r}: {exc}") from exc
        return True


class _ContextsByKid(aiocoap.credentials.CredentialsMap):  # type: ignore[misc]  # untyped
    """Server credentials for OscoreSiteWrapper, found by kid in O(1) (aiocoap's own map tries
    every context in turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_kid: dict[bytes, aiocoap.oscore.FilesystemSecurityContext] = {}

    def find_oscore(self, unprotected: dict[Any, Any]) -> Any:
        if unprotected.get(aiocoap.oscore.COSE_KID_CONTEXT) is not None:
            raise KeyError("kid context")  # ours have none
        kid = unprotected.get(aiocoap.oscore.COSE_KID)
        if not isinstance(kid, bytes) or kid not in self.by_kid:
            raise KeyError("kid")
        return self.by_kid[kid]


def _release(context: Any) -> None:
    """Persist the sequence number and replay window exactly and release the lock.

    aiocoap does this only from __del__ (there is no public close); calling it at a known
    moment is what lets a clean restart continue without the Echo round trip."""
    destroy = context._destroy
    destroy()


class OscoreRegistry:
    """The running gateway's loaded contexts: device id <-> aiocoap security context."""

    def __init__(self, keystore: OscoreKeystore) -> None:
        self.keystore = keystore
        self.credentials = _ContextsByKid()
        self._contexts: dict[str, Any] = {}  # device id -> FilesystemSecurityContext
        self._device_of: dict[int, str] = {}  # id(context) -> device id
        self.load_errors = 0

    def __len__(self) -> int:
        return len(self._contexts)

    def load(self, active_devices: Iterable[str]) -> None:
        """Load the contexts of active devices; delete those of devices no longer active (a
        revoke that crashed before removing the directory)."""
        active = set(active_devices)
        for device_id in self.keystore.device_ids():
            if device_id not in active:
                log.warning("OSCORE: removing the context of inactive device %s", device_id)
                self.keystore.remove(device_id)
                continue
            try:
                self._load(device_id)
            except OscoreError as exc:
                self.load_errors += 1
                log.error("OSCORE: %s; the device cannot use OSCORE until re-added", exc)
        if self._contexts:
            log.info("OSCORE: %d device contexts loaded", len(self._contexts))

    def _load(self, device_id: str) -> None:
        path = self.keystore.dir_of(device_id)
        try:
            context = aiocoap.oscore.FilesystemSecurityContext(str(path))
        except filelock.Timeout:
            raise OscoreError(
                f"the OSCORE context of {device_id!r} is in use by another process ({path})"
            ) from None
        except (OSError, ValueError) as exc:  # LoadError is a ValueError
            raise OscoreError(f"cannot load the OSCORE context of {device_id!r}: {exc}") from None
        context.authenticated_claims = [f"device:{device_id}"]
        self._contexts[device_id] = context
        self._device_of[id(context)] = device_id
        self.credentials.by_kid[context.recipient_id] = context

    def create(self, device_id: str) -> ContextParams:
        """A new context for the device (replacing its old one); the device's side."""
        self._unload(device_id)
        params = self.keystore.create(device_id)
        self._load(device_id)
        return params

    def remove(self, device_id: str) -> bool:
        self._unload(device_id)
        return self.keystore.remove(device_id)

    def device_of(self, remote: Any) -> str | None:
        """The device whose context protected a request (its remote is an OSCOREAddress)."""
        context = getattr(remote, "security_context", None)
        if context is None:
            return None
        device_id = self._device_of.get(id(context))
        if device_id is None or self._contexts.get(device_id) is not context:
            return None  # removed while the request was being handled
        return device_id

    def close(self) -> None:
        for device_id in list(self._contexts):
            self._unload(device_id)

    def _unload(self, device_id: str) -> None:
        context = self._contexts.pop(device_id, None)
        if context is None:
            return
        self._device_of.pop(id(context), None)
        self.credentials.by_kid.pop(context.recipient_id, None)
        try:
            _release(context)
        except OSError as exc:
            log.error("OSCORE: could not save the counters of %s: %s", device_id, exc)
