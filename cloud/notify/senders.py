"""Senders: the I/O edge of notification delivery (webhook over httpx, email over SMTP).

Each sender formats the notification for its channel type and either returns (delivered) or
raises `DeliveryError`, telling the worker whether another attempt can help. Library
exceptions (httpx, aiosmtplib) are translated here and go no further.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import aiosmtplib
import httpx

from cloud.notify.channels import Channel, ChannelType
from cloud.notify.format import Notification, email_content, webhook_payload
from common.clock import Clock

USER_AGENT = "IoTSphere-Notify/1"
SIGNATURE_HEADER = "X-IoTSphere-Signature"  # "sha256=<hex HMAC-SHA256 of the raw body>"
EVENT_HEADER = "X-IoTSphere-Event"
ATTEMPT_HEADER = "X-IoTSphere-Delivery-Attempt"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the notification id: same on every attempt
# Besides 5xx: 408 Request Timeout, 425 Too Early and 429 Too Many Requests are worth retrying.
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_DETAIL = 300


class DeliveryError(Exception):
    """A delivery that did not happen. `retryable` says whether trying later can help."""

    def __init__(self, detail: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the receiver's own Retry-After, when it sent one


class Sender(Protocol):
    async def send(self, channel: Channel, notification: Notification) -> None:
        """Deliver or raise DeliveryError."""
        ...


def sign(secret: str, body: bytes) -> str:
    """The signature header value; receivers compare with hmac.compare_digest."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs the JSON payload. 2xx delivered; 5xx/408/425/429 and network errors retryable;
    any other status (other 4xx, and 3xx: redirects are not followed, a POST must not be
    silently re-targeted) is permanent.

    Pass your own `client` to share a connection pool (you then close it), or let the sender
    own one (`aclose()`).
    """

    def __init__(
        self, clock: Clock, *, client: httpx.AsyncClient | None = None, timeout_s: float = 10.0
    ) -> None:
        self._clock = clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def send(self, channel: Channel, notification: Notification) -> None:
        if channel.type is not ChannelType.WEBHOOK or not channel.url:
            raise DeliveryError(f"channel {channel.id} is not a webhook", retryable=False)
        body = json.dumps(
            webhook_payload(
                notification.alert,
                notification.event,
                notification_id=notification.id,
                sent_at_ms=self._clock.now_ms(),
            ),
            separators=(",", ":"),
            default=str,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            IDEMPOTENCY_HEADER: notification.id,
            EVENT_HEADER: notification.event.value,
            ATTEMPT_HEADER: str(notification.attempt),
        }
        if channel.secret:
            headers[SIGNATURE_HEADER] = sign(channel.secret, body)
        try:
            response = await self._client.post(channel.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timeout: {type(exc).__name__}", retryable=True) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DeliveryError(f"bad webhook URL: {exc}", retryable=False) from exc
        except httpx.TransportError as exc:  # connect refused, reset, DNS, protocol errors
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status} from webhook: {_snippet(response.text)}"
        retryable = status >= 500 or status in RETRYABLE_4XX
        retry_after = _retry_after(response.headers.get("Retry-After")) if retryable else None
        raise DeliveryError(detail, retryable=retryable, retry_after_s=retry_after)


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how email leaves the cloud (typed config, loaded once by the caller)."""

    host: str = "localhost"
    port: int = 25
    from_addr: str = "iotsphere@localhost"  # the From: and envelope sender
    username: str | None = None  # log in when set (needs TLS on any real server)
    password: str | None = field(default=None, repr=False)
    # STARTTLS: None = upgrade when the server offers it, True = required, False = never.
    starttls: bool | None = None
    implicit_tls: bool = False  # SMTPS, usually port 465
    validate_certs: bool = True
    timeout_s: float = 10.0


class EmailSender:
    """Sends one plain-text message per notification through a configured SMTP relay.

    SMTP 4xx replies and connection problems are retryable; 5xx replies (rejected recipient,
    failed login, message refused) are permanent.
    """

    def __init__(self, settings: SmtpSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock

    def build_message(self, channel: Channel, notification: Notification) -> EmailMessage:
        content = email_content(notification.alert, notification.event)
        msg = EmailMessage()
        msg["From"] = self._settings.from_addr
        msg["To"] = channel.to or ""
        msg["Subject"] = content.subject
        msg["Date"] = formatdate(self._clock.now_ms() / 1000, usegmt=True)
        # Stable across attempts, so a mail system or reader can dedupe a repeated delivery.
        msg["Message-ID"] = make_msgid(idstring=notification.id, domain="iotsphere.invalid")
        msg["X-IoTSphere-Notification-Id"] = notification.id
        msg["X-IoTSphere-Event"] = notification.event.value
        msg.set_content(content.body)
        return msg

    async def send(self, channel: Channel, notification: Notification) -> None:
        if channel.type is not ChannelType.EMAIL or not channel.to:
            raise DeliveryError(f"channel {channel.id} is not an email channel", retryable=False)
        s = self._settings
        message = self.build_message(channel, notification)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                start_tls=s.starttls,
                use_tls=s.implicit_tls,
                validate_certs=s.validate_certs,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            retryable = any(400 <= c < 500 for c in codes)
            raise DeliveryError(f"recipient refused: {codes}", retryable=retryable) from exc
        except aiosmtplib.SMTPResponseException as exc:  # a reply code from the server
            detail = f"SMTP {exc.code}: {_snippet(exc.message)}"
            raise DeliveryError(detail, retryable=400 <= exc.code < 500) from exc
        except aiosmtplib.SMTPNotSupported as exc:  # e.g. STARTTLS required but not offered
            raise DeliveryError(f"SMTP: {exc}", retryable=False) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # connect, disconnect, timeout
            raise DeliveryError(
                f"SMTP unavailable: {type(exc).__name__}: {exc}", retryable=True
            ) from exc


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def _retry_after(value: str | None) -> float | None:
    """Retry-After in delta-seconds (the HTTP-date form is rare for webhooks; ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
