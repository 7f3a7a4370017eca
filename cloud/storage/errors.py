"""The only errors a cloud store raises, whichever engine is behind it: the database drivers'
own exceptions are translated where they are called (cloud.storage.db, cloud.storage.pg)."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed (any database error)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached at all (closed, locked by another process, I/O error,
    the database server down)."""


class Conflict(StoreError):
    """A uniqueness rule was broken (e.g. an e-mail already registered)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer release than this one: refusing to touch it."""
