"""The device list's query parameters (search, filters, sort, paging), shared by
GET /api/devices and GET /api/dashboard.

Without any of them both answer as before (every device): existing clients keep working.
With any of them the answer is one page of at most `limit` devices (default 50), chosen and
sorted in the database (cloud.storage.device_query), and says how many matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query

from cloud.app.services import Services
from cloud.storage.device_json import online_since
from cloud.storage.device_query import DevicePage, DeviceQuery

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class DeviceListParams:
    q: str | None
    status: Literal["online", "offline"] | None
    gateway: str | None
    type: str | None
    sort: Literal["device_id", "last_seen", "type", "gateway_id"] | None
    order: Literal["asc", "desc"] | None
    limit: int | None
    offset: int | None

    @property
    def paged(self) -> bool:
        """Any list parameter given: answer one page (else: every device, as before)."""
        return any(
            v is not None
            for v in (self.q, self.status, self.gateway, self.type, self.sort, self.order)
        ) or (self.limit is not None or self.offset is not None)

    def query(self, services: Services) -> DeviceQuery:
        now = services.clock.now_ms()
        return DeviceQuery(
            online_since_ms=online_since(now, services.settings.online_threshold_s),
            search=self.q or None,
            status=self.status,
            gateway_id=self.gateway,
            device_type=self.type,
            sort=self.sort or "device_id",
            descending=self.order == "desc",
            limit=self.limit if self.limit is not None else DEFAULT_LIMIT,
            offset=self.offset or 0,
        )


def device_list_params(
    q: Annotated[
        str | None,
        Query(max_length=128, description="case-insensitive substring of the device id or type"),
    ] = None,
    status: Annotated[
        Literal["online", "offline"] | None, Query(description="online or offline now")
    ] = None,
    gateway: Annotated[
        str | None, Query(max_length=128, description="only devices behind this gateway id")
    ] = None,
    type: Annotated[
        str | None, Query(max_length=128, description="only devices of this type")
    ] = None,
    sort: Annotated[
        Literal["device_id", "last_seen", "type", "gateway_id"] | None,
        Query(description="sort key (default device_id); never-seen devices sort last"),
    ] = None,
    order: Annotated[Literal["asc", "desc"] | None, Query(description="default asc")] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_LIMIT, description=f"page size (default {DEFAULT_LIMIT} when paged)"),
    ] = None,
    offset: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
) -> DeviceListParams:
    return DeviceListParams(q, status, gateway, type, sort, order, limit, offset)


ListParams = Annotated[DeviceListParams, Depends(device_list_params)]


def page_info(page: DevicePage, query: DeviceQuery) -> dict[str, Any]:
    """What a paged answer says besides its rows."""
    return {
        "total": page.total,
        "limit": query.limit,
        "offset": query.offset,
        "all_devices": page.all_devices,
        "online": page.online,
        "types": page.types,
    }
