"""The MQTT ingress runs as a supervised loop: an unexpected failure restarts it (with backoff)
instead of ending the gateway, and it subscribes again."""

from __future__ import annotations

import pytest

from edge.app.config import GatewayConfig
from edge.ingest.mqtt import ingress as ingress_module
from tests.conftest import running
from tests.support.waiting import until


async def test_an_ingress_that_fails_unexpectedly_is_restarted(
    gateway_config: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(gateway_config) as gw:
        assert gw._ingress is not None and gw._ingress.connected.is_set()
        session_run = ingress_module._Session.run
        failures = [RuntimeError("a bug in the session")]

        async def failing_once(self: ingress_module._Session) -> None:
            if failures:
                raise failures.pop()
            await session_run(self)

        monkeypatch.setattr(ingress_module._Session, "run", failing_once)
        gw._ingress.connected.clear()
        session = gw._ingress._session
        assert session is not None and session._mqtt is not None
        session._mqtt.close("test: end this session")  # the session ends...
        await until(lambda: not failures)  # ...the next one fails...
        await until(gw._ingress.connected.is_set, timeout_s=15)  # ...and the loop comes back
        assert (await gw.status())["gateway"] == "running"
