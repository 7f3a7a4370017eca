"""The cloud store's accounts, on either engine: orgs, users and refresh tokens
(AccountQueries, one of the query groups SqlCloudStore is made of). Ending a user's access lives
here too: a password change or a disable bumps the user's token version and revokes every
refresh token, and no change may leave an org without an enabled admin (UserChange.LAST_ADMIN).
"""

from __future__ import annotations

import uuid
from typing import Any

from cloud.storage.interface import Org, RefreshToken, RefreshUse, Role, User, UserChange
from cloud.storage.sql import SqlConn, SqlDatabase, first

_USER_COLS = "id, email, org_id, role, password_hash, created_at, token_version, disabled_at"


def _user(row: tuple[Any, ...] | None) -> User | None:
    if row is None:
        return None
    return User(
        id=row[0],
        email=row[1],
        org_id=row[2],
        role=Role(row[3]),
        password_hash=row[4],
        created_at=row[5],
        token_version=int(row[6]),
        disabled_at=row[7],
    )


def _revoke_refresh_tokens(c: SqlConn, user_id: str) -> None:
    c.execute(
        "UPDATE refresh_tokens SET revoked = true WHERE user_id = ? AND NOT revoked", [user_id]
    )


def _select_user(c: SqlConn, where: str, params: list[Any]) -> User | None:
    rows = c.execute(f"SELECT {_USER_COLS} FROM users WHERE {where}", params).fetchall()
    return _user(first(rows))


def _leaves_no_admin(c: SqlConn, user: User) -> bool:
    """Whether `user` is the only enabled admin of their org (the caller is taking that away).

    Takes the org's row lock first (a no-op update): two workers demoting the org's last two
    admins at once would each see the other still admin; with the lock the second waits and
    counts after the first committed. (DuckDB runs one transaction at a time here anyway.)"""
    if user.role is not Role.ADMIN or user.disabled:
        return False
    c.execute("UPDATE orgs SET name = name WHERE id = ?", [user.org_id])
    row = first(
        c.execute(
            "SELECT count(*) FROM users WHERE org_id = ? AND role = ? AND disabled_at IS NULL"
            " AND id <> ?",
            [user.org_id, Role.ADMIN.value, user.id],
        ).fetchall()
    )
    return row is None or int(row[0]) == 0


