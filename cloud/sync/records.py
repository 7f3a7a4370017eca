"""The values and errors of the cloud's sync store: what enrollment returns (Enrolled), an
enrolled gateway as the sync endpoints see it (GatewayIdentity, GatewaySyncInfo), what the config
endpoint filters by (GatewayScope), the two refusals the endpoints answer as they are
(EnrollmentRefused 401/409, ForeignDevices 403), and the forward-only order of alert states
that both applying a batch and answering a config poll rely on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.alerts import AlertState
from common.problem import Problem, ProblemError

# Alert states only move forward: a late or resent change never undoes a newer one.
ALERT_STATE_RANK = {AlertState.ACTIVE: 0, AlertState.ACKNOWLEDGED: 1, AlertState.RESOLVED: 2}

# -- errors (ProblemErrors: the endpoint answers them as they are) ----------------------------


class EnrollmentRefused(ProblemError):
    """Unknown or expired token (401) or a token already used (409)."""

    def __init__(self, status: int, detail: str) -> None:
        slug = "enrollment-token-used" if status == 409 else "enrollment-refused"
        title = "Enrollment token already used" if status == 409 else "Enrollment refused"
        super().__init__(Problem(slug, title, status, detail))
        self.status = status


class ForeignDevices(ProblemError):
    """A batch names devices that belong to another organization: nothing is stored (403)."""

    def __init__(self, devices: Sequence[str]) -> None:
        super().__init__(
            Problem(
                "foreign-devices",
                "Devices of another organization",
                403,
                f"{len(devices)} device(s) belong to another organization; batch refused",
                extra={"devices": list(devices)},
            )
        )
        self.devices = tuple(devices)


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolled:
    gateway_id: str
    org_id: str
    org_name: str


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """An enrolled gateway, as the sync endpoints need it."""

    gateway_id: str
    org_id: str
    public_key: bytes
    revoked: bool


@dataclass(frozen=True, slots=True)
class GatewaySyncInfo:
    gateway_id: str
    revoked_at: int | None
    skew_ms: int | None
    clock_skewed: bool
    config_version: int | None
    backlog: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backlog_readings": self.backlog,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "clock_skew_ms": self.skew_ms,
            "clock_skewed": self.clock_skewed,
            "config_version": self.config_version,
        }


@dataclass(frozen=True, slots=True)
class GatewayScope:
    """What the config endpoint filters rules by."""

    devices: frozenset[str]  # devices of this gateway
    other_devices: frozenset[str]  # devices of the org's other gateways
    alert_changes: tuple[tuple[str, str, int | None, int | None], ...]  # id, state, ack, res
