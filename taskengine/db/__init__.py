"""The database seam: one store per vendor behind one interface (docs/architecture.md).

``store_for(connection)`` is the connection's store (``base.Store``), one instance per
vendor. The vendors' code and SQL live in ``postgresql/`` and ``sqlite/``; outside this
package nothing branches on ``connection.vendor``.
"""

from __future__ import annotations

from typing import Protocol

from .base import Store


class _Connection(Protocol):
    vendor: str


_STORES: dict[str, Store] = {}


def store_for(connection: _Connection) -> Store:
    """The store of ``connection``'s database ("postgresql" or "sqlite")."""
    store = _STORES.get(connection.vendor)
    if store is None:
        store = _STORES[connection.vendor] = _make(connection.vendor)
    return store


def _make(vendor: str) -> Store:
    if vendor == "postgresql":
        from .postgresql.store import PostgresStore

        return PostgresStore()
    if vendor == "sqlite":
        from .sqlite.store import SQLiteStore

        return SQLiteStore()
    raise NotImplementedError(f"taskengine supports PostgreSQL and SQLite, not {vendor!r}")


__all__ = ["Store", "store_for"]
