"""The gateway's HTTP client for the cloud: enrollment (CLI, blocking) and signed sync calls.

Every failure becomes one CloudError subclass, so the sync actor decides retry-or-not from
the type alone:
  CloudUnreachable  connect error, timeout, connection closed before an answer  -> retry
  CloudUnavailable  5xx or 429                                                  -> retry
  CloudRejected     another 4xx (problem detail kept)                           -> retry slowly,
                    counted and shown: a batch is never skipped
  BadAck            a 200 whose body is not the ack for the batch sent          -> retry
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from common.gateway_auth import RequestSigner
from common.sync_wire import BatchAck, SyncBatch, WireError, decode_ack, encode_batch

ENROLL_PATH = "/api/v1/gateways/enroll"
BATCHES_PATH = "/api/v1/sync/batches"
CONFIG_PATH = "/api/v1/sync/config"


class CloudError(Exception):
    """A cloud call that did not succeed; the message is one line for logs and the CLI."""

    retryable = True
    retry_after_s: float | None = None  # the cloud's Retry-After (503, 429), when it gave one


class CloudUnreachable(CloudError):
    pass


class CloudUnavailable(CloudError):
    pass


class CloudRejected(CloudError):
    retryable = False

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class BadAck(CloudError):
    pass


def tls_verify(ca_pem: str | None) -> ssl.SSLContext:
    """How the cloud's certificate is verified: against this CA (PEM) or the system's CAs."""
    if ca_pem is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except ssl.SSLError as exc:
        raise CloudError(f"the cloud's CA certificate is not usable: {exc}") from exc


def _unreachable(what: str, exc: httpx.HTTPError) -> CloudUnreachable:
    """One line; an unverifiable certificate says what to do about it."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = str(exc).split("certificate verify failed:")[-1].split("(_ssl")[0].strip(" ()")
        return CloudUnreachable(
            f"{what}: the cloud's TLS certificate is not trusted ({reason}); give the CA that "
            "signed it with `iotsphere gateway enroll --cafile FILE`"
        )
    return CloudUnreachable(f"{what}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class EnrollResult:
    gateway_id: str
    org: str | None
    cloud_time_ms: int | None


def _problem(resp: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    try:
        doc = resp.json()
    except ValueError:
        return (resp.text.strip()[:200] or resp.reason_phrase), None
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("title") or resp.reason_phrase), doc
    return resp.reason_phrase, None


def retry_after_s(value: str | None) -> float | None:
    """An HTTP Retry-After (delay-seconds or an HTTP-date) in seconds from now; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _status_error(resp: httpx.Response, what: str) -> CloudError:
    msg, doc = _problem(resp)
    if resp.status_code >= 500 or resp.status_code == 429:
        err = CloudUnavailable(f"{what}: the cloud answered {resp.status_code}: {msg}")
        err.retry_after_s = retry_after_s(resp.headers.get("Retry-After"))
        return err
    return CloudRejected(f"{what}: refused ({resp.status_code}): {msg}", resp.status_code, doc)


def enroll(
    cloud_url: str,
    token: str,
    public_key_b64: str,
    name: str | None,
    timeout_s: float = 15.0,
    ca_pem: str | None = None,
) -> EnrollResult:
    """POST the enrollment; CloudRejected for a refused token, CloudUnreachable otherwise."""
    url = cloud_url.rstrip("/") + ENROLL_PATH
    body = {"enrollment_token": token, "public_key": public_key_b64, "name": name}
    try:
        with httpx.Client(timeout=timeout_s, verify=tls_verify(ca_pem)) as client:
            resp = client.post(url, json=body)
    except httpx.InvalidURL as exc:
        raise CloudUnreachable(f"invalid cloud URL {cloud_url!r}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise _unreachable(f"cannot reach the cloud at {cloud_url}", exc) from exc
    if resp.status_code not in (200, 201):
        err = _status_error(resp, "enrollment")
        if isinstance(err, CloudRejected):
            msg, _ = _problem(resp)
            raise CloudRejected(
                f"the cloud refused the enrollment ({resp.status_code}): {msg}",
                resp.status_code,
                None,
            )
        raise err
    try:
        doc = resp.json()
        gateway_id = doc["gateway_id"]
        if not isinstance(gateway_id, str) or not gateway_id:
            raise TypeError("gateway_id")
        org = doc.get("org")
        cloud_time = doc.get("cloud_time_ms")
        return EnrollResult(
            gateway_id,
            None if org is None else str(org),
            cloud_time if isinstance(cloud_time, int) else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CloudError(f"the cloud's enrollment answer is not understood: {exc}") from exc


class CloudClient:
    """Signed calls of one enrolled gateway (async, one connection pool)."""

    def __init__(
        self,
        base_url: str,
        signer: RequestSigner,
        timeout_s: float = 30.0,
        ca_pem: str | None = None,  # verify the cloud with this CA; None: the system's CAs
    ) -> None:
        self._base = base_url.rstrip("/")
        self._signer = signer
        # This gateway's clock minus the cloud's, from the Date header of the last answer
        # (1 s resolution: enough to flag a clock minutes off); None before any answer.
        self.last_skew_ms: int | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            verify=tls_verify(ca_pem),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], what: str
    ) -> httpx.Response:
        for attempt in (1, 2):
            signed = {**headers, **self._signer.headers(method, path, body)}
            try:
                resp = await self._client.request(
                    method, self._base + path, content=body or None, headers=signed
                )
            except httpx.HTTPError as exc:
                raise _unreachable(what, exc) from exc
            self._measure_skew(resp)
            if resp.status_code == 401 and attempt == 1:
                # Our clock is off beyond the cloud's leeway: sign in its time and retry once.
                _, doc = _problem(resp)
                server_time = (doc or {}).get("server_time_ms")
                if isinstance(server_time, int):
                    self._signer.calibrate(server_time)
                    continue
            return resp
        raise AssertionError("unreachable")

    def _measure_skew(self, resp: httpx.Response) -> None:
        date = resp.headers.get("date")
        if not date:
            return
        try:
            cloud_ms = int(email.utils.parsedate_to_datetime(date).timestamp() * 1000)
        except (TypeError, ValueError):
            return
        # The Date header truncates to the second: the midpoint is the best guess.
        self.last_skew_ms = time.time_ns() // 1_000_000 - (cloud_ms + 500)

    async def post_batch(
        self, batch: SyncBatch, encoded: tuple[bytes, str, str] | None = None
    ) -> BatchAck:
        """Send a batch (encoded here unless the caller encoded it ahead of time)."""
        body, ctype, cenc = encoded if encoded is not None else encode_batch(batch)
        headers = {"Content-Type": ctype, "Content-Encoding": cenc}
        resp = await self._request("POST", BATCHES_PATH, body, headers, "sync batch")
        if resp.status_code != 200:
            raise _status_error(resp, "sync batch")
        try:
            ack = decode_ack(resp.content)
        except WireError as exc:
            raise BadAck(f"sync batch: malformed acknowledgement: {exc}") from exc
        if (ack.batch_id, ack.first_seq, ack.last_seq) != (
            batch.batch_id,
            batch.first_seq,
            batch.last_seq,
        ):
            raise BadAck(
                f"sync batch: acknowledgement for {ack.batch_id} {ack.first_seq}..{ack.last_seq}"
                f" does not match {batch.batch_id} {batch.first_seq}..{batch.last_seq}"
            )
        return ack

    async def fetch_config(self, since: int) -> dict[str, Any]:
        path = f"{CONFIG_PATH}?since={since}"
        resp = await self._request("GET", path, b"", {}, "sync config")
        if resp.status_code != 200:
            raise _status_error(resp, "sync config")
        try:
            doc = json.loads(resp.content)
        except ValueError as exc:
            raise CloudError(f"sync config: not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise CloudError("sync config: not a JSON object")
        return doc
