"""Notification channels: the CONTRACT shape and its validation (pure, no I/O).

`{"id", "name", "type": "webhook"|"email", "url"}` (webhook) or `"to"` (email), plus an optional
webhook `"secret"` used to sign deliveries (HMAC-SHA256). The secret is write-only on the wire:
`to_dict()` leaves it out unless asked, so list/get endpoints never echo it back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from common.model import FieldError
from common.problem import Problem, ProblemError

MAX_NAME = 100
MAX_URL = 2048
MAX_EMAIL = 254  # RFC 5321 path limit
MIN_SECRET = 16  # shorter secrets make the signature guessable
MAX_SECRET = 256

# The patterns below are enforced here and published as they are in the OpenAPI document
# (cloud/api/bodies.py), so the document promises exactly what is accepted. They avoid `\s`
# and non-ASCII escapes, which Python, Rust and ECMAScript regexes read differently.

# Deliberately plausible, not RFC 5322-complete: one @, a dotted domain, no spaces or control
# characters (a CR/LF in "to" would be an SMTP header injection).
EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$"

# An absolute http(s) URL (RFC 3986): optional user info, a registered name or an IPv6
# literal, a port 1-65535, then printable ASCII. Exactly what urlsplit parses without error.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        (
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        )
    )
    + ")"
)
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = rf"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|\[{_IPV6}\])"
URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?{_HOST}(?::{_PORT})?"
    r"(?:[/?#][!-~]*)?$"
)

# Python's whitespace beyond ASCII (str.isspace), as literal characters.
PY_SPACES = "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# No control characters, and something besides whitespace (names are shown in lists).
NAME_PATTERN = f"^[^\\x00-\\x1f]*[^\\x00-\\x20{PY_SPACES}][^\\x00-\\x1f]*$"

_EMAIL_RE = re.compile(EMAIL_PATTERN)
_URL_RE = re.compile(URL_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)
_KNOWN = frozenset({"id", "name", "type", "url", "to", "secret"})


class ChannelType(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str
    type: ChannelType
    url: str | None = None  # webhook only
    to: str | None = None  # email only
    secret: str | None = field(default=None, repr=False)  # webhook signing key, optional

    def to_dict(self, *, include_secret: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type.value}
        if self.type is ChannelType.WEBHOOK:
            doc["url"] = self.url
            doc["signed"] = self.secret is not None
            if include_secret and self.secret is not None:
                doc["secret"] = self.secret
        else:
            doc["to"] = self.to
        return doc


def invalid_channel(errors: list[FieldError]) -> ProblemError:
    return ProblemError(
        Problem(
            slug="invalid-notification-channel",
            title="Invalid notification channel",
            status=422,
            detail="; ".join(f"{e.path}: {e.message}" for e in errors),
            errors=tuple(errors),
        )
    )


# one check per channel field and type, each with its own error:
def parse_channel(data: Mapping[str, Any], *, id: str | None = None) -> Channel:  # noqa: PLR0912
    """Validate a channel document; `id` (server-assigned on create) overrides data["id"].

    Raises ProblemError 422 listing every field error at once (not just the first).
    Unknown fields are refused so a typo ("URL", "email") is not silently ignored.
    """
    errors: list[FieldError] = []
    if not isinstance(data, Mapping):
        raise invalid_channel([FieldError("", "must be a JSON object")])
    errors.extend(
        FieldError(f"/{k}", "unknown field") for k in sorted(map(str, data)) if k not in _KNOWN
    )
    channel_id = id if id is not None else data.get("id")
    if not isinstance(channel_id, str) or not channel_id or len(channel_id) > 128:
        errors.append(FieldError("/id", "must be a non-empty string of at most 128 characters"))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        errors.append(FieldError("/name", f"must be a non-empty string of at most {MAX_NAME}"))
    elif not _NAME_RE.fullmatch(name):
        errors.append(FieldError("/name", "must not contain control characters"))
    raw_type = data.get("type")
    ctype: ChannelType | None = None
    if isinstance(raw_type, str) and raw_type in ChannelType._value2member_map_:
        ctype = ChannelType(raw_type)
    else:
        errors.append(FieldError("/type", 'must be "webhook" or "email"'))

    url = data.get("url")
    to = data.get("to")
    secret = data.get("secret")
    if ctype is ChannelType.WEBHOOK:
        errors.extend(_url_errors(url))
        if to is not None:
            errors.append(FieldError("/to", "only email channels have a recipient"))
        if secret is not None and (
            not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET
        ):
            errors.append(
                FieldError("/secret", f"must be a string of {MIN_SECRET}-{MAX_SECRET} characters")
            )
    elif ctype is ChannelType.EMAIL:
        # fullmatch: `$` alone also matches before a final newline
        if not isinstance(to, str) or len(to) > MAX_EMAIL or not _EMAIL_RE.fullmatch(to):
            errors.append(FieldError("/to", "must be an email address such as ops@example.com"))
        if url is not None:
            errors.append(FieldError("/url", "only webhook channels have a URL"))
        if secret is not None:
            errors.append(FieldError("/secret", "only webhook channels are signed"))

    if errors:
        raise invalid_channel(errors)
    assert isinstance(channel_id, str) and isinstance(name, str) and ctype is not None
    return Channel(
        id=channel_id,
        name=name.strip(),
        type=ctype,
        url=url if ctype is ChannelType.WEBHOOK else None,
        to=to if ctype is ChannelType.EMAIL else None,
        secret=secret if ctype is ChannelType.WEBHOOK else None,
    )


def apply_patch(channel: Channel, patch: Mapping[str, Any]) -> Channel:
    """PATCH semantics: fields in `patch` replace the channel's; the id never changes.

    Changing the type starts from a clean slate (a webhook turned email keeps no URL or secret),
    so the patch must then carry the new type's address field.
    """
    if not isinstance(patch, Mapping):
        raise invalid_channel([FieldError("", "must be a JSON object")])
    base = channel.to_dict(include_secret=True)
    base.pop("signed", None)
    if "type" in patch and patch["type"] != channel.type.value:
        base = {"name": channel.name}
    merged = {**base, **{k: v for k, v in patch.items() if k != "id"}}
    return parse_channel(merged, id=channel.id)


# one answer per reason a URL is refused:
def _url_errors(url: object) -> list[FieldError]:  # noqa: PLR0911
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        return [FieldError("/url", f"must be an http(s) URL of at most {MAX_URL} characters")]
    if any(ord(c) <= 32 for c in url):
        return [FieldError("/url", "must not contain spaces or control characters")]
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return [FieldError("/url", "is not a valid URL")]
    if parts.scheme.lower() not in ("http", "https"):
        return [FieldError("/url", "must use http or https")]
    if not parts.hostname:
        return [FieldError("/url", "must have a host")]
    if port == 0:
        return [FieldError("/url", "port must be 1-65535")]
    if not _URL_RE.fullmatch(url):
        return [FieldError("/url", "is not a valid URL (printable ASCII; ports 1-65535)")]
    return []
