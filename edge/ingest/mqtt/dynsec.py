"""Live changes to the private broker's dynamic-security plugin over its $CONTROL topic."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from edge.ingest.mqtt.broker import ADMIN_USER, device_role

log = logging.getLogger("iotsphere.dynsec")
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"


class DynsecError(Exception):
    pass


class DynsecClient:
    """Sends command lists and waits for their responses (one request in flight at a time)."""

    def __init__(self, host: str, port: int, password: str) -> None:
        self._host, self._port, self._password = host, port, password
        self._lock = asyncio.Lock()

    async def run(self, commands: list[dict[str, Any]], timeout_s: float = 10.0) -> None:
        import aiomqtt  # used only for provisioning: ~13 MB of RSS the gateway need not carry

        async with (
            self._lock,
            aiomqtt.Client(
                self._host,
                self._port,
                username=ADMIN_USER,
                password=self._password,
                identifier="iotsphere-dynsec",
                timeout=timeout_s,
            ) as client,
        ):
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    body = json.loads(bytes(message.payload))
                    errors = [
                        f"{r.get('command')}: {r['error']}"
                        for r in body.get("responses", [])
                        if r.get("error")
                    ]
                    if errors:
                        raise DynsecError("; ".join(errors))
                    return

    async def add_device(self, device_id: str, token: str) -> None:
        role = device_role(device_id)
        commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": role["rolename"]}]
        commands += [
            {"command": "addRoleACL", "rolename": role["rolename"], **acl} for acl in role["acls"]
        ]
        commands.append(
            {
                "command": "createClient",
                "username": device_id,
                "password": token,
                "roles": [{"rolename": role["rolename"]}],
            }
        )
        await self.run(commands)
        log.info("broker: device %s provisioned", device_id)

    async def remove_device(self, device_id: str) -> None:
        # deleteClient also disconnects every live session of that username.
        await self.run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": f"device-{device_id}"},
            ]
        )
        log.info("broker: device %s removed and disconnected", device_id)