class AccountQueries:
    db: SqlDatabase  # set by SqlCloudStore

    async def ensure_org(self, name: str, now_ms: int) -> Org:
        def go(c: SqlConn) -> Org:
            row = first(c.execute("SELECT id, name FROM orgs WHERE name = ?", [name]).fetchall())
            if row is None:
                # another worker may be creating it too: the name is unique, theirs may win
                c.execute(
                    "INSERT INTO orgs VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    [uuid.uuid4().hex, name, now_ms],
                )
                row = first(
                    c.execute("SELECT id, name FROM orgs WHERE name = ?", [name]).fetchall()
                )
            return Org(row[0], row[1])

        return await self.db.run(self.db.transaction(go))

    async def list_orgs(self) -> list[Org]:
        rows = await self.db.run(
            lambda c: c.execute("SELECT id, name FROM orgs ORDER BY name").fetchall()
        )
        return [Org(r[0], r[1]) for r in rows]

    async def create_user(
        self, email: str, password_hash: str, role: Role, org_id: str, now_ms: int
    ) -> User:
        user = User(uuid.uuid4().hex, email.lower(), org_id, role, password_hash, now_ms)
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO users (id, email, org_id, role, password_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [user.id, user.email, org_id, role.value, password_hash, now_ms],
            )
        )
        return user

    async def user_by_email(self, email: str) -> User | None:
        return await self.db.run(lambda c: _select_user(c, "email = ?", [email.lower()]))

    async def user_by_id(self, user_id: str) -> User | None:
        return await self.db.run(lambda c: _select_user(c, "id = ?", [user_id]))

    async def list_users(self, org_id: str | None) -> list[User]:
        where, params = ("org_id = ?", [org_id]) if org_id is not None else ("true", [])
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {_USER_COLS} FROM users WHERE {where} ORDER BY email", params
            ).fetchall()
        )
        return [u for u in map(_user, rows) if u is not None]

    async def update_user(
        self,
        org_id: str,
        user_id: str,
        now_ms: int,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> tuple[UserChange, User | None]:
        def go(c: SqlConn) -> tuple[UserChange, User | None]:
            user = _select_user(c, "org_id = ? AND id = ?", [org_id, user_id])
            if user is None:
                return UserChange.NOT_FOUND, None
            loses_admin = (role is not None and role is not Role.ADMIN) or disabled is True
            if loses_admin and _leaves_no_admin(c, user):
                return UserChange.LAST_ADMIN, user
            disabling = disabled is True and not user.disabled
            revoke = disabling or password_hash is not None
            disabled_at = now_ms if disabling else None if disabled is False else user.disabled_at
            c.execute(
                "UPDATE users SET role = ?, password_hash = ?, disabled_at = ?,"
                " token_version = token_version + ? WHERE id = ?",
                [
                    (role or user.role).value,
                    password_hash or user.password_hash,
                    disabled_at,
                    1 if revoke else 0,
                    user_id,
                ],
            )
            if revoke:
                _revoke_refresh_tokens(c, user_id)
            return UserChange.OK, _select_user(c, "id = ?", [user_id])

        return await self.db.run(self.db.transaction(go))

    async def delete_user(self, org_id: str, user_id: str) -> tuple[UserChange, User | None]:
        def go(c: SqlConn) -> tuple[UserChange, User | None]:
            user = _select_user(c, "org_id = ? AND id = ?", [org_id, user_id])
            if user is None:
                return UserChange.NOT_FOUND, None
            if _leaves_no_admin(c, user):
                return UserChange.LAST_ADMIN, user
            c.execute("DELETE FROM refresh_tokens WHERE user_id = ?", [user_id])
            c.execute("DELETE FROM users WHERE id = ?", [user_id])
            return UserChange.OK, user

        return await self.db.run(self.db.transaction(go))

    # -- refresh tokens -------------------------------------------------------------------

    async def save_refresh_token(self, token: RefreshToken) -> None:
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at,"
                " token_version) VALUES (?, ?, ?, ?, ?)",
                [
                    token.token_hash,
                    token.family_id,
                    token.user_id,
                    token.expires_at,
                    token.token_version,
                ],
            )
        )

    async def consume_refresh_token(
        self, token_hash: str, now_ms: int
    ) -> tuple[RefreshUse, RefreshToken | None]:
        def go(c: SqlConn) -> tuple[RefreshUse, RefreshToken | None]:
            row = first(
                c.execute(
                    "SELECT r.family_id, r.user_id, r.expires_at, r.token_version, r.used_at,"
                    " r.revoked, u.token_version, u.disabled_at, u.id IS NULL"
                    " FROM refresh_tokens r LEFT JOIN users u ON u.id = r.user_id"
                    " WHERE r.token_hash = ?",
                    [token_hash],
                ).fetchall()
            )
            if row is None:
                return RefreshUse.UNKNOWN, None
            token = RefreshToken(token_hash, row[0], row[1], row[2], row[3])
            if row[4] is not None:
                # a rotated token came back: someone holds a copy. Kill the family.
                c.execute("UPDATE refresh_tokens SET revoked = true WHERE family_id = ?", [row[0]])
                return RefreshUse.REUSED, token
            # Revoked, or the user's sessions ended since it was issued (also one issued in a
            # race with the password change or disable that revoked the others).
            if row[5] or row[8] or row[7] is not None or row[6] != row[3]:
                return RefreshUse.REVOKED, token
            if row[2] <= now_ms:
                return RefreshUse.EXPIRED, token
            # Only if still unused: two workers rotating one token at once both read it
            # unused (PostgreSQL, READ COMMITTED); the one whose update finds it used lost.
            won = c.execute(
                "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
                " RETURNING token_hash",
                [now_ms, token_hash],
            ).fetchall()
            if not won:
                c.execute("UPDATE refresh_tokens SET revoked = true WHERE family_id = ?", [row[0]])
                return RefreshUse.REUSED, token
            return RefreshUse.OK, token

        return await self.db.run(self.db.transaction(go))
