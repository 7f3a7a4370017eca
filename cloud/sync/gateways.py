"""The sync store's gateways (GatewayQueries, one of the query groups SyncStore is made
of): one-time enrollment that binds a gateway's public key to its token, the identity lookup
the request verifier makes from a worker thread (synchronous), revocation, what each request
tells about the gateway (last seen, clock skew, config version), and the per-gateway figures
the API lists."""

from __future__ import annotations

import asyncio
import base64

from cloud.storage.sql import SqlConn, SqlDatabase, first
from cloud.sync.records import Enrolled, EnrollmentRefused, GatewayIdentity, GatewaySyncInfo


class GatewayQueries:
    db: SqlDatabase  # set by SyncStore

    # -- enrollment -----------------------------------------------------------------------

    async def enroll(self, token_hash: str, public_key: bytes, now_ms: int) -> Enrolled:
        """Bind the key to the gateway whose unused, unexpired token has this hash (one-time).

        Raises EnrollmentRefused (401 unknown/expired, 409 used); nothing changes then.
        """
        key_b64 = base64.b64encode(public_key).decode()
        # Two workers given the same token at once: the gateway's row is locked (PostgreSQL;
        # DuckDB has one writer), so the second reads it enrolled and is refused (409).
        lock = " FOR UPDATE OF g" if self.db.dialect == "postgresql" else ""

        def go(c: SqlConn) -> Enrolled:
            row = first(
                c.execute(
                    "SELECT g.id, g.org_id, o.name, g.enrollment_expires_at, g.enrolled_at"
                    " FROM gateways g JOIN orgs o ON o.id = g.org_id"
                    f" WHERE g.enrollment_token_hash = ?{lock}",
                    [token_hash],
                ).fetchall()
            )
            if row is None:
                raise EnrollmentRefused(401, "unknown enrollment token")
            gateway_id, org_id, org_name, expires_at, enrolled_at = row
            used = first(
                c.execute(
                    "SELECT 1 FROM gateway_keys WHERE gateway_id = ?", [gateway_id]
                ).fetchall()
            )
            if enrolled_at is not None or used is not None:
                raise EnrollmentRefused(409, "this enrollment token has already been used")
            if expires_at is None or expires_at <= now_ms:
                raise EnrollmentRefused(401, "this enrollment token has expired")
            c.execute(
                "INSERT INTO gateway_keys (gateway_id, org_id, public_key, enrolled_at)"
                " VALUES (?, ?, ?, ?)",
                [gateway_id, org_id, key_b64, now_ms],
            )
            c.execute("UPDATE gateways SET enrolled_at = ? WHERE id = ?", [now_ms, gateway_id])
            return Enrolled(gateway_id, org_id, org_name)

        return await self.db.run(self.db.transaction(go))

    # -- identity (called from a worker thread by the verifier: synchronous) --------------

    def identity_sync(self, gateway_id: str) -> GatewayIdentity | None:
        row = first(
            self.db.run_sync(
                lambda c: c.execute(
                    "SELECT gateway_id, org_id, public_key, revoked_at FROM gateway_keys"
                    " WHERE gateway_id = ?",
                    [gateway_id],
                ).fetchall()
            )
        )
        if row is None:
            return None
        return GatewayIdentity(row[0], row[1], base64.b64decode(row[2]), row[3] is not None)

    def active_public_key(self, gateway_id: str) -> bytes | None:
        """The verifier's lookup: the key of an enrolled, not revoked gateway."""
        ident = self.identity_sync(gateway_id)
        return None if ident is None or ident.revoked else ident.public_key

    async def identity(self, gateway_id: str) -> GatewayIdentity | None:
        return await asyncio.to_thread(self.identity_sync, gateway_id)

    async def revoke(self, org_id: str, gateway_id: str, now_ms: int) -> bool:
        """Refuse this gateway from now on. False when the org has no such gateway."""

        def go(c: SqlConn) -> bool:
            row = first(
                c.execute(
                    "SELECT 1 FROM gateways WHERE id = ? AND org_id = ?", [gateway_id, org_id]
                ).fetchall()
            )
            if row is None:
                return False
            c.execute(
                "UPDATE gateway_keys SET revoked_at = coalesce(revoked_at, ?) WHERE gateway_id = ?",
                [now_ms, gateway_id],
            )
            # A not-yet-enrolled gateway: its token must not work any more either.
            c.execute(
                "UPDATE gateways SET enrollment_expires_at = least(enrollment_expires_at, ?)"
                " WHERE id = ?",
                [now_ms, gateway_id],
            )
            return True

        return await self.db.run(self.db.transaction(go))

    async def seen(
        self, gateway_id: str, now_ms: int, skew_ms: int, skewed: bool, config: int | None = None
    ) -> None:
        def go(c: SqlConn) -> None:
            c.execute(
                "UPDATE gateway_keys SET last_seen = ?, skew_ms = ?, clock_skewed = ?,"
                " config_version = coalesce(?, config_version) WHERE gateway_id = ?",
                [now_ms, skew_ms, skewed, config, gateway_id],
            )
            c.execute("UPDATE gateways SET last_seen = ? WHERE id = ?", [now_ms, gateway_id])

        await self.db.run(self.db.transaction(go))

    async def sync_info(self, org_id: str) -> dict[str, GatewaySyncInfo]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT gateway_id, revoked_at, skew_ms, clock_skewed, config_version, backlog"
                " FROM gateway_keys WHERE org_id = ?",
                [org_id],
            ).fetchall()
        )
        return {r[0]: GatewaySyncInfo(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows}

    async def batch_totals(self, org_id: str) -> dict[str, tuple[int, int]]:
        """gateway id -> (when its newest batch was stored, readings its batches stored)."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT b.gateway_id, max(b.acked_at), sum(b.stored) FROM sync_batches b"
                " JOIN gateway_keys k ON k.gateway_id = b.gateway_id WHERE k.org_id = ?"
                " GROUP BY b.gateway_id",
                [org_id],
            ).fetchall()
        )
        return {str(g): (int(at), int(n)) for g, at, n in rows}
